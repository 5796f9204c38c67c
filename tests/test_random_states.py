"""Every process's random state goes into the checkpoint, and each process takes back its own.

Under DDP each process draws its own reparameterisation noise (on a GPU, from its GPU's
generator), and only rank 0 writes the checkpoint. These run the save and load hooks with a
stand-in trainer of several ranks; the gather itself is Lightning's `all_gather`, replaced here
by what the other ranks would send.
"""

from types import SimpleNamespace

import pytest
import torch

from vae.module import VAEModule


def state_of_seed(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def module_on_rank(rank: int, world_size: int, device: str = "cpu") -> VAEModule:
    module = VAEModule(hidden_dim=8, latent_dim=2)
    strategy = SimpleNamespace(root_device=torch.device(device))
    module.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, strategy=strategy)
    return module


@pytest.fixture(autouse=True)
def keep_the_global_random_state():
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


def test_every_ranks_state_is_gathered_into_the_checkpoint(monkeypatch):
    module = module_on_rank(0, world_size=2)
    torch.manual_seed(10)
    other_rank = state_of_seed(11)
    monkeypatch.setattr(module, "all_gather", lambda mine: torch.stack([mine, other_rank]))
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    ranks = checkpoint["rng_states"]["ranks"]
    assert len(ranks) == 2
    assert torch.equal(ranks[0]["torch"], state_of_seed(10)) and torch.equal(ranks[1]["torch"], other_rank)


def test_each_rank_takes_back_its_own_state():
    checkpoint = {"rng_states": {"ranks": [{"torch": state_of_seed(0)}, {"torch": state_of_seed(1)}]}}
    module_on_rank(1, world_size=2).on_load_checkpoint(checkpoint)
    assert torch.equal(torch.get_rng_state(), state_of_seed(1))


@pytest.mark.parametrize(("rank", "takes"), [(0, "rank 0's state"), (2, "its own stream")])
def test_another_number_of_processes_says_so_and_only_rank_0_takes_rank_0s_state(rank, takes):
    """The other ranks keep the stream of their own that `setup` gave them: rank 0's for all would
    draw the same noise on every rank."""
    checkpoint = {"rng_states": {"ranks": [{"torch": state_of_seed(0)}, {"torch": state_of_seed(1)}]}}
    module = module_on_rank(rank, world_size=3)
    torch.manual_seed(7)  # the stream this rank has from `setup`
    with pytest.warns(UserWarning, match="2 process.*this run has 3.*not bit-identically"):
        module.on_load_checkpoint(checkpoint)
    assert torch.equal(torch.get_rng_state(), state_of_seed(0 if rank == 0 else 7)), takes


def test_a_checkpoint_written_before_per_rank_states_still_restores_the_cpu_state():
    module_on_rank(0, world_size=1).on_load_checkpoint({"rng_states": {"torch": state_of_seed(3)}})
    assert torch.equal(torch.get_rng_state(), state_of_seed(3))


def test_loading_weights_outside_a_trainer_leaves_the_global_random_state_alone():
    module = VAEModule(hidden_dim=8, latent_dim=2)
    torch.manual_seed(5)
    module.on_load_checkpoint({"rng_states": {"ranks": [{"torch": state_of_seed(0)}]}})
    assert torch.equal(torch.get_rng_state(), state_of_seed(5))


def gpu_state(rank: int) -> torch.Tensor:
    """A stand-in for rank `rank`'s GPU generator state: 16 bytes (a CPU state is 5056), its own per rank."""
    return torch.arange(16, dtype=torch.uint8) + 100 + rank


@pytest.fixture
def a_stand_in_gpu(monkeypatch) -> list:
    """A CPU-only machine made to look like a GPU to the random-state hooks: `torch.cuda`'s get and set
    of the generator state, and moving a tensor to the GPU (for the gather) is a no-op. Returns the
    states `torch.cuda.set_rng_state` was given."""
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: gpu_state(device.index))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    to = torch.Tensor.to

    def to_a_gpu_or_not(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        gpu = args and isinstance(args[0], torch.device) and args[0].type == "cuda"
        return self if gpu else to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to_a_gpu_or_not)
    return restored


def test_on_gpus_every_ranks_cpu_and_gpu_states_are_gathered_and_split_apart(monkeypatch, a_stand_in_gpu):
    module = module_on_rank(0, world_size=2, device="cuda:0")
    torch.manual_seed(10)
    other_rank = torch.cat([state_of_seed(11), gpu_state(1)])  # what rank 1 sends: its two states, end to end
    monkeypatch.setattr(module, "all_gather", lambda mine: torch.stack([mine, other_rank]))
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    ranks = checkpoint["rng_states"]["ranks"]
    assert [sorted(rank) for rank in ranks] == [["cuda", "torch"], ["cuda", "torch"]]
    assert torch.equal(ranks[0]["torch"], state_of_seed(10)) and torch.equal(ranks[0]["cuda"], gpu_state(0))
    assert torch.equal(ranks[1]["torch"], state_of_seed(11)) and torch.equal(ranks[1]["cuda"], gpu_state(1))


def test_on_gpus_each_rank_takes_back_its_own_cpu_and_gpu_states(a_stand_in_gpu):
    ranks = [{"torch": state_of_seed(r), "cuda": gpu_state(r)} for r in (0, 1)]
    module_on_rank(1, world_size=2, device="cuda:1").on_load_checkpoint({"rng_states": {"ranks": ranks}})
    assert torch.equal(torch.get_rng_state(), state_of_seed(1))
    ((state, device),) = a_stand_in_gpu
    assert torch.equal(state, gpu_state(1)) and device == torch.device("cuda", 1)


def test_on_gpus_another_number_of_processes_restores_no_gpu_state(a_stand_in_gpu):
    """Rank 0's GPU state on another GPU, or on every GPU, is not what any of them drew: each keeps its own."""
    ranks = [{"torch": state_of_seed(r), "cuda": gpu_state(r)} for r in (0, 1)]
    with pytest.warns(UserWarning, match="2 process.*this run has 3"):
        module_on_rank(0, world_size=3, device="cuda:0").on_load_checkpoint({"rng_states": {"ranks": ranks}})
    assert torch.equal(torch.get_rng_state(), state_of_seed(0)) and a_stand_in_gpu == []
