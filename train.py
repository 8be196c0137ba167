"""Train the neural batch sampler, and with it the autoencoder and predictor inside ``MVTecPatch-v0``.

    python train.py --env MVTecPatch-v0                           # embedded synthetic category, REINFORCE
    python train.py --algo ppo --data-root DATA --category grid   # a real MVTec AD category, another algorithm
    python train.py --preset paper ...                            # the paper's schedule (100 AE pre-training epochs)
    python train.py -i logs/reinforce/MVTecPatch-v0_1             # continue an interrupted run from its last checkpoint
    python train.py -i RUN -n 20000 --device cuda                 # ... for longer, on another device
    python train.py --method unet --data-root DATA --category grid  # the paper's baselines: unet, vqvae2

A baseline (``--method unet|vqvae2``) trains on the same split (same seed, same files) without env or agent; its run
folder has the same layout, so ``evaluate.py --run`` treats it like any other run.

A seeded run repeats bit for bit on one machine with the same ``--threads`` (default 1); see README "Reliability".

A run writes ``<log-folder>/<algo>/<env>_<N>/``: ``config.yml`` (everything needed to rebuild it), ``split.json``,
``tensorboard/``, ``checkpoints/``, ``agent.zip``, ``detector.pt`` (the last), ``best_detector.pt`` (best validation
F1max), ``monitor.csv`` and the test-split evaluation (``metrics.json``, figures) of evaluate.py.

Recipe, as in rl-baselines3-zoo and CleanRL: parse the config, seed, build, run, save.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from agents.hyperparams_opt import deep_merge
from envs.mvtec import DatasetError
from models.runtime import DEFAULT_THREADS, check_device, reproducible

logger = logging.getLogger("train")

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "agents" / "hyperparams"  # package data of agents/
ENV_IDS = ("MVTecPatch-v0",)
PRESETS = ("default", "paper", "paper-long")
METHOD = "sampler"  # the paper's method: an RL sampler (--algo) training the AE and predictor inside the env
# env settings a baseline takes from env.yml's preset (and --env-kwargs): the data protocol, so its split is the method's
DATA_KEYS = ("data_root", "category", "image_size", "k_shot", "normal_pool", "val_fraction")
BASELINE_RUN_KEYS = ("n_updates", "eval_freq", "save_freq")
BASELINE_CHECKPOINT = "checkpoints/trainer.pt"  # a baseline's resumable state (weights, optimiser, generator, counters)
# keys of a hyperparameter preset that are not arguments of the algorithm's class
RUN_KEYS = ("n_timesteps", "env_kwargs", "eval_freq", "save_freq")


def parse_value(text: str) -> Any:
    """``3e-4`` -> 0.0003, ``[64, 64]`` -> list, ``true`` -> True, anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = yaml.safe_load(text)
        return text if value is None else value


def parse_pairs(pairs: list[str] | None, option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition(":")
        if not sep or not key:
            raise ValueError(f"{option} expects key:value pairs, got {pair!r}")
        out[key] = parse_value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    from agents import AGENTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # None defaults (filled in by resolve_config) tell -i which flags the user actually gave
    from models.baselines import BASELINES

    parser.add_argument(
        "--method",
        default=None,
        help=f"{METHOD} (default: the RL batch sampler, --algo) or a baseline: {', '.join(BASELINES)}",
    )
    parser.add_argument("--env", default=None, help=f"environment id (default and valid: {', '.join(ENV_IDS)})")
    parser.add_argument("--algo", default=None, help=f"RL algorithm (default reinforce; valid: {', '.join(AGENTS)})")
    parser.add_argument(
        "-n",
        "--n-timesteps",
        type=int,
        default=None,
        help="env steps (a baseline: optimiser updates) to train (default: preset)",
    )
    parser.add_argument("--seed", type=int, default=None, help="one seed for the split, the networks and the actions (0)")
    parser.add_argument("-f", "--log-folder", default="logs", help="runs go to <log-folder>/<algo>/<env>_<N>/")
    parser.add_argument("-tb", "--tensorboard-log", default=None, help="TensorBoard folder (default: <run>/tensorboard)")
    parser.add_argument("--preset", default=None, help=f"hyperparameter preset (default default; valid: {', '.join(PRESETS)})")
    parser.add_argument("--env-kwargs", nargs="*", metavar="K:V", help="env kwargs, e.g. observation:rgb_history")
    parser.add_argument("--hyperparams", nargs="*", metavar="K:V", help="algorithm kwargs, e.g. learning_rate:3e-4")
    parser.add_argument("--eval-freq", type=int, default=None, help="env steps between validation runs (0: none)")
    parser.add_argument("--save-freq", type=int, default=None, help="env steps between checkpoints (0: none)")
    parser.add_argument(
        "-i",
        "--trained-agent",
        default=None,
        help="a run folder to continue from its last checkpoint (with its config.yml; -n may grow it, --device and "
        "--threads may move it to another machine)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device for the agent and the detector: cpu (default), cuda, cuda:N, mps"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch CPU threads (default {DEFAULT_THREADS}); a seeded run repeats bit for bit with the same count",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: on in a terminal)",
    )
    parser.add_argument("--data-root", default=None, help="folder holding MVTec AD categories (default: embedded synthetic)")
    parser.add_argument("--category", default=None, help="category folder name under --data-root")
    parser.add_argument("--image-size", type=int, default=None, help="working image size (default 256)")
    parser.add_argument("--k-shot", type=int, default=None, help="labelled anomalies per defect type (default 5)")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the final test-split evaluation")
    parser.add_argument("--dry-run", action="store_true", help="load and validate the data, print the split as JSON, exit")
    parser.add_argument("-v", "--verbose", type=int, default=1, help="0: quiet, 1: info, 2: debug")
    add_optimize_arguments(parser)
    return parser


def add_optimize_arguments(parser: argparse.ArgumentParser) -> None:
    """rl-baselines3-zoo's hyperparameter-optimisation flags (README "Tuning")."""
    from agents.sweeps import PRUNERS, SAMPLERS

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


def _preset_table(path: Path, env_id: str, preset: str, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"no hyperparameter file '{path}' for {what}")
    table = yaml.safe_load(path.read_text()) or {}
    if env_id not in table:
        raise ValueError(f"'{path}' has no entry for env {env_id!r} (has: {', '.join(table)})")
    if preset not in table[env_id]:
        raise ValueError(f"unknown preset {preset!r} for {what}/{env_id} (valid: {', '.join(table[env_id])})")
    return copy.deepcopy(table[env_id][preset] or {})


def load_preset(algo: str, env_id: str, preset: str) -> dict[str, Any]:
    """A preset's hyperparameters: the algorithm's (``hyperparams/<algo>.yml``) with the env's settings
    (``hyperparams/env.yml``, shared by every algorithm so that ablations differ only in the algorithm) as
    ``env_kwargs``; an algorithm file's own ``env_kwargs`` override the shared ones key by key. A preset that only
    the algorithm's file names (a study's ``best_preset.yml`` pasted there) is self-contained: its ``env_kwargs``
    are all the env settings."""
    hyperparams = _preset_table(HYPERPARAMS_DIR / f"{algo}.yml", env_id, preset, f"algo {algo!r}")
    env_presets = (yaml.safe_load((HYPERPARAMS_DIR / "env.yml").read_text()) or {}).get(env_id) or {}
    env_kwargs = copy.deepcopy(env_presets.get(preset) or {})
    hyperparams["env_kwargs"] = deep_merge(env_kwargs, hyperparams.get("env_kwargs") or {})
    return hyperparams


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The data flags the user gave (--data-root, --category, --image-size, --k-shot), as env kwargs."""
    given = {"data_root": args.data_root, "category": args.category, "image_size": args.image_size, "k_shot": args.k_shot}
    return {key: value for key, value in given.items() if value is not None}


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """One dict with everything a run needs; saved as config.yml so evaluate.py and resumes need nothing else."""
    from agents import AGENTS
    from models.baselines import BASELINES

    args = copy.copy(args)
    method = getattr(args, "method", None) or METHOD
    if method != METHOD and method not in BASELINES:
        raise ValueError(f"unknown method {method!r} (valid: {METHOD}, {', '.join(BASELINES)})")
    if method != METHOD and args.algo is not None:
        raise ValueError(f"--algo chooses the RL sampler's algorithm; --method {method} trains no agent")
    args.env, args.algo, args.preset = args.env or ENV_IDS[0], args.algo or "reinforce", args.preset or PRESETS[0]
    args.seed = 0 if args.seed is None else args.seed
    if args.env not in ENV_IDS:
        raise ValueError(f"unknown env {args.env!r} (valid: {', '.join(ENV_IDS)})")
    if method != METHOD:
        return resolve_baseline_config(args, method)
    if args.algo not in AGENTS:
        raise ValueError(f"unknown algo {args.algo!r} (valid: {', '.join(AGENTS)})")
    hyperparams = load_preset(args.algo, args.env, args.preset)
    hyperparams.update(parse_pairs(args.hyperparams, "--hyperparams"))
    env_kwargs = {**(hyperparams.pop("env_kwargs", None) or {}), **data_options(args)}
    env_kwargs = deep_merge(env_kwargs, parse_pairs(args.env_kwargs, "--env-kwargs"))
    device = check_device(args.device or "cpu")
    env_kwargs["seed"] = args.seed
    env_kwargs["device"] = device
    if env_kwargs.get("data_root") is not None:
        env_kwargs["data_root"] = str(Path(env_kwargs["data_root"]).resolve())
    run = {key: hyperparams.pop(key) for key in RUN_KEYS if key in hyperparams}
    for key, value in (("n_timesteps", args.n_timesteps), ("eval_freq", args.eval_freq), ("save_freq", args.save_freq)):
        if value is not None:
            run[key] = value
    if int(run.get("n_timesteps", 0)) < 1:
        raise ValueError("n_timesteps must be >= 1 (set -n/--n-timesteps or n_timesteps in the preset)")
    return {
        "method": METHOD,
        "env": args.env,
        "algo": args.algo,
        "preset": args.preset,
        "seed": args.seed,
        "device": device,
        "threads": DEFAULT_THREADS if args.threads is None else args.threads,
        "n_timesteps": int(run["n_timesteps"]),
        "eval_freq": int(run.get("eval_freq", 0)),
        "save_freq": int(run.get("save_freq", 0)),
        "env_kwargs": env_kwargs,
        "hyperparams": hyperparams,
    }


def resolve_baseline_config(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The config of a baseline run: its preset (``hyperparams/<method>.yml``) and --hyperparams as the trainer's
    settings, the data protocol of env.yml's preset of the same name (and --data-root, --k-shot, ...) as env_kwargs."""
    hyperparams = _preset_table(HYPERPARAMS_DIR / f"{method}.yml", args.env, args.preset, f"method {method!r}")
    hyperparams = deep_merge(hyperparams, parse_pairs(args.hyperparams, "--hyperparams"))
    env_preset = _preset_table(HYPERPARAMS_DIR / "env.yml", args.env, args.preset, "the env") if args.preset in PRESETS else {}
    data = {**{key: value for key, value in env_preset.items() if key in DATA_KEYS}, **data_options(args)}
    extra = parse_pairs(args.env_kwargs, "--env-kwargs")
    unknown = sorted(set(extra) - set(DATA_KEYS))
    if unknown:
        raise ValueError(
            f"--env-kwargs {', '.join(unknown)} do not apply to --method {method} (valid: {', '.join(DATA_KEYS)})"
        )
    data.update(extra)
    device = check_device(args.device or "cpu")
    data.update(seed=args.seed, device=device)
    if data.get("data_root") is not None:
        data["data_root"] = str(Path(data["data_root"]).resolve())
    run = {key: hyperparams.pop(key) for key in BASELINE_RUN_KEYS if key in hyperparams}
    for key, value in (("n_updates", args.n_timesteps), ("eval_freq", args.eval_freq), ("save_freq", args.save_freq)):
        if value is not None:
            run[key] = value
    if int(run.get("n_updates", 0)) < 1:
        raise ValueError("n_updates must be >= 1 (set -n or n_updates in the preset)")
    from models.baselines import BASELINES

    BASELINES[method].config_from_dict({**hyperparams, "device": device})  # unknown or invalid settings fail here
    return {
        "method": method,
        "env": args.env,
        "preset": args.preset,
        "seed": args.seed,
        "device": device,
        "threads": DEFAULT_THREADS if args.threads is None else args.threads,
        "n_updates": int(run["n_updates"]),
        "eval_freq": int(run.get("eval_freq", 0)),
        "save_freq": int(run.get("save_freq", 0)),
        "env_kwargs": data,
        "hyperparams": hyperparams,
    }


def new_run_dir(log_folder: str, algo: str, env_id: str) -> Path:
    """``<log_folder>/<algo>/<env_id>_<N>`` with N one more than the largest existing (rl-zoo's numbering)."""
    parent = Path(log_folder) / algo
    parent.mkdir(parents=True, exist_ok=True)
    ids = [int(p.name.rsplit("_", 1)[1]) for p in parent.glob(f"{env_id}_*") if p.name.rsplit("_", 1)[1].isdigit()]
    run_dir = parent / f"{env_id}_{max(ids, default=0) + 1}"
    run_dir.mkdir()
    return run_dir


def dry_run(config: dict[str, Any]) -> dict:
    from envs.mvtec_patch import MVTecPatchConfig, detector_config, load_env_data

    env_config = MVTecPatchConfig.from_kwargs(**config["env_kwargs"])
    detector_config(env_config)  # a bad detector value stops here, not after the data and the warm-up
    category, split = load_env_data(env_config)
    return split.summary(category)


class Interrupted(Exception):
    """Training stopped by Ctrl-C (SIGINT) between two steps; a checkpoint was written."""


# flags that fix what a run computes: -i refuses them, since config.yml already holds their values
RESUME_REFUSED = (
    ("--method", "method"),
    ("--env", "env"),
    ("--algo", "algo"),
    ("--seed", "seed"),
    ("--preset", "preset"),
    ("--env-kwargs", "env_kwargs"),
    ("--hyperparams", "hyperparams"),
    ("--eval-freq", "eval_freq"),
    ("--save-freq", "save_freq"),
    ("--data-root", "data_root"),
    ("--category", "category"),
    ("--image-size", "image_size"),
    ("--k-shot", "k_shot"),
)


def resume_config(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The saved config of ``run_dir`` with what -i may change: a larger -n, --device, --threads.

    Raises:
        ValueError: not a run folder, no checkpoint to continue from, a refused flag, or a smaller -n.
    """
    from agents.callbacks import latest_checkpoint

    if not (run_dir / "config.yml").is_file():
        raise ValueError(f"'{run_dir}' is not a run folder (expected config.yml from a previous train.py run)")
    refused = [flag for flag, name in RESUME_REFUSED if getattr(args, name) is not None]
    if refused:
        raise ValueError(
            f"-i continues '{run_dir}' with its saved config.yml: {', '.join(refused)} cannot change "
            "(valid with -i: -n, --device, --threads; start a new run for anything else)"
        )
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    if config.get("method", METHOD) == METHOD:
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
        if checkpoint is None or not (checkpoint / "agent.zip").is_file() or not (checkpoint / "env_state.pt").is_file():
            raise ValueError(
                f"'{run_dir}' has no complete checkpoint to continue from (expected checkpoints/latest.json and the folder "
                "it names): start a new run without -i"
            )
    elif not (run_dir / BASELINE_CHECKPOINT).is_file():
        raise ValueError(f"'{run_dir}' has no checkpoint to continue from (expected {BASELINE_CHECKPOINT}): start a new run")
    length = "n_timesteps" if config.get("method", METHOD) == METHOD else "n_updates"
    if args.n_timesteps is not None:
        if args.n_timesteps < config[length]:
            raise ValueError(f"-n {args.n_timesteps} is smaller than the run's {length} {config[length]}")
        config[length] = args.n_timesteps
    if args.device is not None:
        config["device"] = config["env_kwargs"]["device"] = args.device
    config["device"] = config["env_kwargs"]["device"] = check_device(config["device"])
    if args.threads is not None:
        config["threads"] = args.threads
    config.setdefault("threads", DEFAULT_THREADS)
    return config


def train(
    config: dict[str, Any],
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    tensorboard_log: str | None,
    evaluate_at_end: bool = True,
    trial: Any = None,
    optimize_metric: str = "pixel_f1max",
) -> dict[str, Any]:
    """Train with a fixed thread count and deterministic algorithms (:func:`models.runtime.reproducible`).

    Returns the test metrics (or {} without the final evaluation).

    Raises:
        Interrupted: Ctrl-C stopped training between two steps; a checkpoint was written.
    """
    with reproducible(int(config.get("threads", DEFAULT_THREADS)), config["device"]):
        if config.get("method", METHOD) != METHOD:
            return train_baseline(
                config,
                run_dir,
                resume=resume,
                progress=progress,
                tensorboard_log=tensorboard_log,
                evaluate_at_end=evaluate_at_end,
            )
        return _train(
            config,
            run_dir,
            resume=resume,
            progress=progress,
            tensorboard_log=tensorboard_log,
            evaluate_at_end=evaluate_at_end,
            trial=trial,
            optimize_metric=optimize_metric,
        )


def _train(
    config: dict[str, Any],
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    tensorboard_log: str | None,
    evaluate_at_end: bool = True,
    trial: Any = None,
    optimize_metric: str = "pixel_f1max",
) -> dict[str, Any]:
    """Build env, agent and callbacks, learn, save; returns the test metrics (or {} without the final evaluation).

    With an Optuna ``trial``: each validation is reported to it, a pruned trial raises ``optuna.TrialPruned``, and the
    result is ``{"objective": best validation optimize_metric}`` (the test split is never evaluated).
    """
    import gymnasium as gym
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.utils import set_random_seed

    import envs  # noqa: F401 - registers MVTecPatch-v0
    import evaluate
    from agents import load_agent, make_agent
    from agents.callbacks import (
        CheckpointCallback,
        InterruptCallback,
        ProgressLogCallback,
        RewardTermsCallback,
        ValidationCallback,
        latest_checkpoint,
        write_checkpoint,
    )
    from envs.mvtec_patch import MVTecPatchEnv
    from envs.split import split_json

    set_random_seed(config["seed"])
    env = gym.make(config["env"], **config["env_kwargs"])
    base: MVTecPatchEnv = env.unwrapped  # type: ignore[assignment]
    (run_dir / "split.json").write_text(split_json(base.split, base.category))
    checkpoints = run_dir / "checkpoints"
    checkpoint = latest_checkpoint(checkpoints) if resume else None
    if resume and checkpoint is None:  # main() checks this first; a library caller gets the same refusal
        raise ValueError(f"'{run_dir}' has no checkpoint to continue from: start a new run without -i")
    monitored = Monitor(env, str(run_dir / "monitor.csv"), override_existing=not resume)
    if checkpoint is not None:
        base.load_state(checkpoint / "env_state.pt")
        agent = load_agent(config["algo"], checkpoint / "agent.zip", env=monitored, device=config["device"])
        if tensorboard_log is not None:
            agent.tensorboard_log = tensorboard_log
        logger.info("resumed from %s at %d steps", checkpoint, agent.num_timesteps)
    else:
        logger.info("warm-up: AE pre-training, fused maps, predictor warm-up")
        start = time.perf_counter()
        base.warm_up(progress=progress)
        logger.info("warm-up took %.1f s", time.perf_counter() - start)
        agent = make_agent(
            config["algo"],
            monitored,
            seed=config["seed"],
            tensorboard_log=tensorboard_log,
            device=config["device"],
            verbose=0,
            **config["hyperparams"],
        )

    val_labels = [base.category.samples[i].is_anomalous for i in base.split.val]
    val_images, val_masks = base.category.images[base.split.val], base.category.masks[base.split.val]
    interrupt = InterruptCallback()
    callbacks = [interrupt, RewardTermsCallback(), CheckpointCallback(base, checkpoints, config["save_freq"])]
    validation = ValidationCallback(
        base,
        lambda detector: evaluate.validate(detector, val_images, val_masks, val_labels),
        val_images,
        val_masks,
        config["eval_freq"],
        best_path=run_dir / "best_detector.pt",
    )
    if config["eval_freq"] > 0 and val_masks.any():
        callbacks.append(validation)
    if not progress:  # output to a file: a line at a steady cadence instead of a progress bar
        callbacks.append(ProgressLogCallback(config["n_timesteps"], validation=validation))
    trial_callback = None
    if trial is not None:
        from agents.sweeps import TrialEvalCallback

        if validation not in callbacks:
            raise ValueError("a trial needs validation: eval_freq > 0 and a validation split with defects")
        trial_callback = TrialEvalCallback(trial, validation, optimize_metric)
        callbacks.append(trial_callback)
    remaining = config["n_timesteps"] - (agent.num_timesteps if checkpoint is not None else 0)
    with interrupt.catch_sigint():
        agent.learn(
            total_timesteps=max(remaining, 0),
            callback=CallbackList(callbacks),
            progress_bar=progress,
            tb_log_name=config["algo"],
            reset_num_timesteps=checkpoint is None,
        )
    write_checkpoint(agent, base, checkpoints)
    if interrupt.interrupted:
        env.close()
        raise Interrupted(f"interrupted at {agent.num_timesteps} steps: checkpoint written; continue with -i {run_dir}")
    agent.save(run_dir / "agent.zip")
    base.detector.save(run_dir / "detector.pt")
    if trial_callback is not None and trial_callback.pruned:
        import optuna

        env.close()
        raise optuna.TrialPruned(f"pruned after {agent.num_timesteps} steps")
    if config["eval_freq"] > 0 and val_masks.any():
        validation.run_evaluation()  # the final detector competes for the best checkpoint too
    env.close()
    if trial_callback is not None:
        return {"objective": max(float(h[optimize_metric]) for h in validation.history)}
    if not evaluate_at_end:
        return {}
    metrics = evaluate.evaluate_run(run_dir, method="detector", device=config["device"])
    evaluate.evaluate_run(run_dir, method="ae", out=run_dir / "ae_baseline", device=config["device"])
    return metrics


def train_baseline(
    config: dict[str, Any],
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    tensorboard_log: str | None,
    evaluate_at_end: bool = True,
) -> dict[str, Any]:
    """A baseline's loop: updates with TensorBoard losses, validation (best F1max -> ``best_detector.pt``), checkpoints
    every ``save_freq`` updates and on Ctrl-C, then the same test evaluation as the method's runs.

    Raises:
        Interrupted: Ctrl-C stopped training between two updates; a checkpoint was written.
    """
    import numpy as np
    from stable_baselines3.common.utils import set_random_seed
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    import evaluate
    from agents.callbacks import InterruptCallback, atomic_write_text
    from envs.mvtec_patch import load_data
    from envs.split import split_json
    from models.baselines import build_baseline

    set_random_seed(config["seed"])
    category, split = load_data(**{k: v for k, v in config["env_kwargs"].items() if k != "device"})
    (run_dir / "split.json").write_text(split_json(split, category))
    settings = {**config["hyperparams"], "device": config["device"]}
    trainer = build_baseline(config["method"], settings, config["seed"], category.images, category.masks, split)
    checkpoint, best_path = run_dir / BASELINE_CHECKPOINT, run_dir / "best_detector.pt"
    best_f1max, history = -np.inf, []
    if resume:
        trainer.load_weights(checkpoint)
        if best_path.with_suffix(".json").is_file():
            best_f1max = float(json.loads(best_path.with_suffix(".json").read_text())["pixel_f1max"])
        logger.info("resumed from %s at %d updates", checkpoint, trainer.updates)
    logger.info("%s trains on %d images", config["method"], len(trainer.training_indices(split)))

    val_images, val_masks = category.images[split.val], category.masks[split.val]
    val_labels = [category.samples[i].is_anomalous for i in split.val]
    writer = SummaryWriter(str(Path(tensorboard_log or run_dir / "tensorboard") / config["method"]))

    def validate() -> None:
        nonlocal best_f1max
        metrics = evaluate.evaluate_images(trainer, val_images, val_masks, "detector", val_labels)[0]
        for key, value in metrics.items():
            writer.add_scalar(f"eval/{key}", value, trainer.updates)
        history.append({"updates": trainer.updates, **metrics})
        if metrics["pixel_f1max"] > best_f1max:
            best_f1max = metrics["pixel_f1max"]
            trainer.save(best_path)
            atomic_write_text(best_path.with_suffix(".json"), json.dumps(history[-1], indent=2))
        writer.add_scalar("eval/best_pixel_f1max", best_f1max, trainer.updates)

    total, interrupt = config["n_updates"], InterruptCallback()
    validating = config["eval_freq"] > 0 and bool(val_masks.any())
    bar = tqdm(total=total, initial=trainer.updates, desc=config["method"], disable=not progress)
    start, last_line = time.perf_counter(), time.perf_counter()
    start_updates = trainer.updates
    with interrupt.catch_sigint():
        while trainer.updates < total and not interrupt.interrupted:
            terms = trainer.update()
            for key, value in terms.items():
                writer.add_scalar(f"train/{key}", value, trainer.updates)
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}")
            if validating and trainer.updates % config["eval_freq"] == 0:
                validate()
            if config["save_freq"] > 0 and trainer.updates % config["save_freq"] == 0:
                trainer.save(checkpoint)
            now = time.perf_counter()
            if not progress and (now - last_line >= 60 or trainer.updates % max(total // 20, 1) == 0):
                last_line = now
                rate = (trainer.updates - start_updates) / max(now - start, 1e-9)
                line = f"update {trainer.updates}/{total}, {rate:.2f} updates/s, loss {terms['loss']:.4f}"
                if history:
                    line += f"; validation at {history[-1]['updates']}: F1max {history[-1]['pixel_f1max']:.4f}"
                logger.info(line)
    bar.close()
    trainer.save(checkpoint)
    if interrupt.interrupted:
        writer.close()
        raise Interrupted(f"interrupted at {trainer.updates} updates: checkpoint written; continue with -i {run_dir}")
    trainer.save(run_dir / "detector.pt")
    if validating and (not history or history[-1]["updates"] != trainer.updates):
        validate()  # the final weights compete for the best checkpoint too
    writer.close()
    if not evaluate_at_end:
        return {}
    return evaluate.evaluate_run(run_dir, method="detector", device=config["device"])


def optimize_hyperparameters(config: dict[str, Any], args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """An Optuna study over the algorithm's and the env's search spaces (``agents/hyperparams_opt.py``), as
    rl-baselines3-zoo runs one: each trial trains the preset's budget with sampled values, reports validation
    ``--optimize-metric`` at each of ``--n-evaluations`` points (the pruner may stop it), and returns its best.
    ``--n-jobs N`` starts N worker processes on one storage; more machines join with the same ``--storage`` and
    ``--study-name``. Writes the report of :func:`agents.sweeps.write_report` and returns its summary.
    """
    import os
    import subprocess

    import optuna

    from agents.hyperparams_opt import grid, space_for, suggest, to_config
    from agents.sweeps import (
        MaxTrialsCallback,
        default_storage,
        make_pruner,
        make_sampler,
        make_storage,
        serialize_asks,
        write_report,
    )

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
    worker = int(os.environ.get("RLBS_WORKER", "0"))  # which of --n-jobs workers: offsets the sampler's seed

    if args.n_jobs > 1:  # N copies of this command, one worker each, threads split between them
        threads = max(1, (os.cpu_count() or 1) // args.n_jobs) if args.threads is None else args.threads
        per_worker = -(-args.n_trials // args.n_jobs)
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--n-jobs", "1", "--n-trials", str(per_worker)]
        command += ["--storage", storage, "--study-name", study_name, "--optimization-log-path", str(root)]
        command += ["--threads", str(threads), "--no-report"]
        logger.info("%d workers on %s, %d threads each", args.n_jobs, storage, threads)
        # the study (and a new database's tables) exists before the workers open it: no creation race between them
        optuna.create_study(storage=make_storage(storage), study_name=study_name, direction="maximize", load_if_exists=True)
        workers = [
            subprocess.Popen(command, env={**os.environ, "RLBS_WORKER": str(i), "OMP_NUM_THREADS": str(threads)})
            for i in range(args.n_jobs)
        ]
        codes = [w.wait() for w in workers]
        if any(codes):
            logger.warning("worker exit codes %s", codes)
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    else:
        search_grid = grid(space) if args.sampler == "grid" else None
        study = optuna.create_study(
            storage=make_storage(storage),
            study_name=study_name,
            sampler=make_sampler(args.sampler, config["seed"] + 1000 * worker, args.n_startup_trials, search_grid),
            pruner=make_pruner(args.pruner, args.n_startup_trials, n_evaluations),
            direction="maximize",
            load_if_exists=True,
        )
        study.set_user_attr("metric", args.optimize_metric)
        serialize_asks(study, storage)  # a retried (queued) trial is taken by one worker only

        def objective(trial: optuna.Trial) -> float:
            if search_grid is not None:  # the grid's values, as categoricals
                values = {name: trial.suggest_categorical(name, choices) for name, choices in search_grid.items()}
            else:
                values = suggest(trial, space)
            hyperparams, env_kwargs = to_config(values)
            trial_config = copy.deepcopy(config)
            trial_config["hyperparams"].update(hyperparams)
            trial_config["env_kwargs"] = deep_merge(trial_config["env_kwargs"], env_kwargs)
            trial_config.update(eval_freq=max(config["n_timesteps"] // n_evaluations, 1), save_freq=0)
            run_dir = root / f"trial_{trial.number}"
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yml").write_text(yaml.safe_dump(trial_config, sort_keys=False))
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
    if args.no_report:
        return {}
    run_specific = {"data_root", "category", "seed", "device"}  # given on the command line, not part of a preset
    base = {
        **{key: config[key] for key in ("n_timesteps", "eval_freq", "save_freq")},
        **config["hyperparams"],
        "env_kwargs": {k: v for k, v in config["env_kwargs"].items() if k not in run_specific},
    }
    summary = write_report(study, root, config["algo"], config["env"], config["preset"], args.optimize_metric, base)
    return {"study": study_name, "storage": storage, "report": str(root), **summary}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        resume = args.trained_agent is not None
        if resume:
            run_dir = Path(args.trained_agent)
            config = resume_config(args, run_dir)
        else:
            config = resolve_config(args)
        if args.dry_run:
            print(json.dumps(dry_run(config), indent=2))
            return 0
        if args.optimize_hyperparameters:
            if resume:
                raise ValueError("-optimize runs new trials: it cannot continue a run (-i); rerun with the same --study-name")
            summary = optimize_hyperparameters(config, args, argv)
            if summary:
                print(json.dumps(summary, indent=2, default=str))
            return 0
        if not resume:
            run_dir = new_run_dir(args.log_folder, config.get("algo") or config["method"], config["env"])
        # a resume records its new -n, device and threads, so that the next -i continues from them
        (run_dir / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        logger.info("run folder %s\n%s", run_dir, yaml.safe_dump(config, sort_keys=False))
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        tensorboard_log = args.tensorboard_log or str(run_dir / "tensorboard")
        metrics = train(
            config,
            run_dir,
            resume=resume,
            progress=progress,
            tensorboard_log=tensorboard_log,
            evaluate_at_end=not args.no_evaluate,
        )
        if metrics:
            print(json.dumps({"run": str(run_dir), **{k: round(v, 4) for k, v in metrics.items()}}, indent=2))
        return 0
    except Interrupted as interrupted:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130  # the shell's code for a SIGINT exit
    except (DatasetError, ValueError) as error:
        logger.debug("error details", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
