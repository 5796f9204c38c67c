"""The report's last two sections: the run's training curves, and its card (which checkpoint, model, data,
seeds, code, versions, device and times made these numbers)."""

import platform
import subprocess
from pathlib import Path

import lightning
import torch

from vae.report.page import Section, curves_svg, table

CURVES = {"loss (negative ELBO, nats)": ("train/loss", "val/loss"), "KL (nats)": ("val/kl",)}
CURVE_TAGS = [tag for tags in CURVES.values() for tag in tags]
REPO = Path(__file__).resolve().parents[2]


def training_curves(curves: dict[str, list[tuple[int, float]]]) -> Section:
    """`CURVES` as line charts, from the run's logged scalars ({tag: [(step, value)]})."""
    charts = "".join(curves_svg(title, {tag: curves.get(tag, []) for tag in tags}) for title, tags in CURVES.items())
    notes = [] if charts else ["The run has no logged scalars to draw."]
    return Section("curves", "Training curves", {}, notes=notes, html=charts)


def git_commit() -> str:
    """The commit of the code that made the report, with `+changes` when the work tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit.stdout.strip() + (" +changes" if dirty.stdout.strip() else "")


def run_seed(config: Path) -> int | None:
    """`seed_everything` of the run's config.yaml (the seed of its weights and batches)."""
    if not config.is_file():
        return None
    for line in config.read_text().splitlines():
        if line.startswith("seed_everything:"):
            value = line.split(":", 1)[1].strip()
            return int(value) if value.lstrip("-").isdigit() else None
    return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"


def run_card(numbers: dict, times: dict[str, float]) -> Section:
    """The card's table from its numbers (`card_numbers`), and the report's own time per section."""
    rows = [
        ("checkpoint", numbers["checkpoint"], ""),
        ("epoch", numbers["epoch"], "0-based, as in the checkpoint"),
        ("global step", numbers["global_step"], "optimiser steps"),
        ("run seed", numbers["run_seed"], "seed_everything of the run"),
        ("report seed", numbers["report_seed"], "draws the samples, the pictures' images and the importance samples"),
        ("commit", numbers["commit"], "of the code that made this report"),
        *((name, version, "") for name, version in numbers["versions"].items()),
        ("device", numbers["device"], "where the report ran"),
        ("training wall time (s)", numbers["training_wall_s"], "first to last logged scalar"),
        ("logged to", numbers["logged_to"], ""),
        *((f"time: {name} (s)", value, "this report") for name, value in times.items()),
    ]
    more = "<h3>model</h3>" + table([(k, v, "") for k, v in numbers["model"].items()])
    more += "<h3>data</h3>" + table([(k, v, "") for k, v in numbers["data"].items()])
    return Section("run", "Run card", numbers, rows, html=more)


def card_numbers(
    checkpoint: Path,
    run: Path | None,
    saved: dict,
    model: dict,
    data: dict,
    seed: int,
    device: torch.device,
    train_s: float | None,
) -> dict:
    """What identifies the numbers: the checkpoint, its run folder and its position (`saved`, the checkpoint's
    contents), the model's and the data's options, the seeds, the code, the versions, the device."""
    return {
        "checkpoint": str(checkpoint),
        "epoch": saved.get("epoch"),
        "global_step": saved.get("global_step"),
        "model": model,
        "data": data,
        "run_seed": run_seed(run / "config.yaml") if run is not None else None,
        "report_seed": seed,
        "commit": git_commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
        },
        "device": device_name(device),
        "training_wall_s": round(train_s, 1) if train_s is not None else None,
    }
