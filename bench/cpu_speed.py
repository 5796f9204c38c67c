"""What makes a training step of the CPU recipe faster: each option's time per step as a ratio against
the recipe as it runs today, all measured in one run.

    python bench/cpu_speed.py                                  # every variant, 3 rounds
    python bench/cpu_speed.py --steps 40 --warmup 10 --rounds 1  # a quick try

The model and data are those of `configs/cpu_30min.yaml` (two stochastic layers, MLP 784-512,
dynamically binarised MNIST, batch 128). A variant is one change to how its steps run:

    recipe           `python train.py --config configs/cpu_30min.yaml` as it is: the reference (1.00)
    no-progress-bar  --trainer.enable_progress_bar false
    compile          --model.compile true (torch.compile of the ELBO step: Inductor's C++ code on a CPU)
    bf16-mixed       --trainer.precision bf16-mixed (fast only where the CPU has bfloat16 instructions)
    threads-1        torch.set_num_threads(1) (PyTorch's default is a thread per core)
    plain-loop       the same model, loss, data and fused Adam in a plain PyTorch loop, no Trainer:
                     the most that fewer Python steps per batch could gain
    plain-foreach    the plain loop with Adam(foreach=True) in place of fused
    plain-for-loop   the plain loop with Adam(foreach=False), PyTorch's default on a CPU

Each variant times steps `warmup` to `steps` of a fresh run (the first steps, and compiling, are
left out). Rounds run every variant in turn (A B C ... A B C ...), so a machine slowing down
part-way through slows every variant alike; the table gives each variant's median over the rounds
and its ratio to the recipe's median. A ratio is meaningful only beside the spread of the recipe's
own rounds, printed under the table.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vae.cli import VAECLI  # noqa: E402

TRAINER = {
    "recipe": [],
    "no-progress-bar": ["--trainer.enable_progress_bar=false"],
    "compile": ["--model.compile=true"],
    "bf16-mixed": ["--trainer.precision=bf16-mixed"],
    "threads-1": [],
}
PLAIN = {"plain-loop": {"fused": True}, "plain-foreach": {"foreach": True}, "plain-for-loop": {"foreach": False}}
VARIANTS = [*TRAINER, *PLAIN]


class StepClock(Callback):
    """Seconds from the start of step `first` to the end of step `last` (global steps)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.seconds = first, last, float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.first:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.last:  # global_step counts the step just taken
            self.seconds = time.perf_counter() - self._start


def _cli(args: argparse.Namespace, options: list[str]) -> VAECLI:
    return VAECLI(
        args=[
            f"--config={REPO / 'configs' / 'cpu_30min.yaml'}", f"--data.data_dir={args.data_dir}",
            f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0", *options,
        ],
        run=False,
    )  # fmt: skip


def trainer_ms_per_step(name: str, args: argparse.Namespace) -> float:
    """A fit through the CLI, as `train.py` runs it, with the variant's options."""
    cli = _cli(args, TRAINER[name])
    clock = StepClock(args.warmup, args.steps)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return 1000 * clock.seconds / (args.steps - args.warmup)


def plain_ms_per_step(name: str, args: argparse.Namespace) -> float:
    """The recipe's model, loss and batches in a loop of plain PyTorch: no Trainer, callbacks or logging."""
    cli = _cli(args, [])
    module, data = cli.model, cli.datamodule
    data.setup("fit")
    optimizer = torch.optim.Adam(module.parameters(), lr=module.hparams.lr, **PLAIN[name])
    batches = iter(data.train_dataloader())
    for step in range(args.steps):
        if step == args.warmup:
            start = time.perf_counter()
        x, _ = data.on_after_batch_transfer(next(batches), 0)
        loss = module._negative_elbo(x)[0].mean()  # what `training_step` minimises for this recipe
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return 1000 * (time.perf_counter() - start) / (args.steps - args.warmup)


def measure(name: str, args: argparse.Namespace) -> float:
    threads = torch.get_num_threads()
    previous = Path.cwd()
    os.chdir(tempfile.mkdtemp(dir=args.logs))  # each run's logs in a folder of its own, not in the repository
    try:
        if name == "threads-1":
            torch.set_num_threads(1)
        return (plain_ms_per_step if name in PLAIN else trainer_ms_per_step)(name, args)
    finally:
        torch.set_num_threads(threads)
        os.chdir(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=400, help="steps per run (an epoch of the recipe is 430)")
    parser.add_argument("--warmup", type=int, default=100, help="first steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data_dir", default=str(REPO / "data"))
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error(f"--warmup must be between 0 and --steps ({args.steps}), got {args.warmup}")
    args.data_dir = str(Path(args.data_dir).resolve())
    variants = ["recipe", *(v for v in args.variants if v != "recipe")]  # the reference always runs

    print(f"CPU speed: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"steps {args.warmup}-{args.steps} timed, {args.rounds} rounds", flush=True)  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as logs:
        args.logs = logs
        for round_ in range(args.rounds):
            for name in variants:
                times[name].append(measure(name, args))
                print(f"round {round_ + 1}: {name}: {times[name][-1]:.2f} ms/step", flush=True)
    reference = statistics.median(times["recipe"])
    print("| variant | ms/step (median) | every round | recipe / variant |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {median:.2f} | {rounds} | {reference / median:.2f}x |")
    spread = (max(times["recipe"]) - min(times["recipe"])) / reference
    print(f"the recipe's own rounds spread over {100 * spread:.0f}% of its median")


if __name__ == "__main__":
    main()
