"""A folder of your own images: its data module, and reading the folder into uint8 tensors once,
decoded in parallel, cached on disk.

The layout is torchvision's ImageFolder: each subfolder is a class (its sorted position is the
label); images directly in the folder have no class (label -1). When the folder holds `train/`
(and optionally `val/` and `test/`), those are the splits; else every image is in one pool that
the data module splits with a seed. PNG and JPEG files are read (`EXTENSIONS`); other files are
ignored. Each image is converted to the chosen channels (grey "L" or "RGB", whatever it was),
its shorter side resized to `image_size` (bilinear, antialiased; an image already that size is
left exactly as it is) and its centre cropped to a square.

Decoding is the slow part (PIL, one image at a time), so it runs in a thread pool (PIL releases
the GIL while it decodes and resizes) and its result is saved in `<data_dir>/image_folder_cache/`:
one file per folder and decoding options, named by a hash of the folder's file list with each
file's size and modification time. A second start with the same files loads that file; a file
added, removed or changed gives another name, and the folder is decoded again (the stale cache
file is deleted). A corrupt image stops the reading with one line naming it; nothing is written.
"""

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError

from vae.atomic import atomic_write
from vae.data.base import Binarize, ImageDataModule, Splits, seeded_split
from vae.data.files import DataFilesError

EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
CACHE_FOLDER = "image_folder_cache"
CACHE_FORMAT = 1  # part of every cache file's name: a change of the decoding gives new names
# A set may take at most this share of the machine's memory as uint8 (training needs the rest).
MEMORY_SHARE = 0.5

# split ("" when there are none) -> its images as (path relative to the root, size, mtime in ns, class or None)
Listing = dict[str, list[tuple[str, int, int, str | None]]]


def list_images(root: Path) -> Listing:
    """Every image file under `root`, per split, in sorted order; one line if there are none."""
    if not root.is_dir():
        raise DataFilesError(f"--data.root {root} is not a folder: give the folder that holds your images.")
    splits = [s for s in SPLITS if (root / s).is_dir()] if (root / "train").is_dir() else [""]
    listing = {split: _images_in(root, split) for split in splits}
    if not any(listing.values()):
        raise DataFilesError(
            f"--data.root {root} holds no image ({', '.join(EXTENSIONS)} files, directly or in class subfolders)."
        )
    if splits != [""] and not listing["train"]:
        raise DataFilesError(f"{root / 'train'} holds no image: put the training images there, or remove the folder.")
    return listing


def _images_in(root: Path, split: str) -> list[tuple[str, int, int, str | None]]:
    """os.scandir rather than Path.rglob: a folder of 70,000 images is listed and stat'ed several times faster."""
    found = []

    def walk(relative: str, label: str | None) -> None:
        with os.scandir(root / relative) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_dir():
                    walk(path, label if label is not None or relative != split else entry.name)
                elif entry.name.lower().endswith(EXTENSIONS) and entry.is_file():
                    stat = entry.stat()
                    found.append((path, stat.st_size, stat.st_mtime_ns, label))

    walk(split, None)
    return found


def cache_folder(root: Path, image_size: int, channels: int, cache_dir: Path) -> tuple[Listing, Path]:
    """The folder's listing and its cache file, decoding the images into it first if it is not there."""
    listing = list_images(root)
    found = [image for images in listing.values() for image in images]
    options = [CACHE_FORMAT, str(root.resolve()), image_size, channels]
    prefix = _digest(options)
    cache = cache_dir / f"{prefix}-{_digest([options, found])}.pt"
    if not cache.is_file():
        _refuse_what_will_not_fit(root, len(found), channels * image_size * image_size)
        _write_cache(cache, decode_all([root / path for path, *_ in found], image_size, channels), prefix)
    return listing, cache


def read_folder(
    root: Path, image_size: int, channels: int, cache_dir: Path
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each split's images, uint8 (N, channels, image_size, image_size), and labels (int64, -1: no
    class; else the class's position among the sorted class names), through the cache."""
    listing, cache = cache_folder(root, image_size, channels, cache_dir)
    images = torch.load(cache, weights_only=True)
    classes = sorted({label for found in listing.values() for *_, label in found if label is not None})
    index = {name: i for i, name in enumerate(classes)}
    result, start = {}, 0
    for split, found in listing.items():
        labels = [index[label] if label is not None else -1 for *_, label in found]
        result[split] = images[start : start + len(labels)], torch.tensor(labels, dtype=torch.long)
        start += len(labels)
    return result


def decode_all(files: list[Path], image_size: int, channels: int) -> torch.Tensor:
    """The images as one uint8 tensor (N, C, H, W), decoded in a thread pool."""
    out = torch.empty(len(files), channels, image_size, image_size, dtype=torch.uint8)

    def decode_into(i: int) -> None:
        out[i] = decode(files[i], image_size, channels)

    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        list(pool.map(decode_into, range(len(files))))
    return out


def decode(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """One image file as uint8 (C, image_size, image_size): converted, resized (shorter side), centre-cropped."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            width, height = image.size
            if min(width, height) != image_size:
                scale = image_size / min(width, height)
                size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
                image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
                width, height = size
            left, top = (width - image_size) // 2, (height - image_size) // 2
            image = image.crop((left, top, left + image_size, top + image_size))
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataFilesError(f"{path} is not a readable image ({err}): remove or replace it.") from None
    return pixels.reshape(image_size, image_size, channels).permute(2, 0, 1)


def memory_bytes() -> int:
    """The machine's physical memory (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _refuse_what_will_not_fit(root: Path, n: int, bytes_per_image: int) -> None:
    needed, available = n * bytes_per_image, memory_bytes()
    if available and needed > MEMORY_SHARE * available:
        raise DataFilesError(
            f"--data.root {root}: {n} images of {bytes_per_image} bytes need {needed / 2**20:,.1f} MiB in memory, "
            f"more than half of this machine's {available / 2**20:,.1f} MiB. Use a smaller --data.image_size or fewer "
            f"images."
        )


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def _write_cache(cache: Path, images: torch.Tensor, prefix: str) -> None:
    """Written atomically: a killed run never leaves half a cache. Older
    caches of the same folder and options (other files then) are deleted."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    for stale in cache.parent.glob(f"{prefix}-*.pt"):
        stale.unlink(missing_ok=True)
    with atomic_write(cache) as f:
        torch.save(images, f)


class ImageFolderDataModule(ImageDataModule):
    """A folder of your own images (ImageFolder layout: class subfolders give the labels; a flat
    folder has none, label -1), read once and cached (above).

    `root/train/`, `root/val/` and `root/test/` are the splits when `root/train/` exists (without
    `val/`, `val_size` images are held out of `train/`; without `test/`, `test_size`); else
    `test_size` and then `val_size` images are held out of the whole folder, by `split_seed`.

    Args:
        root: the folder of images.
        image_size: every image is resized (shorter side) and centre-cropped to this size.
        channels: 1 (grey) or 3 (RGB); every image is converted to it, whatever it was.
        test_size: images held out for testing when there is no `test/` folder.
        data_dir: where the decoded images are cached (`image_folder_cache/`).
        The other options are `ImageDataModule`'s.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        channels: Literal[1, 3] = 3,
        val_size: int = 5_000,
        test_size: int = 5_000,
        split_seed: int = 0,
        data_dir: str = "data",
        batch_size: int = 128,
        binarize: Binarize = "none",
        on_device: bool | Literal["auto"] = "auto",
    ) -> None:
        if not Path(root).is_dir():  # now, before the Trainer is built and says anything
            raise DataFilesError(f"--data.root {root} is not a folder: give the folder that holds your images.")
        if image_size <= 0:
            raise ValueError(f"--data.image_size must be a positive number of pixels, got {image_size}.")
        if test_size <= 0:
            raise ValueError(f"--data.test_size must be a positive number of images, got {test_size}.")
        super().__init__(data_dir, batch_size, val_size, split_seed, binarize, on_device)
        self.root, self.image_size, self.channels, self.test_size = Path(root), image_size, channels, test_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def prepare_data(self) -> None:
        """Decode the folder into the cache, if it is not there: once per machine (local rank 0)."""
        cache_folder(self.root, self.image_size, self.channels, self.data_dir / CACHE_FOLDER)

    def read(self) -> Splits:
        splits = read_folder(self.root, self.image_size, self.channels, self.data_dir / CACHE_FOLDER)
        where = self.root if "" in splits else self.root / "train"
        train = splits.get("", splits.get("train"))
        test = splits.get("test")
        if test is None:
            test, train = self._hold_out(*train, self.test_size, where)
        return Splits(*train, *test, where, *splits.get("val", (None, None)))

    def _hold_out(self, images: torch.Tensor, labels: torch.Tensor, n: int, where: Path) -> tuple[tuple, tuple]:
        """(n images chosen by `split_seed`, the rest), each as (images, labels)."""
        if not n < len(labels):
            raise DataFilesError(
                f"--data.test_size {n} leaves no training images: the test images are taken from the {len(labels)} "
                f"images in {where}. Use a smaller --data.test_size, or put test images in {self.root}/test/."
            )
        held, rest = seeded_split(len(labels), n, self.split_seed)
        return (images[held], labels[held]), (images[rest], labels[rest])
