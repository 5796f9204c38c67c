"""Image sets as LightningDataModules: one module per source, each with the reader of its files.

Chosen on the command line with LightningCLI's `--data CLASS` (its short name, or its full path):

    mnist.py          MNISTDataModule, the default (its files fetched when missing, checked by MD5)
    fashion_mnist.py  FashionMNISTDataModule (the Debian package's files, or your own copy)
    kmnist.py         KMNISTDataModule (files placed by hand)
    cifar10.py        CIFAR10DataModule (files placed by hand; its pickles read safely)
    image_folder.py   ImageFolderDataModule (a folder of your own images, decoded once and cached)

They share everything but reading, in `base.py` (`ImageDataModule`: the whole set in memory as
uint8, seeded splits, binarisation, batches as index slices) and `idx.py` (the IDX format of the
MNIST-like sets); `sampler.py` is the training loader that resumes mid-epoch, `files.py` the error
a reader raises, `saved.py` a checkpoint's data source back from its saved class path. Each source
says its `image_shape`, which the CLI passes to the model. Any other LightningDataModule with an
`image_shape` and float (B, C, H, W) batches in [0, 1] plugs in the same way.
"""

from vae.data.base import Binarize, ImageDataModule, InMemoryImages, Splits, resident_device
from vae.data.cifar10 import CIFAR10DataModule
from vae.data.fashion_mnist import FashionMNISTDataModule
from vae.data.files import DataFilesError
from vae.data.idx import IDXDataModule
from vae.data.image_folder import ImageFolderDataModule
from vae.data.kmnist import KMNISTDataModule
from vae.data.mnist import MNISTDataModule
from vae.data.saved import (
    DEFAULT_SOURCE,
    OLD_CLASS_PATHS,
    SOURCES_PACKAGE,
    data_sources,
    datamodule_of_run,
    saved_class_path,
)

__all__ = [
    "DEFAULT_SOURCE",
    "OLD_CLASS_PATHS",
    "Binarize",
    "CIFAR10DataModule",
    "DataFilesError",
    "FashionMNISTDataModule",
    "IDXDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "InMemoryImages",
    "KMNISTDataModule",
    "MNISTDataModule",
    "Splits",
    "datamodule_of_run",
    "resident_device",
    "saved_class_path",
    "SOURCES_PACKAGE",
    "data_sources",
]
