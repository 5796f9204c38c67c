"""A shuffling DataLoader that can stop mid-epoch and resume at the same batch, in the same order.

Lightning saves the `state_dict()` of any training loader that has one into each checkpoint and
hands it back through `load_state_dict()` on resume. A plain `DataLoader` has neither, so a run
resumed from a mid-epoch checkpoint would reshuffle and see some images twice and others never.

Here the order of epoch e is a pure function of (seed, e), like `DistributedSampler`'s, and the
state is (epoch, indices already served): enough to replay the rest of the epoch exactly.
"""

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    """A random permutation per epoch, seeded by (seed, epoch), that can start part-way through."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed = size, seed
        self.epoch = 0
        self.served = 0  # indices of this epoch handed out so far
        self._skip = 0  # indices to skip at the next __iter__, after a resume

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch (as for `DistributedSampler`)."""
        if epoch != self.epoch:
            self.epoch, self._skip = epoch, 0

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        start, self._skip = self._skip, 0
        self.served = start
        for index in order[start:].tolist():
            self.served += 1
            yield index

    def __len__(self) -> int:
        return self.size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]
        self._skip = state["served"] % self.size  # a finished epoch resumes at the next one's start


class ResumableDataLoader(DataLoader):
    """A DataLoader whose state is its sampler's; Lightning checkpoints it and restores it."""

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state)
