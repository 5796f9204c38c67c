"""The run's seed, read where both the data (the training order) and the model (its noise) need it."""

import os

import torch


def run_seed() -> int:
    """The run's seed, the same on every process: `seed_everything`'s (Lightning keeps it in PL_GLOBAL_SEED),
    else the global generator's. Not simply the generator's under DDP, where each rank draws its noise
    from a generator of its own (`vae.random_states`)."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
