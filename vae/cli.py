"""The command line: LightningCLI with this project's defaults, and resume that does what it says.

    python train.py                         # == python train.py fit, with the defaults below
    python train.py --ckpt_path last        # resume the newest run, in its own version_N
    python train.py test --ckpt_path PATH   # evaluate; writes test_metrics.json into PATH's run

Lightning traps this file designs around:
- `ckpt_path="last"` looks in the *new* run's empty checkpoint folder and silently trains from
  scratch. Here "last" is resolved to the newest `last.ckpt` under the log folder, or it fails.
- An auto-versioned logger opens a new `version_N` on resume. Here the logger is pinned to the
  checkpoint's own run directory, so curves continue where they stopped.
- `SaveConfigCallback` refuses to overwrite `config.yaml` on resume. Here a resumed fit rewrites
  it (the hyperparameters come from the checkpoint, so it still describes the run) and other
  subcommands save `<subcommand>_config.yaml` beside it.
- With `--ckpt_path`, the checkpoint's saved hyperparameters override the command line, so
  `test --ckpt_path X --model.iw_samples 5000` would silently use the k the model was trained
  with. Here evaluation settings (`EVALUATION_SETTINGS`) keep the command line's value.
"""

import inspect
import sys
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from vae.callbacks import (
    EvaluateAtCheckpointStep,
    HParamsWithMetrics,
    ImageGrids,
    KLPerDimensionToLoggers,
    LatentProjector,
    StopOnNonFiniteLoss,
    TestMetricsJSON,
)
from vae.checkpoints import (
    CheckpointError,
    RunCheckpoint,
    check_checkpoint,
    check_writable,
    find_last_checkpoint,
    run_dir_of,
)
from vae.console import quiet_console
from vae.data import MNISTDataModule
from vae.module import VAEModule
from vae.predictions import PredictionsFile

SUBCOMMANDS = ("fit", "validate", "test", "predict")
LOGS_DIR = "lightning_logs"
PROGRESS_BAR_REFRESH_STEPS = 10
# Model options that say how to evaluate or run, not what was trained: never taken from a checkpoint.
EVALUATION_SETTINGS = ("iw_samples", "compile", "matmul_precision")
# Model options that fix the shapes of the weights: a checkpoint cannot be loaded into others.
ARCHITECTURE = ("arch", "hidden_dim", "latent_dim")
# Data options that say what the model was trained and validated on: a checkpoint supplies them.
DATA_OF_THE_RUN = ("binarize", "val_size", "split_seed")


class SaveRunConfig(SaveConfigCallback):
    """`config.yaml` for fit (rewritten on resume); `<subcommand>_config.yaml` for the others."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            self.config_filename = f"{trainer.state.fn.value}_config.yaml"
        super().setup(trainer, pl_module, stage)


class VAECLI(LightningCLI):
    def __init__(self, **kwargs) -> None:
        quiet_console()
        super().__init__(
            VAEModule,
            MNISTDataModule,
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            trainer_defaults={
                "max_epochs": 30,
                "accelerator": "auto",
                "plugins": [{"class_path": "vae.checkpoints.SafeCheckpointIO"}],
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": ".", "name": LOGS_DIR, "default_hp_metric": False},
                },
                "callbacks": [
                    LatentProjector(),
                    HParamsWithMetrics(),
                    EvaluateAtCheckpointStep(),
                    KLPerDimensionToLoggers(),
                    TestMetricsJSON(),
                    PredictionsFile(),
                    StopOnNonFiniteLoss(),
                    # redrawing the bar every step costs more than a step of this small network
                    TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS),
                ],
            },
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # configurable as --checkpoint.*, e.g. --checkpoint.save_last_every_n_steps 500
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        # configurable as --images.*, e.g. --images.every_n_epochs 5
        parser.add_lightning_class_args(ImageGrids, "images")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """After parsing, before anything is built: resolve and check `--ckpt_path`, pin the logger.

        Under DDP every process parses the command line itself (Lightning's `ddp` launcher reruns
        it; torchrun and srun start them all). On one machine they resolve `last` to the same file,
        as no rank can write a checkpoint before every rank has joined the process group, i.e.
        finished parsing; across machines only a consistently shared log folder guarantees that.
        """
        super().parse_arguments(parser, args)
        self._evaluation_settings = {}
        if not self.config.get("subcommand"):
            return
        config = self.config[self.config.subcommand]
        self._evaluation_settings = {name: config.model[name] for name in EVALUATION_SETTINGS}
        logger = config.trainer.logger
        logger_args = logger.init_args if hasattr(logger, "init_args") else None
        if config.get("ckpt_path") is not None:
            self._resolve_checkpoint(config, logger_args)
            if getattr(logger, "class_path", None) == "lightning.pytorch.loggers.CSVLogger":
                logger.class_path = "vae.csv_logger.ContinuingCSVLogger"  # Lightning's would delete metrics.csv
        elif self.config.subcommand == "predict":
            raise CheckpointError("predict needs --ckpt_path: the checkpoint whose posteriors to compute.")
        if logger_args is not None and "save_dir" in logger_args:
            check_writable(Path(logger_args.save_dir) / (logger_args.get("name") or ""))

    def _resolve_checkpoint(self, config, logger_args) -> None:
        """`last` -> a file; check the file; pin the logger to the checkpoint's own run directory."""
        if config.ckpt_path == "last":
            if logger_args is None:
                raise CheckpointError("--ckpt_path last needs a logger to know where runs are; pass a .ckpt path.")
            config.ckpt_path = str(find_last_checkpoint(Path(logger_args.save_dir) / (logger_args.name or "")))
            print(f"Resuming from {config.ckpt_path}", file=sys.stderr)
        checkpoint = Path(config.ckpt_path)
        saved = check_checkpoint(checkpoint)
        self._agree_with_checkpoint(config, checkpoint, saved)
        run_dir = run_dir_of(checkpoint)
        if run_dir is not None and logger_args is not None and "version" in logger_args:
            logger_args.save_dir, logger_args.name, logger_args.version = str(run_dir.parent), "", run_dir.name

    @staticmethod
    def _agree_with_checkpoint(config, checkpoint: Path, saved: dict) -> None:
        """An architecture the checkpoint does not have is an error; data options left at their
        defaults become the run's own (so `test` sees the data the model was trained on)."""
        model_defaults = inspect.signature(VAEModule).parameters
        trained = saved.get("hyper_parameters", {})
        for name in ARCHITECTURE:
            asked = config.model[name]
            if name in trained and asked not in (trained[name], model_defaults[name].default):
                raise CheckpointError(
                    f"--ckpt_path {checkpoint} holds a model with {name}={trained[name]}, but --model.{name} "
                    f"{asked} was given. A checkpoint's weights only fit its own architecture: drop "
                    f"--model.{name} to use the checkpoint's, or start a new run without --ckpt_path."
                )
        data_defaults = inspect.signature(MNISTDataModule).parameters
        data = saved.get("datamodule_hyper_parameters", {})
        for name in DATA_OF_THE_RUN:
            if name in data and config.data[name] == data_defaults[name].default:
                config.data[name] = data[name]

    def before_instantiate_classes(self) -> None:
        """Runs after LightningCLI applied the checkpoint's hyperparameters: put evaluation settings back;
        and let `--trainer.enable_progress_bar false` win over the default progress bar callback."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        for name, value in self._evaluation_settings.items():
            config.model[name] = value
        if config.trainer.enable_progress_bar is False:
            callbacks = self.trainer_defaults["callbacks"]
            self.trainer_defaults["callbacks"] = [c for c in callbacks if not isinstance(c, TQDMProgressBar)]

    def instantiate_classes(self) -> None:
        """A constructor that rejects its options says why in one line, not in a traceback."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None


def main() -> None:
    """`python train.py ARGS`: a bare `python train.py [--options]` means `fit`."""
    if len(sys.argv) == 1 or sys.argv[1] not in (*SUBCOMMANDS, "-h", "--help"):
        sys.argv.insert(1, "fit")
    VAECLI()
