"""MNIST's file format, IDX, and the data module of every set that ships in it (MNIST, Fashion-MNIST, KMNIST).

An IDX set is four files, `{train,t10k}-{images-idx3,labels-idx1}-ubyte`: 60,000 training and
10,000 test images of 1 x 28 x 28 and their labels. torchvision keeps them in
`<data_dir>/<folder>/raw/`, each uncompressed beside its `.gz`; either form is read here. A
source may also name the folder a system package installs them in (`installed`), used when
`data_dir` does not hold them.
"""

import gzip
import math
from pathlib import Path

import torch

from vae.data.base import ImageDataModule, Splits
from vae.data.files import DataFilesError

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def raw_dir(data_dir: str | Path, folder: str = "MNIST") -> Path:
    """Where torchvision keeps an IDX set's files: `<data_dir>/<folder>/raw/`."""
    return Path(data_dir) / folder / "raw"


def idx_file(folder: Path, name: str) -> Path | None:
    """`folder/name`, else `folder/name.gz`, whichever is a file; None if neither is."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def has_idx_set(folder: Path) -> bool:
    return all(idx_file(folder, name) is not None for name in NAMES)


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (LeCun's format: big-endian header of dimension sizes, then uint8 data), or its `.gz`.

    An uncompressed file is read once, straight into a bytearray that the tensor then shares: no
    extra copy of the 47 MB training images, which keeps the peak memory of a run down.
    """
    if path.suffix == ".gz":
        try:
            data = bytearray(gzip.decompress(path.read_bytes()))
        except (OSError, EOFError) as err:
            raise DataFilesError(f"{path} is not a readable gzip file ({err}): replace it.") from None
    else:
        data = bytearray(path.stat().st_size)
        with open(path, "rb") as f:
            f.readinto(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataFilesError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != header + math.prod(shape):
        raise DataFilesError(f"{path} is truncated or padded: its header says shape {shape}.")
    return torch.frombuffer(data, dtype=torch.uint8, offset=header).reshape(shape)


def read_idx_set(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`<prefix>-images-idx3-ubyte` as uint8 (N, 1, 28, 28) and `<prefix>-labels-idx1-ubyte` as (N,)."""
    images = read_idx(idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.dim() != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise DataFilesError(
            f"{folder}/{prefix}-*: expected N images of 28 x 28 and N labels, found images of shape "
            f"{tuple(images.shape)} and labels of shape {tuple(labels.shape)}. Replace them with the set's own files."
        )
    return images.unsqueeze(1), labels


class IDXDataModule(ImageDataModule):
    """A set in IDX files: its official 60,000 training images (less `val_size` for validation) and
    10,000 test images of 1 x 28 x 28, from `<data_dir>/<folder>/raw/` (torchvision's layout), else
    from the folder a system package installs them in. The options are `ImageDataModule`'s."""

    folder = ""  # the set's folder name under data_dir, as torchvision names it
    home = ""  # where a user gets the files by hand
    installed: Path | None = None  # where a system package puts them, if one does
    install = ""  # the command that installs that package
    train_images = 60_000

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    def files(self) -> Path:
        """The folder that holds the four files, or one line that says how to get them."""
        given = raw_dir(self.data_dir, self.folder)
        for folder in (given, self.installed):
            if folder is not None and has_idx_set(folder):
                return folder
        missing = ", ".join(name for name in NAMES if idx_file(given, name) is None)
        package = f"install them with `{self.install}` (into {self.installed}), or " if self.install else ""
        raise DataFilesError(
            f"the {self.folder} files: {missing} not found in {given}. This project does not download them: "
            f"{package}get them from {self.home} and place them (or their .gz) as {given}/<name>, or point "
            f"--data.data_dir at the folder that holds {self.folder}/raw/."
        )

    def prepare_data(self) -> None:
        self.files()

    def read(self) -> Splits:
        folder = self.files()
        return Splits(*read_idx_set(folder, "train"), *read_idx_set(folder, "t10k"), where=folder)
