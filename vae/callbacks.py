"""What a person looks at: image grids as PNG files and in the run's logger, the HPARAMS tab in
TensorBoard, test metrics as JSON; and the guard that stops a run whose loss stopped being a number.

The writers write from global rank 0 only, never during the sanity-check pass, and never on
the training hot path (they run once per validation epoch, or at the start/end of a stage).
Files go into the run directory (`vae.run.run_dir`), the folder that holds the run's `checkpoints/`,
whichever logger the run uses.
"""

import json
import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.callbacks.model_summary import log as model_summary_log
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torchvision.utils import save_image

from vae.lightning_internals import logging_step, summary_table
from vae.pictures import image_grid, interpolation_grid, reconstruction_grid
from vae.run import public, run_dir

# The scalars shown as columns in TensorBoard's HPARAMS tab (it reads their latest values).
HPARAMS_METRICS = (
    "val/loss", "val/recon", "val/kl", "val/active_units",
    "test/loss", "test/recon", "test/kl", "test/nll", "test/nll_bpd", "test/active_units",
)  # fmt: skip


def _tensorboard(trainer: Trainer):  # -> SummaryWriter | None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ImageGrids(Callback):
    """After every `every_n_epochs`-th validation epoch: reconstructions, interpolations and prior
    samples (`vae.pictures`), as `<run dir>/images/<kind>-epochNNN.png` whatever the logger, and in
    TensorBoard's IMAGES tab. (Other loggers get the files only: their image APIs are not tested here.)

    Reconstructions show the first validation images above their reconstructions; interpolations
    walk between pairs of them, from posterior mean to posterior mean. The samples decode the same
    z every epoch (drawn once from `seed`), so a grid shows how the decoder changes, not the noise.

    Args:
        every_n_epochs: draw after epochs n, 2n, ... (counting from 1); 0: never.
        n_reconstructions: validation images shown above their reconstructions.
        n_interpolations: rows of interpolations, each between two validation images.
        n_samples: decoded draws from the prior.
        seed: chooses the prior draws, the same every epoch.
    """

    # kind in the file name -> tag in TensorBoard (the tags runs have always had)
    TAGS = {"reconstructions": "val/reconstructions", "interpolations": "val/interpolations", "prior": "samples/prior"}

    def __init__(
        self,
        every_n_epochs: int = 1,
        n_reconstructions: int = 32,
        n_interpolations: int = 8,
        n_samples: int = 64,
        seed: int = 0,
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"--images.every_n_epochs must be >= 0 (0: no pictures), got {every_n_epochs}.")
        self.every_n_epochs = every_n_epochs
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
        inputs, self._inputs = self._inputs, None
        n = self.every_n_epochs
        due = n > 0 and (trainer.current_epoch + 1) % n == 0
        # Only in fit (`validate` would redraw epoch 0's file), and no logger, no pictures:
        # `--trainer.logger false` asks for a run that writes no logs.
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if not (fitting and due and trainer.is_global_zero and trainer.loggers) or inputs is None:
            return
        writer = _tensorboard(trainer)
        for kind, grid in self.grids(pl_module, inputs).items():
            path = run_dir(trainer) / "images" / f"{kind}-epoch{trainer.current_epoch:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(grid, path)
            if writer is not None:
                writer.add_image(self.TAGS[kind], grid, trainer.global_step)

    def grids(self, pl_module: LightningModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pictures of one epoch by kind, from validation images x, as (3, H, W) tensors."""
        model = pl_module.model
        grids = {"reconstructions": reconstruction_grid(model, x[: self.n_reconstructions])}
        pairs = min(self.n_interpolations, len(x) // 2)
        if pairs:
            grids["interpolations"] = interpolation_grid(model, x[:pairs], x[pairs : 2 * pairs])
        grids["prior"] = image_grid(model.sample(self.n_samples, generator=torch.Generator().manual_seed(self.seed)))
        return grids


class SummaryWithoutFLOPs(ModelSummary):
    """Lightning's model summary without its FLOPs column and "Total Flops" line, which would read 0.

    Lightning counts FLOPs by passing the module's `example_input_array` through it, and this module
    has none, on purpose: that pass would draw reparameterisation noise before training (so the same
    seed would no longer give the same weights), and its input would have to be a batch of the data
    module's format and image shape.
    """

    @staticmethod
    def summarize(summary_data: list, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict[str, int], total_flops: int, **summarize_kwargs) -> None:  # fmt: skip
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
        )
        model_summary_log.info("\n" + table.rsplit("\n", 1)[0])  # the last line is "Total Flops"


class LatentProjector(Callback):
    """At the end of fit: posterior means of the first `n_images` test images in TensorBoard's
    embedding projector (PROJECTOR tab), labelled by class, each point shown as its image (the
    image as the model sees it: grey or colour, binarised if the run's data is).

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
        means, thumbnails = [], []
        for start in range(0, len(images), 1000):
            batch = (images[start : start + 1000].to(pl_module.device), labels[start : start + 1000])
            x, _ = datamodule.on_after_batch_transfer(batch, 0)  # (B, C, H, W) in [0, 1]
            means.append(pl_module.model.encode(x)[0].cpu())
            thumbnails.append(x.cpu())
        writer.add_embedding(
            torch.cat(means),
            metadata=labels.tolist(),
            label_img=torch.cat(thumbnails),
            global_step=trainer.global_step,
            tag="test/posterior_means",
        )


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

        params = {f"model/{k}": v for k, v in public(pl_module.hparams).items()}
        if trainer.datamodule is not None:
            params |= {f"data/{k}": v for k, v in public(trainer.datamodule.hparams).items()}
        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        for summary in hparams(params, dict.fromkeys(HPARAMS_METRICS, 0.0)):
            writer.file_writer.add_summary(summary)


class KLPerDimensionToLoggers(Callback):
    """Sends the `val_kl_per_dim/zNN` and `test_kl_per_dim/zNN` scalars to the loggers, at the step
    of the other validation or test scalars.

    The module logs them with `logger=False`, because Lightning prints every logged metric of
    `validate` and `test` in its results table, and twenty per-dimension rows buried the five numbers
    people came for (loss, recon, kl, nll, active units). So they reach the loggers here, and
    test_metrics.json as before.
    """

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._send(trainer, "val_kl_per_dim/")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._send(trainer, "test_kl_per_dim/")

    @staticmethod
    def _send(trainer: Trainer, prefix: str) -> None:
        per_dim = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
        if not trainer.is_global_zero or not per_dim:
            return
        step = logging_step(trainer)  # where Lightning put the stage's other scalars
        for logger in trainer.loggers:
            logger.log_metrics(per_dim, step=step)
            logger.save()


class TestMetricsJSON(Callback):
    """Writes the test metrics to `<run dir>/test_metrics.json`, beside the checkpoint they came from."""

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test")}
        record = {"ckpt_path": trainer.ckpt_path, "metrics": metrics, "hparams": public(pl_module.hparams)}
        path = run_dir(trainer) / "test_metrics.json"
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
