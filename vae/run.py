"""A trained run, opened the one way every command opens it: `sample.py`, `export.py` and `report.py`.

A run lives in `<logs>/version_N/` (`run_dir`), its checkpoints in `<logs>/version_N/checkpoints/`, and a
command writes into `<logs>/version_N/<kind>/` unless told otherwise (`output_dir`). `open_run` turns a
checkpoint (or `last`) into the model, in eval mode on the device asked for, and the run's own data,
read; a missing, foreign or unsafe file, data that cannot be read, or a data source that is not
there stops with one line (`CheckpointError`, `SystemExit`) before anything is written.
Checkpoints are pickles: they are only ever loaded with `weights_only=True`.
"""

import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer

from vae.checkpoints import CheckpointError, check_checkpoint, find_last_checkpoint
from vae.data import SOURCES_PACKAGE, data_sources, datamodule_of_run
from vae.module import VAEModule

LOGS_DIR = "lightning_logs"  # where `train.py` puts its runs, and where `--ckpt_path last` looks


def public(hparams: dict) -> dict:
    """Hyperparameters without LightningCLI's bookkeeping (`_instantiator`, `_class_path`)."""
    return {k: v for k, v in hparams.items() if not k.startswith("_")}


def run_dir(of: Trainer | str | os.PathLike) -> Path | None:
    """The run's own folder, the one that holds its `checkpoints/`.

    Of a checkpoint file: `<logs>/version_N` for `<logs>/version_N/checkpoints/NAME.ckpt`, None for a
    checkpoint kept anywhere else (it has no run). Of a Trainer: the parent of its checkpoint callback's
    folder, i.e. `<save_dir>/<name>/<version>` for every logger (for TensorBoard and CSV also
    `trainer.log_dir`; for others, e.g. MLflow, not); without a checkpoint callback (a Trainer built by
    hand) the logger's folder, else the Trainer's. Safe on rank 0 alone: unlike `trainer.log_dir`, it is
    no collective call (the checkpoint callback resolved its folder on every rank at setup).
    """
    if not isinstance(of, Trainer):
        checkpoint = Path(of)
        return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    callback = of.checkpoint_callback
    if callback is not None and callback.dirpath is not None:
        return Path(callback.dirpath).parent
    return Path(getattr(of.logger, "log_dir", None) or of.default_root_dir)


def output_dir(checkpoint: str | os.PathLike, kind: str, out: str | None = None) -> Path:
    """Where a command writes: `out` when given, else `<run>/<kind>/` for a checkpoint of a run, else `<kind>/`."""
    return Path(out) if out else (run_dir(checkpoint) or Path()) / kind


def find_checkpoint(ckpt_path: str | os.PathLike, doing: str = "using") -> Path:
    """`last` -> the newest `last.ckpt` under `lightning_logs/` (said on stderr); a path stays itself."""
    if str(ckpt_path) != "last":
        return Path(ckpt_path)
    checkpoint = find_last_checkpoint(Path(LOGS_DIR))
    print(f"--ckpt_path last: {doing} {checkpoint}", file=sys.stderr)
    return checkpoint


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu", **overrides: Any) -> VAEModule:
    """The checkpoint's `VAEModule` in eval mode on `device`, its options replaced by `overrides`
    (evaluation settings such as `iw_samples`); anything but a checkpoint of this project is one line."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(
            f"--ckpt_path {checkpoint} does not exist. Pass a .ckpt written by train.py, or `last` for the newest "
            f"run's last.ckpt under {LOGS_DIR}/."
        )
    check_checkpoint(checkpoint)  # truncated, unsafe to unpickle, not Lightning's: one line
    try:
        module = VAEModule.load_from_checkpoint(checkpoint, map_location=device, weights_only=True, **overrides)
    except (TypeError, KeyError, RuntimeError):  # options VAEModule does not take, weights of another model
        raise CheckpointError(
            f"--ckpt_path {checkpoint} is not a checkpoint of this project's VAE: its hyperparameters or weights "
            "do not fit it. Pass a .ckpt written by train.py, e.g. <run>/checkpoints/last.ckpt."
        ) from None
    except ValueError as err:  # an override VAEModule refuses, e.g. iw_samples -1
        raise SystemExit(f"error: {err}") from None
    return module.eval()


def open_run(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu", data_dir: str | None = None, **overrides: Any
) -> tuple[VAEModule, LightningDataModule]:
    """(the checkpoint's model, as `load_model` gives it; the run's own data module, its files read).

    The data are the run's: its data source and options, saved in the checkpoint (MNIST, a folder of
    images, ...; binarised as the run's were), read from `data_dir` when given (the files moved), else
    from the folder the run used. Every split is read (`setup` for fit and for test)."""
    module = load_model(checkpoint, device, **overrides)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    try:
        datamodule = datamodule_of_run(
            saved.get("datamodule_hyper_parameters", {}), **({"data_dir": data_dir} if data_dir else {})
        )
    except (TypeError, ValueError) as err:  # a source not imported, options it no longer takes
        raise SystemExit(f"error: the run's data source: {err}") from None
    read_data(datamodule, "the run's data")
    return module, datamodule


def read_data(datamodule: LightningDataModule, what: str) -> None:
    """Every split of `datamodule` into memory; missing or unreadable files, or options that do not fit
    them, stop with one line naming `what` they are."""
    try:
        datamodule.prepare_data()
        datamodule.setup("fit")
        datamodule.setup("test")
    except (ValueError, RuntimeError, OSError) as err:
        raise SystemExit(f"error: {what}: {err}") from None


def data_source(name: str, option: str) -> type[LightningDataModule]:
    """The data module class a command line names, as `train.py --data NAME` takes it: its class name when
    no other imported class has it (`MNISTDataModule`), else its full class path; one line if none fits."""
    found = data_sources()
    by_name: dict[str, list[type[LightningDataModule]]] = {}
    for source in found.values():
        by_name.setdefault(source.__qualname__, []).append(source)
    wanted = found.get(name) or (by_name[name][0] if len(by_name.get(name, [])) == 1 else None)
    if wanted is None or wanted is LightningDataModule:
        ours = [s for path, s in found.items() if path.startswith(SOURCES_PACKAGE + ".")]
        sources = sorted(s.__qualname__ for s in ours if not any(issubclass(o, s) for o in ours if o is not s))
        raise SystemExit(
            f"error: {option} {name!r} is not a data source: give one of {', '.join(sources)}, or the full "
            "class path of a LightningDataModule whose module is imported."
        )
    return wanted


def model_inputs(datamodule: LightningDataModule, images: torch.Tensor) -> torch.Tensor:
    """Images as the data module stores them (e.g. uint8) -> what the model takes, floats (B, C, H, W) in
    [0, 1], through the data module's own transfer step (so binarised as the run's were), on their device."""
    labels = torch.zeros(len(images), dtype=torch.long, device=images.device)
    return datamodule.on_after_batch_transfer((images, labels), 0)[0]
