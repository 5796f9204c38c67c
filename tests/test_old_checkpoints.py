"""Checkpoints written before the data sources had modules of their own still work.

The fixture was written by the code of commit 27bd318 (tests/fixtures/README.md), and names its source
`vae.data.MNISTDataModule`, as every checkpoint of that code does."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import export
import report
import sample
from tests.helpers import REPO, TEST_SIZE, expected_test_metrics, run_cli
from vae.data import (
    DEFAULT_SOURCE,
    OLD_CLASS_PATHS,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    datamodule_of_run,
    saved_class_path,
)
from vae.data.idx import raw_dir

FIXTURE = REPO / "tests/fixtures/mnist-27bd318.ckpt"


@pytest.fixture
def old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture as a run's `last.ckpt` in tmp_path, the working directory."""
    ckpt = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(FIXTURE, ckpt)
    monkeypatch.chdir(tmp_path)
    return ckpt


def test_the_fixture_is_an_old_mid_epoch_mnist_checkpoint():
    """What the tests below rely on: the old spelling of the source, and a position inside epoch 0."""
    saved = torch.load(FIXTURE, weights_only=True)
    assert saved["datamodule_hyper_parameters"]["_class_path"] == "vae.data.MNISTDataModule"
    assert (saved["global_step"], saved["epoch"], saved["hyper_parameters"]["hidden_dim"]) == (2, 0, 8)


@pytest.mark.parametrize(("old", "new"), OLD_CLASS_PATHS.items())
def test_every_old_class_path_builds_todays_source_from_its_own_module(old, new, tmp_path):
    options = {"root": str(tmp_path)} if old.endswith("ImageFolderDataModule") else {}
    source = datamodule_of_run({"_class_path": old, "data_dir": str(tmp_path), **options})
    assert f"{type(source).__module__}.{type(source).__qualname__}" == new
    assert type(source).__name__ == old.rpartition(".")[2]
    assert type(datamodule_of_run({"_class_path": new, **options})) is type(source)  # today's spelling too


def test_a_checkpoint_without_a_class_path_was_mnist(tmp_path):
    assert saved_class_path({"data_dir": "data"}) == DEFAULT_SOURCE == "vae.data.mnist.MNISTDataModule"
    assert isinstance(datamodule_of_run({"data_dir": "data"}), MNISTDataModule)
    assert saved_class_path({"_class_path": "mypackage.Faces"}) == "mypackage.Faces"  # your own: unchanged
    assert isinstance(
        datamodule_of_run({"_class_path": "vae.data.ImageFolderDataModule", "root": str(tmp_path)}),
        ImageFolderDataModule,
    )


def test_an_old_checkpoint_tests_with_its_own_weights_and_resumes_where_it_stopped(old_checkpoint, data_dir):
    cli = run_cli("test", "--ckpt_path", str(old_checkpoint), "--model.iw_samples", "3", data_dir=data_dir)
    assert type(cli.datamodule) is MNISTDataModule
    record = json.loads((old_checkpoint.parents[1] / "test_metrics.json").read_text())
    x = cli.datamodule.test_set.images.float() / 255
    assert len(x) == TEST_SIZE
    for name, value in expected_test_metrics(old_checkpoint, x, k=3, batch_size=32).items():
        assert record["metrics"][name] == pytest.approx(value, rel=1e-5), name

    resumed = run_cli("fit", "--ckpt_path", str(old_checkpoint), "--trainer.max_steps", "3", data_dir=data_dir)
    assert resumed.trainer.global_step == 3 and type(resumed.datamodule) is MNISTDataModule
    saved = torch.load(old_checkpoint, weights_only=True)  # rewritten by the resumed run
    assert saved["global_step"] == 3 and saved["hyper_parameters"]["hidden_dim"] == 8
    assert type(datamodule_of_run(saved["datamodule_hyper_parameters"])) is MNISTDataModule


def test_an_old_checkpoint_samples_exports_and_reports(old_checkpoint, data_dir, tmp_path):
    pictures = sample.main(["--ckpt_path", str(old_checkpoint), "--data_dir", str(data_dir), "--n", "4"])
    assert (pictures / "reconstructions.png").is_file()
    exported = export.main(["--ckpt_path", str(old_checkpoint), "--out", str(tmp_path / "export")])
    assert any(exported.iterdir())
    out = report.main(
        ["--ckpt_path", str(old_checkpoint), "--data_dir", str(data_dir), "--iw_samples", "2", "--n_samples", "32"]
        + ["--classifier_dir", str(tmp_path / "classifiers"), "--out", str(tmp_path / "report")]
    )
    assert json.loads((out / "report.json").read_text())


def test_an_old_checkpoint_of_another_source_is_tested_on_that_source(old_checkpoint, files, tmp_path, monkeypatch):
    """The CLI takes an old checkpoint's source from its class path (here rewritten to Fashion-MNIST's)."""
    saved = torch.load(old_checkpoint, weights_only=True)
    saved["datamodule_hyper_parameters"]["_class_path"] = "vae.data.FashionMNISTDataModule"
    torch.save(saved, old_checkpoint)
    monkeypatch.setattr(FashionMNISTDataModule, "installed", None)  # only the files written here
    raw = raw_dir(tmp_path / "fashion", "FashionMNIST")
    raw.mkdir(parents=True)
    for name, content in files.items():
        (raw / name).write_bytes(content)
    cli = run_cli("test", "--ckpt_path", str(old_checkpoint), "--model.iw_samples", "2", data_dir=tmp_path / "fashion")
    assert type(cli.datamodule) is FashionMNISTDataModule and cli.datamodule.files() == raw
