"""The training loop of the paper's baselines (``--method unet|vqvae2``, :mod:`models.baselines`): no env, no agent.

A baseline trains on the method's split (same seed, same files) and writes the same run folder
(:mod:`agents.runs`): TensorBoard losses, validation every ``eval_freq`` updates (best pixel F1max ->
``best_detector.pt``), a resumable checkpoint every ``save_freq`` updates and on Ctrl-C, ``detector.pt`` at the end, so
``evaluate.py --run`` treats it like any other run.

A run with an early stop (``patience``) also keeps ``budget/``: the run as it stood at ``min_updates``, a run folder of
its own. Its best checkpoint is the one a run of ``min_updates`` updates without the early stop ends with (the same
seed, updates and validations up to there), so one plateau run gives both the budget and the plateau rows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agents.runs import (
    TRAINER_CHECKPOINT,
    BestCheckpoint,
    Interrupted,
    ProgressLine,
    restartable,
    validation_split,
    write_split,
)

logger = logging.getLogger(__name__)

__all__ = ["BUDGET_SNAPSHOT", "Plateau", "save_budget_snapshot", "train_baseline"]

BUDGET_SNAPSHOT = "budget"  # <run>/budget/: the run at its min_updates (save_budget_snapshot)

Validate = Callable[[Any, np.ndarray, np.ndarray, list[bool]], tuple[dict[str, float], np.ndarray]]


class Plateau:
    """The early stop of a baseline: after ``min_updates`` updates, stop once the best validation F1max (``best``, a
    :class:`agents.runs.BestCheckpoint`) is ``window`` or more updates old (window 0: never). The update of the best is
    read from the best checkpoint's record, so a resumed run stops where the uninterrupted one does."""

    def __init__(self, window: int, min_updates: int, best: BestCheckpoint) -> None:
        self.window, self.min_updates, self.best = window, min_updates, best
        self.best_at = 0
        self._seen = -np.inf
        record = best.record if window else None  # read when the run started (a resumed run: its best so far)
        if record is not None:
            self._seen, self.best_at = float(record["pixel_f1max"]), int(record.get("updates", 0))

    def reached(self, updates: int) -> bool:
        """Call after each validation at ``updates``: whether training should stop there."""
        if self.best.best_f1max > self._seen:
            self._seen, self.best_at = self.best.best_f1max, updates
        return self.window > 0 and updates >= self.min_updates and updates - self.best_at >= self.window


def save_budget_snapshot(run_dir: Path, config: dict[str, Any], updates: int) -> Path:
    """``<run>/budget/``, a run folder of the run as it stood after ``updates`` updates (call after that validation):
    its best checkpoint so far, ``split.json``, and ``config.yml`` with ``n_updates: updates`` and no early stop, which
    is the config of a run that stops there. ``cost.json`` holds the process's CPU seconds up to this point, to which
    train.py adds the snapshot's test evaluation. Returns the folder."""
    from agents.resume import keep_files
    from agents.run_config import STOPPING
    from models.runtime import atomic_write_text

    out = run_dir / BUDGET_SNAPSHOT
    out.mkdir(exist_ok=True)
    keep_files(tuple(run_dir / name for name in ("best_detector.pt", "best_detector.json", "split.json")), out)
    snapshot = {key: value for key, value in config.items() if key not in STOPPING}
    snapshot |= {"n_updates": updates, "snapshot": f"the best checkpoint of the run in '..' at its first {updates} updates"}
    atomic_write_text(out / "config.yml", yaml.safe_dump(snapshot, sort_keys=False))
    cost = {"updates": updates, "cpu_seconds": round(time.process_time(), 1), "written": time.time()}  # this process's
    atomic_write_text(out / "cost.json", json.dumps(cost))
    return out


def train_baseline(
    config: dict[str, Any],
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    tensorboard_log: str | None,
    validate: Validate,
) -> None:
    """Train the baseline of ``config`` (``config["method"]``) for ``config["n_updates"]`` optimiser updates, or fewer
    when ``config["patience"]`` > 0 and its validation F1max has plateaued (:class:`Plateau`).

    Args:
        config: the run's config (:func:`agents.run_config.resolve_config`).
        run_dir: the run folder.
        resume: continue from the folder's checkpoint.
        progress: a progress bar (else a log line every minute or 5% of the updates).
        tensorboard_log: TensorBoard folder (None: ``<run>/tensorboard``).
        validate: ``(model, images, masks, image_labels) -> (metrics, maps)`` on the validation split.

    Raises:
        Interrupted: Ctrl-C stopped training between two updates; a checkpoint was written.
    """
    from stable_baselines3.common.utils import set_random_seed
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from agents.callbacks import InterruptCallback
    from envs.data import load_data
    from models.baselines import build_baseline

    set_random_seed(config["seed"])
    category, split = load_data(**{k: v for k, v in config["env_kwargs"].items() if k != "device"})
    write_split(run_dir, category, split)
    settings = {**config["hyperparams"], "device": config["device"]}
    trainer = build_baseline(config["method"], settings, config["seed"], category.images, category.masks, split)
    checkpoint, best = run_dir / TRAINER_CHECKPOINT, BestCheckpoint(run_dir / "best_detector.pt")
    if resume and checkpoint.is_file():
        trainer.load_weights(checkpoint)
        logger.info("resumed from %s at %d updates", checkpoint, trainer.updates)
    elif resume:  # stopped before its first checkpoint: the same run again from the beginning
        if not restartable(run_dir):
            raise ValueError(f"'{run_dir}' has no checkpoint to continue from ({TRAINER_CHECKPOINT}): start a new run")
        logger.info("%s has no checkpoint yet: starting it again from the beginning", run_dir)
    logger.info("%s trains on %d images", config["method"], len(trainer.training_indices(split)))

    val_images, val_masks, val_labels = validation_split(category, split)
    writer = SummaryWriter(str(Path(tensorboard_log or run_dir / "tensorboard") / config["method"]))
    history: list[dict[str, float]] = []

    def run_validation() -> None:
        metrics = validate(trainer, val_images, val_masks, val_labels)[0]
        for key, value in metrics.items():
            writer.add_scalar(f"eval/{key}", value, trainer.updates)
        history.append({"updates": trainer.updates, **metrics})
        best.offer(trainer, history[-1])
        writer.add_scalar("eval/best_pixel_f1max", best.best_f1max, trainer.updates)
        if window and trainer.updates == config.get("min_updates", 0):
            save_budget_snapshot(run_dir, config, trainer.updates)

    total, interrupt = config["n_updates"], InterruptCallback()
    validating = config["eval_freq"] > 0 and bool(val_masks.any())
    window = config.get("patience", 0) * config["eval_freq"]
    if window and not validating:
        logger.warning(
            "patience %d: the validation split has no defect pixels to stop on, so it trains all %d updates",
            config["patience"],
            total,
        )
    plateau = Plateau(window if validating else 0, config.get("min_updates", 0), best)
    # a checkpoint at a validation update was written after that validation: a resumed run does not repeat it, and
    # stops at once where the uninterrupted run stopped (Ctrl-C or a kill after the validation that found the plateau)
    validated_at = trainer.updates if validating and trainer.updates and trainer.updates % config["eval_freq"] == 0 else -1
    stopped = validated_at > 0 and plateau.reached(trainer.updates)
    bar = tqdm(total=total, initial=trainer.updates, desc=config["method"], disable=not progress)
    line = ProgressLine(total, "update", "updates")
    line.start(trainer.updates)
    with interrupt.catch_sigint():
        while trainer.updates < total and not interrupt.interrupted and not stopped:
            terms = trainer.update()
            for key, value in terms.items():
                writer.add_scalar(f"train/{key}", value, trainer.updates)
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}")
            evaluated = validating and trainer.updates % config["eval_freq"] == 0
            if evaluated:
                run_validation()
                validated_at = trainer.updates
            if config["save_freq"] > 0 and trainer.updates % config["save_freq"] == 0:
                trainer.save(checkpoint)
            stopped = evaluated and plateau.reached(trainer.updates)
            if not progress:
                line.maybe_log(trainer.updates, history, f", loss {terms['loss']:.4f}")
    bar.close()
    if stopped:
        logger.info(
            "validation F1max plateaued: best %.4f at update %d, none better in the %d updates since; stopping",
            best.best_f1max,
            plateau.best_at,
            trainer.updates - plateau.best_at,
        )
    trainer.save(checkpoint)
    if interrupt.interrupted and not stopped:
        writer.close()
        raise Interrupted(f"{trainer.updates} updates", run_dir)
    trainer.save(run_dir / "detector.pt")
    if validating and validated_at != trainer.updates:
        run_validation()  # the final weights compete for the best checkpoint too
    writer.close()
