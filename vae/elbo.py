"""The maths of the loss: the negative ELBO of a VAE with a Bernoulli decoder and a N(0, I) prior.

    -ELBO(x) = -E_q[log p(x|z)] + KL(q(z|x) || p(z))
             ~ BCE(x, logits) summed over pixels  +  0.5 * sum(exp(logvar) + mu^2 - 1 - logvar)

For evaluation, `importance_weighted_nll` estimates -log p(x) itself, with a bound that tightens
as the number of samples k grows (k = 1 is the negative ELBO again); `importance_weighted_terms`
also returns the reconstruction term averaged over the same k samples.

For training, two objectives other than the ELBO: free bits (`free_bits_kl`, Kingma et al. 2016)
and the importance-weighted bound (`log_weight_terms` and `negative_iw_bound`, Burda et al. 2015).

Every function returns one value per image, in nats, so callers choose how to average.
Plain PyTorch: no Lightning here.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per image, summed over pixels. From logits, so it never takes log(0).

    `x` may be binary or grey levels in [0, 1] (as the classic example trains); either way this is
    -BCE(x, sigmoid(logits)), which for grey levels is a cross-entropy rather than a likelihood.
    """
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -bce.flatten(1).sum(1)


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent dimension of each image, analytic, (B, latent)."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, analytic, summed over latent dimensions."""
    return gaussian_kl_per_dim(mu, logvar).sum(1)


def free_bits_kl(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The KL term of the free-bits objective (Kingma et al. 2016), a scalar per image of the batch:

        sum_j max(free_bits, mean over the batch of KL_j)

    A latent dimension whose KL, averaged over the batch, is below `free_bits` nats counts as
    `free_bits` and gets no gradient from the KL term, so the optimiser stops pushing it towards
    the prior, which is how dimensions switch off early in training; above it, nothing changes.
    The average is over the batch, as in the paper, so a dimension may carry little information
    about one image and much about another. A training objective only: not a bound on log p(x).
    """
    return gaussian_kl_per_dim(mu, logvar).mean(0).clamp(min=free_bits).sum()


def negative_elbo(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon, kl) per image, with loss = recon + kl: the negative ELBO in nats."""
    recon = -bernoulli_log_likelihood(logits, x)
    kl = gaussian_kl(mu, logvar)
    return recon + kl, recon, kl


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)), diagonal, summed over the last (latent) dimension."""
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


def log_weight_terms(
    x: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x|z), log p(z) - log q(z|x)) for k samples z (k, B, latent) of the B images x: each (k, B).

    Their sum is the log importance weight log w = log p(x|z) p(z) / q(z|x). Kept apart so that a
    KL weight (warm-up) can scale the second term, as it scales the KL term of the ELBO.
    """
    k = len(z)
    log_px_z = bernoulli_log_likelihood(decode(z.flatten(0, 1)), x.expand(k, *x.shape).flatten(0, 1))
    zero = x.new_zeros(())
    log_pz = gaussian_log_density(z, zero, zero)  # the prior N(0, I)
    log_qz = gaussian_log_density(z, mu, logvar)
    return log_px_z.view(k, len(x)), log_pz - log_qz


def negative_iw_bound(log_w: torch.Tensor) -> torch.Tensor:
    """-log (1/k) sum_i w_i per image, from log weights (k, B): the negative importance-weighted bound.

    Burda et al. 2015's IWAE objective: a lower bound on log p(x) that tightens as k grows, and the
    one-sample negative ELBO at k = 1. Differentiable, in log space (the weights under- or overflow).
    """
    return -(torch.logsumexp(log_w, 0) - math.log(len(log_w)))


@torch.no_grad()
def importance_weighted_terms(
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    chunk_size: int = 8192,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, recon) per image, in nats, from one set of k samples z_i ~ q(z|x) = N(mu, exp(logvar)).

    nll is `importance_weighted_nll`'s estimate of -log p(x). recon is -log p(x|z_i) averaged over
    the same k samples: the ELBO's reconstruction term with k samples instead of one, so that
    recon + gaussian_kl(mu, logvar) is a negative ELBO whose noise shrinks as k grows, computed in
    the same pass as nll. With k = 1 and the same noise, recon is the one-sample `negative_elbo`'s.
    """
    if k < 1:
        raise ValueError(f"k, the number of importance samples, must be at least 1, got {k}.")
    std = (0.5 * logvar).exp()
    per_chunk = max(1, chunk_size // len(x))
    noise_device = mu.device if generator is None else generator.device
    log_sum_w = x.new_full((len(x),), -math.inf)
    sum_log_px_z = x.new_zeros(len(x))
    for start in range(0, k, per_chunk):
        n = min(per_chunk, k - start)
        eps = torch.stack(
            [torch.randn(mu.shape, generator=generator, device=noise_device, dtype=mu.dtype) for _ in range(n)]
        )
        eps = eps.to(mu.device)  # one copy per chunk when the generator is elsewhere (a CPU one, a GPU model)
        z = mu + std * eps  # (n, B, latent)
        log_px_z, log_prior_ratio = log_weight_terms(x, z, mu, logvar, decode)
        log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(log_px_z + log_prior_ratio, 0))
        sum_log_px_z += log_px_z.sum(0)
    return -(log_sum_w - math.log(k)), -sum_log_px_z / k


@torch.no_grad()
def importance_weighted_nll(
    x: torch.Tensor,
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    decode: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    chunk_size: int = 8192,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-log p(x) per image, in nats, estimated with k importance samples from q(z|x) (Burda et al. 2015).

        log p(x) ~ log (1/k) sum_i w_i,   w_i = p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)

    By Jensen this is a lower bound on log p(x) in expectation, tighter as k grows, and the
    negative ELBO's estimator at k = 1. All in log space: the weights themselves under- or
    overflow (log p(x|z) is hundreds of nats). An evaluation tool, so no gradients.

    Memory: the k samples are decoded in chunks of at most `chunk_size` (sample, image) pairs and
    the chunks are combined with a running logsumexp, so memory does not grow with k (a few
    (chunk_size, 784) float tensors: 26 MB each at the default chunk size) and k = 5000 runs on a CPU. The
    noise is drawn one sample (a (B, latent) tensor) at a time, so for a given generator state the
    result does not depend on `chunk_size`.
    """
    mu, logvar = encode(x)
    return importance_weighted_terms(x, mu, logvar, decode, k, chunk_size, generator)[0]
