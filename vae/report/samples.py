"""The report's section on samples: how far the prior samples are from real images, in the features of
a classifier of the data's labels (`vae.report.features`), and which classes they fall in."""

import torch

from vae.model import VAE
from vae.pictures import image_grid
from vae.report.features import Classifier, predicted_classes
from vae.report.metrics import class_evenness, frechet_distance, frechet_floor
from vae.report.page import Section

GRID = 64  # images in the prior grid
CHUNK = 1000  # prior samples decoded at a time


@torch.no_grad()
def prior_samples(model: VAE, n: int, seed: int) -> torch.Tensor:
    """n images from the prior (pixel means, (n, C, H, W) in [0, 1], on the CPU), drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([model.sample(min(CHUNK, n - i), generator).cpu() for i in range(0, n, CHUNK)])


def sample_quality(
    samples: torch.Tensor,
    x_test: torch.Tensor,
    test_labels: torch.Tensor,
    classifier: Classifier | None,
    classifier_file: str = "",
    trained_now: bool = False,
    seed: int = 0,
) -> Section:
    """The Fréchet distance of the samples to the test images in the classifier's features (its body: the
    layer before its head, not its logits), the floor a perfect model would score at the same sizes, and
    the samples' classes as the classifier sees them. Without a classifier (data without labels), the
    prior grid alone."""
    pictures = {"prior": (image_grid(samples[:GRID]), "prior samples (pixel means)")}
    if classifier is None:
        left_out = "the data have no labels (fewer than two classes): there is no classifier to give features"
        return Section("sample_quality", "Samples", {"left_out": left_out}, notes=[f"Left out: {left_out}."],
                       pictures=pictures)  # fmt: skip
    test_predicted = predicted_classes(classifier, x_test)
    counts = torch.bincount(predicted_classes(classifier, samples), minlength=classifier.classes)
    numbers = {
        "frechet_distance": round(frechet_distance(classifier.body, x_test, samples), 2),
        "frechet_floor": round(frechet_floor(classifier.body, x_test, len(samples), seed), 2),
        "n_samples": len(samples),
        "classifier_test_accuracy": round(float((test_predicted == test_labels).float().mean()), 4),
        "sample_class_counts": counts.tolist(),
        "test_class_counts": torch.bincount(test_predicted, minlength=classifier.classes).tolist(),
        "sample_class_evenness": round(class_evenness(counts), 4),
        "classifier": classifier_file,
        "classifier_trained_now": trained_now,
    }
    rows = [
        ("Fréchet distance", numbers["frechet_distance"],
         f"{len(samples)} prior samples vs the {len(x_test)} test images, in the classifier's features"),
        ("floor", numbers["frechet_floor"],
         "what samples drawn from the test images' own distribution would score at these sizes: the distance "
         "between two random halves of the test images, rescaled to the sizes above (docs/report.md)"),
        ("classifier test accuracy", numbers["classifier_test_accuracy"], f"the feature network, {classifier_file}"),
        ("samples per class", numbers["sample_class_counts"], "the prior samples, labelled by the classifier"),
        ("test images per class", numbers["test_class_counts"], "the test images, labelled by the classifier"),
        ("evenness of the samples' classes", numbers["sample_class_evenness"],
         "entropy / log(classes): 1 = every class equally often"),
    ]  # fmt: skip
    note = (
        "Not an FID: the features are those of a small CNN trained on this data set's training split "
        "(docs/report.md), so the numbers compare runs on the same data, not with published FIDs."
    )
    return Section("sample_quality", "Samples", numbers, rows, [note], pictures)
