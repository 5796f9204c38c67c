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


def module_on_rank(rank: int, world_size: int) -> VAEModule:
    module = VAEModule(hidden_dim=8, latent_dim=2)
    cpu = SimpleNamespace(root_device=torch.device("cpu"))
    module.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, strategy=cpu)
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
