"""Kuzushiji-MNIST (Clanuwat et al. 2018): ten cursive Japanese characters in MNIST's sizes and format.

The files are not fetched: place them by hand in `<data_dir>/KMNIST/raw/` (torchvision's layout).
"""

from vae.data.idx import IDXDataModule


class KMNISTDataModule(IDXDataModule):
    """KMNIST: train 55,000 / val 5,000 (a fixed random split of the official 60,000) / test 10,000."""

    folder = "KMNIST"
    home = "https://github.com/rois-codh/kmnist"
