"""The NaN/inf guard as it runs on a GPU (no sync per step), exercised here on the CPU.

`tests/test_checkpoints.py` covers the CPU's exact-step check; these force the deferred check
that GPUs and DDP use, where the host reads the device's flag only on logging steps, before a
checkpoint is written and at the end of training.
"""

import pytest

from tests.helpers import run_cli
from vae.callbacks import NonFiniteLossError, StopOnNonFiniteLoss
from vae.module import VAEModule


@pytest.mark.parametrize(
    ("log_every", "save_every", "stopped_at"),
    [
        ("1", "1000", 5),  # at the next logging step
        ("50", "5", 5),  # as the step-5 checkpoint is about to be written
        ("50", "1000", 6),  # at the end of training
    ],
)
@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # a copy of a run, see copy_of_trained_run
def test_the_deferred_check_names_the_step_and_no_checkpoint_holds_its_weights(
    copy_of_trained_run, monkeypatch, data_dir, log_every, save_every, stopped_at
):
    checkpoints = copy_of_trained_run / "lightning_logs/version_0/checkpoints"  # `run_cli fit`, 1 epoch of 3 steps
    before = {path.name: path.read_bytes() for path in checkpoints.iterdir()}

    original = VAEModule.training_step

    def diverges_at_batch_1(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if batch_idx == 1 else loss

    monkeypatch.setattr(VAEModule, "training_step", diverges_at_batch_1)
    monkeypatch.setattr(StopOnNonFiniteLoss, "checks_every_step", lambda self, trainer, module: False)
    message = rf"NaN or infinite at global step 4 .*stopped at step {stopped_at}.*last good checkpoint is .*last\.ckpt"
    with pytest.raises(NonFiniteLossError, match=message):
        run_cli(
            "fit", "--trainer.max_epochs", "2", "--ckpt_path", "last", "--trainer.log_every_n_steps", log_every,
            "--checkpoint.save_last_every_n_steps", save_every, data_dir=data_dir,
        )  # fmt: skip
    assert {path.name: path.read_bytes() for path in checkpoints.iterdir()} == before
