"""Fault injection: real `python train.py` processes SIGKILLed at random moments, some in the middle
of writing a checkpoint, then resumed with `--ckpt_path last`, must end with exactly the weights of
a run that was never interrupted. Run alone with `python -m pytest -m fault`. The same under DDP,
with every process SIGKILLed at once while one writes a checkpoint: tests/test_ddp.py.
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

from tests.conftest import write_data_dir

pytestmark = pytest.mark.fault

LAUNCHER = Path(__file__).with_name("train_synthetic.py")
# Big enough that a checkpoint write takes a few milliseconds (so a kill can land inside one),
# small enough that two epochs take seconds.
ARGS = [
    "--model.hidden_dim=512", "--data.val_size=64", "--data.batch_size=32",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.max_epochs=5",
    "--checkpoint.save_last_every_n_steps=4",
]  # fmt: skip


def start(cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(LAUNCHER), *ARGS, *extra], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
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


def seconds_after_it_exists(path: Path, delay: float):
    seen = []

    def condition() -> bool:
        if not seen and path.exists():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > delay

    return condition


def weights(run: Path) -> dict:
    return torch.load(run / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, files) -> dict:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    write_data_dir(cwd, files)
    finish(start(cwd))
    return weights(cwd)


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkilled_runs_resume_to_the_same_weights(tmp_path, files, reference, seed):
    write_data_dir(tmp_path, files)
    checkpoints = tmp_path / "lightning_logs/version_0/checkpoints"
    last, partial = checkpoints / "last.ckpt", checkpoints / ".last.ckpt.partial"
    rng = random.Random(seed)
    kills, in_writes = 0, 0

    process = start(tmp_path)
    while kills < 4:
        # the first kill waits for a checkpoint; the second and fourth land inside a checkpoint write
        during_write = kills % 2 == 1
        condition = partial.exists if during_write else seconds_after_it_exists(last, rng.uniform(0, 1.0))
        if not kill_when(process, condition):
            break  # it finished first
        kills += 1
        in_writes += during_write
        assert torch.load(last, weights_only=True)["global_step"] > 0  # what the kill left is loadable
        process = start(tmp_path, "--ckpt_path=last")
    finish(process)

    print(f"seed {seed}: {kills} kills, {in_writes} inside a checkpoint write")
    assert kills >= 2 and in_writes >= 1
    result = weights(tmp_path)
    assert (result["epoch"], result["global_step"]) == (reference["epoch"], reference["global_step"])
    for key, value in reference["state_dict"].items():
        assert torch.equal(value, result["state_dict"][key]), key
    assert sorted(os.listdir(tmp_path / "lightning_logs")) == ["version_0"]
