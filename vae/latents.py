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

from vae.elbo import gaussian_kl_per_dim

ACTIVE_THRESHOLD = 0.01
SUMS = ("sum_mu", "sum_mu2", "sum_kl")


class LatentUsage(Metric):
    """Accumulates sums of mu, mu^2 and per-dimension KL over images; `compute()` gives
    (number of active units, KL per dimension).

    The states are float32, because Apple's MPS has no float64. A plain float32 running sum of
    mu^2 over 10,000 images loses the digits that Var = E[mu^2] - E[mu]^2 needs when the means
    sit far from 0, so each sum is compensated (Kahan): `<sum>_carry` holds what rounding dropped,
    and `compute()` combines the two in float64 on the CPU, once per epoch.
    """

    full_state_update = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        for name in SUMS:
            for state in (name, f"{name}_carry"):
                self.add_state(state, default=torch.zeros(latent_dim), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        mu, logvar = mu.float(), logvar.float()  # bf16 under bf16-mixed
        self._add("sum_mu", mu.sum(0))
        self._add("sum_mu2", mu.pow(2).sum(0))
        self._add("sum_kl", gaussian_kl_per_dim(mu, logvar).sum(0))
        self.count += len(mu)

    def _add(self, name: str, value: torch.Tensor) -> None:
        """Kahan summation: the carry is subtracted from the next value, so dropped digits come back."""
        total, carry = getattr(self, name), getattr(self, f"{name}_carry")
        value = value - carry
        new_total = total + value
        setattr(self, f"{name}_carry", (new_total - total) - value)
        setattr(self, name, new_total)

    def _total(self, name: str) -> torch.Tensor:
        return getattr(self, name).cpu().double() - getattr(self, f"{name}_carry").cpu().double()

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        count, device = self.count.cpu().double(), self.sum_mu.device
        mean = self._total("sum_mu") / count
        variance = self._total("sum_mu2") / count - mean.pow(2)  # Cov_x(E_q[z_u]), the diagonal
        active = (variance > ACTIVE_THRESHOLD).sum()
        return active.to(device), (self._total("sum_kl") / count).float().to(device)
