"""Precision: training may run in bfloat16 or float16, the numbers a run reports never do.

- `--model.matmul_precision` sets `torch.set_float32_matmul_precision` (and cuDNN's TF32) for the run.
- `--trainer.precision bf16-true` / `16-true` convert the whole module, metric states too (torchmetrics
  guards only `.half()`-style calls, not Lightning's `.to(dtype)`): a bfloat16 sum over thousands of
  images keeps 3 significant digits. So the metrics go back to float32 before every validation and
  test, and `float32_default_dtype` keeps them there when a value is logged.
- `test` and `predict` run the whole module in float32, whatever the training precision (bfloat16
  weights upcast to float32 are exact): at bfloat16, the noise, the logits and k = 5000 log-weights
  would be rounded, and `test/nll` biased. (The module's steps turn autocast off for the same reason.)
- The images themselves stay float32 in every stage: the network takes them in its own dtype
  (`VAE.encode`) and the likelihood compares its output with the exact 8-bit values.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import Metric


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision dtypes (bfloat16, float16); float32 and float64 as they are."""
    return torch.promote_types(dtype, torch.float32)


@contextmanager
def float32_default_dtype() -> Iterator[None]:
    """The default dtype at least float32 (`bf16-true` / `16-true` set it to theirs around each step).

    For logging a metric: Lightning moves the metric to the value's device on every `log`, and
    torchmetrics then takes the default dtype as the metric's, rounding every value it adds to bfloat16.
    """
    default = torch.get_default_dtype()
    torch.set_default_dtype(at_least_float32(default))
    try:
        yield
    finally:
        torch.set_default_dtype(default)


class PrecisionPolicy(Callback):
    """The run's matmul precision; metrics in at least float32; `test` and `predict` in float32.

    Args:
        matmul_precision: "highest" (float32), "high" (TF32 matrix products on GPUs that have them)
            or "medium" (bfloat16 products).
    """

    def __init__(self, matmul_precision: str = "highest") -> None:
        self.matmul_precision = matmul_precision
        self._trained_dtype: torch.dtype | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        torch.set_float32_matmul_precision(self.matmul_precision)
        # cuDNN's convolutions (conv, resnet) take TF32 unless told not to, whatever the matmul precision
        torch.backends.cudnn.allow_tf32 = self.matmul_precision != "highest"

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._metrics_at_least_float32(pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._in_float32(pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._in_float32(pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._back_to_training_dtype(pl_module)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._back_to_training_dtype(pl_module)

    def _in_float32(self, pl_module: LightningModule) -> None:
        self._trained_dtype = pl_module.dtype
        pl_module.to(at_least_float32(pl_module.dtype))  # bf16-true's / 16-true's weights, upcast exactly

    def _back_to_training_dtype(self, pl_module: LightningModule) -> None:
        if self._trained_dtype is not None:
            pl_module.to(self._trained_dtype)
            self._trained_dtype = None

    @staticmethod
    def _metrics_at_least_float32(pl_module: LightningModule) -> None:
        """Every torchmetrics Metric of the module back to float32 (a no-op when it is)."""
        dtype = at_least_float32(pl_module.dtype)
        for metric in pl_module.modules():
            if isinstance(metric, Metric):
                metric.to(dtype)
