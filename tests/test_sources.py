"""Data sources beside MNIST: Fashion-MNIST/KMNIST (IDX), CIFAR-10 (python batches), a folder of images.

Every file here is written by the tests: tiny IDX sets, CIFAR-format batches and PNG/JPEG folders.
"""

import gzip
import math
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torchvision.io import read_image

import sample
from tests.helpers import TEST_SIZE, TRAIN_SIZE, fit_in_a_new_folder, idx_bytes, run_cli
from vae.checkpoints import CheckpointError
from vae.data import (
    CIFAR10DataModule,
    DataFilesError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    KMNISTDataModule,
    datamodule_of_run,
    image_folder,
)
from vae.data.cifar10 import TEST_BATCH, TRAIN_BATCHES, read_cifar10
from vae.data.idx import has_idx_set, raw_dir

CIFAR_PER_BATCH = 24


def synthetic_set(files: dict[str, bytes], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic files' images (N, 1, 28, 28) and labels, straight from their bytes (headers of 16 and 8)."""
    images = torch.frombuffer(bytearray(files[f"{prefix}-images-idx3-ubyte"]), dtype=torch.uint8, offset=16)
    labels = torch.frombuffer(bytearray(files[f"{prefix}-labels-idx1-ubyte"]), dtype=torch.uint8, offset=8)
    return images.view(-1, 1, 28, 28), labels


def cifar_images(n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,)).tolist()


def write_cifar(data_dir: Path) -> dict[str, tuple[torch.Tensor, list[int]]]:
    """CIFAR-10's python layout: each batch a protocol-2 pickle of {b"data": uint8 (N, 3072), b"labels": [...]}."""
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for seed, name in enumerate([*TRAIN_BATCHES, TEST_BATCH]):
        images, labels = written[name] = cifar_images(CIFAR_PER_BATCH, seed)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": images.reshape(len(images), -1).numpy()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return written


def write_folder(root: Path, splits: dict[str, int], classes: tuple[str, ...] = ("cat", "dog")) -> None:
    """`splits[name]` images per class under root/<name>/<class>/ ("" for no split folder): RGB and
    grey PNGs of 12 x 10 pixels and one JPEG per class, each a different flat colour."""
    g = torch.Generator().manual_seed(0)
    for split, n in splits.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (10, 12, 3), dtype=torch.uint8, generator=g).numpy()
                image = Image.fromarray(pixels, "RGB")
                if i % 3 == 1:
                    image.convert("L").save(folder / f"{i:03d}.png")
                else:
                    image.save(folder / f"{i:03d}.{'jpg' if i == 2 else 'png'}")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_folder(tmp_path / "images", {"train": 30, "test": 6})
    return tmp_path / "images"


def folder_module(root: Path, tmp_path: Path, **options) -> ImageFolderDataModule:
    options = {"image_size": 8, "channels": 3, "val_size": 10, "data_dir": str(tmp_path / "cache"), **options}
    return ImageFolderDataModule(str(root), **options)


# --- IDX sets placed by hand -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "folder_name"), [(FashionMNISTDataModule, "FashionMNIST"), (KMNISTDataModule, "KMNIST")]
)
def test_idx_sets_read_their_own_folder_and_say_where_to_put_missing_files(
    tmp_path, files, source, folder_name, monkeypatch
):
    monkeypatch.setattr(source, "installed", None)  # not the files a system package may have installed here
    dm = source(data_dir=str(tmp_path), val_size=40)
    with pytest.raises(DataFilesError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(raw_dir(tmp_path, folder_name)) in message and "does not download" in message and "\n" not in message
    raw = raw_dir(tmp_path, folder_name)
    raw.mkdir(parents=True)
    for name, content in files.items():
        (raw / name).write_bytes(content)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.image_shape == (1, 28, 28) and dm.train_set.images.shape == (TRAIN_SIZE - 40, 1, 28, 28)
    assert len(dm.test_set) == TEST_SIZE


def gzipped(folder: Path, files: dict[str, bytes]) -> Path:
    """The files as the Debian package installs them: `<name>.gz`, nothing else."""
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(content))
    return folder


def test_fashion_mnist_reads_the_installed_packages_gzipped_files_unless_data_dir_has_its_own(
    tmp_path, files, monkeypatch
):
    installed = gzipped(tmp_path / "usr/share/datasets/fashion-mnist", files)
    monkeypatch.setattr(FashionMNISTDataModule, "installed", installed)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"), val_size=40)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.files() == installed
    test_images, test_labels = synthetic_set(files, "t10k")
    assert torch.equal(dm.test_set.images, test_images) and torch.equal(dm.test_set.labels, test_labels)
    assert len(dm.train_set) + len(dm.val_set) == TRAIN_SIZE
    # a copy of its own in data_dir (torchvision's layout, uncompressed) wins: here, other test images
    own = raw_dir(tmp_path / "data", "FashionMNIST")
    own.mkdir(parents=True)
    flipped = files | {"t10k-images-idx3-ubyte": idx_bytes(test_images.squeeze(1).flip(-1))}
    for name, content in flipped.items():
        (own / name).write_bytes(content)
    mine = FashionMNISTDataModule(data_dir=str(tmp_path / "data"), val_size=40)
    mine.setup("test")
    assert mine.files() == own and torch.equal(mine.test_set.images, test_images.flip(-1))


def test_without_fashion_mnist_files_the_error_gives_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(FashionMNISTDataModule, "installed", tmp_path / "not-installed")
    with pytest.raises(DataFilesError) as err:
        FashionMNISTDataModule(data_dir=str(tmp_path)).prepare_data()
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and str(tmp_path / "not-installed") in message
    assert str(raw_dir(tmp_path, "FashionMNIST")) in message and "\n" not in message


def test_a_corrupt_gzip_file_is_one_line_naming_it(tmp_path, files, monkeypatch):
    installed = gzipped(tmp_path / "installed", files)
    (installed / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not gzip")
    monkeypatch.setattr(FashionMNISTDataModule, "installed", installed)
    with pytest.raises(DataFilesError, match="t10k-labels-idx1-ubyte.gz is not a readable gzip file"):
        FashionMNISTDataModule(data_dir=str(tmp_path), val_size=40).setup("test")


REAL_FASHION = FashionMNISTDataModule.installed


@pytest.mark.skipif(
    not has_idx_set(REAL_FASHION),
    reason=f"the Fashion-MNIST files are not installed in {REAL_FASHION} (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_trains_on_the_installed_official_files(tmp_path, monkeypatch):
    """The real files: the official split (60,000 training images, 10,000 test images, 6,000 and 1,000 of
    each of the ten classes), and a few training steps through the command line."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "--data", "FashionMNISTDataModule", "--trainer.max_steps", "3", data_dir=tmp_path / "data")
    dm = cli.datamodule
    assert dm.files() == REAL_FASHION and cli.trainer.global_step == 3
    train_labels = torch.cat([dm.train_set.labels, dm.val_set.labels])
    assert torch.bincount(train_labels).tolist() == [6_000] * 10
    assert torch.bincount(dm.test_set.labels).tolist() == [1_000] * 10
    assert dm.test_set.images.shape == (10_000, 1, 28, 28) and len(dm.val_set) == 64


# --- CIFAR-10 ----------------------------------------------------------------------------------------


def test_cifar10_batches_are_read_as_rgb_planes_in_order(tmp_path):
    written = write_cifar(tmp_path)
    train_images, train_labels, test_images, test_labels = read_cifar10(tmp_path)
    assert torch.equal(train_images, torch.cat([written[name][0] for name in TRAIN_BATCHES]))
    assert train_labels.tolist() == [label for name in TRAIN_BATCHES for label in written[name][1]]
    assert torch.equal(test_images, written[TEST_BATCH][0]) and test_labels.tolist() == written[TEST_BATCH][1]
    # the red plane is the first 1,024 bytes of a row, as the CIFAR-10 page documents
    row = pickle.loads((tmp_path / "cifar-10-batches-py" / TEST_BATCH).read_bytes(), encoding="bytes")[b"data"][0]
    assert test_images[0, 0].flatten().tolist() == row[:1024].tolist()


class RunsCode:
    """A pickle that would create a folder when loaded: what a booby-trapped batch file could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def test_a_cifar10_file_that_would_run_code_is_refused_unrun(tmp_path):
    write_cifar(tmp_path)
    trap = tmp_path / "the-pickle-ran"
    (tmp_path / "cifar-10-batches-py" / TEST_BATCH).write_bytes(pickle.dumps({b"data": RunsCode(trap)}, protocol=2))
    with pytest.raises(DataFilesError, match="test_batch is not a CIFAR-10 python batch.*mkdir"):
        read_cifar10(tmp_path)
    assert not trap.exists()


def global_call(module: str, name: str, *args: object) -> bytes:
    """A protocol-2 pickle that calls `module.name(*args)` when loaded, however the function spells its own module."""
    arguments = pickle.dumps(args, protocol=2)[2:-1]  # the tuple, less the PROTO header and the STOP
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + arguments + b"R."


@pytest.mark.parametrize(
    "module", ["numpy", "numpy.lib._npyio_impl"], ids=["numpy's public name", "a private module of numpy"]
)
def test_the_cifar10_reader_refuses_any_callable_of_numpy_but_the_array_rebuilders(tmp_path, module):
    """numpy.save would write a file: numpy is where the allowed names live, yet only those few may be named."""
    write_cifar(tmp_path)
    trap = tmp_path / "the-pickle-ran.npy"
    (tmp_path / "cifar-10-batches-py" / TEST_BATCH).write_bytes(global_call(module, "save", str(trap), [1]))
    with pytest.raises(DataFilesError, match=f"refers to {module}.save"):
        read_cifar10(tmp_path)
    assert not trap.exists()


def test_cifar10_without_files_says_where_to_put_them(tmp_path):
    with pytest.raises(DataFilesError, match="cifar-10-batches-py.*cifar-10-python.tar.gz"):
        CIFAR10DataModule(data_dir=str(tmp_path)).prepare_data()


# --- a folder of images ------------------------------------------------------------------------------


def test_a_folder_gives_labels_by_class_converted_resized_images_and_its_own_splits(folder, tmp_path):
    dm = folder_module(folder, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.image_shape == (3, 8, 8)
    assert dm.train_set.images.dtype == torch.uint8 and dm.train_set.images.shape == (50, 3, 8, 8)
    assert (len(dm.val_set), len(dm.test_set)) == (10, 12)  # val held out of train/, test/ as it is
    assert sorted(dm.test_set.labels.tolist()) == [0] * 6 + [1] * 6  # cat, dog: sorted class names
    grey = dm.test_set.images[1]  # test/cat/001.png, saved grey, converted to RGB
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    x, _ = dm.on_after_batch_transfer((dm.test_set.images[:4], dm.test_set.labels[:4]), 0)
    assert x.dtype == torch.float32 and x.shape == (4, 3, 8, 8) and 0 <= x.min() and x.max() <= 1
    grey_dm = folder_module(folder, tmp_path, channels=1, image_size=10)
    grey_dm.setup("test")
    assert grey_dm.test_set.images.shape == (12, 1, 10, 10)
    write_folder(folder, {"val": 4})  # a val/ folder is the validation set: nothing held out of train/
    with_val = folder_module(folder, tmp_path)
    with_val.setup("fit")
    assert (len(with_val.train_set), len(with_val.val_set), len(with_val.test_set)) == (60, 8, 12)


def test_an_image_already_at_the_size_keeps_its_exact_pixels(tmp_path):
    pixels = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (tmp_path / "flat").mkdir()
    Image.fromarray(pixels.numpy(), "L").save(tmp_path / "flat" / "a.png")
    images = image_folder.decode_all([tmp_path / "flat" / "a.png"], 28, 1)
    assert torch.equal(images[0, 0], pixels)


def test_a_flat_folder_has_no_labels_and_a_seeded_split(tmp_path):
    (tmp_path / "flat").mkdir()
    for i in range(40):
        Image.new("RGB", (9, 9), (i, 2 * i, 3 * i)).save(tmp_path / "flat" / f"{i:02d}.png")
    dm = folder_module(tmp_path / "flat", tmp_path, val_size=8, test_size=6)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (26, 8, 6)
    assert set(dm.train_set.labels.tolist()) == {-1}
    again = folder_module(tmp_path / "flat", tmp_path, val_size=8, test_size=6)
    again.setup("fit")
    assert torch.equal(again.test_set.images, dm.test_set.images)
    other = folder_module(tmp_path / "flat", tmp_path, val_size=8, test_size=6, split_seed=1)
    other.setup("fit")
    assert not torch.equal(other.test_set.images, dm.test_set.images)


def test_the_second_start_reads_the_cache_and_a_changed_file_is_decoded_again(folder, tmp_path, monkeypatch):
    first = folder_module(folder, tmp_path)
    first.setup("fit")
    (cache,) = (tmp_path / "cache" / image_folder.CACHE_FOLDER).iterdir()

    def no_decoding(*args):
        raise AssertionError("decoded again although the files did not change")

    monkeypatch.setattr(image_folder, "decode_all", no_decoding)
    second = folder_module(folder, tmp_path)
    second.setup("fit")
    assert torch.equal(second.train_set.images, first.train_set.images)

    monkeypatch.undo()
    changed = folder / "test" / "dog" / "000.png"
    Image.new("RGB", (12, 10), (255, 0, 0)).save(changed)
    os.utime(changed, ns=(0, 10**9))  # another size and modification time
    third = folder_module(folder, tmp_path)
    third.setup("fit")
    red = third.test_set.images[third.test_set.labels == 1][0]
    assert red[0].unique().tolist() == [255] and red[1].unique().tolist() == [0]
    assert not cache.exists() and len(list(cache.parent.iterdir())) == 1  # the stale cache replaced


@pytest.mark.parametrize(
    "change",
    [
        lambda path, stat: os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9)),
        lambda path, stat: (
            path.write_bytes(path.read_bytes() + b"\0"),
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns)),
        ),
    ],
    ids=["mtime alone", "size alone"],
)
def test_the_cache_is_decoded_again_when_one_files_mtime_or_size_alone_changes(folder, tmp_path, monkeypatch, change):
    folder_module(folder, tmp_path).setup("fit")
    (cache,) = (tmp_path / "cache" / image_folder.CACHE_FOLDER).iterdir()
    path = folder / "train" / "cat" / "000.png"
    before = path.stat()
    change(path, before)
    after = path.stat()
    assert (after.st_size != before.st_size) != (after.st_mtime_ns != before.st_mtime_ns)  # exactly one changed
    decoded = []
    decode_all = image_folder.decode_all
    monkeypatch.setattr(image_folder, "decode_all", lambda *args: decoded.append(1) or decode_all(*args))
    folder_module(folder, tmp_path).setup("fit")
    assert decoded == [1] and not cache.exists()  # decoded once more, the stale cache replaced


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda root: None, "is not a folder"),
        (lambda root: root.mkdir(), "holds no image"),
        (lambda root: (root.mkdir(), (root / "notes.txt").write_text("no images")), "holds no image"),
        (
            lambda root: (write_folder(root, {"": 3}), (root / "cat" / "001.png").write_bytes(b"\x89PNG junk")),
            "001.png",
        ),
        (lambda root: write_folder(root, {"train": 0, "test": 2}), "holds no image"),
    ],
    ids=["missing", "empty", "no image file", "corrupt image", "empty train"],
)
def test_bad_folders_stop_with_one_line_and_write_nothing(tmp_path, make, match):
    make(tmp_path / "images")
    with pytest.raises(DataFilesError, match=match) as err:  # a missing folder: refused as the module is made
        folder_module(tmp_path / "images", tmp_path).prepare_data()
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_a_folder_too_big_for_memory_is_refused_with_its_size(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(image_folder, "memory_bytes", lambda: 2**20)  # 1 MiB of memory
    dm = folder_module(folder, tmp_path, image_size=64)  # 72 images x 12 KiB: more than half of it
    with pytest.raises(
        DataFilesError, match=r"72 images of 12288 bytes need 0\.8 MiB.*machine's 1\.0 MiB.*--data.image_size"
    ):
        dm.prepare_data()
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("options", "match"),
    [({"image_size": 0}, "--data.image_size"), ({"test_size": 0}, "test_size")],
)
def test_bad_folder_options_are_refused_by_name(folder, tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        folder_module(folder, tmp_path, **options)


# --- the command line: choosing a source, and its checkpoints ------------------------------------------

# the README's command for one's own images, small
FOLDER_RUN = ["--data", "ImageFolderDataModule", "--data.image_size", "8", "--data.val_size", "10"]
FOLDER_RUN += ["--model.arch", "conv", "--model.likelihood", "logistic_shared_scale", "--trainer.max_epochs", "1"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, files) -> SimpleNamespace:
    """The README's `train.py --data ImageFolderDataModule --data.root IMAGES` on a small RGB folder, 3 steps."""
    images = tmp_path_factory.mktemp("images")
    write_folder(images, {"train": 30, "test": 6})
    root, _ = fit_in_a_new_folder(tmp_path_factory, files, "folder-run", *FOLDER_RUN, "--data.root", str(images))
    return SimpleNamespace(images=images, logs=root / "lightning_logs")


@pytest.fixture
def folder_run_here(folder_run, tmp_path, monkeypatch) -> Path:
    """A copy of `folder_run`'s logs in the working directory (with MNIST's synthetic `data/`): its last.ckpt."""
    shutil.copytree(folder_run.logs, tmp_path / "lightning_logs")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"


def test_a_folder_run_is_tested_on_its_own_data_from_the_checkpoint_alone(folder_run, folder_run_here, data_dir):
    saved = torch.load(folder_run_here, weights_only=True)
    assert tuple(saved["hyper_parameters"]["image_shape"]) == (3, 8, 8)  # linked from the data, kept for loading
    dm = datamodule_of_run(saved["datamodule_hyper_parameters"], data_dir=str(data_dir))  # as sample.py builds it
    assert isinstance(dm, ImageFolderDataModule) and (dm.root, dm.image_size, dm.val_size) == (folder_run.images, 8, 10)
    with pytest.raises(DataFilesError, match="mypackage.Faces is not imported"):
        datamodule_of_run({"_class_path": "mypackage.Faces"})
    test = ["test", "--ckpt_path", str(folder_run_here), "--model.iw_samples", "2", "--data.val_size", "10"]
    cli = run_cli(*test, data_dir=data_dir)  # (run_cli gives MNIST's --data.val_size 64: more than this folder has)
    assert isinstance(cli.datamodule, ImageFolderDataModule) and cli.datamodule.root == folder_run.images
    assert cli.datamodule.image_shape == (3, 8, 8) and len(cli.datamodule.test_set) == 12
    metrics = cli.trainer.callback_metrics
    assert metrics["test/nll_bpd"].item() == pytest.approx(metrics["test/nll"].item() / (3 * 8 * 8 * math.log(2)))


def test_sample_py_shows_a_folder_runs_own_colour_test_images(folder_run, folder_run_here, data_dir):
    """No data option given: sample.py finds the run's folder and options in the checkpoint."""
    out = sample.main(["--ckpt_path", str(folder_run_here), "--n", "4"])
    assert out == folder_run_here.parents[1] / "samples"
    reconstructions = read_image(str(out / "reconstructions.png"))  # 4 inputs above their reconstructions
    assert reconstructions.shape == (3, 2 * 10 + 2, 4 * 10 + 2)  # 8 x 8 images, 2-pixel lines
    saved = torch.load(folder_run_here, weights_only=True)["datamodule_hyper_parameters"]
    test_set = datamodule_of_run(saved, data_dir=str(data_dir))
    test_set.setup("test")
    for i in range(4):
        shown = reconstructions[:, 2:10, 2 + 10 * i : 10 + 10 * i]
        assert any(torch.equal(shown, image) for image in test_set.test_set.images), i
    # 12 test images: 6 interpolation rows, not 8
    assert read_image(str(out / "interpolations.png")).shape == (3, 6 * 10 + 2, 10 * 10 + 2)


@pytest.mark.parametrize(
    "data", [["--data.image_size", "16"], ["--data", "MNISTDataModule"]], ids=["another size", "another source"]
)
def test_data_of_another_shape_than_the_checkpoints_is_refused_in_one_line(folder_run_here, data_dir, data):
    run = folder_run_here.parents[1]
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(CheckpointError, match="holds a model of 3x8x8 images, but the data given .* has") as err:
        run_cli("test", "--ckpt_path", str(folder_run_here), *data, data_dir=data_dir)
    assert "\n" not in str(err.value.code)
    assert sorted(p.name for p in run.iterdir()) == before


def test_cifar10_trains_and_tests_from_the_checkpoint(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    write_cifar(data_dir)
    cifar = ["--data", "CIFAR10DataModule", "--data.val_size", "20", "--model.likelihood", "logistic"]
    run_cli("fit", *cifar, "--trainer.max_epochs", "1", data_dir=data_dir)
    ckpt = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    cli = run_cli("test", "--ckpt_path", str(ckpt), "--model.iw_samples", "2", data_dir=data_dir)
    assert isinstance(cli.datamodule, CIFAR10DataModule) and cli.datamodule.image_shape == (3, 32, 32)
    assert len(cli.datamodule.test_set) == CIFAR_PER_BATCH and "test/nll_bpd" in cli.trainer.callback_metrics


def test_a_size_the_architecture_cannot_take_is_one_line_before_a_run_exists(folder, tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    folder_options = ["--data", "ImageFolderDataModule", "--data.root", str(folder), "--data.image_size", "10"]
    with pytest.raises(SystemExit) as err:
        run_cli("fit", *folder_options, "--data.val_size", "10", "--model.arch", "conv", data_dir=data_dir)
    assert "10x10" in str(err.value.code) and "\n" not in str(err.value.code)
    assert not (tmp_path / "lightning_logs").exists() and not (data_dir / "image_folder_cache").exists()
