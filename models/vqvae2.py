"""Two-level hierarchical VQ-VAE (VQ-VAE-2, Razavi et al. 2019) as a reconstruction baseline for anomaly detection.

The network is trained on normal images only; the anomaly map (computed elsewhere) is the reconstruction residual.
Quantising the latents to a finite codebook learned from normal data keeps the decoder from reproducing what it has
never seen: a defect is encoded with the nearest *normal* codes, so it shows up in ``|x - x_hat|``.

Layout as in the paper, scaled down for CPU speed:

* the bottom encoder maps the image to features at 1/4 resolution (two stride-2 4x4 convolutions, a 3x3 convolution,
  residual blocks); the top encoder halves them again to 1/8;
* the top latents (a 1x1 projection to ``embed_dim``) are quantised first; the top decoder upsamples the top code x2;
* the bottom latents are a 1x1 projection of ``concat(bottom features, top decoder output)``, quantised with their own
  codebook, so the bottom code only has to add the detail the top code misses;
* the decoder reads ``concat(top code upsampled x2 by a transposed convolution, bottom code)`` and upsamples x4.

Both codebooks are updated by exponential moving averages (the VQ-VAE-2 / Sonnet ``VectorQuantizerEMA``, with Laplace
smoothing of the cluster sizes), not by gradients; the encoder is pulled towards its codes by the commitment loss and the
decoder's gradient reaches the encoder through the straight-through estimator. Codes whose EMA cluster size falls below
``dead_code_threshold`` are restarted on random encoder vectors of the current batch, so the codebooks stay in use.

There are no normalisation layers, so an image's reconstruction in ``eval()`` mode does not depend on the rest of the
batch, and ``eval()`` never changes the codebooks. Inputs are floats in [0, 1]; they are centred (``x - 0.5``) inside
the network and the linear (no sigmoid) output is shifted back, so the reconstruction lives in the input's space and
trains with a plain MSE. Height and width must be multiples of 8 (the top level's stride).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VQVAE2Config", "VectorQuantizerEMA", "VQVAE2", "codes_used", "STRIDE"]

STRIDE = 8  # total down-sampling of the top level; input height and width must be multiples of it


@dataclass
class VQVAE2Config:
    """Hyperparameters of :class:`VQVAE2`.

    Args:
        in_channels: image channels (RGB: 3).
        hidden: channels of the encoders and decoders (the first encoder and last decoder stage use ``hidden // 2``).
        res_blocks: residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv, skip) at the end of every encoder and at the
            start of every decoder.
        res_channels: channels inside a residual block.
        embed_dim: dimension of the code vectors (both levels).
        n_codes: codebook size of each level.
        decay: EMA decay of the codebook statistics (the paper: 0.99).
        commitment: weight of the commitment loss ``mse(z, sg[e])`` (the paper: 0.25).
        dead_code_threshold: a code whose EMA cluster size (vectors per batch, averaged) falls below this is restarted
            on a random encoder vector of the batch; 0 turns restarts off.
        eps: Laplace smoothing of the EMA cluster sizes.
    """

    in_channels: int = 3
    hidden: int = 64  # forward+backward of 8x3x256x256 on one CPU thread: ~0.45 s (128: ~1.1 s)
    res_blocks: int = 1
    res_channels: int = 32
    embed_dim: int = 32
    n_codes: int = 256  # per level
    decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 1.0
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.hidden < 2:
            raise ValueError(f"hidden must be >= 2, got {self.hidden}")
        if self.res_blocks < 0:
            raise ValueError(f"res_blocks must be >= 0, got {self.res_blocks}")
        if self.res_channels < 1:
            raise ValueError(f"res_channels must be >= 1, got {self.res_channels}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        _check_quantizer_args(self.n_codes, self.decay, self.eps, self.dead_code_threshold)
        if not self.commitment >= 0.0:
            raise ValueError(f"commitment must be >= 0, got {self.commitment}")


def _check_quantizer_args(n_codes: int, decay: float, eps: float, dead_code_threshold: float) -> None:
    if n_codes < 2:
        raise ValueError(f"n_codes must be >= 2, got {n_codes}")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if not dead_code_threshold >= 0.0:
        raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold}")


def codes_used(codes: torch.Tensor) -> int:
    """Number of distinct codes in ``codes`` (any shape, e.g. (B, H, W))."""
    return int(torch.unique(codes).numel())


class VectorQuantizerEMA(nn.Module):
    """Nearest-neighbour vector quantiser whose codebook follows EMA statistics of the vectors assigned to it.

    The codebook (``codebook``, (n_codes, dim)), the EMA cluster sizes (``cluster_size``, (n_codes,)) and the EMA sums of
    the assigned vectors (``embed_sum``, (n_codes, dim)) are buffers, not parameters: no optimiser touches them. They
    start consistent (``codebook = embed_sum / cluster_size`` with every cluster size 1), so with the default threshold
    1.0 the first training step restarts exactly the codes no vector chose: a data-dependent initialisation.

    Args:
        dim: dimension D of the vectors (the channels of the input).
        n_codes: codebook size K.
        decay: EMA decay.
        eps: Laplace smoothing of the cluster sizes.
        dead_code_threshold: codes whose EMA cluster size falls below it are restarted in training; 0: never.
    """

    codebook: torch.Tensor
    cluster_size: torch.Tensor
    embed_sum: torch.Tensor

    def __init__(
        self, dim: int, n_codes: int, decay: float = 0.99, eps: float = 1e-5, dead_code_threshold: float = 1.0
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        _check_quantizer_args(n_codes, decay, eps, dead_code_threshold)
        self.dim, self.n_codes = dim, n_codes
        self.decay, self.eps, self.dead_code_threshold = decay, eps, dead_code_threshold
        codebook = torch.randn(n_codes, dim)  # (K, D)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(n_codes))  # (K,)
        self.register_buffer("embed_sum", codebook.clone())  # (K, D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_codes={self.n_codes}, decay={self.decay}, dead_code_threshold={self.dead_code_threshold}"

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise ``z``; in training mode also update the codebook.

        Args:
            z: encoder output, shape (B, D, H, W).

        Returns:
            ``(quantized, commitment_loss, codes)``: the nearest codes, shape (B, D, H, W), whose gradient passes
            straight through to ``z``; the scalar ``mse(z, quantized.detach())``; the code indices, (B, H, W) long.
            The returned codes and vectors are those of the codebook *before* this call's update.
        """
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"expected input of shape (B, {self.dim}, H, W), got {tuple(z.shape)}")
        B, D, H, W = z.shape
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, D).to(self.codebook.dtype)  # (N, D), N = B*H*W
        with torch.no_grad():
            dist = (
                flat.pow(2).sum(1, keepdim=True)  # (N, 1)
                - 2.0 * flat @ self.codebook.t()  # (N, K)
                + self.codebook.pow(2).sum(1)[None, :]  # (1, K)
            )  # (N, K)
            codes_flat = dist.argmin(dim=1)  # (N,)
        q = F.embedding(codes_flat, self.codebook).view(B, H, W, D).permute(0, 3, 1, 2).to(z.dtype)  # (B, D, H, W)
        commitment_loss = F.mse_loss(z, q.detach())  # scalar
        quantized = z + (q - z).detach()  # (B, D, H, W), straight-through: forward q, gradient to z
        if self.training:
            self._update(flat, codes_flat)
        return quantized, commitment_loss, codes_flat.view(B, H, W)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes_flat: torch.Tensor) -> None:
        """EMA update of the statistics and the codebook, then the restart of dead codes."""
        counts = torch.bincount(codes_flat, minlength=self.n_codes).to(flat.dtype)  # (K,)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes_flat, flat)  # (K, D)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)  # (K,)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)  # (K, D)
        n = self.cluster_size.sum()  # scalar
        smoothed = (self.cluster_size + self.eps) / (n + self.n_codes * self.eps) * n  # (K,), Laplace smoothing
        self.codebook.copy_(self.embed_sum / smoothed[:, None])  # (K, D)

        dead = (self.cluster_size < self.dead_code_threshold).nonzero().squeeze(1)  # (n_dead,)
        n_dead, N = int(dead.numel()), flat.shape[0]
        if n_dead == 0:
            return
        if n_dead <= N:
            pick = torch.randperm(N, device=flat.device)[:n_dead]  # (n_dead,), distinct vectors
        else:
            pick = torch.randint(N, (n_dead,), device=flat.device)  # (n_dead,)
        fresh = flat[pick]  # (n_dead, D)
        self.codebook[dead] = fresh  # (n_dead, D)
        # a restarted code counts as holding `threshold` vectors: it survives if it wins as many per batch as that
        self.cluster_size[dead] = self.dead_code_threshold  # (n_dead,)
        self.embed_sum[dead] = fresh * self.dead_code_threshold  # (n_dead, D)


class _ResBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``."""

    def __init__(self, channels: int, res_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),  # not in place: x is needed for the skip
            nn.Conv2d(channels, res_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(res_channels, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)  # (B, C, H, W)


def _res_stack(channels: int, cfg: VQVAE2Config) -> list[nn.Module]:
    return [_ResBlock(channels, cfg.res_channels) for _ in range(cfg.res_blocks)]


def _encoder(c_in: int, stride: int, cfg: VQVAE2Config) -> nn.Sequential:
    h = cfg.hidden
    if stride == 4:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, h // 2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(h // 2, h, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(h, h, kernel_size=3, padding=1),
        ]
    else:  # stride 2
        layers = [
            nn.Conv2d(c_in, h // 2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(h // 2, h, kernel_size=3, padding=1),
        ]
    return nn.Sequential(*layers, *_res_stack(h, cfg), nn.ReLU(inplace=True))


def _decoder(c_in: int, c_out: int, stride: int, cfg: VQVAE2Config) -> nn.Sequential:
    h = cfg.hidden
    layers: list[nn.Module] = [nn.Conv2d(c_in, h, kernel_size=3, padding=1), *_res_stack(h, cfg), nn.ReLU(inplace=True)]
    if stride == 4:
        layers += [
            nn.ConvTranspose2d(h, h // 2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(h // 2, c_out, kernel_size=4, stride=2, padding=1),
        ]
    else:  # stride 2
        layers.append(nn.ConvTranspose2d(h, c_out, kernel_size=4, stride=2, padding=1))
    return nn.Sequential(*layers)


class VQVAE2(nn.Module):
    """Two-level VQ-VAE: top code at 1/8, bottom code at 1/4 of the input resolution.

    Args:
        config: the hyperparameters; the defaults are sized for CPU training on 256x256 images.
    """

    def __init__(self, config: VQVAE2Config | None = None) -> None:
        super().__init__()
        self.config = cfg = config or VQVAE2Config()
        d = cfg.embed_dim
        self.enc_b = _encoder(cfg.in_channels, 4, cfg)
        self.enc_t = _encoder(cfg.hidden, 2, cfg)
        self.quantize_conv_t = nn.Conv2d(cfg.hidden, d, kernel_size=1)
        self.quantize_t = VectorQuantizerEMA(d, cfg.n_codes, cfg.decay, cfg.eps, cfg.dead_code_threshold)
        self.dec_t = _decoder(d, d, 2, cfg)
        self.quantize_conv_b = nn.Conv2d(cfg.hidden + d, d, kernel_size=1)
        self.quantize_b = VectorQuantizerEMA(d, cfg.n_codes, cfg.decay, cfg.eps, cfg.dead_code_threshold)
        self.upsample_t = nn.ConvTranspose2d(d, d, kernel_size=4, stride=2, padding=1)
        self.dec = _decoder(2 * d, cfg.in_channels, 4, cfg)

    @property
    def stride(self) -> int:
        """Total down-sampling factor; input height and width must be multiples of it."""
        return STRIDE

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Encode, quantise both levels and decode ``x``.

        Args:
            x: float images in [0, 1], shape (B, C, H, W) with H and W multiples of 8.

        Returns:
            ``(recon, latent_loss, (codes_top, codes_bottom))``: the reconstruction, (B, C, H, W), linear output in the
            input's space; the scalar ``commitment * (commitment loss of the top + of the bottom level)``; the code
            indices, (B, H/8, W/8) and (B, H/4, W/4), long.
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if H % STRIDE or W % STRIDE:
            raise ValueError(f"input height and width must be multiples of {STRIDE}, got shape {tuple(x.shape)}")
        enc_b = self.enc_b(x - 0.5)  # (B, hidden, H/4, W/4)
        enc_t = self.enc_t(enc_b)  # (B, hidden, H/8, W/8)
        quant_t, loss_t, codes_t = self.quantize_t(self.quantize_conv_t(enc_t))  # (B, D, H/8, W/8), (), (B, H/8, W/8)
        dec_t = self.dec_t(quant_t)  # (B, D, H/4, W/4)
        z_b = self.quantize_conv_b(torch.cat([enc_b, dec_t], dim=1))  # (B, D, H/4, W/4)
        quant_b, loss_b, codes_b = self.quantize_b(z_b)  # (B, D, H/4, W/4), (), (B, H/4, W/4)
        up_t = self.upsample_t(quant_t)  # (B, D, H/4, W/4)
        recon = self.dec(torch.cat([up_t, quant_b], dim=1)) + 0.5  # (B, C, H, W)
        latent_loss = self.config.commitment * (loss_t + loss_b)  # scalar
        return recon, latent_loss, (codes_t, codes_b)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction alone, without gradients (call in ``eval()`` mode for anomaly maps); (B, C, H, W)."""
        return self(x)[0]
