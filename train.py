"""Train, resume, validate, test: `python train.py --help`. See README.md."""

from vae.cli import main

if __name__ == "__main__":
    main()
