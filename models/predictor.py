"""Dilated fully convolutional predictor: loss profiles -> per-pixel defect probability.

The paper (§III.D, §IV.C) segments in the loss-profile space rather than in RGB: 3x3 convolutions with
dilation rates 1, 2, 4, 8 (padding = dilation, so the resolution is kept and the receptive field grows to
31x31 pixels), a 1x1 head and a sigmoid. It trains on a weighted binary cross-entropy (eq. 8) whose weight
``alpha`` on the normal pixels decays from 1.0 to 0.15, so that the rare defect pixels count more later on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["PredictorConfig", "Predictor", "weighted_bce", "soft_dice_loss"]


@dataclass
class PredictorConfig:
    """Hyperparameters of :class:`Predictor`.

    Args:
        in_channels: loss-profile channels (3 per profile; 3*K for a stack of K profiles).
        width: channels of every hidden layer.
        dilations: one 3x3 convolution per rate; receptive field ``1 + 2 * sum(dilations)``.
        batch_norm: BatchNorm2d after each hidden convolution. Loss profiles are small numbers (a few
            hundredths); normalising the first layer's output makes training insensitive to their scale.
    """

    in_channels: int = 3
    width: int = 16  # 16 keeps 256x256 inference within ~10 ms on 2 CPU cores
    dilations: tuple[int, ...] = (1, 2, 4, 8)  # receptive field grows, resolution kept
    batch_norm: bool = True
    downsample: int = 1  # 1: the paper's full-resolution FCN; 2: a stride-2 stem, dilations at half resolution
    padding_mode: str = "zeros"  # "zeros" (paper) | "reflect": no border stripes in the maps

    def __post_init__(self) -> None:
        self.dilations = tuple(int(d) for d in self.dilations)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        if len(self.dilations) < 1 or any(d < 1 for d in self.dilations):
            raise ValueError(f"dilations must be a non-empty tuple of positive ints, got {self.dilations}")
        if self.downsample not in (1, 2):
            raise ValueError(f"downsample must be 1 or 2, got {self.downsample}")
        if self.padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {self.padding_mode!r}")

    @property
    def receptive_field(self) -> int:
        """Side of the square receptive field in pixels."""
        if self.downsample == 1:
            return 1 + 2 * sum(self.dilations)
        return 3 + 4 * sum(self.dilations)  # stride-2 3x3 stem, then dilated 3x3 layers at half resolution


class Predictor(nn.Module):
    """FCN of dilated 3x3 convolutions, a 1x1 head and a sigmoid.

    Args:
        config: the hyperparameters.
    """

    def __init__(self, config: PredictorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PredictorConfig()
        layers: list[nn.Module] = []
        c = config.in_channels
        pad, bias = config.padding_mode, not config.batch_norm

        def block(conv: nn.Conv2d) -> None:
            layers.append(conv)
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(config.width))
            layers.append(nn.ReLU(inplace=True))

        if config.downsample > 1:
            block(nn.Conv2d(c, config.width, kernel_size=3, stride=config.downsample, padding=1, bias=bias, padding_mode=pad))
            c = config.width
        for d in config.dilations:
            block(nn.Conv2d(c, config.width, kernel_size=3, padding=d, dilation=d, bias=bias, padding_mode=pad))
            c = config.width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel defect probabilities.

        Args:
            x: loss profiles, shape (B, in_channels, H, W), any H and W.

        Returns:
            Probabilities, shape (B, 1, H, W).
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        return torch.sigmoid(self.logits(x))  # (B, 1, H, W)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores, shape (B, 1, H, W); H and W must be even when ``downsample = 2``."""
        H, W = x.shape[-2:]
        h = self.body(x)  # (B, width, H / downsample, W / downsample)
        z = self.head(h)  # (B, 1, H / downsample, W / downsample)
        if self.config.downsample > 1:
            z = nn.functional.interpolate(z, size=(H, W), mode="bilinear", align_corners=False)  # (B, 1, H, W)
        return z


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
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    p = pred.clamp(eps, 1.0 - eps)
    y = target.to(p.dtype)
    return -(y * torch.log(p) + alpha * (1.0 - y) * torch.log1p(-p)).mean()


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
