"""`--model.compile` on the CPU: a tiny network, once. The speed it buys is measured on a GPU, by bench/gpu.sh."""

import json
import os
from pathlib import Path

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from tests.helpers import run_cli
from vae.module import VAEModule


def test_a_compiled_fit_runs_compiled_graphs_to_the_eager_weights_and_compile_is_a_setting_of_the_run(
    tmp_path, monkeypatch, data_dir
):
    """Whatever `compile` wraps, TorchDynamo must have turned it into graphs that Inductor compiled
    (a silent fallback to eager compiles none), and training must end at the weights of the same
    fit run eagerly: Inductor draws its random numbers as eager PyTorch does (`fallback_random`)."""
    torch._dynamo.reset()
    counters.clear()
    iwae = ("--model.train_iw_samples", "2")  # its objective calls the decoder outside VAE.forward
    for name, compile in (("compiled", "true"), ("eager", "false")):
        os.mkdir(tmp_path / name)
        monkeypatch.chdir(tmp_path / name)
        with torch._inductor.config.patch(fallback_random=True):
            cli = run_cli("fit", "--trainer.max_epochs", "1", "--model.compile", compile, *iwae, data_dir=data_dir)
        if name == "compiled":
            assert counters["frames"]["ok"] > 0 and counters["stats"]["unique_graphs"] > 0, dict(counters)
            assert counters["aot_autograd"]["ok"] > 0  # the training graphs, forward and backward
            assert hasattr(cli.model._decode, "_torchdynamo_orig_callable")  # the IWAE objective's decoder too
    last = "lightning_logs/version_0/checkpoints/last.ckpt"
    compiled, eager = (torch.load(tmp_path / name / last, weights_only=True) for name in ("compiled", "eager"))
    assert compiled["state_dict"].keys() == VAEModule(hidden_dim=32, latent_dim=4).state_dict().keys()
    for key, value in eager["state_dict"].items():
        torch.testing.assert_close(compiled["state_dict"][key], value, rtol=1e-4, atol=1e-6, msg=key)

    counters.clear()
    monkeypatch.chdir(tmp_path / "compiled")
    cli = run_cli("test", "--ckpt_path", last, "--model.iw_samples", "0", data_dir=data_dir)
    assert counters["frames"]["ok"] == 0  # taken from the command line, not the checkpoint
    record = json.loads(Path("lightning_logs/version_0/test_metrics.json").read_text())
    assert record["hparams"]["compile"] is False and cli.model.hparams.compile is False
