"""The maths of the loss: the negative ELBO of a VAE with a Bernoulli decoder and a N(0, I) prior.

    -ELBO(x) = -E_q[log p(x|z)] + KL(q(z|x) || p(z))
             ~ BCE(x, logits) summed over pixels  +  0.5 * sum(exp(logvar) + mu^2 - 1 - logvar)

Every function returns one value per image, in nats, so callers choose how to average.
Plain PyTorch: no Lightning here.
"""

import torch
import torch.nn.functional as F


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per image, summed over pixels. From logits, so it never takes log(0).

    `x` may be binary or grey levels in [0, 1] (as the classic example trains); either way this is
    -BCE(x, sigmoid(logits)), which for grey levels is a cross-entropy rather than a likelihood.
    """
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -bce.flatten(1).sum(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, analytic, summed over latent dimensions."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(1)


def negative_elbo(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon, kl) per image, with loss = recon + kl: the negative ELBO in nats."""
    recon = -bernoulli_log_likelihood(logits, x)
    kl = gaussian_kl(mu, logvar)
    return recon + kl, recon, kl
