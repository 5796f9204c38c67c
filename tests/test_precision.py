"""Training precision: `bf16-true` trains, a test and a predict are float32 whatever the precision; a NaN shows."""

import pytest
import torch

from tests.helpers import run_cli
from vae.module import VAEModule
from vae.precision import PrecisionPolicy, float32_default_dtype


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
        # tested in float32, then handed back in the training precision's dtype
        assert cli.model.model.to_mu.weight.dtype == (torch.bfloat16 if precision == "bf16-true" else torch.float32)
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


@pytest.mark.parametrize("setting", ["high", "medium", "highest"])
def test_the_runs_matmul_precision_is_set_when_the_run_starts(setting):
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    module = VAEModule(hidden_dim=8, latent_dim=2, matmul_precision=setting)
    (policy,) = [c for c in module.configure_callbacks() if isinstance(c, PrecisionPolicy)]
    try:
        policy.setup(None, module, "fit")
        assert torch.get_float32_matmul_precision() == setting
        assert torch.backends.cudnn.allow_tf32 == (setting != "highest")  # cuDNN's TF32 follows it
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


@pytest.mark.parametrize(("default", "inside"), [(torch.bfloat16, torch.float32), (torch.float64, torch.float64)])
def test_a_metric_is_logged_with_a_default_dtype_of_at_least_float32(default, inside):
    before = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        with float32_default_dtype():
            assert torch.get_default_dtype() == inside
        assert torch.get_default_dtype() == default
    finally:
        torch.set_default_dtype(before)
