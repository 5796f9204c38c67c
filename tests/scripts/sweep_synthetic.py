"""`python sweep.py` on the tests' synthetic MNIST, for tests that need a real separate worker process
(run from a working directory whose `data/MNIST/raw/` holds `tests.helpers.synthetic_files()`).

With `--stall_after_an_epoch` first, the worker's trials hang once their first epoch is done (its
checkpoint written; heartbeats still beating), after writing the file `stalled`: a worker stuck in
the middle of a trial, for a test to SIGKILL at a moment it knows, however slow the machine.
"""

import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch import Callback  # noqa: E402

import sweep  # noqa: E402
from tests.helpers import synthetic_files  # noqa: E402
from tests.scripts.train_synthetic import no_network  # noqa: E402
from vae.data import mnist as mnist_files  # noqa: E402


class Stall(Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            return
        Path("stalled").write_text(trainer.log_dir)
        while True:
            time.sleep(1)


def stalling(instantiate_trainer):
    def instantiate_trainer_that_stalls(self, **kwargs):
        trainer = instantiate_trainer(self, **kwargs)
        trainer.callbacks.append(Stall())
        return trainer

    return instantiate_trainer_that_stalls


if __name__ == "__main__":
    mnist_files.MD5 = {name: hashlib.md5(content).hexdigest() for name, content in synthetic_files().items()}
    mnist_files.FETCHERS = (no_network,)
    if sys.argv[1] == "--stall_after_an_epoch":
        del sys.argv[1]
        sweep.TrialCLI.instantiate_trainer = stalling(sweep.TrialCLI.instantiate_trainer)
    sweep.main()
