"""A checkpoint's data source, from what LightningCLI saved of it: its class path and options.

Checkpoints written before the data sources became one module each (up to commit 27bd318) name
them `vae.data.MNISTDataModule` and so on; `OLD_CLASS_PATHS` maps those spellings to today's, so
that such a checkpoint tests, resumes, samples, exports and reports as a new one does.
"""

from typing import Any

from lightning.pytorch import LightningDataModule

from vae.data.files import DataFilesError

# Where this project's data sources are: their class paths start with it.
SOURCES_PACKAGE = __name__.rpartition(".")[0]
# What `--data` is when not given, and what the oldest checkpoints (without a class path) used.
DEFAULT_SOURCE = "vae.data.mnist.MNISTDataModule"
# Each source's class path in checkpoints written before it had a module of its own -> today's.
OLD_CLASS_PATHS = {
    "vae.data.MNISTDataModule": "vae.data.mnist.MNISTDataModule",
    "vae.data.FashionMNISTDataModule": "vae.data.fashion_mnist.FashionMNISTDataModule",
    "vae.data.KMNISTDataModule": "vae.data.kmnist.KMNISTDataModule",
    "vae.data.CIFAR10DataModule": "vae.data.cifar10.CIFAR10DataModule",
    "vae.data.ImageFolderDataModule": "vae.data.image_folder.ImageFolderDataModule",
}


def saved_class_path(saved: dict[str, Any]) -> str:
    """The import path of the data source a checkpoint's `datamodule_hyper_parameters` name, as it is
    spelled today. A checkpoint from before `--data CLASS` has none: it was MNIST."""
    wanted = saved.get("_class_path", DEFAULT_SOURCE)
    return OLD_CLASS_PATHS.get(wanted, wanted)


def data_sources() -> dict[str, type[LightningDataModule]]:
    """Every LightningDataModule class imported now, by its full class path: this project's sources, and
    your own once its module is imported. A name in a checkpoint or on a command line is looked up here,
    never imported: naming a module does not run it."""
    known, found = [LightningDataModule], {}
    while known:
        source = known.pop()
        found[f"{source.__module__}.{source.__qualname__}"] = source
        known += source.__subclasses__()
    return found


def datamodule_of_run(saved: dict[str, Any], **options: Any) -> LightningDataModule:
    """The data module a checkpoint's run trained on, from its `datamodule_hyper_parameters` (the
    source's class path, which LightningCLI saves as `_class_path`, and its options), with `options`
    replacing some of them (say `data_dir`).

    The class is looked up among the LightningDataModules already imported (those here, and your
    own once you import it), never imported by a name a checkpoint gives: a file is not code."""
    wanted, found = saved_class_path(saved), data_sources()
    if wanted not in found:
        raise DataFilesError(f"The checkpoint's data source {wanted} is not imported: import its module first.")
    return found[wanted](**({k: v for k, v in saved.items() if not k.startswith("_")} | options))
