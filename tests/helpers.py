"""What the tests share besides fixtures: small synthetic MNIST files in IDX format, hermetic data
folders, the CLI run in-process and small, a test's expected numbers, a real `train.py` in a process.

torch and the project are imported where they are used: pytest-xdist's controller process loads
conftest.py, which imports this file, and runs no test.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

    from vae.cli import VAECLI

REPO = Path(__file__).resolve().parents[1]
TRAIN_SIZE, TEST_SIZE = 640, 160


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """LeCun's IDX format for uint8 data: 0x00000803-style magic, big-endian sizes, then the bytes."""
    header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(n.to_bytes(4, "big") for n in tensor.shape)
    return header + tensor.contiguous().numpy().tobytes()


def synthetic_mnist(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurry bars whose position depends on the label: learnable, so a loss can visibly fall."""
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    images = torch.zeros(n, 28, 28)
    for i, label in enumerate(labels.tolist()):
        images[i, 4 + 2 * label : 7 + 2 * label, 4:24] = 1.0
    images = (images + 0.2 * torch.rand(n, 28, 28, generator=g)).clamp(0, 1)
    return (images * 255).to(torch.uint8), labels


def synthetic_files() -> dict[str, bytes]:
    train_images, train_labels = synthetic_mnist(TRAIN_SIZE, seed=1)
    test_images, test_labels = synthetic_mnist(TEST_SIZE, seed=2)
    return {
        "train-images-idx3-ubyte": idx_bytes(train_images),
        "train-labels-idx1-ubyte": idx_bytes(train_labels),
        "t10k-images-idx3-ubyte": idx_bytes(test_images),
        "t10k-labels-idx1-ubyte": idx_bytes(test_labels),
    }


def make_hermetic(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], shipped_checksums: bool = False) -> None:
    """The synthetic files are the ones whose checksums count (unless `shipped_checksums`: then MNIST's);
    any attempt to fetch fails the test."""
    from vae.data import mnist as mnist_files

    if not shipped_checksums:
        monkeypatch.setattr(mnist_files, "MD5", {n: hashlib.md5(b).hexdigest() for n, b in files.items()})

    def no_network(names, dest):
        raise AssertionError(f"a test tried to fetch {list(names)} from the network")

    monkeypatch.setattr(mnist_files, "FETCHERS", (no_network,))


def write_data_dir(root: Path, files: dict[str, bytes]) -> Path:
    """A data folder with the four synthetic files in torchvision's layout."""
    from vae.data import mnist as mnist_files

    raw = mnist_files.raw_dir(root / "data")
    raw.mkdir(parents=True)
    for name, content in files.items():
        (raw / name).write_bytes(content)
    return root / "data"


def run_cli(*args: str, data_dir: Path) -> VAECLI:
    """`python train.py ARGS` in-process, small and quiet, on the synthetic data."""
    from vae.cli import VAECLI

    subcommand, *rest = args
    fast = ["--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"]
    fast = [*fast, "--trainer.log_every_n_steps", "1"] if subcommand == "fit" else []
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    common = ["--data.data_dir", str(data_dir), "--data.val_size", "64", "--data.batch_size", "32"]
    small = ["--model.hidden_dim", "32", "--model.latent_dim", "4"] if "--ckpt_path" not in rest else []
    return VAECLI(args=[subcommand, *common, *small, *fast, *quiet, *rest])


def expected_test_metrics(ckpt: Path, images: torch.Tensor, k: int, batch_size: int) -> dict[str, float]:
    """What `test --ckpt_path ckpt --model.iw_samples k` must report for `images` (the test set's first
    ones, in order, as floats in [0, 1]), computed without `vae.elbo`: the noise drawn as the test
    draws it (from the random state saved in the checkpoint, batch after batch, one (images, latent)
    tensor per sample), log p(x|z) written out with logsigmoid, the Gaussian terms from
    torch.distributions, exact means over the images."""
    import math

    import torch
    import torch.nn.functional as F
    from torch.distributions import Normal, kl_divergence

    from vae.module import VAEModule

    model = VAEModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).model.eval()
    torch.set_rng_state(torch.load(ckpt, weights_only=True)["rng_states"]["ranks"][0]["torch"])
    recon, kl, nll = [], [], []
    with torch.no_grad():
        for x in images.split(batch_size):
            mu, logvar = model.encode(x)
            q, prior = Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)
            z = torch.stack([mu + q.scale * torch.randn(mu.shape) for _ in range(k)])
            logits = model.decode(z.flatten(0, 1)).view(k, len(x), -1)
            pixels = x.flatten(1)
            log_px_z = (pixels * F.logsigmoid(logits) + (1 - pixels) * F.logsigmoid(-logits)).sum(-1)
            log_w = log_px_z + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
            recon.append(-log_px_z.mean(0))
            kl.append(kl_divergence(q, prior).sum(-1))
            nll.append(-(torch.logsumexp(log_w, 0) - math.log(k)))
    recon, kl, nll = torch.cat(recon), torch.cat(kl), torch.cat(nll)
    means = {"recon": recon, "kl": kl, "loss": recon + kl, "nll": nll}
    return {f"test/{term}": values.mean().item() for term, values in means.items()}


def fit_in_a_new_folder(tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes], name: str, *args: str):
    """`run_cli("fit", *args)` in a new folder holding the synthetic `data/`, hermetic, for the module-
    and session-scoped fixtures that train once (they cannot use the per-test `monkeypatch`).
    Returns (that folder, the CLI)."""
    root = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        make_hermetic(patch, files)
        patch.chdir(root)
        cli = run_cli("fit", *args, data_dir=write_data_dir(root, files))
    return root, cli


# `python train.py` on the synthetic data in a fresh interpreter, as tests/test_fault.py kills and
# resumes it: big enough that a checkpoint write takes a few milliseconds (so a kill can land inside
# one), small enough that the fit takes seconds.
SCRIPT = REPO / "tests" / "scripts" / "train_synthetic.py"
SCRIPT_ARGS = [
    "--model.hidden_dim=512", "--data.val_size=64", "--data.batch_size=32",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.max_epochs=5",
    "--checkpoint.save_last_every_n_steps=4",
]  # fmt: skip


class ScriptFit:
    """`python tests/scripts/train_synthetic.py SCRIPT_ARGS` in `cwd`, started at once and left to run."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self._console = open(cwd / "console.txt", "w")  # a file, not a pipe: nothing to drain while it runs
        command = [sys.executable, str(SCRIPT), *SCRIPT_ARGS]
        self._process = subprocess.Popen(command, cwd=cwd, stdout=self._console, stderr=subprocess.STDOUT)

    def finished(self) -> str:
        """Waits for the run to end (it must succeed): everything it printed."""
        if self._process.returncode is None:
            self._process.wait(timeout=300)
            self._console.close()
        console = (self.cwd / "console.txt").read_text()
        assert self._process.returncode == 0, console[-3000:]
        return console

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._console.close()


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two checkpoints hold bit-identical weights and Adam moments (their epoch and step are the caller's)."""
    import torch

    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for index, moments in opt_a["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, opt_b["state"][index][name]), (index, name)
