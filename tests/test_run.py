"""vae/run.py: the one way the commands open a run, find its folder and name a data source."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule

from vae.checkpoints import CheckpointError
from vae.data import MNISTDataModule
from vae.data import mnist as mnist_files
from vae.run import data_source, find_checkpoint, model_inputs, open_run, output_dir, run_dir


def test_open_run_gives_the_model_in_eval_mode_with_overrides_and_the_runs_data_read(trained_run, tmp_path):
    ckpt = trained_run / "lightning_logs/version_0/checkpoints/last.ckpt"
    module, data = open_run(ckpt, "cpu", str(trained_run / "data"), iw_samples=7)
    assert not module.training and module.device == torch.device("cpu")
    assert module.hparams.iw_samples == 7 and module.hparams.latent_dim == 4  # overridden; the run's own
    assert isinstance(data, MNISTDataModule) and data.val_size == 64  # the run's data options
    assert len(data.train_set) == 640 - 64 and len(data.test_set) == 160  # read
    x = model_inputs(data, data.test_set.images[:5])
    assert x.dtype == torch.float32 and x.shape == (5, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x * 255, data.test_set.images[:5].float())


def test_missing_data_files_are_one_line(trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_files, "FETCHERS", ())  # nowhere to fetch them from
    ckpt = trained_run / "lightning_logs/version_0/checkpoints/last.ckpt"
    with pytest.raises(SystemExit) as error:
        open_run(ckpt, "cpu", str(tmp_path / "nowhere"))
    assert str(error.value.code).startswith("error: the run's data:") and "\n" not in str(error.value.code)


def test_last_is_the_newest_runs_last_checkpoint_and_a_missing_one_is_one_line(copy_of_trained_run, capsys):
    assert find_checkpoint("last").resolve() == (copy_of_trained_run / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert "--ckpt_path last: using lightning_logs/version_0/checkpoints/last.ckpt" in capsys.readouterr().err
    (copy_of_trained_run / "lightning_logs/version_0/checkpoints/last.ckpt").unlink()
    with pytest.raises(CheckpointError, match="no run with a checkpoints/last.ckpt"):
        find_checkpoint("last")


def test_the_run_folder_and_the_default_output_folder():
    assert run_dir("logs/version_3/checkpoints/best.ckpt") == Path("logs/version_3")
    assert run_dir("elsewhere/model.ckpt") is None
    assert output_dir("logs/version_3/checkpoints/last.ckpt", "samples") == Path("logs/version_3/samples")
    assert output_dir("model.ckpt", "export") == Path("export")
    assert output_dir("logs/version_3/checkpoints/last.ckpt", "report", "mine") == Path("mine")


class MyImages(LightningDataModule):
    """A data source of your own: found by its name once its module is imported."""


def test_a_data_source_is_named_as_train_py_names_it():
    assert data_source("MNISTDataModule", "--ood") is MNISTDataModule
    assert data_source(f"{MNISTDataModule.__module__}.MNISTDataModule", "--ood") is MNISTDataModule
    assert data_source("MyImages", "--ood") is MyImages
    assert data_source(f"{MyImages.__module__}.MyImages", "--ood") is MyImages
    for unknown in ("NoSuchDataModule", "os.system", "LightningDataModule"):
        with pytest.raises(SystemExit) as error:
            data_source(unknown, "--ood")
        message = str(error.value.code)
        assert message.startswith(f"error: --ood {unknown!r} is not a data source") and "MNISTDataModule" in message
        assert all(
            f" {name}" in message for name in ("FashionMNISTDataModule", "CIFAR10DataModule", "ImageFolderDataModule")
        )
