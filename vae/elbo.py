"""The maths of the loss: the negative ELBO of a VAE with a N(0, I) prior, for either likelihood.

    -ELBO(x) = -E_q[log p(x|z)] + KL(q(z|x) || p(z))
             ~ -log p(x|z) summed over sub-pixels  +  0.5 * sum(exp(logvar) + mu^2 - 1 - logvar)

p(x|z), chosen by name from `LIKELIHOODS` (`--model.likelihood`):
- "bernoulli": one logit per sub-pixel; -log p(x|z) is BCE(x, logits). The MNIST default.
- "logistic": a discretised logistic per sub-pixel (Salimans et al. 2017, PixelCNN++; Kingma et al.
  2016 for CIFAR-10): a mean and a log-scale per sub-pixel, and the probability of each of the 256
  8-bit values is the logistic's mass on its bin of width 1/255, the two edge bins open to -inf and
  +inf, so the 256 probabilities sum to 1 and -log p(x) is a true negative log-likelihood of the bytes.
- "logistic_shared_scale": the same, with one learned scale per channel for every image and pixel
  (`VAE.log_scale`): an error counts alike wherever it is, so the decoder learns the content of
  images with flat backgrounds, where a scale per sub-pixel fits the background (docs/likelihoods.md).

For evaluation, `importance_weighted_nll` estimates -log p(x) itself, with a bound that tightens
as the number of samples k grows (k = 1 is the negative ELBO again); `importance_weighted_terms`
also returns the reconstruction term averaged over the same k samples.

For training, two objectives other than the ELBO: free bits (`free_bits_kl`, Kingma et al. 2016)
and the importance-weighted bound (`log_weight_terms` and `negative_iw_bound`, Burda et al. 2015).

Every function returns one value per image, in nats, so callers choose how to average. Each takes
the log-likelihood function (`bernoulli_log_likelihood` unless told), so the ELBO, its terms and
the importance-weighted estimates always use the same p(x|z).
Plain PyTorch: no Lightning here.
"""

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

LogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# 8-bit images: x = k / 255, and value k's bin is [x - HALF_BIN, x + HALF_BIN].
HALF_BIN = 0.5 / 255
# The smallest log-scale used: 1 / scale must stay finite in float32. At exp(-20) a bin of width 1/255
# is 1e6 scales wide, so its mass is 0 or 1 to float precision; smaller scales change nothing.
MIN_LOG_SCALE = -20.0


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per image, summed over pixels. From logits, so it never takes log(0).

    `x` may be binary or grey levels in [0, 1] (as the classic example trains); either way this is
    -BCE(x, sigmoid(logits)), which for grey levels is a cross-entropy rather than a likelihood.
    """
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -bce.flatten(1).sum(1)


def bernoulli_start(pixel_mean: torch.Tensor) -> torch.Tensor:
    """Logits whose means are `pixel_mean` (clamped one level away from 0 and 1: logit(0) is -inf)."""
    eps = 1.0 / 255
    return torch.logit(pixel_mean.clamp(eps, 1 - eps))


def _log1mexp(log_d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-d)) for d = exp(log_d) > 0, accurate for every d, finite (and with finite
    gradients) even where d itself underflows: there it is log(d) - d/2, to within d^2/24."""
    d = log_d.exp()
    small = log_d < -10
    return torch.where(small, log_d - d / 2, torch.log(-torch.expm1(-d.clamp(min=math.exp(-10)))))


def _at_least_float32(params: torch.Tensor) -> torch.Tensor:
    """A half-precision decoder output (bf16 or fp16 autocast) in float32; float32 and float64 as they are."""
    return params.to(torch.promote_types(params.dtype, torch.float32))


def discretized_logistic_log_likelihood(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per image, summed over sub-pixels, for 8-bit images x = k / 255, (B, C, H, W).

    `params` (B, 2C, H, W): channels [0, C) are the logistics' means, [C, 2C) their log-scales, in
    the units of x. The probability of value k is the logistic's mass on [x - 1/510, x + 1/510],
    with the bin of 0 open to -inf and that of 255 open to +inf. All in log space: with u and l the
    bin's edges in standard units (u - l = d = 1 / (255 scale)),

        log(sigmoid(u) - sigmoid(l)) = logsigmoid(u) + logsigmoid(-l) + log(1 - exp(-d))

    is exact and never subtracts two rounded probabilities, however far the bin is in a tail and
    however narrow it is (a difference of CDFs would round to 0 there and give log(0)). In float32
    at least, also under bf16 autocast: bins of 1/255 are below bfloat16's resolution near 1.
    """
    mean, log_scale = _at_least_float32(params).chunk(2, dim=1)
    log_scale = log_scale.clamp(min=MIN_LOG_SCALE)
    inv_scale = torch.exp(-log_scale)
    centred = x - mean
    upper = (centred + HALF_BIN) * inv_scale
    lower = (centred - HALF_BIN) * inv_scale
    log_below_upper = F.logsigmoid(upper)  # log P(X <= upper edge): the bin of 0
    log_above_lower = F.logsigmoid(-lower)  # log P(X >= lower edge): the bin of 255
    log_in_bin = log_below_upper + log_above_lower + _log1mexp(-log_scale - math.log(255))
    log_p = torch.where(x < HALF_BIN, log_below_upper, torch.where(x > 1 - HALF_BIN, log_above_lower, log_in_bin))
    return log_p.flatten(1).sum(1)


def discretized_logistic_mean(params: torch.Tensor) -> torch.Tensor:
    """The exact mean of each sub-pixel's discretised logistic, in [0, 1], (B, C, H, W).

    E[X] = sum_k (k / 255) P(k) = (1/255) sum_{j=1..255} P(X >= j / 255), and P(X >= j / 255) is
    sigmoid((mean - t_j) / scale) with t_j = (j - 0.5) / 255 the lower edge of value j's bin.
    One threshold at a time: 255 passes over the output, no (B, C, H, W, 255) tensor.
    """
    mean, log_scale = _at_least_float32(params).chunk(2, dim=1)
    inv_scale = torch.exp(-log_scale.clamp(min=MIN_LOG_SCALE))
    total = torch.zeros_like(mean)
    for j in range(1, 256):
        total += torch.sigmoid((mean - (j - 0.5) / 255) * inv_scale)
    return total / 255


def discretized_logistic_start(pixel_mean: torch.Tensor) -> torch.Tensor:
    """Means and log-scales (2C, H, W) of logistics centred on `pixel_mean` (C, H, W), each as wide
    as a variable in [0, 1] with that mean can be (variance m (1 - m); a logistic's is (pi s)^2 / 3),
    so the start is never confidently wrong. The mean is known, the spread is not."""
    m = pixel_mean.clamp(1.0 / 255, 1 - 1.0 / 255)
    log_scale = 0.5 * torch.log(3 * m * (1 - m)) - math.log(math.pi)
    return torch.cat([pixel_mean, log_scale])


def shared_scale_start(pixel_mean: torch.Tensor) -> torch.Tensor:
    """The means (C, H, W) of logistics centred on `pixel_mean`: their scale is not the decoder's to start."""
    return pixel_mean


class Likelihood(NamedTuple):
    """p(x|z) as the decoder parametrises it."""

    outputs_per_channel: int  # decoder outputs per sub-pixel: the decoder has this many x C channels
    log_likelihood: LogLikelihood  # (decoder output, x) -> log p(x|z) per image, in nats
    pixel_means: Callable[[torch.Tensor], torch.Tensor]  # decoder output -> E[x|z] in [0, 1], (B, C, H, W)
    start: Callable[[torch.Tensor], torch.Tensor]  # pixel means (C, H, W) -> the network's output bias for them
    decoder_output: str  # what the decoder's output is, for whoever uses it without this code (export.json)
    # The log-scales are one learned parameter per channel (`VAE.log_scale`), not outputs of the network,
    # which then has outputs_per_channel - 1 outputs per sub-pixel.
    learned_scale: bool = False


# The names `--model.likelihood` accepts (its `--help` lists them); `LIKELIHOODS` has one p(x|z) per name.
LikelihoodName = Literal["bernoulli", "logistic", "logistic_shared_scale"]
LIKELIHOODS = {
    "bernoulli": Likelihood(
        1, bernoulli_log_likelihood, torch.sigmoid, bernoulli_start,
        decoder_output="Bernoulli logits (B, C, H, W); sigmoid(logits) is the pixel means in [0, 1]",
    ),
    "logistic": Likelihood(
        2, discretized_logistic_log_likelihood, discretized_logistic_mean, discretized_logistic_start,
        decoder_output=(
            "discretised logistics (B, 2C, H, W): channels [0, C) their means m, [C, 2C) their log-scales "
            "log s, in the units of x in [0, 1]; value k of 0..255 has the logistic's mass on "
            "[(k - 0.5) / 255, (k + 0.5) / 255], the bins of 0 and 255 open to -inf and +inf; the pixel means "
            "are sum_{j=1..255} sigmoid((m - (j - 0.5) / 255) / s) / 255, close to clamp(m, 0, 1)"
        ),
    ),
    "logistic_shared_scale": Likelihood(
        2, discretized_logistic_log_likelihood, discretized_logistic_mean, shared_scale_start,
        decoder_output=(
            "discretised logistics (B, 2C, H, W), as for `logistic`, except that the log-scales of channel c "
            "(channel C + c) are one learned number for every image and pixel"
        ),
        learned_scale=True,
    ),
}  # fmt: skip


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent dimension of each image, analytic, (B, latent)."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, analytic, summed over latent dimensions."""
    return gaussian_kl_per_dim(mu, logvar).sum(-1)


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
    output: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    log_likelihood: LogLikelihood = bernoulli_log_likelihood,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon, kl) per image, with loss = recon + kl: the negative ELBO in nats, from the decoder's output."""
    recon = -log_likelihood(output, x)
    kl = gaussian_kl(mu, logvar)
    return recon + kl, recon, kl


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """A differentiable draw z ~ N(mu, exp(logvar)): the noise is outside the graph."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)), diagonal, summed over the last (latent) dimension."""
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), the prior of a one-layer VAE, summed over the last (latent) dimension."""
    zero = z.new_zeros(())
    return gaussian_log_density(z, zero, zero)


def log_weight_terms(
    x: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    log_likelihood: LogLikelihood = bernoulli_log_likelihood,
    log_prior: Callable[[torch.Tensor], torch.Tensor] = standard_normal_log_density,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x|z), log p(z) - log q(z|x)) for k samples z (k, B, latent) of the B images x: each (k, B).

    Their sum is the log importance weight log w = log p(x|z) p(z) / q(z|x). Kept apart so that a
    KL weight (warm-up) can scale the second term, as it scales the KL term of the ELBO. `log_prior`
    gives log p(z), or, for a hierarchy (`vae.hierarchy`), a one-sample estimate of it that makes w
    the joint proposal's weight.
    """
    k = len(z)
    log_px_z = log_likelihood(decode(z.flatten(0, 1)), x.expand(k, *x.shape).flatten(0, 1))
    log_qz = gaussian_log_density(z, mu, logvar)
    return log_px_z.view(k, len(x)), log_prior(z) - log_qz


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
    log_likelihood: LogLikelihood = bernoulli_log_likelihood,
    log_prior: Callable[[torch.Tensor], torch.Tensor] = standard_normal_log_density,
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
        log_px_z, log_prior_ratio = log_weight_terms(x, z, mu, logvar, decode, log_likelihood, log_prior)
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
    log_likelihood: LogLikelihood = bernoulli_log_likelihood,
    log_prior: Callable[[torch.Tensor], torch.Tensor] = standard_normal_log_density,
) -> torch.Tensor:
    """-log p(x) per image, in nats, estimated with k importance samples from q(z|x) (Burda et al. 2015).

        log p(x) ~ log (1/k) sum_i w_i,   w_i = p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)

    By Jensen this is a lower bound on log p(x) in expectation, tighter as k grows, and the
    negative ELBO's estimator at k = 1. All in log space: the weights themselves under- or
    overflow (log p(x|z) is hundreds of nats). An evaluation tool, so no gradients.

    Memory: the k samples are decoded in chunks of at most `chunk_size` (sample, image) pairs and
    the chunks are combined with a running logsumexp, so memory does not grow with k (a few
    (chunk_size, C, H, W) float tensors: 26 MB each for MNIST at the default chunk size, 100 MB for
    3 x 32 x 32 images) and k = 5000 runs on a CPU. The noise is drawn one sample (a (B, latent)
    tensor) at a time, so for a given generator state the result does not depend on `chunk_size`.
    """
    mu, logvar = encode(x)
    return importance_weighted_terms(x, mu, logvar, decode, k, chunk_size, generator, log_likelihood, log_prior)[0]
