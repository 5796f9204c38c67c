"""A run that crashes and resumes with `--ckpt_path last` ends exactly where an uninterrupted run does."""

import pytest
import torch
from lightning.pytorch import Callback

from tests.conftest import make_hermetic, run_cli, write_data_dir


class CrashAtStep(Callback):
    """Dies after `step` optimiser steps, before any checkpoint of that step is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def train(tmp, monkeypatch, data_dir, *extra: str) -> None:
    tmp.mkdir(exist_ok=True)
    monkeypatch.chdir(tmp)
    args = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1.0", "--trainer.limit_val_batches", "1.0"]
    run_cli("fit", *args, "--checkpoint.save_last_every_n_steps", "5", *extra, data_dir=data_dir)


def final_state(tmp) -> dict:
    return torch.load(tmp / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, files) -> dict:
    """The reference: the same run, never interrupted (trained once for all the crash points)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as monkeypatch:
        make_hermetic(monkeypatch, files)
        train(tmp / "a", monkeypatch, write_data_dir(tmp, files))
    return final_state(tmp / "a")


@pytest.mark.parametrize("crash_step", [7, 18, 23])  # mid epoch 1; the last step of epoch 1; mid epoch 2
def test_resume_after_a_crash_is_bit_identical(tmp_path, monkeypatch, data_dir, uninterrupted, crash_step):

    crash = "--trainer.callbacks+=tests.test_resume_exact.CrashAtStep"
    # (the CLI imports this module under another name, so its classes are not ours: match the message)
    with pytest.raises(RuntimeError, match=f"simulated crash at step {crash_step}"):
        train(tmp_path / "b", monkeypatch, data_dir, crash, f"--trainer.callbacks.init_args.step={crash_step}")
    interrupted = torch.load(tmp_path / "b/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert interrupted["global_step"] < crash_step  # the crash really lost work that had to be redone
    train(tmp_path / "b", monkeypatch, data_dir, "--ckpt_path", "last")

    a, b = uninterrupted, final_state(tmp_path / "b")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 36)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert opt_a["param_groups"][0]["lr"] == opt_b["param_groups"][0]["lr"]
    for index, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt_b["state"][index][name]), (index, name)
