"""Fault injection: real `python train.py` processes SIGKILLed at random moments, some in the middle
of writing a checkpoint, then resumed with `--ckpt_path last`, must end with exactly the weights of
a run that was never interrupted. Run alone with `python -m pytest -m fault`. The same under DDP,
with every process SIGKILLed at once while one writes a checkpoint: tests/test_ddp.py.

The uninterrupted run (conftest's `script_fit`) also shows what a user's console shows.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import SCRIPT, SCRIPT_ARGS, write_data_dir


def start(cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *SCRIPT_ARGS, *extra], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-3000:]


def kill_when(process: subprocess.Popen, condition, timeout: float = 120) -> bool:
    """SIGKILL the process as soon as `condition()` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if condition():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.0005)
    return False


def seconds_after_a_new(path: Path, delay: float):
    """A condition: `delay` seconds have passed since a `path` other than the one there now appeared
    (each checkpoint write replaces the file), i.e. since this process wrote its first checkpoint."""
    before = path.stat().st_ino if path.exists() else None
    seen = []

    def condition() -> bool:
        if not seen and path.exists() and path.stat().st_ino != before:
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > delay

    return condition


def weights(run: Path) -> dict:
    return torch.load(run / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)


@pytest.mark.fault
def test_sigkilled_runs_resume_to_the_same_weights(tmp_path, files, script_fit):
    """Four kills of one run, each followed by a resume: at a random moment (up to half a second
    after that process wrote its first checkpoint, so while it trains), inside a checkpoint write,
    at a random moment, inside a write; then it runs to the end. The uninterrupted reference runs
    at the same time (`script_fit`)."""
    write_data_dir(tmp_path, files)
    checkpoints = tmp_path / "lightning_logs/version_0/checkpoints"
    last, partial = checkpoints / "last.ckpt", checkpoints / ".last.ckpt.partial"
    rng = random.Random(0)
    kills, in_writes = 0, 0

    process = start(tmp_path)
    while kills < 4:
        during_write = kills % 2 == 1  # the second and fourth kills land inside a checkpoint write
        condition = partial.exists if during_write else seconds_after_a_new(last, rng.uniform(0, 0.5))
        if not kill_when(process, condition):
            break  # it finished first
        kills += 1
        in_writes += during_write
        assert torch.load(last, weights_only=True)["global_step"] > 0  # what the kill left is loadable
        process = start(tmp_path, "--ckpt_path=last")
    finish(process)

    print(f"{kills} kills, {in_writes} inside a checkpoint write")
    assert kills >= 3 and in_writes >= 1  # random moments and checkpoint writes, both
    script_fit.finished()
    reference = weights(script_fit.cwd)  # the same fit, never interrupted
    result = weights(tmp_path)
    assert (result["epoch"], result["global_step"]) == (reference["epoch"], reference["global_step"])
    for key, value in reference["state_dict"].items():
        assert torch.equal(value, result["state_dict"][key]), key
    assert sorted(os.listdir(tmp_path / "lightning_logs")) == ["version_0"]


def test_the_console_has_no_advertisement_or_deprecation_noise_but_keeps_real_warnings(script_fit):
    console = script_fit.finished()  # a real `python train.py fit`, in a fresh interpreter
    assert "litlogger" not in console and "LeafSpec" not in console and "_pytree" not in console
    # a warning the user can act on: 18 batches per epoch and the default log_every_n_steps=50
    assert "smaller than the logging interval" in console
