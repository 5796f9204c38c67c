"""A shuffling DataLoader that can stop mid-epoch and resume at the same batch, in the same order,
on one process or sharded over the processes of a DDP run.

Lightning saves the `state_dict()` of any training loader that has one into each checkpoint and
hands it back through `load_state_dict()` on resume. A plain `DataLoader` has neither, so a run
resumed from a mid-epoch checkpoint would reshuffle and see some images twice and others never.

Here the order of epoch e is a pure function of (seed, e), the same permutation
`DistributedSampler` draws, dealt to the W processes as it deals it (process r takes positions
r, r + W, ...; the last round is padded with the epoch's first images so that every process gets
as many). The state is (epoch, positions of the epoch's order already dealt, W): enough to deal
the rest of the epoch exactly. Under DDP only process 0's state is saved, which is every
process's, as they all take one batch per step. The rest of an epoch can only be dealt to as many
processes as it was started with (Lightning counts the epoch's batches done, per process): the
command line refuses other numbers mid-epoch (`vae.cli_checks.check_processes`).

Being a `DistributedSampler`, it is left alone by Lightning under DDP (Lightning wraps any other
sampler in its `DistributedSamplerWrapper`, which keeps no position) and gets its `set_epoch`.
"""

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A random permutation per epoch, seeded by (seed, epoch), shared out between `num_replicas`
    processes (this one is `rank`), that can start part-way through."""

    def __init__(self, size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size = size
        self.served = 0  # positions of this epoch's order dealt so far, to all processes together
        self._skip = 0  # positions to skip at the next __iter__, after a resume

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        if epoch != self.epoch:
            self.epoch, self._skip = epoch, 0

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        start, self._skip = self._skip, 0
        rest = order[start:]
        rest += order[: -(-len(rest) // self.num_replicas) * self.num_replicas - len(rest)]  # equal shares
        self.served = start
        for index in rest[self.rank :: self.num_replicas]:
            self.served += self.num_replicas
            yield index

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, int]:
        state = {"epoch": self.epoch, "served": self.served, "processes": self.num_replicas, "size": self.size}
        return state | {"seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = state.get("seed", self.seed)  # the order of the run resumed, whatever seed resumes it
        self.epoch = state["epoch"]
        self._skip = state["served"] if state["served"] < self.size else 0  # a finished epoch: the next one's start


class ResumableDataLoader(DataLoader):
    """A DataLoader whose state is its sampler's; Lightning checkpoints it and restores it."""

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state)
