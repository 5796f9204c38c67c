"""Checkpoints: what is saved, where a run's checkpoints are found, and checking one before use.

A run lives in `<logs>/version_N/`, its checkpoints in `<logs>/version_N/checkpoints/`:
`best-epochNNN.ckpt` (lowest `val/loss`) and `last.ckpt` (to resume from).
Checkpoints are pickles, so they are only ever loaded with `weights_only=True`.
"""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the one before it is untouched."""


class CheckpointError(SystemExit):
    """A bad `--ckpt_path`, reported before any run directory is created."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


# ModelCheckpoint's state that holds file paths, each spelled with its `dirpath` as prefix.
PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


class RunCheckpoint(ModelCheckpoint):
    """Keeps the best epoch by validation loss, and `last.ckpt` to resume from: at each epoch's end
    and every `save_last_every_n_steps` optimiser steps (with gradient accumulation, a step is
    `accumulate_grad_batches` batches, and it is saved once, after the batch that completes it).

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
        self._save_at_epoch_end = False  # the every-N save fell on the epoch's last step

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_start(trainer, *args, **kwargs)
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        """Also write `last.ckpt` every N steps, so a killed run loses at most N steps of work.

        A step that ends the epoch's training is saved at the epoch's end instead, after its validation:
        Lightning resumes a checkpoint written on an epoch's last batch as a finished epoch, so it would
        skip that epoch's validation (its `val/loss`, its best checkpoint, the random numbers its
        reparameterisation noise draws, hence every later step's noise) and its epoch-end hooks. A kill
        during that validation then redoes at most N steps, as anywhere else.
        """
        super().on_train_batch_end(trainer, *args, **kwargs)
        n, stepped = self.save_last_every_n_steps, trainer.global_step != self._step_before_batch
        if n and stepped and trainer.global_step % n == 0 and not trainer.sanity_checking:
            if trainer.is_last_batch:  # (the last of `limit_train_batches`, when that ends the epoch)
                self._save_at_epoch_end = True
                return
            # Lightning skips its end-of-epoch save when a save already happened at the same step,
            # which would drop the best-by-val/loss checkpoint; so this save leaves that marker alone.
            marker = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = marker

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        """The save put off from the epoch's last step, unless the epoch's own save (after its validation,
        or here in a run without validation) already wrote this step: an epoch that
        `check_val_every_n_epoch` leaves unvalidated has no save of its own."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._save_at_epoch_end and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._save_at_epoch_end = False

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

    Saving goes to a hidden temporary file in the same folder, is flushed to disk, then renamed
    over the old file (a rename within a folder is atomic), so `last.ckpt` is always the previous
    complete checkpoint or the new complete one. The folder is then flushed too: a rename is an
    entry in the folder, and until the folder reaches the disk a power loss can undo it.
    (Lightning's own save stages the file in the system temp folder, which is a copy, not a
    rename, when that is another file system.)
    Loading always uses `weights_only=True`: a crafted pickle cannot execute anything.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
            _fsync_folder(path.parent)
        except OSError as err:  # disk full, quota, permissions, a vanished folder
            raise CheckpointWriteError(
                f"Could not write the checkpoint {path}: {err.strerror or err}. "
                + ("The previous checkpoint under that name is intact. " if path.exists() else "")
                + "Free space or choose a writable folder (e.g. run from another directory), then resume with "
                "--ckpt_path last."
            ) from err
        finally:
            partial.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        """Every tensor is read onto the CPU, as Lightning's own default map_location does (Lightning calls
        this without one): a checkpoint written on a GPU then loads on a machine without one, and under
        DDP each rank's weights reach its own device through `load_state_dict`, not all cuda:0."""
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename just made in it) to disk; POSIX only: Windows cannot open a folder."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """Fail now, with a useful message, rather than after a run directory has been made; return its contents."""
    if not path.is_file():
        raise CheckpointError(
            f"--ckpt_path {path} does not exist. Pass an existing .ckpt file, or `last` to resume the newest run."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a pickle, or a pickle that needs arbitrary code
        raise CheckpointError(
            f"--ckpt_path {path} cannot be loaded as a checkpoint ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no details'}). It may be truncated or not a "
            "checkpoint; checkpoints are loaded with weights_only=True, so files that need arbitrary code to "
            "unpickle are refused. Use another checkpoint, e.g. a best-*.ckpt from the same run."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path {path} is not a Lightning checkpoint (it has no state_dict).")
    if "pytorch-lightning_version" not in checkpoint:  # e.g. a bare state dict saved with torch.save
        raise CheckpointError(f"--ckpt_path {path} is not a Lightning checkpoint (it has no Lightning version).")
    return checkpoint


def training_position(checkpoint: dict[str, Any]) -> dict[str, int] | None:
    """Where in the training order a checkpoint stopped: its training loader's state (`vae.resumable`)."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
    states = fit_loop.get("combined_loader") or [None]
    return states[0]


def run_dir_of(checkpoint: Path) -> Path | None:
    """`<logs>/version_N` for a checkpoint saved by this project in `<logs>/version_N/checkpoints/`."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
