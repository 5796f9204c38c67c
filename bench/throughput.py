"""How close is the project to a bare PyTorch loop? Prints ratios measured in one run.

    python bench/throughput.py                      # CPU, 784-400-20 and 784-512-20, batch 128
    python bench/throughput.py --accelerator gpu --batch_sizes 128 1024

For each network it runs, `--rounds` times: a real `fit` of the project (VAEModule, MNISTDataModule
and the Trainer built by the same CLI as `python train.py`, with its callbacks, TensorBoard logger,
progress bar and checkpoints), then the same module in a `Trainer` with every feature off (what
Lightning's loop costs by itself). Each training epoch of either is followed at once by one epoch
of a bare loop (same model, loss and optimiser, batches sliced from one in-memory uint8 tensor), and
the ratio is taken per pair: a shared machine's speed drifts by tens of percent within a minute, and
a pair seconds apart sees the same speed. Each fit's first epoch is a warm-up and is not counted;
the table shows medians, and the lines below it the same in milliseconds per step: what the project
and Lightning alone add to a bare step (with `--hidden_dims 1` that is nearly all framework cost).

On a GPU all three keep the images on the GPU and slice each batch there (the project's
`--data.on_device auto`; checked before the numbers are kept), so they compare like with like.

Then it runs `python train.py --trainer.max_epochs 1` as a user would, and reports the time from
the command to the first training step and the peak resident memory of the process (and on a GPU
its peak GPU memory, as PyTorch's allocator counts it).
"""

import argparse
import atexit
import math
import os
import re
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
from vae.module import VAEModule  # noqa: E402


class BareLoop:
    """The loop a careful person writes by hand: no framework, no logging, no checkpoints."""

    def __init__(self, hidden: int, batch_size: int, device: torch.device, images: torch.Tensor) -> None:
        module = VAEModule(hidden_dim=hidden).to(device)  # for the same network and optimiser, not for Lightning
        self.model, self.optimizer = module.model, module.configure_optimizers()
        self.images, self.batch_size, self.device = images.to(device), batch_size, device
        self.order = torch.Generator(device).manual_seed(0)

    def epoch(self) -> float:
        """Seconds for one shuffled pass over the images."""
        _synchronize(self.device)
        start = time.perf_counter()
        order = torch.randperm(len(self.images), device=self.device, generator=self.order)
        for i in range(0, len(self.images), self.batch_size):
            x = self.images.index_select(0, order[i : i + self.batch_size]).float().div_(255)  # (B, 1, 28, 28)
            logits, mu, logvar = self.model(x)
            loss = negative_elbo(logits, x, mu, logvar)[0].mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        _synchronize(self.device)
        return time.perf_counter() - start


class PairedClock(Callback):
    """Times each training epoch (up to validation) and each whole epoch (with validation) of a fit,
    then runs one epoch of the bare loop, so each fit's epoch has a bare epoch seconds apart."""

    def __init__(self, bare: BareLoop) -> None:
        self.bare = bare
        self.train: list[float] = []
        self.whole: list[float] = []
        self.bare_times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _synchronize(pl_module.device)
        self._start = time.perf_counter()
        self._train_done = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            _synchronize(pl_module.device)
            self._train_done = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _synchronize(pl_module.device)
        end = time.perf_counter()
        self.train.append((self._train_done or end) - self._start)
        self.whole.append(end - self._start)
        self.bare_times.append(self.bare.epoch())

    def counted(self, column: str) -> list[float]:
        """A column with the warm-up epoch left out: "train", "whole" or "bare" seconds, or per pair
        "ratio" (fit epoch / bare epoch) or "overhead" (fit epoch - bare epoch, seconds)."""
        train, bare = self.train[1:], self.bare_times[1:]
        if column == "ratio":
            return [fit / loop for fit, loop in zip(train, bare, strict=True)]
        if column == "overhead":
            return [fit - loop for fit, loop in zip(train, bare, strict=True)]
        return {"train": train, "whole": self.whole[1:], "bare": bare}[column]


def _peak_rss_kib() -> int:
    """This process's peak resident memory (Linux). Not `getrusage`'s ru_maxrss: a process started
    by fork and exec inherits there the peak of its parent, this large benchmark process."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ChildReport(Callback):
    """Injected into a `python train.py` subprocess: prints the wall clock at its first step, and
    its own peak resident memory as the process exits, so everything after training (the end-of-fit
    pictures, the last checkpoint) counts too."""

    def __init__(self) -> None:
        atexit.register(lambda: print(f"PEAK_RSS_KIB {_peak_rss_kib()}"))
        if torch.cuda.is_available():
            atexit.register(lambda: print(f"PEAK_GPU_MIB {torch.cuda.max_memory_allocated() / 2**20:.0f}"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            print(f"FIRST_STEP_AT {time.time()}", flush=True)


def project_fit(
    hidden: int, batch_size: int, epochs: int, accelerator: str, data_dir: str, bare: BareLoop
) -> PairedClock:
    """The project as `python train.py` runs it: the same CLI, callbacks, logger and checkpoints."""
    args = [f"--model.hidden_dim={hidden}", f"--data.batch_size={batch_size}", f"--data.data_dir={data_dir}"]
    args += [f"--trainer.max_epochs={epochs}", f"--trainer.accelerator={accelerator}", "--trainer.devices=1"]
    cli = VAECLI(args=args, run=False)
    clock = PairedClock(bare)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    _check_data_beside(cli.datamodule, bare)
    return clock


def lightning_fit(
    hidden: int, batch_size: int, epochs: int, accelerator: str, data_dir: str, bare: BareLoop
) -> PairedClock:
    """The same module and data in a `Trainer` with every feature off (no logger, checkpoints,
    progress bar, summary or callbacks): the cost of Lightning's training loop alone."""
    seed_everything(0)
    clock = PairedClock(bare)
    trainer = Trainer(
        max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
    )  # fmt: skip
    datamodule = MNISTDataModule(data_dir=data_dir, batch_size=batch_size)
    trainer.fit(VAEModule(hidden_dim=hidden), datamodule=datamodule)
    _check_data_beside(datamodule, bare)
    return clock


def _check_data_beside(datamodule: MNISTDataModule, bare: BareLoop) -> None:
    """A fit and the bare loop compare like with like only if both slice batches on the same device."""
    where = datamodule.train_set.images.device
    if where.type != bare.images.device.type:
        raise RuntimeError(f"the fit's data is on {where}, the bare loop's on {bare.images.device}: not comparable")


def startup_and_memory(data_dir: str, accelerator: str) -> tuple[float, float, float | None]:
    """Seconds from launching `python train.py` to its first step, its peak RSS in GiB and (on a
    GPU) the peak GPU memory its tensors took, in MiB."""
    with tempfile.TemporaryDirectory() as cwd:
        cmd = [sys.executable, str(REPO / "train.py"), "--trainer.max_epochs=1", f"--data.data_dir={data_dir}"]
        cmd += [f"--trainer.accelerator={accelerator}", "--trainer.callbacks+=throughput.ChildReport"]
        # bench/ for ChildReport, before whatever PYTHONPATH holds (packages installed outside the venv, say)
        paths = [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        launched = time.time()
        child = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        if child.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
        out = child.stdout
    first_step = float(re.search(r"FIRST_STEP_AT (\S+)", out).group(1))
    peak_kib = int(re.search(r"PEAK_RSS_KIB (\d+)", out).group(1))
    gpu = re.search(r"PEAK_GPU_MIB (\d+)", out)
    return first_step - launched, peak_kib / 2**20, float(gpu.group(1)) if gpu else None


def _median(clocks: list[PairedClock], column: str) -> float:
    return statistics.median(value for clock in clocks for value in clock.counted(column))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--hidden_dims", type=int, nargs="+", default=[400, 512])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (the first is a warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="fits of each kind per network")
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
                project, lightning = [], []
                for _ in range(args.rounds):
                    for fit, clocks in ((project_fit, project), (lightning_fit, lightning)):
                        bare = BareLoop(hidden, batch_size, device, dm.train_set.images)
                        clocks.append(fit(hidden, batch_size, args.epochs, args.accelerator, data_dir, bare))
                rows.append((hidden, batch_size, project, lightning))

    n = len(dm.train_set)
    print(f"\n{'network':<12}{'batch':>6}{'project s/ep':>14}{'+val s/ep':>11}{'bare s/ep':>11}{'project img/s':>15}"
          f"{'bare img/s':>12}{'ratio':>8}{'Lightning s/ep':>16}{'Lightning ratio':>17}")  # fmt: skip
    for hidden, batch_size, project, lightning in rows:
        fit, whole, bare, ratio = (_median(project, column) for column in ("train", "whole", "bare", "ratio"))
        alone, alone_ratio = _median(lightning, "train"), _median(lightning, "ratio")
        print(f"{f'784-{hidden}-20':<12}{batch_size:>6}{fit:>14.2f}{whole:>11.2f}{bare:>11.2f}{n / fit:>15.0f}"
              f"{n / bare:>12.0f}{ratio:>8.3f}{alone:>16.2f}{alone_ratio:>17.3f}")  # fmt: skip
    print("ratio = project training epoch / the bare-loop epoch run right after it (median; target <= 1.10)")
    print("Lightning = the same module in a Trainer with every feature off, paired the same way")
    for hidden, batch_size, project, lightning in rows:
        steps = math.ceil(n / batch_size)
        bare, extra, alone = (1e3 * _median(clocks, column) / steps for clocks, column in
                              ((project, "bare"), (project, "overhead"), (lightning, "overhead")))  # fmt: skip
        print(f"784-{hidden}-20, batch {batch_size}: a bare step takes {bare:.2f} ms; the project adds {extra:.2f} ms "
              f"per step, Lightning alone {alone:.2f} ms")  # fmt: skip

    if device.type == "cuda":
        print(f"peak GPU memory of these fits: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    startup, peak, gpu_peak = startup_and_memory(data_dir, args.accelerator)
    gpu = f", peak GPU memory {gpu_peak:.0f} MiB" if gpu_peak is not None else ""
    print(f"\npython train.py --trainer.max_epochs 1: first training step after {startup:.1f} s, "
          f"peak resident memory {peak:.2f} GiB{gpu}")  # fmt: skip


if __name__ == "__main__":
    main()
