"""Fixtures, all hermetic: the synthetic MNIST files (tests/helpers.py) and no network, ever; and the
order pytest-xdist's workers take the files in.

torch and the project are imported where they are used: pytest-xdist's controller process loads this
file too, and runs no test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# One compute thread per process, set before torch is imported here or in a process a test starts:
# two pytest-xdist workers (pyproject.toml) and the processes the tests launch share the cores, and
# more threads than cores spin-wait against each other instead of computing.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.helpers import ScriptFit, fit_in_a_new_folder, make_hermetic, synthetic_files, write_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def files() -> dict[str, bytes]:
    return synthetic_files()


@pytest.fixture(autouse=True)
def hermetic(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> None:
    """Every test; one marked `shipped_checksums` checks files against the table `vae.data.mnist` ships."""
    shipped = request.node.get_closest_marker("shipped_checksums") is not None
    make_hermetic(monkeypatch, files, shipped_checksums=shipped)


@pytest.fixture
def data_dir(tmp_path: Path, files: dict[str, bytes]) -> Path:
    return write_data_dir(tmp_path, files)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]) -> Path:
    """A folder holding `data/` and one trained run, `lightning_logs/version_0`: `run_cli fit
    --trainer.max_epochs 1` (hidden_dim 32, latent_dim 4, 3 steps), trained once for the tests that
    only need *a* trained run. Read it; to resume, evaluate or break a run, use `copy_of_trained_run`."""
    root, _ = fit_in_a_new_folder(tmp_path_factory, files, "trained-run", "--trainer.max_epochs", "1")
    return root


@pytest.fixture
def copy_of_trained_run(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`trained_run`'s `lightning_logs/` copied into tmp_path, which becomes the working directory
    (with `data/`, as `data_dir` makes it). Its checkpoints' saved folder is the original's, so a
    resume in the copy does not reload which checkpoint was best (Lightning warns)."""
    shutil.copytree(trained_run / "lightning_logs", tmp_path / "lightning_logs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def script_fit(tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]):
    """One real `python train.py fit` (SCRIPT_ARGS) per session, in a fresh interpreter: the
    uninterrupted reference of tests/test_fault.py's kills, and the console a user sees (both tests
    in that file, so that one pytest-xdist worker runs it). It starts when first asked for and runs
    beside the test that asked; `script_fit.finished()` waits for it."""
    cwd = tmp_path_factory.mktemp("script-fit")
    write_data_dir(cwd, files)
    run = ScriptFit(cwd)
    yield run
    run.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-xdist (`-n 2 --dist loadfile`, pyproject.toml) gives a worker whole files, in this
    order: the files that launch processes first, so that they start at once and the many short
    tests fill the other worker around them."""
    first = ("test_ddp.py", "test_multinode.py", "test_fault.py", "test_sweep.py", "test_sweep_postgres.py")
    items.sort(key=lambda item: item.path.name not in first)
