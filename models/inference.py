"""A trained model as a user ships it: images of any size in, anomaly maps, image scores and defect masks out.

    from evaluate import load_detector
    detector = load_detector("logs/reinforce/MVTecPatch-v0_1")  # the run folder alone: no training data
    result = detector.predict(["part1.png", "part2.png"])      # or uint8 arrays (H, W, 3) / (N, H, W, 3)
    result.maps, result.scores, result.masks                   # (N, S, S) in [0, 1], (N,), bool (N, S, S)

Maps are at the working size ``S`` the model was trained at (the image is resized to it, as in training and
evaluation); ``masks`` are the maps at or above the threshold that gave the best pixel F1 on the run's validation
split (saved with the best weights), None where the run kept no validation record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["InferenceModel", "Prediction"]


@dataclass
class Prediction:
    """What :meth:`InferenceModel.predict` returns for N images."""

    maps: np.ndarray  # float32 (N, S, S) in [0, 1]: the defect probability of each pixel
    scores: np.ndarray  # float32 (N,): the image's score, the maximum of its map (what image AUROC ranks)
    masks: np.ndarray | None  # bool (N, S, S): maps >= threshold; None without a validation threshold
    threshold: float | None  # the validation split's F1max threshold


class InferenceModel:
    """A model with its working size and validation threshold.

    Args:
        model: anything with ``anomaly_map(uint8 (N, S, S, 3)) -> float32 (N, S, S)`` (the method's detector, a
            baseline), or ``residual_map`` with ``method="ae"``.
        image_size: the square working size ``S``.
        threshold: the validation F1max threshold (None: no masks).
        method: ``detector`` (the model's maps) or ``ae`` (the method's AE residual).
    """

    def __init__(self, model: Any, image_size: int, threshold: float | None = None, method: str = "detector") -> None:
        if method not in ("detector", "ae"):
            raise ValueError(f"method={method!r} is invalid: expected detector or ae")
        if method == "ae" and not hasattr(model, "residual_map"):
            raise ValueError(f"method='ae' needs a run of the method: a {type(model).__name__} has no autoencoder")
        self.model, self.image_size, self.threshold, self.method = model, int(image_size), threshold, method

    def prepare(self, images: np.ndarray | Sequence[np.ndarray | str | Path]) -> np.ndarray:
        """uint8 (N, S, S, 3) RGB from uint8 arrays of any size (one image (H, W, 3) or grey (H, W); a batch
        (N, H, W, 3) or grey (N, H, W)) or a list of such images and image paths."""
        from envs.mvtec import read_image

        if isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] == 3)):
            images = images[None]  # one image
        out = np.empty((len(images), self.image_size, self.image_size, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            if isinstance(image, (str, Path)):
                out[i] = read_image(image, self.image_size)[0]
                continue
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
                raise ValueError(f"image {i}: expected uint8 (H, W, 3) RGB or (H, W) grey, got {image.dtype} {image.shape}")
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
            if image.shape[:2] != (self.image_size, self.image_size):
                image = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_LINEAR)
            out[i] = image
        return out

    def predict(self, images: np.ndarray | Sequence[np.ndarray | str | Path]) -> Prediction:
        """Maps, scores and masks of ``images`` (see :meth:`prepare` for what they may be)."""
        batch = self.prepare(images)  # (N, S, S, 3)
        maps = self.model.anomaly_map(batch) if self.method == "detector" else self.model.residual_map(batch)
        maps = np.asarray(maps, dtype=np.float32)  # (N, S, S)
        scores = maps.reshape(len(maps), -1).max(axis=1)
        masks = None if self.threshold is None else maps >= self.threshold
        return Prediction(maps, scores, masks, self.threshold)
