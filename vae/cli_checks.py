"""Checks of the command line, made before a run directory exists: each failure is one line that
names the option and says what to do, never a traceback.

- `test`, `validate` and `predict` evaluate a trained model: without `--ckpt_path` Lightning
  would evaluate a freshly initialised one, print meaningless numbers and exit 0.
- The log folder must be writable, or the run would die at its first checkpoint.
- A run resumed mid-epoch must run on as many processes as it was started with.
- The Trainer's own checks (Lightning raises on `max_epochs -5`, `accelerator gpu` without a
  GPU, `devices 0`, ...) are reported with the option that failed them.
- A value the parser cannot read as its option's type (an unknown precision, a word for a
  number) is reported as the option and the value, not as the whole usage text.
- A `--config` file that is missing, or not YAML, is named with what is wrong (and where): the
  parser would say `--config ?`, or point at a line of "<unicode string>".
"""

import argparse
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_warn

# What Lightning raises when it rejects a Trainer option (ImportError: an accelerator whose package is missing).
TRAINER_OPTION_ERRORS = (MisconfigurationException, ValueError, TypeError, ImportError)
# Trainer options that hold objects the project builds, not a user's value.
BUILT_OPTIONS = ("callbacks", "logger", "plugins")


class CommandLineError(SystemExit):
    """A bad command line, reported as one line before any run directory is created."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


class OneLineErrorParser(LightningArgumentParser):
    """jsonargparse's own errors (an unknown option, a value its type rejects) in one line: the
    option, the value given, and where the allowed values are listed; not the whole usage text."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse trying alternatives: not the user's error yet
            super().error(message, ex)
        lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
        key = re.match(r'Parser key "([^"]+)":', lines[0]) if lines else None
        if key:  # which option, and the value given (jsonargparse words it one way or another)
            value = next((line.partition(":")[2].strip() for line in lines if line.startswith("Given value:")), None)
            value = value or (re.search(r"Got value: (.*)", message) or [None, None])[1]
            nested = re.fullmatch(r"NestedArg\(key='([^']*)', val='(.*)'\)", value) if value else None
            chosen = re.search(r"class_path '(?:[\w.]*\.)?(\w+)'", message)
            chosen = f"--{key[1]} class ({chosen[1]})" if chosen else f"--{key[1]} class"
            required = re.search(r"the following arguments are required: (.*)", message)
            if required:  # `--data ImageFolderDataModule` without its --data.root
                names = [name.strip() for name in required[1].split(",")]
                given = " ".join(f"--{key[1]}.{name} VALUE" for name in names)
                lines = [f"the chosen {chosen} needs {', '.join(names)}: give {given}."]
            elif value is None:  # e.g. an inline --config that is not YAML: the reason is all there is
                reason = " ".join([lines[0][key.end() :], *lines[1:]]).replace('in "<unicode string>", ', "")
                lines = [f"--{key[1]}: {reason.strip()}"]
            elif nested and f"Option '{nested[1]}' is not accepted" in message:  # the chosen class has no NAME
                lines = [f"--{key[1]}.{nested[1]} {nested[2]}: the chosen {chosen} has no option {nested[1]}."]
            elif nested:  # `--data.NAME VALUE` of a value NAME's type refuses, e.g. one not among its choices
                lines = [f"--{key[1]}.{nested[1]} {nested[2]}: not a value this option accepts."]
            else:
                lines = [f"--{key[1]} {value}: not a value this option accepts."]
        what = " ".join(lines).rstrip(".") + "."
        prog = self.prog.replace(" [options]", "")
        raise CommandLineError(f"{what} `python {prog} --help` lists the options and their values.")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse's errors (a missing or mistyped option) in one line, with where the options are listed,
    not after the usage text: for the commands that are not LightningCLI's (sweep.py, sample.py, ...)."""

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(f"{message.rstrip('.')}. `python {self.prog} --help` lists the options.")


def read_yaml(path: Path, name: str) -> Any:
    """The YAML document in `path`; else one line, starting with `name`, that says what is wrong with
    the file: missing, a folder, not text, or a syntax error at its line and column."""
    if path.is_dir():
        raise CommandLineError(f"{name}: is a folder, not a YAML file.")
    if not path.is_file():
        raise CommandLineError(f"{name}: no such file.")
    try:
        return yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise CommandLineError(f"{name}: not a text file, so not YAML.") from None
    except OSError as err:
        raise CommandLineError(f"{name}: cannot be read ({err.strerror or err}).") from None
    except yaml.MarkedYAMLError as err:
        where = f"line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1}" if err.problem_mark else ""
        context = ""
        if err.context and err.context_mark:  # e.g. the bracket that was never closed
            context = f" ({err.context} at line {err.context_mark.line + 1}, column {err.context_mark.column + 1})"
        raise CommandLineError(f"{name}: not valid YAML: {where}: {err.problem}{context}.") from None
    except yaml.YAMLError as err:  # e.g. a control character: yaml says at which character
        reason = " ".join(str(err).split()).replace('in "<unicode string>", ', "")
        raise CommandLineError(f"{name}: not valid YAML: {reason}.") from None


def check_config_files(args: list[str]) -> None:
    """Every `--config FILE` (or `-c FILE`) exists and holds a YAML mapping of options. An inline
    config (`--config '{trainer: {max_epochs: 5}}'`) is left to the parser."""
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config="):
            value = arg.partition("=")[2]
        else:
            continue
        try:
            if isinstance(yaml.safe_load(value), dict):
                continue
        except yaml.YAMLError:
            pass  # not inline YAML: a file name
        config = read_yaml(Path(value), f"--config {value}")
        if not isinstance(config, dict):
            raise CommandLineError(
                f"--config {value}: holds no options; a config file is a YAML mapping, e.g. `trainer: {{max_epochs: "
                "5}`, as `python train.py --print_config` prints it."
            )


def require_checkpoint(subcommand: str, ckpt_path: str | None) -> None:
    """`test`, `validate` and `predict` of an untrained model are meaningless: ask for the model."""
    if subcommand != "fit" and ckpt_path is None:
        raise CommandLineError(
            f"`{subcommand}` evaluates a trained model: pass --ckpt_path PATH.ckpt, or --ckpt_path last for the "
            "newest run's last.ckpt."
        )


def check_writable(folder: Path) -> None:
    """Fail before training, not at the first checkpoint, if runs cannot be written under `folder`
    (creating nothing: the nearest existing folder on its path must be a writable folder)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise CommandLineError(
            f"cannot write runs under {folder}/: {existing} is not a writable folder; existing runs there are "
            "untouched. Run from a writable directory, or choose another with --trainer.logger.init_args.save_dir PATH."
        )


def check_processes(checkpoint: Path, position: dict[str, int] | None, processes: int) -> None:
    """Resuming on another number of processes than the checkpoint's run: refused in the middle of
    an epoch (that epoch's order was dealt to the old number), said at an epoch's end (the run goes
    on, but each optimiser step now averages another number of batches, so not as it would have)."""
    if position is None or position.get("processes", 1) == processes:
        return
    trained_on = position.get("processes", 1)
    if position["served"] < position.get("size", position["served"]):
        raise CommandLineError(
            f"--ckpt_path {checkpoint} was written in the middle of epoch {position['epoch']} by a run on {trained_on} "
            f"process(es), and this command starts {processes}. Resume it on {trained_on} (--trainer.devices x "
            f"--trainer.num_nodes), with --trainer.max_epochs {position['epoch'] + 1} to finish that epoch; from the "
            "end of an epoch it can go on with any number."
        )
    rank_zero_warn(
        f"Resuming a run trained on {trained_on} process(es) with {processes}: from now on each optimiser step "
        f"averages {processes} processes' batches instead of {trained_on}, so the run cannot end as an uninterrupted "
        f"one would. Resume on {trained_on} for that."
    )


def trainer_option_error(error: Exception, options: dict[str, Any], defaults: dict[str, Any]) -> CommandLineError:
    """The one-line error for a Trainer that rejected `options`: which option, Lightning's reason, what to do.

    The option is found by asking the Trainer again with each option that differs from its default
    on its own; if no single one is refused, it is their combination that is, and all are named.
    """
    signature = inspect.signature(Trainer).parameters
    given = {
        name: value
        for name, value in options.items()
        if name not in BUILT_OPTIONS and name in signature and value != signature[name].default
    }
    culprits = [name for name in given if _refused({name: given[name]})] or list(given)
    reason = " ".join(str(error).split()) or type(error).__name__
    reason += "" if reason.endswith((".", "!", "?")) else "."
    named = ", ".join(f"--trainer.{name} {given[name]}" for name in culprits) or "the Trainer's options"
    drop = "; ".join(f"--trainer.{name} defaults to {defaults.get(name, signature[name].default)}" for name in culprits)
    return CommandLineError(
        f"{named}: {reason} Change or drop {'it' if len(culprits) == 1 else 'them'}"
        + (f" ({drop})" if drop else "")
        + "; `python train.py fit --help` lists the allowed values."
    )


def check_trainer_options(options: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Lightning accepts a Trainer with `options` (less the objects the project builds): checked by building
    one that writes nothing, for a command that runs Trainers later (sweep.py's trials)."""
    given = {name: value for name, value in options.items() if name not in BUILT_OPTIONS}
    if _refused(given):
        try:
            Trainer(**{"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, **given})
        except TRAINER_OPTION_ERRORS as err:
            raise trainer_option_error(err, given, defaults) from None


def _refused(options: dict[str, Any]) -> bool:
    """Whether a Trainer built with only `options` (and nothing written to disk) is refused."""
    logging.disable(logging.INFO)  # the probe's "GPU available: ..." lines are not the user's run
    try:
        Trainer(**{"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, **options})
    except TRAINER_OPTION_ERRORS:
        return True
    finally:
        logging.disable(logging.NOTSET)
    return False
