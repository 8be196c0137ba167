"""The paper's baselines (Tables II-III) as trainers that evaluate like :class:`models.detector.Detector`.

* :class:`UNetBaseline`: a supervised U-Net on exactly the predictor's labelled files (k_shot anomalies per defect type
  plus the normal pool), the paper's weighted BCE (eq. 8, alpha decaying 1.0 -> 0.15), flips and small shifts.
* :class:`VQVAE2Baseline`: an unsupervised two-level VQ-VAE on the normal training images; the anomaly map is a
  reconstruction residual (``map_residual``: L1 by default, L2 or 1 - SSIM), Gaussian-smoothed as the method's maps are.

Each exposes what evaluation needs of a detector: ``anomaly_map(images) -> (N, H, W)``, ``state_dict`` /
``load_state_dict``, ``save`` and ``load_weights`` (``torch.load(weights_only=True)``), so evaluate.py treats every
method alike. Training is one ``update()`` at a time, so the caller owns the loop (progress, validation, checkpoints).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from models.detector import smooth_maps
from models.detector.inputs import window_on
from models.predictor import normal_weight, weighted_bce
from models.residual import RESIDUALS, residual_map
from models.runtime import atomic_torch_save, plain
from models.unet import UNet, UNetConfig
from models.validation import check_dict, check_fields
from models.vqvae2 import VQVAE2, VQVAE2Config, codes_used

__all__ = ["BASELINES", "Baseline", "UNetBaseline", "UNetBaselineConfig", "VQVAE2Baseline", "VQVAE2BaselineConfig"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "rl_batch_sampler.baseline"
CHECKPOINT_VERSION = 1


@dataclass
class UNetBaselineConfig:
    """Training of :class:`UNetBaseline`.

    Args:
        net: the U-Net's config (a dict of :class:`UNetConfig` fields is accepted).
        lr: Adam learning rate.
        batch_size: images per update.
        alpha_start, alpha_end, alpha_decay_updates: the paper's weighted BCE: the weight of normal pixels decays
            linearly from ``alpha_start`` to ``alpha_end`` over ``alpha_decay_updates`` updates (0: constant).
        crop_size: side of the random crops it trains on (fully convolutional, so it predicts whole images at
            inference); 0: whole images.
        positive_fraction: share of crops centred (with jitter up to a quarter crop) on a random defect pixel of a
            random labelled anomaly, as the method's predictor samples its crops; the rest are uniform.
        flip: random horizontal and vertical flips of image and mask together.
        max_shift: with whole images (``crop_size`` 0), random shifts of up to this many pixels (reflect-padded).
        map_smoothing_sigma: Gaussian sigma (pixels) applied to the probability maps; 0: none.
        inference_batch_size: images per forward in :meth:`anomaly_map`.
        device: torch device.
    """

    net: UNetConfig = field(default_factory=UNetConfig)
    lr: float = 1e-3
    batch_size: int = 8
    crop_size: int = 128  # a 256x256 update costs ~4x a 128x128 one: 2.5 s vs 0.65 s at batch 8 on one core
    positive_fraction: float = 0.5
    alpha_start: float = 1.0
    alpha_end: float = 0.15
    alpha_decay_updates: int = 1000
    flip: bool = True
    max_shift: int = 16
    map_smoothing_sigma: float = 4.0  # as the method's default preset and anomalib's maps
    inference_batch_size: int = 8
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.net, dict):
            self.net = UNetConfig(**check_dict(self.net, UNetConfig, "net."))
        check_fields(self)
        _check_common(self)
        if self.alpha_start < 0 or self.alpha_end < 0 or self.alpha_decay_updates < 0:
            raise ValueError("alpha_start, alpha_end and alpha_decay_updates must be >= 0")
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {self.max_shift}")
        if self.crop_size < 0 or self.crop_size % self.net.stride:
            raise ValueError(f"crop_size must be 0 or a positive multiple of {self.net.stride}, got {self.crop_size}")
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {self.positive_fraction}")


@dataclass
class VQVAE2BaselineConfig:
    """Training of :class:`VQVAE2Baseline`.

    Args:
        net: the VQ-VAE-2's config (a dict of :class:`VQVAE2Config` fields is accepted).
        lr: Adam learning rate.
        batch_size: crops per update.
        crop_size: side of the random crops of normal images it trains on (the network is fully convolutional, so it
            reconstructs whole images at inference); 0: whole images.
        map_residual: the anomaly map, per pixel (:mod:`models.residual`): "l1" (channel mean of |x - recon|), "l2"
            (of the squared error) or "ssim" (1 - local SSIM, Bergmann et al.'s structural residual).
        map_smoothing_sigma: Gaussian sigma (pixels) applied to the residual maps; 0: none.
        inference_batch_size: images per forward in :meth:`anomaly_map`.
        device: torch device.
    """

    net: VQVAE2Config = field(default_factory=VQVAE2Config)
    lr: float = 1e-3
    batch_size: int = 8
    crop_size: int = 128
    map_residual: str = "l1"
    map_smoothing_sigma: float = 4.0
    inference_batch_size: int = 8
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.net, dict):
            self.net = VQVAE2Config(**check_dict(self.net, VQVAE2Config, "net."))
        check_fields(self)
        _check_common(self)
        if self.crop_size < 0 or self.crop_size % 8:
            raise ValueError(f"crop_size must be 0 or a positive multiple of 8, got {self.crop_size}")
        if self.map_residual not in RESIDUALS:
            raise ValueError(f"map_residual must be one of {', '.join(RESIDUALS)}, got {self.map_residual!r}")


def _check_common(config: Any) -> None:
    if config.lr <= 0:
        raise ValueError(f"lr must be > 0, got {config.lr}")
    for name in ("batch_size", "inference_batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.map_smoothing_sigma < 0:
        raise ValueError(f"map_smoothing_sigma must be >= 0, got {config.map_smoothing_sigma}")


class Baseline:
    """Shared machinery: seeded construction, one-update training, batched eval-mode maps, checkpoints.

    Args:
        config: the trainer's config (a subclass's ``config_class``).
        images: its training images, uint8 (N, H, W, 3); None for an inference-only model (evaluation).
        masks: their defect masks, bool (N, H, W); required by supervised baselines, ignored by the others.
        seed: seeds the initialisation and every random choice of training (a private generator).

    Attributes:
        net: the network. optimizer: its Adam. updates: optimiser steps so far. last_losses: the latest update's terms.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    supervised: ClassVar[bool]

    def __init__(self, config: Any, images: np.ndarray | None = None, masks: np.ndarray | None = None, seed: int = 0) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._images: torch.Tensor | None = None  # (N, 3, H, W) uint8, converted to float batch by batch
        self._masks: torch.Tensor | None = None  # (N, 1, H, W) bool
        if images is not None:
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"images must be a uint8 array (N, H, W, 3), got {images.dtype} {images.shape}")
            if len(images) == 0:
                raise ValueError(f"{self.name}: no training images")
            self._images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
            if self.supervised:
                if masks is None or masks.shape != images.shape[:3]:
                    raise ValueError(
                        f"{self.name} needs masks of shape {images.shape[:3]}, got {getattr(masks, 'shape', None)}"
                    )
                self._masks = torch.from_numpy(np.ascontiguousarray(masks.astype(bool)))[:, None]
        with self._private_rng():
            self.net = self._build_network().to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.updates = 0
        self.last_losses: dict[str, float] = {}

    # ------------------------------------------------------------------ what a subclass provides
    def _build_network(self) -> torch.nn.Module:
        raise NotImplementedError

    def _loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        """Sample a batch (torch's global RNG, forked and seeded by :meth:`update`) -> (loss, logged terms)."""
        raise NotImplementedError

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] -> (B, H, W) anomaly scores, in eval mode and inference mode."""
        raise NotImplementedError

    @staticmethod
    def training_indices(split: Any) -> np.ndarray:
        """Which samples of a split (:class:`envs.split.Split`) it trains on."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    @contextlib.contextmanager
    def _private_rng(self) -> Iterator[None]:
        """Run a block on torch's global RNG seeded from the private generator, then restore the caller's state."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        seed = int(torch.randint(0, 2**62, (1,), generator=self._gen))
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device).float() / 255.0

    def _random_indices(self, n: int) -> torch.Tensor:
        if self._images is None:
            raise RuntimeError(f"this {type(self).__name__} was built without training images")
        return torch.randint(0, len(self._images), (n,))

    def update(self) -> dict[str, float]:
        """One Adam step on a fresh random batch; returns the logged loss terms."""
        self.net.train()
        with self._private_rng():
            loss, terms = self._loss()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.updates += 1
        self.last_losses = terms
        return terms

    def fit(self, updates: int, progress: bool = False) -> list[dict[str, float]]:
        """``updates`` calls of :meth:`update` (a library convenience; train.py runs its own loop)."""
        bar = tqdm(range(updates), desc=f"{self.name}", disable=not progress)
        history = []
        for _ in bar:
            history.append(self.update())
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        return history

    # ------------------------------------------------------------------ evaluation
    def anomaly_map(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, H, W) anomaly maps (eval mode; smoothed by ``map_smoothing_sigma``)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be a uint8 array (N, H, W, 3), got {images.dtype} {images.shape}")
        self.net.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.config.inference_batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[i : i + self.config.inference_batch_size]))
                out.append(self._maps(self._float(x.permute(0, 3, 1, 2))).cpu())  # (b, H, W)
        if not out:
            return np.zeros((0, *images.shape[1:3]), np.float32)
        maps = torch.cat(out).numpy().astype(np.float32)  # (N, H, W)
        return smooth_maps(maps, self.config.map_smoothing_sigma)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser, counters and the private generator: enough to resume training bit for bit."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "method": self.name,
            "config": plain(asdict(self.config)),
            "seed": self.seed,
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            "last_losses": dict(self.last_losses),
            "rng": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of the same method and network config.

        Raises:
            ValueError: not a baseline state, another method, or a network that does not fit.
        """
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a baseline state (expected a dict with format={CHECKPOINT_FORMAT!r})")
        if state.get("method") != self.name:
            raise ValueError(f"a {state.get('method')!r} state cannot load into a {self.name!r} baseline")
        saved_net = state["config"]["net"]
        if saved_net != plain(asdict(self.config.net)):
            raise ValueError(f"saved network config {saved_net} does not match this one {plain(asdict(self.config.net))}")
        try:
            self.net.load_state_dict(state["net"])
            self.optimizer.load_state_dict(state["optimizer"])
            self._gen.set_state(state["rng"])
        except (RuntimeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"baseline state does not fit this {self.name}: {error}") from error
        self.net.to(self.device)
        self.updates = int(state["updates"])
        self.last_losses = dict(state.get("last_losses") or {})
        self.seed = int(state.get("seed", self.seed))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` atomically (a temporary file in the same folder, then a rename)."""
        atomic_torch_save(self.state_dict(), path)

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Restore from a file written by :meth:`save`.

        Raises:
            ValueError: the file is missing, corrupt or does not fit (the message names the path).
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
            raise ValueError(f"{path}: not a readable {self.name} checkpoint: {error}") from error
        if isinstance(state, dict) and state.get("version", CHECKPOINT_VERSION) != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: baseline checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
        try:
            self.load_state_dict(state)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    @classmethod
    def config_from_dict(cls, values: dict[str, Any]) -> Any:
        """The trainer's config from plain values; unknown keys raise ValueError listing the valid ones."""
        valid = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown {cls.name} setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        net = values.get("net")
        net_class: Any = next(f for f in fields(cls.config_class) if f.name == "net").default_factory
        if isinstance(net, dict):
            valid_net = {f.name for f in fields(net_class)}
            unknown = sorted(set(net) - valid_net)
            if unknown:
                raise ValueError(
                    f"unknown {cls.name} net setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid_net))}"
                )
        try:
            return cls.config_class(**copy.deepcopy(values))
        except TypeError as error:  # e.g. a network setting that is not a dict
            raise ValueError(f"invalid {cls.name} settings: {error}") from error


class UNetBaseline(Baseline):
    """Supervised U-Net on the split's labelled anomalies and normal pool (the files the predictor trains on)."""

    name = "unet"
    config_class = UNetBaselineConfig
    supervised = True
    config: UNetBaselineConfig

    def _build_network(self) -> torch.nn.Module:
        # flat indices of each training image's defect pixels, for the defect-centred crops
        masks = self._masks if self._masks is not None else torch.zeros(0, 1, 1, 1, dtype=torch.bool)
        self._defect_pixels = [torch.nonzero(m.flatten()).flatten() for m in masks]
        return UNet(self.config.net)

    @staticmethod
    def training_indices(split: Any) -> np.ndarray:
        return np.sort(np.concatenate([split.labelled, split.normal_pool]))  # build_detector's pool

    @property
    def alpha(self) -> float:
        c = self.config
        return normal_weight(self.updates, c.alpha_start, c.alpha_end, c.alpha_decay_updates)

    def _crop_corner(self, i: int, H: int, W: int, c: int) -> tuple[int, int]:
        """Top-left corner of a c x c crop of image i: on a defect (jittered) with ``positive_fraction``, else uniform."""
        defects = self._defect_pixels[i]
        if len(defects) and float(torch.rand(())) < self.config.positive_fraction:
            pixel = int(defects[int(torch.randint(0, len(defects), ()))])
            jy, jx = torch.randint(-(c // 4), c // 4 + 1, (2,)).tolist()
            return window_on(pixel, (H, W), c, (jy, jx))
        return int(torch.randint(0, H - c + 1, ())), int(torch.randint(0, W - c + 1, ()))

    def _augmented_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, c, c) float images and (B, 1, c, c) float masks: cropped (or shifted), flipped, image and mask together."""
        assert self._images is not None and self._masks is not None
        idx = self._random_indices(self.config.batch_size).tolist()
        N, _, H, W = self._images.shape
        c, s = self.config.crop_size, self.config.max_shift
        if 0 < c < min(H, W):
            corners = [self._crop_corner(i, H, W, c) for i in idx]
            x = torch.stack([self._images[i, :, y0 : y0 + c, x0 : x0 + c] for i, (y0, x0) in zip(idx, corners)])
            y = torch.stack([self._masks[i, :, y0 : y0 + c, x0 : x0 + c] for i, (y0, x0) in zip(idx, corners)])
            x, y = self._float(x), y.to(self.device, torch.float32)  # (B, 3, c, c), (B, 1, c, c)
        else:
            x, y = self._float(self._images[idx]), self._masks[idx].to(self.device, torch.float32)  # (B, ., H, W)
            if s > 0:
                both = F.pad(torch.cat([x, y], dim=1), (s, s, s, s), mode="reflect")  # (B, 4, H + 2s, W + 2s)
                dy, dx = torch.randint(0, 2 * s + 1, (2, len(idx))).tolist()
                both = torch.stack([both[b, :, dy[b] : dy[b] + H, dx[b] : dx[b] + W] for b in range(len(idx))])
                x, y = both[:, :3], both[:, 3:]  # (B, 3, H, W), (B, 1, H, W)
        if self.config.flip:
            for dim in (-1, -2):
                flip = torch.rand(len(idx)) < 0.5
                x[flip], y[flip] = x[flip].flip(dim), y[flip].flip(dim)
        return x.contiguous(), y.contiguous()

    def _loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = self._augmented_batch()
        alpha = self.alpha
        loss = weighted_bce(torch.sigmoid(self.net(x)), y, alpha)  # eq. 8 on (B, 1, H, W)
        return loss, {"loss": float(loss.detach()), "alpha": alpha}

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))[:, 0]  # (B, H, W)


class VQVAE2Baseline(Baseline):
    """Unsupervised VQ-VAE-2 on the normal training images; anomaly map = its reconstruction residual (``map_residual``)."""

    name = "vqvae2"
    config_class = VQVAE2BaselineConfig
    supervised = False
    config: VQVAE2BaselineConfig

    def _build_network(self) -> torch.nn.Module:
        return VQVAE2(self.config.net)

    @staticmethod
    def training_indices(split: Any) -> np.ndarray:
        return np.asarray(split.train)  # train/good (and the contaminated images, unlabelled): the AE's images

    def _crops(self) -> torch.Tensor:
        """(B, 3, c, c) float random crops of random training images."""
        assert self._images is not None
        idx = self._random_indices(self.config.batch_size)
        images = self._images[idx]  # (B, 3, H, W) uint8
        B, _, H, W = images.shape
        c = self.config.crop_size
        if 0 < c < min(H, W):
            ys = torch.randint(0, H - c + 1, (B,)).tolist()
            xs = torch.randint(0, W - c + 1, (B,)).tolist()
            images = torch.stack([images[b, :, ys[b] : ys[b] + c, xs[b] : xs[b] + c] for b in range(B)])  # (B, 3, c, c)
        return self._float(images)

    def _loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        x = self._crops()  # (B, 3, c, c)
        recon, latent_loss, (codes_top, codes_bottom) = self.net(x)  # (B, 3, c, c), scalar, (B, c/8, c/8), (B, c/4, c/4)
        recon_loss = F.mse_loss(recon, x)
        loss = recon_loss + latent_loss
        return loss, {
            "loss": float(loss.detach()),
            "recon_loss": float(recon_loss.detach()),
            "latent_loss": float(latent_loss.detach()),
            "codes_top": float(codes_used(codes_top)),
            "codes_bottom": float(codes_used(codes_bottom)),
        }

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        recon = self.net(x)[0]  # (B, 3, H, W)
        return residual_map(x, recon, self.config.map_residual)  # (B, H, W)


BASELINES: dict[str, type[Baseline]] = {"unet": UNetBaseline, "vqvae2": VQVAE2Baseline}


def build_baseline(
    method: str,
    settings: dict[str, Any],
    seed: int = 0,
    images: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    split: Any = None,
) -> Baseline:
    """A baseline trainer: on its files of ``split`` (indices into the whole category's ``images`` and ``masks``), or
    inference-only without images (evaluation loads its weights).

    Raises:
        ValueError: an unknown method or setting.
    """
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r} (valid: {', '.join(BASELINES)})")
    cls = BASELINES[method]
    config = cls.config_from_dict(settings)
    if images is None:
        return cls(config, seed=seed)
    if split is None or masks is None:
        raise ValueError("build_baseline: images need their masks and the split that picks the training files")
    idx = cls.training_indices(split)
    return cls(config, images[idx], split.known_masks(masks, idx) if cls.supervised else None, seed=seed)
