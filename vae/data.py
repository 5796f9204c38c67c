"""Image sets as LightningDataModules: the whole set in memory as uint8, batches as index slices.

One class per source, chosen on the command line with LightningCLI's `--data CLASS`:
`MNISTDataModule` (the default), `FashionMNISTDataModule` and `KMNISTDataModule` (the same IDX
files), `CIFAR10DataModule` and `vae.image_folder.ImageFolderDataModule` (a folder of your own
images). They share everything but reading (`ImageDataModule`); each says its `image_shape`,
which the CLI passes to the model. Any other LightningDataModule with an `image_shape` and
float (B, C, H, W) batches in [0, 1] plugs in the same way.

A VAE on MNIST is small enough that per-image work (PIL, ToTensor, worker processes) costs more
than the network. Here the 70,000 images are read once into a (N, 1, 28, 28) uint8 tensor; a batch
is one fancy-index into it. On a CUDA GPU the tensors move to the GPU once (55 MB as uint8) and
every batch is sliced there: only the batch's indices cross from the host (`on_device`). Else
the uint8 batch travels to the device (4x fewer bytes than float). Either way it becomes float
in [0, 1] only on the device, in `on_after_batch_transfer`.

The loaders are ordinary `DataLoader`s over a map-style dataset. Under DDP every process holds its
own copy in memory and reads only its shard of each epoch: for training, the resumable shuffling
sampler deals each rank its share (and `__getitems__` receives that rank's indices); for
evaluation, the loaders shard without repeating an image, so metrics are exact
(see `_evaluation_loader`).

`binarize` chooses what a pixel is (the literature reports numbers for each):
    none     grey levels in [0, 1], as pytorch/examples' VAE trains (BCE is then a cross-entropy)
    dynamic  each training batch a fresh Bernoulli draw (Burda et al. 2015); validation and test
             binarised once, so their numbers compare across epochs and runs
    static   every image binarised once
A file is binarised once with a fixed seed before it is split, so an image's binary version does
not depend on `split_seed` or `val_size`. Binary images are stored as 0/255 uint8 and take the
same path to the device as grey ones.
"""

import os
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from vae.cifar10_files import cifar10_dir, read_cifar10, require_cifar10
from vae.data_files import DataFilesError
from vae.image_folder import CACHE_FOLDER, cache_folder, read_folder
from vae.mnist_files import ensure_mnist, raw_dir, read_idx_set, require_idx_files
from vae.resumable import ResumableDataLoader, ResumableSampler

MNIST_TRAIN_IMAGES = 60_000
DEFAULT_SOURCE = "vae.data.MNISTDataModule"  # what `--data` is when not given, and what older checkpoints used

BINARIZE_MODES = ("none", "dynamic", "static")
BINARIZE_SEED = 0


class Splits(NamedTuple):
    """What a source reads: uint8 (N, C, H, W) images and their labels; a validation set only if
    the source has its own (else it is split off the training images); `where` names the files."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    where: Path
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None


class InMemoryImages(Dataset):
    """Images and labels held as tensors, on any device; `__getitems__` serves a whole batch in one slice."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # index_select rather than images[index]: the same rows, without advanced indexing's
        # general machinery. Indices on the host go to a CUDA GPU without blocking: no sync per batch.
        # Not to MPS, where a non-blocking copy from a temporary host tensor can arrive corrupted.
        cuda = self.images.device.type == "cuda"
        index = torch.as_tensor(indices).to(self.images.device, non_blocking=cuda)
        return self.images.index_select(0, index), self.labels.index_select(0, index)

    def move_to(self, device: torch.device) -> None:
        """Keep the images and labels on `device` from now on (nothing to do when they are there)."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)


def resident_device(on_device: bool | Literal["auto"], root_device: torch.device) -> torch.device:
    """Where the data sets live: the training device if `on_device` (with "auto": if it is a CUDA
    GPU, the only accelerator this has been written for), else host memory."""
    wanted = root_device.type == "cuda" if on_device == "auto" else on_device
    return root_device if wanted else torch.device("cpu")


def binarized(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Each pixel on (255) with probability grey/255, else off (0), from a fixed seed; uint8 in, uint8 out.

    `r < grey` for r uniform on {0, ..., 254} is on with probability exactly grey/255, and draws
    one byte per pixel rather than a float copy of the whole set.
    """
    r = torch.randint(0, 255, images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return (r < images).to(torch.uint8) * 255


def seeded_split(n: int, held: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of `held` of `n` items chosen by `seed`, and of the others: the same for the same three numbers."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:held], order[held:]


def run_seed() -> int:
    """The run's seed, the same on every process: `seed_everything`'s (Lightning keeps it in PL_GLOBAL_SEED),
    else the global generator's. Not simply the generator's under DDP, where each rank draws its noise
    from a generator of its own (`vae.random_states`)."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))


def _already_a_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`__getitems__` returns a finished batch; there is nothing left to collate."""
    return batch


class ImageDataModule(LightningDataModule):
    """What every in-memory image source here shares; a source says only what its images are
    (`image_shape`) and how to read them (`read`).

    The images are held as uint8 (N, C, H, W) and served as index slices (`InMemoryImages`); the
    training images are split into training and validation by a seeded permutation unless the
    source has its own validation set; `binarize` and `on_device` work as for MNIST.

    Args:
        data_dir: folder that holds (or will hold) the files, in torchvision's layout.
        batch_size: images per batch, per device: under DDP an optimiser step sees
            batch_size x devices x num_nodes images.
        val_size: images held out of the training set for validation (when the source has no
            validation set of its own).
        split_seed: seed of the train/val split; fixed so every run validates on the same images.
        binarize: "none" (grey levels), "dynamic" (a fresh binary draw of each training batch;
            validation and test binarised once) or "static" (every image binarised once).
        on_device: keep the images on the training device and slice every batch there: "auto"
            (on a CUDA GPU, not on a CPU or MPS), true, or false (copy each batch from host
            memory, as on a CPU). Only where batches are sliced changes, never which ones.
    """

    # Images in the source's training set when it is fixed, so that `val_size` is checked before any file is read.
    train_images: int | None = None
    # Options that say where the files are and how to serve them: a checkpoint's are never taken (`vae.cli`).
    SERVING_OPTIONS = ("data_dir", "batch_size", "on_device")

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_size: int = 5_000,
        split_seed: int = 0,
        binarize: str = "none",
        on_device: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        if binarize not in BINARIZE_MODES:
            raise ValueError(f"--data.binarize must be one of {', '.join(BINARIZE_MODES)}; got {binarize!r}.")
        if batch_size <= 0:
            raise ValueError(f"--data.batch_size must be a positive number of images, got {batch_size}.")
        if self.train_images is not None and not 0 < val_size < self.train_images:
            raise ValueError(
                f"--data.val_size must be between 1 and {self.train_images - 1}: the validation images are taken "
                f"from the {self.train_images} training images. Got {val_size}."
            )
        if val_size <= 0:
            raise ValueError(f"--data.val_size must be a positive number of images, got {val_size}.")
        self.save_hyperparameters()
        self.data_dir, self.batch_size = Path(data_dir), batch_size
        self.val_size, self.split_seed, self.binarize = val_size, split_seed, binarize
        self.on_device = on_device
        self.train_set: InMemoryImages | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image, known from the options before any file is read."""
        raise NotImplementedError

    def read(self) -> Splits:
        """The source's images, uint8 (N, C, H, W), and labels."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if self.train_set is None:
            self._split(self.read())
        if self.trainer is not None:
            device = resident_device(self.on_device, self.trainer.strategy.root_device)
            for dataset in (self.train_set, self.val_set, self.test_set):
                dataset.move_to(device)

    def _split(self, splits: Splits) -> None:
        images, labels, test_images = splits.train_images, splits.train_labels, splits.test_images
        if splits.val_images is None and not self.val_size < len(labels):
            raise DataFilesError(
                f"--data.val_size {self.val_size} leaves no training images: the validation images are taken "
                f"from the {len(labels)} training images in {splits.where}. Use a smaller --data.val_size."
            )
        val_images = splits.val_images
        # Validation and test images are binary in both binary modes, training images only in "static".
        binary = images
        if self.binarize != "none":
            binary, test_images = binarized(images, BINARIZE_SEED), binarized(test_images, BINARIZE_SEED + 1)
            val_images = None if val_images is None else binarized(val_images, BINARIZE_SEED + 2)
        train_images = binary if self.binarize == "static" else images
        if val_images is None:
            val, train = seeded_split(len(labels), self.val_size, self.split_seed)
            self.train_set = InMemoryImages(train_images[train], labels[train])
            self.val_set = InMemoryImages(binary[val], labels[val])
        else:
            self.train_set = InMemoryImages(train_images, labels)
            self.val_set = InMemoryImages(val_images, splits.val_labels)
        self.test_set = InMemoryImages(test_images, splits.test_labels)

    def pixel_mean(self) -> torch.Tensor:
        """Mean of each pixel over the training images, in [0, 1], (C, H, W).

        Summed 1,000 images at a time (exact: a sum of 1,000 bytes fits a float32's integers): a
        float copy of the whole set would add ~170 MB to the process's peak memory. The partial
        sums are added in float64 on the CPU, wherever the images are (MPS has no float64).
        """
        images = self.train_set.images
        total = sum(chunk.sum(0, dtype=torch.float32).cpu().double() for chunk in images.split(1_000))
        return (total / (255 * len(images))).float()

    def train_dataloader(self) -> DataLoader:
        # Shuffled by (run seed, epoch), sharded over the DDP processes (if any) and resumable
        # mid-epoch: a resumed run sees the same batches.
        ranks = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        sampler = ResumableSampler(len(self.train_set), seed=run_seed(), **(ranks or {}))
        return ResumableDataLoader(self.train_set, sampler=sampler, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.test_set)

    def _evaluation_loader(self, dataset: InMemoryImages) -> DataLoader:
        """Under DDP, every image exactly once across the ranks, so a metric reduced over them is exact.

        Lightning would inject a `DistributedSampler`, which pads the ranks' shares to equal length
        by repeating images; a repeated image counts twice in the mean (5,000 images on 3 ranks
        would repeat one). Here rank r of W reads images r, r + W, r + 2W, ...: shares differ by at
        most one image, and a rank may run one batch fewer. That is safe in evaluation, where
        nothing is synchronised per batch (no gradients, and the model has no buffers for DDP to
        broadcast): the metrics sync once, at the end of the epoch. Training pads the shares to
        equal length (`ResumableSampler`), because there every step all-reduces gradients across the ranks.
        """
        ranks = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        sampler = None if ranks is None else UnrepeatedDistributedSampler(dataset, shuffle=False, **ranks)
        return DataLoader(dataset, sampler=sampler, **self._loader_options())

    def _loader_options(self) -> dict:
        # No workers: slicing a tensor in memory beats any inter-process hand-off. A private
        # generator: otherwise every new iterator draws a worker seed from the global RNG, and a
        # resumed run (which opens one more iterator) would draw different noise from then on.
        return {"batch_size": self.batch_size, "collate_fn": _already_a_batch, "generator": torch.Generator()}

    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, C, H, W) on the device -> float in [0, 1]; binary draws for "dynamic".

        The draw applies to every batch, but validation and test images are already 0 or 1, which
        a Bernoulli draw returns unchanged: only training batches change.

        The batch stays float32 whatever the training precision (Lightning converts floating inputs
        before this hook, when the batch is still uint8): the likelihood compares with the exact 8-bit
        values, and the network takes the images in its own dtype (`VAE.encode`).
        """
        images, labels = batch
        x = images.float().div_(255)
        x = torch.bernoulli(x) if self.binarize == "dynamic" else x
        return x, labels


class IDXDataModule(ImageDataModule):
    """A set in MNIST's IDX format: 60,000 training and 10,000 test images of 1 x 28 x 28, in
    `<data_dir>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte` (torchvision's layout)."""

    folder = ""  # the set's folder name under data_dir, as torchvision names it
    home = ""  # where a user gets the files
    train_images = MNIST_TRAIN_IMAGES

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    def prepare_data(self) -> None:
        require_idx_files(raw_dir(self.data_dir, self.folder), self.home)

    def read(self) -> Splits:
        folder = raw_dir(self.data_dir, self.folder)
        train, test = read_idx_set(folder, "train"), read_idx_set(folder, "t10k")
        return Splits(*train, *test, where=folder)


class MNISTDataModule(IDXDataModule):
    """MNIST: train 55,000 / val 5,000 (a fixed random split of the official 60,000) / test 10,000.

    The files are fetched when missing (`vae.mnist_files`); the options are `ImageDataModule`'s.
    """

    folder = "MNIST"

    def prepare_data(self) -> None:
        """Find or fetch the files, checked by MD5. Lightning runs this in one process per machine
        (local rank 0) while the others wait; then every process reads the files in `setup`."""
        ensure_mnist(self.data_dir)


class FashionMNISTDataModule(IDXDataModule):
    """Fashion-MNIST (Xiao et al. 2017): ten kinds of clothing, MNIST's sizes and format. The files
    are not fetched: place them by hand in `<data_dir>/FashionMNIST/raw/`."""

    folder = "FashionMNIST"
    home = "https://github.com/zalandoresearch/fashion-mnist"


class KMNISTDataModule(IDXDataModule):
    """Kuzushiji-MNIST (Clanuwat et al. 2018): ten cursive Japanese characters, MNIST's sizes and
    format. The files are not fetched: place them by hand in `<data_dir>/KMNIST/raw/`."""

    folder = "KMNIST"
    home = "https://github.com/rois-codh/kmnist"


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test images of 3 x 32 x 32, from the
    python version's batches in `<data_dir>/cifar-10-batches-py/` (torchvision's layout). The files
    are not fetched: extract cifar-10-python.tar.gz into data_dir by hand (`vae.cifar10_files`)."""

    train_images = 50_000

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, 32, 32)

    def prepare_data(self) -> None:
        require_cifar10(self.data_dir)

    def read(self) -> Splits:
        return Splits(*read_cifar10(self.data_dir), where=cifar10_dir(self.data_dir))


class ImageFolderDataModule(ImageDataModule):
    """A folder of your own images (ImageFolder layout: class subfolders give the labels; a flat
    folder has none, label -1), read once and cached by `vae.image_folder`.

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
        channels: int = 3,
        val_size: int = 5_000,
        test_size: int = 5_000,
        split_seed: int = 0,
        data_dir: str = "data",
        batch_size: int = 128,
        binarize: str = "none",
        on_device: bool | Literal["auto"] = "auto",
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"--data.channels must be 1 (grey) or 3 (RGB), got {channels}.")
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


def datamodule_of_run(saved: dict[str, Any], **options: Any) -> LightningDataModule:
    """The data module a checkpoint's run trained on, from its `datamodule_hyper_parameters` (the
    source's class path, which LightningCLI saves as `_class_path`, and its options), with `options`
    replacing some of them (say `data_dir`). A checkpoint from before `--data CLASS` was MNIST.

    The class is looked up among the LightningDataModules already imported (those here, and your
    own once you import it), never imported by a name a checkpoint gives: a file is not code."""
    wanted = saved.get("_class_path", DEFAULT_SOURCE)
    known, found = [LightningDataModule], {}
    while known:
        source = known.pop()
        found[f"{source.__module__}.{source.__qualname__}"] = source
        known += source.__subclasses__()
    if wanted not in found:
        raise DataFilesError(f"The checkpoint's data source {wanted} is not imported: import its module first.")
    return found[wanted](**({k: v for k, v in saved.items() if not k.startswith("_")} | options))
