"""sweep.py on SQLite: workers sharing an Optuna study, retried trials, pruning, failures, bad input.

A SIGKILLed worker's trial is retried by another; failed trials keep their reason; the best
configuration is written as a train.py config.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

optuna = pytest.importorskip("optuna", reason="sweep.py needs optuna (requirements.txt); the GPU machine has none")
from optuna.storages import RetryHeartbeatStaleTrialCallback  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

import sweep  # noqa: E402
from tests.helpers import REPO, make_hermetic, write_data_dir  # noqa: E402
from vae.cli import VAECLI  # noqa: E402

WORKER = REPO / "tests" / "scripts" / "sweep_synthetic.py"
TINY = {  # train.py options of every trial: a tiny model, 2 epochs of 3 steps, quiet
    "trainer.max_epochs": 2, "trainer.limit_train_batches": 3, "trainer.limit_val_batches": 2,
    "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False,
    "data.val_size": 64, "data.batch_size": 32, "model.hidden_dim": 32,
}  # fmt: skip
SPACE = {
    "model.latent_dim": {"type": "int", "low": 2, "high": 4},
    "model.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
}


def write_sweep(folder: Path, name: str, **settings) -> str:
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({"heartbeat": 1, **settings}))
    return f"{name}.yaml"


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    while not condition():
        assert process.poll() is None, f"the worker ended before {what}: {process.args}"
        time.sleep(0.005)


def what_happened(root: Path) -> str:
    """For a failed assertion: the trials, and the end of what the killed worker printed."""
    table = (root / "sweeps" / "tiny" / "trials.md").read_text()
    return f"{table}\nworker A printed:\n{(root / 'worker_a.txt').read_text()[-3000:]}"


@pytest.fixture(scope="module")
def killed_worker(tmp_path_factory, files):
    """Worker A (a process) takes trial 0, which hangs after its first epoch (sweep_synthetic.py's
    `--stall_after_an_epoch`) until A is SIGKILLed; worker B (this process), started as soon as
    trial 0 was running, runs trial 1 beside it, then takes over trial 0 as trial 2. Returns
    (folder, study, A's pid)."""
    root = tmp_path_factory.mktemp("sweep")
    write_data_dir(root, files)
    name = write_sweep(root, "tiny", n_trials=2, fixed=TINY, space=SPACE)
    command = [sys.executable, str(WORKER), "--stall_after_an_epoch", name]
    with open(root / "worker_a.txt", "w") as console:
        worker_a = subprocess.Popen(command, cwd=root, stdout=console, stderr=console)
    try:
        wait_for((root / "sweeps" / "tiny" / "version_0" / "config.yaml").exists, worker_a, "its trial started")

        def kill_when_stalled() -> None:
            wait_for((root / "stalled").exists, worker_a, "its trial's first epoch ended")
            worker_a.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_when_stalled)
        killer.start()
        with pytest.MonkeyPatch.context() as patch:
            make_hermetic(patch, files)
            patch.chdir(root)
            study = sweep.main([name])
        killer.join()
        assert worker_a.wait() == -signal.SIGKILL, what_happened(root)
    finally:
        worker_a.kill()
    return root, study, worker_a.pid


def test_a_killed_workers_trial_is_retried_and_finished_by_the_other(killed_worker):
    root, study, pid_a = killed_worker
    killed, *others = study.trials
    assert killed.state == TrialState.FAIL, what_happened(root)
    assert killed.user_attrs["worker"].endswith(f":{pid_a}")
    assert sweep.note(killed) == "its worker stopped (killed, or interrupted) during the trial"
    (retry,) = [t for t in others if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["worker"].endswith(f":{os.getpid()}")
    assert (root / retry.user_attrs["run"] / "checkpoints" / "last.ckpt").is_file()
    # the killed trial's run is left as it was, resumable with train.py
    assert (root / killed.user_attrs["run"] / "checkpoints" / "last.ckpt").is_file()
    table = (root / "sweeps" / "tiny" / "trials.md").read_text()
    assert f"| {retry.number} | COMPLETE |" in table and "retry of 0, whose worker stopped" in table


def test_workers_sharing_a_study_run_each_trial_once_and_record_all(killed_worker):
    root, study, _ = killed_worker
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], what_happened(root)  # n_trials 2
    runs = sorted(p.name for p in (root / "sweeps" / "tiny").glob("version_*"))
    assert runs == sorted(f"version_{t.number}" for t in study.trials)
    for trial in study.trials[1:]:  # each run folder holds one run, of its own trial's values
        run = root / trial.user_attrs["run"]
        assert len(list(run.glob("events.out.tfevents.*"))) == 1
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert {f"model.{k}": config["model"][k] for k in ("latent_dim", "lr")} == trial.params


def test_the_best_yaml_trains_the_best_trial_again_with_train_py(killed_worker, monkeypatch):
    root, study, _ = killed_worker
    best = root / "sweeps" / "tiny" / "best.yaml"
    monkeypatch.chdir(root)
    cli = VAECLI(args=["fit", "--config", str(best)])  # python train.py --config sweeps/tiny/best.yaml
    assert Path(cli.trainer.log_dir) == Path("lightning_logs/version_0")  # an ordinary run
    assert cli.trainer.callback_metrics["val/loss"].item() == study.best_value  # same seed: the same run


def test_a_hopeless_trial_is_pruned_a_failing_one_recorded_and_test_nll_the_objective(tmp_path, data_dir, monkeypatch):
    """Four trials on a grid: without the decoder's output bias at the pixel means the first
    validation is far above the pruner's threshold (a hopeless trial); beta -1 is refused. The
    objective is the best checkpoint's test/nll; the pruner watches val/loss."""
    space = {
        "model.init_output_bias": {"type": "categorical", "choices": [True, False]},
        "model.beta": {"type": "categorical", "choices": [1.0, -1.0]},
    }
    pruner = {"class": "ThresholdPruner", "upper": 450}
    name = write_sweep(tmp_path, "prune", sampler={"class": "GridSampler"}, pruner=pruner, fixed=TINY, space=space)
    monkeypatch.chdir(tmp_path)
    study = sweep.main([name, "--objective", "test/nll", "--model.latent_dim", "4", "--model.iw_samples", "2"])
    outcome = {(t.params["model.init_output_bias"], t.params["model.beta"]): t for t in study.trials}
    assert outcome[True, 1.0].state == TrialState.COMPLETE and sweep.note(outcome[True, 1.0]) == ""
    hopeless = outcome[False, 1.0]
    assert hopeless.state == TrialState.PRUNED and hopeless.intermediate_values[0] > 450
    assert sweep.note(hopeless) == f"pruned after epoch 0, at {hopeless.intermediate_values[0]:.2f}"
    refused = "--model.beta and --model.kl_warmup_epochs must be >= 0, got -1.0, 0."
    assert [sweep.note(outcome[bias, -1.0]) for bias in (True, False)] == [refused, refused]
    assert outcome[True, -1.0].state == outcome[False, -1.0].state == TrialState.FAIL
    test = json.loads((tmp_path / study.best_trial.user_attrs["run"] / "test_metrics.json").read_text())
    assert "/checkpoints/best-epoch" in test["ckpt_path"] and test["metrics"]["test/nll"] == study.best_value


def test_two_workers_that_both_start_the_last_trial_run_it_once_and_count_it_once(tmp_path, data_dir, monkeypatch):
    """Two workers saw one trial left to start and asked Optuna for it at the same moment: the
    later trial is not run (no run folder), says why, and is not counted, so the study still
    waits for its n_trials real ones (on a grid, the one point the surplus would have taken twice)."""
    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    first, second = study.ask(), study.ask()
    objective = sweep.Objective(Path("sweeps/tiny"), [f"--{k}={v}" for k, v in TINY.items()], {}, "val/loss", 1)
    with pytest.raises(sweep.TrialFailed):
        objective(second)
    study.tell(second, state=TrialState.FAIL)
    study.tell(first, objective(first))
    assert [t.number for t in sweep.counted_trials(study)] == [0]
    assert sweep.note(study.trials[1]) == "not run: another worker started the study's last trial at the same moment"
    assert sorted(p.name for p in Path("sweeps/tiny").iterdir()) == ["version_0"]


@pytest.mark.parametrize(
    "space, args, message",
    [
        ({"model.betta": {"type": "float", "low": 0.1, "high": 1}}, [], "model.betta is not an option of train.py"),
        ({"model.beta": {"type": "float", "low": 2, "high": 1}}, [], "model.beta (float): `low <= high` must hold"),
        (SPACE, ["--storage", "sqlite:///no/such/dir/s.db"], "--storage sqlite:///no/such/dir/s.db: cannot open it"),
    ],
    ids=["unknown option", "empty range", "unreachable storage"],
)  # fmt: skip
def test_bad_input_is_one_line_and_runs_nothing(tmp_path, data_dir, monkeypatch, space, args, message):
    name = write_sweep(tmp_path, "bad", n_trials=2, fixed=TINY, space=space)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as error:
        sweep.main([name, *args])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("space: [1, 2\n", "bad.yaml: not valid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>' "
                            "(while parsing a flow sequence at line 1, column 8)."),
        ("- space\n", "bad.yaml: a sweep file is a YAML mapping (space, fixed,"),
        ("space: {model.lr: 3}\n", "bad.yaml: model.lr needs {type: float, int or categorical, ...}, got 3."),
        ("space: {}\nfixed: [a, b]\n", "bad.yaml: fixed must be a mapping, got ['a', 'b']."),
        ("space: {}\nn_trials: two\n", "bad.yaml: n_trials must be an integer, got 'two'."),
        ("space: {}\nsampler: TPESampler\n", "bad.yaml: sampler must be a mapping, got 'TPESampler'."),
        ("space: {}\ndirection: minimise\n", "direction minimise: must be minimize or maximize."),
    ],
    ids=["not YAML", "not a mapping", "a range that is a number", "fixed", "n_trials", "sampler", "direction"],
)  # fmt: skip
def test_a_sweep_file_that_is_not_yaml_or_not_a_sweep_is_one_line_naming_it(
    tmp_path, monkeypatch, capsys, text, message
):
    (tmp_path / "bad.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as error:
        sweep.main(["bad.yaml"])
    said = error.value.code if isinstance(error.value.code, str) else capsys.readouterr().err  # (argparse's exit)
    assert said.startswith(f"error: {message}") and "\n" not in said.strip()
    assert not (tmp_path / "sweeps").exists()


def test_a_sweeps_integer_batch_limits_are_numbers_of_batches(tmp_path, data_dir, monkeypatch):
    """`trainer.limit_train_batches: 1` in the sweep file and `--trainer.limit_val_batches 1` on its command
    line reach each trial's Trainer as one batch, not as 1.0 (every batch)."""
    fixed = TINY | {"trainer.max_epochs": 1, "trainer.limit_train_batches": 1}
    space = {"model.latent_dim": {"type": "categorical", "choices": [2]}}
    name = write_sweep(tmp_path, "one", sampler={"class": "GridSampler"}, fixed=fixed, space=space)
    monkeypatch.chdir(tmp_path)
    study = sweep.main([name, "--trainer.limit_val_batches", "1"])
    run = tmp_path / study.trials[0].user_attrs["run"]
    trainer = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert (trainer["limit_train_batches"], trainer["limit_val_batches"]) == (1, 1)
    assert type(trainer["limit_train_batches"]) is type(trainer["limit_val_batches"]) is int
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1


def test_a_mistyped_sweep_option_is_one_line_without_the_usage_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as error:
        sweep.main(["x.yaml", "--direction", "sideways"])
    message = str(error.value.code)
    assert message.startswith("error: argument --direction: invalid choice: 'sideways'") and "\n" not in message
    assert "usage" not in message and not list(tmp_path.iterdir())


def test_a_trainer_option_lightning_refuses_stops_the_sweep_before_any_trial(tmp_path, data_dir, monkeypatch):
    name = write_sweep(tmp_path, "bad", n_trials=2, fixed=TINY, space=SPACE)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as error:
        sweep.main([name, "--trainer.max_epochs", "-5"])
    message = str(error.value.code)
    assert message.startswith("error: --trainer.max_epochs -5: `max_epochs` must be") and "\n" not in message
    assert not (tmp_path / "sweeps").exists()
