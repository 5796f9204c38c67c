"""The discretised logistic likelihood: a true distribution over the 256 values of each sub-pixel.

It equals the logistic's mass on each bin, is finite at any scale, and is used by every loss term.
"""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from vae.elbo import (
    LIKELIHOODS,
    discretized_logistic_log_likelihood,
    discretized_logistic_mean,
    importance_weighted_terms,
    negative_elbo,
)
from vae.model import LOG_SCALE_SPEED, VAE
from vae.module import VAEModule

VALUES = torch.arange(256, dtype=torch.float64) / 255  # the 8-bit values


def every_value_under(mean: float, log_scale: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """log p(k / 255) for k = 0..255 under one sub-pixel's discretised logistic, (256,)."""
    x = VALUES.to(dtype).view(256, 1, 1, 1)
    params = torch.tensor([mean, log_scale], dtype=dtype).view(1, 2, 1, 1).expand(256, 2, 1, 1)
    return discretized_logistic_log_likelihood(params, x)


# means inside, at the edges of and far outside [0, 1]; scales from a thousandth of a bin to 50x the range
CASES = [(m, s) for m in (0.3, 0.5, 0.0, 1.0, -0.4, 1.7) for s in (-12.0, -6.0, -3.0, 0.0, 4.0)]


@pytest.mark.parametrize("mean, log_scale", CASES)
def test_the_256_values_of_a_sub_pixel_have_probabilities_that_sum_to_one(mean, log_scale):
    total = torch.logsumexp(every_value_under(mean, log_scale), 0)
    assert abs(total.item()) < 1e-12  # log of the sum, exact to float64 rounding


@pytest.mark.parametrize("mean, log_scale", [(0.3, -3.0), (0.62, -5.5), (-0.1, -2.0), (0.9, 1.0)])
def test_each_value_has_the_logistic_mass_of_its_bin(mean, log_scale):
    """Brute force: the logistic's CDF differences over the bin edges (k +- 0.5) / 255, edge bins open."""
    edges = (torch.arange(257, dtype=torch.float64) - 0.5) / 255
    edges[0], edges[-1] = -math.inf, math.inf
    cdf = torch.sigmoid((edges - mean) / math.exp(log_scale))
    mass = cdf[1:] - cdf[:-1]
    torch.testing.assert_close(every_value_under(mean, log_scale).exp(), mass, rtol=1e-9, atol=1e-15)
    # and in log space where the brute force is itself accurate (masses not lost to rounding)
    accurate = mass > 1e-6
    torch.testing.assert_close(every_value_under(mean, log_scale)[accurate], mass[accurate].log(), rtol=1e-7, atol=0)


def test_a_bin_far_in_a_tail_gets_its_log_probability_not_log_zero():
    """Value 200 under a logistic at 0 of scale 0.01, 78 scales away: in float32 both CDFs round to 1
    and their difference to 0. The exact value from the upper tails, sigma(-lower) - sigma(-upper), in float64."""
    scale = 0.01
    log_p = every_value_under(0.0, math.log(scale), torch.float32)[200]
    upper, lower = (200 / 255 + 0.5 / 255) / scale, (200 / 255 - 0.5 / 255) / scale
    exact = math.log(1 / (1 + math.exp(lower)) - 1 / (1 + math.exp(upper)))
    assert math.isfinite(log_p.item()) and abs(log_p.item() - exact) < 1e-4 * abs(exact)


@pytest.mark.parametrize("log_scale", [-1e4, -100.0, -30.0, 30.0, 100.0, 1e4])
def test_extreme_scales_give_finite_values_and_gradients(log_scale):
    x = (torch.arange(256) / 255).view(256, 1, 1, 1)  # float32, as the data module gives them
    params = torch.tensor([0.4, log_scale]).view(1, 2, 1, 1).repeat(256, 1, 1, 1).requires_grad_()
    log_p = discretized_logistic_log_likelihood(params, x)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(params.grad).all()
    assert abs(torch.logsumexp(log_p, 0).item()) < 1e-5
    assert torch.isfinite(discretized_logistic_mean(params)).all()


@pytest.mark.parametrize("mean, log_scale", [(0.3, -3.0), (-0.2, -1.5), (0.97, -4.0), (0.5, 2.0)])
def test_the_pixel_mean_is_the_mean_of_the_256_values(mean, log_scale):
    params = torch.tensor([mean, log_scale], dtype=torch.float64).view(1, 2, 1, 1)
    expected = (every_value_under(mean, log_scale).exp() * VALUES).sum()
    torch.testing.assert_close(discretized_logistic_mean(params).view(()), expected, rtol=1e-12, atol=1e-12)


def test_the_shared_scale_is_one_learned_number_per_channel_at_every_image_and_pixel():
    """`logistic_shared_scale`: the decoder's log-scales are LOG_SCALE_SPEED x one parameter per
    channel (not another channel's, not the network's), which the optimiser trains and checkpoints keep."""
    model = VAE(hidden_dim=16, latent_dim=2, arch="conv", image_shape=(3, 8, 8), likelihood="logistic_shared_scale")
    assert model.decoder(torch.zeros(1, 2)).shape == (1, 3, 8, 8)  # the network outputs the means alone
    with torch.no_grad():
        model.log_scale.copy_(torch.tensor([-1.0, -2.0, -3.0]) / LOG_SCALE_SPEED)
    output = model.decode(torch.randn(4, 2))
    torch.testing.assert_close(output[:, 3:], torch.tensor([-1.0, -2.0, -3.0]).view(1, 3, 1, 1).expand(4, 3, 8, 8))
    module = VAEModule(hidden_dim=16, latent_dim=2, image_shape=(3, 8, 8), likelihood="logistic_shared_scale")
    trained = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert id(module.model.log_scale) in trained and "model.log_scale" in module.state_dict()
    x = torch.randint(0, 256, (4, 3, 8, 8)) / 255
    (-module.model.likelihood.log_likelihood(module.model.decode(torch.zeros(4, 2)), x).sum()).backward()
    assert module.model.log_scale.grad.abs().min() > 0


def test_the_importance_weighted_terms_use_the_likelihood_they_are_given():
    """k = 1, the same noise: nll and recon are the one-sample ELBO and its reconstruction term under the
    logistic, whose decoder output (2C channels) the Bernoulli could not even read."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 4, 4), generator=g) / 255
    mu, logvar = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    weights = torch.randn(2, 2 * 48, generator=g)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return (z @ weights).view(-1, 6, 4, 4)

    logistic = LIKELIHOODS["logistic"].log_likelihood
    nll, recon = importance_weighted_terms(
        x, mu, logvar, decode, 1, generator=torch.Generator().manual_seed(1), log_likelihood=logistic
    )
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=torch.Generator().manual_seed(1))
    loss, expected_recon, kl = negative_elbo(decode(z), x, mu, logvar, logistic)
    torch.testing.assert_close(recon, expected_recon)
    log_prior_ratio = Normal(0.0, 1.0).log_prob(z).sum(1) - Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    torch.testing.assert_close(nll, expected_recon - log_prior_ratio)  # -log w, w = p(x|z) p(z) / q(z|x)


def test_the_default_module_trains_on_the_bernoulli_elbo():
    """MNIST's default objective, computed independently with torch.distributions from the same draw."""
    torch.manual_seed(0)
    module = VAEModule(hidden_dim=16, latent_dim=3)
    x = torch.rand(5, 1, 28, 28)
    torch.manual_seed(1)
    loss, objective = module._loss_and_objective(x)

    torch.manual_seed(1)
    mu, logvar = module.model.encode(x)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    logits = module.model.decoder(z)
    # grey levels: -BCE, written out as x log p + (1 - x) log(1 - p) from Bernoulli's two log-probs
    ones, zeros = Bernoulli(logits=logits).log_prob(torch.ones_like(x)), Bernoulli(logits=logits).log_prob(0 * x)
    log_px_z = (x * ones + (1 - x) * zeros).flatten(1).sum(1)
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(loss, kl - log_px_z)
    torch.testing.assert_close(objective, (kl - log_px_z).mean())


def test_a_half_precision_decoder_output_is_evaluated_in_float32():
    """Under bf16 autocast the decoder's output is bfloat16, whose resolution near 1 is about one
    8-bit level: the likelihood must still be the float32 one of that output."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 8, 8), generator=g) / 255
    params = torch.cat([torch.rand(8, 3, 8, 8, generator=g), -4 + torch.rand(8, 3, 8, 8, generator=g)], 1)
    params = params.bfloat16()
    expected = discretized_logistic_log_likelihood(params.float(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_p = discretized_logistic_log_likelihood(params, x)
    assert log_p.dtype == torch.float32
    torch.testing.assert_close(log_p, expected)
    torch.testing.assert_close(discretized_logistic_mean(params), discretized_logistic_mean(params.float()))


def test_under_bf16_true_a_pixel_at_level_128_is_scored_on_bin_128(data_dir):
    """bfloat16 rounds 128/255 to 0.50390625, half a bin higher: the batch must reach the likelihood as the
    exact 8-bit values whatever the precision, and a bfloat16 network must take it as it is.

    Known answer: a logistic of mean 0.5 and scale s (its bfloat16 values) gives level 128, whose bin
    is [127.5/255, 128.5/255], sigmoid((128.5/255 - 0.5) / s) - sigmoid((127.5/255 - 0.5) / s) per pixel.
    """
    from lightning.pytorch import Trainer

    from vae.data import MNISTDataModule

    trainer = Trainer(precision="bf16-true", accelerator="cpu", logger=False, enable_progress_bar=False)
    data = MNISTDataModule(data_dir=str(data_dir))
    data.trainer = trainer
    images = torch.full((2, 1, 28, 28), 128, dtype=torch.uint8)
    x, _ = data.on_after_batch_transfer((images, torch.zeros(2)), 0)
    assert x.dtype == torch.float32 and torch.equal(x, torch.full_like(x, 128) / 255)

    mean, log_scale = torch.tensor(0.5).bfloat16(), torch.tensor(math.log(1 / 255)).bfloat16()
    params = torch.cat([mean.expand(2, 1, 28, 28), log_scale.expand(2, 1, 28, 28)], 1)  # bfloat16, as decoded
    s = math.exp(log_scale.item())
    sigmoid = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    bin_128 = math.log(sigmoid((128.5 / 255 - 0.5) / s) - sigmoid((127.5 / 255 - 0.5) / s))  # about -1.47
    log_p = LIKELIHOODS["logistic"].log_likelihood(params, x)
    torch.testing.assert_close(log_p, torch.full((2,), 784 * bin_128), rtol=1e-5, atol=0)

    module = VAEModule(hidden_dim=16, latent_dim=3, likelihood="logistic").to(torch.bfloat16)  # bf16-true's weights
    loss, _ = module._loss_and_objective(x)  # the float32 batch through a bfloat16 network: no dtype error
    assert loss.dtype == torch.float32 and loss.isfinite().all()
