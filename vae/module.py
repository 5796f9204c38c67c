"""The LightningModule: the VAE, its loss, its optimiser, and what is logged.

Metrics are per image, in nats. Validation and test use torchmetrics' `MeanMetric` over every
image's value, so an epoch's number is the exact mean over the whole set (not a mean of batch
means, which weights a short last batch wrongly), and is reduced across devices under DDP.

Test also logs `test/nll`, the importance-weighted estimate of -log p(x) with `iw_samples`
samples per image: the number papers report. Validation does not: it costs k decoder passes
per image, and the negative ELBO already tells which epoch is best.
"""

import math

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from vae.elbo import importance_weighted_nll, negative_elbo
from vae.latents import LatentUsage
from vae.model import VAE

TERMS = ("loss", "recon", "kl")
LR_SCHEDULES = ("constant", "cosine")


class VAEModule(LightningModule):
    """A VAE trained by maximising the ELBO.

    Args:
        hidden_dim: width of the encoder's and the decoder's hidden layer.
        latent_dim: dimensions of z.
        arch: "mlp" (the classic 784-hidden-latent network) or "conv" (see `vae.model`).
        lr: Adam's (peak) learning rate.
        lr_schedule: "constant", or "cosine": from `lr` down to 0 over the run's planned steps
            (`max_epochs` or `max_steps`; a run cut short by `max_time` stops before the end).
        beta: weight of the KL term in the training loss (1: the ELBO). Whatever it is,
            `train/loss`, `val/loss` and `test/loss` report the true negative ELBO (beta = 1).
        kl_warmup_epochs: raise the KL weight linearly from 0 to `beta` over this many epochs
            (0: no warm-up); a remedy for posterior collapse early in training.
        init_output_bias: start the decoder's output bias at the logit of each pixel's mean over the
            training images (taken from the datamodule's `pixel_mean()`); a checkpoint's weights,
            when resuming, replace it.
        iw_samples: importance samples per test image for `test/nll` (0: no `test/nll`). An evaluation
            setting, not part of the trained model: `test` takes it from the command line, never
            from the checkpoint. More samples give a tighter (lower) estimate and cost k decoder
            passes per image: on 2 CPU cores the 10,000 test images take about 20 s at k = 100 and
            roughly 15-30 min at Burda et al.'s k = 5000.
    """

    def __init__(
        self,
        hidden_dim: int = 512,
        latent_dim: int = 20,
        arch: str = "mlp",
        lr: float = 1e-3,
        lr_schedule: str = "constant",
        beta: float = 1.0,
        kl_warmup_epochs: int = 0,
        init_output_bias: bool = True,
        iw_samples: int = 100,
    ) -> None:
        super().__init__()
        for name, value in (("hidden_dim", hidden_dim), ("latent_dim", latent_dim), ("lr", lr)):
            if not value > 0:
                raise ValueError(f"--model.{name} must be positive, got {value}.")
        if beta < 0 or kl_warmup_epochs < 0:
            raise ValueError(f"--model.beta and --model.kl_warmup_epochs must be >= 0, got {beta}, {kl_warmup_epochs}.")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--model.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}.")
        if iw_samples < 0:
            raise ValueError(f"--model.iw_samples must be 0 (no test/nll) or a number of samples, got {iw_samples}.")
        self.save_hyperparameters()
        self.model = VAE(hidden_dim, latent_dim, arch)
        self.metrics = nn.ModuleDict(
            {
                "val": nn.ModuleDict({term: MeanMetric() for term in TERMS}),
                "test": nn.ModuleDict({term: MeanMetric() for term in (*TERMS, "nll")}),
            }
        )
        self.latent_usage = nn.ModuleDict({stage: LatentUsage(latent_dim) for stage in ("val", "test")})

    def setup(self, stage: str) -> None:
        # Runs after the datamodule's setup and before a checkpoint is restored.
        datamodule = self.trainer.datamodule
        if stage == "fit" and self.hparams.init_output_bias and hasattr(datamodule, "pixel_mean"):
            self.model.init_output_bias(datamodule.pixel_mean())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The random state that draws the reparameterisation noise decides the future, so it is saved.

        Under DDP every process has its own (evaluation shards differ in size, so the processes draw
        different amounts of noise): each process's state is gathered, and each gets its own back.
        """
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()
        if self._trainer is not None and self.trainer.world_size > 1:
            state = torch.get_rng_state().to(self.device)
            checkpoint["rng_states"]["torch_per_process"] = self.all_gather(state).cpu()
            if self.device.type == "cuda":
                state = torch.cuda.get_rng_state(self.device).to(self.device)
                checkpoint["rng_states"]["cuda_per_process"] = self.all_gather(state).cpu()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states", {})
        world_size = self.trainer.world_size if self._trainer is not None else 1
        per_process = states.get("torch_per_process")
        if per_process is not None and len(per_process) == world_size:
            # clone: a row of the gathered tensor starts at an offset, which set_rng_state does not honour
            torch.set_rng_state(per_process[self.global_rank].clone())
            if "cuda_per_process" in states and self.device.type == "cuda":
                torch.cuda.set_rng_state(states["cuda_per_process"][self.global_rank].clone(), self.device)
            return
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        loss, recon, kl = negative_elbo(*self._pass(x))
        weight = self._kl_weight()
        objective = loss.mean() if weight == 1 else (recon + weight * kl).mean()
        # Only on the steps the logger writes (every `log_every_n_steps` optimiser steps, as Lightning
        # counts them), once per step: each `self.log` call costs Lightning bookkeeping on the hot path.
        # With gradient accumulation, the batch that completes the step is the one logged.
        every, k = self.trainer.log_every_n_steps, self.trainer.accumulate_grad_batches
        steps = (batch_idx + 1) % k == 0 or batch_idx + 1 == self.trainer.num_training_batches
        if every and steps and (self.global_step + 1) % every == 0:
            self.log("train/loss", loss.mean(), prog_bar=True, batch_size=len(x))  # the true -ELBO
        return objective

    def _kl_weight(self) -> float:
        """beta, ramped up linearly over the first `kl_warmup_epochs` epochs, optimiser step by optimiser step
        (with gradient accumulation, the batches of one step share its weight)."""
        beta, warmup = self.hparams.beta, self.hparams.kl_warmup_epochs
        if not warmup:
            return beta
        steps_per_epoch = math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches)
        progress = (self.global_step + 1) / (warmup * steps_per_epoch)
        return beta * min(1.0, progress)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_test_start(self) -> None:
        k = self.hparams.iw_samples
        rank_zero_info(
            f"test/nll uses k={k} importance samples per image (--model.iw_samples)."
            if k
            else "test/nll is off (--model.iw_samples 0)."
        )

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")
        if self.hparams.iw_samples:
            x, _ = batch
            metric = self.metrics["test"]["nll"]
            metric.update(importance_weighted_nll(x, self.model.encode, self.model.decode, self.hparams.iw_samples))
            self.log("test/nll", metric)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """The posterior q(z|x) of each image, with its label: what a latent-space analysis needs."""
        x, labels = batch
        mu, logvar = self.model.encode(x)
        return {"mu": mu, "logvar": logvar, "label": labels}

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the prior, as pixel means in [0, 1], (n, 1, 28, 28)."""
        return self.model.sample(n, generator)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior-mean reconstructions of x ((B, 1, 28, 28) in [0, 1]), as pixel means."""
        return self.model.reconstruct(x)

    def configure_optimizers(self):  # -> Optimizer, or {"optimizer", "lr_scheduler"}
        # fused: one kernel for all parameters instead of ~10 small ops per tensor; same maths
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        steps = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _pass(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Arguments of `negative_elbo` for one stochastic pass over x."""
        logits, mu, logvar = self.model(x)
        return logits, x, mu, logvar

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, _ = batch
        logits, x, mu, logvar = self._pass(x)
        for term, values in zip(TERMS, negative_elbo(logits, x, mu, logvar), strict=True):
            metric = self.metrics[stage][term]
            metric.update(values)
            self.log(f"{stage}/{term}", metric, prog_bar=term == "loss", batch_size=len(x))
        self.latent_usage[stage].update(mu, logvar)

    def on_validation_epoch_end(self) -> None:
        self._log_latent_usage("val")

    def on_test_epoch_end(self) -> None:
        self._log_latent_usage("test")

    def _log_latent_usage(self, stage: str) -> None:
        """`<stage>/active_units` and the KL of each latent dimension, `<stage>_kl_per_dim/zNN`."""
        usage = self.latent_usage[stage]
        active, kl_per_dim = usage.compute()
        usage.reset()
        self.log(f"{stage}/active_units", active.float())
        self.log_dict({f"{stage}_kl_per_dim/z{u:02d}": kl for u, kl in enumerate(kl_per_dim)})
