"""The two-layer VAE (`--model.upper_latent_dims`): its likelihood estimate, its ELBO, and every command on it."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

import export
import report
import sample
from tests.helpers import run_cli
from tests.test_resume_exact import final_state
from vae.elbo import importance_weighted_nll
from vae.model import VAE

X = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])  # one 2x2 binary image


def tiny_two_layer_vae() -> VAE:
    """z (1-D) under z2 (1-D), 2x2 images, in float64; weights scaled up so that p(x|z) and p(z|z2)
    depend on their inputs strongly, and wide proposals q(z|x), q(z2|z) (variance 4), so that the
    importance-weighted estimate converges within the test's samples."""
    torch.manual_seed(0)
    model = VAE(hidden_dim=8, latent_dim=1, image_shape=(1, 2, 2), upper_latent_dims=(1,)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
        up_logvar = model.hierarchy.up[0][-1]
        for layer, row in ((model.to_logvar, 0), (up_logvar, 1)):
            layer.weight[row] = 0
            layer.bias[row] = math.log(4)
    return model


def log_p_x_by_quadrature(model: VAE, x: torch.Tensor) -> float:
    """log p(x) = log of the double integral of p(x|z) p(z|z2) N(z2; 0, 1) on a fine grid: no sampling."""
    grid = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    step = (grid[1] - grid[0]).item()
    with torch.no_grad():
        logits = model.decode(grid[:, None])  # (G, 1, 2, 2)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(1).sum(1)
        mu, logvar = model.hierarchy.down[0](grid[:, None]).chunk(2, dim=-1)  # p(z | z2) for each z2 on the grid
        log_pz_z2 = Normal(mu, (0.5 * logvar).exp()).log_prob(grid[None, :])  # (z2, z)
        log_joint = log_px_z[None, :] + log_pz_z2 + Normal(0.0, 1.0).log_prob(grid)[:, None]
    return (torch.logsumexp(log_joint.flatten(), 0) + 2 * math.log(step)).item()


def test_the_importance_weighted_nll_with_the_joint_proposal_converges_to_the_exact_likelihood():
    model = tiny_two_layer_vae()
    exact = -log_p_x_by_quadrature(model, X)
    torch.manual_seed(1)
    estimate = importance_weighted_nll(X.double(), model.encode, model.decode, 50_000, log_prior=model.log_prior)
    assert estimate.item() == pytest.approx(exact, abs=0.05)
    one = importance_weighted_nll(X.double(), model.encode, model.decode, 1, log_prior=model.log_prior)
    assert one.item() > exact + 0.1  # k = 1 is an ELBO: this proposal is far from the posterior


def test_the_negative_elbo_with_an_analytic_top_kl_is_the_joint_one_and_bounds_the_likelihood():
    """Over many draws, -log p(x|z) + the layers' KL terms averages to E_q[log q(z, z2|x) - log p(x, z, z2)],
    written out with torch.distributions, and lies above -log p(x)."""
    model = tiny_two_layer_vae()
    n = 200_000
    torch.manual_seed(2)
    with torch.no_grad():
        mu, logvar = model.encode(X.double())
        z = model.reparameterize(mu.expand(n, 1), logvar.expand(n, 1))
        log_px_z = (
            -F.binary_cross_entropy_with_logits(model.decode(z), X.double().expand(n, 1, 2, 2), reduction="none")
            .flatten(1)
            .sum(1)
        )
        ours = -log_px_z + model.hierarchy.kl_per_layer(z, mu, logvar).sum(-1)

        up_mu, up_logvar = model.hierarchy.up[0](z).chunk(2, dim=-1)
        z2 = up_mu + (0.5 * up_logvar).exp() * torch.randn_like(up_mu)
        down_mu, down_logvar = model.hierarchy.down[0](z2).chunk(2, dim=-1)
        log_q = Normal(mu, (0.5 * logvar).exp()).log_prob(z) + Normal(up_mu, (0.5 * up_logvar).exp()).log_prob(z2)
        log_p = log_px_z[:, None] + Normal(down_mu, (0.5 * down_logvar).exp()).log_prob(z) + Normal(0, 1).log_prob(z2)
        written_out = (log_q - log_p).squeeze(1)
    error = 4 * math.sqrt(ours.var() / n + written_out.var() / n)
    assert ours.mean().item() == pytest.approx(written_out.mean().item(), abs=error)
    assert ours.mean().item() > -log_p_x_by_quadrature(model, X) + 0.1


def test_a_sample_draws_down_the_hierarchy_and_a_seed_draws_the_same_images():
    model = tiny_two_layer_vae()
    a = model.sample(5, torch.Generator().manual_seed(3))
    b = model.sample(5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    # the middle layer is drawn, not its mean: the same top z gives other images than decode_top's
    z_top = torch.randn(5, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert not torch.allclose(a, torch.sigmoid(model.decode_top(z_top)))


@pytest.mark.parametrize(
    ("options", "said"),
    [(["[2]", "--model.free_bits", "0.1"], "needs the analytic KL"), (["[0]"], "must be positive sizes")],
)
def test_upper_layers_with_free_bits_or_of_no_size_are_refused_in_one_line(
    tmp_path, monkeypatch, data_dir, options, said
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=f"^error: --model.*{said}[^\n]*$"):
        run_cli("fit", "--model.upper_latent_dims", *options, data_dir=data_dir)
    assert not (tmp_path / "lightning_logs").exists()


def test_a_two_layer_vae_fits_resumes_bit_identically_tests_samples_exports_and_reports(
    tmp_path, monkeypatch, data_dir
):
    # with the CPU recipe's other options (configs/cpu_30min.yaml): fresh binary draws, a cosine schedule
    two_layers = ["--model.upper_latent_dims", "[3]", "--trainer.max_epochs", "2", "--data.binarize", "dynamic"]
    two_layers += ["--model.lr_schedule", "cosine"]
    (tmp_path / "whole").mkdir()
    monkeypatch.chdir(tmp_path / "whole")
    cli = run_cli("fit", *two_layers, data_dir=data_dir)
    logged = cli.trainer.logged_metrics
    assert logged["val/kl"].item() == pytest.approx((logged["val/kl_z1"] + logged["val/kl_z2"]).item(), rel=1e-5)
    assert 0 <= logged["val/active_units_z2"] <= 3

    (tmp_path / "resumed").mkdir()
    monkeypatch.chdir(tmp_path / "resumed")
    crash = ["--trainer.callbacks+=tests.test_resume_exact.CrashAtStep", "--trainer.callbacks.init_args.step=5"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli("fit", *two_layers, *crash, "--checkpoint.save_last_every_n_steps", "2", data_dir=data_dir)
    run_cli("fit", "--ckpt_path", "last", "--trainer.max_epochs", "2", data_dir=data_dir)
    whole, resumed = final_state(tmp_path / "whole"), final_state(tmp_path / "resumed")
    assert whole["global_step"] == resumed["global_step"] == 6
    assert any(key.startswith("model.hierarchy.") for key in whole["state_dict"])
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key

    ckpt = str(tmp_path / "resumed/lightning_logs/version_0/checkpoints/last.ckpt")
    with pytest.raises(SystemExit, match="holds a model with upper_latent_dims=.3., but --model.upper_latent_dims"):
        run_cli("test", "--ckpt_path", ckpt, "--model.upper_latent_dims", "[2]", data_dir=data_dir)
    test = ["--model.upper_latent_dims", "[3]", "--model.iw_samples", "3", "--trainer.limit_test_batches", "2"]
    run_cli("test", "--ckpt_path", ckpt, *test, data_dir=data_dir)
    record = json.loads((tmp_path / "resumed/lightning_logs/version_0/test_metrics.json").read_text())
    metrics = record["metrics"]
    assert record["hparams"]["upper_latent_dims"] == [3]
    assert metrics["test/loss"] == pytest.approx(metrics["test/recon"] + metrics["test/kl"], rel=1e-5)
    assert math.isfinite(metrics["test/nll"]) and "test/active_units_z2" in metrics

    assert (sample.main(["--ckpt_path", ckpt, "--data_dir", str(data_dir)]) / "prior.png").exists()
    out = export.main(["--ckpt_path", ckpt])
    about = json.loads((out / "export.json").read_text())
    assert (about["latent_dim"], about["decoder_latent_dim"]) == (4, 3)
    decoder = torch.export.load(out / "decoder.pt2").module()
    assert decoder(torch.zeros(2, 3)).shape == (2, 1, 28, 28)
    page = report.main(["--ckpt_path", ckpt, "--data_dir", str(data_dir), "--iw_samples", "2", "--n_samples", "64"])
    numbers = json.loads((page / "report.json").read_text())
    assert numbers["latents"]["top_latent_dim"] == 3
    # z's KL to N(0, 1) per dimension would not be the model's: the report gives the top layer's
    assert "kl_per_dim" not in numbers["latents"] and len(numbers["latents"]["top_kl_per_dim"]) == 3


@pytest.mark.parametrize("arch", ["conv", "resnet"])
def test_the_convolutional_networks_take_layers_above_z_too(tmp_path, monkeypatch, data_dir, arch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "--model.arch", arch, "--model.upper_latent_dims", "[3]", "--trainer.max_epochs", "1",
                  data_dir=data_dir)  # fmt: skip
    logged = cli.trainer.logged_metrics
    assert logged["val/kl"].item() == pytest.approx((logged["val/kl_z1"] + logged["val/kl_z2"]).item(), rel=1e-5)
    ckpt = str(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    run_cli(
        "test", "--ckpt_path", ckpt, "--model.iw_samples", "3", "--trainer.limit_test_batches", "1", data_dir=data_dir
    )
    metrics = json.loads((tmp_path / "lightning_logs/version_0/test_metrics.json").read_text())["metrics"]
    assert math.isfinite(metrics["test/nll"]) and metrics["test/nll"] <= metrics["test/loss"] + 1.0
