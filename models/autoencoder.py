"""Shallow convolutional autoencoder whose per-pixel residual is the loss profile.

The paper (§III.C, §IV.C) uses a lightweight, symmetric CNN encoder-decoder without skip connections,
LeakyReLU(0.2), BatchNorm2d(affine=False) and Dropout(p=0.3) before the bottleneck, trained with MSE on
64x64 RGB patches. Skip connections are left out on purpose: they would let the network copy defects
through, and the residual ``|x - x_hat|`` would no longer highlight them.

The network is fully convolutional, so the same weights that train on 64x64 patches reconstruct whole
256x256 images for the loss profiles. Height and width must be multiples of the total stride
(``2 ** len(widths)``). For loss profiles call it in ``eval()`` mode: BatchNorm then uses its running
statistics and dropout is off, so a profile does not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.padding import FastPadSequential
from models.validation import check_fields

__all__ = ["AutoencoderConfig", "Autoencoder", "NORMS", "OUTPUTS", "PADDING_MODES", "UPSAMPLES"]

NORMS = ("batch", "none")
PADDING_MODES = ("zeros", "reflect")
UPSAMPLES = ("transpose", "resize")
OUTPUTS = ("sigmoid", "linear")


@dataclass
class AutoencoderConfig:
    """Hyperparameters of :class:`Autoencoder`.

    Args:
        in_channels: image channels (RGB: 3).
        widths: channels of the encoder stages; each stage halves the resolution, so the total stride is
            ``2 ** len(widths)``. The decoder mirrors them.
        latent_channels: channels of the bottleneck (spatial size H/stride x W/stride).
        dropout: dropout probability applied just before the bottleneck (the paper: 0.3).
        negative_slope: LeakyReLU slope (the paper: 0.2).
        norm: normalisation after each hidden convolution. "batch" (the paper: BatchNorm2d(affine=False)) uses
            batch statistics in training, so an update on patches of one image normalises by that image alone;
            "none" makes the training step independent of how the batch was composed.
        padding_mode: padding of the encoder and bottleneck convolutions; "reflect" avoids the bright frame that
            zero padding leaves in the residual along the image border.
        upsample: "transpose" (4x4 transposed convolutions) or "resize" (nearest x2 then a 3x3 convolution),
            which has no checkerboard pattern in the residual.
        output: "sigmoid" (the paper: reconstructions in (0, 1)) or "linear" (no squashing). Without BatchNorm, Adam
            can drive a sigmoid output into saturation on a dark category within a few dozen updates (every pixel 0,
            no gradient, the "loss profile" is the image itself); a linear output always passes the MSE's gradient.
    """

    in_channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128)
    latent_channels: int = 32  # 8x8x32 code for a 64x64x3 patch: ~6x compression, keeps the residual informative
    dropout: float = 0.3
    negative_slope: float = 0.2
    norm: str = "batch"  # one of NORMS
    padding_mode: str = "zeros"  # "zeros" | "reflect" (encoder and bottleneck convolutions)
    upsample: str = "transpose"  # one of UPSAMPLES
    output: str = "sigmoid"  # one of OUTPUTS

    def __post_init__(self) -> None:
        check_fields(self, "ae.")
        self.widths = tuple(int(w) for w in self.widths)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if len(self.widths) < 1 or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths}")
        if self.latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {self.latent_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {self.padding_mode!r}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLES)}, got {self.upsample!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")

    @property
    def stride(self) -> int:
        """Total down-sampling factor; input height and width must be multiples of it."""
        return 2 ** len(self.widths)


def _pad(cfg: AutoencoderConfig) -> Any:
    return cfg.padding_mode  # a validated str; torch's stubs want a Literal


def _norm(c: int, kind: str) -> nn.Module:
    return nn.BatchNorm2d(c, affine=False) if kind == "batch" else nn.Identity()


def _down(c_in: int, c_out: int, cfg: AutoencoderConfig) -> nn.Sequential:
    # 4x4 kernel with stride 2: halves the resolution without the checkerboard of odd kernels
    return FastPadSequential(
        nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=cfg.norm == "none", padding_mode=_pad(cfg)),
        _norm(c_out, cfg.norm),
        nn.LeakyReLU(cfg.negative_slope, inplace=True),
    )


def _upsampler(c_in: int, c_out: int, cfg: AutoencoderConfig, bias: bool) -> list[nn.Module]:
    if cfg.upsample == "transpose":
        return [nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=bias)]
    return [
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=bias, padding_mode=_pad(cfg)),
    ]


def _up(c_in: int, c_out: int, cfg: AutoencoderConfig) -> nn.Sequential:
    return FastPadSequential(
        *_upsampler(c_in, c_out, cfg, bias=cfg.norm == "none"),
        _norm(c_out, cfg.norm),
        nn.LeakyReLU(cfg.negative_slope, inplace=True),
    )


class Autoencoder(nn.Module):
    """Symmetric CNN encoder-decoder without skip connections, for inputs in [0, 1] (sigmoid or linear output).

    Args:
        config: the hyperparameters; defaults give the paper's kind of network sized for CPU speed.
    """

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AutoencoderConfig()
        slope, pad, bias = config.negative_slope, _pad(config), config.norm == "none"
        chans = (config.in_channels, *config.widths)
        self.encoder = FastPadSequential(*[_down(chans[i], chans[i + 1], config) for i in range(len(config.widths))])
        # Dropout before the bottleneck (paper §III.C): diverse reconstructions, no reset needed
        self.bottleneck = FastPadSequential(
            nn.Dropout(config.dropout),
            nn.Conv2d(config.widths[-1], config.latent_channels, kernel_size=3, padding=1, bias=bias, padding_mode=pad),
            _norm(config.latent_channels, config.norm),
            nn.LeakyReLU(slope, inplace=True),
            nn.Conv2d(config.latent_channels, config.widths[-1], kernel_size=3, padding=1, bias=bias, padding_mode=pad),
            _norm(config.widths[-1], config.norm),
            nn.LeakyReLU(slope, inplace=True),
        )
        rev = chans[::-1]  # (w_last, ..., w_0, in_channels)
        ups: list[nn.Module] = [_up(rev[i], rev[i + 1], config) for i in range(len(config.widths) - 1)]
        # Last stage: plain upsampling conv (+ sigmoid, so reconstructions live in [0, 1] like the inputs)
        ups += _upsampler(rev[-2], rev[-1], config, bias=True)
        self.decoder = FastPadSequential(*ups)

    @property
    def stride(self) -> int:
        """Total down-sampling factor; input height and width must be multiples of it."""
        return self.config.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``.

        Args:
            x: float images in [0, 1], shape (B, C, H, W) with H and W multiples of :attr:`stride`.

        Returns:
            The reconstruction, shape (B, C, H, W): values in (0, 1) with the sigmoid output, unbounded with "linear".
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        s = self.stride
        if H % s or W % s:
            raise ValueError(f"input height and width must be multiples of the total stride {s}, got {H}x{W}")
        z = self.encoder(x)  # (B, widths[-1], H/s, W/s)
        z = self.bottleneck(z)  # (B, widths[-1], H/s, W/s)
        out = self.decoder(z)  # (B, C, H, W)
        return torch.sigmoid(out) if self.config.output == "sigmoid" else out
