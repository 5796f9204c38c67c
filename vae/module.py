"""The LightningModule: the VAE, its loss, its optimiser, and what is logged.

Metrics are per image, in nats. Validation and test use torchmetrics' `MeanMetric` over every
image's value, so an epoch's number is the exact mean over the whole set (not a mean of batch
means, which weights a short last batch wrongly), and is reduced across devices under DDP.

Test also logs `test/nll`, the importance-weighted estimate of -log p(x) with `iw_samples`
samples per image: the number papers report. Validation does not: it costs k decoder passes
per image, and the negative ELBO already tells which epoch is best.
"""

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from vae.elbo import importance_weighted_nll, negative_elbo
from vae.model import VAE

TERMS = ("loss", "recon", "kl")


class VAEModule(LightningModule):
    """A VAE trained by maximising the ELBO.

    Args:
        hidden_dim: width of the encoder's and the decoder's hidden layer.
        latent_dim: dimensions of z.
        lr: Adam's learning rate.
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
        lr: float = 1e-3,
        init_output_bias: bool = True,
        iw_samples: int = 100,
    ) -> None:
        super().__init__()
        for name, value in (("hidden_dim", hidden_dim), ("latent_dim", latent_dim), ("lr", lr)):
            if not value > 0:
                raise ValueError(f"--model.{name} must be positive, got {value}.")
        if iw_samples < 0:
            raise ValueError(f"--model.iw_samples must be 0 (no test/nll) or a number of samples, got {iw_samples}.")
        self.save_hyperparameters()
        self.model = VAE(hidden_dim, latent_dim)
        self.metrics = nn.ModuleDict(
            {
                "val": nn.ModuleDict({term: MeanMetric() for term in TERMS}),
                "test": nn.ModuleDict({term: MeanMetric() for term in (*TERMS, "nll")}),
            }
        )

    def setup(self, stage: str) -> None:
        # Runs after the datamodule's setup and before a checkpoint is restored.
        datamodule = self.trainer.datamodule
        if stage == "fit" and self.hparams.init_output_bias and hasattr(datamodule, "pixel_mean"):
            self.model.init_output_bias(datamodule.pixel_mean())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The random state that draws the reparameterisation noise decides the future, so it is saved."""
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        loss, _, _ = negative_elbo(*self._pass(x))
        loss = loss.mean()
        # Only on the steps the logger writes (every `log_every_n_steps`, as Lightning counts them):
        # each `self.log` call costs Lightning ~0.5 ms of bookkeeping, a tenth of a CPU step here.
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
        return loss

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

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # fused: one kernel for all parameters instead of ~10 small ops per tensor; same maths
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)

    def _pass(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Arguments of `negative_elbo` for one stochastic pass over x."""
        logits, mu, logvar = self.model(x)
        return logits, x, mu, logvar

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, _ = batch
        for term, values in zip(TERMS, negative_elbo(*self._pass(x)), strict=True):
            metric = self.metrics[stage][term]
            metric.update(values)
            self.log(f"{stage}/{term}", metric, prog_bar=term == "loss", batch_size=len(x))
