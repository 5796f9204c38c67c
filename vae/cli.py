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
- The data a checkpoint was trained on is not restored at all. Here the checkpoint's data source
  and its options (all but `SERVING_OPTIONS`) become the defaults, so that an option given (on the
  command line or in a config file) wins, even at its usual default value, and one not given is
  the checkpoint's. Data of another image shape than the checkpoint's is refused in one line.
- `--trainer.limit_train_batches 1` (and the other `limit_*_batches`) would be read as 1.0, every
  batch. Here an integer is a number of batches, as Lightning documents (`BATCH_LIMITS`).
- `--data.root DIR --data ImageFolderDataModule` would give `root` to MNIST, the class chosen so
  far, which refuses it. Here the class named on the line is chosen first (`data_class_first`).

Checks of the command line (`vae.cli_checks`) run before anything is built, so a mistake stops
with one line and no run directory.
"""

import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import get_args

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vae.callbacks import (
    HParamsWithMetrics,
    ImageGrids,
    KLPerDimensionToLoggers,
    LatentProjector,
    StopOnNonFiniteLoss,
    SummaryWithoutFLOPs,
    TestMetricsJSON,
)
from vae.checkpoints import (
    CheckpointError,
    RunCheckpoint,
    check_checkpoint,
    find_last_checkpoint,
    training_position,
)
from vae.cli_checks import (
    TRAINER_OPTION_ERRORS,
    CommandLineError,
    OneLineErrorParser,
    check_config_files,
    check_processes,
    check_writable,
    require_checkpoint,
    trainer_option_error,
)
from vae.console import quiet_console
from vae.data import DEFAULT_SOURCE, Binarize, DataFilesError, ImageDataModule, saved_class_path
from vae.lightning_internals import EvaluateAtCheckpointStep, add_to_help, set_option_type
from vae.module import VAEModule
from vae.predictions import PredictionsFile
from vae.run import LOGS_DIR, run_dir

SUBCOMMANDS = ("fit", "validate", "test", "predict")
PROGRESS_BAR_REFRESH_STEPS = 10
# Model options that say how to evaluate or run, not what was trained: never taken from a checkpoint.
EVALUATION_SETTINGS = VAEModule.EVALUATION_SETTINGS
# Model options that fix the shapes of the weights: a checkpoint cannot be loaded into others.
WEIGHT_SHAPE_OPTIONS = VAEModule.WEIGHT_SHAPE_OPTIONS
# What each subcommand does with the checkpoint `--ckpt_path last` found, said on the console.
WHAT_IS_DONE_WITH = {
    "fit": "resuming the training of",
    "validate": "validating",
    "test": "testing",
    "predict": "predicting with",
}
# Trainer options that are a number of batches when an int, a fraction of them when a float (Lightning's
# documented meaning). Lightning annotates them `float | int`, so the parser, trying float first, reads
# `1` as 1.0: every batch. Here it tries int first: `1` is one batch, `1.0` all of them.
BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")
# Data options that say where the files are and how to serve them, not what the model was trained
# and validated on: never taken from a checkpoint (every other option of its data source is).
SERVING_OPTIONS = ImageDataModule.SERVING_OPTIONS


class SaveRunConfig(SaveConfigCallback):
    """`config.yaml` for fit (rewritten on resume); `<subcommand>_config.yaml` for the others."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            self.config_filename = f"{trainer.state.fn.value}_config.yaml"
        super().setup(trainer, pl_module, stage)


def _same_value(given, saved) -> bool:
    """An option's value equals a checkpoint's: a tuple from the command line and a list from the saved YAML alike."""
    if isinstance(given, list | tuple) and isinstance(saved, list | tuple):
        return list(given) == list(saved)
    return given == saved


class VAECLI(LightningCLI):
    def __init__(self, **kwargs) -> None:
        quiet_console()
        super().__init__(
            VAEModule,
            LightningDataModule,
            subclass_mode_data=True,
            parser_class=OneLineErrorParser,
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
                    SummaryWithoutFLOPs(),
                    # redrawing the bar every step costs more than a step of this small network
                    TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS),
                ],
            },
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # `--data CLASS` chooses the source (a short name for the classes in vae.data), MNIST by default
        parser.set_defaults({"data": {"class_path": DEFAULT_SOURCE}})
        for name in BATCH_LIMITS:
            set_option_type(parser, f"--trainer.{name}", int | float | None)
        # `fit --help` shows no source's own options (`--data.help CLASS` does); the choices every source shares:
        binarize = ",".join(get_args(Binarize))
        add_to_help(
            parser,
            "--data",
            f"Every source takes --data.binarize {{{binarize}}}; --data.help CLASS lists a source's options.",
        )
        # the model is built for the data's images, and keeps their shape in its hyperparameters
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")
        # configurable as --checkpoint.*, e.g. --checkpoint.save_last_every_n_steps 500
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        # configurable as --images.*, e.g. --images.every_n_epochs 5
        parser.add_lightning_class_args(ImageGrids, "images")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """After parsing, before anything is built: check the command line, resolve and check
        `--ckpt_path`, take the checkpoint's data options unless given, pin the logger.

        Under DDP every process parses the command line itself (Lightning's `ddp` launcher reruns
        it; torchrun and srun start them all). On one machine they resolve `last` to the same file,
        as no rank can write a checkpoint before every rank has joined the process group, i.e.
        finished parsing; across machines only a consistently shared log folder guarantees that.
        """
        given = sys.argv[1:] if args is None else args
        if isinstance(given, list):
            check_config_files(given)
        self._parse_finding_the_checkpoints_source(parser, args)
        self._evaluation_settings, self._resumed, self._trained_shape = {}, None, None
        if not self.config.get("subcommand"):
            return
        subcommand = self.config.subcommand
        config = self.config[subcommand]
        require_checkpoint(subcommand, config.get("ckpt_path"))
        logger = config.trainer.logger
        logger_args = logger.init_args if hasattr(logger, "init_args") else None
        if config.get("ckpt_path") is not None:
            checkpoint = self._find_checkpoint(config.ckpt_path, logger_args)
            if config.ckpt_path == "last":
                print(f"--ckpt_path last: {WHAT_IS_DONE_WITH[subcommand]} {checkpoint}", file=sys.stderr)
            saved = check_checkpoint(checkpoint)
            self._parse_with_the_checkpoints_defaults(parser, args, saved)
            config = self.config[subcommand]
            config.ckpt_path = str(checkpoint)
            self._refuse_another_architecture(config, checkpoint, saved)
            shape = saved.get("hyper_parameters", {}).get("image_shape", (1, 28, 28))  # older ones: MNIST's
            self._trained_shape = tuple(shape)
            logger = config.trainer.logger
            logger_args = logger.init_args if hasattr(logger, "init_args") else None
            self._pin_logger(checkpoint, logger_args)
            if getattr(logger, "class_path", None) == "lightning.pytorch.loggers.CSVLogger":
                # Lightning's would delete metrics.csv
                logger.class_path = "vae.lightning_internals.ContinuingCSVLogger"
            self._resumed = (checkpoint, training_position(saved)) if subcommand == "fit" else None
        self._evaluation_settings = {name: config.model[name] for name in EVALUATION_SETTINGS}
        if logger_args is not None and "save_dir" in logger_args:
            check_writable(Path(logger_args.save_dir) / (logger_args.get("name") or ""))

    def _parse_finding_the_checkpoints_source(self, parser: LightningArgumentParser, args) -> None:
        """Parse; if that fails, the `--data.*` options may be those of the checkpoint's data
        source rather than MNIST's (`test --ckpt_path X --data.root DIR` of a model trained on a
        folder): parse without them to find `--ckpt_path`, whose source then takes them
        (`_parse_with_the_checkpoints_defaults`). Else the first error stands."""
        try:
            super().parse_arguments(parser, args)
        except CommandLineError as err:
            given = sys.argv[1:] if args is None else args
            without_data = _without_data_options(given) if isinstance(given, list) else given
            if without_data == given:
                raise
            try:
                with warnings.catch_warnings():  # that `args` replace sys.argv: here they are sys.argv's own, reduced
                    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                    super().parse_arguments(parser, without_data)
            except CommandLineError:
                raise err from None
            if self.config[self.config.subcommand].get("ckpt_path") is None:
                raise err from None

    @staticmethod
    def _find_checkpoint(ckpt_path: str, logger_args) -> Path:
        """`last` -> the newest run's `last.ckpt` under the logger's folder; a path stays itself."""
        if ckpt_path != "last":
            return Path(ckpt_path)
        if logger_args is None:
            raise CheckpointError("--ckpt_path last needs a logger to know where runs are; pass a .ckpt path.")
        return find_last_checkpoint(Path(logger_args.save_dir) / (logger_args.name or ""))

    def _parse_with_the_checkpoints_defaults(self, parser: LightningArgumentParser, args, saved: dict) -> None:
        """Parse again with the checkpoint's data options and architecture as the defaults: what
        was given (on the command line or in a config file) keeps its value, even one equal to the
        usual default; what was not is the checkpoint's."""
        trained = saved.get("hyper_parameters", {})
        data = saved.get("datamodule_hyper_parameters", {})
        defaults = {f"model.{name}": trained[name] for name in WEIGHT_SHAPE_OPTIONS if name in trained}
        if data:  # a checkpoint from before `--data CLASS` has no `_class_path`: it was MNIST
            options = {k: v for k, v in data.items() if not k.startswith("_") and k not in SERVING_OPTIONS}
            defaults["data"] = {"class_path": saved_class_path(data), "init_args": options}
        if defaults:
            self._parser(self.config.subcommand).set_defaults(defaults)
            super().parse_arguments(parser, args)

    @staticmethod
    def _refuse_another_architecture(config, checkpoint: Path, saved: dict) -> None:
        """The checkpoint's architecture is the default now, so another one was asked for explicitly."""
        trained = saved.get("hyper_parameters", {})
        for name in WEIGHT_SHAPE_OPTIONS:
            if name in trained and not _same_value(config.model[name], trained[name]):
                raise CheckpointError(
                    f"--ckpt_path {checkpoint} holds a model with {name}={trained[name]}, but --model.{name} "
                    f"{config.model[name]} was given. A checkpoint's weights only fit its own architecture: drop "
                    f"--model.{name} to use the checkpoint's, or start a new run without --ckpt_path."
                )

    @staticmethod
    def _pin_logger(checkpoint: Path, logger_args) -> None:
        """Log into the checkpoint's own run directory, not a new `version_N`; Lightning's warning that its
        checkpoint folder "exists and is not empty" is then expected, and left out."""
        run = run_dir(checkpoint)
        if run is not None and logger_args is not None and "version" in logger_args:
            logger_args.save_dir, logger_args.name, logger_args.version = str(run.parent), "", run.name
            # spelled as Lightning spells it: os.path.join(save_dir, name, version, "checkpoints")
            folder = os.path.join(logger_args.save_dir, "", run.name, "checkpoints")
            warnings.filterwarnings(
                "ignore", message=re.escape(f"Checkpoint directory {folder} exists and is not empty.")
            )

    def before_instantiate_classes(self) -> None:
        """Runs after LightningCLI applied the checkpoint's hyperparameters: put evaluation settings back;
        and let `--trainer.enable_progress_bar false` and `--trainer.enable_model_summary false` win over
        the default progress bar and summary callbacks."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        for name, value in self._evaluation_settings.items():
            config.model[name] = value
        off = tuple(
            kind
            for kind, option in ((TQDMProgressBar, "enable_progress_bar"), (ModelSummary, "enable_model_summary"))
            if config.trainer[option] is False
        )
        self.trainer_defaults["callbacks"] = [c for c in self.trainer_defaults["callbacks"] if not isinstance(c, off)]

    def instantiate_classes(self) -> None:
        """A constructor that rejects its options says why in one line, not in a traceback (for the
        data, chosen by `--data CLASS`, jsonargparse wraps that error in its own: the first one is said)."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            while isinstance(err.__cause__ or err.__context__, ValueError):
                err = err.__cause__ or err.__context__
            raise SystemExit(f"error: {err}") from None

    def after_instantiate_classes(self) -> None:
        """Once the data and the Trainer exist: are the data's images the checkpoint's, and may a
        resumed fit continue on this number of processes?"""
        if self._trained_shape is not None and tuple(self.datamodule.image_shape) != self._trained_shape:
            trained, given = ("x".join(map(str, shape)) for shape in (self._trained_shape, self.datamodule.image_shape))
            raise CheckpointError(
                f"--ckpt_path {self.config[self.subcommand].ckpt_path} holds a model of {trained} images, but the "
                f"data given ({type(self.datamodule).__name__}) has {given} images. Drop the data options to use "
                f"the checkpoint's data, or train a new model."
            )
        if self._resumed is not None:
            check_processes(*self._resumed, self.trainer.world_size)

    def _run_subcommand(self, subcommand: str) -> None:
        """Data files that are missing, unreadable or do not fit the options: one line, no traceback."""
        try:
            super()._run_subcommand(subcommand)
        except DataFilesError as err:
            raise SystemExit(f"error: {err}") from None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer's own checks of its options, as one line naming the option (`vae.cli_checks`)."""
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except TRAINER_OPTION_ERRORS as err:
            options = {**self._get(self.config_init, "trainer", default={}), **kwargs}
            raise trainer_option_error(err, options, self.trainer_defaults) from None
        # under torchrun or srun, the launcher's process counts, which Lightning checks only once `fit` runs
        environment = getattr(trainer.strategy, "cluster_environment", None)  # none for a single process
        try:
            if environment is not None:
                environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
        except ValueError as err:
            raise CommandLineError(
                f"{' '.join(str(err).split())} Give --trainer.devices the launcher's processes per machine and "
                "--trainer.num_nodes its machines (torchrun's --nproc-per-node and --nnodes), the same on every one."
            ) from None
        return trainer


def _without_data_options(args: list[str]) -> list[str]:
    """`args` less every `--data.NAME VALUE` and `--data.NAME=VALUE` (`--data CLASS` stays)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("--data."):
            skip = "=" not in arg
        else:
            kept.append(arg)
    return kept


def data_class_first(args: list[str]) -> list[str]:
    """`--data.NAME VALUE ... --data CLASS` as `--data CLASS --data.NAME VALUE ...`: the parser gives each
    `--data.NAME` to the class chosen so far (MNIST until `--data CLASS`), which would refuse the options
    of the class the line goes on to choose. Left as given when the class is chosen more than once, or
    after a `--config` that comes after the options (the file may choose a class of its own)."""
    choices = [i for i, arg in enumerate(args) if arg == "--data" or arg.startswith("--data=")]
    options = [i for i, arg in enumerate(args) if arg.startswith("--data.")]
    if len(choices) != 1 or not options or options[0] > choices[0]:
        return args
    first, choice = options[0], choices[0]
    if any(arg in ("-c", "--config") or arg.startswith("--config=") for arg in args[first:choice]):
        return args
    end = choice + (1 if "=" in args[choice] else 2)
    return [*args[:first], *args[choice:end], *args[first:choice], *args[end:]]


def main() -> None:
    """`python train.py ARGS`: a bare `python train.py [--options]` means `fit`.

    Lightning stops on SIGTERM with an exit status of 0, as if the command had finished; here it is
    128 + 15, as a scheduler expects of a process that was stopped (a fit stopped by a signal already
    exits so, from `RunCheckpoint`).
    """
    if len(sys.argv) == 1 or sys.argv[1] not in (*SUBCOMMANDS, "-h", "--help"):
        sys.argv.insert(1, "fit")
    sys.argv[1:] = data_class_first(sys.argv[1:])
    try:
        VAECLI()
    except SIGTERMException as stopped:
        raise SystemExit(128 + signal.SIGTERM if stopped.code is None else stopped.code) from None
