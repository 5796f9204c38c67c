"""Every process's random state goes into the checkpoint, and each process takes back its own.

Under DDP each process draws its own reparameterisation noise (on a GPU, from its GPU's
generator), and only rank 0 writes the checkpoint. These run `RandomStates`' save and load hooks
with a stand-in trainer of several ranks; the gather itself is Lightning's `all_gather`, replaced
here by what the other ranks would send. (tests/test_resume_exact.py and tests/test_ddp.py resume
real runs bit-identically through them.)
"""

from types import SimpleNamespace

import lightning
import pytest
import torch

from vae.module import VAEModule
from vae.random_states import RandomStates


def state_of_seed(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


class OnRank:
    """A module on rank `rank` of `world_size` processes, and its RandomStates callback's hooks."""

    def __init__(self, rank: int, world_size: int, device: str = "cpu") -> None:
        self.module = VAEModule(hidden_dim=8, latent_dim=2)
        strategy = SimpleNamespace(root_device=torch.device(device))
        self.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, strategy=strategy)
        (self.callback,) = [c for c in self.module.configure_callbacks() if isinstance(c, RandomStates)]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.callback.on_save_checkpoint(self.trainer, self.module, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.callback.on_load_checkpoint(self.trainer, self.module, checkpoint)


def module_on_rank(rank: int, world_size: int, device: str = "cpu") -> OnRank:
    return OnRank(rank, world_size, device)


@pytest.fixture(autouse=True)
def keep_the_global_random_state():
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


def test_every_ranks_state_is_gathered_into_the_checkpoint(monkeypatch):
    module = module_on_rank(0, world_size=2)
    torch.manual_seed(10)
    other_rank = state_of_seed(11)
    monkeypatch.setattr(module.module, "all_gather", lambda mine: torch.stack([mine, other_rank]))
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


def test_loading_weights_outside_a_trainer_leaves_the_global_random_state_alone(tmp_path):
    """`load_from_checkpoint` (weights for use, e.g. sample.py) runs no callback: the caller's stream stays."""
    module = VAEModule(hidden_dim=8, latent_dim=2)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "rng_states": {"ranks": [{"torch": state_of_seed(0)}]}}, path)  # fmt: skip
    torch.manual_seed(5)
    VAEModule(hidden_dim=8, latent_dim=2)  # building the module draws its initial weights, as loading does
    built = torch.get_rng_state()
    torch.manual_seed(5)
    VAEModule.load_from_checkpoint(path, weights_only=True)
    assert torch.equal(torch.get_rng_state(), built)


def test_rank_r_draws_from_the_runs_seed_plus_r_and_rank_0_keeps_its_stream(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "40")
    for rank, stream in ((1, 41), (3, 43)):
        on_rank = module_on_rank(rank, world_size=4)
        on_rank.callback.setup(on_rank.trainer, on_rank.module, "fit")
        assert torch.equal(torch.get_rng_state(), state_of_seed(stream))
    on_rank = module_on_rank(0, world_size=4)
    torch.manual_seed(7)
    on_rank.callback.setup(on_rank.trainer, on_rank.module, "fit")
    assert torch.equal(torch.get_rng_state(), state_of_seed(7))


def test_every_trainer_the_module_runs_in_gets_the_random_states_and_the_precision_policy(tmp_path):
    """Added by the module itself (`configure_callbacks`), so a Trainer built by hand resumes exactly too."""
    from lightning.pytorch import Trainer

    from vae.precision import PrecisionPolicy

    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0,
                      enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")  # fmt: skip
    module = VAEModule(hidden_dim=8, latent_dim=2, init_output_bias=False)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(4, 1, 28, 28), torch.zeros(4)))
    trainer.fit(module, data)
    kinds = {type(callback) for callback in trainer.callbacks}
    assert {RandomStates, PrecisionPolicy} <= kinds


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
    monkeypatch.setattr(module.module, "all_gather", lambda mine: torch.stack([mine, other_rank]))
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
