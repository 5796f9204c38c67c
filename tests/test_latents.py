"""vae/latents.py: active units and KL per latent dimension, exact in float32 far from zero."""

import torch

from vae.latents import LatentUsage


def test_active_units_and_kl_per_dimension():
    g = torch.Generator().manual_seed(0)
    n = 4000
    mu = torch.stack([torch.randn(n, generator=g), 0.05 * torch.randn(n, generator=g), torch.zeros(n)], 1)
    logvar = torch.stack([torch.full((n,), -2.0), torch.zeros(n), torch.zeros(n)], 1)  # dims 2: the prior
    usage = LatentUsage(3)
    for chunk in range(0, n, 1000):  # batches add up to the whole set
        usage.update(mu[chunk : chunk + 1000], logvar[chunk : chunk + 1000])
    active, kl_per_dim = usage.compute()
    assert active.item() == 1  # var 1 > 0.01; var 0.0025 < 0.01; 0
    expected = 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar).mean(0)
    torch.testing.assert_close(kl_per_dim, expected, rtol=1e-5, atol=1e-6)
    assert kl_per_dim[2] == 0  # a collapsed dimension costs nothing


def test_active_units_are_counted_right_for_means_far_from_zero_in_float32_states():
    """Variances of 0.0098 and 0.0102 around a mean of 50, over 10,000 images in batches of 128:
    a plain float32 running sum of mu^2 (2.5e7) is off by more than the 0.0002 between them."""
    sign = torch.tensor([1.0, -1.0]).repeat(5_000)
    mu = 50 + torch.stack([0.0098**0.5 * sign, 0.0102**0.5 * sign], 1)  # variances exactly 0.0098, 0.0102
    usage = LatentUsage(2)
    for batch in mu.split(128):
        usage.update(batch, torch.zeros_like(batch))
    assert all(state.dtype != torch.float64 for state in usage.metric_state.values())  # MPS has no float64
    active, kl_per_dim = usage.compute()
    assert active.item() == 1
    torch.testing.assert_close(kl_per_dim, 0.5 * mu.double().pow(2).mean(0).float())  # logvar 0: KL = mu^2 / 2
