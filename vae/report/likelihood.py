"""The report's section on likelihood: each test image's negative ELBO and NLL (`VAEModule.predict_step`,
as `python train.py predict` computes them), the most and least likely images, and how well the NLL
tells an out-of-distribution set from the test set."""

from typing import NamedTuple

import torch
from lightning.pytorch import LightningDataModule

from vae.module import VAEModule
from vae.pictures import image_grid
from vae.report.metrics import auroc
from vae.report.page import Section
from vae.run import model_inputs

GRID = 64  # images in the most / least likely grids


class OutOfDistribution(NamedTuple):
    """A second data set the model should find unlikely: its name, each of its test images' NLL, and
    some of its images (floats in [0, 1]) with their NLL, for the picture."""

    source: str
    nll: torch.Tensor
    shown: torch.Tensor
    shown_nll: torch.Tensor


@torch.no_grad()
def per_image_scores(
    module: VAEModule, datamodule: LightningDataModule, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """`predict_step` over the data module's stored images in its batches (its transfer step first, on the
    module's device): mu, logvar, label, loss and nll of each image, on the CPU."""
    size, out = datamodule.batch_size, []
    for i, (batch, batch_labels) in enumerate(zip(images.split(size), labels.split(size), strict=True)):
        x = model_inputs(datamodule, batch.to(module.device))
        out.append(module.predict_step((x, batch_labels.to(module.device)), i))
    return {key: torch.cat([o[key] for o in out]).cpu() for key in out[0]}


def likelihood(
    loss: torch.Tensor, nll: torch.Tensor, x_test: torch.Tensor, k: int, ood: OutOfDistribution | None = None
) -> Section:
    """The test images' mean negative ELBO (`loss`) and NLL (`nll`, k importance samples), the most and the
    least likely of them, and with `ood` the AUROC of the NLL for telling its images (positives) from the
    test images: 1 when every one of them is less likely than every test image."""
    numbers = {
        "iw_samples": k,
        "test_loss": round(float(loss.mean()), 2),
        "test_nll": round(float(nll.mean()), 2),
        "test_nll_sd": round(float(nll.std()), 2),
    }
    rows = [
        ("test negative ELBO", numbers["test_loss"], "mean per image, nats (as test/loss)"),
        ("test NLL", numbers["test_nll"], f"mean importance-weighted -log p(x), k = {k}"),
        ("spread of the test NLL", numbers["test_nll_sd"], "standard deviation over the test images"),
        ("importance samples", k, "k per image"),
    ]
    order = nll.argsort()
    pictures = {
        "most_likely": (image_grid(x_test[order[:GRID]]), "the most likely test images (lowest NLL)"),
        "least_likely": (image_grid(x_test[order.flip(0)[:GRID]]), "the least likely test images (highest NLL)"),
    }
    if ood is None:
        return Section("likelihood", "Likelihood and anomalies", numbers, rows,
                       ["No out-of-distribution set given (report.py --ood SOURCE)."], pictures)  # fmt: skip
    numbers |= {
        "ood_source": ood.source,
        "ood_images": len(ood.nll),
        "ood_nll": round(float(ood.nll.mean()), 2),
        "ood_auroc": round(auroc(nll, ood.nll), 4),
    }
    rows += [
        ("out-of-distribution set", ood.source, f"{len(ood.nll)} test images"),
        ("its NLL", numbers["ood_nll"], "mean per image, nats"),
        ("AUROC of the NLL", numbers["ood_auroc"],
         "1: every out-of-distribution image less likely than every test image; 0.5: no better than chance; "
         "below 0.5: the model prefers them"),
    ]  # fmt: skip
    pictures["ood_most_likely"] = (
        image_grid(ood.shown[ood.shown_nll.argsort()[:GRID]]),
        "the out-of-distribution images the model finds most likely (of a random subset)",
    )
    return Section("likelihood", "Likelihood and anomalies", numbers, rows, [], pictures)
