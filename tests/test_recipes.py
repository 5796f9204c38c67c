"""Training recipes (KL warm-up, free bits, IWAE, schedules, conv/residual nets, early stopping), test ELBO.

KL weight and warm-up, free bits, the importance-weighted objective, the learning-rate schedule, the
conv and residual networks, early stopping; and the test ELBO over k samples.
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Normal, kl_divergence

from bench.recipe_table import table
from tests.helpers import expected_test_metrics, run_cli, synthetic_mnist
from vae.elbo import negative_elbo
from vae.model import VAE, ResidualBlock
from vae.module import TERMS, VAEModule


def module_at_step(step: int, **hparams) -> VAEModule:
    module = VAEModule(hidden_dim=16, latent_dim=2, **hparams)
    module._trainer = SimpleNamespace(global_step=step, num_training_batches=10, accumulate_grad_batches=1)
    return module


def test_kl_weight_ramps_linearly_to_beta_over_the_warmup_epochs():
    weights = [module_at_step(step, beta=0.5, kl_warmup_epochs=2)._kl_weight() for step in (0, 9, 19, 50)]
    assert weights == pytest.approx([0.5 * 1 / 20, 0.5 * 10 / 20, 0.5, 0.5])
    assert module_at_step(0)._kl_weight() == 1.0


def test_the_training_objective_weights_the_kl_but_the_logged_loss_is_the_true_elbo(monkeypatch):
    module = module_at_step(0, beta=0.25)
    module._trainer.log_every_n_steps = 1
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kwargs: logged.update({name: value}))
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(0)
    objective = module.training_step((x, None), 0)
    torch.manual_seed(0)
    logits, mu, logvar = module.model(x)
    loss, recon, kl = negative_elbo(logits, x, mu, logvar)
    torch.testing.assert_close(objective, (recon + 0.25 * kl).mean())
    torch.testing.assert_close(logged["train/loss"], loss.mean())


def test_cosine_schedule_decays_the_learning_rate_step_by_step_over_the_run(tmp_path, monkeypatch, data_dir):
    """lr_t = lr (1 + cos(pi t / T)) / 2 before optimiser step t, T the run's planned steps (2 epochs of 3)."""
    monkeypatch.chdir(tmp_path)
    rates = []

    def record(self, batch, batch_idx):
        rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    monkeypatch.setattr(VAEModule, "on_train_batch_start", record)
    cli = run_cli("fit", "--trainer.max_epochs", "2", "--model.lr_schedule", "cosine", data_dir=data_dir)
    after = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert [*rates, after] == pytest.approx([1e-3 * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(7)], abs=1e-12)


def first_test_images(cli, n: int) -> torch.Tensor:
    """The first `n` test images, as the test step sees them: floats in [0, 1], (n, 1, 28, 28)."""
    return cli.datamodule.test_set.images[:n].float() / 255


def test_conv_model_trains_tests_and_keeps_its_architecture_on_resume(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    run_cli("fit", "--trainer.max_epochs", "1", "--model.arch", "conv", data_dir=data_dir)
    cli = run_cli("fit", "--trainer.max_epochs", "2", "--ckpt_path", "last", data_dir=data_dir)
    assert cli.model.hparams.arch == "conv" and cli.trainer.global_step == 6
    last = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    # the first 64 images (`limit_test_batches 1` would read as 1.0, the whole set)
    test = ["--model.iw_samples", "2", "--trainer.limit_test_batches", "2"]
    cli = run_cli("test", "--ckpt_path", str(last), *test, data_dir=data_dir)
    record = json.loads((tmp_path / "lightning_logs/version_0/test_metrics.json").read_text())
    assert record["hparams"]["arch"] == "conv"
    for name, value in expected_test_metrics(last, first_test_images(cli, 64), k=2, batch_size=32).items():
        assert record["metrics"][name] == pytest.approx(value, rel=1e-5), name


def test_early_stopping_as_the_docs_give_it_watches_each_epochs_val_loss_beside_the_runs_own_callbacks(
    tmp_path, monkeypatch, data_dir
):
    """docs/training.md's `--trainer.callbacks+=EarlyStopping --trainer.callbacks.monitor val/loss`: the
    callback is handed this project's val/loss, the value logged for each epoch, and the run keeps
    its own callbacks (last and best checkpoints, pictures) beside the one added."""
    monkeypatch.chdir(tmp_path)
    stop = ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/loss"]
    stop += ["--trainer.callbacks.patience", "1", "--trainer.callbacks.min_delta", "1e9"]  # no epoch beats the first
    cli = run_cli("fit", "--trainer.max_epochs", "5", *stop, data_dir=data_dir)
    assert cli.trainer.current_epoch == 2 and cli.trainer.should_stop  # stopped after the second epoch

    run = tmp_path / "lightning_logs/version_0"
    (events,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    val_loss = [event.value for event in accumulator.Scalars("val/loss")]
    assert len(val_loss) == 2
    assert cli.trainer.early_stopping_callback.best_score.item() == pytest.approx(val_loss[0], rel=1e-6)
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 1
    assert len(list((run / "checkpoints").glob("best-epoch*.ckpt"))) == 1
    assert {p.name for p in (run / "images").iterdir()} >= {"prior-epoch000.png", "prior-epoch001.png"}


def quiet(module: VAEModule, monkeypatch) -> dict:
    """Calls to `module.log` land in the returned dict instead of a Trainer."""
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kwargs: logged.update({name: value}))
    return logged


def digits(n: int) -> torch.Tensor:
    images, _ = synthetic_mnist(n, seed=0)
    return torch.bernoulli(images.unsqueeze(1).float() / 255, generator=torch.Generator().manual_seed(0))


def test_free_bits_floor_the_trained_kl_but_the_logged_loss_is_the_true_elbo(monkeypatch):
    module = module_at_step(0, free_bits=50.0)  # far above any dimension's KL at initialisation
    module._trainer.log_every_n_steps = 1
    logged = quiet(module, monkeypatch)
    x = digits(8)
    torch.manual_seed(0)
    objective = module.training_step((x, None), 0)
    torch.manual_seed(0)
    logits, mu, logvar = module.model(x)
    loss, recon, kl = negative_elbo(logits, x, mu, logvar)
    torch.testing.assert_close(objective, recon.mean() + 2 * 50.0)  # 2 latent dimensions, each at the floor
    torch.testing.assert_close(logged["train/loss"], loss.mean())
    objective.backward()
    with_free_bits = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    recon.mean().backward()  # the same noise, no KL term at all
    for with_floor, without_kl in zip(with_free_bits, (p.grad for p in module.parameters()), strict=True):
        torch.testing.assert_close(with_floor, without_kl)


def log_bernoulli(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per image, written out: x log sigmoid(l) + (1 - x) log sigmoid(-l), summed over pixels."""
    return (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).flatten(1).sum(1)


def test_training_on_the_importance_weighted_bound_minimises_it_and_logs_the_elbo(monkeypatch):
    """The objective is -log (1/k) sum_i w_i, averaged over the images, from the same k draws as the
    logged -ELBO; each log w_i = log p(x|z_i) + log N(z_i; 0, I) - log q(z_i|x), from torch.distributions."""
    x, k = digits(16), 16
    for seed in range(2):
        module = module_at_step(0, train_iw_samples=k)
        module._trainer.log_every_n_steps = 1
        logged = quiet(module, monkeypatch)
        torch.manual_seed(seed)
        objective = module.training_step((x, None), 0).item()
        torch.manual_seed(seed)  # the same k draws of noise
        mu, logvar = module.model.encode(x)
        q = Normal(mu, (0.5 * logvar).exp())
        z = mu + q.scale * torch.randn(k, *mu.shape)
        log_px_z = torch.stack([log_bernoulli(module.model.decode(z_i), x) for z_i in z])  # (k, B)
        log_w = log_px_z + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
        assert objective == pytest.approx(-(torch.logsumexp(log_w, 0) - math.log(k)).mean().item(), rel=1e-5)
        elbo_loss = -log_px_z.mean(0) + kl_divergence(q, Normal(0.0, 1.0)).sum(-1)  # analytic KL
        assert logged["train/loss"].item() == pytest.approx(elbo_loss.mean().item(), rel=1e-5)


def test_recipe_options_out_of_range_are_refused():
    with pytest.raises(ValueError, match="--model.free_bits must be >= 0"):
        VAEModule(free_bits=-0.1)
    with pytest.raises(ValueError, match="--model.train_iw_samples >= 1"):
        VAEModule(train_iw_samples=0)
    with pytest.raises(ValueError, match="not both"):
        VAEModule(free_bits=0.1, train_iw_samples=5)


def reported_test_terms(module: VAEModule, x: torch.Tensor, k: int, seed: int) -> dict[str, float]:
    """`test/loss`, `test/recon`, `test/kl` (and `test/nll` if k > 0) of one test batch, drawn with `seed`."""
    module.hparams.iw_samples = k
    for metric in module.metrics["test"].values():
        metric.reset()
    torch.manual_seed(seed)
    module.test_step((x, None), 0)
    terms = (*TERMS, "nll") if k else TERMS
    return {term: module.metrics["test"][term].compute().item() for term in terms}


def test_the_test_terms_over_k_samples_are_the_means_over_those_samples(monkeypatch):
    """From one set of k draws z_i = mu + sigma eps_i (eps_i drawn one (B, latent) tensor at a time):
    test/recon is the mean over them of -log p(x|z_i), test/kl the analytic KL, test/loss their sum,
    and test/nll -log (1/k) sum_i w_i; at k = 1 the draw is the one-sample pass's (k = 0)."""
    torch.manual_seed(0)
    module = VAEModule(hidden_dim=32, latent_dim=4)
    quiet(module, monkeypatch)
    x, k = digits(32), 8
    one_pass = reported_test_terms(module, x, k=0, seed=5)
    assert reported_test_terms(module, x, k=1, seed=5)["loss"] == pytest.approx(one_pass["loss"], rel=1e-6)

    reported = reported_test_terms(module, x, k, seed=5)
    with torch.no_grad():
        mu, logvar = module.model.encode(x)
        q = Normal(mu, (0.5 * logvar).exp())
        torch.manual_seed(5)
        z = torch.stack([mu + q.scale * torch.randn(mu.shape) for _ in range(k)])
        log_px_z = torch.stack([log_bernoulli(module.model.decode(z_i), x) for z_i in z])  # (k, B)
        log_w = log_px_z + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    recon, kl = -log_px_z.mean(0), kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    expected = {"recon": recon, "kl": kl, "loss": recon + kl, "nll": -(torch.logsumexp(log_w, 0) - math.log(k))}
    for term, values in expected.items():
        assert reported[term] == pytest.approx(values.mean().item(), rel=1e-5), term


def test_residual_blocks_start_as_the_identity():
    block, x = ResidualBlock(8), torch.randn(2, 8, 7, 7)
    torch.testing.assert_close(block(x), x)


def test_the_resnet_architecture_has_the_same_interface_and_starts_at_the_pixel_means():
    model = VAE(hidden_dim=32, latent_dim=3, arch="resnet")
    x = torch.rand(4, 1, 28, 28)
    logits, mu, logvar = model(x)
    assert logits.shape == x.shape and mu.shape == logvar.shape == (4, 3)
    pixel_mean = torch.rand(1, 28, 28) * 0.9 + 0.05
    model.init_output_bias(pixel_mean)
    last = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
    torch.testing.assert_close(model.sample(2), pixel_mean.expand(2, 1, 28, 28))


def test_every_part_of_the_resnet_architecture_learns():
    """Blocks start as the identity (their last convolution at zero): after a step, gradients reach all of it."""
    torch.manual_seed(0)
    model, x = VAE(hidden_dim=32, latent_dim=4, arch="resnet"), digits(8)
    model.init_output_bias(x.mean(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        logits, mu, logvar = model(x)
        loss = negative_elbo(logits, x, mu, logvar)[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad.abs().max() > 0 for p in model.parameters())
    assert all(math.isfinite(loss) for loss in losses)


def test_resnet_with_free_bits_fits_and_tests_from_the_command_line(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    recipe = ["--model.arch", "resnet", "--model.free_bits", "0.1", "--model.kl_warmup_epochs", "1"]
    short = ["--trainer.limit_train_batches", "2"]
    run_cli("fit", "--trainer.max_epochs", "1", *recipe, *short, data_dir=data_dir)
    last = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    test = ["--model.iw_samples", "3", "--trainer.limit_test_batches", "2"]
    cli = run_cli("test", "--ckpt_path", "last", *test, data_dir=data_dir)
    record = json.loads((tmp_path / "lightning_logs/version_0/test_metrics.json").read_text())
    assert record["hparams"]["arch"] == "resnet" and record["hparams"]["free_bits"] == 0.1
    for name, value in expected_test_metrics(last, first_test_images(cli, 64), k=3, batch_size=32).items():
        assert record["metrics"][name] == pytest.approx(value, rel=1e-5), name


def test_the_results_table_gives_every_seed_and_their_mean_and_spread():
    row = {"epochs": 140, "steps": 60_200, "train_s": 340.0, "test/loss": 85.0, "test/active_units": 30.0}
    common = {**row, "iw_samples": 5000, "device": "H100", "stopped": "max_epochs"}
    records = [
        {"seed": 0, "test_s": 80.0, "test/nll": 81.0, **common},
        {"seed": 1, "test_s": 90.0, "test/nll": 83.0, **common},
        {"seed": 2, "test_s": None, "test/nll": None, **common},  # a test stopped by the time budget
    ]
    lines = table(records).splitlines()
    assert "k = 5000" in lines[0] and len(lines) == 3 + 3 + 1
    assert "| 2 | 140 | 60200 | 340.00 | not done |" in lines[5]
    summary = lines[-1].split(" | ")
    assert summary[0] == "| mean +- sd (n=3)" and summary[6] == "82.00 +- 1.41"  # the two finished tests only
