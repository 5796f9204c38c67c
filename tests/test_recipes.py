"""Training recipes: KL weight and warm-up, free bits, the importance-weighted objective, the
learning-rate schedule, the conv and residual networks, early stopping; and the test ELBO over k samples."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bench.recipe_table import table
from tests.conftest import run_cli, synthetic_mnist
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


def test_cosine_schedule_decays_the_learning_rate_over_the_run(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    cli = run_cli("fit", "--trainer.max_epochs", "2", "--model.lr_schedule", "cosine", data_dir=data_dir)
    lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.0, abs=1e-9)  # 6 planned steps, all taken: down to 0
    assert cli.trainer.lr_scheduler_configs[0].interval == "step"


def test_conv_model_trains_tests_and_keeps_its_architecture_on_resume(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    run_cli("fit", "--trainer.max_epochs", "1", "--model.arch", "conv", data_dir=data_dir)
    cli = run_cli("fit", "--trainer.max_epochs", "2", "--ckpt_path", "last", data_dir=data_dir)
    assert cli.model.hparams.arch == "conv" and cli.trainer.global_step == 6


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


def test_training_on_the_importance_weighted_bound_minimises_a_tighter_bound_and_logs_the_elbo(monkeypatch):
    x = digits(16)
    objectives, losses = [], []
    for seed in range(4):
        module = module_at_step(0, train_iw_samples=16)
        module._trainer.log_every_n_steps = 1
        logged = quiet(module, monkeypatch)
        torch.manual_seed(seed)
        objectives.append(module.training_step((x, None), 0).item())
        losses.append(logged["train/loss"].item())
        torch.manual_seed(seed)  # the same 16 draws of noise, each scored as a one-sample -ELBO
        mu, logvar = module.model.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn(16, *mu.shape)
        elbos = [negative_elbo(module.model.decode(z_i), x, mu, logvar)[0].mean() for z_i in z]
        assert losses[-1] == pytest.approx(torch.stack(elbos).mean().item(), rel=1e-5)
    assert sum(objectives) < sum(losses)  # E[-IWAE_16] <= -ELBO: the bound is tighter


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


def test_the_test_elbo_over_k_samples_is_the_one_sample_elbo_at_k_1_and_steadier_as_k_grows(monkeypatch):
    module = VAEModule(hidden_dim=32, latent_dim=4)
    quiet(module, monkeypatch)
    x = digits(32)
    one_pass = reported_test_terms(module, x, k=0, seed=5)
    assert reported_test_terms(module, x, k=1, seed=5)["loss"] == pytest.approx(one_pass["loss"], rel=1e-6)
    spread = {}
    for k in (1, 32):
        runs = [reported_test_terms(module, x, k, seed) for seed in range(6)]
        spread[k] = torch.tensor([run["loss"] for run in runs]).std().item()
        for run in runs:
            assert run["loss"] == pytest.approx(run["recon"] + run["kl"], rel=1e-6)
    assert spread[32] < spread[1] / 3  # 1/sqrt(32) in expectation


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
    test = ["--model.iw_samples", "3", "--trainer.limit_test_batches", "2"]
    run_cli("test", "--ckpt_path", "last", *test, data_dir=data_dir)
    record = json.loads((tmp_path / "lightning_logs/version_0/test_metrics.json").read_text())
    assert record["hparams"]["arch"] == "resnet" and record["hparams"]["free_bits"] == 0.1
    assert all(math.isfinite(record["metrics"][f"test/{term}"]) for term in ("loss", "recon", "kl", "nll"))


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
