"""The report and the run's own logger: the training curves read from it, the report's numbers and
pictures written into it (TensorBoard events, else metrics.csv), at the checkpoint's step."""

import csv
from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger

from vae.lightning_internals import ContinuingCSVLogger


def logged_curves(run: Path | None, tags: list[str]) -> tuple[dict[str, list[tuple[int, float]]], float | None]:
    """({tag: [(step, value)]}, seconds from the first to the last logged scalar) from the run's TensorBoard
    events, else its metrics.csv; ({}, None) when it has neither."""
    if run is None:
        return {}, None
    if any(run.glob("events.out.tfevents.*")):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
        events.Reload()
        found = {tag: events.Scalars(tag) for tag in tags if tag in events.Tags()["scalars"]}
        times = [e.wall_time for series in found.values() for e in series]
        curves = {tag: [(e.step, e.value) for e in series] for tag, series in found.items()}
        return curves, (max(times) - min(times)) if times else None
    if (run / "metrics.csv").is_file():
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return {tag: [(int(r["step"]), float(r[tag])) for r in rows if r.get(tag)] for tag in tags}, None
    return {}, None


def to_logger(run: Path | None, step: int, numbers: dict[str, float], pictures: dict[str, torch.Tensor]) -> str:
    """`numbers` as `report/<name>` scalars (and, to TensorBoard, `pictures` as `report/<name>` images) into
    the run's own logger files; says where."""
    if run is None:
        return "none (the checkpoint is not in a run's checkpoints/ folder)"
    if any(run.glob("events.out.tfevents.*")):
        logger = TensorBoardLogger(save_dir=str(run.parent), name="", version=run.name, default_hp_metric=False)
        for name, picture in pictures.items():
            logger.experiment.add_image(f"report/{name}", picture, step)
    elif (run / "metrics.csv").is_file():
        logger = ContinuingCSVLogger(save_dir=str(run.parent), name="", version=run.name)
    else:
        return "none (the run has neither TensorBoard events nor metrics.csv)"
    logger.log_metrics({f"report/{k}": v for k, v in numbers.items()}, step=step)
    logger.finalize("success")
    return f"{type(logger).__name__} in {run}"
