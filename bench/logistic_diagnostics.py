"""Where a discretised-logistic decoder puts its effort: log-scales, errors, NLL and gradients, by region.

    python bench/logistic_diagnostics.py --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt [--images 500]

For a run trained with `--model.likelihood logistic` or `logistic_shared_scale` on images with a
flat background (the coloured digits of bench/coloured_digits.py, Fashion-MNIST), on the first
`--images` test images decoded from the mean of q(z|x): each sub-pixel is "background" when its
pixel equals the image's corner pixel in every channel, else "strokes". Printed per channel and
per region: the mean log-scale of the logistics the likelihood scores, the mean absolute error of
their means (in 8-bit levels), the NLL per sub-pixel, and the mean |d NLL / d mean| (the gradient
a sub-pixel sends into the decoder); then the norm of the gradient that each region alone sends
to the decoder's weights.
Prints the same numbers as JSON on its last line (for docs/likelihoods.md's tables).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vae.elbo import discretized_logistic_log_likelihood  # noqa: E402
from vae.run import model_inputs, open_run  # noqa: E402


def regions(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, C, H, W) images -> masks of the same shape: background (the corner pixel's colour) and strokes."""
    background = (x == x[:, :, :1, :1]).all(dim=1, keepdim=True).expand_as(x)
    return {"background": background, "strokes": ~background}


def nll_per_subpixel(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p of each sub-pixel (B, C, H, W) under logistics (B, 2C, H, W): every sub-pixel an image of its own."""
    mean, log_scale = params.chunk(2, dim=1)
    one_each = torch.stack([mean.flatten(), log_scale.flatten()], dim=1)[:, :, None, None]
    return -discretized_logistic_log_likelihood(one_each, x.reshape(-1, 1, 1, 1)).reshape(x.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    module, datamodule = open_run(args.ckpt_path)
    if module.model.likelihood.log_likelihood is not discretized_logistic_log_likelihood:
        likelihood = module.hparams.likelihood
        raise SystemExit(f"error: {args.ckpt_path} was trained with --model.likelihood {likelihood}, not a logistic.")
    x = model_inputs(datamodule, datamodule.test_set.images[: args.images])
    model = module.model
    with torch.no_grad():
        mu, _ = model.encode(x)
    params = model.decode(mu)  # the logistics the likelihood scores
    params.retain_grad()
    nll = nll_per_subpixel(params, x)
    nll.sum().backward(retain_graph=True)
    mean, log_scale = params.detach().chunk(2, dim=1)
    mean_grad = params.grad.chunk(2, dim=1)[0].abs()
    table, decoder_grad = {}, {}
    for name, mask in regions(x).items():
        for c in range(x.shape[1]):
            where = mask[:, c]
            table[f"{name}, channel {c}"] = {
                "share of sub-pixels": round(where.float().mean().item(), 4),
                "log-scale": round(log_scale[:, c][where].mean().item(), 3),
                "NLL (nats)": round(nll[:, c][where].mean().item(), 3),
                "|error| (8-bit levels)": round(255 * (mean[:, c] - x[:, c]).abs()[where].mean().item(), 2),
                "|dNLL/dmean|": round(mean_grad[:, c][where].mean().item(), 1),
            }
        model.zero_grad()
        nll[mask].sum().backward(retain_graph=True)  # the gradient this region alone sends to the decoder
        grads = [p.grad.flatten() for p in model.decoder.parameters() if p.grad is not None]
        decoder_grad[name] = torch.cat(grads).norm().item()
    for row, values in table.items():
        print(f"{row:22s} " + "  ".join(f"{k} {v}" for k, v in values.items()))
    print("decoder gradient norm from each region alone: " + ", ".join(f"{k} {v:.4g}" for k, v in decoder_grad.items()))
    print(json.dumps({"regions": table, "decoder_grad_norm": decoder_grad}))


if __name__ == "__main__":
    main()
