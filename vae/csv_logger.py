"""Lightning's CSVLogger, made to continue a run: a resumed fit, `test` or `predict` appends to the
run's `metrics.csv` instead of deleting it.

Lightning's writer deletes `metrics.csv` whenever its folder already holds files, i.e. every time
this project pins the logger to a checkpoint's own run (`vae.cli`): `--ckpt_path last` would
throw away the curves of the epochs it continues. The CLI uses this class in that case.
"""

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class ContinuingWriter(ExperimentWriter):
    """Keeps an existing `metrics.csv` and carries on under its header (new columns are added to it)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class ContinuingCSVLogger(CSVLogger):
    """A CSVLogger whose run may already have a `metrics.csv`: the new rows go below the old ones."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
