"""`--model.compile` on the CPU: a tiny network, once. The speed it buys is measured on a GPU, by bench/gpu.sh."""

import json

import torch

from tests.conftest import run_cli
from vae.module import VAEModule


def test_a_compiled_fit_writes_an_ordinary_checkpoint_and_compile_is_a_setting_of_the_run(
    tmp_path, monkeypatch, data_dir
):
    monkeypatch.chdir(tmp_path)
    iwae = ("--model.train_iw_samples", "2")  # its objective calls the decoder outside VAE.forward
    cli = run_cli("fit", "--trainer.max_epochs", "1", "--model.compile", "true", *iwae, data_dir=data_dir)
    assert cli.model.model._compiled_call_impl is not None  # the forward pass ran compiled
    assert hasattr(cli.model._decode, "_torchdynamo_orig_callable")  # the IWAE objective's decoder too
    ckpt = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["state_dict"].keys() == VAEModule(hidden_dim=32, latent_dim=4).state_dict().keys()
    assert all(torch.isfinite(value).all() for value in saved["state_dict"].values())

    cli = run_cli("test", "--ckpt_path", str(ckpt), "--model.iw_samples", "0", data_dir=data_dir)
    assert cli.model.model._compiled_call_impl is None  # taken from the command line, not the checkpoint
    record = json.loads((tmp_path / "lightning_logs/version_0/test_metrics.json").read_text())
    assert record["hparams"]["compile"] is False
