"""The importance-weighted estimate of -log p(x), checked where the true value is known exactly.

The exact cases use a decoder that ignores z: then p(x|z) = p(x), which a Bernoulli log-prob gives
exactly, and every importance weight is p(x) * p(z) / q(z|x). A wrong sign or a missing term in
log p(z) or log q(z|x) moves the estimate by nats, far beyond the tolerances below.
"""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from vae.elbo import gaussian_log_density, importance_weighted_nll, negative_elbo
from vae.model import VAE


def constant_decoder(logits: torch.Tensor):
    """p(x|z) = Bernoulli(logits) for every z: one image's logits, whatever z is."""
    return lambda z: logits.expand(len(z), *logits.shape[1:])


def fixed_posterior(mu: torch.Tensor, logvar: torch.Tensor):
    return lambda x: (mu, logvar)


def exact_case(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary images, decoder logits, and the true -log p(x) of each image under that decoder."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(1, 1, 28, 28, generator=g)
    x = torch.bernoulli(torch.sigmoid(logits).expand(n, 1, 28, 28), generator=g)
    true_nll = -Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    return x, logits, true_nll


def test_gaussian_log_density_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    z, mu, logvar = torch.randn(3, 5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    expected = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_density(z, mu, logvar), expected)


def test_with_the_prior_as_proposal_every_weight_is_p_of_x_exactly():
    """z is independent of x here, so the exact posterior is the prior: the estimate is exact at any k."""
    x, logits, true_nll = exact_case(6)
    encode = fixed_posterior(torch.zeros(6, 3), torch.zeros(6, 3))
    for k in (1, 7):
        torch.testing.assert_close(importance_weighted_nll(x, encode, constant_decoder(logits), k), true_nll)


def test_with_another_proposal_the_estimate_converges_to_the_true_nll():
    x, logits, true_nll = exact_case(6)
    mu = torch.linspace(-0.5, 0.5, 6 * 3).view(6, 3)
    logvar = torch.full((6, 3), math.log(1.2**2))  # wider than the prior, so the weights have finite variance
    torch.manual_seed(0)
    estimate = importance_weighted_nll(x, fixed_posterior(mu, logvar), constant_decoder(logits), k=5000)
    assert (estimate - true_nll).abs().max() < 0.05  # seen: < 0.025 over 10 seeds


def test_one_sample_is_the_negative_elbo_in_expectation():
    """k = 1: E[-log w] = -log p(x) + KL(q || p), which `negative_elbo` computes analytically here."""
    n = 20_000
    x, logits, true_nll = exact_case(1)
    mu, logvar = torch.full((n, 2), 0.7), torch.full((n, 2), math.log(0.5**2))
    torch.manual_seed(1)
    samples = importance_weighted_nll(x.expand(n, 1, 28, 28), fixed_posterior(mu, logvar), constant_decoder(logits), 1)
    elbo, _, kl = negative_elbo(logits, x, mu[:1], logvar[:1])
    assert kl.item() > 1  # a proposal far enough from the prior that a wrong log q would show
    assert abs(samples.mean() - elbo) < 4 * samples.std() / math.sqrt(n)
    torch.testing.assert_close(elbo, true_nll + kl)


def small_random_case(seed: int) -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(seed)
    return VAE(hidden_dim=32, latent_dim=4), torch.bernoulli(torch.full((64, 1, 28, 28), 0.3))


def test_more_samples_give_a_lower_estimate_on_average():
    totals = dict.fromkeys((1, 10, 100), 0.0)
    for seed in range(3):
        model, x = small_random_case(seed)
        for k in totals:
            totals[k] += importance_weighted_nll(x, model.encode, model.decode, k).mean().item()
    assert totals[1] > totals[10] > totals[100]


@pytest.mark.parametrize("chunk_size", [1, 64 * 3 + 5])  # one sample per chunk; chunks that do not divide k
def test_chunking_does_not_change_the_answer(chunk_size):
    model, x = small_random_case(0)
    one_chunk = importance_weighted_nll(x, model.encode, model.decode, 50, 64 * 50, torch.Generator().manual_seed(0))
    chunked = importance_weighted_nll(x, model.encode, model.decode, 50, chunk_size, torch.Generator().manual_seed(0))
    torch.testing.assert_close(chunked, one_chunk)


def test_finite_with_many_samples_and_saturated_logits():
    """log p(x|z) of thousands of nats: the weights would underflow to 0 outside log space."""
    model, x = small_random_case(0)
    with torch.no_grad():
        model.decoder[-2].weight.mul_(1000)
    nll = importance_weighted_nll(x[:4], model.encode, model.decode, k=5000, chunk_size=1024)
    assert torch.isfinite(nll).all() and (nll > 1000).all()


def test_k_below_one_is_refused():
    model, x = small_random_case(0)
    with pytest.raises(ValueError, match="at least 1"):
        importance_weighted_nll(x, model.encode, model.decode, 0)
