"""The report's section on latents: how many dimensions the model uses, what they hold (probes of the
posterior means), and pictures of them."""

import torch

from vae.latents import LatentUsage
from vae.model import VAE
from vae.pictures import points_scatter, reconstruction_grid, traversal_grid
from vae.report.metrics import KNN_K, knn_accuracy, linear_probe_accuracy, principal_components
from vae.report.page import Section

RECONSTRUCTIONS = 32  # test images shown above their reconstructions
TRAVERSAL = torch.linspace(-3, 3, 9)  # prior standard deviations along each traversed dimension


def labelled(labels: torch.Tensor) -> bool:
    """Whether the data have classes to tell apart: at least two distinct labels, none negative (a folder of
    images without class subfolders has label -1)."""
    return bool(labels.min() >= 0) and len(labels.unique()) > 1


def spread_over_classes(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of n items drawn at random from `seed`, as evenly over the labels as n allows (with ten
    classes and n = 32, three or four of each), sorted by label: a test set sorted by class still shows
    every class. Unlabelled items (one label) are simply drawn at random."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    drawn = labels[order]
    # each item's rank among the items of its label, in the drawn order: 0 for the first of each label
    rank = torch.empty_like(order)
    for label in drawn.unique():
        where = (drawn == label).nonzero().squeeze(1)
        rank[where] = torch.arange(len(where))
    chosen = order[torch.sort(rank, stable=True).indices[:n]]
    return chosen[torch.sort(labels[chosen], stable=True).indices]


@torch.no_grad()
def latents(
    model: VAE,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    x_test: torch.Tensor,
    test_labels: torch.Tensor,
    train_mu: torch.Tensor | None,
    train_labels: torch.Tensor | None,
    seed: int = 0,
) -> Section:
    """Active units and each dimension's KL from the test set's posteriors (mu, logvar); a linear probe and
    kNN fitted on the training split's posterior means (`train_mu`) and scored on the test set's (None when
    the data have no labels); traversals, the posterior means in 2-D, reconstructions of a random subset."""
    usage = LatentUsage(model.latent_dim)
    usage.update(mu, logvar)
    active, kl_per_dim = usage.compute()
    informative = kl_per_dim.argsort(descending=True)[: int(active)].tolist()
    numbers = {"latent_dim": model.latent_dim, "active_units": int(active)}
    rows = [
        ("active units", numbers["active_units"],
         f"of {model.latent_dim}: dimensions whose posterior mean moves with the input"),
    ]  # fmt: skip
    if model.hierarchy is None:
        numbers["kl_per_dim"] = [round(float(v), 2) for v in kl_per_dim]
        rows.append(("KL per dimension", numbers["kl_per_dim"], "nats, test set average, z00 first"))
    else:  # z's prior is the layers above, not N(0, I): the KL per dimension and the traversals are the top's
        top = LatentUsage(model.top_latent_dim)
        top.update(*model.hierarchy.upper_posteriors(mu.to(next(model.parameters()).device))[-1])
        top_active, top_kl = top.compute()
        informative = top_kl.argsort(descending=True)[: int(top_active)].tolist()
        numbers |= {"top_latent_dim": model.top_latent_dim, "top_active_units": int(top_active)}
        numbers["top_kl_per_dim"] = [round(float(v), 2) for v in top_kl]
        rows += [
            ("active units of the top layer", int(top_active), f"of {model.top_latent_dim}"),
            ("KL per dimension of the top layer", numbers["top_kl_per_dim"],
             "nats, to its prior N(0, I), the layers below at their means, test set average, z00 first"),
        ]  # fmt: skip
    rows.append(("traversed, most informative first", informative, "rows of the traversal picture"))
    notes = []
    if train_mu is not None:
        numbers["linear_probe_accuracy"] = round(linear_probe_accuracy(train_mu, train_labels, mu, test_labels), 4)
        numbers["knn_k"] = KNN_K
        numbers["knn_accuracy"] = round(knn_accuracy(train_mu, train_labels, mu, test_labels), 4)
        rows += [
            ("linear probe accuracy", numbers["linear_probe_accuracy"],
             "logistic regression on the posterior means, fitted on the training split, scored on the test split"),
            ("kNN accuracy", numbers["knn_accuracy"], f"majority of the {KNN_K} nearest training means"),
        ]  # fmt: skip
    else:
        numbers["probes_left_out"] = "the data have no labels (fewer than two classes), so there is nothing to probe"
        notes.append(f"Probes left out: {numbers['probes_left_out']}.")
    numbers["traversed_dims"] = informative

    pictures = {}
    if informative:
        pictures["traversals"] = (
            traversal_grid(model, informative, TRAVERSAL),
            f"latent traversals{' of the top layer' if model.hierarchy is not None else ''}: "
            "z = 0, one dimension from -3 to 3 per row",
        )
    points = mu if model.latent_dim == 2 else principal_components(mu)
    scatter = "posterior means" if model.latent_dim == 2 else "posterior means on their first two principal axes"
    pictures["posterior_means"] = (
        points_scatter(points, x_test, test_labels.clamp_min(0)),
        f"{scatter}, coloured by label",
    )
    shown = spread_over_classes(test_labels, RECONSTRUCTIONS, seed)
    device = next(model.parameters()).device
    pictures["reconstructions"] = (
        reconstruction_grid(model, x_test[shown].to(device)),
        "test images drawn at random, as evenly over the classes as they allow, each row above its reconstructions",
    )
    return Section("latents", "Latents", numbers, rows, notes, pictures)
