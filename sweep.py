"""Sweeps over `train.py`'s options with Optuna: `python sweep.py SWEEP.yaml [train.py options]`.

    python sweep.py configs/sweeps/beta.yaml --data.data_dir /work/data      # start a worker
    python sweep.py configs/sweeps/beta.yaml --data.data_dir /work/data      # in another shell: a second one

Optuna owns the study, its storage, the sampler, pruning and retries; this file builds each
trial's `train.py` command line (the fixed options, then the trial's values) and runs it in
this process as an ordinary `fit`. Every trial is a run in `sweeps/<study>/version_<trial>/`
that `train.py` can test or resume as any other. The study is a SQLite file in that folder
unless `--storage URL` names another database; every worker started with the same command
takes trials from it until the study has `n_trials` finished ones (`docs/sweeps.md`).

Why the loop around `study.optimize` (`run_worker`): a worker that runs out of trials to start
stays until the trials running elsewhere have finished, because if one of those workers is
killed, its trial only becomes stale (no heartbeat for a grace period) after the others would
have stopped, and somebody must be there to retry it.
"""

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import yaml
from lightning.pytorch import Trainer
from matplotlib import pyplot
from matplotlib.figure import Figure
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, Trial, TrialState
from optuna.visualization.matplotlib import plot_optimization_history
from optuna_integration import PyTorchLightningPruningCallback

from vae.atomic import atomic_write
from vae.callbacks import NonFiniteLossError
from vae.cli import LOGS_DIR, VAECLI, data_class_first
from vae.cli_checks import CommandLineError, OneLineArgumentParser, check_trainer_options, read_yaml

SWEEPS_DIR = Path("sweeps")
DISTRIBUTIONS = {"float": FloatDistribution, "int": IntDistribution, "categorical": CategoricalDistribution}
SURPLUS = "surplus"  # the user attribute of a trial one too many (is_surplus), not counted
DEFAULTS = {"objective": "val/loss", "direction": "minimize", "heartbeat": 30, "max_retry": 2}
SWEEP_KEYS = ("space", "fixed", "study_name", "n_trials", "objective", "direction", "storage", "heartbeat", "max_retry",
              "sampler", "pruner")  # fmt: skip
# What each key of a sweep file holds (a bool is no number of trials).
SWEEP_TYPES = {"space": dict, "fixed": dict, "study_name": str, "n_trials": int, "objective": str, "direction": str,
               "storage": str, "heartbeat": int, "max_retry": int, "sampler": dict, "pruner": dict}  # fmt: skip
# Where a trial's run goes: set by the sweep, put back to train.py's defaults in best.yaml.
RUN_FOLDER_OPTIONS = {"save_dir": ".", "name": LOGS_DIR, "version": None}
# Notices a user cannot act on: Optuna's heartbeats and retries are "experimental" since v2.8, and
# Lightning asks whether the trial's argument list was meant to replace sweep.py's command line (it was).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")


class TrialFailed(RuntimeError):
    """A trial that ended with a one-line reason (a rejected option, a loss that became NaN): no traceback."""


class ParseOnly(VAECLI):
    """`train.py`'s parser with its one-line errors, building nothing: checks a sweep before it runs."""

    def __init__(self, args: list[str]) -> None:
        super().__init__(args=args, run=False, parser_kwargs={"prog": "train.py"})

    def instantiate_classes(self) -> None:
        pass


class TrialCLI(VAECLI):
    """`train.py` as it is, with Optuna's pruning callback added to the Trainer."""

    def __init__(self, pruning: PyTorchLightningPruningCallback, args: list[str]) -> None:
        self.pruning = pruning
        super().__init__(args=args)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(self.pruning)
        return trainer


def option_value(value: Any) -> str:
    """A YAML value as `train.py` reads it on its command line."""
    return value if isinstance(value, str) else json.dumps(value)


def load_space(path: Path, space: dict[str, Any]) -> dict[str, BaseDistribution]:
    """`{option: {type: float|int|categorical, ...}}` as Optuna distributions; Optuna's own checks
    (an empty range, a log scale reaching 0, no choices) become one line naming the option."""
    distributions = {}
    for name, spec in space.items():
        if not isinstance(spec, dict):
            raise CommandLineError(f"{path}: {name} needs {{type: float, int or categorical, ...}}, got {spec!r}.")
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in DISTRIBUTIONS:
            raise CommandLineError(f"{path}: {name} needs a type: float, int or categorical, got {kind!r}.")
        try:
            distributions[name] = DISTRIBUTIONS[kind](**spec)
        except (TypeError, ValueError) as err:
            raise CommandLineError(f"{path}: {name} ({kind}): {' '.join(str(err).split())}") from None
    if not distributions:
        raise CommandLineError(f"{path}: the search space (`space:`) is empty.")
    return distributions


def suggest(trial: Trial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    suggest_number = trial.suggest_int if isinstance(distribution, IntDistribution) else trial.suggest_float
    return suggest_number(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def check_train_options(path: Path, fixed: list[str], space: dict[str, BaseDistribution]) -> None:
    """Before anything runs: the fixed options parse as `train.py`'s, every swept name is one of its
    options, and each range's ends and each choice are values that option accepts."""
    probe = ParseOnly(fixed)
    check_trainer_options(probe.config.trainer.as_dict(), probe.trainer_defaults)
    unknown = [name for name in space if name not in probe.config]
    if unknown:
        raise CommandLineError(
            f"{path}: {', '.join(unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'} of "
            "train.py; `python train.py fit --help` lists them."
        )
    ends = {name: d.choices if isinstance(d, CategoricalDistribution) else (d.low, d.high) for name, d in space.items()}
    for i in range(max(len(values) for values in ends.values())):
        values = {name: values[i % len(values)] for name, values in ends.items()}
        probe.parser.parse_args([*fixed, *(f"--{name}={option_value(v)}" for name, v in values.items())])


class RetryStaleTrials(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker stopped beating, noting whether this worker queued one."""

    def __init__(self, max_retry: int) -> None:
        super().__init__(max_retry=max_retry)
        self.max_retry, self.queued_here = max_retry, False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        super().__call__(study, trial)
        self.queued_here = len(self.retry_history(trial)) < self.max_retry  # Optuna's own limit


def open_storage(url: str, heartbeat: int, retries: RetryStaleTrials) -> RDBStorage:
    """The study's database, with heartbeats: a trial whose worker stops beating is failed and retried.
    On a new database the first workers all create Optuna's tables at once: those that lose the
    race (a duplicate name) open it again, as it now has them."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # wait for the other workers' writes
    for attempt in range(3):
        try:
            return RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=heartbeat,
                heartbeat_stale_trial_callback=retries,
            )
        except sqlalchemy.exc.IntegrityError as err:  # another worker's table or type came first
            if attempt == 2:
                raise cannot_open(url, err) from None
            time.sleep(1)
        except Exception as err:  # sqlalchemy's and the drivers' many kinds, all meaning "not this URL"
            raise cannot_open(url, err) from None


def cannot_open(url: str, err: Exception) -> CommandLineError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CommandLineError(
        f"--storage {without_password(url)}: cannot open it ({reason.replace(url, without_password(url))}). "
        "Check the URL, that the server is up and reachable, and that its driver is installed "
        "(PostgreSQL: pip install 'psycopg[binary]' and a postgresql+psycopg:// URL; MySQL: PyMySQL)."
    )


def without_password(url: str) -> str:
    """The URL to print: its password, if any, as ***."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: nothing in it can be told apart
        return url


def make(path: Path, module, spec: dict[str, Any] | None, default: str, **extra: Any):
    """An Optuna sampler or pruner from `{class: Name, keyword: value, ...}` (None: `default`)."""
    spec = dict(spec or {"class": default})
    kind = module.__name__.rpartition(".")[2].removesuffix("s")
    try:
        return getattr(module, spec.pop("class"))(**extra, **spec)
    except (KeyError, AttributeError, TypeError, ValueError) as err:
        raise CommandLineError(
            f"{path}: {kind} {spec}: not an {module.__name__} class with these arguments ({err}); write "
            f"{kind}: {{class: Name, argument: value}}, e.g. {kind}: {{class: {default}}}."
        ) from None


class Objective:
    """One trial: its values as `train.py` options after the fixed ones, `fit`, then (for a `test/`
    objective) `test` of the best checkpoint; every validation and test metric goes into the trial."""

    def __init__(
        self, study_dir: Path, fixed: list[str], space: dict[str, BaseDistribution], objective: str, n_trials: int
    ):
        self.study_dir, self.fixed, self.space, self.objective = study_dir, fixed, space, objective
        self.n_trials = n_trials
        # pruning compares trials after each validation: by the objective if it is logged then, else val/loss
        self.monitor = objective if objective.startswith("val/") else "val/loss"

    def __call__(self, trial: Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which machine's log to read
        if is_surplus(trial.study.get_trials(deepcopy=False), trial.number, self.n_trials):
            trial.set_user_attr(SURPLUS, True)
            raise self.failed(trial, "not run: another worker started the study's last trial at the same moment")
        run = self.study_dir / f"version_{trial.number}"
        trial.set_user_attr("run", str(run))
        params = {name: suggest(trial, name, distribution) for name, distribution in self.space.items()}
        args = [*self.fixed, *(f"--{name}={option_value(value)}" for name, value in params.items())]
        args += [f"--trainer.logger.init_args.save_dir={self.study_dir}", "--trainer.logger.init_args.name="]
        args += [f"--trainer.logger.init_args.version={run.name}"]
        try:
            fit = TrialCLI(PyTorchLightningPruningCallback(trial, self.monitor), args=["fit", *args])
            metrics = dict(fit.trainer.callback_metrics)
            # in the study, so that any machine can write best.yaml, not only the one that ran the trial
            trial.set_user_attr("config", (Path(fit.trainer.log_dir) / "config.yaml").read_text())
            if self.objective.startswith("test/"):
                best = fit.trainer.checkpoint_callback.best_model_path
                metrics |= VAECLI(args=["test", *args, f"--ckpt_path={best}"]).trainer.callback_metrics
        except optuna.TrialPruned:
            raise
        except (SystemExit, NonFiniteLossError) as err:  # the CLI's one-line errors; a loss gone NaN
            raise self.failed(trial, str(err).removeprefix("error: ")) from None
        except Exception as err:  # unforeseen: recorded in one line, and Optuna logs the traceback
            trial.set_user_attr("error", f"{type(err).__name__}: {' '.join(str(err).split())}")
            raise
        for name, value in metrics.items():
            trial.set_user_attr(name, value.item())
        if self.objective not in metrics:
            raise self.failed(trial, f"the run logged no {self.objective}; it logged {', '.join(sorted(metrics))}")
        value = metrics[self.objective].item()
        if not math.isfinite(value):
            raise self.failed(trial, f"{self.objective} is {value}")
        return value

    @staticmethod
    def failed(trial: Trial, reason: str) -> TrialFailed:
        trial.set_user_attr("error", reason)
        return TrialFailed(reason)


def is_surplus(trials: list[FrozenTrial], number: int, n_trials: int) -> bool:
    """Whether trial `number` is one too many: two workers that both saw one trial left to start
    each started one. Every new trial (not a retry) takes one of the `n_trials` places in the
    order of its number, which the database gives out one at a time, so the later one is the surplus."""
    retried = RetryHeartbeatStaleTrialCallback.retried_trial_number
    trial = next(t for t in trials if t.number == number)
    return retried(trial) is None and sum(t.number < number and retried(t) is None for t in trials) >= n_trials


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials less those replaced by a retry (a trial whose worker died) and the surplus ones."""
    trials = study.get_trials(deepcopy=False)
    replaced = {number for t in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    return [t for t in trials if t.number not in replaced and not t.user_attrs.get(SURPLUS)]


def run_worker(study: optuna.Study, objective: Objective, n_trials: int, heartbeat: int, retries: RetryStaleTrials):
    """Start trials until `n_trials` have started or wait as retries, then wait, checking for stale
    trials to take over, until all have finished. The worker that marks a trial stale queues its retry and runs it
    at once; another one takes a queued retry only if it is still waiting a look later (the worker
    that queued it stopped): two idle workers that both went for it would run a trial too many."""
    seen: set[int] = set()  # retries waiting at the previous look
    while True:
        retries.queued_here = False
        fail_stale_trials(study)
        trials = counted_trials(study)
        started = [t for t in trials if t.state != TrialState.WAITING]
        if sum(t.state.is_finished() for t in started) >= n_trials:
            return
        waiting = {t.number for t in trials if t.state == TrialState.WAITING}
        if len(trials) < n_trials or retries.queued_here or waiting & seen:  # a waiting retry is counted
            study.optimize(objective, n_trials=1, catch=(Exception,))
            seen = set()
        else:
            seen = waiting
            time.sleep(heartbeat)


def note(trial: FrozenTrial) -> str:
    """Why a trial ended as it did, and whose retry it is."""
    retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    if trial.state == TrialState.PRUNED:
        return f"pruned after epoch {trial.last_step}, at {trial.intermediate_values[trial.last_step]:.2f}"
    if trial.state == TrialState.FAIL:  # without a reason, the trial's worker itself stopped
        return trial.user_attrs.get("error", "its worker stopped (killed, or interrupted) during the trial")
    return f"retry of {retried}, whose worker stopped" if retried is not None else ""


def trials_table(study: optuna.Study, objective: str, names: list[str]) -> str:
    header = ["trial", "state", objective, *names, "val/recon", "val/kl", "run", "note"]
    rows = [header, ["---"] * len(header)]
    for t in study.trials:
        value = f"{t.value:.2f}" if t.state == TrialState.COMPLETE else ""  # a pruned one's is in its note
        recon, kl = (f"{t.user_attrs[m]:.2f}" if m in t.user_attrs else "" for m in ("val/recon", "val/kl"))
        params = [
            f"{t.params[n]:.4g}" if isinstance(t.params.get(n), float) else str(t.params.get(n, "")) for n in names
        ]
        rows.append([str(t.number), t.state.name, value, *params, recon, kl, t.user_attrs.get("run", ""), note(t)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def best_config(trial: FrozenTrial) -> dict[str, Any]:
    """The best trial's own `config.yaml`, logging into `lightning_logs/version_N` as any run does."""
    config = yaml.safe_load(trial.user_attrs["config"])
    config["trainer"]["logger"]["init_args"].update(RUN_FOLDER_OPTIONS)
    return config


def write_results(study: optuna.Study, study_dir: Path, objective: str, names: list[str]) -> None:
    """trials.md, best.yaml, objective.png and rate_distortion.png in the study's folder."""
    table = trials_table(study, objective, names)
    with atomic_write(study_dir / "trials.md") as f:  # several workers write the results
        f.write(table.encode())
    print(table)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        print(f"No trial of study {study.study_name} has completed yet.")
        return
    best = study.best_trial
    text = f"# Trial {best.number} of study {study.study_name}: {objective} {best.value:.4f}\n"
    text += yaml.safe_dump(best_config(best), sort_keys=False)
    with atomic_write(study_dir / "best.yaml") as f:
        f.write(text.encode())

    axes = plot_optimization_history(study, target_name=objective)
    with atomic_write(study_dir / "objective.png") as f:
        axes.figure.savefig(f, format="png", dpi=120)
    pyplot.close(axes.figure)

    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    points = [t for t in complete if "val/kl" in t.user_attrs and "val/recon" in t.user_attrs]
    rate, distortion = [t.user_attrs["val/kl"] for t in points], [t.user_attrs["val/recon"] for t in points]
    axes.plot(rate, distortion, "o")
    for t, x, y in zip(points, rate, distortion, strict=True):
        label = ", ".join(f"{n.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{n.split('.')[-1]}={v}"
                          for n, v in t.params.items())  # fmt: skip
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    elbo = min(r + d for r, d in zip(rate, distortion, strict=True))
    axes.axline((0, elbo), slope=-1, linestyle="--", color="grey", label=f"-ELBO = {elbo:.1f} (best)")
    axes.set(xlabel="rate: val/kl (nats)", ylabel="distortion: val/recon (nats)", title=f"study {study.study_name}")
    axes.legend()
    with atomic_write(study_dir / "rate_distortion.png") as f:
        figure.savefig(f, format="png", dpi=120)
    print(f"Best: trial {best.number}, {objective} {best.value:.4f}; python train.py --config {study_dir}/best.yaml")


class NoTracebackForTrialFailed(logging.Filter):
    """Optuna logs a failed trial with its traceback; a TrialFailed's one-line reason is all there is to say."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrialFailed):
            record.exc_info = None
        return True


for handler in logging.getLogger("optuna").handlers:  # Optuna's own console handler
    handler.addFilter(NoTracebackForTrialFailed())


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, Any], list[str]]:
    parser = OneLineArgumentParser(
        prog="sweep.py",
        allow_abbrev=False,
        description="Sweep train.py's options with Optuna. Any other option is train.py's (a --config included).",
    )
    parser.add_argument("sweep", type=Path, help="the sweep's YAML: space, and optionally the options below")
    parser.add_argument("--study_name", help="default: the sweep file's name")
    parser.add_argument("--n_trials", type=int, help="finished trials the study stops at (a grid: its size)")
    parser.add_argument("--objective", help=f"a logged val/ or test/ metric (default {DEFAULTS['objective']})")
    parser.add_argument("--direction", choices=("minimize", "maximize"), help="default: minimize")
    parser.add_argument("--storage", help="a database URL (default: sqlite in sweeps/<study>/study.db)")
    parser.add_argument("--heartbeat", type=int, help="seconds between a running trial's heartbeats (default 30)")
    args, train_args = parser.parse_known_args(argv)
    if not args.sweep.is_file():
        parser.exit(2, f"error: no sweep file {args.sweep}; configs/sweeps/ holds examples.\n")
    sweep = read_yaml(args.sweep, str(args.sweep)) or {}
    if not isinstance(sweep, dict):
        raise CommandLineError(f"{args.sweep}: a sweep file is a YAML mapping ({', '.join(SWEEP_KEYS)}).")
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        parser.exit(
            2, f"error: {args.sweep}: unknown key(s) {', '.join(unknown)}; a sweep file has {', '.join(SWEEP_KEYS)}.\n"
        )
    for key, kind in SWEEP_TYPES.items():
        if key in sweep and (not isinstance(sweep[key], kind) or isinstance(sweep[key], bool)):
            shape = {dict: "a mapping", str: "a string", int: "an integer"}[kind]
            parser.exit(2, f"error: {args.sweep}: {key} must be {shape}, got {sweep[key]!r}.\n")
    settings = DEFAULTS | {"study_name": args.sweep.stem} | sweep
    settings |= {key: value for key, value in vars(args).items() if value is not None and key != "sweep"}
    if settings["direction"] not in ("minimize", "maximize"):
        parser.exit(2, f"error: direction {settings['direction']}: must be minimize or maximize.\n")
    if settings["heartbeat"] < 1 or settings["max_retry"] < 0:
        parser.exit(2, "error: heartbeat must be at least 1 (seconds) and max_retry at least 0.\n")
    fixed = [f"--{name}={option_value(value)}" for name, value in (sweep.get("fixed") or {}).items()]
    return args, settings, data_class_first([*fixed, *train_args])


def main(argv: list[str] | None = None) -> optuna.Study:
    args, settings, fixed = parse(sys.argv[1:] if argv is None else argv)
    space = load_space(args.sweep, settings.get("space") or {})
    objective = settings["objective"]
    if not objective.startswith(("val/", "test/")):
        raise CommandLineError(f"--objective {objective}: must be a val/ or test/ metric, e.g. val/loss or test/nll.")
    grid = (settings.get("sampler") or {}).get("class") == "GridSampler"
    if grid and not all(isinstance(d, CategoricalDistribution) for d in space.values()):
        raise CommandLineError(f"{args.sweep}: GridSampler needs every option of the space to be categorical.")
    n_trials = settings.get("n_trials") or (math.prod(len(d.choices) for d in space.values()) if grid else None)
    if not n_trials or n_trials < 1:
        raise CommandLineError(f"{args.sweep}: say how many trials the study runs: n_trials, or --n_trials N.")
    check_train_options(args.sweep, fixed, space)
    grid_space = {"search_space": {name: d.choices for name, d in space.items()}} if grid else {}
    sampler = make(args.sweep, optuna.samplers, settings.get("sampler"), "TPESampler", **grid_space)
    pruner = make(args.sweep, optuna.pruners, settings.get("pruner"), "MedianPruner")
    study_dir = SWEEPS_DIR / settings["study_name"]
    url = settings.get("storage")
    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{study_dir / 'study.db'}"
    retries = RetryStaleTrials(max_retry=settings["max_retry"])
    storage = open_storage(url, settings["heartbeat"], retries)
    study_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=storage,
        study_name=settings["study_name"],
        direction=settings["direction"],
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if study.direction.name.lower() != settings["direction"]:
        raise CommandLineError(
            f"study {study.study_name} in {without_password(url)} was created to {study.direction.name.lower()} its "
            "objective: drop --direction, or name a new study with --study_name."
        )
    run_worker(study, Objective(study_dir, fixed, space, objective, n_trials), n_trials, settings["heartbeat"], retries)
    write_results(study, study_dir, objective, list(space))
    return study


if __name__ == "__main__":
    main()
