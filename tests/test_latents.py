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
