"""The detector's state (data, networks, optimisers, counters) and the helpers that each of its parts uses.

:class:`models.detector.Detector` adds the training steps, the predictor's pool, the maps and the checkpoints to it;
they are split by job, and all share this one object's state and its one private generator.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator

import numpy as np
import torch

from models.autoencoder import Autoencoder
from models.detector.config import DetectorConfig
from models.detector.inputs import images_to_uint8_chw, predictor_input
from models.global_residual import GlobalResidual
from models.predictor import Predictor

__all__ = ["DetectorBase"]

logger = logging.getLogger(__name__)


class DetectorBase:
    """The detector's data, networks, optimisers and counters: the state its parts share.

    The arguments are :class:`models.detector.Detector`'s.
    """

    def __init__(
        self,
        config: DetectorConfig | None = None,
        train_images: np.ndarray | None = None,
        pool_images: np.ndarray | None = None,
        pool_masks: np.ndarray | None = None,
        seed: int = 0,
        reference_images: np.ndarray | None = None,
    ) -> None:
        self.config = config = config or DetectorConfig()
        self.device = torch.device(config.device)
        self._memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self._gen = torch.Generator().manual_seed(int(seed))
        self.seed = int(seed)

        # Data stays uint8 (4x smaller than float32) and is converted lazily, patch by patch
        self._train: torch.Tensor | None = None  # (N, 3, H, W) uint8
        if train_images is not None:
            self._train = images_to_uint8_chw(train_images, "train_images")
            self._check_size(self._train, "train_images")
        # the normal images the predictor's side reads (synthetic defects' targets, the global residual's PCA); None:
        # the training images
        self._reference: torch.Tensor | None = None  # (N', 3, H, W) uint8
        if reference_images is not None:
            self._reference = images_to_uint8_chw(reference_images, "reference_images")
            self._check_size(self._reference, "reference_images")
        self._pool: torch.Tensor | None = None  # (M, 3, H, W) uint8
        self._pool_masks: torch.Tensor | None = None  # (M, H, W) bool
        self._positives: list[tuple[int, torch.Tensor]] = []  # (pool index, flat indices of its defect pixels)
        if (pool_images is None) != (pool_masks is None):
            raise ValueError("pool_images and pool_masks must be given together")
        if pool_images is not None and pool_masks is not None:
            self._pool = images_to_uint8_chw(pool_images, "pool_images")
            self._check_size(self._pool, "pool_images")
            expected = (pool_images.shape[0], *pool_images.shape[1:3])
            if pool_masks.shape != expected:
                raise ValueError(f"pool_masks must have shape {expected}, got {pool_masks.shape}")
            self._pool_masks = torch.from_numpy(np.ascontiguousarray(pool_masks.astype(bool)))
            for i in range(len(self._pool_masks)):
                flat = torch.nonzero(self._pool_masks[i].flatten()).flatten()
                if len(flat):
                    self._positives.append((i, flat))
        if config.map_predictor_flips and not config.pred_flip:
            logger.warning("map_predictor_flips averages the predictor over flips of its input that it never trains on")

        # The PCA of whole normal images behind map_global_weight: fitted on first use, restored by load_state_dict
        self.global_residual: GlobalResidual | None = None
        self.ae = self._new_ae()
        self.predictor = self._new_predictor()
        # The weights' moving average that makes the maps (predictor_ema > 0); a copy, never trained directly
        self.predictor_average = copy.deepcopy(self.predictor).requires_grad_(False) if config.predictor_ema else None
        self.ae_optimizer = torch.optim.Adam(self.ae.parameters(), lr=config.lr)
        self.predictor_optimizer = torch.optim.Adam(self.predictor.parameters(), lr=config.pred_lr or config.lr)

        self.ae_updates = 0
        self.ae_train_updates = 0  # AE updates outside pretrain_ae: the ae_reset_every cadence counts these
        self._pretraining = False
        self.ae_version = 0
        self.predictor_updates = 0
        self.last_ae_loss: float | None = None
        self.last_pred_loss: float | None = None
        self._profiles: torch.Tensor | None = None  # (M + S, 3K, H, W) float32, oldest profile first
        self._profiles_version = -1  # ae_version the newest cached profile was computed with
        self._profiles_at_update = 0  # ae_updates at the last refresh
        self._synthetic_at_update = 0  # predictor_updates at the last renewal of the synthetic images
        self._pool_positives = list(self._positives)  # the labelled anomalies': fixed
        self._pred_images = self._pool  # (M + S, 3, H, W) uint8: pool + synthetic, what the predictor trains on
        self._pred_masks = self._pool_masks  # (M + S, H, W) bool

    def _check_size(self, images: torch.Tensor, name: str) -> None:
        H, W = images.shape[-2:]
        s, p = self.config.ae.stride, self.config.patch_size
        if H % s or W % s or H < p or W < p:
            raise ValueError(f"{name}: height and width must be multiples of {s} and >= patch_size {p}, got {H}x{W}")

    @contextlib.contextmanager
    def _private_rng(self) -> Iterator[None]:
        """Run a block on torch's global RNG seeded from the private generator, then restore the global state.

        Weight initialisation and dropout draw from the global RNG; forking it keeps them reproducible and
        leaves the caller's RNG untouched.
        """
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        seed = int(torch.randint(0, 2**62, (1,), generator=self._gen))
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def _new_ae(self) -> Autoencoder:
        with self._private_rng():
            ae = Autoencoder(self.config.ae)
        return ae.to(self.device, memory_format=self._memory_format)  # type: ignore[call-overload]

    def _new_predictor(self) -> Predictor:
        with self._private_rng():
            predictor = Predictor(self.config.predictor)
        return predictor.to(self.device, memory_format=self._memory_format)  # type: ignore[call-overload]

    def _to_float(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) numpy, or (N, 3, H, W) uint8/float torch -> float32 (N, 3, H, W) in [0, 1] on device."""
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"numpy images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
            x = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, H, W)
        elif isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"torch images must be (N, 3, H, W), got {tuple(images.shape)}")
            x = images
        else:
            raise TypeError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
        x = x.to(self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x.contiguous(memory_format=self._memory_format)

    def _require(self, what: str) -> torch.Tensor:
        """The ``train``, ``pool`` or ``reference`` images (the training images unless reference images were given)."""
        if what == "reference":
            what, data = "train", self._reference if self._reference is not None else self._train
        else:
            data = self._train if what == "train" else self._pool
        if data is None or len(data) == 0:
            raise RuntimeError(f"this Detector was built without {what} images; pass them to the constructor")
        return data

    def _global(self) -> GlobalResidual:
        """The global residual's PCA, fitted on first use from the reference images (seeded by ``seed`` alone: it draws
        nothing from the private generator, so the training stream is the same with or without it)."""
        if self.global_residual is None:
            self.global_residual = GlobalResidual(self.config.global_size, self.config.global_components)
        if not self.global_residual.fitted:
            self.global_residual.fit(self._require("reference"), seed=self.seed).to(self.device)
        return self.global_residual

    def _predictor_input(self, profiles: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, 3K, H, W) profiles and (B, 3, H, W) float images -> (B, C_in, H, W), as ``predictor_inputs`` asks."""
        return predictor_input(self.config.predictor_inputs, profiles, images)

    def loss_profiles(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Loss profiles ``|x - AE(x)|`` (eq. 1) with the current AE in eval mode.

        Args:
            images: uint8 (N, H, W, 3) numpy, or (N, 3, H, W) torch (uint8, or float in [0, 1]).

        Returns:
            float32 (N, 3, H, W) on the detector's device.
        """
        self.ae.eval()  # running BatchNorm statistics, no dropout: a profile does not depend on its batch
        out = []
        bs = self.config.inference_batch_size
        with torch.inference_mode():
            for i in range(0, len(images), bs):
                x = self._to_float(images[i : i + bs])  # (b, 3, H, W)
                out.append((x - self.ae(x)).abs())
        if not out:
            H, W = images.shape[1:3] if isinstance(images, np.ndarray) else images.shape[-2:]
            return torch.zeros(0, 3, H, W, device=self.device)
        return torch.cat(out).contiguous()  # (N, 3, H, W)
