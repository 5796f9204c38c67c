"""The networks of the VAE (Kingma & Welling 2014). Plain PyTorch, no Lightning.

The classic MLP VAE (`arch="mlp"`, the default):

    encoder  x(784) -> Linear(hidden) -> ReLU -> (mu, logvar), each Linear(hidden -> latent)
    z        mu + exp(0.5 * logvar) * eps,  eps ~ N(0, I)
    decoder  z -> Linear(hidden) -> ReLU -> Linear(784) -> Bernoulli logits

a convolutional one sized for 28x28 (`arch="conv"`): two stride-2 convolutions (28 -> 14 -> 7)
before the hidden layer, and their transposes after it, then a per-pixel output bias; and a
residual one (`arch="resnet"`), the same shape with a residual block at 14x14 and at 7x7 on each
side, for the best likelihood (the headline recipe, `configs/gpu_binarized.yaml`).

Images go in as (B, 1, 28, 28) floats in [0, 1]; the decoder returns logits of the same shape, so
the loss (`vae.elbo`) never needs to know which architecture produced them.
"""

import torch
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
IMAGE_PIXELS = 28 * 28


class PixelBias(nn.Module):
    """A learned logit offset per pixel, for a last layer whose own bias is one per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(IMAGE_SHAPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


def mlp(hidden_dim: int, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    """(encoder x -> h, decoder z -> logits) of the classic MLP VAE."""
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(IMAGE_PIXELS, hidden_dim), nn.ReLU())
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, IMAGE_PIXELS),  # its bias is one per pixel already
        nn.Unflatten(1, IMAGE_SHAPE),
    )
    return encoder, decoder


def conv(hidden_dim: int, latent_dim: int, channels: int = 64) -> tuple[nn.Module, nn.Module]:
    """(encoder x -> h, decoder z -> logits): stride-2 convolutions 28 -> 14 -> 7 and back."""
    c, half = channels, channels // 2
    encoder = nn.Sequential(
        nn.Conv2d(1, half, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(half, c, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(c * 7 * 7, hidden_dim), nn.ReLU(),
    )  # fmt: skip
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, c * 7 * 7), nn.ReLU(), nn.Unflatten(1, (c, 7, 7)),
        nn.ConvTranspose2d(c, half, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(half, 1, 4, stride=2, padding=1, bias=False),
        PixelBias(),
    )  # fmt: skip
    return encoder, decoder


class ResidualBlock(nn.Module):
    """x + conv3x3(elu(conv3x3(elu(x)))): same channels, same size.

    The second convolution starts at zero, so every block starts as the identity and the stack
    trains without normalisation layers. Batch normalisation is avoided on purpose: it would make
    an image's likelihood depend on the other images (or importance samples) in its batch.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ELU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.ELU(), nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def resnet(hidden_dim: int, latent_dim: int, channels: int = 64) -> tuple[nn.Module, nn.Module]:
    """(encoder x -> h, decoder z -> logits): `conv`'s 28 -> 14 -> 7 and back, with a residual
    block at each resolution on each side (ELU, as in Kingma et al. 2016's ResNet VAE)."""
    c = channels
    encoder = nn.Sequential(
        nn.Conv2d(1, c, 4, stride=2, padding=1), ResidualBlock(c),  # 14x14
        nn.ELU(), nn.Conv2d(c, c, 4, stride=2, padding=1), ResidualBlock(c),  # 7x7
        nn.ELU(), nn.Flatten(), nn.Linear(c * 7 * 7, hidden_dim), nn.ELU(),
    )  # fmt: skip
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden_dim), nn.ELU(),
        nn.Linear(hidden_dim, c * 7 * 7), nn.Unflatten(1, (c, 7, 7)), ResidualBlock(c),  # 7x7
        nn.ELU(), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), ResidualBlock(c),  # 14x14
        nn.ELU(), nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1, bias=False),  # 28x28
        PixelBias(),
    )  # fmt: skip
    return encoder, decoder


ARCHITECTURES = {"mlp": mlp, "conv": conv, "resnet": resnet}


def _output_bias_layer(decoder: nn.Module) -> nn.Module | None:
    """The decoder's last layer with one bias per pixel (the one `init_output_bias` sets), if any."""
    for layer in reversed(list(decoder.modules())):
        bias = getattr(layer, "bias", None)
        if isinstance(bias, nn.Parameter) and bias.numel() == IMAGE_PIXELS:
            return layer
    return None


class VAE(nn.Module):
    """q(z|x) = N(mu, exp(logvar)), p(z) = N(0, I), p(x|z) Bernoulli, around an encoder/decoder pair."""

    def __init__(self, hidden_dim: int = 512, latent_dim: int = 20, arch: str = "mlp") -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"--model.arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}.")
        self.latent_dim = latent_dim
        self.encoder, self.decoder = ARCHITECTURES[arch](hidden_dim, latent_dim)
        # A plain reference, not a registered submodule: the layer's weights stay in state_dict once,
        # under decoder.*, so checkpoints keep their keys.
        self.__dict__["output_layer"] = _output_bias_layer(self.decoder)
        self.to_mu = nn.Linear(hidden_dim, latent_dim)
        self.to_logvar = nn.Linear(hidden_dim, latent_dim)

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
        if self.output_layer is None:
            raise ValueError("this decoder has no per-pixel output bias to start at the pixel means")
        eps = 1.0 / 255
        bias = self.output_layer.bias
        bias.copy_(torch.logit(pixel_mean.clamp(eps, 1 - eps)).reshape_as(bias).to(bias.device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x decoded from the mean of q(z|x), as pixel means in [0, 1]: the noise-free reconstruction."""
        mu, _ = self.encode(x)
        return torch.sigmoid(self.decode(mu))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the prior, as pixel means in [0, 1], (n, 1, 28, 28).

        z is drawn on the generator's device and then moved to the model's (and its dtype), so a CPU
        generator works with a model on a GPU, and a seed gives the same z wherever the model is.
        """
        weight = next(self.parameters())
        noise_device = weight.device if generator is None else generator.device
        z = torch.randn(n, self.latent_dim, generator=generator, device=noise_device)
        return torch.sigmoid(self.decode(z.to(weight.device, weight.dtype)))
