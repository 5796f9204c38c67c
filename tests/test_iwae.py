"""The importance-weighted estimate of -log p(x), checked where the true value is known exactly.

The exact cases use a decoder that ignores z: then p(x|z) = p(x), which a Bernoulli log-prob gives
exactly, and every importance weight is p(x) * p(z) / q(z|x). A wrong sign or a missing term in
log p(z) or log q(z|x) moves the estimate by nats, far beyond the tolerances below.
"""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from vae.elbo import (
    gaussian_kl,
    gaussian_log_density,
    importance_weighted_nll,
    importance_weighted_terms,
    log_weight_terms,
    negative_elbo,
    negative_iw_bound,
)
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


def test_each_log_weight_pairs_a_sample_with_its_own_image():
    """log p(x_b|z_ib) at [i, b]: decoding k x B samples in one batch must not mix images up."""
    model, x = small_random_case(0)
    x = x[:3]
    mu, logvar = model.encode(x)
    z = mu + torch.randn(4, *mu.shape)
    log_px_z, log_prior_ratio = log_weight_terms(x, z, mu, logvar, model.decode)
    for i in range(4):
        recon = negative_elbo(model.decode(z[i]), x, mu, logvar)[1]
        torch.testing.assert_close(log_px_z[i], -recon)
        expected = Normal(0.0, 1.0).log_prob(z[i]).sum(1) - Normal(mu, (0.5 * logvar).exp()).log_prob(z[i]).sum(1)
        torch.testing.assert_close(log_prior_ratio[i], expected)


@torch.no_grad()
def test_the_bound_at_one_sample_is_the_elbo_for_the_same_noise_and_tightens_with_k():
    model, x = small_random_case(1)
    x = x[:8]
    mu, logvar = model.encode(x)
    std, seeds = (0.5 * logvar).exp(), range(20)
    bounds = {}
    for k in (1, 4, 16):
        bounds[k] = torch.stack(
            [
                negative_iw_bound(sum(log_weight_terms(x, mu + std * noise(k, mu, seed), mu, logvar, model.decode)))
                for seed in seeds
            ]
        )  # (seeds, images)
    # k = 1: the one-sample -ELBO for the same noise, with the KL sampled rather than analytic
    recon = torch.stack(
        [negative_elbo(model.decode(mu + std * noise(1, mu, seed)[0]), x, mu, logvar)[1] for seed in seeds]
    )
    sampled_kl = bounds[1] - recon
    standard_error = sampled_kl.std(0) / math.sqrt(len(seeds))
    assert ((sampled_kl.mean(0) - gaussian_kl(mu, logvar)).abs() < 5 * standard_error).all()
    means = {k: v.mean().item() for k, v in bounds.items()}
    assert means[1] > means[4] > means[16]


def noise(k: int, mu: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(k, *mu.shape, generator=torch.Generator().manual_seed(seed))


def test_the_bound_is_differentiable_for_training():
    model, x = small_random_case(2)
    mu, logvar = model.encode(x[:4])
    z = mu + (0.5 * logvar).exp() * torch.randn(3, *mu.shape)
    log_px_z, log_prior_ratio = log_weight_terms(x[:4], z, mu, logvar, model.decode)
    negative_iw_bound(log_px_z + log_prior_ratio).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_one_sample_gives_the_one_sample_elbo_for_the_same_noise():
    """k = 1: recon + KL is exactly the -ELBO of one stochastic pass drawing the same noise."""
    model, x = small_random_case(3)
    torch.manual_seed(7)
    logits, mu, logvar = model(x)
    elbo, recon, kl = negative_elbo(logits, x, mu, logvar)
    torch.manual_seed(7)
    mu, logvar = model.encode(x)
    nll, iw_recon = importance_weighted_terms(x, mu, logvar, model.decode, 1)
    torch.testing.assert_close(iw_recon, recon)
    torch.testing.assert_close(iw_recon + gaussian_kl(mu, logvar), elbo)
    torch.manual_seed(7)
    torch.testing.assert_close(nll, importance_weighted_nll(x, model.encode, model.decode, 1))


def test_the_recon_term_over_k_samples_hardly_moves_with_the_seed():
    model, x = small_random_case(4)
    mu, logvar = model.encode(x)

    def mean_recon(k: int, seed: int) -> float:
        g = torch.Generator().manual_seed(seed)
        return importance_weighted_terms(x, mu, logvar, model.decode, k, generator=g)[1].mean().item()

    spread = {k: torch.tensor([mean_recon(k, seed) for seed in range(8)]).std().item() for k in (1, 64)}
    assert spread[64] < spread[1] / 4  # 1/sqrt(64) = 1/8 in expectation
