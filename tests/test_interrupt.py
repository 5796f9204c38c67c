"""Ctrl-C and SIGTERM stop a fit with `last.ckpt` at the step it reached, say where, and exit 130 / 143.

`--ckpt_path last` then ends bit-identical to a run never interrupted (the one of tests/test_resume_exact.py).

A signal sent while a step is under way is saved at that step's end; one sent during an epoch's
validation, at the epoch's end after that validation (an earlier save would skip it on resume).
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from tests import test_resume_exact
from tests.helpers import SCRIPT, run_cli
from tests.test_resume_exact import final_state, train
from vae.cli import main

uninterrupted = test_resume_exact.uninterrupted  # the reference fixture, trained once for this file too

STEPS_PER_EPOCH = 18  # test_resume_exact's run: 576 training images in batches of 32, 2 epochs


class PauseInStep(Callback):
    """In the step after `step` optimiser steps, before its forward pass: writes `in-step` and waits
    until the test, having signalled this process, writes `signalled`, so the signal lands in a
    step under way, on a step the test knows."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path("in-step").touch()
            deadline = time.monotonic() + 60
            while not Path("signalled").exists() and time.monotonic() < deadline:
                time.sleep(0.005)


class SignalInValidation(Callback):
    """Sends this process `signum` in the middle of the validation that follows `step` optimiser steps."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.global_step == self.step and batch_idx == 1 and not trainer.sanity_checking:
            signal.raise_signal(self.signum)


class CtrlCTwice(Callback):
    """Ctrl-C twice in the second step."""

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == 1:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)


class SigtermInTest(Callback):
    """SIGTERM to this process in the first test batch."""

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            signal.raise_signal(signal.SIGTERM)


def assert_the_same_run(a: dict, b: dict) -> None:
    """Same step, weights and Adam state, bit for bit."""
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for index, state in a["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer_states"][0]["state"][index][name]), (index, name)


def test_sigterm_to_a_real_train_py_mid_epoch_saves_that_step_exits_143_and_resumes_bit_identically(
    tmp_path, monkeypatch, data_dir, uninterrupted
):
    step = 7  # mid epoch 0; the every-5-steps save before it is step 5's
    # test_resume_exact's `train`, as a command line (run_cli's options, then train's)
    args = ["fit", "--data.data_dir", str(data_dir), "--data.val_size", "64", "--data.batch_size", "32"]
    args += ["--model.hidden_dim", "32", "--model.latent_dim", "4", "--trainer.log_every_n_steps", "1"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    args += ["--trainer.max_epochs", "2", "--checkpoint.save_last_every_n_steps", "5"]
    args += ["--trainer.callbacks+=tests.test_interrupt.PauseInStep", f"--trainer.callbacks.init_args.step={step}"]
    run = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "in-step").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGTERM)
    (tmp_path / "signalled").touch()
    _, console = run.communicate(timeout=120)

    assert run.returncode == 143, console[-3000:]
    saved = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert torch.load(saved, weights_only=True)["global_step"] == step + 1  # the step under way, finished
    said = [line for line in console.splitlines() if line.startswith("Stopped by SIGTERM")]
    assert len(said) == 1 and said[0].endswith(". To continue, run the same command with --ckpt_path last."), console
    assert said[0].startswith(f"Stopped by SIGTERM at step {step + 1}: saved ")
    assert (tmp_path / said[0].split(": saved ")[1].split(". To continue")[0]).samefile(saved)
    assert "Traceback" not in console

    train(tmp_path, monkeypatch, data_dir, "--ckpt_path", "last")
    assert_the_same_run(uninterrupted, final_state(tmp_path))


def test_ctrl_c_during_an_epochs_validation_saves_after_it_exits_130_and_resumes_bit_identically(
    tmp_path, monkeypatch, data_dir, uninterrupted
):
    callback = ["--trainer.callbacks+=tests.test_interrupt.SignalInValidation"]
    callback += [
        f"--trainer.callbacks.init_args.step={STEPS_PER_EPOCH}",
        f"--trainer.callbacks.init_args.signum={int(signal.SIGINT)}",
    ]
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        train(tmp_path, monkeypatch, data_dir, *callback)
    assert stopped.value.code == 130
    assert final_state(tmp_path)["global_step"] == STEPS_PER_EPOCH  # after epoch 0's validation, not before
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C does what it did before the fit

    train(tmp_path, monkeypatch, data_dir, "--ckpt_path", "last")
    assert_the_same_run(uninterrupted, final_state(tmp_path))


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stopped:
            run_cli("fit", "--trainer.max_epochs", "1", "--trainer.callbacks+=tests.test_interrupt.CtrlCTwice",
                    data_dir=data_dir)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, handler)  # (Lightning ignores Ctrl-C once it has had a KeyboardInterrupt)
    assert stopped.value.code == 1  # Lightning's KeyboardInterrupt
    assert not (tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt").exists()


def test_sigterm_stops_a_test_with_exit_status_143_not_0(copy_of_trained_run, data_dir, monkeypatch):
    args = ["test", "--ckpt_path", "last", "--data.data_dir", str(data_dir), "--data.batch_size", "32"]
    args += ["--trainer.callbacks+=tests.test_interrupt.SigtermInTest", "--trainer.enable_progress_bar", "false"]
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 143
    assert not (copy_of_trained_run / "lightning_logs/version_0/test_metrics.json").exists()  # it did stop
