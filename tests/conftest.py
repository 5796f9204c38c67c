"""Hermetic fixtures: small synthetic MNIST files in IDX format, and no network, ever."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from vae import mnist_files
from vae.cli import VAECLI

REPO = Path(__file__).resolve().parents[1]
TRAIN_SIZE, TEST_SIZE = 640, 160


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """LeCun's IDX format for uint8 data: 0x00000803-style magic, big-endian sizes, then the bytes."""
    header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(n.to_bytes(4, "big") for n in tensor.shape)
    return header + tensor.contiguous().numpy().tobytes()


def synthetic_mnist(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurry bars whose position depends on the label: learnable, so a loss can visibly fall."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    images = torch.zeros(n, 28, 28)
    for i, label in enumerate(labels.tolist()):
        images[i, 4 + 2 * label : 7 + 2 * label, 4:24] = 1.0
    images = (images + 0.2 * torch.rand(n, 28, 28, generator=g)).clamp(0, 1)
    return (images * 255).to(torch.uint8), labels


def synthetic_files() -> dict[str, bytes]:
    train_images, train_labels = synthetic_mnist(TRAIN_SIZE, seed=1)
    test_images, test_labels = synthetic_mnist(TEST_SIZE, seed=2)
    return {
        "train-images-idx3-ubyte": idx_bytes(train_images),
        "train-labels-idx1-ubyte": idx_bytes(train_labels),
        "t10k-images-idx3-ubyte": idx_bytes(test_images),
        "t10k-labels-idx1-ubyte": idx_bytes(test_labels),
    }


@pytest.fixture(scope="session")
def files() -> dict[str, bytes]:
    return synthetic_files()


def make_hermetic(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> None:
    """The synthetic files are the ones whose checksums count; any attempt to fetch fails the test."""
    monkeypatch.setattr(mnist_files, "MD5", {n: hashlib.md5(b).hexdigest() for n, b in files.items()})

    def no_network(names, dest):
        raise AssertionError(f"a test tried to fetch {list(names)} from the network")

    monkeypatch.setattr(mnist_files, "FETCHERS", (no_network,))


def write_data_dir(root: Path, files: dict[str, bytes]) -> Path:
    """A data folder with the four synthetic files in torchvision's layout."""
    raw = mnist_files.raw_dir(root / "data")
    raw.mkdir(parents=True)
    for name, content in files.items():
        (raw / name).write_bytes(content)
    return root / "data"


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> None:
    make_hermetic(monkeypatch, files)


@pytest.fixture
def data_dir(tmp_path: Path, files: dict[str, bytes]) -> Path:
    return write_data_dir(tmp_path, files)


def run_cli(*args: str, data_dir: Path) -> VAECLI:
    """`python train.py ARGS` in-process, small and quiet, on the synthetic data."""
    subcommand, *rest = args
    fast = ["--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"]
    fast = [*fast, "--trainer.log_every_n_steps", "1"] if subcommand == "fit" else []
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    common = ["--data.data_dir", str(data_dir), "--data.val_size", "64", "--data.batch_size", "32"]
    small = ["--model.hidden_dim", "32", "--model.latent_dim", "4"] if "--ckpt_path" not in rest else []
    return VAECLI(args=[subcommand, *common, *small, *fast, *quiet, *rest])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]) -> Path:
    """A folder holding `data/` and one trained run, `lightning_logs/version_0`: `run_cli fit
    --trainer.max_epochs 1` (hidden_dim 32, latent_dim 4, 3 steps), trained once for the tests that
    only need *a* trained run. Read it; to resume, evaluate or break a run, use `copy_of_trained_run`."""
    root = tmp_path_factory.mktemp("trained-run")
    with pytest.MonkeyPatch.context() as patch:
        make_hermetic(patch, files)
        patch.chdir(root)
        run_cli("fit", "--trainer.max_epochs", "1", data_dir=write_data_dir(root, files))
    return root


@pytest.fixture
def copy_of_trained_run(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`trained_run`'s `lightning_logs/` copied into tmp_path, which becomes the working directory
    (with `data/`, as `data_dir` makes it). Its checkpoints' saved folder is the original's, so a
    resume in the copy does not reload which checkpoint was best (Lightning warns)."""
    shutil.copytree(trained_run / "lightning_logs", tmp_path / "lightning_logs")
    monkeypatch.chdir(tmp_path)
    return tmp_path
