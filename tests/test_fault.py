"""Fault injection: real `python train.py` processes SIGKILLed at random steps resume bit-identically.

Real processes SIGKILLed at steps chosen at random, some in the middle of writing a checkpoint,
then resumed with `--ckpt_path last`, must end with exactly the weights of a run that was never
interrupted. Run alone with `python -m pytest -m fault`. The same under DDP, with every process
SIGKILLed at once while one writes a checkpoint: tests/test_ddp.py.

Kills are placed by training step, not by time, so they land where they are meant to whatever the
speed of the machine: each process logs the steps it takes (tests/scripts/train_synthetic.py), and this
test kills it once it has taken a chosen step, or the process kills itself half-way through
writing a chosen step's checkpoint.

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

from tests.helpers import SCRIPT, SCRIPT_ARGS, write_data_dir

# SCRIPT_ARGS: 576 training images in batches of 32, 5 epochs, last.ckpt every 4 steps
STEPS_PER_EPOCH, SAVE_EVERY = 18, 4


def last_save_by(step: int) -> int:
    """The step of the newest last.ckpt once `step` is done: saves every SAVE_EVERY steps and at each epoch's end."""
    return max(step - step % SAVE_EVERY, step - step % STEPS_PER_EPOCH)


def start(cwd: Path, name: str, *extra: str, kill_in_write_at: int | None = None) -> subprocess.Popen:
    """SCRIPT in `cwd`, logging its steps to `<name>.steps` and its console to `<name>.txt`; in a
    session of its own, so that a kill of its process group is a kill of it alone."""
    env = {**os.environ, "STEP_LOG": str(cwd / f"{name}.steps")}
    if kill_in_write_at is not None:
        env["SIGKILL_IN_WRITE_AT_STEP"] = str(kill_in_write_at)
    with open(cwd / f"{name}.txt", "w") as console:
        command = [sys.executable, str(SCRIPT), *SCRIPT_ARGS, *extra]
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=console, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def steps_taken(cwd: Path, name: str) -> list[int]:
    """The global steps the process `name` logged, complete lines only (it may be writing one)."""
    path = cwd / f"{name}.steps"
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    return [int(line) for line in lines if line.endswith("\n")]


def printed(cwd: Path, name: str) -> str:
    return (cwd / f"{name}.txt").read_text()[-3000:]


def kill_at_step(process: subprocess.Popen, cwd: Path, name: str, step: int, timeout: float = 300) -> None:
    """SIGKILL the process as soon as it has logged `step`: somewhere in the step after it."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        taken = steps_taken(cwd, name)
        if taken and taken[-1] >= step:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.0005)
    pytest.fail(f"{name} ended (code {process.poll()}) or timed out before step {step}: {printed(cwd, name)}")


def weights(run: Path) -> dict:
    return torch.load(run / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)


@pytest.mark.fault
def test_sigkilled_runs_resume_to_the_same_weights(tmp_path, files, script_fit):
    """Four kills of one run, each followed by a resume, at steps drawn from a seed that is printed:
    in the middle of epoch 0's training, inside the write of a checkpoint in epoch 1, in the middle
    of epoch 2's training, inside the write of a checkpoint in epoch 3 (or of its end's, after its
    validation); then it runs to the end. The uninterrupted reference runs at the same time (`script_fit`)."""
    seed = random.randrange(2**32)
    print(f"kill steps drawn with random.Random({seed})")
    rng = random.Random(seed)
    plan = [
        ("while training", rng.randint(5, 13)),  # after the first save (step 4), well before the epoch's end (18)
        ("inside a write", rng.choice([20, 24, 28, 32])),
        ("while training", rng.randint(39, 49)),  # epoch 2 is steps 37 to 54
        ("inside a write", rng.choice([56, 60, 64, 68, 72])),  # 72: the best and last checkpoints of epoch 3's end
    ]
    write_data_dir(tmp_path, files)
    checkpoints = tmp_path / "lightning_logs/version_0/checkpoints"
    saved = None  # the step in last.ckpt, once there is one
    for n, (how, step) in enumerate(plan):
        name, resume = f"run{n}", [] if saved is None else ["--ckpt_path=last"]
        if how == "while training":
            process = start(tmp_path, name, *resume)
            kill_at_step(process, tmp_path, name, step)
        else:
            process = start(tmp_path, name, *resume, kill_in_write_at=step)
            assert process.wait(timeout=300) == -signal.SIGKILL, printed(tmp_path, name)
        taken = steps_taken(tmp_path, name)
        where = f"random.Random({seed}), {name} killed {how} at step {step}, steps {taken[:1]}..{taken[-1:]}"
        if saved is not None:
            assert taken[0] == saved + 1, where  # it resumed where the checkpoint was written
        saved = torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"]  # loadable
        print(f"{where}: last.ckpt holds step {saved}")
        if how == "while training":
            assert saved >= last_save_by(step), (where, saved)
        else:
            assert saved == last_save_by(step - 1), (where, saved)  # the write of `step`'s never finished
            assert list(checkpoints.glob(".*.partial")), f"{where}: no half-written file, the kill missed the write"
    final = start(tmp_path, "final", "--ckpt_path=last")
    assert final.wait(timeout=300) == 0, printed(tmp_path, "final")
    assert steps_taken(tmp_path, "final")[0] == saved + 1

    script_fit.finished()
    reference = weights(script_fit.cwd)  # the same fit, never interrupted
    result = weights(tmp_path)
    assert (result["epoch"], result["global_step"]) == (reference["epoch"], reference["global_step"])
    for key, value in reference["state_dict"].items():
        assert torch.equal(value, result["state_dict"][key]), key
    assert sorted(os.listdir(tmp_path / "lightning_logs")) == ["version_0"]
    assert not list(checkpoints.glob(".*.partial"))  # no half-written file left behind


def test_the_console_has_no_advertisement_or_deprecation_noise_but_keeps_real_warnings(script_fit):
    console = script_fit.finished()  # a real `python train.py fit`, in a fresh interpreter
    assert "litlogger" not in console and "LeafSpec" not in console and "_pytree" not in console
    # a warning the user can act on: 18 batches per epoch and the default log_every_n_steps=50
    assert "smaller than the logging interval" in console
