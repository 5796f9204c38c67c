"""`python train.py predict --ckpt_path PATH` keeps what it computed: `<run dir>/predictions.pt`.

The file is a dict of plain tensors, loadable with `torch.load(path, weights_only=True)`:

    mu      (N, latent_dim)  posterior means of the test images
    logvar  (N, latent_dim)  posterior log-variances
    label   (N,)             the labels (the digits, for MNIST)
    loss    (N,)             each image's negative ELBO, in nats (as `test/loss`: from the same k samples)
    nll     (N,)             its importance-weighted -log p(x) with k = `--model.iw_samples` (not with k = 0)
    index   (N,)             each row's position in the test set (the files are in test-set order)

Under DDP every rank predicts its own share of the test set and writes `predictions-rank<R>.pt`
(no gather: nothing is sent between ranks, and no rank holds the whole set); concatenate them and
sort by `index` to get the single-process file.
"""

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from vae.run import run_dir


class PredictionsFile(BasePredictionWriter):
    """Writes the predictions of the whole predict epoch into the run directory, in one file per rank."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: list[Any], batch_indices: list[Any]
    ) -> None:
        (indices,) = batch_indices  # one predict dataloader: `predictions` is then its list of batches
        record = {key: torch.cat([batch[key] for batch in predictions]) for key in predictions[0]}
        record["index"] = torch.tensor([i for batch in indices for i in batch], dtype=torch.long)
        name = "predictions.pt" if trainer.world_size == 1 else f"predictions-rank{trainer.global_rank}.pt"
        path = run_dir(trainer) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(record, path)
        print(f"Predictions of {len(record['index'])} test images written to {path}")
