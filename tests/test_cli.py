"""The command line as a user drives it: fit, resume, test, and the mistakes it must catch early."""

import json
import runpy
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Normal, kl_divergence

from tests.helpers import REPO, TEST_SIZE, expected_test_metrics, fit_in_a_new_folder, run_cli
from vae.callbacks import LatentProjector
from vae.checkpoints import CheckpointError
from vae.cli import VAECLI, data_class_first
from vae.cli_checks import CommandLineError
from vae.data import MNISTDataModule
from vae.data import mnist as mnist_files
from vae.model import VAE
from vae.module import VAEModule


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def events(run_dir: Path) -> tuple[set[str], set[str]]:
    scalars, images = set(), set()
    for f in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f), size_guidance={"images": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
    return scalars, images


def test_fit_makes_a_run_with_logs_images_config_and_checkpoints(trained_run):
    assert [p.name for p in (trained_run / "lightning_logs").iterdir()] == ["version_0"]
    run = trained_run / "lightning_logs" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert [p.name for p in (run / "checkpoints").glob("best-*.ckpt")] == ["best-epoch000.ckpt"]
    assert "max_epochs: 1" in (run / "config.yaml").read_text()
    scalars, images = events(run)
    assert {"train/loss", "val/loss", "val/recon", "val/kl", "val/active_units", "val_kl_per_dim/z03"} <= scalars
    assert (run / "projector_config.pbtxt").is_file()  # the test set's posterior means, for the PROJECTOR tab
    (metadata,) = run.glob("*/test*posterior_means/metadata.tsv")
    assert len(metadata.read_text().splitlines()) == TEST_SIZE  # one labelled point per test image (<= 1,000)
    assert not any("nll" in tag for tag in scalars)  # the importance-weighted bound is for test only
    assert images == {"val/reconstructions", "val/interpolations", "samples/prior"}


def test_the_projector_shows_the_first_n_test_images_with_their_labels(tmp_path, data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=64)
    dm.setup("fit")
    trainer = SimpleNamespace(is_global_zero=True, datamodule=dm, global_step=0, loggers=[TensorBoardLogger(tmp_path)])
    LatentProjector(n_images=50).on_fit_end(trainer, VAEModule(hidden_dim=16, latent_dim=2))
    (metadata,) = tmp_path.glob("**/test*posterior_means/metadata.tsv")
    assert metadata.read_text().splitlines() == [str(label) for label in dm.test_set.labels[:50].tolist()]


def test_resume_last_continues_the_same_run_and_step_count(in_tmp, data_dir, capsys, caplog):
    run_cli("fit", "--trainer.max_epochs", "1", "--trainer.enable_model_summary", "true", data_dir=data_dir)
    # the model summary without a FLOPs column that would read 0 (the module has no example input)
    summary = caplog.text[caplog.text.index("| Name") :]
    assert "Total params" in summary and "FLOPs" not in summary and "Flops" not in summary
    first = torch.load(in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    # what a SIGKILL in the middle of writing a best checkpoint leaves (never renamed into place)
    (in_tmp / "lightning_logs/version_0/checkpoints/.best-epoch000.ckpt.partial").write_bytes(b"half a file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = run_cli("fit", "--trainer.max_epochs", "2", "--ckpt_path", "last", data_dir=data_dir)
    # into its own, non-empty, checkpoint folder: Lightning's warning about that would say nothing
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]
    assert "--ckpt_path last: resuming the training of lightning_logs/version_0/checkpoints/last.ckpt" in (
        capsys.readouterr().err
    )

    assert [p.name for p in (in_tmp / "lightning_logs").iterdir()] == ["version_0"]  # no new version
    assert Path(cli.trainer.log_dir).resolve() == in_tmp / "lightning_logs" / "version_0"
    last = torch.load(in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert (first["epoch"], first["global_step"]) == (0, 3)
    assert (last["epoch"], last["global_step"]) == (1, 6)
    # one best and one last: no stale best, no `last-v1.ckpt` beside `last.ckpt`, no stale partial file
    names = sorted(p.name for p in (in_tmp / "lightning_logs/version_0/checkpoints").iterdir())
    assert len(names) == 2 and names[0].startswith("best-epoch") and names[1] == "last.ckpt"
    # the resumed run kept the architecture of the checkpoint, not the CLI defaults
    assert cli.model.hparams.hidden_dim == 32


def test_a_new_run_into_a_checkpoint_folder_that_is_not_empty_is_still_warned_about(in_tmp, data_dir):
    (in_tmp / "lightning_logs/version_0/checkpoints").mkdir(parents=True)
    (in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt").touch()
    with pytest.warns(UserWarning, match="Checkpoint directory .*version_0/checkpoints exists and is not empty"):
        run_cli("fit", "--trainer.max_steps", "0", "--trainer.logger.init_args.version", "0", data_dir=data_dir)


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # a copy of a run, see copy_of_trained_run
def test_resume_from_an_explicit_checkpoint_logs_into_its_run(copy_of_trained_run, data_dir):
    in_tmp = copy_of_trained_run
    shutil.copytree(in_tmp / "lightning_logs/version_0", in_tmp / "lightning_logs/version_1")  # the newest
    ckpt = in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt"
    cli = run_cli("fit", "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt), data_dir=data_dir)
    assert Path(cli.trainer.log_dir).resolve() == in_tmp / "lightning_logs" / "version_0"
    assert sorted(p.name for p in (in_tmp / "lightning_logs").iterdir()) == ["version_0", "version_1"]


def test_test_subcommand_writes_json_into_the_checkpoints_run(copy_of_trained_run, data_dir, capsys):
    in_tmp = copy_of_trained_run
    ckpt = in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt"
    # batches of 48: 3 full ones and one of 16, so that a mean of batch means would be off
    cli = run_cli("test", "--ckpt_path", "last", "--data.batch_size", "48", data_dir=data_dir)
    said = capsys.readouterr().err
    assert "--ckpt_path last: testing lightning_logs/version_0/checkpoints/last.ckpt" in said
    assert "Resuming" not in said and "resuming" not in said
    record = json.loads((in_tmp / "lightning_logs/version_0/test_metrics.json").read_text())
    kl_per_dim = [f"test_kl_per_dim/z{u:02d}" for u in range(4)]
    terms = {"test/loss", "test/recon", "test/kl", "test/nll", "test/nll_bpd", "test/active_units"}
    assert set(record["metrics"]) == terms | set(kl_per_dim)
    # The KL terms are deterministic: the checkpoint's posteriors of every test image, averaged over
    # the images, per dimension and summed.
    model = VAEModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).model.eval()
    x = cli.datamodule.test_set.images.float() / 255
    with torch.no_grad():
        mu, logvar = model.encode(x)
    assert len(mu) == TEST_SIZE
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean(0)
    assert [record["metrics"][name] for name in kl_per_dim] == pytest.approx(kl.tolist(), rel=1e-5)
    assert record["metrics"]["test/kl"] == pytest.approx(kl.sum().item(), rel=1e-5)
    # All four, with the noise the test drew (k = 100 by default)
    for name, value in expected_test_metrics(ckpt, x, k=100, batch_size=48).items():
        assert record["metrics"][name] == pytest.approx(value, rel=1e-5), name
    assert Path(record["ckpt_path"]).resolve() == ckpt
    assert (in_tmp / "lightning_logs/version_0/config.yaml").is_file()  # the fit config is not overwritten
    assert (in_tmp / "lightning_logs/version_0/test_config.yaml").is_file()
    assert not (in_tmp / "lightning_logs/version_1").exists()


# the data options and k of a run that `test` must not silently take from the checkpoint
BINARY_RUN = ["--model.iw_samples", "3", "--data.binarize", "dynamic", "--data.split_seed", "3"]


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory, files) -> Path:
    """A 1-epoch fit with BINARY_RUN's options, trained once for this file: its `lightning_logs/`."""
    root, _ = fit_in_a_new_folder(tmp_path_factory, files, "binary-run", "--trainer.max_epochs", "1", *BINARY_RUN)
    return root / "lightning_logs"


def test_test_nll_uses_the_command_lines_k_and_is_below_the_negative_elbo(
    in_tmp, data_dir, binary_run, caplog, monkeypatch
):
    binary = ["--data.binarize", "dynamic"]  # so that test/nll is a likelihood of binary images
    shutil.copytree(binary_run, in_tmp / "lightning_logs")  # trained with k = 3
    ckpt = str(in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt")
    json_path = in_tmp / "lightning_logs/version_0/test_metrics.json"

    decoded = []  # the latent codes decoded: k per test image, if k samples reached the computation
    decode = VAE.decode
    monkeypatch.setattr(VAE, "decode", lambda self, z: decoded.append(len(z)) or decode(self, z))
    run_cli("test", "--ckpt_path", ckpt, "--model.iw_samples", "50", *binary, data_dir=data_dir)
    assert sum(decoded) == 50 * TEST_SIZE  # not the 3 saved in the checkpoint
    record = json.loads(json_path.read_text())
    assert record["hparams"]["iw_samples"] == 50 and "test/nll uses k=50 importance samples" in caplog.text
    metrics = record["metrics"]
    assert metrics["test/nll"] <= metrics["test/loss"] + 0.1

    run_cli("test", "--ckpt_path", ckpt, "--model.iw_samples", "0", *binary, data_dir=data_dir)
    assert "test/nll" not in json.loads(json_path.read_text())["metrics"]


def test_resume_last_with_no_runs_fails_loudly_and_creates_nothing(in_tmp, data_dir):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run_cli("fit", "--ckpt_path", "last", data_dir=data_dir)
    assert not (in_tmp / "lightning_logs").exists()


@pytest.mark.parametrize(
    "content, said",
    [
        (None, "does not exist"),
        (b"not a checkpoint", "cannot be read as a checkpoint"),
        ("truncated", "cannot be read as a checkpoint"),
        (b"", "is an empty file"),
        ("folder", "is a folder; pass a .ckpt file in it"),
    ],
)
def test_bad_ckpt_path_is_reported_before_a_run_directory_exists(in_tmp, data_dir, trained_run, content, said):
    path = in_tmp / "model.ckpt"
    if content == "truncated":
        good = (trained_run / "lightning_logs/version_0/checkpoints/last.ckpt").read_bytes()
        path.write_bytes(good[: len(good) // 2])
    elif content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    before = sorted((in_tmp / "lightning_logs").glob("*")) if (in_tmp / "lightning_logs").exists() else []
    with pytest.raises(CheckpointError) as exit_:
        run_cli("fit", "--ckpt_path", str(path), data_dir=data_dir)
    assert one_line_error(exit_).startswith(f"error: --ckpt_path {path} {said}")
    after = sorted((in_tmp / "lightning_logs").glob("*")) if (in_tmp / "lightning_logs").exists() else []
    assert after == before


@pytest.mark.parametrize(
    "option",
    ["--model.latent_dim=0", "--model.hidden_dim=-5", "--model.lr=0", "--data.batch_size=0", "--data.val_size=60000"],
)
def test_invalid_options_stop_with_one_line_naming_the_option_before_any_run_exists(in_tmp, data_dir, option):
    with pytest.raises(SystemExit) as exit_:
        run_cli("fit", option, data_dir=data_dir)
    message = str(exit_.value.code)
    assert message.startswith("error: " + option.split("=")[0]) and "\n" not in message
    assert not (in_tmp / "lightning_logs").exists()


def one_line_error(exit_: pytest.ExceptionInfo) -> str:
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_evaluating_without_a_checkpoint_stops_with_one_line_before_a_run_exists(in_tmp, data_dir, subcommand):
    with pytest.raises(SystemExit) as exit_:
        run_cli(subcommand, data_dir=data_dir)
    assert f"`{subcommand}` evaluates a trained model: pass --ckpt_path" in one_line_error(exit_)
    assert "--ckpt_path last" in one_line_error(exit_)
    assert not (in_tmp / "lightning_logs").exists()


# Options the Trainer itself refuses, as a user would mistype them on a CPU-only machine; the error
# must name the option (even beside valid ones) and say what to do.
NO_SUCH_ACCELERATOR = "mps" if torch.cuda.is_available() else "gpu"


@pytest.mark.parametrize(
    "options, named",
    [
        (["--trainer.max_epochs=-5"], "--trainer.max_epochs -5: `max_epochs` must be a non-negative integer"),
        ([f"--trainer.accelerator={NO_SUCH_ACCELERATOR}", "--trainer.devices=1"], "--trainer.accelerator"),
        (["--trainer.devices=0"], "--trainer.devices 0:"),
        (["--trainer.accelerator=cpu", "--trainer.devices=[3]"], "--trainer.devices [3]:"),
        (["--trainer.strategy=nope"], "--trainer.strategy nope: You selected an invalid strategy name"),
        (["--trainer.num_nodes=0"], "--trainer.num_nodes 0:"),
        (["--trainer.val_check_interval=-1"], "--trainer.val_check_interval -1:"),
        (["--trainer.max_time=soon"], "--trainer.max_time soon:"),
        (["--trainer.precision=17"], "--trainer.precision 17: not a value this option accepts"),
    ],
)
def test_a_trainer_option_lightning_refuses_stops_with_one_line_naming_it(in_tmp, data_dir, options, named):
    with pytest.raises(SystemExit) as exit_:
        run_cli("fit", *options, data_dir=data_dir)
    message = one_line_error(exit_)
    assert message.startswith(f"error: {named}") and "fit --help" in message
    assert "Change or drop it" in message or "not a value" in message
    assert not (in_tmp / "lightning_logs").exists()


def run_train_py(monkeypatch, capsys, *args: str) -> str:
    """`python train.py ARGS`, run as the script it is (`__main__`) in this interpreter: what it printed."""
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out


def test_train_py_defaults_to_fit_and_prints_its_config(in_tmp, monkeypatch, capsys):
    out = run_train_py(monkeypatch, capsys, "--print_config")
    assert "max_epochs: 30" in out and "hidden_dim: 512" in out and "latent_dim: 20" in out
    assert "TensorBoardLogger" in out and "batch_size: 128" in out
    assert not list(in_tmp.iterdir())  # printing the config trains nothing


def test_train_py_help_lists_the_subcommands(in_tmp, monkeypatch, capsys):
    out = run_train_py(monkeypatch, capsys, "--help")
    assert all(name in out for name in ("fit", "validate", "test", "predict"))


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        VAECLI(args=["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    assert "hidden_dim" in capsys.readouterr().out


@pytest.mark.parametrize(
    "option, given, trained", [("hidden_dim", "64", "32"), ("likelihood", "logistic", "bernoulli")]
)
def test_a_checkpoint_with_another_architecture_is_refused_before_a_run_exists(
    copy_of_trained_run, data_dir, option, given, trained
):
    in_tmp = copy_of_trained_run
    ckpt = str(in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt")  # hidden_dim 32, Bernoulli
    with pytest.raises(CheckpointError, match=f"{option}={trained}, but --model.{option} {given} was given"):
        run_cli("test", "--ckpt_path", ckpt, f"--model.{option}", given, data_dir=data_dir)
    assert sorted(p.name for p in (in_tmp / "lightning_logs").iterdir()) == ["version_0"]


def test_test_uses_the_checkpoints_data_options_unless_they_are_given(in_tmp, data_dir, binary_run):
    shutil.copytree(binary_run, in_tmp / "lightning_logs")  # trained on --data.binarize dynamic --data.split_seed 3
    ckpt = str(in_tmp / "lightning_logs/version_0/checkpoints/last.ckpt")
    test = ["test", "--ckpt_path", ckpt, "--model.iw_samples", "0"]

    cli = run_cli(*test, data_dir=data_dir)  # not given: the checkpoint's
    assert (cli.datamodule.binarize, cli.datamodule.split_seed) == ("dynamic", 3)
    assert set(cli.datamodule.test_set.images.unique().tolist()) == {0, 255}

    # given, even at their usual defaults, on the command line or in a config file: as given
    cli = run_cli(*test, "--data.binarize", "none", data_dir=data_dir)
    assert (cli.datamodule.binarize, cli.datamodule.split_seed) == ("none", 3)
    assert len(cli.datamodule.test_set.images.unique()) > 2  # grey levels
    (in_tmp / "data.yaml").write_text("data:\n  split_seed: 0\n")
    cli = run_cli(*test, "--config", str(in_tmp / "data.yaml"), data_dir=data_dir)
    assert (cli.datamodule.binarize, cli.datamodule.split_seed) == ("dynamic", 0)


def test_an_unwritable_log_folder_is_reported_before_training(in_tmp, data_dir):
    (in_tmp / "lightning_logs").write_text("a file where the runs should go")
    with pytest.raises(CommandLineError, match="cannot write runs under lightning_logs"):
        run_cli("fit", data_dir=data_dir)
    assert (in_tmp / "lightning_logs").read_text() == "a file where the runs should go"


def test_missing_data_that_cannot_be_fetched_stops_before_a_run_exists(in_tmp, tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_files, "FETCHERS", ())  # nothing on disk, no source answers
    with pytest.raises(SystemExit) as exit_:
        run_cli("fit", data_dir=tmp_path / "empty")
    assert "train-images-idx3-ubyte" in one_line_error(exit_) and "by hand" in one_line_error(exit_)
    assert not list((in_tmp / "lightning_logs").glob("version_*"))


# The Trainer options that count batches: an int is a number of batches, a float a fraction of them.
BATCH_COUNTS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


@pytest.mark.parametrize("where", ["command line", "config file"])
@pytest.mark.parametrize("given, expected", [("1", 1), ("1.0", 1.0), ("0.5", 0.5), ("3", 3)])
def test_a_batch_count_written_as_an_integer_reaches_the_trainer_as_one(in_tmp, where, given, expected):
    """`--trainer.limit_train_batches 1` is one batch, `1.0` all of them (Lightning's meaning of int and float)."""
    options = (*BATCH_COUNTS, "val_check_interval")
    if where == "command line":
        args = [arg for name in options for arg in (f"--trainer.{name}", given)]
    else:
        (in_tmp / "limits.yaml").write_text("trainer:\n" + "".join(f"  {name}: {given}\n" for name in options))
        args = ["--config", "limits.yaml"]
    cli = VAECLI(args=["--trainer.logger", "false", *args], run=False)
    for name in options:
        value = getattr(cli.trainer, name)
        assert (value, type(value)) == (expected, type(expected)), name


@pytest.mark.parametrize("given, steps", [("1", 1), ("1.0", (640 - 64) // 32)])
def test_limit_train_batches_1_trains_one_batch_and_1_0_the_whole_epoch(in_tmp, data_dir, given, steps):
    cli = run_cli("fit", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", given, data_dir=data_dir)
    assert cli.trainer.global_step == steps


@pytest.mark.parametrize(
    "content, said",
    [
        (None, "no such file."),
        ("folder", "is a folder, not a YAML file."),
        (
            "trainer:\n  max_epochs: [1, 2\n",
            "not valid YAML: line 3, column 1: expected ',' or ']', but got '<stream end>' (while parsing a flow "
            "sequence at line 2, column 15).",
        ),
        ("", "holds no options; a config file is a YAML mapping"),
        ("just words\n", "holds no options; a config file is a YAML mapping"),
    ],
    ids=["missing", "folder", "not YAML", "empty", "no mapping"],
)
@pytest.mark.parametrize("form", ["--config PATH", "--config=PATH"])
def test_a_config_file_that_is_missing_or_not_yaml_is_named_in_one_line(in_tmp, data_dir, content, said, form):
    path = in_tmp / "x.yaml"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    config = ["--config", str(path)] if form == "--config PATH" else [f"--config={path}"]
    with pytest.raises(SystemExit) as exit_:
        run_cli("fit", *config, data_dir=data_dir)
    assert one_line_error(exit_).startswith(f"error: --config {path}: {said}")
    assert not (in_tmp / "lightning_logs").exists()


def test_an_inline_config_is_still_a_config(in_tmp, capsys):
    with pytest.raises(SystemExit):
        VAECLI(args=["fit", "--config", "{trainer: {max_epochs: 3}}", "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["max_epochs"] == 3


def test_data_options_given_before_their_class_apply_to_the_class(in_tmp, monkeypatch, capsys):
    """`python train.py --data.root DIR --data ImageFolderDataModule`: the class named on the line, wherever it is."""
    given = ["--data.root", "faces", "--data.image_size", "8", "--data", "ImageFolderDataModule", "--print_config"]
    data = yaml.safe_load(run_train_py(monkeypatch, capsys, *given))["data"]
    assert data["class_path"].endswith(".ImageFolderDataModule")
    assert (data["init_args"]["root"], data["init_args"]["image_size"]) == ("faces", 8)
    data = yaml.safe_load(run_train_py(monkeypatch, capsys, "--data.image_size=8", "--data=ImageFolderDataModule",
                                       "--data.root=x", "--print_config"))["data"]  # fmt: skip
    assert data["class_path"].endswith(".ImageFolderDataModule") and data["init_args"]["image_size"] == 8


def test_options_of_no_chosen_class_are_one_line_naming_the_class(in_tmp, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "--data.rooot", "faces"])
    with pytest.raises(SystemExit) as exit_, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    message = one_line_error(exit_)
    assert message.startswith(
        "error: --data.rooot faces: the chosen --data class (MNISTDataModule) has no option rooot"
    )
    assert not [w for w in caught if "args parameter" in str(w.message)]  # nothing printed but the line
    assert not list(in_tmp.iterdir())


def test_a_data_class_is_not_moved_past_a_config_that_may_choose_another():
    line = ["fit", "--data.root", "x", "--config", "c.yaml", "--data", "ImageFolderDataModule"]
    assert data_class_first(line) == line
    twice = ["--data", "A", "--data.root", "x", "--data", "B"]
    assert data_class_first(twice) == twice
    assert data_class_first(["fit", "--data.root", "x", "--data", "B", "--model.lr", "1"]) == [
        "fit", "--data", "B", "--data.root", "x", "--model.lr", "1"
    ]  # fmt: skip


def test_a_data_class_without_an_option_it_requires_is_one_line_naming_it(in_tmp, data_dir):
    with pytest.raises(SystemExit) as exit_:
        run_cli("fit", "--data", "ImageFolderDataModule", data_dir=data_dir)
    expected = "error: the chosen --data class (ImageFolderDataModule) needs root: give --data.root VALUE."
    assert one_line_error(exit_).startswith(expected)
    assert not (in_tmp / "lightning_logs").exists()
