"""What a run leaves for a user to look at and take away, whichever logger it used.

PNG grids, metrics, predictions, and test scalars that line up with the training curves (the quiet
console of a real `python train.py`: tests/test_fault.py, beside the kills of the same process).
"""

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2
from torchvision.io import read_image

from tests.helpers import TEST_SIZE, make_hermetic, run_cli, synthetic_mnist, write_data_dir
from tests.test_checkpoints import CreatesAFileWhenUnpickled
from vae.checkpoints import CheckpointError
from vae.module import VAEModule

STEPS_PER_EPOCH = 3  # run_cli's --trainer.limit_train_batches
KINDS = ("reconstructions", "interpolations", "prior")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, files) -> SimpleNamespace:
    """One TensorBoard run, trained once for this file: 1 epoch, a copy of that checkpoint as
    `epoch0.ckpt`, then resumed with `--ckpt_path last` to 2 epochs."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        make_hermetic(patch, files)
        patch.chdir(root)
        data_dir = write_data_dir(root, files)
        run_cli("fit", "--trainer.max_epochs", "1", data_dir=data_dir)
        checkpoints = root / "lightning_logs/version_0/checkpoints"
        shutil.copy(checkpoints / "last.ckpt", checkpoints / "epoch0.ckpt")
        run_cli("fit", "--trainer.max_epochs", "2", "--ckpt_path", "last", data_dir=data_dir)
    return SimpleNamespace(root=root, data_dir=data_dir, run=root / "lightning_logs/version_0", checkpoints=checkpoints)


def scalar_points(run: Path, tag: str) -> list[tuple[int, float | None]]:
    """(step, value) of each time `tag` was logged (None for an image), over every event file of the run, in order."""
    points = []
    for f in sorted(run.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points += [(event.step, event.value) for event in acc.Scalars(tag)]
        if tag in acc.Tags()["images"]:
            points += [(event.step, None) for event in acc.Images(tag)]
    return points


def scalar_steps(run: Path, tag: str) -> list[int]:
    """The steps at which `tag` was logged, over every event file of the run, in order."""
    return [step for step, _ in scalar_points(run, tag)]


# 1. PNG grids


def test_every_validation_epoch_leaves_png_grids_in_the_run_and_in_tensorboard(trained):
    names = sorted(p.name for p in (trained.run / "images").iterdir())
    assert names == sorted(f"{kind}-epoch{epoch:03d}.png" for kind in KINDS for epoch in (0, 1))
    # 32 reconstructions: 4 rows of inputs, each above its reconstructions; 8 interpolations of 10 steps
    assert read_image(str(trained.run / "images/reconstructions-epoch001.png")).shape == (3, 30 * 8 + 2, 30 * 8 + 2)
    assert read_image(str(trained.run / "images/interpolations-epoch001.png")).shape == (3, 30 * 8 + 2, 30 * 10 + 2)
    for tag in ("val/reconstructions", "val/interpolations", "samples/prior"):  # TensorBoard still gets them
        assert scalar_steps(trained.run, tag) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_validate_on_a_checkpoint_leaves_the_runs_pictures_alone_and_prints_a_short_table(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained.root)
    before = {p.name: p.read_bytes() for p in (trained.run / "images").iterdir()}
    run_cli("validate", "--ckpt_path", str(trained.checkpoints / "last.ckpt"), data_dir=trained.data_dir)
    assert {p.name: p.read_bytes() for p in (trained.run / "images").iterdir()} == before
    printed = capsys.readouterr().out
    table = printed[printed.index("Validate metric") :]
    assert all(name in table for name in ("val/loss", "val/recon", "val/kl", "val/active_units"))
    assert "kl_per_dim" not in table  # the KL of each dimension goes to the logger only
    # at the steps of the other validation scalars: the fit's epochs, then this validate's checkpoint
    assert scalar_steps(trained.run, "val_kl_per_dim/z03") == scalar_steps(trained.run, "val/loss")


def test_images_every_n_epochs_and_never(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    run_cli("fit", "--trainer.max_epochs", "2", "--images.every_n_epochs", "2", data_dir=data_dir)
    images = tmp_path / "lightning_logs/version_0/images"
    assert sorted(p.name for p in images.iterdir()) == sorted(f"{kind}-epoch001.png" for kind in KINDS)

    run_cli("fit", "--trainer.max_epochs", "1", "--images.every_n_epochs", "0", data_dir=data_dir)
    assert not (tmp_path / "lightning_logs/version_1/images").exists()
    assert scalar_steps(tmp_path / "lightning_logs/version_1", "samples/prior") == []


# 2. any Lightning logger: CSVLogger, resumed into the same run


def test_csv_logger_run_has_metrics_checkpoints_pictures_config_and_resumes_into_itself(
    tmp_path, monkeypatch, data_dir
):
    monkeypatch.chdir(tmp_path)
    csv_logger = ["--trainer.logger", "CSVLogger"]
    run_cli("fit", "--trainer.max_epochs", "1", *csv_logger, data_dir=data_dir)
    run_cli("fit", "--trainer.max_epochs", "2", "--ckpt_path", "last", *csv_logger, data_dir=data_dir)
    run_cli("test", "--ckpt_path", "last", *csv_logger, data_dir=data_dir)

    run = tmp_path / "lightning_logs/version_0"
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    assert (run / "checkpoints/last.ckpt").is_file() and "max_epochs: 2" in (run / "config.yaml").read_text()
    assert {f"{kind}-epoch{epoch:03d}.png" for kind in KINDS for epoch in (0, 1)} <= {
        p.name for p in (run / "images").iterdir()
    }
    assert "test/loss" in json.loads((run / "test_metrics.json").read_text())["metrics"]
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # the first epoch's rows survived the resume and the test; the test row sits at the checkpoint's step
    assert [int(r["step"]) for r in rows if r["train/loss"]] == list(range(2 * STEPS_PER_EPOCH))
    assert [int(r["step"]) for r in rows if r["val/loss"]] == [STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1]
    assert [int(r["step"]) for r in rows if r["test/loss"]] == [2 * STEPS_PER_EPOCH]


# 3. predict


def test_predict_writes_the_test_posteriors_labels_and_scores_into_the_checkpoints_run(trained, monkeypatch):
    monkeypatch.chdir(trained.root)
    ckpt = trained.checkpoints / "last.ckpt"
    run_cli("predict", "--ckpt_path", str(ckpt), "--model.iw_samples", "20", data_dir=trained.data_dir)
    predictions = torch.load(trained.run / "predictions.pt", weights_only=True)
    assert set(predictions) == {"mu", "logvar", "label", "loss", "nll", "index"}
    # each image's scores average to what `test` reports: the same seed draws the same k = 20 samples
    # (no logger: a test point in the run's TensorBoard events would move the curves other tests here read)
    run_cli(
        "test",
        "--ckpt_path",
        str(ckpt),
        "--model.iw_samples",
        "20",
        "--trainer.logger",
        "false",
        data_dir=trained.data_dir,
    )
    tested = json.loads((trained.root / "test_metrics.json").read_text())["metrics"]
    assert predictions["loss"].mean().item() == pytest.approx(tested["test/loss"], rel=1e-6)
    assert predictions["nll"].mean().item() == pytest.approx(tested["test/nll"], rel=1e-6)
    images, labels = synthetic_mnist(TEST_SIZE, seed=2)  # the synthetic test files (tests/helpers.py)
    assert torch.equal(predictions["label"], labels.long()) and torch.equal(
        predictions["index"], torch.arange(TEST_SIZE)
    )
    module = VAEModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    mu, logvar = module.model.encode(images.unsqueeze(1).float() / 255)
    torch.testing.assert_close(predictions["mu"], mu.detach())
    torch.testing.assert_close(predictions["logvar"], logvar.detach())
    assert [p.name for p in (trained.root / "lightning_logs").iterdir()] == ["version_0"]


@pytest.mark.parametrize("bad", ["missing", "not a checkpoint", "crafted", "bare state dict"])
def test_predict_with_a_bad_checkpoint_says_so_in_one_line_and_writes_nothing(tmp_path, monkeypatch, data_dir, bad):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.ckpt"
    if bad == "not a checkpoint":
        path.write_bytes(b"not a checkpoint")
    elif bad == "crafted":
        torch.save({"state_dict": {}, "payload": CreatesAFileWhenUnpickled(tmp_path / "pwned")}, path)
    elif bad == "bare state dict":
        torch.save({"state_dict": VAEModule(hidden_dim=32, latent_dim=4).state_dict()}, path)
    with pytest.raises(CheckpointError) as error:
        run_cli("predict", "--ckpt_path", str(path), data_dir=data_dir)
    assert str(error.value.code).startswith("error: ") and "\n" not in str(error.value.code)
    # no lightning_logs/, no predictions.pt, and the crafted pickle never ran
    assert {p.name for p in tmp_path.iterdir()} - {"model.ckpt"} == {"data"}


# 4. test scalars at the checkpoint's step; HPARAMS without internals; a short test table


def test_tested_checkpoints_are_points_at_their_own_steps_and_the_table_shows_the_headline(
    trained, monkeypatch, capsys
):
    monkeypatch.chdir(trained.root)
    for name in ("epoch0.ckpt", "last.ckpt"):
        run_cli(
            "test", "--ckpt_path", str(trained.checkpoints / name), "--model.iw_samples", "5", data_dir=trained.data_dir
        )
    printed = capsys.readouterr().out
    steps = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for tag in ("test/loss", "test/nll", "test/active_units", "test_kl_per_dim/z00", "test_kl_per_dim/z03"):
        assert scalar_steps(trained.run, tag) == steps, tag
    table = printed[printed.index("Test metric") :]
    assert all(name in table for name in ("test/loss", "test/recon", "test/kl", "test/nll", "test/active_units"))
    assert "kl_per_dim" not in table
    metrics = json.loads((trained.run / "test_metrics.json").read_text())["metrics"]
    assert {f"test_kl_per_dim/z{u:02d}" for u in range(4)} <= set(metrics)  # still in the JSON
    # the `epoch` curve: the tests' points carry their checkpoint's epoch, so it ends level, not at 0
    epochs = dict(scalar_points(trained.run, "epoch"))
    assert (epochs[STEPS_PER_EPOCH], epochs[2 * STEPS_PER_EPOCH]) == (0, 1)
    assert epochs[2 * STEPS_PER_EPOCH - 1] == 1  # the fit's last point


def test_hparams_tab_shows_the_options_without_lightning_cli_internals(trained):
    hparams = set()
    for f in trained.run.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(f)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    hparams |= set(data.session_start_info.hparams)
    assert {"model/hidden_dim", "model/latent_dim", "data/batch_size", "data/binarize"} <= hparams
    assert not [name for name in hparams if name.split("/")[1].startswith("_")]
