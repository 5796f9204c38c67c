"""A trained VAE as files that need only PyTorch: no Lightning, no code from this repository.

    python export.py --ckpt_path PATH|last [--out DIR]

writes into DIR (default: `<run>/export/` for a checkpoint in `<run>/checkpoints/`, else `export/`):

    encoder.pt2   x (B, C, H, W) floats in [0, 1] -> (mu, logvar), each (B, latent_dim): q(z|x)
    decoder.pt2   z (B, decoder_latent_dim) -> the parameters of p(x|z): for the Bernoulli likelihood,
                  logits (B, C, H, W), whose sigmoid is the pixel means; for the discretised
                  logistic, (B, 2C, H, W), means then log-scales. z is the latent the prior N(0, I)
                  draws: for a hierarchy (--model.upper_latent_dims), the top layer's, decoded through
                  the mean of each layer below; else the encoder's (decoder_latent_dim = latent_dim)
    export.json   latent_dim, decoder_latent_dim, image_shape [C, H, W], likelihood, what the decoder outputs
                  (decoder_output, from the likelihood in vae/elbo.py) and the checkpoint they came from

Both are `torch.export` programs (any batch size B >= 1), loaded with `torch.export.load(path).module()`:

    decoder = torch.export.load("export/decoder.pt2").module()
    digits = torch.sigmoid(decoder(torch.randn(64, 20)))  # MNIST: 64 new digits, (64, 1, 28, 28) in [0, 1]
"""

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from vae.cli_checks import OneLineArgumentParser
from vae.model import VAE
from vae.run import find_checkpoint, load_model, output_dir


class Encoder(nn.Module):
    """x -> (mu, logvar): the encoder of a `VAE` with its two heads, as one module to export."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x)


class Decoder(nn.Module):
    """z of the top layer -> the parameters of p(x|z) (`VAE.decode_top`), as one module to export."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_top(z)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(prog="export.py", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by train.py, or `last`")
    parser.add_argument("--out", help="output folder (default: the run's export/, else export/)")
    return parser.parse_args(argv)


def export(vae: VAE) -> tuple[torch.export.ExportedProgram, torch.export.ExportedProgram]:
    """(encoder, decoder) programs with a dynamic batch size."""
    batch = torch.export.Dim("batch", min=1)
    x, z = torch.rand(2, *vae.image_shape), torch.randn(2, vae.top_latent_dim)
    with torch.no_grad():
        encoder = torch.export.export(Encoder(vae), (x,), dynamic_shapes={"x": {0: batch}})
        decoder = torch.export.export(Decoder(vae), (z,), dynamic_shapes={"z": {0: batch}})
    return encoder, decoder


def main(argv: list[str] | None = None) -> Path:
    """Write the exported encoder and decoder; return the folder they are in."""
    args = parse_args(argv)
    checkpoint = find_checkpoint(args.ckpt_path, "exporting")
    module = load_model(checkpoint, "cpu")
    vae = module.model
    encoder, decoder = export(vae)  # before any folder exists: a failure leaves nothing behind
    out = output_dir(checkpoint, "export", args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.export.save(encoder, out / "encoder.pt2")
    torch.export.save(decoder, out / "decoder.pt2")
    about = {
        "latent_dim": vae.latent_dim,
        "decoder_latent_dim": vae.top_latent_dim,
        "image_shape": list(vae.image_shape),
        "likelihood": module.hparams.likelihood,
        "decoder_output": vae.likelihood.decoder_output,
        "ckpt_path": str(checkpoint),
    }
    (out / "export.json").write_text(json.dumps(about, indent=2) + "\n")
    for name in ("encoder.pt2", "decoder.pt2", "export.json"):
        print(out / name)
    return out


if __name__ == "__main__":
    main()
