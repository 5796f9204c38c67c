"""`python train.py` on the tests' synthetic MNIST, for tests that need a real separate process.

Run from a working directory whose `data/MNIST/raw/` holds `conftest.synthetic_files()`: their
checksums are the ones that count, and fetching is refused, as in the in-process tests.
"""

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import synthetic_files  # noqa: E402
from vae import cli, mnist_files  # noqa: E402


def no_network(names, dest) -> None:
    raise SystemExit(f"train_synthetic.py: refusing to fetch {list(names)}; write the synthetic files first")


if __name__ == "__main__":
    mnist_files.MD5 = {name: hashlib.md5(content).hexdigest() for name, content in synthetic_files().items()}
    mnist_files.FETCHERS = (no_network,)
    cli.main()
