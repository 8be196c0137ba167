"""The detector's whole inference as one graph, for ONNX: AE, loss profile, predictor with its flips, global residual,
fusion and smoothing.

    python evaluate.py --run RUN --export model.onnx   # writes model.onnx and model.json (the sidecar)

The graph takes float32 (B, 3, S, S) RGB in [0, 1] (uint8 / 255, channel first) with a dynamic batch axis and returns
float32 (B, S, S) defect probabilities: :meth:`Detector.anomaly_map` of the same images, as one ``nn.Module``
(:class:`InferenceGraph`) that ``torch.onnx.export`` traces. The sidecar says the input size, the normalisation and the
validation threshold. ``benchmarks/bench_detector.py`` compares the two runtimes' maps and speeds.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import padding
from models.runtime import atomic_write, atomic_write_text

__all__ = ["InferenceGraph", "export_onnx", "gaussian_kernel"]

INPUT, OUTPUT = "images", "maps"


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The 1-D kernel ``cv2.GaussianBlur(float32 map, (0, 0), sigma)`` uses: ``2 * round(4 sigma) + 1`` taps (float32
    images), normalised to sum 1. float32 (K,)."""
    size = int(round(sigma * 4 * 2 + 1)) | 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


def _reflect_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Pad ``r`` pixels on both sides of ``dim`` as cv2.BORDER_REFLECT does (``fedcba|abcdef|fedcba``: the edge repeated)."""
    n = x.shape[dim]
    left = x.narrow(dim, 0, r).flip(dim)
    right = x.narrow(dim, n - r, r).flip(dim)
    return torch.cat([left, x, right], dim=dim)


class InferenceGraph(nn.Module):
    """:meth:`Detector.anomaly_map` as one module: float32 (B, 3, S, S) in [0, 1] -> float32 (B, S, S).

    Args:
        detector: a trained :class:`models.detector.Detector` (its averaged predictor where it keeps one).
    """

    def __init__(self, detector: Any) -> None:
        super().__init__()
        config = detector.config
        self.ae = detector.ae
        self.predictor = detector.predictor if detector.predictor_average is None else detector.predictor_average
        self.stack = config.profile_stack
        self.inputs = tuple(config.predictor_inputs)
        self.flips = bool(config.map_predictor_flips)
        self.global_weight = float(config.map_global_weight)
        if self.global_weight:
            residual = detector._global()
            self.global_size = residual.size
            self.register_buffer("global_mean", residual.mean.detach().cpu().clone())  # (D,)
            self.register_buffer("global_basis", residual.basis.detach().cpu().clone())  # (k, D)
            self.global_scale = float(residual.scale)
        self.sigma = float(config.map_smoothing_sigma)
        if self.sigma > 0:
            self.register_buffer("kernel", gaussian_kernel(self.sigma))  # (K,)

    def _predict(self, z: torch.Tensor) -> torch.Tensor:
        p = self.predictor(z)[:, 0]  # (B, S, S)
        if not self.flips:
            return p
        maps = [p]
        for dims in ((-1,), (-2,), (-2, -1)):  # mirrored, upside down, both: each map flipped back
            maps.append(self.predictor(z.flip(dims))[:, 0].flip(dims))
        return torch.stack(maps).mean(0)

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, S, S): the normalised global residual (models.global_residual.GlobalResidual)."""
        B, _, H, W = x.shape
        s = self.global_size
        coarse = F.interpolate(x, size=(s, s), mode="area").reshape(B, -1)  # (B, D)
        centred = coarse - self.global_mean
        residual = (centred - (centred @ self.global_basis.T) @ self.global_basis).abs().reshape(B, 3, s, s)
        residual = F.interpolate(residual, size=(H, W), mode="bilinear", align_corners=False)  # (B, 3, S, S)
        return (residual.mean(1) / self.global_scale).clamp(max=1.0)

    def _smooth(self, p: torch.Tensor) -> torch.Tensor:
        """(B, S, S) -> (B, S, S): separable Gaussian with reflected borders, as cv2.GaussianBlur."""
        k = self.kernel
        r = (len(k) - 1) // 2
        y = _reflect_pad(p[:, None], r, 3)  # (B, 1, S, S + 2r)
        y = F.conv2d(y, k.view(1, 1, 1, -1))  # (B, 1, S, S)
        y = _reflect_pad(y, r, 2)  # (B, 1, S + 2r, S)
        return F.conv2d(y, k.view(1, 1, -1, 1))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prof = (x - self.ae(x)).abs()  # (B, 3, S, S)
        if self.stack > 1:
            prof = prof.repeat(1, self.stack, 1, 1)  # (B, 3K, S, S)
        parts = [prof] if "profile" in self.inputs else []
        if "image" in self.inputs:
            parts.append(x)
        z = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, C_in, S, S)
        p = self._predict(z)
        if self.global_weight:
            p = (1.0 - self.global_weight) * p + self.global_weight * self._global(x)
        if self.sigma > 0:
            p = self._smooth(p)
        return p


def export_onnx(
    detector: Any, image_size: int, path: str | Path, threshold: float | None = None, opset: int = 18
) -> dict[str, Any]:
    """Write ``detector``'s inference graph to ``path`` (ONNX, dynamic batch axis) and its sidecar ``path`` with the
    suffix ``.json``; returns the sidecar.

    Raises:
        ValueError: the image size does not fit the detector.
    """
    path = Path(path)
    graph = InferenceGraph(detector).cpu().eval()
    if graph.sigma > 0 and (len(graph.kernel) - 1) // 2 >= image_size:
        raise ValueError(f"map_smoothing_sigma={graph.sigma} needs images larger than {image_size} px to export")
    example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    quiet = logging.getLogger("torch.onnx")  # its registry names every torchvision op it skips
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings(), padding.torch_ops():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    assert program is not None
    program.optimize()
    atomic_write(path, lambda handle: handle.write(program.model_proto.SerializeToString()))
    sidecar = {
        "format": "rl-batch-sampler-onnx/1",
        "input": {"name": INPUT, "shape": ["batch", 3, image_size, image_size], "dtype": "float32", "layout": "NCHW"},
        "normalisation": "RGB, uint8 / 255 (no mean or std): the image resized (bilinear) to the input size first",
        "output": {"name": OUTPUT, "shape": ["batch", image_size, image_size], "meaning": "defect probability in [0, 1]"},
        "image_score": "the map's maximum",
        "threshold": None if threshold is None or not math.isfinite(threshold) else float(threshold),
        "threshold_meaning": "pixels with map >= threshold are defective (the validation split's F1max threshold)",
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2))
    return sidecar
