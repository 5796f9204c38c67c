"""The networks of the classic MLP VAE (Kingma & Welling 2014). Plain PyTorch, no Lightning.

    encoder  x(784) -> Linear(hidden) -> ReLU -> (mu, logvar), each Linear(hidden -> latent)
    z        mu + exp(0.5 * logvar) * eps,  eps ~ N(0, I)
    decoder  z -> Linear(hidden) -> ReLU -> Linear(784) -> Bernoulli logits

Images go in as (B, 1, 28, 28) floats in [0, 1]; the decoder returns logits of the same shape, so
the loss (`vae.elbo`) never needs to know which architecture produced them.
"""

import torch
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
IMAGE_PIXELS = 28 * 28


class VAE(nn.Module):
    def __init__(self, hidden_dim: int = 512, latent_dim: int = 20) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(IMAGE_PIXELS, hidden_dim), nn.ReLU())
        self.to_mu = nn.Linear(hidden_dim, latent_dim)
        self.to_logvar = nn.Linear(hidden_dim, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, IMAGE_PIXELS),
            nn.Unflatten(1, IMAGE_SHAPE),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z|x) = N(mu, exp(logvar)), each (B, latent_dim)."""
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """A differentiable draw z ~ N(mu, exp(logvar)): the noise is outside the graph."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of p(x|z), (B, 1, 28, 28). Apply sigmoid for pixel means."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One stochastic pass: (logits, mu, logvar)."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    @torch.no_grad()
    def init_output_bias(self, pixel_mean: torch.Tensor) -> None:
        """Start the decoder at the data's marginal: sigmoid(bias) = mean of each pixel.

        Before any learning, every reconstruction is then the average digit rather than grey
        noise, which removes the first epoch's detour (Burda et al. 2015 initialise this way).
        """
        eps = 1.0 / 255
        self.decoder[-2].bias.copy_(torch.logit(pixel_mean.clamp(eps, 1 - eps)).flatten())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x decoded from the mean of q(z|x), as pixel means in [0, 1]: the noise-free reconstruction."""
        mu, _ = self.encode(x)
        return torch.sigmoid(self.decode(mu))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the prior, as pixel means in [0, 1], (n, 1, 28, 28)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return torch.sigmoid(self.decode(z))
