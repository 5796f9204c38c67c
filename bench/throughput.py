"""How close is the project to a bare PyTorch loop? Prints ratios measured in one run.

    python bench/throughput.py                      # CPU, 784-400-20 and 784-512-20, batch 128
    python bench/throughput.py --accelerator gpu --batch_sizes 128 1024

For each network it alternates, `--rounds` times: a real `fit` of the project (VAEModule,
MNISTDataModule and the Trainer built by the same CLI as `python train.py`, with its callbacks,
TensorBoard logger, progress bar and checkpoints), the same module in a `Trainer` with every
feature off (what Lightning's loop costs by itself), then the same number of epochs of a bare loop
(same model, loss and optimiser, batches sliced from one in-memory uint8 tensor). Each fit's
first epoch is a warm-up and is not counted; medians of the rest are compared.

Then it runs `python train.py --trainer.max_epochs 1` as a user would, and reports the time from
the command to the first training step and the peak resident memory of the process.
"""

import argparse
import atexit
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vae.cli import VAECLI  # noqa: E402
from vae.data import MNISTDataModule  # noqa: E402
from vae.elbo import negative_elbo  # noqa: E402
from vae.model import VAE  # noqa: E402
from vae.module import VAEModule  # noqa: E402


class EpochClock(Callback):
    """Seconds of each training epoch (to validation) and of each whole epoch (with validation)."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.whole: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self._train_done = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._train_done = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        end = time.perf_counter()
        self.train.append((self._train_done or end) - self._start)
        self.whole.append(end - self._start)


class ChildReport(Callback):
    """Injected into a `python train.py` subprocess: prints the wall clock at its first step, and
    its own peak resident memory as the process exits, so everything after training (the end-of-fit
    pictures, the last checkpoint) counts too. (The parent's RUSAGE_CHILDREN would also count the
    moment the child was forked from this large process.)"""

    def __init__(self) -> None:
        atexit.register(lambda: print(f"PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            print(f"FIRST_STEP_AT {time.time()}", flush=True)


def project_epochs(
    hidden: int, batch_size: int, epochs: int, accelerator: str, data_dir: str, extra: tuple[str, ...] = ()
) -> EpochClock:
    args = [*extra, f"--model.hidden_dim={hidden}", f"--data.batch_size={batch_size}", f"--data.data_dir={data_dir}"]
    args += [f"--trainer.max_epochs={epochs}", f"--trainer.accelerator={accelerator}", "--trainer.devices=1"]
    cli = VAECLI(args=args, run=False)
    clock = EpochClock()
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return clock


def lightning_epochs(hidden: int, batch_size: int, epochs: int, accelerator: str, data_dir: str) -> list[float]:
    """The same module and data in a `Trainer` with every feature off (no logger, checkpoints,
    progress bar, summary or callbacks): the cost of Lightning's training loop alone."""
    seed_everything(0)
    clock = EpochClock()
    trainer = Trainer(
        max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
    )  # fmt: skip
    trainer.fit(VAEModule(hidden_dim=hidden), datamodule=MNISTDataModule(data_dir=data_dir, batch_size=batch_size))
    return clock.train


def bare_epochs(hidden: int, batch_size: int, epochs: int, device: torch.device, images: torch.Tensor) -> list[float]:
    """The loop a careful person writes by hand: no framework, no logging, no checkpoints."""
    torch.manual_seed(0)
    module = VAEModule(hidden_dim=hidden).to(device)  # for the same network and optimiser, not for Lightning
    model, optimizer = module.model, module.configure_optimizers()
    images = images.to(device)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(images), device=device)
        for i in range(0, len(images), batch_size):
            x = images.index_select(0, order[i : i + batch_size]).unsqueeze(1).float().div_(255)  # as the project
            loss = negative_elbo(*_pass(model, x))[0].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _pass(model: VAE, x: torch.Tensor):
    logits, mu, logvar = model(x)
    return logits, x, mu, logvar


def startup_and_memory(data_dir: str, accelerator: str) -> tuple[float, float]:
    """Seconds from launching `python train.py` to its first step, and its peak RSS in GiB."""
    with tempfile.TemporaryDirectory() as cwd:
        cmd = [sys.executable, str(REPO / "train.py"), "--trainer.max_epochs=1", f"--data.data_dir={data_dir}"]
        cmd += [f"--trainer.accelerator={accelerator}", "--trainer.callbacks+=throughput.ChildReport"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
        launched = time.time()
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout
    first_step = float(re.search(r"FIRST_STEP_AT (\S+)", out).group(1))
    peak_kib = int(re.search(r"PEAK_RSS_KIB (\d+)", out).group(1))  # Linux reports KiB
    return first_step - launched, peak_kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--hidden_dims", type=int, nargs="+", default=[400, 512])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (the first is a warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="times project and bare loop alternate")
    parser.add_argument("--data_dir", default=str(REPO / "data"))
    args = parser.parse_args()

    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    data_dir = str(Path(args.data_dir).resolve())
    dm = MNISTDataModule(data_dir=data_dir)
    dm.prepare_data()
    dm.setup("fit")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {len(dm.train_set)} training images per epoch")

    rows = []
    with tempfile.TemporaryDirectory() as logs:
        os.chdir(logs)  # the project's runs land here, not in the repository
        for batch_size in args.batch_sizes:
            for hidden in args.hidden_dims:
                project, whole, lightning, bare = [], [], [], []
                for _ in range(args.rounds):
                    clock = project_epochs(hidden, batch_size, args.epochs, args.accelerator, data_dir)
                    project += clock.train[1:]
                    whole += clock.whole[1:]
                    lightning += lightning_epochs(hidden, batch_size, args.epochs, args.accelerator, data_dir)[1:]
                    bare += bare_epochs(hidden, batch_size, args.epochs, device, dm.train_set.images)[1:]
                medians = [statistics.median(times) for times in (project, whole, lightning, bare)]
                rows.append((hidden, batch_size, *medians))

    n = len(dm.train_set)
    print(f"\n{'network':<12}{'batch':>6}{'project s/ep':>14}{'+val s/ep':>11}{'Lightning s/ep':>16}{'bare s/ep':>11}"
          f"{'project img/s':>15}{'bare img/s':>12}{'ratio':>8}{'Lightning ratio':>17}")  # fmt: skip
    for hidden, batch_size, project, whole, lightning, bare in rows:
        print(f"{f'784-{hidden}-20':<12}{batch_size:>6}{project:>14.2f}{whole:>11.2f}{lightning:>16.2f}{bare:>11.2f}"
              f"{n / project:>15.0f}{n / bare:>12.0f}{project / bare:>8.3f}{lightning / bare:>17.3f}")  # fmt: skip
    print("ratio = project training epoch / bare loop epoch (medians; target <= 1.10)")
    print("Lightning ratio = the same module in a Trainer with every feature off / bare loop")

    startup, peak = startup_and_memory(data_dir, args.accelerator)
    print(f"\npython train.py --trainer.max_epochs 1: first training step after {startup:.1f} s, "
          f"peak resident memory {peak:.2f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
