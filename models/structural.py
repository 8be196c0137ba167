"""Fused structural map (paper §IV.B, eqs. 9-12) and the Sobel magnitude used by the cloning reward.

The sampler sees, as its 4th channel, a fixed per-image context map

    Z = w_mae * Z_mae + w_var * Z_var + w_grad * Z_grad,    then min-max normalised to [0, 1] (eq. 12)

with ``Z_mae`` the channel-mean absolute reconstruction error of the pre-trained autoencoder,
``Z_var = Blur(x^2) - Blur(x)^2`` the local variance of the grey image (Gaussian blur) and
``Z_grad = sqrt(Sobel_x^2 + Sobel_y^2)`` its gradient magnitude.

Normalisation of the components (the paper is silent on it): by default each component is min-max
normalised per image *before* fusing. The raw components live on very different scales (on a grey image
in [0, 1] a residual is ~1e-2, a local variance ~1e-3, a 3x3 Sobel magnitude up to ~4), so fusing raw values
would let the gradient term dominate whatever the weights say; normalising first makes the weights
0.7 / 0.1 / 0.2 mean what they say. ``normalize_components=False`` gives the literal raw fusion.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["DEFAULT_FUSED_WEIGHTS", "fused_structural_map", "local_variance", "gradient_magnitude", "sobel_magnitude"]

DEFAULT_FUSED_WEIGHTS: tuple[float, float, float] = (0.7, 0.1, 0.2)  # (mae, var, grad), paper §IV.B
_EPS = 1e-8


def _minmax(z: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (eq. 12); a constant map becomes all zeros."""
    lo, hi = float(z.min()), float(z.max())
    return ((z - lo) / (hi - lo + _EPS)).astype(np.float32)


def _grey01(image: np.ndarray) -> np.ndarray:
    """Grey image in [0, 1], float32 (H, W), from uint8 (H, W, 3) RGB, (H, W, 1) or (H, W)."""
    if image.ndim == 3 and image.shape[2] == 3:
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    elif image.ndim == 3 and image.shape[2] == 1:
        grey = image[..., 0]
    elif image.ndim == 2:
        grey = image
    else:
        raise ValueError(f"expected an image of shape (H, W, 3), (H, W, 1) or (H, W), got {image.shape}")
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    return grey.astype(np.float32) / np.float32(scale)


def local_variance(grey: np.ndarray, blur_sigma: float = 2.0) -> np.ndarray:
    """``Blur(x^2) - Blur(x)^2`` (eq. 10) with a Gaussian blur; float32 (H, W), >= 0.

    Args:
        grey: grey image, float (H, W).
        blur_sigma: standard deviation of the Gaussian, in pixels (kernel size derived by OpenCV).
    """
    g = grey.astype(np.float32)
    mean = cv2.GaussianBlur(g, (0, 0), blur_sigma)
    mean_sq = cv2.GaussianBlur(g * g, (0, 0), blur_sigma)
    return np.maximum(mean_sq - mean * mean, 0.0)  # clip the tiny negatives of float round-off


def gradient_magnitude(grey: np.ndarray) -> np.ndarray:
    """``sqrt(Sobel_x^2 + Sobel_y^2)`` (eq. 11), 3x3 Sobel on a float image; float32 (H, W).

    The square root is numpy's, not ``cv2.magnitude``: OpenCV's vectorised loop rounds some pixels differently
    (one ulp) depending on where its buffers happen to lie in memory, so the cloning reward, and with it a seeded run,
    depended on the process's allocation history (unrelated code changes were seen to move a seeded run)."""
    g = grey.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)  # each op correctly rounded: the same bits wherever the arrays lie


def fused_structural_map(
    image_uint8_hwc: np.ndarray,
    mae_map: np.ndarray,
    weights: tuple[float, float, float] = DEFAULT_FUSED_WEIGHTS,
    blur_sigma: float = 2.0,
    normalize_components: bool = True,
) -> np.ndarray:
    """Fused structural map of one image, float32 (H, W) in [0, 1] with min 0 and max 1 (unless constant).

    Args:
        image_uint8_hwc: the image, uint8 (H, W, 3) RGB (grey (H, W) also accepted).
        mae_map: channel-mean absolute reconstruction error of the pre-trained AE, float (H, W).
        weights: (w_mae, w_var, w_grad); the paper: (0.7, 0.1, 0.2).
        blur_sigma: Gaussian sigma of the local-variance blur, in pixels.
        normalize_components: min-max each component before fusing (see the module docstring).

    Returns:
        The min-max normalised fusion, float32 (H, W).
    """
    if len(weights) != 3:
        raise ValueError(f"weights must be (w_mae, w_var, w_grad), got {weights}")
    grey = _grey01(image_uint8_hwc)  # (H, W) in [0, 1]
    if mae_map.shape != grey.shape:
        raise ValueError(f"mae_map shape {mae_map.shape} does not match the image's {grey.shape}")
    parts = [mae_map.astype(np.float32), local_variance(grey, blur_sigma), gradient_magnitude(grey)]
    if normalize_components:
        parts = [_minmax(p) for p in parts]
    fused = sum(w * p for w, p in zip(weights, parts))
    return _minmax(np.asarray(fused, dtype=np.float32))


def sobel_magnitude(patch_chw: np.ndarray) -> np.ndarray:
    """Per-channel 3x3 Sobel gradient magnitude, for the cloning reward ``R_clone = mean(Sobel(P))`` (eq. 4).

    Args:
        patch_chw: a patch, (C, H, W) float in [0, 1] (or uint8, converted to [0, 1] first).

    Returns:
        float32 (C, H, W); on inputs in [0, 1] values lie in [0, 4 * sqrt(2)].
    """
    if patch_chw.ndim != 3:
        raise ValueError(f"expected a (C, H, W) patch, got shape {patch_chw.shape}")
    p = patch_chw.astype(np.float32)
    if patch_chw.dtype == np.uint8:
        p /= 255.0
    return np.stack([gradient_magnitude(c) for c in p])  # (C, H, W)
