"""The detector's checkpoints: everything needed to resume training exactly, or to evaluate without the data.

The config is saved with the weights (as nanoGPT's checkpoints do), so :meth:`CheckpointMixin.from_checkpoint`
rebuilds a detector from its file alone; the private generator's state is saved too, so a reloaded detector
continues exactly as the original would have.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import torch

from models.detector.base import DetectorBase
from models.detector.config import DetectorConfig
from models.global_residual import GlobalResidual
from models.runtime import atomic_torch_save

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointMixin"]

CHECKPOINT_FORMAT = "rl-batch-sampler/detector"
CHECKPOINT_VERSION = 1

_Self = TypeVar("_Self", bound="CheckpointMixin")


class CheckpointMixin(DetectorBase):
    """State dicts and files of the detector."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training and to evaluate, as tensors, primitives, dicts and lists.

        The pool's profile stack is included only for ``profile_stack > 1`` (older profiles cannot be
        recomputed); with K = 1 the profile is recomputed from the AE on the next refresh. Like
        ``nn.Module.state_dict``, the network tensors alias the live weights: deep-copy to snapshot in memory.
        """
        stack = self._profiles.cpu() if self.config.profile_stack > 1 and self._profiles is not None else None
        pca = self.global_residual
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "seed": self.seed,
            "ae": self.ae.state_dict(),
            "predictor": self.predictor.state_dict(),
            "predictor_average": None if self.predictor_average is None else self.predictor_average.state_dict(),
            "global_residual": pca.state_dict() if pca is not None and pca.fitted else None,
            "ae_optimizer": self.ae_optimizer.state_dict(),
            "predictor_optimizer": self.predictor_optimizer.state_dict(),
            "counters": {
                "ae_updates": self.ae_updates,
                "ae_train_updates": self.ae_train_updates,
                "ae_version": self.ae_version,
                "predictor_updates": self.predictor_updates,
                "last_ae_loss": self.last_ae_loss,
                "last_pred_loss": self.last_pred_loss,
                "profiles_fresh": self._profiles is not None and self._profiles_version == self.ae_version,
            },
            "rng": self._gen.get_state(),
            "profile_stack": stack,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. The networks' configs, the predictor's inputs and ``profile_stack`` must match
        this detector's.

        Raises:
            ValueError: the state is not a detector state or its networks do not fit this config.
        """
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a detector state (expected a dict with format={CHECKPOINT_FORMAT!r})")
        missing = {"config", "ae", "predictor", "ae_optimizer", "predictor_optimizer", "counters", "rng"} - set(state)
        if missing:
            raise ValueError(f"detector state lacks {sorted(missing)}")
        saved = DetectorConfig.from_dict(state["config"])
        for name in ("ae", "predictor", "profile_stack"):
            ours, theirs = getattr(self.config, name), getattr(saved, name)
            if ours != theirs:
                raise ValueError(f"saved {name} config {theirs} does not match this detector's {ours}")
        # What the predictor reads: two input sets with the same channel count would otherwise load into each other
        # silently (the stacking order is fixed, so the sets are compared, not the tuples)
        ours_in, theirs_in = set(self.config.predictor_inputs), set(saved.predictor_inputs)
        if ours_in != theirs_in:
            raise ValueError(f"saved predictor_inputs {sorted(theirs_in)} do not match this detector's {sorted(ours_in)}")
        if self.config.map_global_weight:
            for name in ("global_size", "global_components"):
                ours_v, theirs_v = getattr(self.config, name), getattr(saved, name)
                if ours_v != theirs_v:
                    raise ValueError(f"saved {name} {theirs_v} does not match this detector's {ours_v}")
        try:
            self.ae.load_state_dict(state["ae"])
            self.predictor.load_state_dict(state["predictor"])
            if self.predictor_average is not None:
                self.predictor_average.load_state_dict(state.get("predictor_average") or state["predictor"])
            self.ae_optimizer.load_state_dict(state["ae_optimizer"])
            self.predictor_optimizer.load_state_dict(state["predictor_optimizer"])
            self._gen.set_state(state["rng"])
            if isinstance(state.get("global_residual"), dict):
                self.global_residual = GlobalResidual(self.config.global_size, self.config.global_components)
                self.global_residual.load_state_dict(state["global_residual"])
                self.global_residual.to(self.device)
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"detector state does not fit this detector: {e}") from e
        self.ae.to(self.device, memory_format=self._memory_format)  # type: ignore[call-overload]
        self.predictor.to(self.device, memory_format=self._memory_format)  # type: ignore[call-overload]
        if self.predictor_average is not None:
            self.predictor_average.to(self.device, memory_format=self._memory_format)  # type: ignore[call-overload]
        c = state["counters"]
        self.ae_updates = int(c["ae_updates"])
        self.ae_train_updates = int(c.get("ae_train_updates", c["ae_updates"]))  # older checkpoints counted all
        self.ae_version = int(c["ae_version"])
        self.predictor_updates = int(c["predictor_updates"])
        self.last_ae_loss = c["last_ae_loss"]
        self.last_pred_loss = c["last_pred_loss"]
        self.seed = int(state.get("seed", self.seed))
        stack = state.get("profile_stack")
        if stack is not None and self._pool is not None and stack.shape[0] == len(self._pool):
            self._profiles = stack.to(self.device)
            self._profiles_version = self.ae_version if c.get("profiles_fresh") else -1
        else:
            self._profiles, self._profiles_version = None, -1

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (temporary file in the same folder, then rename).

        With ``map_global_weight`` the global residual is fitted first (it is fitted on first use, and a run without
        validation may not have used it), so that the file alone makes anomaly maps without the training images.
        """
        if self.config.map_global_weight and self._train is not None:
            self._global()
        atomic_torch_save(self.state_dict(), path)

    @staticmethod
    def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
        """Load a checkpoint written by :meth:`save` with ``torch.load(weights_only=True)``.

        Raises:
            ValueError: the file is missing, unreadable, corrupt or not a detector checkpoint (names the path).
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
            # the kind of failure only: torch's own message runs to many lines of advice about weights_only
            kind = type(e).__name__
            raise ValueError(f"{path}: not a readable detector checkpoint (expected a saved Detector state; {kind})") from e
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a detector checkpoint (expected a dict with format={CHECKPOINT_FORMAT!r})")
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: detector checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
        return state

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Restore this detector from a file written by :meth:`save`.

        Raises:
            ValueError: the file is corrupt or does not fit this detector (the message names the path).
        """
        state = self.read_checkpoint(path)
        try:
            self.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    @classmethod
    def from_checkpoint(
        cls: type[_Self],
        path: str | os.PathLike[str],
        train_images: np.ndarray | None = None,
        pool_images: np.ndarray | None = None,
        pool_masks: np.ndarray | None = None,
        device: str | None = None,
    ) -> _Self:
        """Rebuild a detector from its checkpoint alone (the config is saved with the weights).

        Without data it is inference-only: :meth:`anomaly_map`, :meth:`residual_map`, :meth:`fused_maps`.

        Args:
            path: a file written by :meth:`save`.
            train_images, pool_images, pool_masks: the data, to resume training; None for inference.
            device: override the saved device (e.g. "cpu" for a checkpoint trained on a GPU).
        """
        state = cls.read_checkpoint(path)
        try:
            config = DetectorConfig.from_dict(state["config"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: invalid saved config: {e}") from e
        if device is not None:
            config = replace(config, device=device)
        detector = cls(config, train_images, pool_images, pool_masks, seed=int(state.get("seed", 0)))
        try:
            detector.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        return detector
