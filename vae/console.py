"""A console that shows what a user can act on: third-party notices that they cannot act on are dropped.

Each filter names one exact message, so every other warning and log line still shows:
- Lightning's "Tip" advertising the litlogger package, printed at every run;
- Lightning's "Seed set to N", printed before the options are checked, so that a bad option's
  one-line error came second (the seed is in the run's `config.yaml` and its hyperparameters);
- Lightning's note that it skips its default model summary, because the project gives its own
  (`vae.callbacks.SummaryWithoutFLOPs`);
- torch's FutureWarning about `isinstance(treespec, LeafSpec)`, raised inside Lightning's own
  `_pytree` helpers (Lightning's to fix, not the user's);
- under DDP, Lightning's advice to log `<stage>/active_units` and the 20 `<stage>_kl_per_dim/zNN`
  with `sync_dist=True`: they come from `vae.latents.LatentUsage`, a torchmetrics Metric that has
  already combined every process's images, so they are the same on every process.
"""

import logging
import warnings

LITLOGGER_TIP = "try installing [litlogger]"
SUMMARY_REPLACED = "Skipping setting a default `ModelSummary` callback"
PYTREE_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
LATENT_USAGE_SYNC_ADVICE = (
    r"It is recommended to use `self.log\('(val|test)(/active_units|_kl_per_dim/z\d+)', \.\.\., sync_dist"
)
# the logger Lightning's `rank_zero_info` writes through (set when `lightning.pytorch` is imported)
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
SEED_SET = "Seed set to "
SEED_LOGGER = "lightning.fabric.utilities.seed"  # where `seed_everything` says it


def _worth_showing(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return LITLOGGER_TIP not in message and SUMMARY_REPLACED not in message


def _not_the_seed(record: logging.LogRecord) -> bool:
    return SEED_SET not in record.getMessage()


def quiet_console() -> None:
    """Install the filters (idempotent: a second call adds nothing)."""
    warnings.filterwarnings("ignore", message=PYTREE_DEPRECATION, category=FutureWarning)
    warnings.filterwarnings("ignore", message=LATENT_USAGE_SYNC_ADVICE)
    logging.getLogger(LIGHTNING_INFO_LOGGER).addFilter(_worth_showing)
    logging.getLogger(SEED_LOGGER).addFilter(_not_the_seed)
