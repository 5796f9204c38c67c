"""Checkpoints: what is saved, where a run's checkpoints are found, and checking one before use.

A run lives in `<logs>/version_N/`, its checkpoints in `<logs>/version_N/checkpoints/`:
`best-epochNNN.ckpt` (lowest `val/loss`) and `last.ckpt` (to resume from).
Checkpoints are pickles, so they are only ever loaded with `weights_only=True`.
"""

import os
import pickle
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vae.atomic import PARTIAL_GLOB, atomic_write


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the one before it is untouched."""


class CheckpointError(SystemExit):
    """A bad `--ckpt_path`, reported before any run directory is created."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


# How torch begins the error of a file that its safe (`weights_only`) loader refuses to load.
UNSAFE = "Weights only load failed"
# Modules that pickles name for Python's `os` functions (`os.system` is `posix.system` on Linux and macOS).
OS_MODULES = ("posix", "nt")
# ModelCheckpoint's state that holds file paths, each spelled with its `dirpath` as prefix.
PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")
# Signals that stop a fit with `last.ckpt` at the step reached: Ctrl-C, and what schedulers send before a kill.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunCheckpoint(ModelCheckpoint):
    """Keeps the best epoch by validation loss, and `last.ckpt` to resume from: at each epoch's end,
    every `save_last_every_n_steps` optimiser steps (with gradient accumulation, a step is
    `accumulate_grad_batches` batches, and it is saved once, after the batch that completes it),
    and when SIGINT (Ctrl-C) or SIGTERM stops the training.

    A signal only raises a flag; the save happens at the next point where an every-N save could
    happen (the end of the step under way, or, at an epoch's last step, the epoch's end after its
    validation), so `last.ckpt` holds a state that `--ckpt_path last` continues bit-identically.
    Then the run stops through Lightning's own `SIGTERMException` (its `on_exception` hooks, loggers
    finalised) with exit status 128 + the signal's number (130, 143), as a scheduler expects of a
    run that was stopped. Lightning's own SIGTERM handler is set aside while training: it stops in
    the middle of a validation, where no consistent checkpoint can be written. Under DDP the ranks
    take the largest flag of any rank at each step (one all-reduce of one number, beside the one
    Lightning makes per step for its own handler), so all of them save and stop at the same step.
    A second Ctrl-C stops at once without saving (the previous `last.ckpt` stays whole).

    Lightning forgets which checkpoints it already wrote when the folder is spelled differently
    on resume (`./lightning_logs/...` vs `lightning_logs/...`), then keeps stale "best" files and
    writes `last-v1.ckpt` beside `last.ckpt`. Here the saved paths are respelled in the current
    folder's spelling, so the same folder is the same folder.
    """

    def __init__(self, save_last_every_n_steps: int = 1000, **kwargs: Any) -> None:
        if save_last_every_n_steps < 0:
            raise ValueError(
                "--checkpoint.save_last_every_n_steps must be >= 0 (0 saves only at epoch ends), "
                f"got {save_last_every_n_steps}."
            )
        defaults = {"monitor": "val/loss", "mode": "min", "save_last": True}
        defaults |= {"filename": "best-epoch{epoch:03d}", "auto_insert_metric_name": False}
        super().__init__(**(defaults | kwargs))
        self.save_last_every_n_steps = save_last_every_n_steps
        self._step_before_batch = 0
        self._signal = 0  # the number of the stop signal received, 0: none
        self._handlers_before: dict[int, Any] = {}

    def on_sanity_check_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._catch_stop_signals()  # (Lightning registers its own handlers just before)

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self._catch_stop_signals()

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        super().on_train_end(trainer, pl_module)
        self._release_stop_signals()

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._release_stop_signals()

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """A fit is the one writer of its run's checkpoints: it removes the hidden partial files that a
        SIGKILL in the middle of a write left behind (`SafeCheckpointIO`; a kill skips its clean-up). A
        `last.ckpt` one is replaced at the next save anyway, but a `best-epochNNN.ckpt` one would stay."""
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath is not None:
            for stale in Path(self.dirpath).glob(PARTIAL_GLOB):
                stale.unlink(missing_ok=True)

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_start(trainer, *args, **kwargs)
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        """Also write `last.ckpt` every N steps, so a killed run loses at most N steps of work, and
        after the step under way when a stop signal came.

        A step that ends the epoch's training is saved at the epoch's end instead, after its validation:
        Lightning resumes a checkpoint written on an epoch's last batch as a finished epoch, so it would
        skip that epoch's validation (its `val/loss`, its best checkpoint, the random numbers its
        reparameterisation noise draws, hence every later step's noise) and its epoch-end hooks. A kill
        during that validation then redoes at most N steps, as anywhere else.
        """
        super().on_train_batch_end(trainer, *args, **kwargs)
        if trainer.global_step == self._step_before_batch or trainer.sanity_checking:
            return  # a batch that only accumulated gradients: no step to save
        n, signum = self.save_last_every_n_steps, self._stop_signal(trainer)
        if signum or (n and trainer.global_step % n == 0):
            if trainer.is_last_batch:  # (the last of `limit_train_batches`, when that ends the epoch)
                return  # saved at the epoch's end
            # Lightning skips its end-of-epoch save when a save already happened at the same step,
            # which would drop the best-by-val/loss checkpoint; so this save leaves that marker alone.
            marker = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = marker
            if signum:
                self._stop(trainer, signum)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        """`last.ckpt` at every epoch's end, after its validation, unless a save already wrote this step:
        Lightning's own writes it only when a best checkpoint was saved at this step (val/loss
        improved), and an epoch that `check_val_every_n_epoch` leaves unvalidated has no save of its
        own. Then a stop signal that came during the epoch's last step or its validation stops the run."""
        super().on_train_epoch_end(trainer, pl_module)
        signum = self._stop_signal(trainer)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if signum:
            self._stop(trainer, signum)

    def _catch_stop_signals(self) -> None:
        """From here on, SIGINT and SIGTERM raise the flag instead of stopping the process where it stands
        (only the main thread may set handlers: a fit run from another thread keeps Lightning's)."""
        if self._handlers_before or threading.current_thread() is not threading.main_thread():
            return
        self._signal = 0
        for signum in STOP_SIGNALS:
            self._handlers_before[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_stop_signal)

    def _release_stop_signals(self) -> None:
        for signum, handler in self._handlers_before.items():
            signal.signal(signum, handler)
        self._handlers_before = {}

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        if self._signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without saving
        self._signal = signum

    def _stop_signal(self, trainer: Trainer) -> int:
        """The stop signal any rank has received (0: none); a collective under DDP, so every rank calls it."""
        if trainer.world_size == 1:
            return self._signal
        flag = torch.tensor(self._signal, device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(flag, reduce_op="max"))

    def _stop(self, trainer: Trainer, signum: int) -> None:
        if trainer.is_global_zero:
            print(
                f"Stopped by {signal.Signals(signum).name} at step {trainer.global_step}: saved "
                f"{self.last_model_path}. To continue, run the same command with --ckpt_path last.",
                file=sys.stderr,
            )
        raise SIGTERMException(128 + signum)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved is not None and self.dirpath is not None and Path(saved).resolve() == Path(self.dirpath).resolve():

            def respell(path: str) -> str:
                return os.path.join(self.dirpath, os.path.relpath(path, saved)) if path else path

            state_dict = state_dict | {
                "dirpath": self.dirpath,
                **{key: respell(state_dict[key]) for key in PATH_KEYS if key in state_dict},
                "best_k_models": {respell(k): v for k, v in state_dict.get("best_k_models", {}).items()},
            }
        super().load_state_dict(state_dict)


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints so a kill never leaves a half-written file; reads them without running code.

    Saving goes through `vae.atomic.atomic_write`, so `last.ckpt` is always the previous complete
    checkpoint or the new complete one.
    (Lightning's own save stages the file in the system temp folder, which is a copy, not a
    rename, when that is another file system.)
    Loading always uses `weights_only=True`: a crafted pickle cannot execute anything.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_write(path) as f:
                torch.save(checkpoint, f)
        except OSError as err:  # disk full, quota, permissions, a vanished folder
            raise CheckpointWriteError(
                f"Could not write the checkpoint {path}: {err.strerror or err}. "
                + ("The previous checkpoint under that name is intact. " if path.exists() else "")
                + "Free space or choose a writable folder (e.g. run from another directory), then resume with "
                "--ckpt_path last."
            ) from err

    def load_checkpoint(self, path: Any, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        """Every tensor is read onto the CPU, as Lightning's own default map_location does (Lightning calls
        this without one): a checkpoint written on a GPU then loads on a machine without one, and under
        DDP each rank's weights reach its own device through `load_state_dict`, not all cuda:0. A file the
        safe loader refuses is said as `check_checkpoint` says it, without torch's advice to load it anyway."""
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            if UNSAFE not in str(err):
                raise
            raise pickle.UnpicklingError(why_not_loaded(path, err)) from None


def find_last_checkpoint(logs_dir: Path) -> Path:
    """The most recently written `last.ckpt` of any run under `logs_dir`."""
    candidates = sorted(logs_dir.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(
            f"--ckpt_path last: there is no run with a checkpoints/last.ckpt under {logs_dir}/, so there is "
            "nothing to resume. Start a new run without --ckpt_path, or pass the path of a .ckpt file."
        )
    return candidates[-1]


def check_checkpoint(path: Path) -> dict[str, Any]:
    """Fail now, with a useful message, rather than after a run directory has been made; return its contents.

    Every command that loads a checkpoint (train.py's `--ckpt_path`, sample.py, export.py, report.py)
    loads it here first, so a file the safe loader refuses is refused here, in these words.
    """
    if path.is_dir():
        raise CheckpointError(f"--ckpt_path {path} is a folder; pass a .ckpt file in it, e.g. {path}/last.ckpt.")
    if not path.is_file():
        raise CheckpointError(
            f"--ckpt_path {path} does not exist. Pass an existing .ckpt file, or `last` to resume the newest run."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"--ckpt_path {path} is an empty file, not a checkpoint.")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on a pickle protocol: the error below says it all
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip, no pickle at all, a pickle that would call functions
        raise CheckpointError(f"--ckpt_path {why_not_loaded(path, err)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path {path} is not a Lightning checkpoint (it has no state_dict).")
    if "pytorch-lightning_version" not in checkpoint:  # e.g. a bare state dict saved with torch.save
        raise CheckpointError(f"--ckpt_path {path} is not a Lightning checkpoint (it has no Lightning version).")
    return checkpoint


def why_not_loaded(path: Path, error: Exception) -> str:
    """`path` and why `torch.load(path, weights_only=True)` raised `error`, in one line. A file whose
    pickle would call a function is refused by name (`os.system`, as Python code names it, not
    `posix.system`); of torch's words, only its reason is kept, never its advice to load the file
    anyway, which would run that function."""
    text = str(error)
    if UNSAFE in text:
        called = re.search(r"GLOBAL ([\w.]+)", text)
        if called:
            module, _, name = called[1].rpartition(".")
            function = f"{'os' if module in OS_MODULES else module}{'.' if module else ''}{name}"
            return (
                f"{path} was refused: loading it would call {function}. A checkpoint holds only tensors and "
                "plain values, so this file is not safe to load (it could run any code). Use a checkpoint written "
                "by train.py."
            )
        lines = (line.replace(UNSAFE + ".", "").strip() for line in text.splitlines())
        text = " ".join(line for line in lines if line and "weights_only" not in line)
    reason = " ".join(text.split()[:30]) or "no details"
    return (
        f"{path} cannot be read as a checkpoint ({type(error).__name__}: {reason}): it is truncated, damaged, "
        "not a checkpoint, or holds more than tensors and plain values. Use another one, e.g. a best-*.ckpt from "
        "the same run."
    )


def training_position(checkpoint: dict[str, Any]) -> dict[str, int] | None:
    """Where in the training order a checkpoint stopped: its training loader's state (`vae.data.sampler`)."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
    states = fit_loop.get("combined_loader") or [None]
    return states[0]
