"""Checkpoints: what is saved, where a run's checkpoints are found, and checking one before use.

A run lives in `<logs>/version_N/`, its checkpoints in `<logs>/version_N/checkpoints/`:
`best-epochNNN.ckpt` (lowest `val/loss`) and `last.ckpt` (to resume from).
Checkpoints are pickles, so they are only ever loaded with `weights_only=True`.
"""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class CheckpointError(SystemExit):
    """A bad `--ckpt_path`, reported before any run directory is created."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


# ModelCheckpoint's state that holds file paths, each spelled with its `dirpath` as prefix.
PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


class RunCheckpoint(ModelCheckpoint):
    """Keeps the best epoch by validation loss, and `last.ckpt` to resume from.

    Lightning forgets which checkpoints it already wrote when the folder is spelled differently
    on resume (`./lightning_logs/...` vs `lightning_logs/...`), then keeps stale "best" files and
    writes `last-v1.ckpt` beside `last.ckpt`. Here the saved paths are respelled in the current
    folder's spelling, so the same folder is the same folder.
    """

    def __init__(self, **kwargs: Any) -> None:
        defaults = {"monitor": "val/loss", "mode": "min", "save_last": True}
        defaults |= {"filename": "best-epoch{epoch:03d}", "auto_insert_metric_name": False}
        super().__init__(**(defaults | kwargs))

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
    return checkpoint


def run_dir_of(checkpoint: Path) -> Path | None:
    """`<logs>/version_N` for a checkpoint saved by this project in `<logs>/version_N/checkpoints/`."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
