"""pretrained/: slim checkpoints (weights, options, random states) that every command reads as a full one."""

import re
from pathlib import Path

import pytest
import torch
import yaml

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


PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"


def test_every_committed_checkpoint_is_slim_and_holds_the_model_its_readme_row_says_trained_it():
    checkpoints = sorted(PRETRAINED.glob("*.ckpt"))
    assert checkpoints, "pretrained/ holds no checkpoint"
    rows = [line for line in (PRETRAINED / "README.md").read_text().splitlines() if line.startswith("| `")]
    for path in checkpoints:
        (row,) = [line for line in rows if line.startswith(f"| `{path.name}`")]
        config = yaml.safe_load((PRETRAINED.parent / re.search(r"--config (\S+\.yaml)", row)[1]).read_text())
        kept = torch.load(path, map_location="cpu", weights_only=True)
        assert not set(slim.TRAINING_ONLY) & set(kept) and path.stat().st_size < 5e6
        seed = int(re.search(r"--seed_everything (\d+)", row)[1])
        for name, value in config["model"].items():
            assert kept["hyper_parameters"][name] == value, (path.name, name)
        assert kept["datamodule_hyper_parameters"]["binarize"] == config["data"]["binarize"]
        assert path.name.endswith(f"seed{seed}.ckpt"), "the file's name says the seed of the command in its row"
