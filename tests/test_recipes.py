"""Training recipes: KL weight and warm-up, learning-rate schedule, the conv network, early stopping."""

from types import SimpleNamespace

import pytest
import torch

from tests.test_cli import run_cli
from vae.elbo import negative_elbo
from vae.module import VAEModule


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
    loss, recon, kl = negative_elbo(*module._pass(x))
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


def test_early_stopping_on_val_loss_is_an_option(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    stop = ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/loss",
            "--trainer.callbacks.stopping_threshold=1e9"]  # below any threshold: stop after the first check
    cli = run_cli("fit", "--trainer.max_epochs", "5", *stop, data_dir=data_dir)
    assert cli.trainer.current_epoch == 1 and cli.trainer.should_stop
