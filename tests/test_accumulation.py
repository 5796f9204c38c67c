"""Gradient accumulation: `--trainer.accumulate_grad_batches k` makes one optimiser step of k batches.

Everything the project counts in steps counts optimiser steps: the KL warm-up, the periodic
`last.ckpt`, and the `train/loss` curve.
"""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import run_cli
from vae.checkpoints import SafeCheckpointIO
from vae.module import VAEModule

BATCHES, K = 6, 2  # 3 optimiser steps per epoch


def test_warm_up_checkpoints_and_the_loss_curve_count_optimiser_steps(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    weights, saves = [], []
    kl_weight, save = VAEModule._kl_weight, SafeCheckpointIO.save_checkpoint

    def recording_kl_weight(self):
        weights.append(kl_weight(self))
        return weights[-1]

    def recording_save(self, checkpoint, path, storage_options=None):
        saves.append((path.rsplit("/", 1)[-1], checkpoint["global_step"]))
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(VAEModule, "_kl_weight", recording_kl_weight)
    monkeypatch.setattr(SafeCheckpointIO, "save_checkpoint", recording_save)
    run_cli(
        "fit", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", str(BATCHES),
        "--trainer.accumulate_grad_batches", str(K), "--model.kl_warmup_epochs", "1",
        "--checkpoint.save_last_every_n_steps", "2", data_dir=data_dir,
    )  # fmt: skip

    # The warm-up lasts one epoch of optimiser steps; the batches of a step share its weight.
    assert weights == [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1] + [1] * BATCHES
    # last.ckpt every 2 optimiser steps (2, 4, 6) and at each epoch's end (3, 6), once each: step 6 ends
    # epoch 2, so its save waits for the epoch's end (vae.checkpoints.RunCheckpoint) and is that one
    assert [step for name, step in saves if name == "last.ckpt"] == [2, 3, 4, 6]
    # train/loss once per optimiser step (logged every step here)
    (events,) = (tmp_path / "lightning_logs/version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("train/loss")] == list(range(2 * BATCHES // K))
