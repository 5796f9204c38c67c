"""Hermetic fixtures: small synthetic MNIST files in IDX format, and no network, ever."""

import hashlib
from pathlib import Path

import pytest
import torch

from vae import mnist_files

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
