"""What a person looks at: image grids and the HPARAMS tab in TensorBoard, test metrics as JSON.

All of these write from global rank 0 only, never during the sanity-check pass, and never on
the training hot path (they run once per validation epoch, or at the start/end of a stage).
"""

import json
import math
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

# The scalars shown as columns in TensorBoard's HPARAMS tab (it reads their latest values).
HPARAMS_METRICS = ("val/loss", "val/recon", "val/kl", "test/loss", "test/recon", "test/kl")


def _tensorboard(trainer: Trainer):  # -> SummaryWriter | None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ImageGrids(Callback):
    """After each validation epoch: validation inputs above their reconstructions, and prior samples.

    The samples decode the same z every epoch (drawn once from `seed`), so a grid shows how the
    decoder changes, not how the noise does. Reconstructions decode the posterior mean.
    """

    def __init__(self, n_reconstructions: int = 32, n_samples: int = 64, seed: int = 0) -> None:
        self.n_reconstructions, self.n_samples, self.seed = n_reconstructions, n_samples, seed
        self._inputs: torch.Tensor | None = None

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            self._inputs = batch[0][: self.n_reconstructions]

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = _tensorboard(trainer)
        if trainer.sanity_checking or not trainer.is_global_zero or writer is None or self._inputs is None:
            return
        from torchvision.utils import make_grid  # torchvision is slow to import; only needed here

        model = pl_module.model
        x = self._inputs
        mu, _ = model.encode(x)
        reconstructions = torch.sigmoid(model.decode(mu))
        rows = math.ceil(len(x) / 8)
        pairs = torch.cat([torch.cat([x[i * 8 : i * 8 + 8], reconstructions[i * 8 : i * 8 + 8]]) for i in range(rows)])
        step = trainer.global_step
        writer.add_image("val/reconstructions", make_grid(pairs.cpu(), nrow=8, pad_value=1.0), step)

        z = torch.randn(self.n_samples, model.latent_dim, generator=torch.Generator().manual_seed(self.seed))
        samples = torch.sigmoid(model.decode(z.to(pl_module.device)))
        writer.add_image("samples/prior", make_grid(samples.cpu(), nrow=8, pad_value=1.0), step)
        self._inputs = None


class HParamsWithMetrics(Callback):
    """Puts the run's hyperparameters in TensorBoard's HPARAMS tab, with the final metrics beside them.

    Lightning's own `log_hyperparams` either adds a placeholder `hp_metric` scalar or, with
    `default_hp_metric=False`, leaves the tab empty. Here the hparams summary names the real
    metric tags; TensorBoard fills each column with that tag's latest value.
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module)

    def _write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = _tensorboard(trainer)
        if not trainer.is_global_zero or writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        params = {f"model/{k}": v for k, v in pl_module.hparams.items() if not k.startswith("_")}
        if trainer.datamodule is not None:
            params |= {f"data/{k}": v for k, v in trainer.datamodule.hparams.items()}
        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        for summary in hparams(params, dict.fromkeys(HPARAMS_METRICS, 0.0)):
            writer.file_writer.add_summary(summary)


class TestMetricsJSON(Callback):
    """Writes the test metrics to `<run dir>/test_metrics.json`, beside the checkpoint they came from."""

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast from rank 0: every rank must ask, or DDP stalls or crashes
        if not trainer.is_global_zero or log_dir is None:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        record = {"ckpt_path": trainer.ckpt_path, "metrics": metrics, "hparams": dict(pl_module.hparams)}
        path = Path(log_dir) / "test_metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"Test metrics written to {path}")
