"""Which GPU speed options to use: each one's epoch time, test loss and peak GPU memory, in one run.

    python bench/speed_options.py                       # on a GPU: every variant, 10 epochs each
    python bench/speed_options.py --variants float32 tf32 --epochs 30

Each variant is a real fit of the default model through the same CLI as `python train.py` (its
callbacks, logger and checkpoints), then `test` of its final weights, in this one process. A
variant is a set of command-line options:

    float32          the defaults (the reference)
    float32-seed1    the defaults with another seed: how far test/loss moves by chance alone
    tf32             --model.matmul_precision high (TF32 matrix products)
    bf16-mixed       --trainer.precision bf16-mixed
    compile          --model.compile true
    compile-graphs   --model.compile reduce-overhead (CUDA graphs)
    graphs-tf32      both of the last two and tf32

A variant may become a default on GPUs only if it is faster and its test/loss differs from
float32's by no more than float32-seed1's does (seed noise). The first epoch includes compiling,
so epoch times are medians of the later epochs; the fit column is the whole fit, compile included.
Every variant is tested at float32 (32-true), so test/loss compares what training did. Peak GPU
memory is that of the variant's fit alone: earlier variants' compiled code and CUDA-graph pools are
released before it starts. Variants run in the order given, the cold compiles last by default, so
a time limit cuts those first; each row prints as its variant ends.
"""

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vae.cli import VAECLI  # noqa: E402

VARIANTS = {
    "float32": [],
    "float32-seed1": ["--seed_everything=1"],
    "tf32": ["--model.matmul_precision=high"],
    "bf16-mixed": ["--trainer.precision=bf16-mixed"],
    "compile": ["--model.compile=true"],
    "compile-graphs": ["--model.compile=reduce-overhead"],
    "graphs-tf32": ["--model.compile=reduce-overhead", "--model.matmul_precision=high"],
}


class EpochClock(Callback):
    """Seconds of each training epoch, up to its validation (the device synchronised at both ends)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            _synchronize(pl_module.device)
            self.seconds.append(time.perf_counter() - self._start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(options: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Fit then test one variant; its epoch times, test/loss and peak GPU memory."""
    cli_args = [
        f"--data.data_dir={args.data_dir}", f"--trainer.max_epochs={args.epochs}",
        f"--trainer.accelerator={args.accelerator}", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
        "--model.iw_samples=0", *options,
    ]  # fmt: skip
    if args.limit_batches:
        cli_args += [f"--trainer.limit_{split}_batches={args.limit_batches}" for split in ("train", "val", "test")]
    if args.hidden_dim:
        cli_args.append(f"--model.hidden_dim={args.hidden_dim}")
    cuda = args.accelerator == "gpu"
    if cuda:  # what earlier variants left (compiled code, CUDA-graph pools, cached blocks) goes first
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        left_over = torch.cuda.memory_allocated()
    started = time.perf_counter()
    cli = VAECLI(args=cli_args, run=False)
    clock = EpochClock()
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() - left_over) / 2**20 if cuda else float("nan")
    # A Trainer of its own (the fit's TensorBoard writer is closed once the fit ends), at float32 for
    # every variant: test/loss then differs only by what training did, not by evaluation rounding.
    tester = Trainer(
        accelerator=args.accelerator, devices=1, precision="32-true", logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    (metrics,) = tester.test(cli.model, datamodule=cli.datamodule, verbose=False)
    later = clock.seconds[1:] or clock.seconds
    return {
        "epoch": statistics.median(later),
        "first": clock.seconds[0],
        "fit": fit,
        "test_loss": metrics["test/loss"],
        "peak_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"], help="cpu: to try this script")
    parser.add_argument("--data_dir", default=str(REPO / "data"))
    parser.add_argument("--limit_batches", type=int, default=0, help="batches per epoch and split (0: all)")
    parser.add_argument("--hidden_dim", type=int, default=0, help="0: the default network")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())

    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU"
    print(f"speed options: {device}; torch {torch.__version__}; {args.epochs} epochs per variant", flush=True)
    print("| variant | s/epoch | 1st epoch s | fit s | test/loss | - float32 | peak GPU MiB |", flush=True)
    print("|---|---|---|---|---|---|---|", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as logs:
        for name in args.variants:
            previous = Path.cwd()
            try:
                os.chdir(tempfile.mkdtemp(dir=logs))  # each variant's run in its own folder, not in the repository
                results[name] = r = run_variant(VARIANTS[name], args)
            except Exception as err:  # one variant failing (e.g. a compile error) must not hide the others
                print(f"{name}: FAILED: {type(err).__name__}: {err}", flush=True)
                continue
            finally:
                os.chdir(previous)
            reference = results.get("float32", r)["test_loss"]
            print(f"| {name} | {r['epoch']:.3f} | {r['first']:.2f} | {r['fit']:.1f} | {r['test_loss']:.3f} "
                  f"| {r['test_loss'] - reference:+.3f} | {r['peak_mib']:.0f} |", flush=True)  # fmt: skip
    if "float32" in results and "float32-seed1" in results:
        noise = abs(results["float32-seed1"]["test_loss"] - results["float32"]["test_loss"])
        print(f"seed noise: |test/loss(seed 1) - test/loss(seed 0)| = {noise:.3f} nats, float32, one pair of seeds")


if __name__ == "__main__":
    main()
