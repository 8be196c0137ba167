"""Optuna studies: the storages shared by every sweep (hyperparameter studies, ``train.py -optimize``, and comparison
grids, ``benchmarks/compare.py --storage``), samplers, pruners, the callback that reports validation to a trial, and
the study's report (best preset, history and importance plots).

A study lives in a storage that many worker processes, on one machine or many, open with the same ``--storage`` and
``--study-name``; each worker takes trials no other worker has taken. Which storage a spelling gives:

* ``sqlite:///path/study.db``, ``postgresql://...``, ``mysql://...``: an RDB storage with a heartbeat, so a trial whose
  worker died (killed, machine lost) is marked failed after ``grace_period`` seconds and queued again (up to 3 times);
* ``path/study.log`` (any other path): a journal file, e.g. on a shared filesystem. It has no heartbeat: a dead
  worker's trial stays "running" until the study is cleaned up (``fail_stale_trials`` cannot see it).

A database spelling without ``://`` (``sqlite//x.db``, ``x.db``) is refused rather than taken for a journal path.

Workers never repeat a trial: TPE and random sampling draw from a generator seeded for each trial by the run's seed
and the trial's number, which the storage hands out once (:class:`TrialSeededSampler`), so workers started with the
same command draw different points and a study of one worker repeats from its seed; a grid is shuffled by the same
seed in every worker, so trial N takes the grid's Nth point whoever runs it. A trial whose parameters another live or
finished trial already has (a grid handing out a point that is still running once all have started) is not trained:
it is pruned with the user attribute ``repeat_of`` (:func:`repeated_trial`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from optuna.samplers import BaseSampler
from optuna.study import MaxTrialsCallback
from stable_baselines3.common.callbacks import BaseCallback

from models.runtime import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "HEARTBEAT_INTERVAL",
    "GRACE_PERIOD",
    "SAMPLERS",
    "PRUNERS",
    "make_storage",
    "default_storage",
    "study_lock",
    "serialize_asks",
    "make_sampler",
    "TrialSeededSampler",
    "repeated_trial",
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
# a database spelling that lost its "://" (sqlite//x.db, postgresql:/host/db), or a database file given as a path
_LOST_SCHEME = re.compile(r"^(sqlite|postgres(ql)?|mysql|mariadb|oracle|mssql)(\+\w+)?(:|//)", re.IGNORECASE)
_DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


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
    if "://" not in spec and (re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:(?!//)", spec) or _LOST_SCHEME.match(spec)):
        raise ValueError(f"--storage {shown!r}: a URL needs '://' (e.g. sqlite:///path/study.db)")
    scheme = spec.split("://", 1)[0].split("+", 1)[0] if "://" in spec else None
    if scheme is None:
        path = Path(spec)
        if path.suffix.lower() in _DATABASE_SUFFIXES:
            raise ValueError(
                f"--storage {shown!r} names a database file as a path: write sqlite:///{spec} (a journal file is any "
                "other path, e.g. study.log)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if scheme not in RDB_SCHEMES:
        raise ValueError(
            f"--storage {shown!r}: expected an RDB URL ({', '.join(s + '://' for s in RDB_SCHEMES)}) or a journal file path"
        )
    if scheme == "sqlite":
        _check_sqlite_path(spec, shown)
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
                if not type(error).__module__.startswith("sqlalchemy"):
                    raise
                if attempt == 3 or "unable to open" in str(error):  # a path it cannot open does not heal
                    cause = str(getattr(error, "orig", None) or error).splitlines()[0]
                    raise ValueError(f"--storage {shown!r}: cannot open it ({type(error).__name__}: {cause})") from None
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")
    except (ImportError, optuna.exceptions.StorageInternalError) as error:
        raise ValueError(f"--storage {shown!r}: cannot open it ({type(error).__name__})") from error


def _check_sqlite_path(spec: str, shown: str) -> None:
    """An SQLite URL's file must be creatable: its folder exists and is writable, and it is not a folder itself.

    Raises:
        ValueError: names the path and what is wrong with it.
    """
    path_text = spec.split("://", 1)[1]
    path_text = path_text[1:] if path_text.startswith("/") else path_text  # sqlite:///rel.db, sqlite:////abs.db
    path_text = path_text.split("?", 1)[0]
    if not path_text or path_text == ":memory:":
        return
    path = Path(path_text)
    if path.is_dir():
        raise ValueError(f"--storage {shown!r}: '{path}' is a folder (expected a database file, e.g. {path / 'study.db'})")
    if not path.parent.is_dir():
        raise ValueError(f"--storage {shown!r}: the folder '{path.parent}' does not exist (create it, or give another path)")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ValueError(f"--storage {shown!r}: '{path}' is not writable here")


def study_lock(storage_spec: str) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """A lock that every process on this machine (or filesystem) sharing a file storage takes: an ``fcntl`` lock on
    ``<db or journal>.lock``, which the OS releases when a worker dies; None for a server database (nothing to lock).
    """
    if "://" in storage_spec and not storage_spec.startswith("sqlite:///"):
        return None
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return None
    lock_path = Path(storage_spec.removeprefix("sqlite:///") + ".lock")

    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return locked


def serialize_asks(study: Any, storage_spec: str) -> None:
    """On a file storage (SQLite, journal), let one process at a time take a trial (:func:`study_lock` around
    ``study.ask``).

    SQLite has no ``SELECT ... FOR UPDATE``: two processes can both see a queued trial as waiting and both start it
    (seen in CI: one cell trained twice, then "Cannot tell a COMPLETE trial"). A server RDB locks the row itself.
    """
    lock = study_lock(storage_spec)
    if lock is None:
        return
    ask = study.ask

    def locked_ask(*args: Any, **kwargs: Any) -> Any:
        with lock():
            return ask(*args, **kwargs)

    study.ask = locked_ask  # optimize() takes every trial through study.ask (Optuna 4-5)


def repeated_trial(trial: Any, earlier_only: bool) -> int | None:
    """The number of another trial of ``trial``'s study with ``trial``'s parameters that is running or done (not
    failed, waiting or itself a repeat), or None.

    Args:
        earlier_only: consider only lower-numbered trials. Without a lock around suggesting and checking (a server
            database) two trials may check at once; the lower number then keeps its point. Under :func:`study_lock`
            any other trial counts, as whichever checked first has its parameters stored already.
    """
    import optuna

    skipped = (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING)
    for other in trial.study.get_trials(deepcopy=False):
        if other.number == trial.number or other.state in skipped or "repeat_of" in other.user_attrs:
            continue
        if earlier_only and other.number > trial.number:
            continue
        if other.params == trial.params:
            return other.number
    return None


def make_sampler(name: str, seed: int, n_startup_trials: int, search_grid: dict[str, list[Any]] | None = None) -> Any:
    """``tpe`` (random for the first ``n_startup_trials``), ``random`` or ``grid`` (over ``search_grid``), the same
    in every worker of a study (see the module docstring): TPE and random seeded per trial from ``seed``
    (:class:`TrialSeededSampler`; TPE's constant liar keeps them away from running trials), the grid shuffled by
    ``seed``."""
    import optuna

    if name == "tpe":
        return TrialSeededSampler(
            lambda s: optuna.samplers.TPESampler(n_startup_trials=n_startup_trials, seed=s, multivariate=True), seed
        )
    if name == "random":
        return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if name == "grid":
        if not search_grid:
            raise ValueError("--sampler grid needs a search space")
        return optuna.samplers.GridSampler(search_grid, seed=seed)
    raise ValueError(f"unknown sampler {name!r} (valid: {', '.join(SAMPLERS)})")


def _trial_seed(seed: int, number: int) -> int:
    """A seed for trial ``number`` of a study run from ``seed``: distinct streams for distinct trials."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """An Optuna sampler (``make(seed)``) rebuilt for each trial with a seed from ``(seed, trial number)``.

    A sampler seeded once per process draws the same sequence in every worker started with the same seed: their
    random start-up trials repeat each other, and so does a rerun of the study. The storage hands out each trial number
    once, so seeding by it gives every trial its own draws, whoever runs it, and a study that one worker runs from a new
    storage repeats from ``seed``. TPE and random sampling keep no state between trials but their generator (TPE
    reads the history from the study), so rebuilding them loses nothing.
    """

    def __init__(self, make: Callable[[int], Any], seed: int) -> None:
        self._make, self._seed = make, int(seed)
        self._sampler = make(self._seed)

    def before_trial(self, study: Any, trial: Any) -> None:
        self._sampler = self._make(_trial_seed(self._seed, trial.number))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


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
    """One row per trial: number, state, value, seconds, the trial it repeats (not trained), then every parameter (what
    ``trials_dataframe`` gives, without pandas)."""
    import csv
    import io

    names = sorted({name for t in study.trials for name in t.params})
    handle = io.StringIO()
    writer = csv.writer(handle)
    writer.writerow(["number", "state", "value", "seconds", "repeat_of", *names])
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        value = "" if t.value is None else t.value
        repeat = t.user_attrs.get("repeat_of", "")
        writer.writerow([t.number, t.state.name, value, seconds, repeat, *(t.params.get(n, "") for n in names)])
    atomic_write_text(path, handle.getvalue())  # a reader (or a kill) never sees half a report


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
    atomic_write_text(folder / "best_preset.yml", header + yaml.safe_dump(fragment, sort_keys=False))
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
