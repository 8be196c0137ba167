"""Anomaly maps: the predictor's per-pixel probabilities, the AE-only residual, the fused structural map, and the
post-processing they share (global fusion, smoothing, closing)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from models.detector.base import DetectorBase
from models.structural import fused_structural_map

__all__ = ["MapsMixin", "ae_baseline_maps", "close_maps", "fuse_global", "smooth_maps"]


def smooth_maps(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of float32 (N, H, W) anomaly maps (reflected borders); sigma 0 returns them as they are."""
    if sigma <= 0 or not len(maps):
        return maps
    return np.stack([cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for m in maps])


def close_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """Grey-level morphological closing of float32 (N, H, W) anomaly maps with a ``size``-pixel disc (reflected
    borders); 0 returns them as they are. Closing never lowers a score: it raises the low pixels between lit ones
    closer than ``size``, such as the inside of a large defect whose edge alone the predictor marks."""
    if size <= 0 or not len(maps):
        return maps
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return np.stack([cv2.morphologyEx(m, cv2.MORPH_CLOSE, disc, borderType=cv2.BORDER_REFLECT) for m in maps])


def fuse_global(maps: torch.Tensor, global_maps: torch.Tensor, weight: float) -> torch.Tensor:
    """Late fusion of (B, H, W) anomaly maps with (B, H, W) normalised global residuals in [0, 1]: a convex mix."""
    return (1.0 - weight) * maps + weight * global_maps.to(maps.device)


class MapsMixin(DetectorBase):
    """The detector's maps at inference (eval mode, no gradient)."""

    def residual_map(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """AE-only anomaly map (the classic unsupervised residual baseline): channel-mean loss profile.

        Args:
            images: as for :meth:`loss_profiles`.

        Returns:
            float32 (N, H, W), not normalised (residuals of images in [0, 1]).
        """
        chunk = 64  # bounds the (chunk, 3, H, W) float32 profiles held at once: a 762-image category would need 600 MB
        parts = [self.loss_profiles(images[i : i + chunk]).mean(dim=1).cpu().numpy() for i in range(0, len(images), chunk)]
        return np.concatenate(parts) if parts else self.loss_profiles(images).mean(dim=1).cpu().numpy()

    def fused_maps(self, images: np.ndarray) -> np.ndarray:
        """Fused structural maps (paper eqs. 9-12) computed with the *current* AE.

        The env calls this once right after AE pre-training and caches the result, which makes ``Z_mae``
        the pre-trained AE's residual as the paper asks.

        Args:
            images: uint8 (N, H, W, 3).

        Returns:
            float32 (N, H, W) in [0, 1].
        """
        if len(images) == 0:
            return np.zeros((0, *images.shape[1:3]), np.float32)
        mae = self.residual_map(images)  # (N, H, W)
        w, sigma = self.config.fused_weights, self.config.fused_blur_sigma
        return np.stack([fused_structural_map(img, m, weights=w, blur_sigma=sigma) for img, m in zip(images, mae)])

    def anomaly_map(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Per-pixel defect probabilities: image -> AE -> loss profile -> predictor (all in eval mode).

        With ``profile_stack = K > 1`` the current profile is repeated K times at inference: a single image
        has no history of profiles, and a converged AE's recent profiles are close to the current one.

        Args:
            images: uint8 (N, H, W, 3) numpy (or (N, 3, H, W) torch, as for :meth:`loss_profiles`).

        Returns:
            float32 (N, H, W) in [0, 1], at the input resolution.
        """
        self.ae.eval()
        predictor = self.predictor if self.predictor_average is None else self.predictor_average
        predictor.eval()
        K = self.config.profile_stack
        out = []
        bs = self.config.inference_batch_size
        with torch.inference_mode():
            for i in range(0, len(images), bs):
                x = self._to_float(images[i : i + bs])  # (b, 3, H, W)
                prof = (x - self.ae(x)).abs()  # (b, 3, H, W)
                if K > 1:
                    prof = prof.repeat(1, K, 1, 1)  # (b, 3K, H, W)
                z = self._predictor_input(prof, x)  # (b, C_in, H, W)
                p = predictor(z)[:, 0]  # (b, H, W)
                if self.config.map_predictor_flips:
                    maps = [p]
                    for dims in ((-1,), (-2,), (-2, -1)):  # mirrored, upside down, both: each map flipped back
                        maps.append(predictor(z.flip(dims))[:, 0].flip(dims))
                    p = torch.stack(maps).mean(0)  # (b, H, W)
                if self.config.map_global_weight:
                    p = fuse_global(p, self._global().normalised(x), self.config.map_global_weight)
                out.append(p.cpu())
        if not out:
            H, W = images.shape[1:3] if isinstance(images, np.ndarray) else images.shape[-2:]
            return np.zeros((0, H, W), np.float32)
        return smooth_maps(torch.cat(out).numpy(), self.config.map_smoothing_sigma)  # (N, H, W)

    def global_map(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """The normalised global residual that ``map_global_weight`` mixes in: uint8 (N, H, W, 3) -> float32 (N, H, W)."""
        bs, out = self.config.inference_batch_size, []
        with torch.inference_mode():
            for i in range(0, len(images), bs):
                out.append(self._global().normalised(self._to_float(images[i : i + bs])).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, *images.shape[1:3]), np.float32)


def ae_baseline_maps(detector: MapsMixin, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """AE-only baseline anomaly maps: the channel-mean reconstruction residual (no predictor).

    Args:
        detector: a detector whose AE is trained (e.g. after :meth:`Detector.pretrain_ae`).
        images: uint8 (N, H, W, 3).

    Returns:
        float32 (N, H, W), larger = more anomalous.
    """
    return detector.residual_map(images)
