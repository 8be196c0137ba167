"""``train.py -optimize``: an Optuna study over the algorithm's and the env's search spaces
(:mod:`agents.hyperparams_opt`), run as rl-baselines3-zoo runs one.

Each trial trains the preset's budget with sampled values, reports validation ``--optimize-metric`` at each of
``--n-evaluations`` points (the pruner may stop it) and returns its best. ``--n-jobs N`` starts N worker processes on
one storage; more machines join with the same command (the same ``--storage`` and ``--study-name``): every worker
draws other points (:mod:`agents.sweeps`), and a trial that repeats another's parameters is pruned untrained. The
study's report is :func:`agents.sweeps.write_report`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agents.hyperparams_opt import deep_merge, grid, space_for, suggest, to_config
from agents.run_config import METHOD
from agents.sweeps import PRUNERS, SAMPLERS
from models.runtime import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["add_optimize_arguments", "optimize_hyperparameters"]


def add_optimize_arguments(parser: argparse.ArgumentParser) -> None:
    """rl-baselines3-zoo's hyperparameter-optimisation flags."""
    group = parser.add_argument_group("hyperparameter optimisation (Optuna)")
    group.add_argument(
        "-optimize", "--optimize-hyperparameters", action="store_true", help="run an Optuna study instead of one training"
    )
    group.add_argument("--n-trials", type=int, default=20, help="trials this process runs (each --n-jobs worker: its share)")
    group.add_argument("--max-total-trials", type=int, default=None, help="stop once the study holds this many trials")
    group.add_argument("--n-jobs", type=int, default=1, help="worker processes on this machine (threads split between them)")
    group.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="Optuna sampler")
    group.add_argument("--pruner", default="median", choices=PRUNERS, help="Optuna pruner (on validation reports)")
    group.add_argument("--n-startup-trials", type=int, default=5, help="trials before TPE and the pruner start working")
    group.add_argument(
        "--n-evaluations", type=int, default=None, help="validations per trial (default: n_timesteps / eval_freq)"
    )
    group.add_argument(
        "--storage", default=None, help="study storage: an RDB URL or a journal file (default: SQLite in the log path)"
    )
    group.add_argument("--study-name", default=None, help="study name (default: <algo>-<category>-<preset>)")
    group.add_argument(
        "--optimization-log-path", default=None, help="trial runs and the report (default: <log-folder>/<algo>/optuna/<study>)"
    )
    group.add_argument(
        "--optimize-metric",
        default="pixel_f1max",
        choices=("pixel_f1max", "pixel_auroc"),
        help="validation metric to maximise",
    )
    group.add_argument(
        "--tune", default="both", choices=("algo", "env", "both"), help="search the algorithm's knobs, the env's or both"
    )
    group.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # the --n-jobs workers: the parent reports


def optimize_hyperparameters(
    config: dict[str, Any], args: argparse.Namespace, argv: list[str], train: Callable[..., dict[str, Any]], script: Path
) -> dict[str, Any]:
    """Run the study of ``config`` (a resolved RL config) as the flags of :func:`add_optimize_arguments` ask.

    Args:
        config: the run config every trial starts from.
        args: train.py's parsed flags; argv: its command line (repeated by the ``--n-jobs`` workers).
        train: train.py's ``train``: ``train(config, run_dir, resume=..., progress=..., tensorboard_log=...,
            evaluate_at_end=False, trial=..., optimize_metric=...)`` returns ``{"objective": best validation value}``.
        script: train.py's path, that the ``--n-jobs`` workers run.

    Returns:
        the report's summary (study, storage, report folder, best trial), or {} for a worker (``--no-report``).

    Raises:
        ValueError: nothing to tune, or an unusable storage or setting.
    """
    import optuna

    from agents.sweeps import default_storage, make_storage

    if config["method"] != METHOD:
        raise ValueError(f"-optimize tunes the RL method and its detector; --method {config['method']} has no search space")
    space = space_for(config["algo"], args.tune)
    n_evaluations = args.n_evaluations or max(config["n_timesteps"] // max(config["eval_freq"], 1), 1)
    if n_evaluations < 1:
        raise ValueError(f"--n-evaluations must be >= 1, got {n_evaluations}")
    category = config["env_kwargs"].get("category") or "synthetic"
    study_name = args.study_name or f"{config['algo']}-{category}-{config['preset']}"
    root = Path(args.optimization_log_path or Path(args.log_folder) / config["algo"] / "optuna" / study_name)
    storage = args.storage or default_storage(root, "study")

    if args.n_jobs > 1:
        _run_workers(args, argv, script, storage, study_name, root)
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    else:
        study = _optimize(config, args, train, space, n_evaluations, storage, study_name, root)
    if args.no_report:
        return {}
    from agents.sweeps import write_report

    run_specific = {"data_root", "category", "seed", "device"}  # given on the command line, not part of a preset
    base = {
        **{key: config[key] for key in ("n_timesteps", "eval_freq", "save_freq")},
        **config["hyperparams"],
        "env_kwargs": {k: v for k, v in config["env_kwargs"].items() if k not in run_specific},
    }
    summary = write_report(study, root, config["algo"], config["env"], config["preset"], args.optimize_metric, base)
    return {"study": study_name, "storage": storage, "report": str(root), **summary}


def _run_workers(args: argparse.Namespace, argv: list[str], script: Path, storage: str, study_name: str, root: Path) -> None:
    """N copies of this command, one worker each, threads split between them; waits for all."""
    import optuna

    from agents.sweeps import make_storage

    threads = max(1, (os.cpu_count() or 1) // args.n_jobs) if args.threads is None else args.threads
    per_worker = -(-args.n_trials // args.n_jobs)
    command = [sys.executable, str(script), *argv, "--n-jobs", "1", "--n-trials", str(per_worker)]
    command += ["--storage", storage, "--study-name", study_name, "--optimization-log-path", str(root)]
    command += ["--threads", str(threads), "--no-report"]
    logger.info("%d workers on %s, %d threads each", args.n_jobs, storage, threads)
    # the study (and a new database's tables) exists before the workers open it: no creation race between them
    optuna.create_study(storage=make_storage(storage), study_name=study_name, direction="maximize", load_if_exists=True)
    workers = [subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}) for _ in range(args.n_jobs)]
    codes = [w.wait() for w in workers]
    if any(codes):
        logger.warning("worker exit codes %s", codes)


def _optimize(
    config: dict[str, Any],
    args: argparse.Namespace,
    train: Callable[..., dict[str, Any]],
    space: dict[str, tuple],
    n_evaluations: int,
    storage: str,
    study_name: str,
    root: Path,
) -> Any:
    """This process's trials on the study (created if new); returns the study."""
    import optuna

    from agents.sweeps import (
        MaxTrialsCallback,
        make_pruner,
        make_sampler,
        make_storage,
        repeated_trial,
        serialize_asks,
        study_lock,
    )

    search_grid = grid(space) if args.sampler == "grid" else None
    study = optuna.create_study(
        storage=make_storage(storage),
        study_name=study_name,
        # the same seed in every worker: the samplers draw per trial number (agents.sweeps), not per process
        sampler=make_sampler(args.sampler, config["seed"], args.n_startup_trials, search_grid),
        pruner=make_pruner(args.pruner, args.n_startup_trials, n_evaluations),
        direction="maximize",
        load_if_exists=True,
    )
    study.set_user_attr("metric", args.optimize_metric)
    serialize_asks(study, storage)  # a retried (queued) trial is taken by one worker only
    lock = study_lock(storage)

    def objective(trial: optuna.Trial) -> float:
        # suggest and look for a trial with the same point in one step: of two workers on one point, one trains it
        with lock() if lock is not None else contextlib.nullcontext():
            if search_grid is not None:  # the grid's values, as categoricals
                values = {name: trial.suggest_categorical(name, choices) for name, choices in search_grid.items()}
            else:
                values = suggest(trial, space)
            repeat = repeated_trial(trial, earlier_only=lock is None)
        if repeat is not None:
            trial.set_user_attr("repeat_of", repeat)
            logger.info("trial %d: the parameters of trial %d, not trained again (pruned)", trial.number, repeat)
            raise optuna.TrialPruned(f"repeats trial {repeat}")
        hyperparams, env_kwargs = to_config(values)
        trial_config = copy.deepcopy(config)
        trial_config["hyperparams"].update(hyperparams)
        trial_config["env_kwargs"] = deep_merge(trial_config["env_kwargs"], env_kwargs)
        trial_config.update(eval_freq=max(config["n_timesteps"] // n_evaluations, 1), save_freq=0)
        run_dir = root / f"trial_{trial.number}"
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yml", yaml.safe_dump(trial_config, sort_keys=False))
        trial.set_user_attr("run", str(run_dir))
        logger.info("trial %d: %s", trial.number, values)
        result = train(
            trial_config,
            run_dir,
            resume=False,
            progress=False,
            tensorboard_log=str(run_dir / "tensorboard"),
            evaluate_at_end=False,
            trial=trial,
            optimize_metric=args.optimize_metric,
        )
        return float(result["objective"])

    callbacks = []
    if args.max_total_trials is not None:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        callbacks.append(MaxTrialsCallback(args.max_total_trials, states=states))
    study.optimize(objective, n_trials=args.n_trials, callbacks=callbacks, catch=(ValueError, RuntimeError))
    return study
