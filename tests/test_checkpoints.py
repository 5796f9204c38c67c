"""Checkpoints never corrupt, and never run code when loaded."""

import errno
import os
import pickle
import shlex
import stat
from pathlib import Path

import numpy
import pytest
import torch

import export
import report
import sample
from tests.helpers import run_cli
from vae.callbacks import NonFiniteLossError
from vae.checkpoints import CheckpointError, CheckpointWriteError, SafeCheckpointIO
from vae.cli import VAECLI
from vae.module import VAEModule


class CreatesAFileWhenUnpickled:
    """What an attacker would put in a checkpoint: unpickling it calls Path.touch(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class RunsAShellCommandWhenUnpickled:
    """Unpickling it calls os.system("touch marker"): any command could stand there."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


# Every command that loads a checkpoint, given one: `python train.py SUBCOMMAND`, sample.py, export.py, report.py.
COMMANDS = {
    **{
        f"train.py {sub}": lambda ckpt, data_dir, sub=sub: run_cli(sub, "--ckpt_path", ckpt, data_dir=data_dir)
        for sub in ("fit", "validate", "test", "predict")
    },
    "sample.py": lambda ckpt, data_dir: sample.main(["--ckpt_path", ckpt]),
    "export.py": lambda ckpt, data_dir: export.main(["--ckpt_path", ckpt]),
    "report.py": lambda ckpt, data_dir: report.main(["--ckpt_path", ckpt]),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("payload, called", [("shell", "os.system"), ("numpy", "numpy.sum")])
def test_a_checkpoint_that_would_call_a_function_is_refused_in_one_line_by_every_command(
    tmp_path, monkeypatch, data_dir, command, payload, called
):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    content = RunsAShellCommandWhenUnpickled(marker) if payload == "shell" else numpy.sum
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.6", "payload": content}, evil)
    before = sorted(tmp_path.iterdir())

    with pytest.raises(SystemExit) as exit_:
        COMMANDS[command](str(evil), data_dir)
    message = str(exit_.value.code)
    assert message.startswith(f"error: --ckpt_path {evil} was refused: loading it would call {called}. ")
    assert "not safe to load" in message and "\n" not in message
    assert "weights_only" not in message  # nothing that invites turning the protection off
    assert not marker.exists()  # no code ran
    assert sorted(tmp_path.iterdir()) == before  # no run, samples, export or report folder


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_a_crafted_checkpoint_is_refused_and_never_executed(tmp_path, monkeypatch, data_dir, subcommand):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": CreatesAFileWhenUnpickled(marker)}, evil)

    with pytest.raises(CheckpointError, match="was refused: loading it would call getattr"):
        run_cli(subcommand, "--ckpt_path", str(evil), data_dir=data_dir)
    assert not marker.exists()
    assert not (tmp_path / "lightning_logs").exists()

    # the Trainer's own loading (the Python API, past the command line's check) says the same
    torch.save({"state_dict": {}, "payload": RunsAShellCommandWhenUnpickled(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError) as refused:
        SafeCheckpointIO().load_checkpoint(evil)
    assert str(refused.value).startswith(f"{evil} was refused: loading it would call os.system. ")
    assert "weights_only" not in str(refused.value)
    assert not marker.exists()


def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    real_save = torch.save

    def killed_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # half a file on disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()

    restored = io.load_checkpoint(path)
    assert restored["global_step"] == 1 and torch.equal(restored["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


def test_a_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match=r"No space left on device\. The previous checkpoint .* is intact"):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_the_trainer_the_command_line_builds_saves_and_loads_through_the_safe_io(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = VAECLI(args=["--trainer.logger", "false"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)


def test_the_rename_is_made_durable_by_flushing_the_folder_after_it(tmp_path, monkeypatch):
    """After a power loss, a rename not yet flushed to disk may be undone: the folder is fsynced after it."""
    calls = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        calls.append(("replace", Path(dst)))
        real_replace(src, dst)

    def fsync(fd):
        synced = os.fstat(fd)
        folder = path.parent.stat()
        is_folder = stat.S_ISDIR(synced.st_mode) and (synced.st_dev, synced.st_ino) == (folder.st_dev, folder.st_ino)
        calls.append(("fsync", path.parent if is_folder else "a file"))
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "checkpoints" / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"global_step": 1}, path)
    assert calls == [("fsync", "a file"), ("replace", path), ("fsync", path.parent)]


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # a copy of a run, see copy_of_trained_run
def test_a_nan_loss_stops_training_naming_the_step_and_the_intact_checkpoint(
    copy_of_trained_run, monkeypatch, data_dir
):
    """Resumed at step 3 with a save after every step, the loss of step 4's batch is NaN: step 4
    (the last good one) was saved just before, and nothing after it is."""
    last = copy_of_trained_run / "lightning_logs/version_0/checkpoints/last.ckpt"  # 1 epoch of 3 steps
    original = VAEModule.training_step
    saved_weights = []

    def diverges_at_batch_1(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        if batch_idx == 1:
            saved_weights.append({k: v.clone() for k, v in self.state_dict().items()})  # those of step 4
            return loss * float("nan")
        return loss

    monkeypatch.setattr(VAEModule, "training_step", diverges_at_batch_1)
    with pytest.raises(NonFiniteLossError, match=r"nan at global step 4 .*last good checkpoint is .*last\.ckpt"):
        run_cli(
            "fit", "--trainer.max_epochs", "2", "--ckpt_path", "last", "--checkpoint.save_last_every_n_steps", "1",
            data_dir=data_dir,
        )  # fmt: skip
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 4
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(value, saved_weights[0][name]), name


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # a copy of a run, see copy_of_trained_run
def test_a_checkpoint_written_on_a_gpu_is_tested_and_resumed_on_a_machine_without_one(
    copy_of_trained_run, monkeypatch, data_dir
):
    """Train on a GPU, evaluate on a laptop: a GPU's `torch.save` tags every storage (weights, Adam's
    moments, callbacks' scores) with its device, and this machine has no CUDA."""
    last = copy_of_trained_run / "lightning_logs/version_0/checkpoints/last.ckpt"
    with monkeypatch.context() as saving_on_a_gpu:
        saving_on_a_gpu.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(torch.load(last, weights_only=True), last)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
        torch.load(last, weights_only=True)  # the file does claim a device this machine lacks

    cli = run_cli("test", "--ckpt_path", "last", "--model.iw_samples", "2", data_dir=data_dir)
    assert cli.trainer.callback_metrics["test/nll"].isfinite()
    cli = run_cli("fit", "--trainer.max_epochs", "2", "--ckpt_path", "last", data_dir=data_dir)
    assert cli.trainer.global_step == 6 and cli.model.device.type == "cpu"


def test_last_ckpt_is_written_at_every_epoch_end_even_when_val_loss_did_not_improve(tmp_path, monkeypatch, data_dir):
    """Lightning writes `last.ckpt` after a validation only when it saved a best one at that step: a
    resume after a kill would go back to the last epoch that improved. With --model.lr 1e-12 the weights
    stay put and val/loss only moves with the noise, so some epochs do not improve."""
    monkeypatch.chdir(tmp_path)
    run_cli("fit", "--trainer.max_epochs", "4", "--model.lr", "1e-12", data_dir=data_dir)
    folder = tmp_path / "lightning_logs/version_0/checkpoints"
    (best,) = folder.glob("best-epoch*.ckpt")
    assert best.name != "best-epoch003.ckpt"  # else this run would not show it
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (3, 12)
