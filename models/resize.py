"""Bilinear resizing whose CPU backward runs on torch's fast kernel: the same values and gradients, bit for bit.

The predictors' decoders upsample features, concatenate them with an encoder's and, at the end, resize one-channel
logits to the image; both hand torch's CPU backward a gradient it runs on a slow path (see :class:`_BilinearResize`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["resize_bilinear"]


class _BilinearResize(torch.autograd.Function):
    """torch's bilinear resize with its CPU backward given a gradient laid out the way its fast kernels want.

    torch's CPU backward of a bilinear resize is fast for a contiguous gradient, most of all in the channels-last
    layout (a kernel vectorised over channels). Decoders hand it two slower cases: upsampled features whose gradient
    comes out of ``torch.cat``'s backward as a strided slice (a generic path, several times slower;
    ``benchmarks/bench_detector.py`` times both), made contiguous here in the layout torch's backward keeps; and
    one-channel logits (B x 1 x H/2 x W/2 -> H x W), which torch walks one plane at a time, run here on the batch as
    channels. Each plane's sums are the same, in the same order: the gradients are bit-identical in the tests and in
    seeded runs."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        ctx.input_shape, ctx.size = tuple(z.shape), tuple(size)
        return nn.functional.interpolate(z, size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        B, C, h, w = ctx.input_shape
        if C > 1:
            channels_last = grad.stride(1) < grad.stride(3)  # torch's own backward keeps the gradient's layout
            grad = grad.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            return torch.ops.aten.upsample_bilinear2d_backward(grad, list(ctx.size), [B, C, h, w], False), None
        planes = grad.reshape(1, B, *ctx.size).contiguous(memory_format=torch.channels_last)  # (1, B, H, W)
        grad_in = torch.ops.aten.upsample_bilinear2d_backward(planes, list(ctx.size), [1, B, h, w], False)
        return grad_in.reshape(B, C, h, w).contiguous(), None  # (B, 1, h, w)


def resize_bilinear(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``interpolate(z, size, mode="bilinear", align_corners=False)`` of a (B, C, h, w) batch; on the CPU with
    gradients through :class:`_BilinearResize` (same values and gradients, a faster backward)."""
    if z.device.type == "cpu" and z.requires_grad and torch.is_grad_enabled():
        return _BilinearResize.apply(z, tuple(size))
    return nn.functional.interpolate(z, size=size, mode="bilinear", align_corners=False)
