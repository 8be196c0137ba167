"""Optuna studies: the storages shared by every sweep (hyperparameter studies, ``train.py -optimize``, and comparison
grids, ``benchmarks/compare.py --storage``), samplers, pruners, the callback that reports validation to a trial, and
the study's report (best preset, history and importance plots).

A study lives in a storage that many worker processes, on one machine or many, open with the same ``--storage`` and
``--study-name``; each worker takes trials no other worker has taken. Which storage a spelling gives:

* ``sqlite:///path/study.db``, ``postgresql://...``, ``mysql://...``: an RDB storage with a heartbeat, so a trial whose
  worker died (killed, machine lost) is marked failed after ``grace_period`` seconds and queued again (up to 3 times);
* ``path/study.log`` (any other path): a journal file, e.g. on a shared filesystem. It has no heartbeat: a dead
  worker's trial stays "running" until the study is cleaned up (``fail_stale_trials`` cannot see it).
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any

from optuna.study import MaxTrialsCallback
from stable_baselines3.common.callbacks import BaseCallback

logger = logging.getLogger(__name__)

__all__ = [
    "HEARTBEAT_INTERVAL",
    "GRACE_PERIOD",
    "SAMPLERS",
    "PRUNERS",
    "make_storage",
    "default_storage",
    "serialize_asks",
    "make_sampler",
    "make_pruner",
    "TrialEvalCallback",
    "MaxTrialsCallback",
    "write_report",
]

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")

HEARTBEAT_INTERVAL = 30  # seconds between a running trial's heartbeats
GRACE_PERIOD = 120  # seconds without a heartbeat after which a running trial counts as dead
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


def default_storage(folder: str | Path, name: str) -> str:
    """An SQLite file in ``folder``: nothing to install or start, safe for several worker processes on one machine."""
    path = Path(folder).resolve() / f"{name}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_storage(spec: str, heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD) -> Any:
    """An Optuna storage from a URL (RDB, with heartbeat and retries of a dead worker's trial) or a journal path.

    Raises:
        ValueError: an unusable spelling (names it and what is expected).
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    shown = re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", spec)  # never print a password
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:(?!//)", spec):
        raise ValueError(f"--storage {shown!r}: a URL needs '://' (e.g. sqlite:///path/study.db)")
    scheme = spec.split("://", 1)[0].split("+", 1)[0] if "://" in spec else None
    if scheme is None:
        path = Path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if scheme not in RDB_SCHEMES:
        raise ValueError(
            f"--storage {shown!r}: expected an RDB URL ({', '.join(s + '://' for s in RDB_SCHEMES)}) or a journal file path"
        )
    try:
        for attempt in range(4):  # processes opening a new database together race to create its tables: try again
            try:
                with warnings.catch_warnings():  # heartbeats and retries are "experimental" in Optuna since 2.8
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return RDBStorage(
                        spec,
                        heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                    )
            except Exception as error:  # sqlalchemy's IntegrityError / OperationalError of that race
                if attempt == 3 or not type(error).__module__.startswith("sqlalchemy"):
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")
    except (ImportError, optuna.exceptions.StorageInternalError) as error:
        raise ValueError(f"--storage {shown!r}: cannot open it ({type(error).__name__})") from error


def serialize_asks(study: Any, storage_spec: str) -> None:
    """On an SQLite storage, let one process at a time take a trial (a file lock around ``study.ask``).

    SQLite has no ``SELECT ... FOR UPDATE``: two processes can both see a queued trial as waiting and both start it
    (seen in CI: one cell trained twice, then "Cannot tell a COMPLETE trial"). A server RDB locks the row itself, and
    a journal file serialises its writes, so they need nothing. The lock is an ``fcntl`` lock on ``<db>.lock``, which
    the OS releases when a worker dies.
    """
    if not storage_spec.startswith("sqlite:///"):
        return
    import fcntl

    lock_path = Path(storage_spec.removeprefix("sqlite:///") + ".lock")
    ask = study.ask

    def locked_ask(*args: Any, **kwargs: Any) -> Any:
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                return ask(*args, **kwargs)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    study.ask = locked_ask  # optimize() takes every trial through study.ask (Optuna 4-5)


def make_sampler(name: str, seed: int, n_startup_trials: int, search_grid: dict[str, list[Any]] | None = None) -> Any:
    """``tpe`` (random for the first ``n_startup_trials``), ``random`` or ``grid`` (over ``search_grid``)."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=n_startup_trials, seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        if not search_grid:
            raise ValueError("--sampler grid needs a search space")
        return optuna.samplers.GridSampler(search_grid, seed=seed)
    raise ValueError(f"unknown sampler {name!r} (valid: {', '.join(SAMPLERS)})")


def make_pruner(name: str, n_startup_trials: int, n_evaluations: int) -> Any:
    """``median`` (after ``n_startup_trials`` trials and a third of the evaluations), ``halving`` or ``none``."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=max(n_evaluations // 3, 0))
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r} (valid: {', '.join(PRUNERS)})")


class TrialEvalCallback(BaseCallback):
    """After each validation of the run's ValidationCallback: report ``metric`` to the trial; stop training when the
    pruner says so (the objective then raises ``TrialPruned``). Keeps the best value, the trial's objective.

    Args:
        trial: the Optuna trial. validation: the run's ValidationCallback (its ``history`` grows by one per evaluation).
        metric: the validation metric reported (``pixel_f1max`` or ``pixel_auroc``).
    """

    def __init__(self, trial: Any, validation: Any, metric: str, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.trial, self.validation, self.metric = trial, validation, metric
        self.best = float("-inf")
        self.pruned = False
        self._seen = 0

    def _on_step(self) -> bool:
        history = self.validation.history
        if len(history) == self._seen:
            return True
        self._seen = len(history)
        value = float(history[-1][self.metric])
        self.best = max(self.best, value)
        self.trial.report(value, len(history))
        if self.trial.should_prune():
            self.pruned = True
            return False  # ends learn(); the objective raises TrialPruned
        return True


def write_trials_csv(study: Any, path: Path) -> None:
    """One row per trial: number, state, value, seconds, then every parameter (what ``trials_dataframe`` gives,
    without pandas)."""
    import csv

    names = sorted({name for t in study.trials for name in t.params})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "value", "seconds", *names])
        for t in study.trials:
            seconds = (
                (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
            )
            writer.writerow(
                [t.number, t.state.name, "" if t.value is None else t.value, seconds, *(t.params.get(n, "") for n in names)]
            )


def write_report(
    study: Any, folder: Path, algo: str, env_id: str, preset: str, metric: str, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The study's results as files: ``report.csv`` (every trial), ``best_preset.yml`` (the best trial's values as a
    preset for ``agents/hyperparams/<algo>.yml``: the best trial's values merged over ``base``, the settings every
    trial started from, so that the preset alone reproduces the trial), ``optimization_history.png`` and
    ``param_importances.png``. Returns the best trial's summary.

    Raises:
        ValueError: no trial has completed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import yaml

    from agents.hyperparams_opt import deep_merge, to_config

    folder.mkdir(parents=True, exist_ok=True)
    write_trials_csv(study, folder / "report.csv")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ValueError(f"study {study.study_name!r} has no completed trial yet (see {folder / 'report.csv'})")
    best = study.best_trial
    hyperparams, env_kwargs = to_config(best.params)
    tuned = {**hyperparams, **({"env_kwargs": env_kwargs} if env_kwargs else {})}
    fragment = {env_id: {f"tuned-{study.study_name}": deep_merge(base or {}, tuned)}}
    header = (
        f"# Study {study.study_name!r}: trial {best.number} of {len(study.trials)}, validation {metric} {best.value:.4f}.\n"
        f"# The {preset!r} preset with the trial's values: paste under {env_id} in agents/hyperparams/{algo}.yml and\n"
        f"# train with --preset tuned-{study.study_name} (a preset that env.yml does not name carries its own env_kwargs).\n"
        f"# Tuned: {', '.join(sorted(best.params))}.\n"
    )
    (folder / "best_preset.yml").write_text(header + yaml.safe_dump(fragment, sort_keys=False))
    plots: dict[str, Any] = {
        "optimization_history.png": optuna.visualization.matplotlib.plot_optimization_history,
        "param_importances.png": optuna.visualization.matplotlib.plot_param_importances,
    }
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():  # Optuna calls its matplotlib plots "experimental"; so few trials, "equal"
                warnings.simplefilter("ignore")
                axes = plot(study)
            axes.figure.set_size_inches(8, 5)
            axes.figure.tight_layout()
            axes.figure.savefig(folder / name, dpi=110)
            plt.close(axes.figure)
        except (ValueError, RuntimeError, ImportError) as error:  # e.g. importances need two completed trials
            logger.warning("no %s: %s", name, error)
    return {"trial": best.number, "value": best.value, "params": best.params, "trials": len(study.trials)}
