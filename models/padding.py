"""Reflect padding, and nearest x2 upsampling into it, written by slice copies for CPU inference: the same values in
the same layout as torch's ops, so the convolution that follows computes exactly what it computed before.

On channels-last maps larger than the cache, torch's CPU ``reflection_pad2d`` and ``upsample_nearest2d`` run far
below memory speed, and the AE's decoder (nearest x2, then a reflect-padded 3x3 convolution) writes each map twice
(``benchmarks/bench_detector.py`` times the AE's loss profiles both ways).
Here the padded map is allocated once and filled with plain copies (each a run of C contiguous channels), the
upsampled one written straight into its interior. Copies do no arithmetic, so the result is bit-identical.

Only inference on the CPU takes this path (no autograd: training keeps torch's ops and their backward), and only
for channels-last maps with more than one channel; everything else goes to torch. ``ENABLED = False`` turns it
off (the tests compare both paths).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["ENABLED", "applies", "reflect_pad", "upsample2x_reflect_pad", "torch_ops", "FastPadSequential"]

ENABLED = True


@contextlib.contextmanager
def torch_ops() -> Iterator[None]:
    """Within the block, every map takes torch's own ops: what a graph export should trace (the copy path becomes
    dozens of scatter and transpose nodes that run several times slower in onnxruntime than its Pad and Resize)."""
    global ENABLED
    previous, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = previous


def applies(x: torch.Tensor, pad: int) -> bool:
    """Whether ``x`` takes the copy path: inference (no grad), CPU, a channels-last (B, C>1, H, W) map that a
    reflect pad of ``pad`` fits (``pad < H, W``, as torch requires)."""
    return (
        ENABLED
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[1] > 1
        and 0 < pad < min(x.shape[-2:])
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def _reflect_border(out: torch.Tensor, pad: int) -> torch.Tensor:
    """Fill the ``pad``-wide frame of ``out`` (B, C, H + 2p, W + 2p), interior already written, by reflection:
    rows first, then whole columns (corners included), as separable reflect padding does."""
    H, W = out.shape[-2] - 2 * pad, out.shape[-1] - 2 * pad
    for j in range(pad):
        out[:, :, j] = out[:, :, 2 * pad - j]  # top: row p + (p - j) of the padded map is the image's row p - j
        out[:, :, pad + H + j] = out[:, :, pad + H - 2 - j]  # bottom: the image's row H - 2 - j
    for j in range(pad):
        out[:, :, :, j] = out[:, :, :, 2 * pad - j]
        out[:, :, :, pad + W + j] = out[:, :, :, pad + W - 2 - j]
    return out


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, (pad,) * 4, mode="reflect")`` of a map for which :func:`applies` holds: (B, C, H, W) ->
    (B, C, H + 2p, W + 2p), channels-last."""
    B, C, H, W = x.shape
    out = torch.empty((B, C, H + 2 * pad, W + 2 * pad), dtype=x.dtype, memory_format=torch.channels_last)
    out[:, :, pad : pad + H, pad : pad + W] = x
    return _reflect_border(out, pad)


def upsample2x_reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (pad,) * 4, mode="reflect")`` in one buffer:
    (B, C, H, W) -> (B, C, 2H + 2p, 2W + 2p), channels-last (``pad < 2H, 2W``)."""
    B, C, H, W = x.shape
    out = torch.empty((B, C, 2 * H + 2 * pad, 2 * W + 2 * pad), dtype=x.dtype, memory_format=torch.channels_last)
    inner = out.permute(0, 2, 3, 1)[:, pad : pad + 2 * H, pad : pad + 2 * W]  # (B, 2H, 2W, C) view of the interior
    src = x.permute(0, 2, 3, 1)[:, :, None, :, None]  # (B, H, 1, W, 1, C): each pixel's channels, contiguous
    inner.unflatten(1, (H, 2)).unflatten(3, (W, 2)).copy_(src.expand(B, H, 2, W, 2, C))
    return _reflect_border(out, pad)


def _reflect_conv(m: nn.Module) -> int:
    """The padding of a plain ``nn.Conv2d`` with square reflect padding (0 for anything else)."""
    if type(m) is nn.Conv2d and m.padding_mode == "reflect" and isinstance(m.padding, tuple):
        p, q = m.padding
        return int(p) if p == q else 0
    return 0


def _nearest2x(m: nn.Module) -> bool:
    return type(m) is nn.Upsample and m.mode == "nearest" and m.size is None and m.scale_factor in (2, 2.0, (2.0, 2.0))


def _conv_unpadded(conv: nn.Conv2d, padded: torch.Tensor) -> torch.Tensor:
    # what nn.Conv2d does after F.pad for a padding_mode other than "zeros"
    return nn.functional.conv2d(padded, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


class FastPadSequential(nn.Sequential):
    """``nn.Sequential`` whose reflect-padded ``nn.Conv2d`` layers, and a nearest x2 ``nn.Upsample`` right before one,
    pad by :func:`reflect_pad` / :func:`upsample2x_reflect_pad` where :func:`applies` holds. The modules, their
    names and the state dict are those of the ``nn.Sequential``; outputs are bit-identical."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not ENABLED or torch.is_grad_enabled():
            return super().forward(x)
        modules = list(self)
        i = 0
        while i < len(modules):
            m = modules[i]
            nxt = modules[i + 1] if i + 1 < len(modules) else None
            p = _reflect_conv(nxt) if nxt is not None and _nearest2x(m) else 0
            # upsampling then a reflect-padded conv: x must take the copy path (at least 2 x 2) and the pad fit 2H x 2W
            if p and applies(x, 1) and p < 2 * min(x.shape[-2:]):
                assert isinstance(nxt, nn.Conv2d)
                x = _conv_unpadded(nxt, upsample2x_reflect_pad(x, p))
                i += 2
                continue
            p = _reflect_conv(m)
            if p and applies(x, p):
                assert isinstance(m, nn.Conv2d)
                x = _conv_unpadded(m, reflect_pad(x, p))
            else:
                x = m(x)
            i += 1
        return x
