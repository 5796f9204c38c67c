"""What every in-memory image source shares: the whole set in memory as uint8, batches as index slices.

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

from pathlib import Path
from typing import Literal, NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from vae.data.files import DataFilesError
from vae.data.sampler import ResumableDataLoader, ResumableSampler
from vae.seed import run_seed

# What a pixel is (see above); LightningCLI lists the choices in --help and refuses any other.
Binarize = Literal["none", "dynamic", "static"]
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
        binarize: Binarize = "none",
        on_device: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
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
