"""Per-seed records of a recipe run, and the results table over seeds: mean, spread, every value.

    python bench/recipe_table.py record --run_dir RUN --seed 0 --train_s 351.2 --test_s 96.0 --out seed0.json
    python bench/recipe_table.py table seed0.json seed1.json seed2.json

`record` reads what the run left (`test_metrics.json`, the epoch and step of `last.ckpt`: with
validation every 5 epochs, a run stopped by `max_time` trained up to 4 epochs past it) and the times
measured by `bench/gpu_recipe.sh`; `table` prints a Markdown table, one row per seed and a
last row with the mean and the sample standard deviation, so that records from separate device
sessions can be put together on any machine.
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

COLUMNS = ("seed", "epochs", "steps", "train_s", "test_s", "test/loss", "test/nll", "test/active_units")


def record(run_dir: Path, seed: int, train_s: float, test_s: float, device: str, stopped: str) -> dict:
    """One seed's row: its times, how far training got, and its test metrics (None where a step did not finish)."""
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    metrics_file = run_dir / "test_metrics.json"
    tested = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {"metrics": {}, "hparams": {}}
    return {
        "seed": seed,
        "epochs": last["epoch"] + 1,
        "steps": last["global_step"],
        "train_s": train_s,
        "test_s": test_s if tested["metrics"] else None,
        **{name: tested["metrics"].get(name) for name in COLUMNS[5:]},
        "iw_samples": tested["hparams"].get("iw_samples"),
        "device": device,
        "stopped": stopped,
        "run_dir": str(run_dir),
    }


def table(records: list[dict]) -> str:
    """Markdown: a row per seed, then mean +- sample standard deviation of each column (n >= 2)."""
    devices = ", ".join(sorted({r["device"] for r in records}))
    k = ", ".join(sorted({str(r["iw_samples"]) for r in records if r["iw_samples"] is not None}))
    lines = [
        f"device: {devices}; test/nll at k = {k}; training stopped by: {', '.join(r['stopped'] for r in records)}",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in records]
    if len(records) >= 2:
        summary = []
        for column in COLUMNS[1:]:
            values = [r[column] for r in records if r[column] is not None]
            summary.append(
                f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}" if len(values) >= 2 else "-"
            )
        lines.append(f"| mean +- sd (n={len(records)}) | " + " | ".join(summary) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "not done"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="write one seed's record as JSON")
    rec.add_argument("--run_dir", type=Path, required=True)
    rec.add_argument("--seed", type=int, required=True)
    rec.add_argument("--train_s", type=float, required=True)
    rec.add_argument("--test_s", type=float, required=True)
    rec.add_argument("--device", default="unknown")
    rec.add_argument("--stopped", default="unknown", help="what ended training: max_epochs or max_time")
    rec.add_argument("--out", type=Path, required=True)
    tab = commands.add_parser("table", help="print the table of some records")
    tab.add_argument("records", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "record":
        row = record(args.run_dir, args.seed, args.train_s, args.test_s, args.device, args.stopped)
        args.out.write_text(json.dumps(row, indent=2) + "\n")
    else:
        print(table([json.loads(path.read_text()) for path in args.records]))


if __name__ == "__main__":
    main()
