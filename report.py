"""A report on a trained VAE: how good its samples are, what its latents hold, what it finds unusual.

    python report.py --ckpt_path PATH [--data_dir DIR] [--ood SOURCE [--ood_option KEY=VALUE ...]]
                     [--iw_samples K] [--n_samples N] [--seed 0] [--classifier_dir DIR] [--out DIR]

writes into DIR (default: `<run>/report/` for a checkpoint in `<run>/checkpoints/`, else `report/`):

    index.html        the page: every number, picture and curve below, readable without TensorBoard
    report.json       every number on the page
    predictions.pt    `predict`'s file for the test set (mu, logvar, label, loss, nll, index), and
                      `ood_loss`, `ood_nll` for the out-of-distribution set when one is given
    *.png             the pictures

and sends the same scalars (`report/...`) and pictures to the run's TensorBoard events or metrics.csv,
at the checkpoint's step. The data are the checkpoint's own (its data source and options); the
files are read from `--data_dir` (default: the folder the run used). What each number means:
docs/report.md.
"""

import argparse
import csv
import importlib
import json
import platform
import subprocess
import time
from pathlib import Path

import lightning
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import save_image

from vae import report_page as html
from vae.callbacks import public
from vae.checkpoints import check_checkpoint, run_dir_of
from vae.data import datamodule_of_run
from vae.feature_net import cached_classifier, predicted_classes
from vae.latents import LatentUsage
from vae.lightning_internals import ContinuingCSVLogger
from vae.module import VAEModule
from vae.pictures import image_grid, points_scatter, reconstruction_grid, traversal_grid
from vae.report_metrics import (
    KNN_K,
    auroc,
    class_evenness,
    frechet_distance,
    knn_accuracy,
    linear_probe_accuracy,
    principal_components,
)

DATA_MODULES = "vae.data"  # where a data source named without a module is found
GRID = 64  # images in the prior, reconstruction and likelihood grids
TRAVERSAL = torch.linspace(-3, 3, 9)  # prior standard deviations along each traversed dimension
CURVES = {"loss (negative ELBO, nats)": ("train/loss", "val/loss"), "KL (nats)": ("val/kl",)}
REPO = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by train.py")
    parser.add_argument("--data_dir", help="where the run's data files are (default: the run's --data.data_dir)")
    parser.add_argument("--ood", help="an out-of-distribution data source: a data module class, e.g. MNISTDataModule")
    parser.add_argument(
        "--ood_option", action="append", default=[], metavar="KEY=VALUE", help="an option of --ood's class (repeat)"
    )
    parser.add_argument("--iw_samples", type=int, help="k for each image's NLL (default: the run's, 100)")
    parser.add_argument("--n_samples", type=int, help="prior samples for the Fréchet distance (default: test set size)")
    parser.add_argument("--seed", type=int, default=0, help="draws the samples and the importance samples")
    parser.add_argument(
        "--classifier_dir", help="where the feature classifier is cached (default: <data_dir>/report_classifiers)"
    )
    parser.add_argument("--out", help="output folder (default: the run's report/, else report/)")
    args = parser.parse_args(argv)
    if args.iw_samples is not None and args.iw_samples < 1:
        parser.error(f"--iw_samples must be at least 1 (each image's NLL needs samples), got {args.iw_samples}")
    if args.n_samples is not None and args.n_samples < 2:
        parser.error(f"--n_samples must be at least 2 (a Fréchet distance needs a covariance), got {args.n_samples}")
    for option in args.ood_option:
        if "=" not in option:
            parser.error(f"--ood_option takes KEY=VALUE, e.g. --ood_option data_dir=data; got {option!r}")
    if args.ood_option and not args.ood:
        parser.error("--ood_option needs --ood, the data source it is an option of")
    return args


def data_module(class_path: str, options: dict, what: str) -> LightningDataModule:
    """An instance of a data module class named by its import path (or by its name in vae.data)."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name or DATA_MODULES), name)
    except (ImportError, AttributeError):
        raise SystemExit(
            f"error: {what} {class_path!r} is not a data module: name a class of vae.data (e.g. MNISTDataModule) "
            "or give its full import path."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, LightningDataModule)):
        raise SystemExit(f"error: {what} {class_path!r} is not a LightningDataModule.")
    try:
        return cls(**options)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"error: {what} {class_path} does not take these options ({err}).") from None


def read(datamodule: LightningDataModule, what: str) -> None:
    """Every split into memory, as the data module stores it (before its transfer step); missing or
    unreadable files, or options that do not fit them, stop the report in one line."""
    try:
        datamodule.prepare_data()
        datamodule.setup("fit")
    except (ValueError, RuntimeError, OSError) as err:
        raise SystemExit(f"error: {what}: {err}") from None


def option_value(text: str) -> object:
    """A --ood_option value: a number, true/false, null or a JSON string when it parses as one, else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class Section:
    """Times what runs inside it, into `times` under `name` (seconds)."""

    def __init__(self, times: dict, name: str) -> None:
        self.times, self.name = times, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.times[self.name] = round(time.perf_counter() - self.start, 1)


@torch.no_grad()
def scores(module: VAEModule, datamodule: LightningDataModule, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """`predict_step` over the images in batches (the data module's transfer step first), concatenated."""
    device, size = module.device, datamodule.batch_size
    out = []
    for i, start in enumerate(range(0, len(images), size)):
        batch = (images[start : start + size].to(device), labels[start : start + size].to(device))
        out.append(module.predict_step(datamodule.on_after_batch_transfer(batch, 0), i))
    return {key: torch.cat([o[key] for o in out]).cpu() for key in out[0]}


def labelled(labels: torch.Tensor) -> bool:
    """Whether the data have classes to tell apart: at least two distinct labels, none negative (a folder of
    images without class subfolders has label -1)."""
    return bool(labels.min() >= 0) and len(labels.unique()) > 1


def git_commit() -> str:
    """The commit of the code that made the report, with `+changes` when the work tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit.stdout.strip() + (" +changes" if dirty.stdout.strip() else "")


def logged_curves(run: Path | None) -> tuple[dict[str, list[tuple[int, float]]], float | None]:
    """({tag: [(step, value)]}, seconds from the first to the last logged scalar) from the run's TensorBoard
    events, else its metrics.csv; ({}, None) when it has neither."""
    tags = [tag for group in CURVES.values() for tag in group]
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
    """The report's scalars (and, to TensorBoard, its pictures) into the run's own logger files; says where."""
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


def main(argv: list[str] | None = None) -> Path:
    """Compute everything, write the page, report.json, the pictures and predictions.pt; return their folder."""
    args = parse_args(argv)
    times: dict[str, float] = {}
    start = time.perf_counter()
    ckpt = Path(args.ckpt_path)
    saved = check_checkpoint(ckpt)  # one clear line for a missing or foreign file, before anything is written
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = VAEModule.load_from_checkpoint(ckpt, map_location=device, weights_only=True).eval()
    if args.iw_samples is not None:
        module.hparams.iw_samples = args.iw_samples
    k = module.hparams.iw_samples or 100  # a run that tested without test/nll still gets each image's NLL
    module.hparams.iw_samples = k
    model = module.model
    try:
        serving = {"data_dir": args.data_dir} if args.data_dir else {}
        datamodule = datamodule_of_run(saved.get("datamodule_hyper_parameters", {}), **serving)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"error: the run's data source: {err}") from None
    data_dir = Path(getattr(datamodule, "data_dir", "data"))  # a data source of your own may have none
    ood = None
    if args.ood:
        ood_options = dict(option.split("=", 1) for option in args.ood_option)
        ood_options = {key: option_value(value) for key, value in ood_options.items()}
        ood = data_module(args.ood, {"data_dir": str(data_dir)} | ood_options, "--ood")
    run = run_dir_of(ckpt)
    out = Path(args.out) if args.out else (run or Path()) / "report"
    torch.manual_seed(args.seed)

    with Section(times, "read data"):
        read(datamodule, "the run's data")
        train_images, train_labels = datamodule.train_set.images, datamodule.train_set.labels
        test_images, test_labels = datamodule.test_set.images, datamodule.test_set.labels

    def to_float(images: torch.Tensor) -> torch.Tensor:
        return datamodule.on_after_batch_transfer((images, torch.zeros(len(images))), 0)[0]

    x_test = to_float(test_images)
    if ood is not None:
        read(ood, "--ood")
        ood_images, ood_labels = ood.test_set.images, ood.test_set.labels
        x_ood_shape = ood.on_after_batch_transfer((ood_images[:1], ood_labels[:1]), 0)[0].shape[1:]
        if x_ood_shape != x_test.shape[1:]:
            raise SystemExit(
                f"error: --ood {args.ood} serves images of shape {tuple(x_ood_shape)} and the model takes "
                f"{tuple(x_test.shape[1:])}: choose a source of the run's image shape."
            )

    report: dict = {}
    pictures: dict[str, torch.Tensor] = {}
    with Section(times, "per-image scores"):
        predictions = scores(module, datamodule, test_images, test_labels)
        predictions["index"] = torch.arange(len(test_labels))
        if ood is not None:
            ood_scores = scores(module, ood, ood_images, ood_labels)
            predictions |= {"ood_loss": ood_scores["loss"], "ood_nll": ood_scores["nll"]}
    nll = predictions["nll"]
    likelihood = {
        "iw_samples": k,
        "test_loss": round(float(predictions["loss"].mean()), 2),
        "test_nll": round(float(nll.mean()), 2),
        "test_nll_sd": round(float(nll.std()), 2),
    }
    order = nll.argsort()
    pictures["most_likely"] = image_grid(x_test[order[:GRID]])
    pictures["least_likely"] = image_grid(x_test[order.flip(0)[:GRID]])
    if ood is not None:
        likelihood |= {
            "ood_source": args.ood,
            "ood_images": len(ood_labels),
            "ood_nll": round(float(predictions["ood_nll"].mean()), 2),
            "ood_auroc": round(auroc(nll, predictions["ood_nll"]), 4),
        }
        x_ood = ood.on_after_batch_transfer((ood_images[: 4 * GRID], ood_labels[: 4 * GRID]), 0)[0]
        ood_order = predictions["ood_nll"][: len(x_ood)].argsort()
        pictures["ood_most_likely"] = image_grid(x_ood[ood_order[:GRID]])
    report["likelihood"] = likelihood

    with Section(times, "latents"):
        usage = LatentUsage(model.latent_dim)
        usage.update(predictions["mu"], predictions["logvar"])
        active, kl_per_dim = usage.compute()
        latents = {
            "latent_dim": model.latent_dim,
            "active_units": int(active),
            "kl_per_dim": [round(float(v), 2) for v in kl_per_dim],
        }
        has_labels = labelled(train_labels) and labelled(test_labels)
        if has_labels:
            with torch.no_grad():
                train_mu = torch.cat([model.encode(to_float(b).to(device))[0].cpu() for b in train_images.split(1000)])
            mu = predictions["mu"]
            latents["linear_probe_accuracy"] = round(linear_probe_accuracy(train_mu, train_labels, mu, test_labels), 4)
            latents["knn_k"] = KNN_K
            latents["knn_accuracy"] = round(knn_accuracy(train_mu, train_labels, mu, test_labels), 4)
        else:
            latents["probes_left_out"] = (
                "the data have no labels (fewer than two classes), so there is nothing to probe"
            )
    report["latents"] = latents

    with Section(times, "pictures"):
        generator = torch.Generator().manual_seed(args.seed)
        n = args.n_samples or len(test_labels)
        with torch.no_grad():
            samples = torch.cat([model.sample(min(1000, n - i), generator).cpu() for i in range(0, n, 1000)])
        pictures["prior"] = image_grid(samples[:GRID])
        pictures["reconstructions"] = reconstruction_grid(model, x_test[: GRID // 2].to(device))
        informative = kl_per_dim.argsort(descending=True)[: int(active)].tolist()
        if informative:
            pictures["traversals"] = traversal_grid(model, informative, TRAVERSAL)
        mu = predictions["mu"]
        points = mu if model.latent_dim == 2 else principal_components(mu)
        pictures["posterior_means"] = points_scatter(points, x_test, test_labels.clamp_min(0))
    latents["traversed_dims"] = informative

    with Section(times, "sample quality"):
        if has_labels:
            cache = Path(args.classifier_dir) if args.classifier_dir else data_dir / "report_classifiers"
            with Section(times, "classifier"):
                classifier, classifier_path, trained_now = cached_classifier(
                    cache, train_images, train_labels, to_float
                )
            test_predicted = predicted_classes(classifier, x_test)
            sample_predicted = predicted_classes(classifier, samples)
            halves = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(args.seed)).chunk(2)
            counts = torch.bincount(sample_predicted, minlength=classifier.classes)
            report["sample_quality"] = {
                "frechet_distance": round(frechet_distance(classifier.body, x_test, samples), 2),
                "frechet_floor": round(frechet_distance(classifier.body, x_test[halves[0]], x_test[halves[1]]), 2),
                "n_samples": n,
                "classifier_test_accuracy": round(float((test_predicted == test_labels).float().mean()), 4),
                "sample_class_counts": counts.tolist(),
                "test_class_counts": torch.bincount(test_predicted, minlength=classifier.classes).tolist(),
                "sample_class_evenness": round(class_evenness(counts), 4),
                "classifier": classifier_path.name,
                "classifier_trained_now": trained_now,
            }
        else:
            report["sample_quality"] = {
                "left_out": "the data have no labels (fewer than two classes): there is no classifier to give features"
            }

    curves, train_seconds = logged_curves(run)
    config = run / "config.yaml" if run is not None else None
    report["run"] = {
        "checkpoint": str(ckpt),
        "epoch": saved.get("epoch"),
        "global_step": saved.get("global_step"),
        "model": public(saved.get("hyper_parameters", {})),
        "data": {
            "class_path": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
            **public(saved.get("datamodule_hyper_parameters", {})),
        },
        "run_seed": _run_seed(config),
        "report_seed": args.seed,
        "commit": git_commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
        },
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads",
        "training_wall_s": round(train_seconds, 1) if train_seconds is not None else None,
    }
    times["total"] = round(time.perf_counter() - start, 1)
    report["times_s"] = times

    out.mkdir(parents=True, exist_ok=True)
    for name, picture in pictures.items():
        save_image(picture, out / f"{name}.png")
    torch.save(predictions, out / "predictions.pt")
    scalars = {
        f"{section}/{key}": value
        for section in ("sample_quality", "latents", "likelihood")
        for key, value in report[section].items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    report["run"]["logged_to"] = to_logger(run, saved.get("global_step", 0), scalars, pictures)
    report = {key: report[key] for key in ("sample_quality", "latents", "likelihood", "run", "times_s")}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    widths = {name: min(int(1.5 * picture.shape[-1]), 600) for name, picture in pictures.items()}
    (out / "index.html").write_text(page(report, widths, curves))
    print(out / "index.html")
    return out


def _run_seed(config: Path | None) -> int | None:
    """`seed_everything` of the run's config.yaml (the seed of its weights and batches)."""
    if config is None or not config.is_file():
        return None
    for line in config.read_text().splitlines():
        if line.startswith("seed_everything:"):
            value = line.split(":", 1)[1].strip()
            return int(value) if value.lstrip("-").isdigit() else None
    return None


def page(report: dict, pictures: dict[str, int], curves: dict[str, list[tuple[int, float]]]) -> str:
    """The HTML of the report, sections in the order a reader asks their questions; `pictures` gives each
    PNG's width on the page (larger than its pixels: digits are small)."""

    def figure(name: str, caption: str) -> str:
        return html.figure(f"{name}.png", caption, pictures[name])

    quality, latents, likelihood, run = (
        report["sample_quality"],
        report["latents"],
        report["likelihood"],
        report["run"],
    )
    sections = []
    if "left_out" in quality:
        body = html.paragraph(f"Left out: {quality['left_out']}.")
    else:
        body = html.table(
            [
                ("Fréchet distance", quality["frechet_distance"],
                 f"{quality['n_samples']} prior samples vs the test images, in the classifier's features"),
                ("floor", quality["frechet_floor"], "the same distance between two random halves of the test images"),
                ("classifier test accuracy", quality["classifier_test_accuracy"],
                 f"the feature network, {quality['classifier']}"),
                ("samples per class", quality["sample_class_counts"], "the prior samples, labelled by the classifier"),
                ("test images per class", quality["test_class_counts"], "the test images, labelled by the classifier"),
                ("evenness of the samples' classes", quality["sample_class_evenness"],
                 "entropy / log(classes): 1 = every class equally often"),
            ]
        )  # fmt: skip
        body += html.paragraph(
            "Not an FID: the features are those of a small CNN trained on this data set's training split "
            "(docs/report.md), so the numbers compare runs on the same data, not with published FIDs."
        )
    body += figure("prior", "prior samples (pixel means)")
    sections.append(("Samples", body))

    rows = [
        ("active units", latents["active_units"],
         f"of {latents['latent_dim']}: dimensions whose posterior mean moves with the input"),
        ("KL per dimension", latents["kl_per_dim"], "nats, test set average, z00 first"),
        ("traversed, most informative first", latents["traversed_dims"], "rows of the traversal picture"),
    ]  # fmt: skip
    if "probes_left_out" in latents:
        probes = html.paragraph(f"Probes left out: {latents['probes_left_out']}.")
    else:
        rows += [
            ("linear probe accuracy", latents["linear_probe_accuracy"],
             "logistic regression on the posterior means, fitted on the training split, scored on the test split"),
            ("kNN accuracy", latents["knn_accuracy"], f"majority of the {latents['knn_k']} nearest training means"),
        ]  # fmt: skip
        probes = ""
    body = html.table(rows) + probes
    if "traversals" in pictures:
        body += figure("traversals", "latent traversals: z = 0, one dimension from -3 to 3 per row")
    scatter = "posterior means" if latents["latent_dim"] == 2 else "posterior means on their first two principal axes"
    body += figure("posterior_means", f"{scatter}, coloured by label")
    body += figure("reconstructions", "test images, each row above its reconstructions")
    sections.append(("Latents", body))

    rows = [
        ("test negative ELBO", likelihood["test_loss"], "mean per image, nats (as test/loss)"),
        ("test NLL", likelihood["test_nll"], f"mean importance-weighted -log p(x), k = {likelihood['iw_samples']}"),
        ("spread of the test NLL", likelihood["test_nll_sd"], "standard deviation over the test images"),
        ("importance samples", likelihood["iw_samples"], "k per image"),
    ]
    if "ood_auroc" in likelihood:
        rows += [
            ("out-of-distribution set", likelihood["ood_source"], f"{likelihood['ood_images']} test images"),
            ("its NLL", likelihood["ood_nll"], "mean per image, nats"),
            ("AUROC of the NLL", likelihood["ood_auroc"],
             "1: every out-of-distribution image less likely than every test image; 0.5: no better than chance; "
             "below 0.5: the model prefers them"),
        ]  # fmt: skip
    body = html.table(rows)
    if "ood_auroc" not in likelihood:
        body += html.paragraph("No out-of-distribution set given (report.py --ood SOURCE).")
    body += figure("most_likely", "the most likely test images (lowest NLL)")
    body += figure("least_likely", "the least likely test images (highest NLL)")
    if "ood_most_likely" in pictures:
        body += figure("ood_most_likely", "the out-of-distribution images the model finds most likely")
    sections.append(("Likelihood and anomalies", body))

    charts = "".join(
        html.curves_svg(title, {tag: curves.get(tag, []) for tag in tags}) for title, tags in CURVES.items()
    )
    sections.append(("Training curves", charts or html.paragraph("The run has no logged scalars to draw.")))

    rows = [
        ("checkpoint", run["checkpoint"], ""),
        ("epoch", run["epoch"], "0-based, as in the checkpoint"),
        ("global step", run["global_step"], "optimiser steps"),
        ("run seed", run["run_seed"], "seed_everything of the run"),
        ("report seed", run["report_seed"], "draws the samples and the importance samples"),
        ("commit", run["commit"], "of the code that made this report"),
        ("python", run["versions"]["python"], ""),
        ("torch", run["versions"]["torch"], ""),
        ("lightning", run["versions"]["lightning"], ""),
        ("device", run["device"], "where the report ran"),
        ("training wall time (s)", run["training_wall_s"], "first to last logged scalar"),
        ("logged to", run["logged_to"], ""),
    ]
    rows += [(f"time: {name} (s)", value, "this report") for name, value in report["times_s"].items()]
    body = html.table(rows)
    body += "<h3>model</h3>" + html.table([(k, v, "") for k, v in run["model"].items()])
    body += "<h3>data</h3>" + html.table([(k, v, "") for k, v in run["data"].items()])
    sections.append(("Run card", body))
    return html.page(f"VAE report: {run['checkpoint']}", sections)


if __name__ == "__main__":
    main()
