"""A run folder and the helpers that the RL sampler's loop (train.py) and the baselines' loop
(:mod:`agents.baseline_trainer`) share: its numbering, its lock, the split, the best checkpoint, Ctrl-C and progress
lines.

A run folder ``<log-folder>/<algo or method>/<env>_<N>/`` holds ``config.yml``, ``split.json``, ``tensorboard/``,
``checkpoints/``, ``detector.pt`` (the last), ``best_detector.pt`` (best validation pixel F1max, its metrics in
``best_detector.json``) and the test-split evaluation of evaluate.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from models.progress import ProgressLine
from models.runtime import atomic_torch_save, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "LOCK",
    "TRAINER_CHECKPOINT",
    "BestCheckpoint",
    "Interrupted",
    "ProgressLine",
    "RunBusy",
    "atomic_write_text",
    "best_record",
    "hold_run",
    "interrupted_message",
    "new_run_dir",
    "restartable",
    "validation_split",
    "write_split",
]

TRAINER_CHECKPOINT = "checkpoints/trainer.pt"  # a baseline's resumable state (weights, optimiser, generator, counters)
LOCK = ".lock"  # held (flock) by the one process that trains into a run folder
# what a run folder may hold before its first checkpoint, when -i starts it again from the beginning (monitor.csv
# without an episode, an event file without a step, a checkpoint being written, a file being written)
BEFORE_TRAINING = ("config.yml", "split.json", "monitor.csv", "tensorboard", "checkpoints", LOCK)


class Interrupted(Exception):
    """Training stopped by Ctrl-C (SIGINT) between two steps; a checkpoint was written."""

    def __init__(self, done: str, run_dir: Path) -> None:
        super().__init__(f"interrupted at {done}: checkpoint written; continue with -i {run_dir}")


def interrupted_message(run_dir: Path | None, checkpointed: bool) -> str:
    """The one line for a Ctrl-C that stopped the run at once (in the warm-up, or a second Ctrl-C)."""
    if run_dir is None:
        return "interrupted before a run folder was made: nothing to continue"
    if checkpointed:
        return f"interrupted: continue with -i {run_dir} (from its last checkpoint)"
    return f"interrupted before the first checkpoint: nothing to continue yet; -i {run_dir} starts the run again"


def new_run_dir(log_folder: str, algo: str, env_id: str) -> Path:
    """``<log_folder>/<algo>/<env_id>_<N>`` with N one more than the largest existing (rl-zoo's numbering); two runs
    started at once get two folders."""
    parent = Path(log_folder) / algo
    parent.mkdir(parents=True, exist_ok=True)
    ids = [int(p.name.rsplit("_", 1)[1]) for p in parent.glob(f"{env_id}_*") if p.name.rsplit("_", 1)[1].isdigit()]
    n = max(ids, default=0) + 1
    while True:
        run_dir = parent / f"{env_id}_{n}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:  # another process took this number first
            n += 1


class RunBusy(ValueError):
    """Another process is training into the run folder."""


_HELD: dict[Path, int] = {}  # run folders this process holds -> the open lock file


@contextlib.contextmanager
def hold_run(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block: an exclusive ``fcntl.flock`` on ``run_dir/.lock``, which the system
    releases when the process ends, however it ends. Nested holds of one folder in one process are one hold.

    Raises:
        RunBusy: another process holds it (the message names the folder and that process).
    """
    key = Path(run_dir).resolve()
    if key in _HELD:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunBusy(
            f"'{run_dir}' is in use by another training process (pid {holder}): wait for it to end, or stop it"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = fd
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)  # releases the lock


def restartable(run_dir: Path) -> bool:
    """Whether ``run_dir``, which has no checkpoint, holds no result of training either (it was stopped or killed in
    the warm-up): then ``-i`` starts it again from the beginning, which gives the same run."""
    if (run_dir / "checkpoints" / "latest.json").is_file() or (run_dir / TRAINER_CHECKPOINT).is_file():
        return False
    monitor = run_dir / "monitor.csv"
    if monitor.is_file() and len(monitor.read_text().splitlines()) > 2:  # two header lines, then one per episode
        return False
    return all(p.name in BEFORE_TRAINING or p.name.endswith(".tmp") for p in run_dir.iterdir())


def write_split(run_dir: Path, category: Any, split: Any) -> None:
    """``split.json``: which files the run trains, validates and tests on."""
    from envs.split import split_json

    atomic_write_text(run_dir / "split.json", split_json(split, category))


def validation_split(category: Any, split: Any) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """The validation images (uint8 (N, H, W, 3)), masks (bool (N, H, W)) and image labels (True: defective)."""
    labels = [category.samples[i].is_anomalous for i in split.val]
    return category.images[split.val], category.masks[split.val], labels


class BestCheckpoint:
    """The model with the best validation pixel F1max so far, saved to ``path`` with its validation metrics inside
    (``"validation"``), and a copy of them in ``path.json`` for people and scripts; a resumed run starts from the best
    it recorded (the validation split picks the checkpoint).

    The metrics that count are the ones inside the weights' file, so a kill between the two writes (each atomic)
    cannot pair weights with another checkpoint's metrics: the ``.json`` is only ever behind, and rewritten from the
    checkpoint when it is (:func:`best_record`).

    Args:
        path: where the best model goes (None: tracked, not saved).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.best_f1max = -np.inf
        self.record = best_record(path) if path is not None else None  # the saved best's validation metrics, if any
        if self.record is not None:
            self.best_f1max = float(self.record["pixel_f1max"])

    def offer(self, model: Any, record: dict[str, float]) -> None:
        """Save ``model`` (anything with ``state_dict()``, as its ``save`` writes it) if its validation ``record``
        beats the best so far."""
        if record["pixel_f1max"] > self.best_f1max:
            self.best_f1max = record["pixel_f1max"]
            if self.path is not None:
                plain_record = json.loads(json.dumps(record, default=float))  # numpy scalars -> floats
                atomic_torch_save({**model.state_dict(), "validation": plain_record}, self.path)
                atomic_write_text(self.path.with_suffix(".json"), json.dumps(plain_record, indent=2))


def best_record(path: Path) -> dict[str, Any] | None:
    """The validation metrics of the best checkpoint ``path`` (None: no checkpoint): those saved inside it; the
    ``.json`` beside it is rewritten from them if it is missing or disagrees (a kill between the two writes). A file
    older than the metrics inside checkpoints has only the ``.json``.
    """
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise ValueError(f"'{path}' is not a readable checkpoint ({type(error).__name__})") from error
    record = state.get("validation") if isinstance(state, dict) else None
    try:
        written = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    except ValueError:
        written = None
    if record is None:
        return written
    if written != record:
        atomic_write_text(sidecar, json.dumps(record, indent=2))
    return record
