"""Fashion-MNIST (Xiao et al. 2017): ten kinds of clothing in MNIST's sizes, format and split.

Debian ships the official files (`apt-get install dataset-fashion-mnist`, into
/usr/share/datasets/fashion-mnist/, gzipped); they are read from there unless `data_dir` holds
them in torchvision's layout, `<data_dir>/FashionMNIST/raw/`. Nothing is downloaded.
"""

from pathlib import Path

from vae.data.idx import IDXDataModule


class FashionMNISTDataModule(IDXDataModule):
    """Fashion-MNIST: train 55,000 / val 5,000 (a fixed random split of the official 60,000) / test 10,000."""

    folder = "FashionMNIST"
    home = "https://github.com/zalandoresearch/fashion-mnist"
    installed = Path("/usr/share/datasets/fashion-mnist")
    install = "apt-get install dataset-fashion-mnist"
