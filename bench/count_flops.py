"""Multiply-accumulates per image of each architecture's encoder and decoder: what sizes a GPU recipe.

    python bench/count_flops.py                          # the defaults of configs/gpu_binarized.yaml
    python bench/count_flops.py --hidden_dim 512 --latent_dim 20

Counts the convolutions and linear layers (everything else is elementwise and small beside them)
with forward hooks on one image. A training step costs about 3x the forward pass per image
(forward, then backward through activations and weights); an importance-weighted test costs one
encoder pass and k decoder passes per image.
"""

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae.model import ARCHITECTURES, VAE  # noqa: E402


def multiply_accumulates(network: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the Conv2d, ConvTranspose2d and Linear layers for one forward pass of x."""
    total = 0

    def count(layer: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):  # each output value: in_channels x kernel products
            total += output.numel() * layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, nn.ConvTranspose2d):  # each input value: out_channels x kernel products
            total += inputs[0].numel() * layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, nn.Linear):
            total += output.numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in network.modules()]
    with torch.no_grad():
        network(x)
    for hook in hooks:
        hook.remove()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden_dim", type=int, default=512)
    parser.add_argument("--latent_dim", type=int, default=32)
    args = parser.parse_args()
    print("| arch | parameters | encoder MMAC/image | decoder MMAC/image |")
    print("|---|---|---|---|")
    for arch in ARCHITECTURES:
        model = VAE(args.hidden_dim, args.latent_dim, arch)
        encoder = multiply_accumulates(nn.Sequential(model.encoder, model.to_mu), torch.zeros(1, 1, 28, 28))
        encoder += model.to_logvar.in_features * model.to_logvar.out_features
        decoder = multiply_accumulates(model.decoder, torch.zeros(1, args.latent_dim))
        parameters = sum(p.numel() for p in model.parameters())
        print(f"| {arch} | {parameters:,} | {encoder / 1e6:.2f} | {decoder / 1e6:.2f} |")


if __name__ == "__main__":
    main()
