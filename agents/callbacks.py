"""SB3 callbacks shared by every algorithm: reward-term logging, validation metrics and figures, atomic checkpoints,
a clean Ctrl-C and progress lines for unattended runs.

They reach the detector through the env object they are given (``MVTecPatchEnv``): the AE and predictor live inside the
env, so ``model.save()`` alone would lose them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Image

from agents.random_agent import RandomAgent
from agents.runs import BestCheckpoint, ProgressLine, atomic_write_text

logger = logging.getLogger(__name__)

REWARD_TERMS = ("r_clone", "r_cover", "r_pred", "r_defect", "beta", "alpha", "pred_lr", "ae_loss", "pred_loss")
NOT_TEXT = ("stdout", "log", "json", "csv")  # images go to TensorBoard only


class RewardTermsCallback(BaseCallback):
    """Log the means of the env's reward terms, beta, alpha, the predictor's rate and the detector losses under ``env/``."""

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            for key in REWARD_TERMS:
                value = info.get(key)
                if value is not None and np.isfinite(value):
                    self.logger.record_mean(f"env/{key}", float(value))
            if "rl_feedback" in info:
                self.logger.record("env/rl_feedback", float(info["rl_feedback"]))
        return True


def _tile(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Stack a grid of equally sized uint8 HWC images."""
    return np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)


def _heat(x: np.ndarray) -> np.ndarray:
    """A [0, 1] map as a uint8 RGB heat map (inferno)."""
    import cv2

    grey = np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO)[..., ::-1]


class ValidationCallback(BaseCallback):
    """Every ``eval_freq`` env steps: validation metrics to the logger, a figure of a few validation images to
    TensorBoard (image | loss profile | prediction | ground truth, and the sampler's history maps), and the detector
    with the best validation pixel F1max saved to ``best_path`` (the validation split picks the checkpoint).

    Args:
        env: the unwrapped ``MVTecPatchEnv``.
        evaluate: ``(detector) -> (metrics dict, maps)`` on the validation split.
        images: uint8 (N, H, W, 3) validation images (for the figure); masks: bool (N, H, W).
        eval_freq: env steps between evaluations; best_path: where the best detector goes (None: not saved).
    """

    def __init__(
        self,
        env: Any,
        evaluate: Callable[[Any], tuple[dict[str, float], np.ndarray]],
        images: np.ndarray,
        masks: np.ndarray,
        eval_freq: int,
        best_path: Path | None = None,
        n_figure: int = 4,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.env, self.evaluate, self.images, self.masks = env, evaluate, images, masks
        self.eval_freq, self.n_figure = eval_freq, n_figure
        self.best = BestCheckpoint(best_path)
        self.history: list[dict[str, float]] = []
        self._last_eval = 0

    def _on_training_start(self) -> None:
        self._last_eval = self.num_timesteps  # resumed runs count from their checkpoint

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.num_timesteps - self._last_eval >= self.eval_freq:
            self._last_eval = self.num_timesteps
            self.run_evaluation()
        return True

    def run_evaluation(self) -> dict[str, float]:
        detector = self.env.detector
        metrics, maps = self.evaluate(detector)
        for key, value in metrics.items():
            self.logger.record(f"eval/{key}", value)
        self.history.append({"timesteps": self.num_timesteps, **metrics})
        self.best.offer(detector, self.history[-1])
        self.logger.record("eval/best_pixel_f1max", self.best.best_f1max)
        self._record_figures(detector, maps)
        self.logger.dump(self.num_timesteps)
        return metrics

    def _record_figures(self, detector: Any, maps: np.ndarray) -> None:
        shown = [i for i in range(len(self.images)) if self.masks[i].any()][: self.n_figure] or [0]
        profiles = detector.residual_map(self.images[shown])
        scale = max(float(np.percentile(profiles, 99.5)), 1e-6)
        rows = [
            [self.images[i], _heat(p / scale), _heat(maps[i]), _heat(self.masks[i].astype(np.float32))]
            for i, p in zip(shown, profiles)
        ]
        self.logger.record("eval/image_profile_prediction_truth", Image(_tile(rows), "HWC"), exclude=NOT_TEXT)
        history = self.env.history[: self.n_figure].astype(np.float32)
        self.logger.record(
            "sampler/history_maps", Image(_tile([[_heat(h / (h + 1.0)) for h in history]]), "HWC"), exclude=NOT_TEXT
        )


class CheckpointCallback(BaseCallback):
    """Every ``save_freq`` env steps write a checkpoint (see :func:`write_checkpoint`); resuming loses at most one
    interval. For algorithms that learn after collecting (REINFORCE, PPO, A2C, DQN) the write waits for the start of
    the next rollout, so the saved agent has already learnt from the steps the saved env state has seen."""

    def __init__(self, env: Any, folder: Path, save_freq: int, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.env, self.folder, self.save_freq = env, Path(folder), save_freq
        self._last_save = 0
        self._pending = False

    def _on_training_start(self) -> None:
        self._last_save = self.num_timesteps

    def _on_step(self) -> bool:
        if self.save_freq > 0 and self.num_timesteps - self._last_save >= self.save_freq:
            self._last_save = self.num_timesteps
            self._pending = True
            if isinstance(self.model, RandomAgent):  # nothing to learn: write now
                self._write()
        return True

    def _on_rollout_start(self) -> None:
        if self._pending:
            self._write()

    def _write(self) -> None:
        self._pending = False
        write_checkpoint(self.model, self.env, self.folder)
        if self.verbose:
            logger.info("checkpoint at %d steps in %s", self.num_timesteps, self.folder)


def write_checkpoint(model: Any, env: Any, folder: Path) -> Path:
    """Write ``<folder>/step_<N>/{agent.zip, env_state.pt}`` (a new folder), then point ``<folder>/latest.json`` at it
    (an atomic rename), then delete older checkpoints: an interruption at any moment leaves a complete checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step_{int(model.num_timesteps)}"
    suffix = 0
    while target.exists():  # never rewrite the folder latest.json may point at
        suffix += 1
        target = folder / f"step_{int(model.num_timesteps)}_{suffix}"
    target.mkdir()
    model.save(target / "agent.zip")
    env.save_state(target / "env_state.pt")
    meta = {"checkpoint": target.name, "num_timesteps": int(model.num_timesteps), "global_step": int(env.global_step)}
    atomic_write_text(folder / "latest.json", json.dumps(meta, indent=2))
    for old in folder.glob("step_*"):
        if old != target and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(folder: Path) -> Path | None:
    """The folder of the newest complete checkpoint, or None."""
    marker = Path(folder) / "latest.json"
    if not marker.is_file():
        return None
    return Path(folder) / json.loads(marker.read_text())["checkpoint"]


class InterruptCallback(BaseCallback):
    """Turn Ctrl-C into a clean stop between two env steps.

    Inside :meth:`catch_sigint` a SIGINT only sets a flag; the next ``_on_step`` (after the step that was running has
    finished) returns False, which ends ``learn`` normally, so a checkpoint written afterwards never holds half a step.
    A second Ctrl-C while waiting raises KeyboardInterrupt as usual.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.interrupted = False

    @contextlib.contextmanager
    def catch_sigint(self) -> Iterator[None]:
        """Install the flag-setting SIGINT handler for the block (main thread only), then restore the previous one."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return

        def handler(signum: int, frame: Any) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            logger.warning("Ctrl-C: stopping after the current step (press again to abort without a checkpoint)")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_step(self) -> bool:
        return not self.interrupted


class ProgressLogCallback(BaseCallback):
    """A :class:`agents.runs.ProgressLine` of env steps, with the latest metrics of ``validation`` (a
    ValidationCallback, or None), for output that goes to a file instead of a progress bar."""

    def __init__(
        self, total: int, validation: Any = None, every_s: float = 60.0, every_steps: int | None = None, verbose: int = 0
    ) -> None:
        super().__init__(verbose)
        self.validation = validation
        self.line = ProgressLine(total, "step", "timesteps", every_s, every_steps)

    def _on_training_start(self) -> None:
        self.line.start(self.num_timesteps)

    def _on_step(self) -> bool:
        self.line.maybe_log(self.num_timesteps, getattr(self.validation, "history", None))
        return True

    def _on_training_end(self) -> None:
        if self.num_timesteps != self.line.last_done:
            self.line.log(self.num_timesteps, getattr(self.validation, "history", None))
