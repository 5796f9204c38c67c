"""MNIST as a LightningDataModule: the whole set in memory as uint8, batches as index slices.

A VAE on MNIST is small enough that per-image work (PIL, ToTensor, worker processes) costs more
than the network. Here the 70,000 images are read once into a (N, 28, 28) uint8 tensor; a batch
is one fancy-index into it. The uint8 batch travels to the device (4x fewer bytes than float)
and only there becomes float in [0, 1], in `on_after_batch_transfer`.

The loaders are ordinary `DataLoader`s over a map-style dataset. Under DDP every process holds its
own copy in memory and reads only its shard of each epoch: for training, Lightning swaps in a
`DistributedSampler` (and `__getitems__` receives that rank's indices); for evaluation, the
loaders shard without repeating an image, so metrics are exact (see `_evaluation_loader`).
"""

from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from vae.mnist_files import ensure_mnist, raw_dir, read_idx


class InMemoryMNIST(Dataset):
    """Images and labels held as tensors; `__getitems__` serves a whole batch in one slice."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


def _already_a_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`__getitems__` returns a finished batch; there is nothing left to collate."""
    return batch


class MNISTDataModule(LightningDataModule):
    """MNIST: train 55,000 / val 5,000 (a fixed random split of the official 60,000) / test 10,000.

    Args:
        data_dir: folder that holds (or will hold) `MNIST/raw/*-ubyte`, torchvision's layout.
        batch_size: images per batch, per device: under DDP an optimiser step sees
            batch_size x devices x num_nodes images.
        val_size: images held out of the official training set for validation.
        split_seed: seed of the train/val split; fixed so every run validates on the same images.
    """

    def __init__(
        self, data_dir: str = "data", batch_size: int = 128, val_size: int = 5_000, split_seed: int = 0
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"--data.batch_size must be a positive number of images, got {batch_size}.")
        if val_size <= 0:
            raise ValueError(f"--data.val_size must be a positive number of images, got {val_size}.")
        self.save_hyperparameters()
        self.data_dir, self.batch_size = Path(data_dir), batch_size
        self.val_size, self.split_seed = val_size, split_seed
        self.train_set: InMemoryMNIST | None = None

    def prepare_data(self) -> None:
        """Find or fetch the files, checked by MD5. Lightning runs this in one process per machine
        (local rank 0) while the others wait; then every process reads the files in `setup`."""
        ensure_mnist(self.data_dir)

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        folder = raw_dir(self.data_dir)
        images, labels = read_idx(folder / "train-images-idx3-ubyte"), read_idx(folder / "train-labels-idx1-ubyte")
        if not self.val_size < len(labels):
            raise ValueError(
                f"--data.val_size {self.val_size} leaves no training images: the validation images are taken "
                f"from the {len(labels)} training images in {folder}. Use a smaller --data.val_size."
            )
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        val, train = order[: self.val_size], order[self.val_size :]
        self.train_set = InMemoryMNIST(images[train], labels[train])
        self.val_set = InMemoryMNIST(images[val], labels[val])
        self.test_set = InMemoryMNIST(
            read_idx(folder / "t10k-images-idx3-ubyte"), read_idx(folder / "t10k-labels-idx1-ubyte")
        )

    def pixel_mean(self) -> torch.Tensor:
        """Mean of each pixel over the training images, in [0, 1], (1, 28, 28)."""
        return self.train_set.images.float().mean(0, keepdim=True) / 255

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.test_set)

    def _evaluation_loader(self, dataset: InMemoryMNIST) -> DataLoader:
        """Under DDP, every image exactly once across the ranks, so a metric reduced over them is exact.

        Lightning would inject a `DistributedSampler`, which pads the ranks' shares to equal length
        by repeating images; a repeated image counts twice in the mean (5,000 images on 3 ranks
        would repeat one). Here rank r of W reads images r, r + W, r + 2W, ...: shares differ by at
        most one image, and a rank may run one batch fewer. That is safe in evaluation, where
        nothing is synchronised per batch (no gradients, and the model has no buffers for DDP to
        broadcast): the metrics sync once, at the end of the epoch. Training keeps Lightning's
        padded sampler, because there every step all-reduces gradients across the ranks.
        """
        ranks = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if ranks is None:
            return self._loader(dataset)
        return self._loader(dataset, sampler=UnrepeatedDistributedSampler(dataset, shuffle=False, **ranks))

    def _loader(self, dataset: InMemoryMNIST, shuffle: bool = False, sampler: Sampler | None = None) -> DataLoader:
        # No workers: slicing a tensor in memory is faster than any inter-process hand-off.
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler, collate_fn=_already_a_batch
        )

    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 28, 28) on the device -> float (B, 1, 28, 28) in [0, 1]."""
        images, labels = batch
        return images.unsqueeze(1).float().div_(255), labels
