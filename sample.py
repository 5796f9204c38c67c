"""Pictures from a trained VAE, as PNG files.

    python sample.py --ckpt_path PATH [--n 64] [--seed 0] [--out DIR] [--data_dir DIR]

writes into DIR (default: `<run>/samples/` for a checkpoint in `<run>/checkpoints/`, else `samples/`):

    prior.png            n samples from the prior (pixel means)
    reconstructions.png  n test images, each row of inputs above its reconstructions
    interpolations.png   8 rows (fewer for a small test set): steps between two test images' posterior means
    manifold.png         latent_dim 2 only: the decoder over a grid of the prior's quantiles
    latent_scatter.png   latent_dim 2 only: every test image's posterior mean, coloured by label

Every picture has the images' shape saved in the checkpoint (colour for colour images) and shows
pixel means of p(x|z), whichever the likelihood. The test images come from the data source and
options saved in the checkpoint (MNIST, a folder of images, ...; binarised as the run's were), read
from the run's data folder, or from `--data_dir` if the files have moved.
"""

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from vae.checkpoints import check_checkpoint, run_dir_of
from vae.data import datamodule_of_run
from vae.module import VAEModule
from vae.pictures import image_grid, interpolation_grid, latent_scatter, manifold_grid, reconstruction_grid

INTERPOLATION_ROWS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by train.py")
    parser.add_argument("--n", type=int, default=64, help="prior samples and reconstructed test images")
    parser.add_argument("--seed", type=int, default=0, help="chooses the samples and the test images")
    parser.add_argument("--out", help="output folder (default: the run's samples/, else samples/)")
    parser.add_argument("--data_dir", help="where the run's data files are, as --data.data_dir (default: the run's)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Write the pictures; return the folder they are in."""
    args = parse_args(argv)
    ckpt = Path(args.ckpt_path)
    saved = check_checkpoint(ckpt).get("datamodule_hyper_parameters", {})
    module = VAEModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    try:
        data = datamodule_of_run(saved, **({"data_dir": args.data_dir} if args.data_dir else {}))
        data.prepare_data()
        data.setup("test")
    except (ValueError, OSError) as err:  # missing or unreadable files, a source that is not imported
        raise SystemExit(f"error: the run's test images: {err}") from None
    out = Path(args.out) if args.out else (run_dir_of(ckpt) or Path()) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    x, labels = data.on_after_batch_transfer((data.test_set.images, data.test_set.labels), 0)
    generator = torch.Generator().manual_seed(args.seed)
    chosen = x[torch.randperm(len(x), generator=generator)[: max(args.n, 2 * INTERPOLATION_ROWS)]]
    rows = min(INTERPOLATION_ROWS, len(chosen) // 2)  # fewer for a folder with few test images

    model = module.model
    pictures = {
        "prior": image_grid(module.sample(args.n, generator=generator)),
        "reconstructions": reconstruction_grid(model, chosen[: args.n]),
        "interpolations": interpolation_grid(model, chosen[:rows], chosen[rows : 2 * rows]),
    }
    if model.latent_dim == 2:
        pictures |= {"manifold": manifold_grid(model), "latent_scatter": latent_scatter(model, x, labels)}
    for name, picture in pictures.items():
        save_image(picture, out / f"{name}.png")
        print(out / f"{name}.png")
    return out


if __name__ == "__main__":
    main()
