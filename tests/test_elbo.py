"""vae/elbo.py's terms against torch.distributions: KL, log-likelihood, negative ELBO, free bits."""

import math

import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from vae.elbo import bernoulli_log_likelihood, free_bits_kl, gaussian_kl, gaussian_kl_per_dim, negative_elbo


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(8, 20, generator=g), 2 * torch.randn(8, 20, generator=g)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_kl_is_zero_only_at_the_prior():
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max() == 0
    assert (gaussian_kl(torch.full((3, 5), 0.1), torch.zeros(3, 5)) > 0).all()


def test_log_likelihood_matches_bernoulli_log_prob_on_binary_images():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(4, 1, 28, 28, generator=g)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3), generator=g)
    expected = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x), expected)


def test_log_likelihood_is_finite_for_saturated_logits():
    logits = torch.tensor([[-200.0, 200.0, -200.0, 200.0]])
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    value = bernoulli_log_likelihood(logits, x)
    assert torch.isfinite(value).all()
    torch.testing.assert_close(value, torch.tensor([-400.0]))


def test_negative_elbo_matches_a_monte_carlo_estimate():
    """-ELBO = E_q[-log p(x|z) + log q(z|x) - log p(z)], estimated by sampling z ~ q(z|x) with
    torch.distributions; `negative_elbo` on the same draws must agree with it, term by term."""
    torch.manual_seed(2)
    latent, pixels, samples = 3, 6, 200_000
    mu, logvar = torch.randn(1, latent), torch.randn(1, latent) * 0.5
    decoder = torch.randn(latent, pixels)  # a fixed linear decoder, so E_q[log p(x|z)] needs sampling
    x = torch.bernoulli(torch.full((1, pixels), 0.5))

    q = Normal(mu, (0.5 * logvar).exp())
    z = q.sample((samples,)).squeeze(1)
    log_px_z = Bernoulli(logits=z @ decoder).log_prob(x).sum(1)
    log_q = q.log_prob(z.unsqueeze(1)).sum(-1).squeeze(1)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(1)
    monte_carlo = -(log_px_z + log_p - log_q)

    # one row per draw: the loss a training step computes for each of them
    each = (samples, -1)
    loss, recon, kl = negative_elbo(z @ decoder, x.expand(each), mu.expand(each), logvar.expand(each))
    assert loss.shape == recon.shape == kl.shape == (samples,)  # one value per image, not a batch mean
    torch.testing.assert_close(recon, -log_px_z)  # the reconstruction term is the draw's -log p(x|z)
    standard_error = monte_carlo.std() / math.sqrt(samples)
    assert abs(kl[0] - (log_q - log_p).mean()) < 4 * standard_error  # the analytic KL is E_q[log q - log p]
    assert abs(loss.mean() - monte_carlo.mean()) < 4 * standard_error  # so the loss is the -ELBO


def free_bits_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch whose 4 latent dimensions have batch-mean KLs on both sides of 0.5 nats."""
    g = torch.Generator().manual_seed(3)
    mu = (torch.randn(16, 4, generator=g) * torch.tensor([0.1, 2.0, 0.3, 3.0])).requires_grad_()
    logvar = torch.zeros(16, 4, requires_grad=True)
    return mu, logvar, gaussian_kl_per_dim(mu, logvar).mean(0).detach()


def test_free_bits_leave_dimensions_above_the_floor_as_they_are():
    mu, logvar, kl_per_dim = free_bits_case()
    above = kl_per_dim > 0.5
    assert above.tolist() == [False, True, False, True]  # the case tests both sides
    value = free_bits_kl(mu, logvar, 0.5)
    torch.testing.assert_close(value, kl_per_dim[above].sum() + 0.5 * (~above).sum())
    value.backward()
    mu_plain, logvar_plain, _ = free_bits_case()
    gaussian_kl(mu_plain, logvar_plain).mean().backward()
    torch.testing.assert_close(mu.grad[:, above], mu_plain.grad[:, above])


def test_free_bits_give_no_gradient_to_dimensions_below_the_floor():
    mu, logvar, kl_per_dim = free_bits_case()
    free_bits_kl(mu, logvar, 0.5).backward()
    below = kl_per_dim <= 0.5
    assert (mu.grad[:, below] == 0).all() and (logvar.grad[:, below] == 0).all()
    assert (mu.grad[:, ~below] != 0).any()


def test_free_bits_at_zero_is_the_mean_kl():
    mu, logvar, _ = free_bits_case()
    torch.testing.assert_close(free_bits_kl(mu, logvar, 0.0), gaussian_kl(mu, logvar).mean())
