"""Every process's random state in the checkpoint, so that a resumed run draws the noise an uninterrupted
one would have: bit-identical resume, also under DDP.

The reparameterisation noise and dynamic binarisation draw from the global generators (the CPU's and
the GPU's), so their states decide the future of a run as much as its weights do. `VAEModule` adds
this callback to every Trainer it runs in (`configure_callbacks`), whoever built the Trainer; a model
loaded with `load_from_checkpoint` runs no callback, so the global random state is left alone there.

Hook order (Lightning 2.6): `setup` runs before a checkpoint is restored, and a Callback's
`on_load_checkpoint` after the module's and the datamodule's, before any batch; nothing draws a
random number in between, so a state taken back here is the one the next step draws from.
"""

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from vae.seed import run_seed

RankStates = dict[str, torch.Tensor]  # {"torch": CPU generator state, "cuda" or "mps": this rank's GPU's}


class RandomStates(Callback):
    """Under DDP rank r > 0 draws from the run's seed + r; each rank's states are saved, and taken back."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Under DDP, rank r > 0 draws its noise (reparameterisation, dynamic binarisation) from the run's
        seed + r, so the ranks' images do not share one noise sequence; rank 0 keeps the stream of a single
        process. A checkpoint's random states, restored after this, replace it (exact resume)."""
        if trainer.global_rank:
            torch.manual_seed(run_seed() + trainer.global_rank)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        """Every process's own states (its CPU generator's and its GPU's), gathered into the one file rank 0
        writes. Runs on every rank (Lightning's `save_checkpoint` must be called on all of them), so the
        gather is a collective that every rank joins."""
        checkpoint["rng_states"] = {"ranks": self.states_of_every_rank(trainer, pl_module)}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        """Each process takes back its own states. A checkpoint from another number of processes cannot give
        each its own: then rank 0 takes rank 0's CPU state and no GPU state, the others keep `setup`'s stream."""
        states = checkpoint.get("rng_states", {})
        ranks = states.get("ranks", [{"torch": states["torch"]}] if "torch" in states else [])  # older: rank 0's CPU
        if not ranks:
            return
        world_size, rank = trainer.world_size, trainer.global_rank
        if len(ranks) == world_size:
            mine = ranks[rank]
        else:
            rank_zero_warn(
                f"The checkpoint holds the random states of {len(ranks)} process(es) and this run has {world_size}: "
                "rank 0 starts from the checkpoint's rank-0 CPU state, the others from fresh streams. Training "
                "continues correctly, but not bit-identically to an uninterrupted run."
            )
            if rank:
                return  # the stream `setup` gave it
            mine = {"torch": ranks[0]["torch"]}
        torch.set_rng_state(mine["torch"])
        device = trainer.strategy.root_device  # the model may not be on it yet: restoring comes first
        if "cuda" in mine and device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], device)
        if "mps" in mine and device.type == "mps":
            torch.mps.set_rng_state(mine["mps"])

    @staticmethod
    def states_of_every_rank(trainer: Trainer, pl_module: LightningModule) -> list[RankStates]:
        """This rank's states, and under DDP every rank's, in rank order."""
        mine, device = {"torch": torch.get_rng_state()}, trainer.strategy.root_device
        if device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(device)
        elif device.type == "mps":
            mine["mps"] = torch.mps.get_rng_state()
        if trainer.world_size == 1:
            return [mine]
        # one uint8 vector per rank, gathered on the device (NCCL gathers only GPU tensors)
        sizes = {name: len(state) for name, state in mine.items()}
        gathered = pl_module.all_gather(torch.cat(list(mine.values())).to(device)).cpu()
        return [
            {name: state.clone() for name, state in zip(sizes, row.split(list(sizes.values())), strict=True)}
            for row in gathered
        ]
