"""A report on a trained VAE: how good its samples are, what its latents hold, what it finds unusual.

    python report.py --ckpt_path PATH|last [--data_dir DIR] [--ood SOURCE [--ood_option KEY=VALUE ...]]
                     [--iw_samples 100] [--n_samples N] [--seed 0] [--classifier_dir DIR] [--out DIR]

writes into DIR (default: `<run>/report/` for a checkpoint in `<run>/checkpoints/`, else `report/`):

    index.html        the page: every number, picture and curve below, readable without TensorBoard
    report.json       every number on the page
    predictions.pt    `predict`'s file for the test set (mu, logvar, label, loss, nll, index), and
                      `ood_loss`, `ood_nll` for the out-of-distribution set when one is given
    *.png             the pictures

and sends the same scalars (`report/...`) and pictures to the run's TensorBoard events or metrics.csv,
at the checkpoint's step. The data are the checkpoint's own (its data source and options); the
files are read from `--data_dir` (default: the folder the run used). The sections: `vae/report/`;
what each number means: docs/report.md.
"""

import argparse
import json
from pathlib import Path

import torch

from vae.cli_checks import OneLineArgumentParser
from vae.report.make import make_report
from vae.run import data_source, find_checkpoint, open_run, output_dir, read_data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(prog="report.py", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by train.py, or `last`")
    parser.add_argument("--data_dir", help="where the run's data files are (default: the run's --data.data_dir)")
    parser.add_argument(
        "--ood", help="an out-of-distribution data source, named as train.py's --data: e.g. FashionMNISTDataModule"
    )
    parser.add_argument(
        "--ood_option", action="append", default=[], metavar="KEY=VALUE", help="an option of --ood's class (repeat)"
    )
    parser.add_argument("--iw_samples", type=int, default=100, help="importance samples k for each image's NLL")
    parser.add_argument("--n_samples", type=int, help="prior samples for the Fréchet distance (default: test set size)")
    parser.add_argument("--seed", type=int, default=0, help="draws the samples, the pictures' images, the k samples")
    parser.add_argument(
        "--classifier_dir", help="where the feature classifier is cached (default: <data_dir>/report_classifiers)"
    )
    parser.add_argument("--out", help="output folder (default: the run's report/, else report/)")
    args = parser.parse_args(argv)
    if args.iw_samples < 1:
        parser.error(f"--iw_samples must be at least 1 (each image's NLL needs samples), got {args.iw_samples}")
    if args.n_samples is not None and args.n_samples < 2:
        parser.error(f"--n_samples must be at least 2 (a Fréchet distance needs a covariance), got {args.n_samples}")
    for option in args.ood_option:
        if "=" not in option:
            parser.error(f"--ood_option takes KEY=VALUE, e.g. --ood_option data_dir=data; got {option!r}")
    if args.ood_option and not args.ood:
        parser.error("--ood_option needs --ood, the data source it is an option of")
    return args


def option_value(text: str) -> object:
    """A --ood_option value: a number, true/false, null or a JSON string when it parses as one, else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> Path:
    """Open the run (and the --ood source), make the report; return its folder."""
    args = parse_args(argv)
    source = data_source(args.ood, "--ood") if args.ood else None  # an unknown name fails before any loading
    checkpoint = find_checkpoint(args.ckpt_path, "reporting on")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module, datamodule = open_run(checkpoint, device, args.data_dir, iw_samples=args.iw_samples)
    ood = None
    if source is not None:
        options = {"data_dir": str(getattr(datamodule, "data_dir", "data"))}
        options |= {key: option_value(value) for key, value in (o.split("=", 1) for o in args.ood_option)}
        try:
            ood_data = source(**options)
        except (TypeError, ValueError) as err:
            raise SystemExit(f"error: --ood {args.ood} does not take these options ({err}).") from None
        read_data(ood_data, f"--ood {args.ood}")
        ood = (args.ood, ood_data)
    classifier_dir = Path(args.classifier_dir) if args.classifier_dir else None
    out = output_dir(checkpoint, "report", args.out)
    make_report(module, datamodule, checkpoint, out, args.seed, args.n_samples, classifier_dir, ood)
    print(out / "index.html")
    return out


if __name__ == "__main__":
    main()
