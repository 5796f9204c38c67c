"""Pictures of what a VAE has learnt, as image tensors (3, H, W) in [0, 1], on the CPU.

Shared by `sample.py` (PNG files) and the `ImageGrids` callback (TensorBoard), so both show the
same thing. Each takes the plain `VAE` and images as the model receives them, (B, C, H, W) in
[0, 1], grey (C = 1) or colour (C = 3); decoded images are the pixel means of p(x|z), whichever the
likelihood. Grids are white-lined; the images are shown as they are (MNIST's digits white on black).
"""

import math

import torch
from torchvision.utils import make_grid

from vae.model import VAE

# Ten colours that stay apart on white (matplotlib's "tab10"), one per label (label % 10 beyond ten).
PALETTE = torch.tensor(
    [
        [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
        [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
    ]
) / 255  # fmt: skip


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Images side by side, `nrow` to a row; float32 whatever the model's dtype (a PNG needs it)."""
    return make_grid(images.cpu().float(), nrow=nrow, pad_value=1.0)


@torch.no_grad()
def reconstruction_grid(model: VAE, x: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Rows of `nrow` inputs, each above the row of their reconstructions (from the posterior mean)."""
    nrow = min(nrow, len(x))
    blank = x.new_zeros(-len(x) % nrow, *x.shape[1:])  # completes the last row, so pairs stay aligned
    x, reconstructions = torch.cat([x, blank]), torch.cat([model.reconstruct(x), blank])
    pairs = [torch.cat([x[i : i + nrow], reconstructions[i : i + nrow]]) for i in range(0, len(x), nrow)]
    return image_grid(torch.cat(pairs), nrow)


@torch.no_grad()
def interpolation_grid(model: VAE, a: torch.Tensor, b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """One row per pair (a[i], b[i]): decoded points evenly spaced from a's posterior mean to b's."""
    (mu_a, _), (mu_b, _) = model.encode(a), model.encode(b)
    t = torch.linspace(0, 1, steps, device=mu_a.device, dtype=mu_a.dtype).view(1, steps, 1)
    z = (1 - t) * mu_a.unsqueeze(1) + t * mu_b.unsqueeze(1)  # (pairs, steps, latent)
    return image_grid(model.decode_means(z.flatten(0, 1)), nrow=steps)


@torch.no_grad()
def manifold_grid(model: VAE, n: int = 20) -> torch.Tensor:
    """A 2-D latent space decoded on an n x n grid (Kingma & Welling 2014, figure 4).

    The grid points are the prior's quantiles (i + 0.5) / n through the normal inverse CDF, so
    every cell covers the same prior probability. z1 runs left to right, z2 bottom to top.
    """
    if model.top_latent_dim != 2:
        raise ValueError(f"a latent manifold needs a top latent layer of 2, this model has {model.top_latent_dim}.")
    weight = next(model.parameters())
    q = torch.special.ndtri((torch.arange(n, device=weight.device) + 0.5) / n).to(weight.dtype)
    z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
    return image_grid(model.likelihood.pixel_means(model.decode_top(torch.stack([z1, z2], -1).view(-1, 2))), nrow=n)


@torch.no_grad()
def latent_scatter(model: VAE, x: torch.Tensor, labels: torch.Tensor, size: int = 560) -> torch.Tensor:
    """The posterior means of `x` in a 2-D latent space, one dot per image, coloured by its label.

    No plotting library: dots are set straight into an image tensor. Faint lines mark every
    integer value of z1 and z2, darker at 0; z1 runs left to right, z2 bottom to top. The legend,
    in a column on the right, is the mean image of each of the labels 0-9, 0 at the top: a grey
    image as ink in the label's colour on white, a colour image as it is, framed in that colour.
    """
    if model.latent_dim != 2:
        raise ValueError(f"a latent scatter needs latent_dim 2, this model has {model.latent_dim}.")
    return points_scatter(model.encode(x)[0], x, labels, size)


def points_scatter(points: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, size: int = 560) -> torch.Tensor:
    """`latent_scatter`'s picture of any 2-D points (N, 2), one per image of `x`, e.g. posterior means
    projected on their first two principal axes."""
    mu = points.cpu()
    x, labels = x.cpu(), labels.cpu().long()
    lim = 1.05 * mu.abs().max().item()

    def pixel(value: torch.Tensor) -> torch.Tensor:
        return ((value / lim + 1) / 2 * (size - 1)).round().long().clamp(0, size - 1)

    canvas = torch.ones(3, size, size)
    for v in range(-math.floor(lim), math.floor(lim) + 1):
        p = pixel(torch.tensor(float(v)))
        shade = 0.6 if v == 0 else 0.9
        canvas[:, :, p] = canvas[:, size - 1 - p, :] = shade
    cols, rows = pixel(mu[:, 0]), size - 1 - pixel(mu[:, 1])
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            canvas[:, (rows + dy).clamp(0, size - 1), (cols + dx).clamp(0, size - 1)] = PALETTE[labels % 10].T

    tile = size // 10
    legend = torch.ones(3, size, tile)
    for label in range(10):
        if (labels == label).any():
            mean_image = x[labels == label].mean(0)  # (C, H, W) in [0, 1]
            colour, grey = PALETTE[label].view(3, 1, 1), len(mean_image) == 1
            if grey:  # the image's ink in the label's colour on white
                mean_image = 1 - mean_image * (1 - colour)
            cell = legend[:, label * tile : (label + 1) * tile]
            cell[:] = torch.nn.functional.interpolate(mean_image.unsqueeze(0), size=(tile, tile), mode="bilinear")[0]
            if not grey:  # the image as it is, framed in the label's colour
                frame = max(1, tile // 14)
                cell[:, :frame], cell[:, -frame:], cell[:, :, :frame], cell[:, :, -frame:] = (colour,) * 4
    return torch.cat([canvas, legend], dim=2)


@torch.no_grad()
def traversal_grid(model: VAE, dims: list[int], values: torch.Tensor) -> torch.Tensor:
    """One row per latent dimension in `dims` of the top layer (z itself for one layer): z = 0 (the prior's
    mean) with that dimension set to each of `values` in turn, decoded. What each dimension changes in an
    image, read left to right."""
    device = next(model.parameters()).device
    z = torch.zeros(len(dims), len(values), model.top_latent_dim, device=device)
    for row, dim in enumerate(dims):
        z[row, :, dim] = values.to(device)
    return image_grid(model.likelihood.pixel_means(model.decode_top(z.flatten(0, 1))), nrow=len(values))
