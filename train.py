"""Train the neural batch sampler, and with it the autoencoder and predictor inside ``MVTecPatch-v0``.

    python train.py --env MVTecPatch-v0                           # embedded synthetic category, REINFORCE
    python train.py --algo ppo --data-root DATA --category grid   # a real MVTec AD category, another algorithm
    python train.py --preset paper ...                            # the paper's schedule (100 AE pre-training epochs)
    python train.py -i logs/reinforce/MVTecPatch-v0_1             # continue an interrupted run from its last checkpoint
    python train.py -i RUN -n 20000 --device cuda                 # ... for longer, on another device
    python train.py --method unet --data-root DATA --category grid  # the paper's baselines: unet, vqvae2

A baseline (``--method unet|vqvae2``) trains on the same split (same seed, same files) without env or agent; its run
folder has the same layout, so ``evaluate.py --run`` treats it like any other run.

A seeded run repeats bit for bit on one machine with the same ``--threads`` (default 1); see docs/reliability.md.

A run writes ``<log-folder>/<algo>/<env>_<N>/``: ``config.yml`` (everything needed to rebuild it), ``split.json``,
``tensorboard/``, ``checkpoints/``, ``agent.zip``, ``detector.pt`` (the last), ``best_detector.pt`` (best validation
F1max), ``monitor.csv`` and the test-split evaluation (``metrics.json``, figures) of evaluate.py.

Recipe, as in rl-baselines3-zoo and CleanRL: parse the config, seed, build, run, save.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import evaluate
from agents import AGENTS
from agents.baseline_trainer import BUDGET_SNAPSHOT, train_baseline
from agents.optimize import add_optimize_arguments, optimize_hyperparameters
from agents.run_config import ENV_IDS, METHOD, PRESETS, resolve_config, resume_config
from agents.runs import TRAINER_CHECKPOINT, Interrupted, hold_run, interrupted_message, new_run_dir, restartable
from envs.mvtec import DatasetError
from envs.warmup_cache import default_cache_dir
from models.baselines import BASELINES
from models.runtime import DEFAULT_THREADS, atomic_write_text, reproducible

__all__ = ["build_parser", "main", "train"]

logger = logging.getLogger("train")


def build_parser() -> argparse.ArgumentParser:
    """The command line: rl-baselines3-zoo's flags, the data flags and the baselines' ``--method``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # None defaults (filled in by resolve_config) tell -i which flags the user actually gave
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
    parser.add_argument(
        "--warmup-cache",
        default=str(default_cache_dir()).replace(str(Path.home()), "~", 1),
        metavar="DIR",
        help="read the warm-up from here when this data, seed, detector config and machine have run it, else write it "
        "(bit for bit the computed one; default: $RLBS_CACHE/warmup, else %(default)s)",
    )
    parser.add_argument("--no-warmup-cache", action="store_true", help="compute the warm-up and keep nothing")
    parser.add_argument("--dry-run", action="store_true", help="load and validate the data, print the split as JSON, exit")
    parser.add_argument("-v", "--verbose", type=int, default=1, help="0: quiet, 1: info, 2: debug")
    add_optimize_arguments(parser)
    return parser


def dry_run(config: dict[str, Any]) -> dict:
    """Load and validate the data of ``config``; the split's summary."""
    from envs.config import MVTecPatchConfig, detector_config
    from envs.data import load_env_data

    env_config = MVTecPatchConfig.from_kwargs(**config["env_kwargs"])
    detector_config(env_config)  # a bad detector value stops here, not after the data and the warm-up
    category, split = load_env_data(env_config)
    return split.summary(category)


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
    warmup_cache: Path | None = None,
) -> dict[str, Any]:
    """Train with a fixed thread count and deterministic algorithms (:func:`models.runtime.reproducible`), then
    evaluate on the test split.

    Returns:
        the test metrics ({} without the final evaluation; ``{"objective": ...}`` for an Optuna ``trial``).

    Holds the run folder's lock (:func:`agents.runs.hold_run`) throughout.

    Raises:
        Interrupted: Ctrl-C stopped training at a checkpoint; the run continues from it with ``-i``.
        RunBusy: another process is training into ``run_dir``.
    """
    sampler = config.get("method", METHOD) == METHOD
    with hold_run(run_dir), reproducible(int(config.get("threads", DEFAULT_THREADS)), config["device"]):
        if sampler:
            result = train_sampler(config, run_dir, resume, progress, tensorboard_log, trial, optimize_metric, warmup_cache)
            if trial is not None:
                return result
        else:
            train_baseline(
                config, run_dir, resume=resume, progress=progress, tensorboard_log=tensorboard_log, validate=evaluate.validate
            )
        if not evaluate_at_end:
            return {}
        metrics = evaluate.evaluate_run(run_dir, method="detector", device=config["device"])
        if sampler:  # the same run's AE-only residual, the reference the method must beat
            evaluate.evaluate_run(run_dir, method="ae", out=run_dir / "ae_baseline", device=config["device"])
        elif (run_dir / BUDGET_SNAPSHOT / "cost.json").is_file():  # the run as it stood at its min_updates
            evaluate_budget_snapshot(run_dir / BUDGET_SNAPSHOT, config["device"])
        return metrics


def evaluate_budget_snapshot(snapshot: Path, device: str) -> None:
    """The test-split evaluation of a baseline's ``budget/`` snapshot; its CPU seconds join the snapshot's cost, so
    ``cost.json`` says what a run that stopped there would have cost (training, validations and this evaluation)."""
    cost = json.loads((snapshot / "cost.json").read_text())
    start = time.process_time()
    evaluate.evaluate_run(snapshot, method="detector", device=device)
    cost["test_cpu_seconds"] = round(time.process_time() - start, 1)
    atomic_write_text(snapshot / "cost.json", json.dumps(cost))


def train_sampler(
    config: dict[str, Any],
    run_dir: Path,
    resume: bool,
    progress: bool,
    tensorboard_log: str | None,
    trial: Any = None,
    optimize_metric: str = "pixel_f1max",
    warmup_cache: Path | None = None,
) -> dict[str, Any]:
    """Seed; build env, agent and callbacks (or load them from the last checkpoint); learn; save the agent and the
    detector. ``warmup_cache``: a folder for :mod:`envs.warmup_cache` (None: compute the warm-up).

    A continued run restores everything its checkpoint holds (:mod:`agents.resume`), so it ends with the weights of
    the uninterrupted run, bit for bit. With an Optuna ``trial``: each validation is reported to it, a pruned trial
    raises ``optuna.TrialPruned``, and the result is ``{"objective": best validation optimize_metric}``; without one, {}.
    """
    import gymnasium as gym
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.utils import set_random_seed

    import envs  # noqa: F401 - registers MVTecPatch-v0
    from agents import load_agent, make_agent, save_agent
    from agents import resume as continuation
    from agents.callbacks import (
        CheckpointCallback,
        InterruptCallback,
        ProgressLogCallback,
        RewardTermsCallback,
        StopAtRolloutStart,
        ValidationCallback,
        latest_checkpoint,
        write_checkpoint,
    )
    from agents.entropy import ENTROPY_FILE, PolicyEntropyCallback
    from agents.runs import validation_split, write_split
    from envs.mvtec_patch import MVTecPatchEnv

    set_random_seed(config["seed"])
    env = gym.make(config["env"], **config["env_kwargs"])
    base: MVTecPatchEnv = env.unwrapped  # type: ignore[assignment]
    base.warmup_cache = warmup_cache
    write_split(run_dir, base.category, base.split)
    checkpoints = run_dir / "checkpoints"
    checkpoint = latest_checkpoint(checkpoints) if resume else None
    if resume and checkpoint is None:  # main() checks this first; a library caller gets the same refusal
        if not restartable(run_dir):
            raise ValueError(f"'{run_dir}' has no checkpoint to continue from: start a new run without -i")
        logger.info("%s has no checkpoint (stopped in the warm-up): starting it again from the beginning", run_dir)
    run_state = continuation.read(checkpoint) if checkpoint is not None else None
    if run_state is not None:
        continuation.trim_monitor(run_dir / "monitor.csv", run_state)
    monitored = Monitor(env, str(run_dir / "monitor.csv"), override_existing=checkpoint is None)
    best_files = (run_dir / "best_detector.pt", run_dir / "best_detector.json")
    if checkpoint is not None:
        base.load_state(checkpoint / "env_state.pt")
        zip_path = checkpoint / "agent.zip"  # rebuilt from the config: nothing in the file is unpickled
        agent = load_agent(config["algo"], zip_path, env=monitored, device=config["device"], **config["hyperparams"])
        continuation.restore_files(checkpoint, best_files)  # the best detector as of the checkpoint
        if getattr(agent, "replay_buffer", None) is not None:
            logger.warning("the replay buffer is not checkpointed: the continued run refills it, unlike an uninterrupted one")
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

    val_images, val_masks, val_labels = validation_split(base.category, base.split)
    interrupt = InterruptCallback()

    def capture() -> dict[str, Any]:
        return continuation.capture(agent, monitored, {"validation": validation, "checkpoint": checkpointing})

    checkpointing = CheckpointCallback(base, checkpoints, config["save_freq"], run_state=capture, keep=best_files)
    callbacks = [interrupt, RewardTermsCallback(), checkpointing, PolicyEntropyCallback(run_dir / ENTROPY_FILE)]
    validation = ValidationCallback(
        base,
        lambda detector: evaluate.validate(detector, val_images, val_masks, val_labels),
        val_images,
        val_masks,
        config["eval_freq"],
        best_path=run_dir / "best_detector.pt",
    )
    validating = config["eval_freq"] > 0 and bool(val_masks.any())
    if validating:
        callbacks.append(validation)
    if not progress:  # output to a file: a line at a steady cadence instead of a progress bar
        callbacks.append(ProgressLogCallback(config["n_timesteps"], validation=validation))
    trial_callback = None
    if trial is not None:
        from agents.sweeps import TrialEvalCallback

        if not validating:
            raise ValueError("a trial needs validation: eval_freq > 0 and a validation split with defects")
        trial_callback = TrialEvalCallback(trial, validation, optimize_metric)
        callbacks.append(trial_callback)
    remaining = config["n_timesteps"] - (agent.num_timesteps if checkpoint is not None else 0)
    if run_state is not None:  # last: loading the agent reseeded the global generators
        continuation.restore(run_state, agent, monitored, {"validation": validation, "checkpoint": checkpointing})
    try:
        with interrupt.catch_sigint():
            try:
                agent.learn(
                    total_timesteps=max(remaining, 0),
                    callback=CallbackList(callbacks),
                    progress_bar=progress,
                    tb_log_name=config["algo"],
                    reset_num_timesteps=checkpoint is None,
                )
            except StopAtRolloutStart:  # Ctrl-C, at a point the run continues from exactly
                pass
        write_checkpoint(agent, base, checkpoints, capture(), best_files)
        if interrupt.interrupted:
            raise Interrupted(f"{agent.num_timesteps} steps", run_dir)
        save_agent(agent, run_dir / "agent.zip")
        base.detector.save(run_dir / "detector.pt")
        if trial_callback is not None and trial_callback.pruned:
            import optuna

            raise optuna.TrialPruned(f"pruned after {agent.num_timesteps} steps")
        if validating:
            validation.run_evaluation()  # the final detector competes for the best checkpoint too
    finally:
        env.close()
    if trial_callback is not None:
        return {"objective": max(float(h[optimize_metric]) for h in validation.history)}
    return {}


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` has a checkpoint to continue from (the sampler's or a baseline's)."""
    return (run_dir / "checkpoints" / "latest.json").is_file() or (run_dir / TRAINER_CHECKPOINT).is_file()


def main(argv: list[str] | None = None) -> int:
    """Parse the config, then a dry run, a study or one training run. Returns the exit code (2: bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run_dir: Path | None = None
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
        warmup_cache = None if args.no_warmup_cache else Path(args.warmup_cache).expanduser()
        if args.optimize_hyperparameters:
            if resume:
                raise ValueError("-optimize runs new trials: it cannot continue a run (-i); rerun with the same --study-name")
            trainer = functools.partial(train, warmup_cache=warmup_cache)
            summary = optimize_hyperparameters(config, args, argv, trainer, Path(__file__).resolve())
            if summary:
                print(json.dumps(summary, indent=2, default=str))
            return 0
        if not resume:
            run_dir = new_run_dir(args.log_folder, config.get("algo") or config["method"], config["env"])
        assert run_dir is not None
        with hold_run(run_dir):  # one writer per run folder: a second -i on a running run stops here
            # a resume records its new -n, device and threads, so that the next -i continues from them
            atomic_write_text(run_dir / "config.yml", yaml.safe_dump(config, sort_keys=False))
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
                warmup_cache=warmup_cache,
            )
        if metrics:
            print(json.dumps({"run": str(run_dir), **{k: round(v, 4) for k, v in metrics.items()}}, indent=2))
        return 0
    except Interrupted as interrupted:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130  # the shell's code for a SIGINT exit
    except KeyboardInterrupt:  # Ctrl-C in the warm-up, or a second one: stopped at once
        checkpointed = run_dir is not None and has_checkpoint(run_dir)
        print(f"error: {interrupted_message(run_dir, checkpointed)}", file=sys.stderr)
        return 130
    except (DatasetError, ValueError) as error:
        logger.debug("error details", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
