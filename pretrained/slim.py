"""A checkpoint without what only training needs: the weights, the options, the random states.

    python pretrained/slim.py RUN/checkpoints/best-epochNNN.ckpt pretrained/NAME.ckpt

Drops the optimiser's moments (twice the weights), the schedulers, the loops' and callbacks' states:
what `--ckpt_path` needs to resume a run. Keeps the weights, the model's and the data's options and
the random states, so `python train.py test --ckpt_path pretrained/NAME.ckpt` draws the same test
samples as the full checkpoint did and gives the same numbers; `sample.py`, `report.py` and
`export.py` read it as any other. Loaded with `weights_only=True`, like every checkpoint here.
"""

import argparse
import sys
from pathlib import Path

import torch

TRAINING_ONLY = ("optimizer_states", "lr_schedulers", "loops")


def slim(source: Path, target: Path) -> dict:
    """Write `source` without `TRAINING_ONLY` to `target`; return what was kept."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    kept = {key: value for key, value in checkpoint.items() if key not in TRAINING_ONLY}
    # the callbacks' own states (which checkpoint was best) are the run's; the key stays, empty, because
    # Lightning calls the callbacks' `on_load_checkpoint` (which restores the random states) only when it is there
    kept["callbacks"] = {}
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(kept, target)
    return kept


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a checkpoint written by train.py")
    parser.add_argument("target", type=Path, help="where to write the slim copy")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        sys.exit(f"error: {args.source} is not a file: give a checkpoint written by train.py.")
    slim(args.source, args.target)
    print(f"{args.target}: {args.target.stat().st_size / 1e6:.1f} MB (was {args.source.stat().st_size / 1e6:.1f} MB)")
    return args.target


if __name__ == "__main__":
    main()
