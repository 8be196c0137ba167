"""What the detector's networks read: image layouts, the predictor's input stack and the geometry of its crops."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["images_to_uint8_chw", "predictor_input", "window_on"]


def images_to_uint8_chw(images: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy -> uint8 (N, 3, H, W) torch (a copy, contiguous)."""
    if isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a numpy uint8 array (N, H, W, 3)")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be a uint8 array of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


def predictor_input(inputs: tuple[str, ...], profiles: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Stack what the predictor reads (``inputs``, a subset of ("profile", "image"), always in that order).

    Args:
        inputs: the config's ``predictor_inputs``.
        profiles: (B, 3K, H, W) loss profiles.
        images: (B, 3, H, W) float images in [0, 1].

    Returns:
        (B, C_in, H, W).
    """
    parts = [profiles] if "profile" in inputs else []
    if "image" in inputs:
        parts.append(images)
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def window_on(pixel: int, shape: tuple[int, int], side: int, offset: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """Top-left corner of the ``side``-pixel window centred on flat index ``pixel`` of an (H, W) image, moved by
    ``offset`` (dy, dx) and kept inside the image."""
    H, W = shape
    y = min(max(pixel // W + offset[0] - side // 2, 0), H - side)
    x = min(max(pixel % W + offset[1] - side // 2, 0), W - side)
    return y, x
