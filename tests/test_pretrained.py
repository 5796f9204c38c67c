"""pretrained/: slim checkpoints (weights, options, random states) that every command reads as a full one."""

import pytest
import torch

import export
import sample
from pretrained import slim
from tests.helpers import run_cli


def test_a_slim_checkpoint_tests_to_the_same_numbers_and_samples_and_exports(copy_of_trained_run, data_dir):
    full = copy_of_trained_run / "lightning_logs/version_0/checkpoints/last.ckpt"
    small = copy_of_trained_run / "pretrained/model.ckpt"
    slim.main([str(full), str(small)])
    kept = torch.load(small, weights_only=True)
    assert not set(slim.TRAINING_ONLY) & set(kept) and kept["callbacks"] == {}
    assert small.stat().st_size < full.stat().st_size / 2  # the optimiser's two moments per weight are gone

    test = ["--model.iw_samples", "3", "--trainer.limit_test_batches", "2"]
    expected = run_cli("test", "--ckpt_path", str(full), *test, data_dir=data_dir).trainer.callback_metrics
    got = run_cli("test", "--ckpt_path", str(small), *test, data_dir=data_dir).trainer.callback_metrics
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].item() == value.item(), name  # the same weights and the same test samples

    assert (sample.main(["--ckpt_path", str(small), "--data_dir", str(data_dir)]) / "prior.png").exists()
    assert (export.main(["--ckpt_path", str(small)]) / "decoder.pt2").exists()


def test_slim_says_in_one_line_when_the_checkpoint_is_missing(tmp_path):
    said = "^error: .*missing.ckpt is not a file: give a checkpoint written by train.py.$"
    with pytest.raises(SystemExit, match=said):
        slim.main([str(tmp_path / "missing.ckpt"), str(tmp_path / "out.ckpt")])
    assert not (tmp_path / "out.ckpt").exists()
