"""Stochastic layers above z: the two-layer (or deeper) VAE of Burda et al. 2015. Plain PyTorch.

With z_1 = z, the layer the encoder gives and the decoder reads, and layers z_2 .. z_L above it
(`--model.upper_latent_dims`):

    inference   q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})
    generation  p(z_L) = N(0, I),  p(z_{l-1}|z_l),  ...,  p(x|z_1)

each conditional a diagonal Gaussian whose mean and log-variance come from an MLP with two tanh
hidden layers as wide as the lower layer (Burda et al.'s 100-100 between 100 and 50 latents).

The layers above z_1 act as a learned prior on z_1: p(z_1) = E_{q(z_2..z_L|z_1)}[p(z_1..z_L) /
q(z_2..z_L|z_1)], so the encoder, the decoder and the loss see one z as before, and

    -ELBO = -log p(x|z_1) + sum_l KL_l,   with z_l ~ q drawn bottom up,
    KL_l  = log q(z_l|z_{l-1}) - log p(z_l|z_{l+1})   (z_0 = x): one sample, no closed form,
    KL_L  = KL(q(z_L|z_{L-1}) || N(0, I))              analytic, given z_{L-1}.

The importance-weighted NLL uses the joint proposal: log w = log p(x, z_1..z_L) - log q(z_1..z_L|x),
i.e. `log_prior` below in place of log N(z; 0, I) (docs/hierarchy.md has the derivation).
"""

import torch
from torch import nn

from vae.elbo import gaussian_kl, gaussian_log_density, reparameterize


def gaussian_layer(n_in: int, n_out: int, hidden: int) -> nn.Module:
    """An MLP n_in -> hidden -> hidden (tanh) -> 2 n_out: a diagonal Gaussian's mean and log-variance."""
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2 * n_out)
    )  # fmt: skip


class LatentHierarchy(nn.Module):
    """q(z_{l+1}|z_l) and p(z_l|z_{l+1}) for the layers `dims` = (z_1, z_2, ..., z_L), bottom to top.

    Every method takes z_1 with any leading shape (..., dims[0]): (B, d) for a batch, (k, B, d) for
    k importance samples per image.
    """

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = tuple(dims)
        pairs = list(zip(self.dims[:-1], self.dims[1:], strict=True))
        self.up = nn.ModuleList(gaussian_layer(lower, upper, lower) for lower, upper in pairs)
        self.down = nn.ModuleList(gaussian_layer(upper, lower, lower) for lower, upper in pairs)

    def _sample_up(self, z1: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """z_1 .. z_L drawn bottom up, and the (mu, logvar) of each q(z_{l+1}|z_l)."""
        zs, posteriors = [z1], []
        for up in self.up:
            mu, logvar = up(zs[-1]).chunk(2, dim=-1)
            posteriors.append((mu, logvar))
            zs.append(reparameterize(mu, logvar))
        return zs, posteriors

    def kl_per_layer(self, z1: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The ELBO's KL term of each layer, (..., L), for z_1 drawn from q(z_1|x) = N(mu, exp(logvar)):
        one-sample estimates below the top, the top's KL to N(0, I) analytic. They sum to the KL term."""
        zs, posteriors = self._sample_up(z1)
        log_q = [gaussian_log_density(z1, mu, logvar)]
        log_q += [gaussian_log_density(z, m, lv) for z, (m, lv) in zip(zs[1:-1], posteriors[:-1], strict=True)]
        terms = []
        for i, down in enumerate(self.down):  # p(z_l | z_{l+1}) for l = i + 1 = 1 .. L-1
            prior_mu, prior_logvar = down(zs[i + 1]).chunk(2, dim=-1)
            terms.append(log_q[i] - gaussian_log_density(zs[i], prior_mu, prior_logvar))
        terms.append(gaussian_kl(*posteriors[-1]))
        return torch.stack(terms, dim=-1)

    def log_prior(self, z1: torch.Tensor) -> torch.Tensor:
        """A one-sample estimate of log p(z_1), (...): log p(z_1..z_L) - log q(z_2..z_L|z_1), z_2.. ~ q.

        Its expectation is a lower bound on log p(z_1); in an importance weight it makes the weight
        the joint proposal's, p(x, z_1..z_L) / q(z_1..z_L|x), an unbiased estimate of p(x).
        """
        zs, posteriors = self._sample_up(z1)
        zero = z1.new_zeros(())
        total = gaussian_log_density(zs[-1], zero, zero)
        for i, down in enumerate(self.down):
            prior_mu, prior_logvar = down(zs[i + 1]).chunk(2, dim=-1)
            total = total + gaussian_log_density(zs[i], prior_mu, prior_logvar)
            total = total - gaussian_log_density(zs[i + 1], *posteriors[i])
        return total

    def upper_posteriors(self, z1: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mu, logvar) of q(z_2|z_1), then of q(z_3|z_2 = the mean of the one before), ...: where each
        layer above puts an input whose z_1 is given (the mean of q(z_1|x), for active units)."""
        posteriors, z = [], z1
        for up in self.up:
            posteriors.append(up(z).chunk(2, dim=-1))
            z = posteriors[-1][0]
        return posteriors

    def down_from_top(self, z_top: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
        """z_1 from a top-layer z_L through p(z_{l-1}|z_l): drawn (noise from `generator`, on its device,
        so a seed draws the same wherever the model is), or each conditional's mean (`sample=False`)."""
        z = z_top
        for down in reversed(self.down):
            mu, logvar = down(z).chunk(2, dim=-1)
            if not sample:
                z = mu
                continue
            noise_device = mu.device if generator is None else generator.device
            noise = torch.randn(mu.shape, generator=generator, device=noise_device).to(mu.device, mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * noise
        return z
