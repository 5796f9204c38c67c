"""CIFAR-10 (Krizhevsky 2009): its data module, and reading its python version
(`cifar-10-batches-py/data_batch_1..5`, `test_batch`) safely.

Each batch is a pickled dict whose `data` is a numpy uint8 array (10,000 x 3,072: the red, green
and blue planes of each 32 x 32 image in turn) and whose `labels` is a list of ints. A pickle can
run any code it names, so the files are read with an unpickler that resolves only the few names
such a dict needs to rebuild its arrays (as `torch.load(weights_only=True)` does); anything else
is refused. numpy comes with torchvision.

The files are not fetched: extract cifar-10-python.tar.gz (from the CIFAR home page) into the data
folder by hand, as torchvision lays it out.
"""

import io
import pickle
from pathlib import Path

import torch

from vae.data.base import ImageDataModule, Splits
from vae.data.files import DataFilesError, require_files

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
HOME = "https://www.cs.toronto.edu/~kriz/cifar.html (the python version, cifar-10-python.tar.gz, extracted)"
# What a pickled dict of numpy arrays refers to: numpy's array rebuilding (under numpy 1's module name
# or numpy 2's), and codecs.encode, which Python 3's protocol 2 uses for bytes.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR-10 batch never does")
        return super().find_class(module, name)


def cifar10_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / FOLDER


def require_cifar10(data_dir: str | Path) -> None:
    """The six batch files are there, or one line that says where to put them."""
    require_files(cifar10_dir(data_dir), [*TRAIN_BATCHES, TEST_BATCH], "the CIFAR-10 files", HOME)


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file as uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
        images = torch.from_numpy(data).reshape(-1, 3, 32, 32)
        labels = torch.tensor(labels, dtype=torch.long)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise DataFilesError(
            f"{path} is not a CIFAR-10 python batch ({err}); extract it again from {HOME.split(' (')[0]}."
        ) from None
    if images.dtype != torch.uint8 or len(images) != len(labels):
        raise DataFilesError(f"{path} is not a CIFAR-10 python batch (its data is not uint8, one label an image).")
    return images, labels


def read_cifar10(data_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training images and labels (the five batches in order), then the test images and labels."""
    require_cifar10(data_dir)
    folder = cifar10_dir(data_dir)
    train = [read_batch(folder / name) for name in TRAIN_BATCHES]
    test_images, test_labels = read_batch(folder / TEST_BATCH)
    return torch.cat([i for i, _ in train]), torch.cat([lab for _, lab in train]), test_images, test_labels


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10: 50,000 training images (less `val_size` for validation) and 10,000 test images of
    3 x 32 x 32, from the python version's batches in `<data_dir>/cifar-10-batches-py/`
    (torchvision's layout). The files are not fetched: extract cifar-10-python.tar.gz into
    data_dir by hand. The options are `ImageDataModule`'s."""

    train_images = 50_000

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, 32, 32)

    def prepare_data(self) -> None:
        require_cifar10(self.data_dir)

    def read(self) -> Splits:
        return Splits(*read_cifar10(self.data_dir), where=cifar10_dir(self.data_dir))
