"""Per-pixel reconstruction residuals: the anomaly map of a reconstruction model (the VQ-VAE-2 baseline).

Three definitions from the reconstruction-based anomaly-detection literature:

* ``l1``: the channel mean of ``|x - recon|`` (what the method's loss profiles are);
* ``l2``: the channel mean of ``(x - recon)^2`` (the training loss, per pixel);
* ``ssim``: ``1 - SSIM(x, recon)`` with SSIM's local statistics in an 11x11 Gaussian window (sigma 1.5; Wang et al.
  2004), averaged over channels: Bergmann et al.'s SSIM autoencoder (VISAPP 2019) showed that structural differences
  find defects on textured surfaces that a per-pixel distance misses, and the MVTec AD paper (CVPR 2019) evaluates it
  as a baseline.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["RESIDUALS", "residual_map", "ssim_map"]

RESIDUALS = ("l1", "l2", "ssim")

# SSIM's stabilising constants for data in [0, 1] (K1 = 0.01, K2 = 0.03, L = 1)
_C1, _C2 = 0.01**2, 0.03**2


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    """(channels, 1, size, size) normalised Gaussian kernel for a depthwise convolution."""
    r = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Local SSIM of each pixel, per channel.

    Args:
        x, y: (B, C, H, W) images in [0, 1].
        size, sigma: the Gaussian window of the local means, variances and covariance (reflect-padded borders).

    Returns:
        (B, C, H, W) SSIM in [-1, 1]; 1 where x and y agree.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"x and y must be (B, C, H, W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    C = x.shape[1]
    w = _gaussian_window(size, sigma, C, x)
    pad = size // 2

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), w, groups=C)  # (B, C, H, W)

    mx, my = local_mean(x), local_mean(y)
    vx = local_mean(x * x) - mx * mx
    vy = local_mean(y * y) - my * my
    cxy = local_mean(x * y) - mx * my
    return ((2 * mx * my + _C1) * (2 * cxy + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))


def residual_map(x: torch.Tensor, recon: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """(B, C, H, W) images and their reconstructions -> (B, H, W) residual, higher = worse reconstructed."""
    if kind == "l1":
        return (x - recon).abs().mean(dim=1)
    if kind == "l2":
        return ((x - recon) ** 2).mean(dim=1)
    if kind == "ssim":
        return (1.0 - ssim_map(x, recon)).mean(dim=1)
    raise ValueError(f"unknown residual {kind!r} (valid: {', '.join(RESIDUALS)})")
