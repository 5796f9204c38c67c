"""Every place this project relies on Lightning's private names: the one file to recheck on a Lightning upgrade.

Each piece does something no public Lightning API offers (written against Lightning 2.6); its
docstring names the internal it relies on and why. If an upgrade renames one, the tests that
cover it fail (tests/test_outputs.py, tests/test_cli.py).
"""

import csv

from jsonargparse import ArgumentParser
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table


def set_option_type(parser: ArgumentParser, option: str, typehint: object) -> None:
    """Give an option LightningCLI added from a signature another type: jsonargparse has no public way to
    change an added option's type, so this sets its action's private `_typehint` (found through argparse's
    private `_option_string_actions`). Used for the Trainer's batch limits, whose `int | float` jsonargparse
    reads float-first (`1` would be 100% of the batches, not one)."""
    parser._option_string_actions[option]._typehint = typehint


def add_to_help(parser: ArgumentParser, option: str, text: str) -> None:
    """Append `text` to an option's `--help` line (argparse's private `_option_string_actions`)."""
    action = parser._option_string_actions[option]
    action.help = f"{action.help or ''} {text}".strip()


def logging_step(trainer: Trainer) -> int:
    """The step Lightning logs a stage's scalars at: the fit loop's private `_batches_that_stepped`, which
    no public name gives (`global_step` counts optimiser steps, and is not what `validate` or `test` log at)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def stepping_batches(trainer: Trainer) -> int:
    """`trainer.estimated_stepping_batches`, the optimiser steps of the whole fit, without its side effect on
    resume: asked for before the checkpoint is restored (in `configure_optimizers`), it builds the training
    loader, and Lightning then never hands that loader its saved position (Lightning issue #20550), so a
    run resumed mid-epoch would start the epoch's batches over. The loader it built (the fit loop's private
    `_combined_loader`) is dropped: the fit loop builds it again after the restore, and restores it."""
    built = trainer.fit_loop._combined_loader is not None
    steps = trainer.estimated_stepping_batches
    if not built:
        trainer.fit_loop._combined_loader = None
    return steps


def summary_table(
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
    total_flops: int,
    *columns: tuple[str, list[str]],
) -> str:
    """The table `ModelSummary` prints, from Lightning's private `_format_summary_table` (its only formatter),
    so that a summary with a column less looks like Lightning's own."""
    return _format_summary_table(
        total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
    )


class EvaluateAtCheckpointStep(Callback):
    """`test`/`validate --ckpt_path X` log their scalars at X's training step and epoch, not at 0.

    Lightning logs evaluation scalars at its count of training batches that stepped (the private
    `_batches_that_stepped`), and adds an `epoch` scalar from its epoch count, both of which only
    `fit` restores; so the test points of a checkpoint sat at the far left of its training curves
    (testing `best` and `last` put two points on one), and the `epoch` curve fell to 0 at its end.
    Here that count is set to the checkpoint's `global_step` (one optimiser step per batch that
    stepped) and the epoch to its `epoch`, so each tested checkpoint is a point above the step it
    was saved at and the `epoch` curve stays level.
    """

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != TrainerFn.FITTING and "global_step" in checkpoint:
            trainer.fit_loop.epoch_loop._batches_that_stepped = checkpoint["global_step"]
            trainer.fit_loop.epoch_progress.current.completed = checkpoint["epoch"]


class ContinuingWriter(ExperimentWriter):
    """Keeps an existing `metrics.csv` and carries on under its header (new columns are added to it).

    Overrides the writer's private `_check_log_dir_exists` (which deletes the file) and reads through
    its private file system `_fs`: Lightning has no option to append."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class ContinuingCSVLogger(CSVLogger):
    """Lightning's CSVLogger, made to continue a run: a resumed fit, `test` or `predict` appends to the
    run's `metrics.csv` instead of deleting it.

    Lightning's writer deletes `metrics.csv` whenever its folder already holds files, i.e. every time
    this project pins the logger to a checkpoint's own run (`vae.cli`): `--ckpt_path last` would
    throw away the curves of the epochs it continues. The CLI uses this class in that case. It builds
    its writer as Lightning's `experiment` does, through the logger's private `_experiment` and `_fs`.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
