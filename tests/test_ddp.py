"""Distributed data-parallel training for real: the `ddp` strategy on 2 CPU processes (gloo).

The scenario, run once for the module, drives the command line as a user would. In one working
directory, a 2-process fit of 2 epochs that starts from an empty data folder: the reference. In
another, the same fit SIGKILLed (every process at once, one of them half-way through writing a
checkpoint) in the middle of its second epoch, a 2-process resume with `--ckpt_path last`, a
2-process `test` and a 2-process `predict`. What each command left behind (its `lightning_logs/`
and every rank's record, see tests/scripts/ddp_train.py) is copied aside; the tests read it. This is the
fault test of DDP on one machine (tests/test_fault.py kills a single process at random moments;
tests/test_multinode.py kills one of two torchrun nodes).
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import TEST_SIZE, TRAIN_SIZE, assert_same_training_state
from tests.scripts.ddp_train import importance_samples_seeded_by_image, posterior_mean_in_eval
from vae import module
from vae.cli import VAECLI
from vae.data import InMemoryImages
from vae.model import VAE

REPO = Path(__file__).resolve().parents[1]
VAL_SIZE = 65  # odd: the two ranks evaluate 33 and 32 images, i.e. 2 batches and 1
TRAIN = TRAIN_SIZE - VAL_SIZE  # 575, odd: the sampler pads it to 2 x 288
STEPS_PER_EPOCH = 9  # 288 images per rank in batches of 32
# last.ckpt every 4 steps; killed inside the write of step 16's, mid epoch 1, after a validation
# (which leaves the ranks' random states apart): the resume starts from step 12
SAVE_EVERY, KILLED_AT, LAST_SAVED = 4, 16, 12
DATA = ["--data.val_size", str(VAL_SIZE), "--data.batch_size", "32"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
FIT = ["fit", "--trainer.max_epochs", "2", "--model.hidden_dim", "16", "--model.latent_dim", "4",
       "--checkpoint.save_last_every_n_steps", str(SAVE_EVERY)]  # fmt: skip
# (name, working directory, arguments, SIGKILL_IN_WRITE_AT_STEP), run in this order, AT_ONCE's at once
COMMANDS = [
    ("reference", "uninterrupted", FIT, None),
    ("killed", "interrupted", FIT, KILLED_AT),
    ("resume", "interrupted", ["fit", "--trainer.max_epochs", "2", "--ckpt_path", "last"], None),
    ("test", "interrupted", ["test", "--ckpt_path", "last", "--model.iw_samples", "3"], None),
    ("predict", "predicting", ["predict", "--ckpt_path", "last"], None),  # in a copy of "interrupted"
]
AT_ONCE = [["reference", "killed"], ["resume"], ["test", "predict"]]  # commands that run at the same time


def start_ddp(cwd: Path, args: list[str], kill_at_step: int | None = None) -> subprocess.Popen:
    """`python train.py ARGS` with 2 ranks; Lightning's launcher starts rank 1 as a child of rank 0."""
    command = [sys.executable, str(REPO / "tests" / "scripts" / "ddp_train.py"), *args, *DATA, *QUIET, *DDP]
    if args[0] == "fit":
        command += ["--trainer.log_every_n_steps", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if kill_at_step is not None:
        env["SIGKILL_IN_WRITE_AT_STEP"] = str(kill_at_step)
    with open(cwd / "log.txt", "a") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def wait_ddp(process: subprocess.Popen, cwd: Path, args: list[str], kill_at_step: int | None) -> None:
    try:
        returncode = process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and the rank it started
        pytest.fail(f"{args} under DDP did not finish in 300 s: a collective that some rank never reached?")
    expected = 0 if kill_at_step is None else -signal.SIGKILL
    assert returncode == expected, (cwd / "log.txt").read_text()[-4000:]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """For each command of COMMANDS, run in turn (independent ones at once, AT_ONCE): a folder with
    a copy of its logs and its ranks' records. Also each working directory, by name."""
    after = {folder: tmp_path_factory.mktemp(folder) for folder in ("uninterrupted", "interrupted")}
    commands = {command[0]: command for command in COMMANDS}
    assert [name for group in AT_ONCE for name in group] == list(commands)
    for group in AT_ONCE:
        running = []
        for name in group:
            _, folder, args, kill_at_step = commands[name]
            if folder not in after:  # a copy of the interrupted run as it is now, data included
                after[folder] = tmp_path_factory.mktemp(folder)
                for part in ("lightning_logs", "data"):
                    shutil.copytree(after["interrupted"] / part, after[folder] / part)
            running.append((name, start_ddp(after[folder], args, kill_at_step)))
        for name, process in running:
            _, folder, args, kill_at_step = commands[name]
            cwd = after[folder]
            wait_ddp(process, cwd, args, kill_at_step)
            after[name] = tmp_path_factory.mktemp(f"after-{name}")
            shutil.copytree(cwd / "lightning_logs", after[name] / "lightning_logs")
            for record in cwd.glob("ddp-record-rank*.json"):
                shutil.move(record, after[name] / record.name)
    return after


def records(folder: Path) -> list[dict]:
    """What ranks 0 and 1 recorded (tests/scripts/ddp_train.py): files fetched, and their passes over DataLoaders."""
    return [json.loads((folder / f"ddp-record-rank{rank}.json").read_text()) for rank in (0, 1)]


def passes(folder: Path, size: int) -> list[list[list[list[int]]]]:
    """Per rank, per pass over the dataset of `size` images, per batch: the indices it was sliced with."""
    return [[p["batches"] for p in record["passes"] if p["size"] == size] for record in records(folder)]


def samplers(folder: Path) -> set[tuple[int, str]]:
    """(dataset size, class of the sampler Lightning used) of every pass, on either rank."""
    return {(p["size"], p["sampler"]) for record in records(folder) for p in record["passes"]}


def events(run: Path) -> dict[str, list[tuple[int, float | None]]]:
    """Every scalar and image event of the run, by tag: (step, value), value None for images."""
    found: dict[str, list] = {}
    for f in sorted(run.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            found.setdefault(tag, []).extend((e.step, None) for e in acc.Images(tag))
    return found


def state(run: Path) -> dict:
    return torch.load(run / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)


def test_data_is_fetched_once_and_every_epoch_is_split_between_the_ranks_in_a_new_order(ddp):
    rank0, rank1 = records(ddp["reference"])  # the fit started from an empty data folder
    assert sorted(rank0["fetched"]) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    )
    assert rank1["fetched"] == []  # rank 1 waited for rank 0's prepare_data, then read the files

    # Training: the project's resumable sampler, not Lightning's wrapper around it, deals each rank
    # its share. 575 images on 2 ranks: 288 each, so one image (the padding) is seen by both ranks.
    assert samplers(ddp["reference"]) == {(TRAIN, "ResumableSampler"), (VAL_SIZE, "UnrepeatedDistributedSampler")}
    epochs0, epochs1 = passes(ddp["reference"], TRAIN)
    assert len(epochs0) == len(epochs1) == 2
    for batches0, batches1 in zip(epochs0, epochs1, strict=True):
        assert [len(b) for b in batches0] == [len(b) for b in batches1] == [32] * STEPS_PER_EPOCH
        rank0, rank1 = sum(batches0, []), sum(batches1, [])
        assert len(rank0) == len(set(rank0)) == len(rank1) == len(set(rank1)) == 288
        assert set(rank0) | set(rank1) == set(range(TRAIN)) and len(set(rank0) & set(rank1)) == 1
    # Each epoch is shuffled afresh within one run (Lightning's set_epoch reaches the sampler).
    for epochs in (epochs0, epochs1):
        assert sum(epochs[0], []) != sum(epochs[1], [])
        assert sorted(sum(epochs[0], [])) != sorted(sum(epochs[1], []))  # not even the same share

    # Evaluation: every image exactly once over the ranks, none padded, on each pass (sanity check included).
    for after, size in (("reference", VAL_SIZE), ("resume", VAL_SIZE), ("test", TEST_SIZE)):
        shards = passes(ddp[after], size)
        assert len(shards[0]) == len(shards[1]) >= 1
        for batches0, batches1 in zip(*shards, strict=True):
            assert sorted(sum(batches0 + batches1, [])) == list(range(size))
    # 33 images on rank 0, 32 on rank 1: ranks run different numbers of evaluation batches, safely
    assert [[len(b) for b in batches] for batches in passes(ddp["reference"], VAL_SIZE)[0]] == [[32, 1]] * 3
    assert [[len(b) for b in batches] for batches in passes(ddp["reference"], VAL_SIZE)[1]] == [[32]] * 3
    assert samplers(ddp["test"]) == {(TEST_SIZE, "UnrepeatedDistributedSampler")}


def test_each_rank_draws_its_own_noise_and_rank_0_the_stream_it_drew_before(ddp):
    """The ranks build their initial weights from one seed; then Lightning's DDP reseeds every rank with
    the run's seed (`reset_seed`), and here rank r > 0 takes the run's seed + r: one sequence of noise
    draws for every rank's images would be correlated across the global batch. Rank 0 draws what it
    always drew. (Exact resume with these per-rank streams: the test below.)"""

    def seeded(seed: int) -> str:
        return hashlib.md5(torch.Generator().manual_seed(seed).get_state().numpy().tobytes()).hexdigest()

    first0, first1 = (record["passes"][0]["rng"] for record in records(ddp["reference"]))
    assert (first0, first1) == (seeded(0), seeded(1))


def test_a_run_sigkilled_mid_epoch_resumes_to_the_uninterrupted_runs_weights_and_optimiser(ddp):
    killed = state(ddp["killed"])
    assert (killed["epoch"], killed["global_step"]) == (1, LAST_SAVED)  # the steps after it were lost
    assert list((ddp["killed"] / "lightning_logs/version_0/checkpoints").glob(".last.ckpt.*.partial"))  # died mid-write

    # The resumed run served each rank the rest of the second epoch, as the reference did.
    for reference, resumed in zip(passes(ddp["reference"], TRAIN), passes(ddp["resume"], TRAIN), strict=True):
        assert resumed == [reference[1][LAST_SAVED - STEPS_PER_EPOCH :]]

    a, b = state(ddp["reference"]), state(ddp["resume"])
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 2 * STEPS_PER_EPOCH)
    assert_same_training_state(a, b)


def resume_on_one_process(ddp: dict[str, Path], run: str, cwd: Path, *args: str) -> list[int]:
    """`fit --ckpt_path last` on 1 process, in a copy of `run`'s logs: the training images it was served."""
    shutil.copytree(ddp[run] / "lightning_logs", cwd / "lightning_logs")
    served: list[int] = []
    getitems = InMemoryImages.__getitems__

    def recording(self: InMemoryImages, indices: list[int]):
        if len(self) == TRAIN:
            served.extend(int(i) for i in indices)
        return getitems(self, indices)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(InMemoryImages, "__getitems__", recording)
        data = ["--data.data_dir", str(ddp["uninterrupted"] / "data"), "--trainer.accelerator", "cpu"]
        VAECLI(args=["fit", "--ckpt_path", "last", "--trainer.devices", "1", *DATA, *QUIET, *data, *args])
    return served


def test_resuming_mid_epoch_on_another_number_of_processes_is_refused_and_changes_nothing(ddp, tmp_path):
    with pytest.raises(SystemExit, match=r"middle of epoch 1 by a run on 2 process.*Resume it on 2") as exit_:
        resume_on_one_process(ddp, "killed", tmp_path)
    assert "\n" not in str(exit_.value.code)
    assert files_in(tmp_path / "lightning_logs") == files_in(ddp["killed"] / "lightning_logs")


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path relative to it: its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resuming_at_an_epochs_end_on_another_number_of_processes_says_so_and_sees_every_image(ddp, tmp_path):
    with pytest.warns(UserWarning, match="Resuming a run trained on 2 process.* with 1: .* averages 1 process"):
        served = resume_on_one_process(ddp, "reference", tmp_path, "--trainer.max_epochs", "3")
    assert sorted(served) == list(range(TRAIN))  # the third epoch, whole, on one process
    resumed = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH + 18  # 575 images in batches of 32 on one process


def test_one_run_directory_checkpoints_and_images_written_once_and_resume_continues(ddp):
    for after in ("reference", "killed", "resume", "test", "predict"):
        assert [p.name for p in (ddp[after] / "lightning_logs").iterdir()] == ["version_0"]

    resumed_run = ddp["resume"] / "lightning_logs/version_0"
    names = sorted(p.name for p in (resumed_run / "checkpoints").iterdir())
    assert len(names) == 2 and names[0].startswith("best-epoch") and names[1] == "last.ckpt"

    # One event file per command, i.e. only rank 0 logs; the curves carry on across the resume.
    assert len(list((ddp["reference"] / "lightning_logs/version_0").glob("events.out.tfevents.*"))) == 1
    assert len(list(resumed_run.glob("events.out.tfevents.*"))) == 2
    logged = events(resumed_run)
    assert {step for step, _ in logged["train/loss"]} == set(range(2 * STEPS_PER_EPOCH))
    assert [step for step, _ in logged["val/loss"]] == [STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1]
    for tag in ("val/reconstructions", "samples/prior"):
        assert [step for step, _ in logged[tag]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]

    tested = ddp["test"] / "lightning_logs/version_0"
    assert (tested / "test_metrics.json").is_file() and (tested / "test_config.yaml").is_file()
    assert "checkpoints/last.ckpt" in (tested / "config.yaml").read_text()  # the resumed fit's config, kept


def test_the_console_has_no_advice_to_reduce_metrics_that_are_already_reduced(ddp):
    console = (ddp["interrupted"] / "log.txt").read_text()  # the killed fit, its resume and the test
    assert "Test metric" in console and "sync_dist" not in console


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # no logger here: nothing to reload
def test_metrics_over_two_ranks_equal_one_process_on_the_same_weights(ddp, tmp_path, monkeypatch):
    """The reduction across ranks is exact: each image counted once, sums and counts combined.

    Evaluation decodes the posterior mean here, and test/nll's importance samples are drawn per
    image from a generator seeded by the image (in the DDP runs too, see tests/scripts/ddp_train.py): with
    draws from one random stream, each image's values would depend on which noise it met, and that
    depends on how the images were dealt to ranks and batches, so 1 and 2 ranks would give two
    different Monte-Carlo estimates of the same expectation and could not agree to float precision.
    """
    monkeypatch.setattr(VAE, "forward", posterior_mean_in_eval)
    monkeypatch.setattr(module, "importance_weighted_terms", importance_samples_seeded_by_image)
    monkeypatch.chdir(tmp_path)
    one_process = [
        *DATA,
        *QUIET,
        "--data.data_dir",
        str(ddp["uninterrupted"] / "data"),
        "--trainer.logger",
        "false",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
    ]

    # val/loss of the resumed fit's last epoch, computed by 2 ranks, for the weights in last.ckpt
    ckpt = ddp["resume"] / "lightning_logs/version_0/checkpoints/last.ckpt"
    ((_, two_ranks),) = events(ddp["resume"] / "lightning_logs/version_0")["val/loss"][-1:]
    cli = VAECLI(args=["validate", "--ckpt_path", str(ckpt), *one_process])
    assert cli.trainer.callback_metrics["val/loss"].item() == pytest.approx(two_ranks, rel=1e-6)

    record = json.loads((ddp["test"] / "lightning_logs/version_0/test_metrics.json").read_text())
    assert {"test/loss", "test/recon", "test/kl", "test/nll", "test/active_units"} <= set(record["metrics"])
    cli = VAECLI(args=["test", "--ckpt_path", str(ckpt), "--model.iw_samples", "3", *one_process])
    for name, value in record["metrics"].items():
        assert cli.trainer.callback_metrics[name].item() == pytest.approx(value, rel=1e-6), name


def test_predict_writes_one_file_per_rank_that_together_are_the_single_process_file(ddp, tmp_path, monkeypatch):
    """Two ranks each predict their share of the test set; concatenated and sorted by index, the
    rows are what one process predicts from the same checkpoint (same weights, same images, no noise)."""
    run = ddp["predict"] / "lightning_logs/version_0"
    shares = [torch.load(run / f"predictions-rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [len(share["index"]) for share in shares] == [TEST_SIZE // 2, TEST_SIZE // 2]
    merged = {key: torch.cat([share[key] for share in shares]) for key in shares[0]}
    order = merged["index"].argsort()
    assert torch.equal(merged["index"][order], torch.arange(TEST_SIZE))
    assert not (run / "predictions.pt").exists()

    shutil.copytree(ddp["predict"] / "lightning_logs", tmp_path / "lightning_logs")
    monkeypatch.chdir(tmp_path)
    data = ["--data.data_dir", str(ddp["uninterrupted"] / "data"), "--trainer.accelerator", "cpu"]
    VAECLI(args=["predict", "--ckpt_path", "last", "--trainer.devices", "1", *DATA, *QUIET, *data])
    single = torch.load(tmp_path / "lightning_logs/version_0/predictions.pt", weights_only=True)
    for key in ("mu", "logvar", "label"):
        torch.testing.assert_close(merged[key][order], single[key])
