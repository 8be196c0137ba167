"""The predictor's training pool: its images, their cached loss profiles, the synthetic positives and the crops.

The pool is the few labelled anomalies with their masks plus a fixed set of normal images with empty masks (the
caller composes it), and optionally ``synthetic_pool_size`` anomalies made from the training images
(:mod:`models.synthesis`), renewed as training goes. The predictor trains on crops of the pool's loss profiles, which
are recomputed only when the AE has changed: the refresh is the costliest part of a training cycle.
"""

from __future__ import annotations

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
        train, pool, pool_masks = self._require("train"), self._require("pool"), self._pool_masks
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
        synth_masks = torch.from_numpy(np.stack(masks))  # (S, H, W)
        self._pred_images = torch.cat([pool, synth])
        self._pred_masks = torch.cat([pool_masks, synth_masks])
        M = len(pool)
        self._positives = list(self._pool_positives)
        for j in range(len(synth_masks)):
            flat = torch.nonzero(synth_masks[j].flatten()).flatten()
            if len(flat):
                self._positives.append((M + j, flat))

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
