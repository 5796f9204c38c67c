"""Posterior collapse, made visible: how much each latent dimension is used.

A VAE can switch latent dimensions off: q(z_u|x) = N(0, 1) = p(z_u) for every x, so the
dimension carries no information and costs no KL. Two views of it, over a whole data set:

- the KL per dimension, E_x KL(q(z_u|x) || N(0, 1)): near 0 for a dimension that is off;
- active units (Burda et al. 2015): dimension u is active when Cov_x(E_q[z_u]) > 0.01, i.e. its
  posterior mean moves with the input.

A torchmetrics `Metric`, so the sums behind both are added across devices under DDP.
"""

import torch
from torchmetrics import Metric

ACTIVE_THRESHOLD = 0.01


class LatentUsage(Metric):
    """Accumulates sums of mu, mu^2 and per-dimension KL over images; `compute()` gives
    (number of active units, KL per dimension)."""

    full_state_update = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        for name in ("sum_mu", "sum_mu2", "sum_kl"):
            self.add_state(name, default=torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        mu, logvar = mu.double(), logvar.double()
        self.sum_mu += mu.sum(0)
        self.sum_mu2 += mu.pow(2).sum(0)
        self.sum_kl += 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(0)
        self.count += len(mu)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sum_mu / self.count
        variance = self.sum_mu2 / self.count - mean.pow(2)  # Cov_x(E_q[z_u]), the diagonal
        return (variance > ACTIVE_THRESHOLD).sum(), (self.sum_kl / self.count).float()
