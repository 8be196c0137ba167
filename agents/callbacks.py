"""SB3 callbacks shared by every algorithm: reward-term logging, validation metrics and figures, atomic checkpoints
from which a run continues exactly, a clean Ctrl-C and progress lines for unattended runs.

They reach the detector through the env object they are given (``MVTecPatchEnv``): the AE and predictor live inside the
env, so ``model.save()`` alone would lose them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Image

from agents import save_agent
from agents.resume import RUN_STATE, keep_files
from agents.runs import BestCheckpoint, ProgressLine, atomic_write_text
from models.runtime import atomic_torch_save

logger = logging.getLogger(__name__)

# patch_defect: the ground-truth defect share of the AE's patches (contaminated images only), a diagnostic
REWARD_TERMS = ("r_clone", "r_cover", "r_pred", "r_defect", "patch_defect", "beta", "alpha", "pred_lr", "ae_loss", "pred_loss")
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
    """At every multiple of ``eval_freq`` env steps (a resumed run keeps the schedule): validation metrics to the
    logger, a figure of a few validation images to TensorBoard (image | loss profile | prediction | ground truth, and
    the sampler's history maps), and the detector with the best validation pixel F1max saved to ``best_path`` (the
    validation split picks the checkpoint).

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
        if self.eval_freq > 0:  # the last multiple: a resumed run validates where the uninterrupted one does
            self._last_eval = self.num_timesteps - self.num_timesteps % self.eval_freq

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.num_timesteps - self._last_eval >= self.eval_freq:
            self._last_eval = self.num_timesteps - self.num_timesteps % self.eval_freq
            self.run_evaluation()
        return True

    def state_dict(self) -> dict[str, Any]:
        """The validation history, for a checkpoint (the best model is kept as files beside it): plain numbers, which
        ``torch.load(weights_only=True)`` reads."""
        return {"history": [{k: v.item() if isinstance(v, np.generic) else v for k, v in r.items()} for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(record) for record in state["history"]]

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
    """A checkpoint (see :func:`write_checkpoint`) when training starts (the warm-up's result) and every
    ``save_freq`` env steps; resuming loses at most one interval. The write waits for the start of the next rollout
    (the random agent starts one at every step), so the saved agent has already learnt from the steps the saved env
    state has seen, and the run continues from it exactly.

    Args:
        env: the unwrapped ``MVTecPatchEnv``.
        folder: the run's ``checkpoints/``.
        save_freq: env steps between checkpoints (0: none).
        run_state: () -> the rest of the run's state (:func:`agents.resume.capture`); None: not saved.
        keep: files that change as the run goes (the best detector): each checkpoint keeps their current version.
    """

    def __init__(
        self,
        env: Any,
        folder: Path,
        save_freq: int,
        verbose: int = 0,
        run_state: Callable[[], dict[str, Any]] | None = None,
        keep: tuple[Path, ...] = (),
    ) -> None:
        super().__init__(verbose)
        self.env, self.folder, self.save_freq = env, Path(folder), save_freq
        self.run_state, self.keep = run_state, keep
        self._last_save = 0
        self._pending = False
        self._resumed = False

    def _on_training_start(self) -> None:
        if not self._resumed:
            self._last_save = self.num_timesteps
            # a checkpoint right after the warm-up: a run stopped later never repeats it
            self._pending = self.save_freq > 0 and self.num_timesteps == 0

    def _on_step(self) -> bool:
        if self.save_freq > 0 and self.num_timesteps - self._last_save >= self.save_freq:
            self._last_save = self.num_timesteps
            self._pending = True
        return True

    def _on_rollout_start(self) -> None:
        if self._pending:
            self._write()

    def state_dict(self) -> dict[str, Any]:
        return {"last_save": self._last_save}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_save, self._resumed = int(state["last_save"]), True

    def _write(self) -> None:
        self._pending = False
        write_checkpoint(self.model, self.env, self.folder, self.run_state() if self.run_state else None, self.keep)
        if self.verbose:
            logger.info("checkpoint at %d steps in %s", self.num_timesteps, self.folder)


def write_checkpoint(
    model: Any, env: Any, folder: Path, run_state: dict[str, Any] | None = None, keep: tuple[Path, ...] = ()
) -> Path:
    """Write ``<folder>/step_<N>/`` (a new folder: ``agent.zip``, ``env_state.pt``, ``run_state.pt`` and the current
    version of the ``keep`` files), then point ``<folder>/latest.json`` at it (an atomic rename), then delete older
    checkpoints: an interruption at any moment leaves a complete checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step_{int(model.num_timesteps)}"
    suffix = 0
    while target.exists():  # never rewrite the folder latest.json may point at
        suffix += 1
        target = folder / f"step_{int(model.num_timesteps)}_{suffix}"
    target.mkdir()
    save_agent(model, target / "agent.zip")
    env.save_state(target / "env_state.pt")
    if run_state is not None:
        atomic_torch_save(run_state, target / RUN_STATE)
    keep_files(keep, target)
    meta = {"checkpoint": target.name, "num_timesteps": int(model.num_timesteps), "global_step": int(env.global_step)}
    atomic_write_text(folder / "latest.json", json.dumps(meta, indent=2))
    for old in folder.glob("step_*"):
        if old != target and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(folder: Path) -> Path | None:
    """The folder of the newest complete checkpoint, or None.

    Raises:
        ValueError: ``latest.json`` is unreadable or names something other than a checkpoint folder of ``folder``.
    """
    marker = Path(folder) / "latest.json"
    if not marker.is_file():
        return None
    try:
        name = json.loads(marker.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"'{marker}' is corrupt (expected JSON with a \"checkpoint\" name): {error}") from None
    if not isinstance(name, str) or not re.fullmatch(r"step_\d+(_\d+)?", name):
        raise ValueError(f"'{marker}' names {name!r}, not a checkpoint folder (step_<N>)")
    return Path(folder) / name


class StopAtRolloutStart(Exception):
    """Raised by :class:`InterruptCallback` at the start of a rollout after a Ctrl-C: a point to checkpoint."""


class InterruptCallback(BaseCallback):
    """Turn Ctrl-C into a clean stop at the start of the next rollout (the random agent starts one at every step).

    Inside :meth:`catch_sigint` a SIGINT only sets a flag; at the next rollout's start, where the agent has learnt from
    every step the env has seen, ``_on_rollout_start`` raises :class:`StopAtRolloutStart` before any callback after it
    runs. A checkpoint written then is the one a periodic checkpoint would be, so the run continues exactly. A second
    Ctrl-C while waiting raises KeyboardInterrupt as usual.
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
            logger.warning(
                "Ctrl-C: stopping with a checkpoint when this rollout ends (press again to stop at once; -i then "
                "continues from the last checkpoint)"
            )

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_rollout_start(self) -> None:
        if self.interrupted:
            raise StopAtRolloutStart

    def _on_step(self) -> bool:
        return True


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
