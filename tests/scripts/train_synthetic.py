"""`python train.py` on the tests' synthetic MNIST, for tests that need a real separate process.

Run from a working directory whose `data/MNIST/raw/` holds `tests.helpers.synthetic_files()`: their
checksums are the ones that count, and fetching is refused, as in the in-process tests.

For tests/test_fault.py, which kills it at steps it chooses:
- with `STEP_LOG=FILE` in the environment, the run appends its global step to FILE, one line per
  training batch, once that batch's hooks (and the checkpoint due after it) are done;
- with `SIGKILL_IN_WRITE_AT_STEP=N`, it SIGKILLs its process group half-way through writing the
  checkpoint of step N (tests/scripts/ddp_train.py's hook): start it in a session of its own.
"""

import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import synthetic_files  # noqa: E402
from tests.scripts.ddp_train import sigkill_all_ranks_inside_the_write_at  # noqa: E402
from vae import cli  # noqa: E402
from vae.checkpoints import SafeCheckpointIO  # noqa: E402
from vae.data import mnist as mnist_files  # noqa: E402
from vae.module import VAEModule  # noqa: E402


def no_network(names, dest) -> None:
    raise SystemExit(f"train_synthetic.py: refusing to fetch {list(names)}; write the synthetic files first")


def log_steps_to(path: str):
    """A `LightningModule.on_train_batch_end` that appends the global step to `path`. Lightning calls
    the module's hook after the callbacks', so the checkpoint of that step, if one was due, is written."""

    def on_train_batch_end(self: VAEModule, *args) -> None:
        with open(path, "a") as f:
            f.write(f"{self.global_step}\n")

    return on_train_batch_end


if __name__ == "__main__":
    mnist_files.MD5 = {name: hashlib.md5(content).hexdigest() for name, content in synthetic_files().items()}
    mnist_files.FETCHERS = (no_network,)
    if "STEP_LOG" in os.environ:
        VAEModule.on_train_batch_end = log_steps_to(os.environ["STEP_LOG"])
    if "SIGKILL_IN_WRITE_AT_STEP" in os.environ:
        step = int(os.environ["SIGKILL_IN_WRITE_AT_STEP"])
        SafeCheckpointIO.save_checkpoint = sigkill_all_ranks_inside_the_write_at(step)
    cli.main()
