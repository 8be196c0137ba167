"""Global residual: how far each part of an image is from the span of the normal training images, seen whole.

A linear autoencoder of whole images (principal component analysis, as Eigenfaces and the PCA-reconstruction baseline
of anomaly detection): the normal training images are shrunk to ``size`` x ``size``, their top principal components
are fitted once, and an image's residual after projection onto them is upsampled back to the image's size. The
paper's AE sees 64x64 patches and reconstructs whatever is locally plausible: a band of normal texture that is too
bright, a part in the wrong place, a missing part. The PCA sees the whole image at once, so what no normal image has at
that place and scale stands out. It is fitted on normal images only (no labels) and costs two small matrix products
per image, so its map can be mixed into the predictor's (``DetectorConfig.map_global_weight``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["GlobalResidual"]


class GlobalResidual:
    """PCA of whole normal images at a coarse size; :meth:`__call__` gives each pixel's absolute residual.

    Args:
        size: side of the coarse images the PCA sees (the image is area-averaged down to ``size`` x ``size``).
        components: principal components kept, at most half the number of fitting images, so that the span describes
            what normal images share rather than each training image's own noise.
    """

    def __init__(self, size: int = 64, components: int = 256) -> None:
        if size < 1 or components < 1:
            raise ValueError(f"size and components must be >= 1, got size={size}, components={components}")
        self.size = int(size)
        self.components = int(components)
        self.mean: torch.Tensor | None = None  # (D,) float32, D = 3 * size * size
        self.basis: torch.Tensor | None = None  # (k, D) float32, orthonormal rows
        self.scale: float | None = None  # 99th percentile of the channel-mean residual on held-out normal images

    @property
    def fitted(self) -> bool:
        return self.basis is not None

    def _coarse(self, images: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] -> (B, 3 * size * size), each image area-averaged to size x size."""
        small = F.interpolate(images.float(), size=(self.size, self.size), mode="area")  # (B, 3, s, s)
        return small.flatten(1)

    def fit(self, images: torch.Tensor, holdout: float = 0.1, seed: int = 0, batch: int = 64) -> GlobalResidual:
        """Fit on normal images, uint8 or float (N, 3, H, W) (uint8: 0..255).

        A seeded ``holdout`` share of them (at least one image) is left out of the PCA and sets :attr:`scale`, the 99th
        percentile of their channel-mean residual: what an unseen normal image scores, for :meth:`normalised`."""
        if images.ndim != 4 or images.shape[1] != 3 or len(images) < 3:
            raise ValueError(f"fit needs at least 3 images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {holdout}")
        unit = 255.0 if images.dtype == torch.uint8 else 1.0
        x = torch.cat([self._coarse(images[i : i + batch].float() / unit) for i in range(0, len(images), batch)])
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))  # its own generator
        n_held = min(max(1, round(holdout * len(x))), len(x) - 2)
        held, fit = x[order[:n_held]], x[order[n_held:]].double()  # the SVD in double precision
        mean = fit.mean(0)
        _, _, vh = torch.linalg.svd(fit - mean, full_matrices=False)  # vh: (min(n, D), D)
        k = max(1, min(self.components, len(fit) // 2, vh.shape[0]))
        self.mean, self.basis = mean.float(), vh[:k].float().contiguous()
        residual = self._residual(held).mean(1)  # (n_held, s, s)
        self.scale = max(float(torch.quantile(residual.flatten(), 0.99)), 1e-6)
        return self

    def coarse_residual(self, images: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] -> (B, 3, size, size) absolute residual of the PCA reconstruction."""
        if self.mean is None or self.basis is None:
            raise RuntimeError("GlobalResidual is not fitted: call fit() on normal images or load_state_dict()")
        return self._residual(self._coarse(images))

    def _residual(self, coarse: torch.Tensor) -> torch.Tensor:
        """(B, D) coarse images -> (B, 3, size, size) absolute residual."""
        assert self.mean is not None and self.basis is not None
        centred = coarse.to(self.basis.device) - self.mean  # (B, D)
        residual = centred - (centred @ self.basis.T) @ self.basis  # (B, D): the part outside the normal span
        return residual.abs().view(len(coarse), 3, self.size, self.size)

    def normalised(self, images: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] -> (B, H, W) in [0, 1]: the channel-mean residual over :attr:`scale`, capped at 1."""
        if self.scale is None:
            raise RuntimeError("GlobalResidual has no scale: fit() it on normal images")
        return (self(images).mean(1) / self.scale).clamp_(max=1.0)

    def to(self, device: torch.device | str) -> GlobalResidual:
        """Move the fitted mean and basis to ``device`` (in place)."""
        if self.mean is not None and self.basis is not None:
            self.mean, self.basis = self.mean.to(device), self.basis.to(device)
        return self

    @staticmethod
    def upsample(residual: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """(B, 3, s, s) coarse residual -> (B, 3, H, W), bilinear."""
        return F.interpolate(residual, size=shape, mode="bilinear", align_corners=False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] -> (B, 3, H, W): each pixel's absolute residual, at the images' size."""
        H, W = images.shape[-2:]
        return self.upsample(self.coarse_residual(images), (H, W)).to(images.device)

    def state_dict(self) -> dict[str, object]:
        return {"size": self.size, "components": self.components, "mean": self.mean, "basis": self.basis, "scale": self.scale}

    def load_state_dict(self, state: dict[str, object]) -> None:
        mean, basis = state.get("mean"), state.get("basis")
        if not isinstance(mean, torch.Tensor) or not isinstance(basis, torch.Tensor):
            raise ValueError("global residual state lacks its fitted mean and basis")
        D = 3 * self.size**2
        if basis.ndim != 2 or basis.shape[1] != D or mean.shape != (D,):
            shapes = f"{tuple(mean.shape)}, {tuple(basis.shape)}"
            raise ValueError(f"global residual state of shapes {shapes} does not fit size {self.size}")
        self.mean, self.basis = mean.float(), basis.float()
        scale = state.get("scale")
        self.scale = None if scale is None else float(scale)  # type: ignore[arg-type]
