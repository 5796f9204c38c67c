"""The report's measurements that need more than the model: a Fréchet distance in a feature network's
space, probes of the posterior means, and how well a score separates two data sets.

Plain torch and torchmetrics; each function takes tensors and returns a number, so each is tested
against a case whose answer is known (tests/test_report.py).
"""

import math

import torch
from torch import nn
from torchmetrics.classification import BinaryAUROC
from torchmetrics.image.fid import FrechetInceptionDistance

PROBE_STEPS = 100
KNN_K = 5


@torch.no_grad()
def frechet_distance(feature_net: nn.Module, a: torch.Tensor, b: torch.Tensor, batch_size: int = 1000) -> float:
    """The Fréchet distance between Gaussians fitted to the features of images `a` and of images `b`:

        |m_a - m_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))

    torchmetrics' FrechetInceptionDistance with `feature_net` in place of Inception (its statistics are
    accumulated in float64). 0 for the same set; it grows as the two sets' features part. Images are
    floats in [0, 1], (N, C, H, W); `feature_net` maps them to (N, d).
    """
    metric = FrechetInceptionDistance(feature=feature_net, normalize=True, input_img_size=tuple(a.shape[1:]))
    for images, real in ((a, True), (b, False)):
        for chunk in images.split(batch_size):
            metric.update(chunk, real=real)
    return float(metric.compute())


def halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of two disjoint random halves of n items (the first one more when n is odd), drawn from `seed`."""
    first, second = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).chunk(2)
    return first, second


def frechet_floor(feature_net: nn.Module, real: torch.Tensor, n_samples: int, seed: int) -> float:
    """What a perfect model would score in `frechet_distance(feature_net, real, samples)` with `n_samples`
    samples: one whose samples are new images of the same distribution as `real`.

    A Fréchet distance estimated from finite sets is biased upwards even between two samples of the same
    distribution, by about c (1/n_a + 1/n_b) (for the means' term exactly tr(S) (1/n_a + 1/n_b); the
    covariances' term to first order in 1/n). So the distance between two disjoint random halves of
    `real` (N/2 against N/2 images, both terms 4c/N) is rescaled to the score's sizes, n_samples against
    all N: times (1/n_samples + 1/N) / (1/h_1 + 1/h_2), which is 1/2 for n_samples = N."""
    first, second = halves(len(real), seed)
    between_halves = frechet_distance(feature_net, real[first], real[second])
    return between_halves * (1 / n_samples + 1 / len(real)) / (1 / len(first) + 1 / len(second))


def class_evenness(counts: torch.Tensor) -> float:
    """Entropy of the class frequencies over its maximum, log(classes): 1 when every class is drawn
    equally often, 0 when only one is."""
    p = counts.double() / counts.sum()
    entropy = -(p * p.clamp_min(1e-300).log()).sum()
    return float(entropy / math.log(len(counts)))


def linear_probe_accuracy(
    train_z: torch.Tensor, train_y: torch.Tensor, test_z: torch.Tensor, test_y: torch.Tensor
) -> float:
    """Test accuracy of multinomial logistic regression fitted to (train_z, train_y).

    The features are standardised with the training split's mean and spread; the fit is full-batch
    L-BFGS on the cross-entropy (convex, so the result does not depend on a seed) with a small L2
    penalty, so separable classes do not send the weights to infinity.
    """
    mean, std = train_z.mean(0), train_z.std(0).clamp_min(1e-6)
    train_z, test_z = (train_z - mean) / std, (test_z - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    probe = nn.Linear(train_z.shape[1], classes).double()
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")
    z, y = train_z.double(), train_y.long()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(probe(z), y) + 1e-4 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((probe(test_z.double()).argmax(1) == test_y).float().mean())


@torch.no_grad()
def knn_accuracy(
    train_z: torch.Tensor,
    train_y: torch.Tensor,
    test_z: torch.Tensor,
    test_y: torch.Tensor,
    k: int = KNN_K,
    batch_size: int = 256,
) -> float:
    """Test accuracy of the majority label of the k nearest training points (Euclidean; a tie goes to the
    smallest label). In the latent space's own units: a dimension the model does not use has its
    posterior means near 0 and adds nothing to a distance."""
    correct = 0
    for z, y in zip(test_z.split(batch_size), test_y.split(batch_size), strict=True):
        nearest = torch.cdist(z, train_z).topk(k, largest=False).indices
        correct += int((train_y[nearest].mode(1).values == y).sum())
    return correct / len(test_y)


def auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """Area under the ROC curve of `score` for telling `scores_out`'s items (positives) from `scores_in`'s:
    the chance that an item of the second set scores higher than one of the first (ties count half).
    0.5 when the score cannot tell them apart, 1 when every second-set item scores higher, 0 when lower."""
    scores = torch.cat([scores_in, scores_out])
    # Ranks in [0, 1], ties kept: the AUROC depends only on the order, and torchmetrics takes scores
    # outside [0, 1] for logits and applies a sigmoid, which ties every NLL (hundreds of nats) at 1.
    _, ranks = torch.unique(scores, return_inverse=True)
    ranks = ranks.double() / max(1, int(ranks.max()))
    target = torch.cat([torch.zeros(len(scores_in)), torch.ones(len(scores_out))]).long()
    return float(BinaryAUROC(thresholds=None)(ranks, target))


def principal_components(z: torch.Tensor, n: int = 2) -> torch.Tensor:
    """z (N, d) projected on its first n principal axes (centred), (N, n); each axis's sign makes its
    largest coordinate positive, so the picture does not flip between runs of the same model."""
    centred = z - z.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ v[:n].T
    signs = projected.gather(0, projected.abs().argmax(0, keepdim=True)).sign()
    return projected * signs
