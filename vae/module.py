"""The LightningModule: the VAE, its objective, its optimiser, and what is logged. Two callbacks it brings
to every Trainer keep the rest apart: the random states in checkpoints (`vae.random_states`) and the
precision of what is reported (`vae.precision`).

Metrics are per image, in nats, whichever likelihood (`test/nll_bpd` alone is in bits per
sub-pixel). Validation and test use torchmetrics' `MeanMetric` over every image's value, so an
epoch's number is the exact mean over the whole set (not a mean of batch means, which weights a
short last batch wrongly), and is reduced across devices under DDP.

Test also logs `test/nll`, the importance-weighted estimate of -log p(x) with `iw_samples`
samples per image: the number papers report; and `test/nll_bpd`, the same in bits per dimension,
nll / (C H W ln 2), the unit of papers on natural images. Validation does not: it costs k decoder
passes per image, and the negative ELBO already tells which epoch is best. With `iw_samples` > 0,
the test ELBO comes from the same k samples as `test/nll` (its reconstruction term averaged over
them, its KL analytic), so `test/loss` does not move with the noise of a single draw.
"""

import math
from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from vae.elbo import (
    LikelihoodName,
    free_bits_kl,
    gaussian_kl,
    importance_weighted_terms,
    log_weight_terms,
    negative_elbo,
    negative_iw_bound,
)
from vae.latents import LatentUsage
from vae.lightning_internals import stepping_batches
from vae.model import VAE, Architecture
from vae.precision import PrecisionPolicy, float32_default_dtype
from vae.random_states import RandomStates

TERMS = ("loss", "recon", "kl")


def _mean() -> MeanMetric:
    """The mean over every image, NaN included: a NaN image makes the epoch's number NaN, as it should
    show, and the metric never asks the device whether there was one (no host sync per update)."""
    return MeanMetric(nan_strategy="disable")


class VAEModule(LightningModule):
    """A VAE trained by maximising the ELBO.

    Args:
        hidden_dim: width of the encoder's and the decoder's hidden layer.
        latent_dim: dimensions of z, the latent layer the encoder gives and the decoder reads.
        upper_latent_dims: stochastic layers above z, bottom to top (`vae.hierarchy`; Burda et al. 2015's
            two-layer VAE is `--model.latent_dim 100 --model.upper_latent_dims [50]`); empty: one layer.
            Validation logs each layer's KL term (`val/kl_z1`, `val/kl_z2`, ...) and the active units of
            each layer above z (`val/active_units_z2`, ...).
        arch: "mlp" (the classic 784-hidden-latent network), "conv" or "resnet" (see `vae.model`).
        image_shape: (channels, height, width) of the images. The command line takes it from the data; it
            is saved with the checkpoint, so a loaded model knows what it draws.
        likelihood: p(x|z) per sub-pixel (`vae.elbo.LIKELIHOODS`): "bernoulli" (logits; for binary or grey
            MNIST), "logistic", a discretised logistic per 8-bit value: a true likelihood of the bytes, or
            "logistic_shared_scale", the same with one learned scale per channel (for one's own images).
        lr: Adam's (peak) learning rate.
        lr_schedule: "constant", or "cosine": from `lr` down to 0 over the run's planned steps
            (`max_epochs` or `max_steps`; a run cut short by `max_time` stops before the end).
        beta: weight of the KL term in the training loss (1: the ELBO). Whatever it is,
            `train/loss`, `val/loss` and `test/loss` report the true negative ELBO (beta = 1).
        kl_warmup_epochs: raise the KL weight linearly from 0 to `beta` over this many epochs
            (0: no warm-up); a remedy for posterior collapse early in training.
        free_bits: nats of KL per latent dimension that cost nothing in the training objective (Kingma et
            al. 2016; 0: off): each dimension's KL, averaged over the batch, counts as at least `free_bits`
            and below it gets no gradient, so dimensions are not pushed onto the prior early in training
            and left there. Not with `train_iw_samples` > 1.
        train_iw_samples: k > 1 trains on the importance-weighted bound with k samples per image
            (Burda et al. 2015's IWAE) instead of the ELBO: tighter, so the model is fitted to a
            better estimate of log p(x), at k decoder passes per image. The KL weight (beta, warm-up)
            scales log p(z) - log q(z|x) inside each weight. 1: the ELBO, with its analytic KL.
        init_output_bias: start the decoder's output bias at each sub-pixel's mean over the training images
            (the datamodule's `pixel_mean()`); a checkpoint's weights, when resuming, replace it.
        iw_samples: importance samples per test image for `test/nll` (0: no `test/nll`); the same samples
            give `test/recon`. More give a tighter (lower) estimate and cost k decoder passes per image
            (docs/results.md, "Cost of the test"). An evaluation setting, never taken from the checkpoint.
        compile: `torch.compile` the network when a Trainer runs it: true (or "default"), "reduce-overhead"
            (also CUDA graphs: each step's kernels replayed in one launch; every batch shape, e.g. a short
            last batch, gets its own graph) or "max-autotune". A setting of the run, never taken from a checkpoint.
        matmul_precision: "highest" (float32), "high" (TF32 matrix products on GPUs that have them) or
            "medium" (bfloat16 products), for the run (`vae.precision`); never taken from a checkpoint.
    """

    # Options that say how to evaluate or run, not what was trained: never taken from a checkpoint (`vae.cli`).
    EVALUATION_SETTINGS = ("iw_samples", "compile", "matmul_precision")
    # Options that fix the shapes of the weights: a checkpoint's weights fit no other values of them.
    WEIGHT_SHAPE_OPTIONS = ("arch", "hidden_dim", "latent_dim", "likelihood", "upper_latent_dims")

    def __init__(
        self,
        hidden_dim: int = 512,
        latent_dim: int = 20,
        arch: Architecture = "mlp",
        image_shape: tuple[int, int, int] = (1, 28, 28),
        likelihood: LikelihoodName = "bernoulli",
        lr: float = 1e-3,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        beta: float = 1.0,
        kl_warmup_epochs: int = 0,
        init_output_bias: bool = True,
        iw_samples: int = 100,
        free_bits: float = 0.0,
        train_iw_samples: int = 1,
        compile: bool | Literal["default", "reduce-overhead", "max-autotune"] = False,
        matmul_precision: Literal["highest", "high", "medium"] = "highest",
        upper_latent_dims: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        for name, value in (("hidden_dim", hidden_dim), ("latent_dim", latent_dim), ("lr", lr)):
            if not value > 0:
                raise ValueError(f"--model.{name} must be positive, got {value}.")
        if beta < 0 or kl_warmup_epochs < 0:
            raise ValueError(f"--model.beta and --model.kl_warmup_epochs must be >= 0, got {beta}, {kl_warmup_epochs}.")
        if iw_samples < 0:
            raise ValueError(f"--model.iw_samples must be 0 (no test/nll) or a number of samples, got {iw_samples}.")
        if free_bits < 0 or train_iw_samples < 1:
            raise ValueError(
                f"--model.free_bits must be >= 0 and --model.train_iw_samples >= 1 (1: the ELBO), "
                f"got {free_bits} and {train_iw_samples}."
            )
        if not all(size > 0 for size in upper_latent_dims):
            raise ValueError(
                f"--model.upper_latent_dims must be positive sizes, e.g. [50], got {list(upper_latent_dims)}."
            )
        if free_bits and upper_latent_dims:
            raise ValueError(
                "--model.free_bits needs the analytic KL of each latent dimension, which a hierarchy "
                "(--model.upper_latent_dims) does not have: set one of them, not both."
            )
        if free_bits and train_iw_samples > 1:
            raise ValueError(
                "--model.free_bits applies to the KL term of the ELBO, which the importance-weighted bound "
                "(--model.train_iw_samples > 1) does not have: set one of them, not both."
            )
        self.save_hyperparameters()
        self.model = VAE(hidden_dim, latent_dim, arch, image_shape, likelihood, tuple(upper_latent_dims))
        self.log_likelihood = self.model.likelihood.log_likelihood
        self.layers = 1 + len(upper_latent_dims)
        layer_kl = [f"kl_z{layer}" for layer in range(1, self.layers + 1)] if upper_latent_dims else []
        self.metrics = nn.ModuleDict(
            {
                "val": nn.ModuleDict({term: _mean() for term in (*TERMS, *layer_kl)}),
                "test": nn.ModuleDict({term: _mean() for term in (*TERMS, "nll", "nll_bpd")}),
            }
        )
        # z's usage; then, for a hierarchy, that of each layer above it ("z2", ...)
        dims = {"": latent_dim} | {f"_z{layer}": d for layer, d in enumerate(upper_latent_dims, start=2)}
        self.latent_usage = nn.ModuleDict(
            {f"{stage}{layer}": LatentUsage(d) for stage in ("val", "test") for layer, d in dims.items()}
        )
        self._decode = self.model.decode  # compiled in a compiled run (`configure_model`)

    def configure_callbacks(self) -> list[Callback]:
        """What every run of this module needs, whoever built its Trainer: the random states in checkpoints
        (`vae.random_states`) and the precision of what is reported (`vae.precision`)."""
        return [RandomStates(), PrecisionPolicy(self.hparams.matmul_precision)]

    def setup(self, stage: str) -> None:
        # Runs after the datamodule's setup and before a checkpoint is restored.
        datamodule = self.trainer.datamodule
        data_shape = getattr(datamodule, "image_shape", None)
        if data_shape is not None and tuple(data_shape) != self.model.image_shape:
            raise ValueError(
                f"The data's images are {'x'.join(map(str, data_shape))} but this model is for "
                f"{'x'.join(map(str, self.model.image_shape))} images: use the data it was trained on, "
                "or train a new model on this data."
            )
        if stage == "fit" and self.hparams.init_output_bias and hasattr(datamodule, "pixel_mean"):
            self.model.init_output_bias(datamodule.pixel_mean())

    def configure_model(self) -> None:
        """Compile here, not in `__init__`: only a Trainer's run is compiled, not a model loaded to sample from.

        `VAE.forward` (the ELBO step, one graph) and, for the importance-weighted objective and `test/nll`,
        the decoder alone. Not the encoder and the decoder as two graphs for everything: with CUDA graphs,
        in evaluation each compiled call frees the previous call's outputs, so mu would be gone by the loss.
        """
        if self.hparams.compile:
            mode = None if self.hparams.compile is True else self.hparams.compile
            # dynamic=False: each batch shape gets its own static graph (what CUDA graphs need)
            self.model.compile(mode=mode, dynamic=False)
            self._decode = torch.compile(self.model.decode, mode=mode, dynamic=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        loss, objective = self._loss_and_objective(x)
        # Only on the steps the logger writes (every `log_every_n_steps` optimiser steps, as Lightning
        # counts them), once per step: each `self.log` call costs Lightning bookkeeping on the hot path.
        # With gradient accumulation, the batch that completes the step is the one logged.
        every, k = self.trainer.log_every_n_steps, self.trainer.accumulate_grad_batches
        steps = (batch_idx + 1) % k == 0 or batch_idx + 1 == self.trainer.num_training_batches
        if every and steps and (self.global_step + 1) % every == 0:
            self.log("train/loss", loss.mean(), prog_bar=True, batch_size=len(x))  # the true -ELBO
        return objective

    def _loss_and_objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the negative ELBO of each image, the scalar the optimiser minimises).

        They differ when the KL is weighted (beta, warm-up), with free bits, or when training on the
        importance-weighted bound; the first is what `train/loss` reports whatever the objective.
        """
        weight, k = self._kl_weight(), self.hparams.train_iw_samples
        if k > 1:
            mu, logvar = self.model.encode(x)
            z = self.model.reparameterize(mu.expand(k, *mu.shape), logvar.expand(k, *logvar.shape))  # (k, B, latent)
            log_px_z, log_prior_ratio = log_weight_terms(
                x, z, mu, logvar, self._decode, self.log_likelihood, self.model.log_prior
            )
            objective = negative_iw_bound(log_px_z + weight * log_prior_ratio).mean()
            kl = gaussian_kl(mu, logvar) if self.model.hierarchy is None else -log_prior_ratio.mean(0)
            return -log_px_z.mean(0) + kl, objective
        loss, recon, kl, _, mu, logvar = self._negative_elbo(x)
        if self.hparams.free_bits:
            return loss, recon.mean() + weight * free_bits_kl(mu, logvar, self.hparams.free_bits)
        return loss, loss.mean() if weight == 1 else (recon + weight * kl).mean()

    def _negative_elbo(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(loss, recon, kl, kl of each layer (B, layers), mu, logvar) per image, from one stochastic pass.
        One layer: the KL is analytic. A hierarchy (`vae.hierarchy`): one-sample terms, the top's analytic."""
        if self.model.hierarchy is None:
            output, mu, logvar = self.model(x)
            loss, recon, kl = negative_elbo(output, x, mu, logvar, self.log_likelihood)
            return loss, recon, kl, kl.unsqueeze(-1), mu, logvar
        mu, logvar = self.model.encode(x)
        z = self.model.reparameterize(mu, logvar)
        recon = -self.log_likelihood(self._decode(z), x)
        kl_per_layer = self.model.hierarchy.kl_per_layer(z, mu, logvar)
        kl = kl_per_layer.sum(-1)
        return recon + kl, recon, kl, kl_per_layer, mu, logvar

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
        """The negative ELBO of each image from one stochastic pass."""
        x, _ = batch
        loss, recon, kl, kl_per_layer, mu, logvar = self._negative_elbo(x)
        self._log_elbo("val", (loss, recon, kl), mu, logvar)
        if self.model.hierarchy is not None:
            for layer in range(self.layers):
                self._log_mean("val", f"kl_z{layer + 1}", kl_per_layer[:, layer])

    def on_test_start(self) -> None:
        k = self.hparams.iw_samples
        said = f"uses k={k} importance samples per image (--model.iw_samples)" if k else "is off (--model.iw_samples 0)"
        rank_zero_info(f"test/nll {said}.")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """In float32 whatever the training precision: autocast off here, float32 weights (`vae.precision`)."""
        with torch.autocast(self.device.type, enabled=False):
            scores = self._scores(batch[0])
        self._log_elbo("test", (scores["loss"], scores["recon"], scores["kl"]), scores["mu"], scores["logvar"])
        if "nll" in scores:
            self._log_mean("test", "nll", scores["nll"])
            self._log_mean("test", "nll_bpd", scores["nll"] / (math.prod(self.model.image_shape) * math.log(2)))

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """The posterior q(z|x) of each image, its label, its negative ELBO (`loss`) and, with `iw_samples` > 0,
        `nll`, computed as `test_step` computes them (in float32 whatever the training precision)."""
        with torch.autocast(self.device.type, enabled=False):
            scores = self._scores(batch[0])
        kept = {name: scores[name] for name in ("loss", "nll") if name in scores}
        return {"mu": scores["mu"], "logvar": scores["logvar"], "label": batch[1], **kept}

    def _scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each image's q(z|x) (`mu`, `logvar`), negative ELBO (`loss` = `recon` + `kl`) and, with `iw_samples`
        > 0, `nll`: then `recon` averages the same k samples as `nll`, so `loss` is not one draw's noise."""
        mu, logvar = self.model.encode(x)
        k, kl = self.hparams.iw_samples, self._kl(mu, logvar)
        if k:
            nll, recon = importance_weighted_terms(
                x, mu, logvar, self._decode, k, log_likelihood=self.log_likelihood, log_prior=self.model.log_prior
            )
            return {"mu": mu, "logvar": logvar, "loss": recon + kl, "recon": recon, "kl": kl, "nll": nll}
        recon = -self.log_likelihood(self._decode(self.model.reparameterize(mu, logvar)), x)
        return {"mu": mu, "logvar": logvar, "loss": recon + kl, "recon": recon, "kl": kl}

    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per image: analytic for one layer; for a hierarchy, the sum of its layers'
        terms from one draw (`vae.hierarchy`), which the 10,000 test images average."""
        if self.model.hierarchy is None:
            return gaussian_kl(mu, logvar)
        return self.model.hierarchy.kl_per_layer(self.model.reparameterize(mu, logvar), mu, logvar).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the prior, as pixel means in [0, 1], (n, C, H, W)."""
        return self.model.sample(n, generator)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior-mean reconstructions of x ((B, C, H, W) in [0, 1]), as pixel means."""
        return self.model.reconstruct(x)

    def configure_optimizers(self):  # -> Optimizer, or {"optimizer", "lr_scheduler"}
        # fused: one kernel for all parameters instead of ~10 small ops per tensor; same maths
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        steps = stepping_batches(self.trainer)  # not `trainer.estimated_stepping_batches`: see there
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _log_elbo(self, stage: str, terms: tuple[torch.Tensor, ...], mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """`<stage>/loss`, `/recon`, `/kl` from per-image (loss, recon, kl); latent usage from q(z|x)."""
        for term, values in zip(TERMS, terms, strict=True):
            self._log_mean(stage, term, values, prog_bar=term == "loss")
        self.latent_usage[stage].update(mu, logvar)
        if self.model.hierarchy is not None:
            for layer, posterior in enumerate(self.model.hierarchy.upper_posteriors(mu), start=2):
                self.latent_usage[f"{stage}_z{layer}"].update(*posterior)

    def _log_mean(self, stage: str, term: str, values: torch.Tensor, prog_bar: bool = False) -> None:
        """`<stage>/<term>`, the mean of each image's value over the epoch."""
        metric = self.metrics[stage][term]
        with float32_default_dtype():  # the metric's sums stay float32 under bf16-true (`vae.precision`)
            metric.update(values)
            self.log(f"{stage}/{term}", metric, prog_bar=prog_bar, batch_size=len(values))

    def on_validation_epoch_end(self) -> None:
        self._log_latent_usage("val")

    def on_test_epoch_end(self) -> None:
        self._log_latent_usage("test")

    def _log_latent_usage(self, stage: str) -> None:
        """`<stage>/active_units` and the KL of each latent dimension, `<stage>_kl_per_dim/zNN`; for a
        hierarchy, the active units of each layer above z (`<stage>/active_units_z2`, ...) and no KL per
        dimension (the KL of z is not to N(0, I) there)."""
        for layer in range(2, self.layers + 1):
            upper = self.latent_usage[f"{stage}_z{layer}"]
            self.log(f"{stage}/active_units_z{layer}", upper.compute()[0].float())
            upper.reset()
        usage = self.latent_usage[stage]
        active, kl_per_dim = usage.compute()
        usage.reset()
        self.log(f"{stage}/active_units", active.float())
        if self.model.hierarchy is not None:
            return
        # kept out of Lightning's printed tables; `KLPerDimensionToLoggers` sends them to the loggers
        per_dim = {f"{stage}_kl_per_dim/z{u:02d}": kl for u, kl in enumerate(kl_per_dim)}
        self.log_dict(per_dim, logger=False)
