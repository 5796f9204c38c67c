"""Training precision: `bf16-true` trains, a test and a predict are float32 whatever the precision; a NaN shows."""

import torch

from tests.conftest import run_cli
from vae.module import VAEModule


def test_bf16_true_trains_and_every_precision_tests_a_checkpoint_in_float32(tmp_path, monkeypatch, data_dir):
    """bfloat16 weights upcast to float32 are exact, so test/nll and the test ELBO of a bf16-true checkpoint
    are the same numbers under 32-true, bf16-mixed (autocast) and bf16-true, noise for noise."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "--trainer.max_epochs", "1", "--trainer.precision", "bf16-true", data_dir=data_dir)
    assert cli.model.model.to_mu.weight.dtype == torch.bfloat16
    assert cli.trainer.callback_metrics["val/loss"].isfinite()
    assert cli.model.metrics["val"]["loss"].mean_value.dtype == torch.float32  # sums stay float32

    tested = {}
    for precision in ("32-true", "bf16-mixed", "bf16-true"):
        args = ("--ckpt_path", "last", "--model.iw_samples", "8", "--trainer.limit_test_batches", "2")
        cli = run_cli("test", *args, "--trainer.precision", precision, data_dir=data_dir)
        tested[precision] = {name: value.item() for name, value in cli.trainer.callback_metrics.items()}
    assert tested["32-true"]["test/nll"] > 0
    assert tested["bf16-mixed"] == tested["32-true"] == tested["bf16-true"]

    # predict's per-image scores (predictions.pt, report.py) too
    predicted = {}
    for precision in ("32-true", "bf16-mixed", "bf16-true"):
        args = ("--ckpt_path", "last", "--model.iw_samples", "8", "--trainer.limit_predict_batches", "2")
        run_cli("predict", *args, "--trainer.precision", precision, data_dir=data_dir)
        predicted[precision] = torch.load(tmp_path / "lightning_logs/version_0/predictions.pt", weights_only=True)
    for name in ("mu", "logvar", "loss", "nll"):
        assert predicted["32-true"][name].dtype == torch.float32, name
        assert torch.equal(predicted["bf16-mixed"][name], predicted["32-true"][name]), name
        assert torch.equal(predicted["bf16-true"][name], predicted["32-true"][name]), name


def test_a_nan_image_makes_the_epochs_loss_nan():
    """Not dropped from the mean (torchmetrics' default): a NaN image must show in val/loss."""
    metric = VAEModule(hidden_dim=8, latent_dim=2).metrics["val"]["loss"]
    metric.update(torch.tensor([1.0, float("nan")]))
    assert metric.compute().isnan()
