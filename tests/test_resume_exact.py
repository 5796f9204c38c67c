"""A run that crashes and resumes with `--ckpt_path last` ends exactly where an uninterrupted run does."""

import pytest
import torch
from lightning.pytorch import Callback

from tests.helpers import make_hermetic, run_cli, write_data_dir


class CrashAtStep(Callback):
    """Dies after `step` optimiser steps, before any checkpoint of that step is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class CrashInValidation(Callback):
    """Dies at the end of the validation that follows `step` optimiser steps, just before the epoch's
    checkpoint is written (Lightning runs the checkpoint callbacks after the others): where a kill
    during an epoch's validation leaves a run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking:
            raise RuntimeError(f"simulated crash in the validation at step {self.step}")


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


@pytest.mark.parametrize(
    ("crash", "crash_step", "every_n", "resumed_from"),
    [
        ("CrashAtStep", 7, 5, 5),  # mid epoch 1
        ("CrashAtStep", 18, 5, 15),  # the last step of epoch 1
        ("CrashAtStep", 23, 5, 20),  # mid epoch 2
        # the every-N save falls on epoch 1's last step, and the run dies in that epoch's validation
        ("CrashInValidation", 18, 6, 12),
        # ... or dies early in epoch 2: it resumes from epoch 1's own save, made after its validation
        ("CrashAtStep", 21, 6, 18),
    ],
)
def test_resume_after_a_crash_is_bit_identical(
    tmp_path, monkeypatch, data_dir, uninterrupted, crash, crash_step, every_n, resumed_from
):
    callback = f"--trainer.callbacks+=tests.test_resume_exact.{crash}"
    # (the CLI imports this module under another name, so its classes are not ours: match the message)
    with pytest.raises(RuntimeError, match=f"simulated crash .*at step {crash_step}"):
        train(
            tmp_path / "b",
            monkeypatch,
            data_dir,
            callback,
            f"--trainer.callbacks.init_args.step={crash_step}",
            f"--checkpoint.save_last_every_n_steps={every_n}",
        )
    interrupted = torch.load(tmp_path / "b/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
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
    assert interrupted["global_step"] == resumed_from  # the crash really lost work that had to be redone


def test_a_save_due_on_an_epochs_last_step_is_made_at_the_epochs_end(tmp_path, monkeypatch, data_dir):
    """Also in an epoch without validation, which has no end-of-epoch save of its own: a killed run
    still loses at most N steps."""
    crash = ("--trainer.callbacks+=tests.test_resume_exact.CrashAtStep", "--trainer.callbacks.init_args.step=20")
    with pytest.raises(RuntimeError, match="simulated crash at step 20"):
        train(
            tmp_path,
            monkeypatch,
            data_dir,
            *crash,
            "--checkpoint.save_last_every_n_steps=6",
            "--trainer.check_val_every_n_epoch=2",
        )
    assert final_state(tmp_path)["global_step"] == 18


def test_a_run_with_a_learning_rate_schedule_resumes_mid_epoch_at_the_batch_it_stopped_at(
    tmp_path, monkeypatch, data_dir
):
    """The cosine schedule asks for the fit's length in `configure_optimizers`, before the checkpoint is
    restored; Lightning then forgot the loader's position (its issue #20550) and the resumed epoch began
    with batches already trained on (`vae.lightning_internals.stepping_batches`)."""
    train(tmp_path / "a", monkeypatch, data_dir, "--model.lr_schedule", "cosine")
    crash = ["--trainer.callbacks+=tests.test_resume_exact.CrashAtStep", "--trainer.callbacks.init_args.step=7"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tmp_path / "b", monkeypatch, data_dir, "--model.lr_schedule", "cosine", *crash)  # saved at step 5
    train(tmp_path / "b", monkeypatch, data_dir, "--ckpt_path", "last")

    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert a["global_step"] == b["global_step"] == 36
    assert a["lr_schedulers"] == b["lr_schedulers"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
