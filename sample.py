"""Pictures from a trained VAE, as PNG files.

    python sample.py --ckpt_path PATH|last [--n_samples 64] [--seed 0] [--out DIR] [--data_dir DIR]

writes into DIR (default: `<run>/samples/` for a checkpoint in `<run>/checkpoints/`, else `samples/`):

    prior.png            n_samples samples from the prior (pixel means)
    reconstructions.png  n_samples test images, each row of inputs above its reconstructions
    interpolations.png   8 rows (fewer for a small test set): steps between two test images' posterior means
    manifold.png         latent_dim 2 only: the decoder over a grid of the prior's quantiles
    latent_scatter.png   latent_dim 2 only: every test image's posterior mean, coloured by label

Every picture has the images' shape saved in the checkpoint (colour for colour images) and shows
pixel means of p(x|z), whichever the likelihood. The test images come from the data source and
options saved in the checkpoint (MNIST, a folder of images, ...; binarised as the run's were), read
from the run's data folder, or from `--data_dir` if the files have moved.
"""

import argparse
import sys
from pathlib import Path

import torch
from torchvision.utils import save_image

from vae.cli_checks import OneLineArgumentParser
from vae.pictures import image_grid, interpolation_grid, latent_scatter, manifold_grid, reconstruction_grid
from vae.run import find_checkpoint, model_inputs, open_run, output_dir

INTERPOLATION_ROWS = 8
RENAMED = {"--n": "--n_samples"}  # old spellings, accepted with a notice until the next release


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(prog="sample.py", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by train.py, or `last`")
    parser.add_argument("--n_samples", type=int, default=64, help="prior samples and reconstructed test images")
    parser.add_argument("--seed", type=int, default=0, help="chooses the samples and the test images")
    parser.add_argument("--out", help="output folder (default: the run's samples/, else samples/)")
    parser.add_argument("--data_dir", help="where the run's data files are, as --data.data_dir (default: the run's)")
    args = parser.parse_args(renamed(sys.argv[1:] if argv is None else argv))
    if args.n_samples < 1:
        parser.error(f"--n_samples must be at least 1, got {args.n_samples}")
    return args


def renamed(argv: list[str]) -> list[str]:
    """`argv` with each old option spelling (`RENAMED`) replaced by the new one, saying so once on stderr."""
    new = []
    for arg in argv:
        name, equals, value = arg.partition("=")
        if name in RENAMED:
            print(f"note: {name} is now {RENAMED[name]}; the old spelling goes in the next release.", file=sys.stderr)
            arg = RENAMED[name] + equals + value
        new.append(arg)
    return new


def main(argv: list[str] | None = None) -> Path:
    """Write the pictures; return the folder they are in."""
    args = parse_args(argv)
    checkpoint = find_checkpoint(args.ckpt_path, "sampling from")
    module, data = open_run(checkpoint, "cpu", args.data_dir)
    out = output_dir(checkpoint, "samples", args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, labels = model_inputs(data, data.test_set.images), data.test_set.labels
    generator = torch.Generator().manual_seed(args.seed)
    chosen = x[torch.randperm(len(x), generator=generator)[: max(args.n_samples, 2 * INTERPOLATION_ROWS)]]
    rows = min(INTERPOLATION_ROWS, len(chosen) // 2)  # fewer for a folder with few test images

    model = module.model
    pictures = {
        "prior": image_grid(module.sample(args.n_samples, generator=generator)),
        "reconstructions": reconstruction_grid(model, chosen[: args.n_samples]),
        "interpolations": interpolation_grid(model, chosen[:rows], chosen[rows : 2 * rows]),
    }
    if model.top_latent_dim == 2:
        pictures["manifold"] = manifold_grid(model)
    if model.latent_dim == 2:
        pictures["latent_scatter"] = latent_scatter(model, x, labels)
    for name, picture in pictures.items():
        save_image(picture, out / f"{name}.png")
        print(out / f"{name}.png")
    return out


if __name__ == "__main__":
    main()
