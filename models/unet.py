"""U-Net (Ronneberger et al., 2015): the paper's supervised baseline (Tables II-III).

A from-scratch U-Net that maps an RGB image straight to defect logits, trained on the same few labelled images the
predictor sees (k_shot anomalies per type plus the normal pool). It has no autoencoder and no sampler: it shows what
plain supervision on ~40 images reaches. The classic shape, scaled for the CPU: ``levels`` stride-2 stages, two 3x3
convolutions per stage, skip connections by concatenation, bilinear upsampling (no checkerboard) and a 1x1 head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from models.resize import resize_bilinear

__all__ = ["UNetConfig", "UNet"]

NORMS = ("batch", "group")


@dataclass
class UNetConfig:
    """Hyperparameters of :class:`UNet`.

    Args:
        in_channels: image channels (RGB: 3).
        width: channels of the first stage; stage l has ``width * 2**l``.
        levels: stride-2 stages; height and width must be multiples of ``2**levels``.
        norm: "batch" (Ronneberger's later practice) or "group" (8 channels per group: independent of the batch).
        padding_mode: padding of every 3x3 convolution; "reflect" leaves no border frame in the maps.
    """

    in_channels: int = 3
    width: int = 16  # 16-32-64-128-256 with 4 levels: ~1.9 M weights, ~0.1 s per 256x256 image forward on one core
    levels: int = 4
    norm: str = "batch"
    padding_mode: str = "reflect"

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        if not 1 <= self.levels <= 6:
            raise ValueError(f"levels must be in 1..6, got {self.levels}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.padding_mode not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"padding_mode must be 'zeros', 'reflect' or 'replicate', got {self.padding_mode!r}")

    @property
    def stride(self) -> int:
        return 2**self.levels


def _double_conv(cin: int, cout: int, config: UNetConfig) -> nn.Sequential:
    def norm() -> nn.Module:
        return nn.BatchNorm2d(cout) if config.norm == "batch" else nn.GroupNorm(max(cout // 8, 1), cout)

    pad: Any = config.padding_mode  # a validated str; torch's stubs want a Literal

    def conv(c: int) -> nn.Conv2d:
        return nn.Conv2d(c, cout, kernel_size=3, padding=1, padding_mode=pad, bias=False)

    return nn.Sequential(conv(cin), norm(), nn.ReLU(inplace=True), conv(cout), norm(), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Encoder (max-pool stages) - bottleneck - decoder (bilinear x2, concatenated skip, double conv) - 1x1 head.

    ``forward`` returns logits; :meth:`probabilities` the sigmoid.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNetConfig()
        widths = [config.width * 2**level for level in range(config.levels + 1)]
        self.inc = _double_conv(config.in_channels, widths[0], config)
        self.down = nn.ModuleList(_double_conv(widths[i], widths[i + 1], config) for i in range(config.levels))
        self.up = nn.ModuleList(
            _double_conv(widths[i + 1] + widths[i], widths[i], config) for i in reversed(range(config.levels))
        )
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> (B, 1, H, W) logits; H and W multiples of ``2**levels``."""
        B, C, H, W = x.shape
        s = self.config.stride
        if H % s or W % s:
            raise ValueError(f"UNet input height and width must be multiples of {s}, got {H}x{W}")
        skips = [self.inc(x)]  # (B, w, H, W)
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))  # (B, w * 2^l, H / 2^l, W / 2^l)
        h = skips.pop()  # (B, w * 2^L, H / 2^L, W / 2^L)
        for up in self.up:
            skip = skips.pop()
            h = resize_bilinear(h, skip.shape[-2:])  # (B, ., h * 2, w * 2)
            h = up(torch.cat([h, skip], dim=1))  # (B, w * 2^l, H / 2^l, W / 2^l)
        return self.head(h)  # (B, 1, H, W)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W) defect probabilities in [0, 1]."""
        return torch.sigmoid(self(x))
