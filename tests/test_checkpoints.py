"""Checkpoints never corrupt, and never run code when loaded."""

import pickle
from pathlib import Path

import pytest
import torch

from tests.test_cli import run_cli
from vae.checkpoints import CheckpointError, SafeCheckpointIO


class CreatesAFileWhenUnpickled:
    """What an attacker would put in a checkpoint: unpickling it calls Path.touch(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_a_crafted_checkpoint_is_refused_and_never_executed(tmp_path, monkeypatch, data_dir, subcommand):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": CreatesAFileWhenUnpickled(marker)}, evil)

    with pytest.raises(CheckpointError, match="weights_only=True"):
        run_cli(subcommand, "--ckpt_path", str(evil), data_dir=data_dir)
    assert not marker.exists()
    assert not (tmp_path / "lightning_logs").exists()

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        SafeCheckpointIO().load_checkpoint(evil)
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


def test_the_trainer_saves_and_loads_through_the_safe_io(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "--trainer.max_epochs", "1", data_dir=data_dir)
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
