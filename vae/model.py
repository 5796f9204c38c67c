"""The networks of the VAE (Kingma & Welling 2014). Plain PyTorch, no Lightning.

The classic MLP VAE (`arch="mlp"`, the default), for MNIST's 1 x 28 x 28 (784 pixels):

    encoder  x(784) -> Linear(hidden) -> ReLU -> (mu, logvar), each Linear(hidden -> latent)
    z        mu + exp(0.5 * logvar) * eps,  eps ~ N(0, I)
    decoder  z -> Linear(hidden) -> ReLU -> Linear(784) -> Bernoulli logits

a convolutional one (`arch="conv"`): two stride-2 convolutions (28 -> 14 -> 7) before the hidden
layer, and their transposes after it, then a per-sub-pixel output bias; and a residual one
(`arch="resnet"`), the same shape with a residual block at 14x14 and at 7x7 on each side, for the
best likelihood (the headline recipe, `configs/gpu_binarized.yaml`).

Every architecture takes any image shape C x H x W (`image_shape`, from the data); the
convolutional ones halve the sides twice, so they need H and W divisible by 4. The decoder outputs
what the likelihood (`vae.elbo.LIKELIHOODS`) needs per sub-pixel: C channels of Bernoulli logits,
or 2C (a mean and a log-scale) for the discretised logistic (C means, and one learned log-scale
per channel, `VAE.log_scale`, for `logistic_shared_scale`).

Images go in as (B, C, H, W) floats in [0, 1], in any float dtype; the decoder returns (B, k C, H, W), so the loss
(`vae.elbo`) never needs to know which architecture produced it.
"""

import math
from typing import Literal

import torch
from torch import nn

from vae.elbo import LIKELIHOODS, LikelihoodName, reparameterize, standard_normal_log_density
from vae.hierarchy import LatentHierarchy

# A learned log-scale (`logistic_shared_scale`) is this many times its parameter: Adam moves a parameter
# by about the learning rate per step, and the log-scale has to travel several units in a few hundred.
LOG_SCALE_SPEED = 100.0


class PixelBias(nn.Module):
    """A learned offset per output (channel, row, column), for a last layer whose own bias is one per channel."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


def mlp(
    hidden_dim: int, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int
) -> tuple[nn.Module, nn.Module]:
    """(encoder x -> h, decoder z -> output) of the classic MLP VAE, for any image shape."""
    _, height, width = image_shape
    output_shape = (out_channels, height, width)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), hidden_dim), nn.ReLU())
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, math.prod(output_shape)),  # its bias is one per output already
        nn.Unflatten(1, output_shape),
    )
    return encoder, decoder


def _quarter_size(arch: str, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(H / 4, W / 4): the size after two stride-2 convolutions, for sides they divide exactly."""
    _, height, width = image_shape
    if height % 4 or width % 4:
        raise ValueError(
            f"--model.arch {arch} halves the images twice, so their height and width must be divisible by 4 "
            f"(e.g. 28x28, 32x32, 64x64); these are {height}x{width}: resize them to such a size, "
            "or use --model.arch mlp."
        )
    return height // 4, width // 4


def conv(
    hidden_dim: int, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int, channels: int = 64
) -> tuple[nn.Module, nn.Module]:
    """(encoder x -> h, decoder z -> output): stride-2 convolutions H -> H/2 -> H/4 and back."""
    c, half = channels, channels // 2
    h, w = _quarter_size("conv", image_shape)
    encoder = nn.Sequential(
        nn.Conv2d(image_shape[0], half, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(half, c, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(c * h * w, hidden_dim), nn.ReLU(),
    )  # fmt: skip
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, c * h * w), nn.ReLU(), nn.Unflatten(1, (c, h, w)),
        nn.ConvTranspose2d(c, half, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(half, out_channels, 4, stride=2, padding=1, bias=False),
        PixelBias((out_channels, *image_shape[1:])),
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


def resnet(
    hidden_dim: int, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int, channels: int = 64
) -> tuple[nn.Module, nn.Module]:
    """(encoder x -> h, decoder z -> output): `conv`'s H -> H/2 -> H/4 and back, with a residual
    block at each resolution on each side (ELU, as in Kingma et al. 2016's ResNet VAE)."""
    c = channels
    h, w = _quarter_size("resnet", image_shape)
    encoder = nn.Sequential(
        nn.Conv2d(image_shape[0], c, 4, stride=2, padding=1), ResidualBlock(c),  # H/2 (14x14 for MNIST)
        nn.ELU(), nn.Conv2d(c, c, 4, stride=2, padding=1), ResidualBlock(c),  # H/4 (7x7)
        nn.ELU(), nn.Flatten(), nn.Linear(c * h * w, hidden_dim), nn.ELU(),
    )  # fmt: skip
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden_dim), nn.ELU(),
        nn.Linear(hidden_dim, c * h * w), nn.Unflatten(1, (c, h, w)), ResidualBlock(c),  # H/4
        nn.ELU(), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), ResidualBlock(c),  # H/2
        nn.ELU(), nn.ConvTranspose2d(c, out_channels, 4, stride=2, padding=1, bias=False),  # H
        PixelBias((out_channels, *image_shape[1:])),
    )  # fmt: skip
    return encoder, decoder


# The names `--model.arch` accepts (its `--help` lists them); `ARCHITECTURES` has one network per name.
Architecture = Literal["mlp", "conv", "resnet"]
ARCHITECTURES = {"mlp": mlp, "conv": conv, "resnet": resnet}


def _output_bias_layer(decoder: nn.Module, outputs: int) -> nn.Module | None:
    """The decoder's last layer with one bias per output (the one `init_output_bias` sets), if any."""
    for layer in reversed(list(decoder.modules())):
        bias = getattr(layer, "bias", None)
        if isinstance(bias, nn.Parameter) and bias.numel() == outputs:
            return layer
    return None


def _checked_shape(image_shape) -> tuple[int, int, int]:
    """(C, H, W) as a tuple (a checkpoint or the command line may give a list), or a one-line error."""
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(
            f"--model.image_shape must be (channels, height, width), three positive integers; got {image_shape}."
        )
    return shape


class VAE(nn.Module):
    """q(z|x) = N(mu, exp(logvar)), p(z) = N(0, I), p(x|z) from `likelihood`, around an encoder/decoder pair.

    `image_shape` (C, H, W) is the shape of the images; `likelihood` names p(x|z) in
    `vae.elbo.LIKELIHOODS` and fixes how many outputs per sub-pixel the decoder has.
    `upper_latent_dims` adds stochastic layers above z (`vae.hierarchy`), bottom to top: then p(z) is
    theirs, and the prior's N(0, I) is on the top layer, of `top_latent_dim` dimensions.
    """

    def __init__(
        self,
        hidden_dim: int = 512,
        latent_dim: int = 20,
        arch: Architecture = "mlp",
        image_shape: tuple[int, int, int] = (1, 28, 28),
        likelihood: LikelihoodName = "bernoulli",
        upper_latent_dims: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.latent_dim, self.image_shape = latent_dim, _checked_shape(image_shape)
        self.top_latent_dim = upper_latent_dims[-1] if upper_latent_dims else latent_dim
        self.likelihood = LIKELIHOODS[likelihood]
        out_channels = (self.likelihood.outputs_per_channel - self.likelihood.learned_scale) * self.image_shape[0]
        self.encoder, self.decoder = ARCHITECTURES[arch](hidden_dim, latent_dim, self.image_shape, out_channels)
        # A plain reference, not a registered submodule: the layer's weights stay in state_dict once,
        # under decoder.*, so checkpoints keep their keys.
        outputs = out_channels * self.image_shape[1] * self.image_shape[2]
        self.__dict__["output_layer"] = _output_bias_layer(self.decoder, outputs)
        self.to_mu = nn.Linear(hidden_dim, latent_dim)
        self.to_logvar = nn.Linear(hidden_dim, latent_dim)
        # One log-scale per channel, for every image and pixel, stored divided by LOG_SCALE_SPEED; it starts
        # as wide as a value spread evenly over [0, 1] (a logistic's variance (pi s)^2 / 3 = 1/12).
        start = torch.full((self.image_shape[0],), -math.log(2 * math.pi) / LOG_SCALE_SPEED)
        self.log_scale = nn.Parameter(start) if self.likelihood.learned_scale else None
        # Last: the layers below draw the same initial weights as a one-layer VAE's from the same seed.
        self.hierarchy = LatentHierarchy((latent_dim, *upper_latent_dims)) if upper_latent_dims else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z|x) = N(mu, exp(logvar)), each (B, latent_dim).

        x may be float32 whatever the network's dtype: it enters the network in the weights' dtype
        (bfloat16 under `bf16-true`), while the likelihood compares the output with the exact x.
        """
        h = self.encoder(x.to(self.to_mu.weight.dtype))
        return self.to_mu(h), self.to_logvar(h)

    reparameterize = staticmethod(reparameterize)  # z ~ N(mu, exp(logvar)), differentiable (`vae.elbo`)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The parameters of p(x|z), (B, k C, H, W): Bernoulli logits (k = 1), or the discretised
        logistics' means then log-scales (k = 2; for `logistic_shared_scale`, `log_scale` at every
        image and pixel). `decode_means` gives pixel means."""
        output = self.decoder(z)
        if self.log_scale is None:
            return output
        log_scale = (LOG_SCALE_SPEED * self.log_scale).to(output.dtype).view(1, -1, 1, 1)
        return torch.cat([output, log_scale.expand_as(output)], dim=1)

    def decode_means(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z], the pixel means of p(x|z), in [0, 1], (B, C, H, W)."""
        return self.likelihood.pixel_means(self.decode(z))

    def decode_top(self, z_top: torch.Tensor) -> torch.Tensor:
        """The parameters of p(x|z) for a z of the top layer (B, top_latent_dim): with upper layers, through
        the mean of each p(z_{l-1}|z_l) down to z; without, `decode` itself. What traversals, the manifold
        and the exported decoder use: the prior's N(0, I) is on the top layer."""
        if self.hierarchy is None:
            return self.decode(z_top)
        return self.decode(self.hierarchy.down_from_top(z_top, sample=False))

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of z (..., latent_dim): N(0, I)'s, or the upper layers' one-sample estimate (`vae.hierarchy`)."""
        if self.hierarchy is None:
            return standard_normal_log_density(z)
        return self.hierarchy.log_prior(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One stochastic pass: (decoder output, mu, logvar)."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    @torch.no_grad()
    def init_output_bias(self, pixel_mean: torch.Tensor) -> None:
        """Start the decoder at the data's marginal, from each sub-pixel's mean (C, H, W): the
        Bernoulli's mean is it, the logistic is centred on it (`Likelihood.start`).

        Before any learning, every reconstruction is then the average image rather than grey
        noise, which removes the first epoch's detour (Burda et al. 2015 initialise this way).
        """
        if self.output_layer is None:
            raise ValueError("this decoder has no per-pixel output bias to start at the pixel means")
        bias = self.output_layer.bias
        bias.copy_(self.likelihood.start(pixel_mean).reshape_as(bias).to(bias.device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x decoded from the mean of q(z|x), as pixel means in [0, 1]: the noise-free reconstruction."""
        mu, _ = self.encode(x)
        return self.decode_means(mu)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the prior, as pixel means in [0, 1], (n, C, H, W); with upper layers, z drawn
        down the hierarchy from its top (ancestral sampling).

        z is drawn on the generator's device and then moved to the model's (and its dtype), so a CPU
        generator works with a model on a GPU, and a seed gives the same z wherever the model is.
        """
        weight = next(self.parameters())
        noise_device = weight.device if generator is None else generator.device
        z = torch.randn(n, self.top_latent_dim, generator=generator, device=noise_device)
        z = z.to(weight.device, weight.dtype)
        if self.hierarchy is not None:
            z = self.hierarchy.down_from_top(z, generator)
        return self.decode_means(z)
