"""The report from an opened run: the sections in order, timed, then the files and the run's logger."""

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torchvision.utils import save_image

from vae.module import VAEModule
from vae.report.features import cached_classifier
from vae.report.latents import labelled, latents
from vae.report.likelihood import OutOfDistribution, likelihood, per_image_scores
from vae.report.logger import logged_curves, to_logger
from vae.report.page import Section, page
from vae.report.run_card import CURVE_TAGS, card_numbers, run_card, training_curves
from vae.report.samples import prior_samples, sample_quality
from vae.run import model_inputs, public, run_dir

OOD_SHOWN = 256  # out-of-distribution images the "most likely" picture is chosen from
# report.json's sections, in this order; the numbers of the first three also go to the run's logger
JSON_SECTIONS = ("sample_quality", "latents", "likelihood", "run")


@contextmanager
def timed(times: dict[str, float], name: str):
    """Seconds spent inside, into `times[name]`."""
    start = time.perf_counter()
    yield
    times[name] = round(time.perf_counter() - start, 1)


@torch.no_grad()
def posterior_means(module: VAEModule, datamodule: LightningDataModule, images: torch.Tensor) -> torch.Tensor:
    """The encoder's mean of each stored image, on the CPU, 1,000 images at a time."""
    chunks = images.split(1000)
    return torch.cat([module.model.encode(model_inputs(datamodule, c).to(module.device))[0].cpu() for c in chunks])


def make_report(
    module: VAEModule,
    datamodule: LightningDataModule,
    checkpoint: Path,
    out: Path,
    seed: int = 0,
    n_samples: int | None = None,
    classifier_dir: Path | None = None,
    ood: tuple[str, LightningDataModule] | None = None,
) -> Path:
    """Compute every section for `module` on its run's `datamodule` (read: `vae.run.open_run`), with `ood`
    (its name, its data module, read) as the out-of-distribution set; write index.html, report.json, the
    pictures and predictions.pt into `out`, and the numbers and pictures into the run's logger."""
    start, times = time.perf_counter(), {}
    torch.manual_seed(seed)  # the importance samples of the per-image scores
    train, test = datamodule.train_set, datamodule.test_set
    x_test = model_inputs(datamodule, test.images)
    if ood is not None:
        ood_name, ood_data = ood
        shape = model_inputs(ood_data, ood_data.test_set.images[:1]).shape[1:]
        if shape != x_test.shape[1:]:
            raise SystemExit(
                f"error: --ood {ood_name} serves images of shape {tuple(shape)} and the model takes "
                f"{tuple(x_test.shape[1:])}: choose a source of the run's image shape."
            )

    with timed(times, "per-image scores"):
        predictions = per_image_scores(module, datamodule, test.images, test.labels)
        predictions["index"] = torch.arange(len(test.labels))
        if ood is not None:
            ood_scores = per_image_scores(module, ood_data, ood_data.test_set.images, ood_data.test_set.labels)
            predictions |= {"ood_loss": ood_scores["loss"], "ood_nll": ood_scores["nll"]}
    sections: list[Section] = []
    k = module.hparams.iw_samples
    if ood is not None:
        shown = torch.randperm(len(ood_scores["nll"]), generator=torch.Generator().manual_seed(seed))[:OOD_SHOWN]
        x_ood = model_inputs(ood_data, ood_data.test_set.images[shown])
        ood = OutOfDistribution(ood_name, ood_scores["nll"], x_ood, ood_scores["nll"][shown])
    likely = likelihood(predictions["loss"], predictions["nll"], x_test, k, ood)

    has_labels = labelled(train.labels) and labelled(test.labels)
    with timed(times, "latents"):
        train_mu = posterior_means(module, datamodule, train.images) if has_labels else None
        train_labels = train.labels if has_labels else None
        mu, logvar = predictions["mu"], predictions["logvar"]
        latent = latents(module.model, mu, logvar, x_test, test.labels, train_mu, train_labels, seed)

    with timed(times, "sample quality"):
        samples = prior_samples(module.model, n_samples or len(test.labels), seed)
        classifier, name, trained_now = None, "", False
        if has_labels:
            with timed(times, "classifier"):
                cache = classifier_dir or Path(getattr(datamodule, "data_dir", "data")) / "report_classifiers"
                classifier, path, trained_now = cached_classifier(
                    cache, train.images, train.labels, lambda images: model_inputs(datamodule, images)
                )
                name = path.name
        quality = sample_quality(samples, x_test, test.labels, classifier, name, trained_now, seed)
    sections += [quality, latent, likely]

    run = run_dir(checkpoint)
    curves, train_s = logged_curves(run, CURVE_TAGS)
    sections.append(training_curves(curves))
    scalars = {
        f"{s.key}/{name}": value
        for s in sections
        for name, value in s.numbers.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    pictures = {name: picture for s in sections for name, (picture, _) in s.pictures.items()}
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    data = {"class_path": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"}
    data |= public(saved.get("datamodule_hyper_parameters", {}))
    card = card_numbers(checkpoint, run, saved, public(module.hparams), data, seed, module.device, train_s)
    card["logged_to"] = to_logger(run, saved.get("global_step", 0), scalars, pictures)
    times["total"] = round(time.perf_counter() - start, 1)
    sections.append(run_card(card, times))

    out.mkdir(parents=True, exist_ok=True)
    for name, picture in pictures.items():
        save_image(picture, out / f"{name}.png")
    torch.save(predictions, out / "predictions.pt")
    by_key = {s.key: s.numbers for s in sections}
    record = {key: by_key[key] for key in JSON_SECTIONS} | {"times_s": times}
    (out / "report.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "index.html").write_text(page(f"VAE report: {checkpoint}", sections))
    return out
