"""A folder of coloured 32x32 digits built from MNIST, to try the 8-bit likelihoods on images of one's own.

    python bench/coloured_digits.py --mnist_dir data --out coloured_digits [--train 8000 --test 2000]

Each digit is drawn in a random bright colour on a random dark background (2 pixels of background
around MNIST's 28x28), saved as PNG under `train/<digit>/` and `test/<digit>/`: the layout the
README's "Your own images" command reads. The colours and the images chosen depend only on --seed.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vae.data.idx import raw_dir, read_idx_set  # noqa: E402


def colour(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) uint8 grey digits -> (N, 32, 32, 3) uint8: the strokes in a bright colour on a dark one."""
    n = len(digits)
    ink, paper = rng.uniform(0.55, 1.0, (n, 1, 1, 3)), rng.uniform(0.0, 0.35, (n, 1, 1, 3))
    alpha = np.pad(digits, ((0, 0), (2, 2), (2, 2)))[..., None] / 255.0
    return np.round(255 * (paper * (1 - alpha) + ink * alpha)).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist_dir", type=Path, default=Path("data"), help="--data.data_dir of train.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for split, prefix, count in (("train", "train", args.train), ("test", "t10k", args.test)):
        digits, classes = read_idx_set(raw_dir(args.mnist_dir), prefix)
        chosen = rng.choice(len(digits), count, replace=False)
        for index, picture in zip(chosen, colour(digits[chosen, 0].numpy(), rng), strict=True):
            folder = args.out / split / str(int(classes[index]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"{index:05d}.png")
    print(f"{args.out}: {args.train} train and {args.test} test images, 32x32 RGB, in class subfolders")


if __name__ == "__main__":
    main()
