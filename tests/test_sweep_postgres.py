"""sweep.py with its study on a real PostgreSQL server (tests/postgres_server.py), as on several machines.

Three workers, one SIGKILLed in the middle of its trial, each grid point run once and the
killed one retried once, with the same table and best.yaml as the same sweep on SQLite; and a
database URL that cannot be opened, said in one line."""

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="sweep.py needs optuna (requirements.txt)")
pytest.importorskip("psycopg", reason="the PostgreSQL driver, psycopg[binary] (requirements.txt), is not installed")
from optuna.storages import RetryHeartbeatStaleTrialCallback  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

import sweep  # noqa: E402
from tests.helpers import make_hermetic, write_data_dir  # noqa: E402
from tests.postgres_server import PASSWORD, free_port, postgres_server, server_programs  # noqa: E402
from tests.test_sweep import TINY, WORKER, wait_for, write_sweep  # noqa: E402

if server_programs() is None:
    pytest.skip(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get install postgresql",
        allow_module_level=True,
    )

GRID = {"model.latent_dim": {"type": "categorical", "choices": [2, 3, 4]}}  # trial N < 3 runs grid point N
SWEEP = {"fixed": TINY, "space": GRID, "sampler": {"class": "GridSampler"}, "pruner": {"class": "NopPruner"}}


@pytest.fixture(scope="module")
def new_database() -> Callable[[str], str]:
    """`new_database(name)`: the URL of a new, empty database on a server of this module's own, as a user writes it."""
    with postgres_server() as create:
        yield lambda name: create(name).replace("postgresql://", "postgresql+psycopg://")


@pytest.fixture(scope="module")
def server(new_database) -> str:
    return new_database("vae_sweeps")


def test_workers_that_start_together_on_a_new_database_all_open_it(new_database):
    """Each creates Optuna's tables if they are missing: on PostgreSQL, all but one of the
    simultaneous creations fail on a duplicate name, and those open the database again."""
    url = new_database("started_together")
    opened = []

    def worker() -> None:
        opened.append(sweep.open_storage(url, 1, sweep.RetryStaleTrials(max_retry=2)))

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert len(opened) == 4


def start_worker(root: Path, name: str, *args: str) -> subprocess.Popen:
    with open(root / f"worker_{name}.txt", "w") as console:
        return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=root, stdout=console, stderr=console)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, files, server):
    """The sweep `tiny` (a grid of 3 latent sizes) run twice. On SQLite: one worker, in this
    process. On PostgreSQL: workers A and B (processes) start together, each takes a trial, A's
    stalls after its first epoch; once two trials run, worker C (this process) starts; once the third
    trial runs (C's, or B's if B was quicker), A is SIGKILLed: its trial's retry, trial 3, goes
    to the worker that finds it stale. Returns both folders, the PostgreSQL study, and the workers' process ids."""
    on_sqlite, on_postgres = tmp_path_factory.mktemp("sqlite"), tmp_path_factory.mktemp("postgres")
    for root in (on_sqlite, on_postgres):
        write_data_dir(root, files)
        name = write_sweep(root, "tiny", **SWEEP)
    storage = ["--storage", server]
    worker_a = start_worker(on_postgres, "a", "--stall_after_an_epoch", name, *storage)
    worker_b = start_worker(on_postgres, "b", name, *storage)
    trials = on_postgres / "sweeps" / "tiny"

    def started(count: int):
        def check() -> bool:
            assert worker_b.poll() is None, (on_postgres / "worker_b.txt").read_text()[-3000:]
            return len(list(trials.glob("version_*/config.yaml"))) == count

        return check

    try:
        with pytest.MonkeyPatch.context() as patch:
            make_hermetic(patch, files)
            patch.chdir(on_sqlite)
            sweep.main([name])  # while A and B start
            wait_for(started(2), worker_a, "A and B started their trials")

            def kill_when_stalled_and_all_three_run() -> None:
                wait_for((on_postgres / "stalled").exists, worker_a, "its trial's first epoch ended")
                wait_for(started(3), worker_a, "C started its trial")
                worker_a.send_signal(signal.SIGKILL)

            killer = threading.Thread(target=kill_when_stalled_and_all_three_run)
            killer.start()
            patch.chdir(on_postgres)
            study = sweep.main([name, *storage])
            killer.join()
        assert worker_a.wait() == -signal.SIGKILL
        assert worker_b.wait(timeout=120) == 0, (on_postgres / "worker_b.txt").read_text()[-3000:]
    finally:
        for worker in (worker_a, worker_b):
            if worker.poll() is None:
                worker.kill()
    return on_sqlite, on_postgres, study, {"a": worker_a.pid, "b": worker_b.pid, "c": os.getpid()}


def rows(root: Path) -> list[list[str]]:
    """trials.md's rows, below its header, as lists of cells."""
    lines = (root / "sweeps/tiny/trials.md").read_text().splitlines()[2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def surplus_and_others(study) -> tuple[list[int], list]:
    """The trials that two workers started at the same moment as one too many (sweep.is_surplus),
    and the others. Whether that happens depends on the workers' timing: B may finish its first
    trial just as C starts and both take the study's last one."""
    surplus = [t.number for t in study.trials if t.user_attrs.get(sweep.SURPLUS)]
    return surplus, [t for t in study.trials if t.number not in surplus]


def test_three_workers_one_killed_run_each_trial_once_and_retry_the_killed_one_once(sweeps, server):
    _, on_postgres, study, pids = sweeps
    printed = (on_postgres / "worker_a.txt").read_text()[-2000:]
    surplus, trials = surplus_and_others(study)
    states = [t.state for t in trials]
    assert len(states) == 4 and states.count(TrialState.FAIL) == 1 and states[3] == TrialState.COMPLETE, printed
    assert len(surplus) <= 1 and all(study.trials[n].state == TrialState.FAIL for n in surplus)
    worker = {pid: name for name, pid in pids.items()}
    ran = [worker[int(t.user_attrs["worker"].rpartition(":")[2])] for t in trials]
    assert ran.count("a") == 1 and "b" in ran and set(ran) <= {"a", "b", "c"}
    killed, retry = trials[ran.index("a")], trials[3]
    assert killed.state == TrialState.FAIL
    assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [killed.number] and retry.params == killed.params
    completed = [t.params["model.latent_dim"] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(completed) == [2, 3, 4]  # each grid point once
    # the study lives on the server, where every worker found it, not in a SQLite file beside the runs
    assert not (on_postgres / "sweeps/tiny/study.db").exists()
    again = optuna.load_study(study_name="tiny", storage=server)
    assert [(t.state, t.params) for t in again.trials] == [(t.state, t.params) for t in study.trials]


def test_the_table_and_best_yaml_are_those_of_the_same_sweep_on_sqlite(sweeps):
    on_sqlite, on_postgres, study, _ = sweeps
    reference, found = rows(on_sqlite), rows(on_postgres)
    surplus, trials = surplus_and_others(study)
    assert [row[1] for row in reference] == ["COMPLETE"] * 3 and len(found) == 4 + len(surplus)
    (killed,) = [t.number for t in trials if t.state == TrialState.FAIL]
    for number in {0, 1, 2} - {killed}:  # the same values, metrics and run folder
        assert found[number] == reference[number]
    # the killed trial's values, then its retry, with the numbers the trial has on SQLite
    retry = trials[3].number
    assert found[killed][:2] == [str(killed), "FAIL"] and found[killed][3] == reference[killed][3]
    assert found[retry][:-2] == [str(retry), *reference[killed][1:-2]]
    assert found[retry][-2:] == [f"sweeps/tiny/version_{retry}", f"retry of {killed}, whose worker stopped"]
    for number in surplus:  # no run, and why
        assert found[number][1:3] == ["FAIL", ""] and found[number][-2:] == ["", sweep.note(study.trials[number])]
        assert not (on_postgres / f"sweeps/tiny/version_{number}").exists()

    best_sqlite, best_postgres = ((root / "sweeps/tiny/best.yaml").read_text() for root in (on_sqlite, on_postgres))
    (header_sqlite, body_sqlite), (header_postgres, body_postgres) = (
        text.split("\n", 1) for text in (best_sqlite, best_postgres)
    )
    assert body_postgres == body_sqlite
    assert header_postgres.split(":", 1)[1] == header_sqlite.split(":", 1)[1]  # the objective's value
    assert yaml.safe_load(body_postgres)["trainer"]["logger"]["init_args"]["save_dir"] == "."


@pytest.mark.parametrize(
    "wrong, said",
    [
        (lambda url: url.replace(PASSWORD, "not-the-password"), 'password authentication failed for user "sweeper"'),
        (lambda url: url.replace("/vae_sweeps", "/no_such_db"), 'database "no_such_db" does not exist'),
        (lambda url: url.replace(url.split("@")[1].split("/")[0], f"127.0.0.1:{free_port()}"), "Connection refused"),
        (lambda url: url.replace("postgresql+psycopg://", "postgres://"), "Can't load plugin"),
    ],
    ids=["bad password", "no such database", "no server at the port", "wrong scheme"],
)
def test_a_database_url_that_cannot_be_opened_is_one_line_without_its_password(
    server, tmp_path, data_dir, monkeypatch, wrong, said
):
    name = write_sweep(tmp_path, "bad", **SWEEP)
    monkeypatch.chdir(tmp_path)
    url = wrong(server)
    with pytest.raises(SystemExit) as error:
        sweep.main([name, "--storage", url])
    message = str(error.value)
    assert message.startswith(f"error: --storage {url.split(':')[0]}://sweeper:***@") and said in message
    assert "\n" not in message and "not-the-password" not in message and PASSWORD not in message
    assert not (tmp_path / "sweeps").exists()
