"""Dilated fully convolutional predictor: loss profiles -> per-pixel defect probability.

The paper (§III.D, §IV.C) segments in the loss-profile space rather than in RGB: 3x3 convolutions with
dilation rates 1, 2, 4, 8 (padding = dilation, so the resolution is kept and the receptive field grows to
31x31 pixels), a 1x1 head and a sigmoid. It trains on a weighted binary cross-entropy (eq. 8) whose weight
``alpha`` on the normal pixels decays from 1.0 to 0.15, so that the rare defect pixels count more later on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.resize import resize_bilinear
from models.validation import check_fields

__all__ = [
    "PredictorConfig",
    "Predictor",
    "normal_weight",
    "weighted_bce",
    "weighted_focal_loss",
    "soft_dice_loss",
]


@dataclass
class PredictorConfig:
    """Hyperparameters of :class:`Predictor`.

    Args:
        in_channels: loss-profile channels (3 per profile; 3*K for a stack of K profiles).
        width: channels of every hidden layer.
        dilations: one 3x3 convolution per rate; receptive field ``1 + 2 * sum(dilations)``.
        batch_norm: normalise after each hidden convolution. Loss profiles are small numbers (a few
            hundredths); normalising the first layer's output makes training insensitive to their scale.
        norm: the normalisation when ``batch_norm`` is on: "batch" (BatchNorm2d, the paper) or "group"
            (GroupNorm with 8 channels per group: the same in training and eval mode, whatever the batch holds).
    """

    in_channels: int = 3
    width: int = 16  # 16 keeps 256x256 inference within ~10 ms on 2 CPU cores
    dilations: tuple[int, ...] = (1, 2, 4, 8)  # receptive field grows, resolution kept
    batch_norm: bool = True
    norm: str = "batch"
    downsample: int = 1  # 1: the paper's full-resolution FCN; 2^L: an encoder-decoder with the dilations at 1/2^L
    padding_mode: str = "zeros"  # "zeros" (paper) | "reflect" | "replicate": no border stripes in the maps

    def __post_init__(self) -> None:
        check_fields(self, "predictor.")
        self.dilations = tuple(int(d) for d in self.dilations)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        if len(self.dilations) < 1 or any(d < 1 for d in self.dilations):
            raise ValueError(f"dilations must be a non-empty tuple of positive ints, got {self.dilations}")
        if self.downsample not in (1, 2, 4, 8, 16):
            raise ValueError(f"downsample must be one of 1, 2, 4, 8, 16, got {self.downsample}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {self.norm!r}")
        if self.padding_mode not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"padding_mode must be 'zeros', 'reflect' or 'replicate', got {self.padding_mode!r}")

    @property
    def receptive_field(self) -> int:
        """Side of the square receptive field in pixels."""
        # each stride-2 3x3 convolution at level l adds 2 * 2^(l-1) pixels; a dilated layer at 1/2^L adds 2 * d * 2^L
        return 1 + 2 * (self.downsample - 1) + 2 * self.downsample * sum(self.dilations)

    @property
    def levels(self) -> int:
        """Number of stride-2 encoder levels, log2(downsample)."""
        return self.downsample.bit_length() - 1


class _Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose reflect padding falls back to replicate on a map too small to reflect (padding >= side):
    at 1/8 resolution a 64-px image is an 8-cell map, which a dilation-8 layer cannot reflect 8 cells deep."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode == "reflect" and min(x.shape[-2:]) <= max(self._reversed_padding_repeated_twice):
            x = nn.functional.pad(x, self._reversed_padding_repeated_twice, mode="replicate")
            return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return super().forward(x)


class Predictor(nn.Module):
    """FCN of dilated 3x3 convolutions, a 1x1 head and a sigmoid.

    With ``downsample = 2^L > 1`` it is a small encoder-decoder around the same dilated body: L stride-2
    convolutions, the dilated layers at 1/2^L resolution (a receptive field of hundreds of pixels, so the network can
    compare a region with the rest of the image), then bilinear upsampling with the encoder's features added back
    level by level (U-Net skips) up to half resolution, where the 1x1 head predicts; the logits are upsampled to the
    input size.

    Args:
        config: the hyperparameters.
    """

    def __init__(self, config: PredictorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PredictorConfig()
        pad: Any = config.padding_mode  # a validated str; torch's stubs want a Literal
        bias = not config.batch_norm

        def block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            layers: list[nn.Module] = [
                _Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=bias, padding_mode=pad)
            ]
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(c_out) if config.norm == "batch" else nn.GroupNorm(max(1, c_out // 8), c_out))
            layers.append(nn.ReLU(inplace=True))
            return nn.Sequential(*layers)

        self.widths = [config.width * min(2**level, 2) for level in range(config.levels)]  # per encoder level
        self.down = nn.ModuleList()
        c = config.in_channels
        for w in self.widths:
            self.down.append(block(c, w, stride=2))
            c = w
        body: list[nn.Sequential] = []
        w_body = self.widths[-1] if self.widths else config.width
        for d in config.dilations:
            body.append(block(c, w_body, dilation=d))
            c = w_body
        # the paper's layout (downsample 1) keeps its flat Sequential: body.0.weight, body.1, ...
        self.body = nn.Sequential(*[m for b in body for m in b]) if not self.widths else nn.Sequential(*body)
        self.up = nn.ModuleList()
        for w in reversed(self.widths[:-1]):  # from the second-deepest level up to half resolution
            self.up.append(block(c + w, w))
            c = w
        self.head = nn.Conv2d(c, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel defect probabilities.

        Args:
            x: loss profiles, shape (B, in_channels, H, W); H and W multiples of ``downsample``.

        Returns:
            Probabilities, shape (B, 1, H, W).
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        return torch.sigmoid(self.logits(x))  # (B, 1, H, W)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores, shape (B, 1, H, W)."""
        H, W = x.shape[-2:]
        skips = []
        h = x
        for down in self.down:
            h = down(h)  # (B, w_l, H / 2^l, W / 2^l)
            skips.append(h)
        h = self.body(h)  # (B, w_L, H / 2^L, W / 2^L)
        for up, skip in zip(self.up, reversed(skips[:-1])):
            h = resize_bilinear(h, skip.shape[-2:])  # (B, w, skip's H, skip's W)
            h = up(torch.cat([h, skip], dim=1))  # (B, w_l, H / 2^l, W / 2^l)
        z = self.head(h)  # (B, 1, H / 2, W / 2) or (B, 1, H, W) for downsample 1
        if self.down:
            z = resize_bilinear(z, (H, W))  # (B, 1, H, W)
        return z


def _clamped_probabilities_and_labels(
    pred: torch.Tensor, target: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy losses' inputs: pred clamped to ``[eps, 1 - eps]`` (finite logs) and target in its dtype."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    p = pred.clamp(eps, 1.0 - eps)
    return p, target.to(p.dtype)


def normal_weight(updates: int, start: float, end: float, decay_updates: int) -> float:
    """eq. 8's ``alpha`` after ``updates`` predictor updates: linear from ``start`` to the floor ``end`` over
    ``decay_updates`` updates (0: ``start`` throughout), so that the rare defect pixels count more later on."""
    if decay_updates <= 0:
        return float(start)
    t = min(1.0, updates / decay_updates)
    return float(start + t * (end - start))


def weighted_bce(pred: torch.Tensor, target: torch.Tensor, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """Weighted binary cross-entropy of the paper's eq. 8.

    ``-mean[y log p + alpha (1 - y) log(1 - p)]`` over every pixel of every image in the batch;
    ``alpha = 1`` is the plain binary cross-entropy.

    Args:
        pred: probabilities, any shape (e.g. (B, 1, H, W)); clamped to ``[eps, 1 - eps]`` before the logs.
        target: labels in {0, 1} (or soft labels in [0, 1]), same shape as ``pred``.
        alpha: weight of the normal (y = 0) pixels.
        eps: clamp margin that keeps the logs finite.

    Returns:
        The scalar loss.
    """
    p, y = _clamped_probabilities_and_labels(pred, target, eps)
    return -(y * torch.log(p) + alpha * (1.0 - y) * torch.log1p(-p)).mean()


def weighted_focal_loss(
    pred: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float = 2.0, eps: float = 1e-6
) -> torch.Tensor:
    """Eq. 8 with the focal modulation of Lin et al. (2017), as DRAEM trains its discriminative network.

    ``-mean[y (1 - p)^gamma log p + alpha (1 - y) p^gamma log(1 - p)]``: each pixel's term is scaled down by how well it
    is already classified, so the hard pixels (a faint defect's interior, a bright normal streak) weigh more than the
    many easy ones; ``gamma = 0`` is :func:`weighted_bce`.

    Args:
        pred: probabilities, any shape; clamped to ``[eps, 1 - eps]`` before the logs.
        target: labels in {0, 1}, same shape as ``pred``.
        alpha: weight of the normal (y = 0) pixels, as in eq. 8.
        gamma: the focusing exponent (>= 0).
        eps: clamp margin that keeps the logs finite.

    Returns:
        The scalar loss.
    """
    p, y = _clamped_probabilities_and_labels(pred, target, eps)
    positive = y * (1.0 - p).pow(gamma) * torch.log(p)
    negative = alpha * (1.0 - y) * p.pow(gamma) * torch.log1p(-p)
    return -(positive + negative).mean()


def soft_dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - 2|P∩Y| / (|P| + |Y|)`` over the whole batch (soft, on probabilities).

    Pooled over the batch rather than per image, so crops without any defect pixel do not dominate; it rewards
    overlap directly, which the per-pixel BCE does not (pixel F1 is a Dice score).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    y = target.to(pred.dtype)
    inter = (pred * y).sum()
    return 1.0 - (2.0 * inter + eps) / (pred.sum() + y.sum() + eps)
