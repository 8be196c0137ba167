"""The detector: autoencoder + predictor training (paper §III.C-E), one object for the env, evaluate.py and the baselines.

One object owns the two networks, their optimisers and every schedule, so that the Gymnasium env only decides
*which* patches the autoencoder sees, and ``evaluate.py`` and the AE-only baseline use the same code without any env.

Training data:

* ``train_images``: normal images; the AE trains on 64x64 patches of them (chosen by the sampler, or by
  :meth:`Detector.random_patches`).
* the *pool*: ``pool_images`` + ``pool_masks``, the predictor's training images (:mod:`models.detector.pool`).

One training cycle (what the env does once its mini-batch of patches is full, and what
:meth:`Detector.fit_random` does with uniform random patches, the "no-RL" control):

    detector.ae_update(patches)      # one Adam step of the AE on MSE
    detector.predictor_update()      # refresh the pool's profiles if the AE changed, one predictor step

Variants (docs/design.md): ``ae_reset_every`` re-initialises the AE and its optimiser every N updates (Chu & Kitani)
instead of relying on dropout (the paper); ``profile_stack = K`` feeds the predictor the last K loss profiles stacked
(Chu & Kitani) instead of the current one (the paper, K = 1).

Reproducibility: every random choice (patch and crop positions, network initialisation, dropout) derives from one
private ``torch.Generator`` seeded with ``seed``; its state is in :meth:`Detector.state_dict`, so a saved and reloaded
detector continues exactly as the original would have.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from models.detector.checkpoint import CheckpointMixin
from models.detector.maps import MapsMixin
from models.detector.pool import PoolMixin
from models.predictor import normal_weight, soft_dice_loss, weighted_bce, weighted_focal_loss
from models.progress import Progress

__all__ = ["Detector"]

logger = logging.getLogger(__name__)


class Detector(PoolMixin, MapsMixin, CheckpointMixin):
    """Autoencoder + predictor with their optimisers, schedules and the pool's loss-profile cache.

    Args:
        config: hyperparameters.
        train_images: normal training images, uint8 (N, H, W, 3) RGB at the working size; None for an
            inference-only detector (e.g. one rebuilt from a checkpoint for evaluation).
        pool_images: the predictor's training images (labelled anomalies + normal pool), uint8 (M, H, W, 3).
        pool_masks: their defect masks, bool (M, H, W) (all False for normal images).
        seed: seeds the private generator behind every random choice of this object.
        reference_images: the normal images the predictor's side reads, uint8 (N', H, W, 3): the targets its
            synthetic defects are pasted into and the global residual's PCA; None: ``train_images`` (a diagnostic
            passes vetted images here, so that contaminated training images reach the AE alone).

    Attributes:
        ae, predictor: the networks. ae_optimizer, predictor_optimizer: their Adam optimisers.
        ae_updates, predictor_updates: optimiser steps taken so far (warm-ups included).
        ae_version: bumped whenever the AE's weights change (update, reset, load); the profile cache
            compares it to decide whether to recompute.
        last_ae_loss, last_pred_loss: the latest training losses (None before the first update).
    """

    # ------------------------------------------------------------------ autoencoder
    def random_patches(self, n: int) -> torch.Tensor:
        """Uniform random patches of the training images (the private generator chooses image and position).

        Args:
            n: number of patches.

        Returns:
            float32 (n, 3, p, p) in [0, 1], p = ``config.patch_size``, on the CPU.
        """
        train = self._require("train")
        N, _, H, W = train.shape
        p = self.config.patch_size
        idx = torch.randint(0, N, (n,), generator=self._gen)
        ys = torch.randint(0, H - p + 1, (n,), generator=self._gen)
        xs = torch.randint(0, W - p + 1, (n,), generator=self._gen)
        patches = torch.stack([train[i, :, y : y + p, x : x + p] for i, y, x in zip(idx.tolist(), ys.tolist(), xs.tolist())])
        return patches.float() / 255.0  # (n, 3, p, p)

    def reseed(self, seed: int) -> None:
        """Restart the private generator (patches, crops, flips, synthetic images, dropout) from ``seed``, keeping
        the networks as they are: a new training stream on the same split and initialisation, which measures how
        much one run's figures owe to its random stream alone."""
        self._gen.manual_seed(int(seed))

    def reset_ae(self) -> None:
        """Re-initialise the AE and a fresh Adam optimiser (Chu & Kitani's periodic reset)."""
        self.ae = self._new_ae()
        self.ae_optimizer = torch.optim.Adam(self.ae.parameters(), lr=self.config.lr)
        self.ae_version += 1
        logger.debug("AE re-initialised after %d updates", self.ae_updates)

    def ae_update(self, patches: torch.Tensor) -> float:
        """One Adam step of the AE on the MSE of ``patches`` (eq. 7).

        When ``config.ae_reset_every = N > 0``, the AE and its optimiser are re-initialised once N, 2N, ...
        updates after pre-training are done, just before the next one (so training update N + 1 is the first on
        fresh weights). Never inside :meth:`pretrain_ae`, whose updates do not count.

        Args:
            patches: float32 (B, 3, p, p) in [0, 1] (any p that is a multiple of the AE's stride).

        Returns:
            The MSE before the step.
        """
        if patches.ndim != 4 or patches.shape[1] != 3:
            raise ValueError(f"patches must be (B, 3, p, p), got {tuple(patches.shape)}")
        N = self.config.ae_reset_every
        if N and not self._pretraining and self.ae_train_updates and self.ae_train_updates % N == 0:
            self.reset_ae()
        x = patches.to(self.device, torch.float32).contiguous(memory_format=self._memory_format)
        # Train mode: BatchNorm uses batch statistics, dropout is on (drawing from the private RNG)
        self.ae.train()
        with self._private_rng():
            loss = torch.mean((self.ae(x) - x) ** 2)
            self.ae_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.ae_optimizer.step()
        self.ae_updates += 1
        self.ae_train_updates += 0 if self._pretraining else 1
        self.ae_version += 1
        self.last_ae_loss = float(loss.detach())
        return self.last_ae_loss

    def pretrain_ae(self, epochs: int | None = None, progress: bool = False) -> list[float]:
        """AE pre-training on uniform random normal patches (§III.E, first warm-up).

        Args:
            epochs: number of epochs; None: ``config.pretrain_epochs``. An epoch is
                ``config.pretrain_patches_per_epoch`` patches (default: one per training image) in
                mini-batches of ``config.ae_batch_size``.
            progress: a tqdm bar; False: a log line every 5% or 60 s (:class:`models.progress.Progress`).

        Returns:
            The mean training loss of each epoch.
        """
        epochs = self.config.pretrain_epochs if epochs is None else epochs
        n_patches = self.config.pretrain_patches_per_epoch or len(self._require("train"))
        n_batches = max(1, math.ceil(n_patches / self.config.ae_batch_size))
        history: list[float] = []
        bar = Progress(epochs, "AE pre-training", progress, unit="epoch")
        self._pretraining = True  # no ae_reset_every reset, and not counted for it
        try:
            for _ in bar:
                losses = [self.ae_update(self.random_patches(self.config.ae_batch_size)) for _ in range(n_batches)]
                history.append(float(np.mean(losses)))
                bar.set_postfix(loss=f"{history[-1]:.5f}")
        finally:
            self._pretraining = False
        if history:
            logger.info("AE pre-training: %d epochs x %d updates, final loss %.5f", epochs, n_batches, history[-1])
            self._warn_if_saturated()
        if self.config.ae_lr_after_pretrain is not None:
            for group in self.ae_optimizer.param_groups:
                group["lr"] = self.config.ae_lr_after_pretrain
        return history

    def _warn_if_saturated(self) -> None:
        """Warn when the AE reconstructs (almost) every pixel of the first training images as 0 or 1: a saturated
        sigmoid passes no gradient, so it never recovers and the loss profile is the image itself."""
        if self.config.ae.output != "sigmoid":
            return
        with torch.inference_mode():
            self.ae.eval()
            recon = self.ae(self._to_float(self._require("train")[:4]))  # (<=4, 3, H, W); no randomness in eval
        saturated = float(((recon < 1e-4) | (recon > 1 - 1e-4)).float().mean())
        if saturated > 0.99:
            logger.warning(
                "the AE's sigmoid output is saturated on %.0f%% of the pixels after pre-training (it reconstructs black or "
                "white, with no gradient): use ae.output=linear, ae.norm=batch or a lower lr",
                100 * saturated,
            )

    # ------------------------------------------------------------------ predictor
    @property
    def alpha(self) -> float:
        """Current weight of normal pixels in the weighted BCE: linear decay over predictor updates."""
        c = self.config
        return normal_weight(self.predictor_updates, c.alpha_start, c.alpha_end, c.alpha_decay_updates)

    @property
    def pred_lr(self) -> float:
        """The predictor's learning rate (``pred_lr``, or ``lr`` when it is None)."""
        return float(self.predictor_optimizer.param_groups[0]["lr"])

    def predictor_update(self) -> float:
        """One Adam step of the predictor on the weighted BCE (eq. 8) of random pool crops.

        Refreshes the pool's profiles first if the AE changed. ``alpha`` is taken before the step and then
        follows the incremented ``predictor_updates``.

        Returns:
            The loss before the step.
        """
        self.refresh_profiles()
        x, y = self._sample_crops(self.config.pred_batch_size)
        self.predictor.train()
        prob = self.predictor(x)  # (n, 1, c, c)
        if self.config.pred_loss == "focal":
            loss = weighted_focal_loss(prob, y, self.alpha, self.config.pred_focal_gamma)
        else:
            loss = weighted_bce(prob, y, self.alpha)
        if self.config.pred_loss == "bce_dice":
            loss = loss + soft_dice_loss(prob, y)
        self.predictor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.predictor_optimizer.step()
        if self.predictor_average is not None:
            # The decay ramps up over the first updates (TensorFlow's ExponentialMovingAverage with num_updates), so
            # the average does not carry the random initial weights: 0.1 at the first update, 0.99 from the 890th
            n = self.predictor_updates
            decay = min(self.config.predictor_ema, (1 + n) / (10 + n))
            with torch.no_grad():
                for avg, new in zip(self.predictor_average.parameters(), self.predictor.parameters()):
                    avg.lerp_(new, 1.0 - decay)
                for avg_b, new_b in zip(self.predictor_average.buffers(), self.predictor.buffers()):
                    avg_b.copy_(new_b)  # BatchNorm statistics: the latest
        self.predictor_updates += 1
        self.last_pred_loss = float(loss.detach())
        return self.last_pred_loss

    def warmup_predictor(self, updates: int | None = None, progress: bool = False) -> list[float]:
        """Predictor warm-up on the current (pre-trained) AE's profiles (§III.E, second warm-up).

        Args:
            updates: number of predictor updates; None: ``config.predictor_warmup_updates``.
            progress: a tqdm bar; False: a log line every 5% or 60 s (:class:`models.progress.Progress`).

        Returns:
            The loss of each update.
        """
        updates = self.config.predictor_warmup_updates if updates is None else updates
        losses = []
        bar = Progress(updates, "predictor warm-up", progress)
        for _ in bar:
            losses.append(self.predictor_update())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", alpha=f"{self.alpha:.3f}")
        return losses

    # ------------------------------------------------------------------ the no-RL control
    def fit_random(
        self, ae_updates: int, progress: bool = False, predictor_updates_per_ae_update: int | None = None
    ) -> dict[str, list[float]]:
        """The "no-RL" detector: AE updates on uniform random patches, each followed by predictor updates.

        This is the control the env's uniform random sampler should match.

        Args:
            ae_updates: number of AE updates (mini-batches of ``config.ae_batch_size`` patches).
            progress: a tqdm bar; False: a log line every 5% or 60 s (:class:`models.progress.Progress`).
            predictor_updates_per_ae_update: predictor updates after each AE update (the profiles are
                refreshed once, before the first); None: ``config.predictor_updates_per_ae_update``.

        Returns:
            ``{"ae_loss": [...], "pred_loss": [...], "alpha": [...]}``, one entry per AE update
            (pred_loss and alpha: the last predictor update's).
        """
        if predictor_updates_per_ae_update is None:
            predictor_updates_per_ae_update = self.config.predictor_updates_per_ae_update
        hist: dict[str, list[float]] = {"ae_loss": [], "pred_loss": [], "alpha": []}
        bar = Progress(ae_updates, "fit (random patches)", progress)
        for _ in bar:
            hist["ae_loss"].append(self.ae_update(self.random_patches(self.config.ae_batch_size)))
            hist["alpha"].append(self.alpha)
            for _ in range(predictor_updates_per_ae_update):
                self.predictor_update()
            hist["pred_loss"].append(float("nan") if self.last_pred_loss is None else self.last_pred_loss)
            bar.set_postfix(ae=f"{hist['ae_loss'][-1]:.5f}", pred=f"{hist['pred_loss'][-1]:.4f}")
        return hist
