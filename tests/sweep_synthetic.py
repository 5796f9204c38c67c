"""`python sweep.py` on the tests' synthetic MNIST, for tests that need a real separate worker process
(run from a working directory whose `data/MNIST/raw/` holds `conftest.synthetic_files()`)."""

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sweep  # noqa: E402
from tests.conftest import synthetic_files  # noqa: E402
from tests.train_synthetic import no_network  # noqa: E402
from vae import mnist_files  # noqa: E402

if __name__ == "__main__":
    mnist_files.MD5 = {name: hashlib.md5(content).hexdigest() for name, content in synthetic_files().items()}
    mnist_files.FETCHERS = (no_network,)
    sweep.main()
