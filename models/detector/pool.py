"""The predictor's training pool: its images, their cached loss profiles, the synthetic positives and the crops.

The pool is the few labelled anomalies with their masks plus a fixed set of normal images with empty masks (the
caller composes it), and optionally ``synthetic_pool_size`` anomalies made from the training images
(:mod:`models.synthesis`), renewed as training goes. The predictor trains on crops of the pool's loss profiles, which
are recomputed only when the AE has changed: the refresh is the costliest part of a training cycle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models.detector.base import DetectorBase
from models.detector.inputs import images_to_uint8_chw, window_on
from models.synthesis import noise_anomaly, paste_defect

__all__ = ["PoolMixin"]


class PoolMixin(DetectorBase):
    """The pool's profile cache, its synthetic positives and the predictor's training crops."""

    @property
    def pool_profiles(self) -> torch.Tensor | None:
        """The cached pool profiles (M, 3K, H, W), oldest first, as of the last refresh (None before it)."""
        return self._profiles

    def refresh_profiles(self) -> bool:
        """Recompute the pool's loss profiles if the AE changed since the last refresh (at most every
        ``profile_refresh_every`` AE updates), and renew the synthetic images every ``synthetic_refresh_updates``
        predictor updates (then only their profiles are computed if the AE did not change).

        With ``profile_stack = K > 1`` the cache holds the last K profiles (oldest first); a refresh drops
        the oldest and appends the new one. The first refresh fills all K slots with the current profile.

        Returns:
            Whether it recomputed the pool's profiles (a renewal of the synthetic images alone returns False).
        """
        self._require("pool")
        c = self.config
        ae_changed = self._profiles is None or self._profiles_version != self.ae_version
        due = self.ae_updates - self._profiles_at_update >= c.profile_refresh_every
        if ae_changed and (self._profiles is None or due or self._profiles_version < 0):
            return self._refresh_all()
        if c.synthetic_pool_size and self.predictor_updates - self._synthetic_at_update >= c.synthetic_refresh_updates:
            assert self._profiles is not None
            self._make_synthetic()
            assert self._pred_images is not None
            M = len(self._pred_images) - c.synthetic_pool_size
            self._profiles = torch.cat([self._profiles[:M], self.loss_profiles(self._pred_images[M:])])
        return False

    def _refresh_all(self) -> bool:
        if self.config.synthetic_pool_size:
            self._make_synthetic()
        assert self._pred_images is not None
        new = self.loss_profiles(self._pred_images)  # (M + S, 3, H, W)
        K = self.config.profile_stack
        if K == 1 or self._profiles is None:
            self._profiles = new.repeat(1, K, 1, 1) if K > 1 else new.clone()  # clone: a normal tensor, not an inference one
        else:
            self._profiles = torch.cat([self._profiles[:, 3:], new], dim=1)  # (M, 3K, H, W)
        self._profiles_version = self.ae_version
        self._profiles_at_update = self.ae_updates
        return True

    def _make_synthetic(self) -> None:
        """Replace the synthetic part of the predictor's pool with S new anomalous training images."""
        self._synthetic_at_update = self.predictor_updates
        train, pool, pool_masks = self._require("reference"), self._require("pool"), self._pool_masks  # targets, sources
        assert pool_masks is not None
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=self._gen)))
        images, masks = [], []
        hwc = train.permute(0, 2, 3, 1)  # (N, H, W, 3) view
        c = self.config
        for _ in range(c.synthetic_pool_size):
            target = hwc[int(rng.integers(len(train)))].numpy()
            if self._pool_positives and rng.random() < c.synthetic_paste_fraction:
                i = self._pool_positives[int(rng.integers(len(self._pool_positives)))][0]
                image, mask = paste_defect(target, pool[i].permute(1, 2, 0).numpy(), pool_masks[i].numpy(), rng)
            else:
                source = hwc[int(rng.integers(len(train)))].numpy()
                image, mask = noise_anomaly(target, source, rng, c.synthetic_noise_opacity, c.synthetic_noise_scales)
            images.append(image)
            masks.append(mask)
        synth = images_to_uint8_chw(np.stack(images), "synthetic images")  # (S, 3, H, W)
        self._set_synthetic(synth, torch.from_numpy(np.stack(masks)))

    def _set_synthetic(self, synth: torch.Tensor, synth_masks: torch.Tensor) -> None:
        """The predictor's pool becomes the labelled pool, then ``synth`` (S, 3, H, W) uint8 with ``synth_masks``
        (S, H, W) bool."""
        pool, pool_masks = self._require("pool"), self._pool_masks
        assert pool_masks is not None
        self._pred_images = torch.cat([pool, synth])
        self._pred_masks = torch.cat([pool_masks, synth_masks])
        M = len(pool)
        self._positives = list(self._pool_positives)
        for j in range(len(synth_masks)):
            flat = torch.nonzero(synth_masks[j].flatten()).flatten()
            if len(flat):
                self._positives.append((M + j, flat))

    def pool_state(self) -> dict[str, Any]:
        """The pool's training state that :meth:`state_dict` leaves out (it is large and only training needs it): the
        synthetic images and masks, the cached profiles and their refresh counters. With it a resumed run trains the
        predictor on the same crops as the uninterrupted run; without it the next refresh makes new synthetic images
        and computes the profiles from the current AE."""
        M = 0 if self._pool is None else len(self._pool)
        synthetic = self._pred_images is not None and len(self._pred_images) > M
        assert self._pred_masks is not None or not synthetic
        return {
            "profiles": None if self._profiles is None else self._profiles.cpu(),
            "profiles_version": self._profiles_version,
            "profiles_at_update": self._profiles_at_update,
            "synthetic_at_update": self._synthetic_at_update,
            "synthetic_images": self._pred_images[M:].clone() if synthetic else None,  # type: ignore[index]
            "synthetic_masks": self._pred_masks[M:].clone() if synthetic else None,  # type: ignore[index]
        }

    def load_pool_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`pool_state`, after :meth:`load_state_dict`.

        Raises:
            ValueError: the state does not fit this detector's pool.
        """
        if state["synthetic_images"] is not None:
            if self._pool is None or state["synthetic_images"].shape[1:] != self._pool.shape[1:]:
                raise ValueError("the saved synthetic images do not fit this detector's pool")
            self._set_synthetic(state["synthetic_images"], state["synthetic_masks"])
        profiles = state["profiles"]
        if profiles is not None and (self._pred_images is None or len(profiles) != len(self._pred_images)):
            raise ValueError("the saved pool profiles do not fit this detector's pool")
        self._profiles = None if profiles is None else profiles.to(self.device)
        self._profiles_version = int(state["profiles_version"])
        self._profiles_at_update = int(state["profiles_at_update"])
        self._synthetic_at_update = int(state["synthetic_at_update"])

    def _sample_crops(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n predictor training crops: (n, C_in, c, c) predictor inputs and (n, 1, c, c) float masks."""
        assert self._profiles is not None and self._pred_masks is not None and self._pred_images is not None
        M, _, H, W = self._profiles.shape
        c = min(self.config.pred_crop_size, H, W)
        g = self._gen
        xs_, ims_, ys_ = [], [], []
        for _ in range(n):
            if self._positives and float(torch.rand((), generator=g)) < self.config.pred_positive_fraction:
                # Centre (with jitter up to a quarter crop) on a random defect pixel of a random anomaly
                j = int(torch.randint(0, len(self._positives), (), generator=g))
                i, flat = self._positives[j]
                pix = int(flat[int(torch.randint(0, len(flat), (), generator=g))])
                jy, jx = (torch.randint(-(c // 4), c // 4 + 1, (2,), generator=g)).tolist()
                y0, x0 = window_on(pix, (H, W), c, (jy, jx))
            else:
                i = int(torch.randint(0, M, (), generator=g))
                y0 = int(torch.randint(0, H - c + 1, (), generator=g))
                x0 = int(torch.randint(0, W - c + 1, (), generator=g))
            xs_.append(self._profiles[i, :, y0 : y0 + c, x0 : x0 + c])  # (3K, c, c)
            ims_.append(self._pred_images[i, :, y0 : y0 + c, x0 : x0 + c])  # (3, c, c) uint8
            ys_.append(self._pred_masks[i, y0 : y0 + c, x0 : x0 + c])  # (c, c) bool
        x = self._predictor_input(torch.stack(xs_), self._to_float(torch.stack(ims_)))  # (n, C_in, c, c)
        y = torch.stack(ys_).unsqueeze(1).to(self.device, torch.float32)  # (n, 1, c, c)
        if self.config.pred_flip:
            # Flip each crop with its mask: same choice for x and y, drawn from the private generator
            for dim in (-1, -2):
                flip = torch.rand(n, generator=g) < 0.5
                x[flip], y[flip] = x[flip].flip(dim), y[flip].flip(dim)
        return x.contiguous(memory_format=self._memory_format), y
