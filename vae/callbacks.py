"""What a person looks at: image grids and the HPARAMS tab in TensorBoard, test metrics as JSON;
and the guard that stops a run whose loss stopped being a number.

The writers write from global rank 0 only, never during the sanity-check pass, and never on
the training hot path (they run once per validation epoch, or at the start/end of a stage).
"""

import json
import math
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from vae.pictures import image_grid, interpolation_grid, reconstruction_grid

# The scalars shown as columns in TensorBoard's HPARAMS tab (it reads their latest values).
HPARAMS_METRICS = (
    "val/loss", "val/recon", "val/kl", "val/active_units",
    "test/loss", "test/recon", "test/kl", "test/nll", "test/active_units",
)  # fmt: skip


def _tensorboard(trainer: Trainer):  # -> SummaryWriter | None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ImageGrids(Callback):
    """After each validation epoch: reconstructions, interpolations and prior samples (`vae.pictures`).

    Reconstructions show the first validation images above their reconstructions; interpolations
    walk between pairs of them, from posterior mean to posterior mean. The samples decode the same
    z every epoch (drawn once from `seed`), so a grid shows how the decoder changes, not the noise.
    """

    def __init__(
        self, n_reconstructions: int = 32, n_interpolations: int = 8, n_samples: int = 64, seed: int = 0
    ) -> None:
        self.n_reconstructions, self.n_interpolations = n_reconstructions, n_interpolations
        self.n_samples, self.seed = n_samples, seed
        self._inputs: torch.Tensor | None = None

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            self._inputs = batch[0][: max(self.n_reconstructions, 2 * self.n_interpolations)]

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = _tensorboard(trainer)
        if trainer.sanity_checking or not trainer.is_global_zero or writer is None or self._inputs is None:
            return
        model, x, step = pl_module.model, self._inputs, trainer.global_step
        writer.add_image("val/reconstructions", reconstruction_grid(model, x[: self.n_reconstructions]), step)
        pairs = min(self.n_interpolations, len(x) // 2)
        if pairs:
            writer.add_image("val/interpolations", interpolation_grid(model, x[:pairs], x[pairs : 2 * pairs]), step)

        z = torch.randn(self.n_samples, model.latent_dim, generator=torch.Generator().manual_seed(self.seed))
        samples = torch.sigmoid(model.decode(z.to(pl_module.device)))
        writer.add_image("samples/prior", image_grid(samples), step)
        self._inputs = None


class LatentProjector(Callback):
    """At the end of fit: posterior means of the first `n_images` test images in TensorBoard's
    embedding projector (PROJECTOR tab), labelled by digit, each point shown as its image.

    Not all 10,000: TensorBoard builds the thumbnail sheet in float64, about 56 KB per image
    (all of them would add 0.5 GiB to the run's peak memory, for a picture).
    """

    def __init__(self, n_images: int = 1_000) -> None:
        self.n_images = n_images

    @torch.no_grad()
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer, datamodule = _tensorboard(trainer), trainer.datamodule
        if not trainer.is_global_zero or writer is None or getattr(datamodule, "test_set", None) is None:
            return
        images, labels = datamodule.test_set.images[: self.n_images], datamodule.test_set.labels[: self.n_images]
        means = []
        for start in range(0, len(images), 1000):
            batch = (images[start : start + 1000].to(pl_module.device), labels[start : start + 1000])
            x, _ = datamodule.on_after_batch_transfer(batch, 0)
            means.append(pl_module.model.encode(x)[0].cpu())
        thumbnails = images.unsqueeze(1).float() / 255
        writer.add_embedding(torch.cat(means), metadata=labels.tolist(), label_img=thumbnails,
                             global_step=trainer.global_step, tag="test/posterior_means")


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
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test")}
        record = {"ckpt_path": trainer.ckpt_path, "metrics": metrics, "hparams": dict(pl_module.hparams)}
        path = Path(log_dir) / "test_metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"Test metrics written to {path}")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Stops training once the loss is NaN or infinite, before a checkpoint holds weights it changed, naming the step.

    In one process on a CPU it checks every step before the backward pass, with one `.item()`:
    the run stops before the bad update, at the exact step. On a GPU (or under DDP) an `.item()`
    per step would make the host wait for the device every step, so there the device only
    remembers the first step whose loss was not finite (`torch.minimum`, no sync), and the host
    reads it where it waits anyway: on the steps the logger writes, before every checkpoint is
    written (`on_save_checkpoint` runs before the file is), and at the end of training. Under DDP
    the ranks take the earliest bad step of any rank, so they all stop together. The weights in
    memory may by then have taken bad updates; no checkpoint has. (A weights-only checkpoint,
    `save_weights_only`, skips callbacks' hooks, so it is not guarded.)
    """

    NO_BAD_STEP = torch.iinfo(torch.int64).max

    def __init__(self) -> None:
        self._first_bad_step: torch.Tensor | None = None  # on the device, when checks are deferred

    def checks_every_step(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Check at each step where that costs no device wait: one process, on a CPU."""
        return pl_module.device.type == "cpu" and trainer.world_size == 1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        every_step = self.checks_every_step(trainer, pl_module)
        self._first_bad_step = None if every_step else torch.tensor(self.NO_BAD_STEP, device=pl_module.device)

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if self._first_bad_step is not None:
            bad_step = torch.where(torch.isfinite(loss.detach()), self.NO_BAD_STEP, trainer.global_step)
            self._first_bad_step = torch.minimum(self._first_bad_step, bad_step)
            return
        value = loss.item()
        if not math.isfinite(value):
            raise self._error(
                trainer, f"became {value} at global step {trainer.global_step}",
                "training stopped before the step and nothing was saved after it",
            )  # fmt: skip

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        every = trainer.log_every_n_steps
        if every and trainer.global_step % every == 0:
            self._check(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        self._check(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        """One host-device sync (and under DDP one all-reduce, on every rank at the same point)."""
        if self._first_bad_step is None:
            return
        step = int(trainer.strategy.reduce(self._first_bad_step, reduce_op="min"))
        if step != self.NO_BAD_STEP:
            raise self._error(
                trainer, f"became NaN or infinite at global step {step}",
                f"training stopped at step {trainer.global_step}, before any checkpoint held the weights it changed",
            )  # fmt: skip

    @staticmethod
    def _error(trainer: Trainer, what: str, stopped: str) -> "NonFiniteLossError":
        checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        advice = (
            f"The last good checkpoint is {checkpoint}: resume from it with a lower --model.lr, "
            if checkpoint
            else "No checkpoint had been written yet: restart with a lower --model.lr, "
        )
        return NonFiniteLossError(
            f"The training loss {what} (epoch {trainer.current_epoch}); {stopped}. {advice}or look for bad input data."
        )
