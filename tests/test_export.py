"""export.py: the exported encoder and decoder run with plain PyTorch, outside this repository.

They load in a process that cannot import this repository and compute what the checkpoint computes;
bad checkpoints export nothing.
"""

import json
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch

import export
from tests.helpers import fit_in_a_new_folder
from tests.test_checkpoints import CreatesAFileWhenUnpickled
from vae.checkpoints import CheckpointError
from vae.elbo import LIKELIHOODS
from vae.module import VAEModule

# Runs with `python -I` (no cwd, no PYTHONPATH on sys.path) from a folder outside the repository.
OUTSIDE_THE_REPOSITORY = """
import sys, torch
try:
    import vae
    sys.exit("vae is importable here: this check would prove nothing")
except ImportError:
    pass
encoder = torch.export.load("export/encoder.pt2").module()
decoder = torch.export.load("export/decoder.pt2").module()
x, z = torch.load("inputs.pt", weights_only=True).values()
mu, logvar = encoder(x)
torch.save({"mu": mu, "logvar": logvar, "logits": decoder(z)}, "outputs.pt")
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, files) -> Path:
    """A conv model (the MLP is the easier case for torch.export), trained once for this file."""
    root, _ = fit_in_a_new_folder(
        tmp_path_factory, files, "trained", "--trainer.max_epochs", "1", "--model.arch", "conv"
    )
    return root / "lightning_logs/version_0/checkpoints/last.ckpt"


def test_the_export_computes_what_the_checkpoint_computes_without_this_repository(checkpoint, tmp_path):
    out = export.main(["--ckpt_path", str(checkpoint), "--out", str(tmp_path / "export")])
    assert json.loads((out / "export.json").read_text())["latent_dim"] == 4
    x, z = torch.rand(5, 1, 28, 28), torch.randn(3, 4)  # batch sizes the export never saw
    torch.save({"x": x, "z": z}, tmp_path / "inputs.pt")
    env = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH
    result = subprocess.run(
        [sys.executable, "-I", "-c", OUTSIDE_THE_REPOSITORY], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr

    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    model = VAEModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).model.eval()
    with torch.no_grad():
        mu, logvar = model.encode(x)
        torch.testing.assert_close(outputs["mu"], mu)
        torch.testing.assert_close(outputs["logvar"], logvar)
        torch.testing.assert_close(outputs["logits"], model.decode(z))


def test_by_default_the_export_goes_into_the_checkpoints_run(checkpoint):
    out = export.main(["--ckpt_path", str(checkpoint)])
    assert out == checkpoint.parent.parent / "export"
    assert sorted(p.name for p in out.iterdir()) == ["decoder.pt2", "encoder.pt2", "export.json"]


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_export_json_says_what_the_decoder_outputs_for_every_likelihood(likelihood, tmp_path):
    """The description comes from the likelihood itself: one defined without it does not exist."""
    module = VAEModule(hidden_dim=8, latent_dim=2, likelihood=likelihood)
    saved = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save(saved | {"pytorch-lightning_version": lightning.__version__}, tmp_path / "model.ckpt")
    out = export.main(["--ckpt_path", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "export")])
    about = json.loads((out / "export.json").read_text())
    assert about["likelihood"] == likelihood and about["decoder_output"] == LIKELIHOODS[likelihood].decoder_output
    channels = "(B, C, H, W)" if LIKELIHOODS[likelihood].outputs_per_channel == 1 else "(B, 2C, H, W)"
    assert channels in about["decoder_output"]


@pytest.mark.parametrize("bad", ["missing", "not a checkpoint", "crafted", "foreign", "bare state dict"])
def test_a_bad_checkpoint_is_one_clear_line_and_exports_nothing(tmp_path, bad):
    path = tmp_path / "model.ckpt"
    if bad == "not a checkpoint":
        path.write_bytes(b"not a checkpoint")
    elif bad == "crafted":
        torch.save({"state_dict": {}, "payload": CreatesAFileWhenUnpickled(tmp_path / "pwned")}, path)
    elif bad == "foreign":  # a Lightning checkpoint of some other model
        state = {"layer.weight": torch.zeros(2, 2)}
        torch.save({"state_dict": state, "pytorch-lightning_version": "2.6.0", "hyper_parameters": {}}, path)
    elif bad == "bare state dict":
        torch.save({"state_dict": VAEModule(hidden_dim=32, latent_dim=4).state_dict()}, path)
    with pytest.raises(CheckpointError) as error:
        export.main(["--ckpt_path", str(path), "--out", str(tmp_path / "export")])
    message = str(error.value.code)
    assert message.startswith(f"error: --ckpt_path {path}") and "\n" not in message
    assert {p.name for p in tmp_path.iterdir()} - {"model.ckpt"} == set()  # no export/, no pwned
