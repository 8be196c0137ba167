"""The detector: autoencoder + predictor training, loss-profile cache, anomaly maps, checkpoints.

One object owns the two networks of the paper (§III.C-E), their optimisers and every schedule, so that the
Gymnasium env only decides *which* patches the autoencoder sees, and ``evaluate.py`` and the AE-only
baseline use the same code without any env.

Training data:

* ``train_images``: normal images; the AE trains on 64x64 patches of them (chosen by the sampler, or by
  :meth:`Detector.random_patches`).
* the *pool*: ``pool_images`` + ``pool_masks``; the few labelled anomalies with their masks plus a fixed
  set of normal images with empty masks (the caller composes it). The predictor trains on crops of the
  pool's loss profiles, which are cached and recomputed only when the AE has changed.

One training cycle (what the env does once its mini-batch of patches is full, and what
:meth:`Detector.fit_random` does with uniform random patches, the "no-RL" control):

    detector.ae_update(patches)      # one Adam step of the AE on MSE
    detector.predictor_update()      # refresh the pool's profiles if the AE changed, one predictor step

Variants (DESIGN.md "Variants"): ``ae_reset_every`` re-initialises the AE and its optimiser every N updates
(Chu & Kitani) instead of relying on dropout (the paper); ``profile_stack = K`` feeds the predictor the last
K loss profiles stacked (Chu & Kitani) instead of the current one (the paper, K = 1).

Reproducibility: every random choice (patch and crop positions, network initialisation, dropout) derives
from one private ``torch.Generator`` seeded with ``seed``; its state is in :meth:`Detector.state_dict`, so a
saved and reloaded detector continues exactly as the original would have.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from models.autoencoder import Autoencoder, AutoencoderConfig, anomaly_push_loss
from models.global_residual import GLOBAL_CHANNELS, GlobalResidual
from models.metrics import compute_metrics
from models.predictor import (
    Predictor,
    PredictorConfig,
    pairwise_auc_loss,
    soft_dice_loss,
    weighted_bce,
    weighted_focal_loss,
)
from models.runtime import atomic_torch_save, plain
from models.structural import DEFAULT_FUSED_WEIGHTS, fused_structural_map
from models.synthesis import corrupt_patches, noise_anomaly, paste_defect, shift_anomaly

__all__ = [
    "DetectorConfig",
    "Detector",
    "ae_baseline_maps",
    "close_maps",
    "fuse_global",
    "smooth_maps",
    "choose_smoothing",
    "texture_channels",
    "CHECKPOINT_FORMAT",
    "PREDICTOR_INPUTS",
    "PREDICTOR_LOSSES",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "rl-batch-sampler/detector"
CHECKPOINT_VERSION = 1
# the loss profile (paper), the image itself (as DRAEM's discriminator), and the image's local texture statistics
PREDICTOR_INPUTS = ("profile", "image", "texture", "global")
TEXTURE_CHANNELS = 2  # local mean and local standard deviation of the grey image
TEXTURE_CLIP = 10.0  # bound of the texture channels' robust z-scores
PREDICTOR_LOSSES = ("bce", "bce_dice", "focal")
PRED_LR_SCHEDULES = ("constant", "cosine")


@dataclass
class DetectorConfig:
    """Hyperparameters of :class:`Detector` (paper §IV.C where it gives them).

    Args:
        patch_size: side of the AE's training patches (the paper: 64).
        ae_batch_size: patches per AE update (the paper: 32); used by pre-training and :meth:`Detector.fit_random`.
        lr: Adam learning rate of the AE (the paper: 1e-3).
        pred_lr: Adam learning rate of the predictor; None: same as ``lr``.
        pred_lr_schedule: "constant", or "cosine": the predictor's rate falls from ``pred_lr`` to
            ``pred_lr_floor * pred_lr`` along a half cosine over the warm-up's updates and stays there (nanoGPT's
            decay): the warm-up's last updates settle the weights instead of jumping around them, at no extra cost.
            Session 13 measured it below the constant rate on magnetic_tile (README "Session 13"), so it is off.
        pred_lr_floor: the cosine schedule's final rate as a fraction of ``pred_lr``.
        pred_weight_decay: decoupled weight decay of the predictor (AdamW; 0: plain Adam, the paper). Twenty-five
            labelled images are few enough for the predictor to memorise them.
        pred_batch_size: crops per predictor update (the paper: 32).
        pred_crop_size: side of the predictor's training crops. The predictor is fully convolutional with a
            31-pixel receptive field, so 64x64 crops teach it the same function as whole images at 1/16 of the cost.
        pred_positive_fraction: probability that a crop is centred (with jitter) on a random defect pixel of a
            labelled anomaly; the other crops are uniform over the pool. Without it, tiny defects (a few dozen
            pixels in a 256x256 image) would almost never fall in a 64x64 crop.
        alpha_start, alpha_end: weight of normal pixels in the weighted BCE (eq. 8), decayed linearly from
            ``alpha_start`` to the floor ``alpha_end`` (the paper: 1.0 -> 0.15).
        alpha_decay_updates: predictor updates (warm-up included) over which alpha decays; 0: constant
            ``alpha_start``.
        pretrain_epochs: epochs of AE pre-training (the paper: 100).
        pretrain_patches_per_epoch: random normal patches that make one pre-training epoch; None: one patch
            per training image (so an epoch sees each image once on average).
        predictor_warmup_updates: predictor updates of the warm-up on the pre-trained AE's profiles (§III.E).
        ae_reset_every: re-initialise the AE and its optimiser every N AE updates after pre-training (Chu & Kitani
            reset during training; pre-training's updates do not count); 0: never (the paper).
        profile_stack: K, the number of most recent loss profiles stacked as predictor input (Chu & Kitani);
            1: the current profile only (the paper).
        fused_weights: (w_mae, w_var, w_grad) of the fused structural map (the paper: 0.7, 0.1, 0.2).
        fused_blur_sigma: Gaussian sigma of the local variance in the fused map.
        inference_batch_size: images per forward pass for profiles and maps (bounds memory).
        channels_last: run the convolutions in channels-last memory format (oneDNN's fast path on CPU).
        predictor_inputs: what the predictor reads, a subset of ``PREDICTOR_INPUTS``: ("profile",) is the paper;
            ("profile", "image") adds the RGB image, so the predictor can tell a residual caused by a defect from
            one caused by normal but hard-to-reconstruct structure. "texture" adds :func:`texture_channels`: each
            pixel's local brightness and contrast as robust z-scores within its image, so a region whose texture
            differs from the rest of its image (a large low-contrast defect the AE reconstructs well) stands out.
            Train on whole images (``pred_crop_size`` = image size), or the statistics are a crop's.
            "global" adds :class:`models.global_residual.GlobalResidual`: each pixel's residual after projecting the
            whole image, shrunk to ``global_size``², onto the top ``global_components`` principal components of the
            normal training images (fitted once, on 90% of them; see ``map_global_weight``). The AE sees 64² patches
            and reconstructs whatever is locally plausible; the PCA sees the whole image, so a region that no
            normal image has at that place and scale (a discoloured band, a misplaced part) stands out.
        texture_sigma: Gaussian sigma (pixels) of the local window of the "texture" input.
        global_size: side of the coarse images of the global residual's PCA (the "global" input, ``map_global_weight``).
        global_components: its principal components (at most half the training images it is fitted on).
        predictor_updates_per_ae_update: predictor steps per AE update (in the env and in :meth:`fit_random`);
            the paper's one step per 32 patches gives the predictor only a few hundred steps on a CPU budget.
        profile_refresh_every: recompute the pool's loss profiles at most every N AE updates (1: after every
            update). A few AE steps change the residuals little, and the refresh is the costliest part of a cycle.
        synthetic_pool_size: S extra anomalous images in the predictor's pool, made anew at every profile refresh
            from training images (:mod:`models.synthesis`); 0: the paper's pool of labelled + normal images only.
        synthetic_paste_fraction: share of those made by pasting a labelled defect; the rest are noise-mask
            anomalies with a foreign texture.
        synthetic_noise_first_updates: for the predictor's first N updates every synthetic image is a noise-mask anomaly
            (a foreign texture in a random blob, no labels needed), as DRAEM trains on synthetic anomalies alone; from
            then on ``synthetic_paste_fraction`` applies. A self-supervised start that teaches "this region's texture
            differs from its surroundings" before five labelled examples per type teach which differences are defects;
            0: none. The switch takes effect at the next renewal of the synthetic images.
        synthetic_shift_fraction: share of the synthetic images that are a region's brightness/contrast shift
            (:func:`models.synthesis.shift_anomaly`), drawn before the paste/noise choice; 0: none.
        synthetic_paste_rotate: a defect pasted away from its own place may also be rotated by a multiple of 90
            degrees; False: flipped and rescaled only, so a directional texture keeps its direction.
        synthetic_paste_match: shift a pasted defect's colour so that it keeps its contrast with the 8-pixel band
            around it, not its absolute colour (see :func:`models.synthesis.paste_defect`); False: raw pixels.
        synthetic_paste_margin: a pasted defect also brings this many pixels of its own surroundings, faded into
            the target, so that its edge is the real one and not a cut (:func:`models.synthesis.paste_defect`); 0:
            the defect's pixels alone, with a hard seam at the mask's edge.
        synthetic_noise_opacity: (min, max) blend factor of a noise-mask anomaly's texture (1: full replacement).
        synthetic_noise_scales: (min, max) scale of the noise that shapes the mask: blobs about H/2^s across.
        synthetic_noise_min_change: grey levels a pixel must visibly change to be labelled anomalous (0: the whole
            noise mask, as DRAEM); see :func:`models.synthesis.noise_anomaly`.
        synthetic_noise_window: (min, max) side, as a fraction of the image, of the random square that bounds a
            noise-mask anomaly (None: the whole image); see :func:`models.synthesis.noise_anomaly`.
        synthetic_refresh_updates: renew the synthetic images at least every N predictor updates (the warm-up
            has no AE update to trigger a refresh, and should still see thousands of different anomalies).
        pred_flip: flip predictor training crops horizontally and vertically at random.
        pred_zoom: largest zoom of the random-scale crops (1: none). Each training crop is a window of side
            ``crop / z``, z uniform in [1, pred_zoom], resized back to the crop's side (bilinear; the mask
            thresholded at 0.5): with whole-image crops the predictor would otherwise see its few labelled
            images in one framing only (flips aside), and a defect at one scale and position.
        pred_jitter: photometric jitter j of the image that the predictor reads (training crops only): each crop's
            image is scaled by a gain in [1 - j, 1 + j] and shifted by an offset in [-j/2, j/2] (images in [0, 1]),
            so that a handful of labelled images does not teach it their absolute brightness; 0: none.
        pred_loss: "bce" (eq. 8), "bce_dice" (eq. 8 plus a batch soft-Dice term) or "focal" (eq. 8 with the focal
            modulation of exponent ``pred_focal_gamma``, as DRAEM's discriminative network trains).
        pred_focal_gamma: the focal loss's exponent (``pred_loss: focal`` only; 0 gives eq. 8).
        pred_rank_weight: weight of a pairwise AUROC surrogate added to ``pred_loss`` (:func:`pairwise_auc_loss`: defect
            pixels ranked against normal pixels drawn from the whole batch, so across images, as pooled pixel AUROC
            ranks them); 0: none (nothing drawn, the training stream unchanged).
        pred_rank_pairs: how many defect and how many normal pixels the surrogate draws per update (their square in pairs).
        map_smoothing_sigma: Gaussian sigma (pixels) applied to anomaly maps at inference; 0: none.
        map_smoothing_candidates: if set, every validation run picks ``map_smoothing_sigma`` among these by the
            validation pixel F1max (:func:`choose_smoothing`; the split that picks the checkpoint and the threshold),
            and the checkpoint keeps the choice. The best width depends on the defects' size: wide smoothing fills a
            large low-contrast region that the map lights only at its edge, and blurs a small defect away.
        map_flip_tta: average each anomaly map with the map of the image's horizontal mirror (mirrored back), as
            test-time augmentation: twice the inference cost for maps that depend less on one network's quirks.
        map_global_weight: late fusion of the anomaly map with the global residual, before smoothing: ``(1 - w) * map +
            w * g``, g the residual's channel mean over the 99th percentile of held-out normal images' (capped at 1;
            :meth:`models.global_residual.GlobalResidual.normalised`). The PCA is fitted on 90% of the training images
            on first use and saved with the weights; 0: the predictor's map alone.
        map_predictor_flips: average the predictor's map over the four flips of its input (none, horizontal, vertical,
            both; each map flipped back), the loss profile computed once: the flips it trained on with ``pred_flip``,
            at the small predictor's cost only, since the AE does not run again.
        predictor_ema: decay of an exponential moving average of the predictor's weights, used for the anomaly
            maps (0: the raw weights, the paper). A few labelled images make single updates noisy; the average
            removes the update-to-update swings of validation scores. The decay is ``min(predictor_ema, (1 + n) /
            (10 + n))`` at update ``n``, so that a long average (0.999) does not keep the random initial weights.
        ae_lr_after_pretrain: the AE's learning rate once pre-training is done (None: keep ``lr``); a smaller
            rate keeps the residual space the predictor has learned from drifting.
        ae_denoise_fraction: train the AE as a denoising AE: this share of every AE mini-batch (pre-training and RL) is
            damaged by :func:`models.synthesis.corrupt_patches` and the AE learns to restore the clean patch (DRAEM's
            reconstructive training). An AE trained to copy normal patches also copies defects; one trained to undo
            damage reconstructs the normal appearance, so its residual marks what is not normal. 0: the paper's AE.
        ae_anomaly_weight: weight of a term that pushes the AE's squared error *up* on the labelled defect pixels
            (semi-supervised AEs, as ABC, Yamanaka et al. 2019): every AE update (pre-training and RL) also reconstructs
            ``ae_anomaly_patches`` patches of the labelled anomalies, each centred on one of their defect pixels; their
            normal pixels join the MSE, their defect pixels add ``w * tau * mean(exp(-e / tau))``, ``e`` a pixel's
            squared error and ``tau`` the batch's normal MSE (detached): bounded, scale-free, and spent once a defect's
            error is well above the normal level. The paper's AE copies whatever is locally plausible, a faint defect
            too; this one is taught not to copy what the labels call defective. 0: the paper's AE (nothing is drawn).
        ae_anomaly_patches: defect-centred patches of the labelled anomalies per AE update (with ``ae_anomaly_weight``).
        ae_grad_clip: clip the AE's gradient to this global norm before each step (0: no clipping). Without
            BatchNorm a rare large gradient can saturate the sigmoid output for good (seen on the synthetic category;
            ``ae.output="linear"`` removes the sigmoid instead).
        ae: the autoencoder's config.
        predictor: the predictor's config; its ``in_channels`` is set here from ``predictor_inputs`` and ``profile_stack``.
        device: torch device for the networks and the cached profiles ("cpu", "cuda", "cuda:1", ...).
    """

    patch_size: int = 64
    ae_batch_size: int = 32
    lr: float = 1e-3
    pred_lr: float | None = None
    pred_lr_schedule: str = "constant"
    pred_lr_floor: float = 0.1
    pred_weight_decay: float = 0.0
    pred_batch_size: int = 32
    pred_crop_size: int = 64
    pred_positive_fraction: float = 0.25  # best of 0.2 / 0.25 / 0.5 on magnetic_tile; see the docstring
    alpha_start: float = 1.0
    alpha_end: float = 0.15
    alpha_decay_updates: int = 2000
    pretrain_epochs: int = 100
    pretrain_patches_per_epoch: int | None = None
    predictor_warmup_updates: int = 200
    ae_reset_every: int = 0
    profile_stack: int = 1
    fused_weights: tuple[float, float, float] = DEFAULT_FUSED_WEIGHTS
    fused_blur_sigma: float = 2.0
    predictor_inputs: tuple[str, ...] = ("profile",)
    texture_sigma: float = 8.0
    global_size: int = 64
    global_components: int = 256
    predictor_updates_per_ae_update: int = 1
    profile_refresh_every: int = 1
    synthetic_pool_size: int = 0
    synthetic_paste_fraction: float = 0.5
    synthetic_noise_first_updates: int = 0
    synthetic_paste_rotate: bool = True
    synthetic_paste_match: bool = False
    synthetic_paste_margin: int = 0
    synthetic_shift_fraction: float = 0.0
    synthetic_refresh_updates: int = 16
    synthetic_noise_opacity: tuple[float, float] = (0.2, 1.0)
    synthetic_noise_scales: tuple[int, int] = (2, 6)
    synthetic_noise_min_change: float = 0.0
    synthetic_noise_window: tuple[float, float] | None = None
    pred_flip: bool = False
    pred_zoom: float = 1.0
    pred_jitter: float = 0.0
    pred_loss: str = "bce"
    pred_focal_gamma: float = 2.0
    pred_rank_weight: float = 0.0
    pred_rank_pairs: int = 512
    map_smoothing_sigma: float = 0.0
    map_smoothing_candidates: tuple[float, ...] = ()
    map_flip_tta: bool = False
    map_predictor_flips: bool = False
    map_global_weight: float = 0.0
    predictor_ema: float = 0.0
    ae_lr_after_pretrain: float | None = None
    ae_denoise_fraction: float = 0.0
    ae_anomaly_weight: float = 0.0
    ae_anomaly_patches: int = 8
    ae_grad_clip: float = 0.0
    inference_batch_size: int = 4  # larger batches are slower per image on CPU (activations leave the cache)
    channels_last: bool = True
    ae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.ae, dict):
            self.ae = AutoencoderConfig(**self.ae)
        if isinstance(self.predictor, dict):
            self.predictor = PredictorConfig(**self.predictor)
        self.fused_weights = tuple(float(w) for w in self.fused_weights)  # type: ignore[assignment]
        self.predictor_inputs = tuple(self.predictor_inputs)
        if not self.predictor_inputs or set(self.predictor_inputs) - set(PREDICTOR_INPUTS):
            raise ValueError(f"predictor_inputs must be a non-empty subset of {PREDICTOR_INPUTS}, got {self.predictor_inputs}")
        if self.pred_loss not in PREDICTOR_LOSSES:
            raise ValueError(f"pred_loss must be one of {', '.join(PREDICTOR_LOSSES)}, got {self.pred_loss!r}")
        if self.pred_focal_gamma < 0:
            raise ValueError(f"pred_focal_gamma must be >= 0, got {self.pred_focal_gamma}")
        if self.pred_rank_weight < 0:
            raise ValueError(f"pred_rank_weight must be >= 0, got {self.pred_rank_weight}")
        if self.pred_lr_schedule not in PRED_LR_SCHEDULES:
            raise ValueError(f"pred_lr_schedule must be one of {', '.join(PRED_LR_SCHEDULES)}, got {self.pred_lr_schedule!r}")
        if not 0.0 <= self.pred_lr_floor <= 1.0:
            raise ValueError(f"pred_lr_floor must be in [0, 1], got {self.pred_lr_floor}")
        if self.synthetic_pool_size < 0:
            raise ValueError(f"synthetic_pool_size must be >= 0, got {self.synthetic_pool_size}")
        if self.synthetic_pool_size and self.profile_stack > 1:
            raise ValueError("synthetic_pool_size > 0 needs profile_stack = 1 (synthetic images change at every refresh)")
        if not 0.0 <= self.synthetic_shift_fraction <= 1.0:
            raise ValueError(f"synthetic_shift_fraction must be in [0, 1], got {self.synthetic_shift_fraction}")
        if not 0.0 <= self.synthetic_paste_fraction <= 1.0:
            raise ValueError(f"synthetic_paste_fraction must be in [0, 1], got {self.synthetic_paste_fraction}")
        if self.synthetic_paste_margin < 0:
            raise ValueError(f"synthetic_paste_margin must be >= 0 pixels, got {self.synthetic_paste_margin}")
        self.synthetic_noise_opacity = tuple(float(a) for a in self.synthetic_noise_opacity)  # type: ignore[assignment]
        self.synthetic_noise_scales = tuple(int(v) for v in self.synthetic_noise_scales)  # type: ignore[assignment]
        opacity, scales = self.synthetic_noise_opacity, self.synthetic_noise_scales
        if len(opacity) != 2 or not 0.0 < opacity[0] <= opacity[1] <= 1.0:
            raise ValueError(f"synthetic_noise_opacity must be (min, max) with 0 < min <= max <= 1, got {opacity}")
        if len(scales) != 2 or not 0 <= scales[0] <= scales[1] <= 8:
            raise ValueError(f"synthetic_noise_scales must be (min, max) with 0 <= min <= max <= 8, got {scales}")
        if self.synthetic_noise_window is not None:
            w = tuple(float(v) for v in self.synthetic_noise_window)
            self.synthetic_noise_window = w  # type: ignore[assignment]
            if len(w) != 2 or not 0.0 < w[0] <= w[1] <= 1.0:
                raise ValueError(f"synthetic_noise_window must be None or (min, max) with 0 < min <= max <= 1, got {w}")
        if not 0.0 <= self.synthetic_noise_min_change <= 255.0:
            raise ValueError(f"synthetic_noise_min_change must be in [0, 255], got {self.synthetic_noise_min_change}")
        if not 1.0 <= self.pred_zoom <= 4.0:
            raise ValueError(f"pred_zoom must be in [1, 4] (1: no zoom), got {self.pred_zoom}")
        if not 0.0 <= self.pred_jitter < 1.0:
            raise ValueError(f"pred_jitter must be in [0, 1), got {self.pred_jitter}")
        if not 0.0 <= self.predictor_ema < 1.0:
            raise ValueError(f"predictor_ema must be in [0, 1), got {self.predictor_ema}")
        if not 0.0 <= self.map_global_weight <= 1.0:
            raise ValueError(f"map_global_weight must be in [0, 1], got {self.map_global_weight}")
        if self.map_smoothing_sigma < 0:
            raise ValueError(f"map_smoothing_sigma must be >= 0, got {self.map_smoothing_sigma}")
        candidates = self.map_smoothing_candidates
        try:
            if isinstance(candidates, str):
                raise TypeError
            self.map_smoothing_candidates = tuple(float(s) for s in candidates)  # type: ignore[assignment]
        except (TypeError, ValueError):
            raise ValueError(
                f"map_smoothing_candidates must be a list of sigmas >= 0 (e.g. [2, 4, 8, 16]), got {candidates!r}"
            ) from None
        if any(s < 0 for s in self.map_smoothing_candidates):
            raise ValueError(f"map_smoothing_candidates must all be >= 0, got {self.map_smoothing_candidates}")
        if not 0.0 <= self.ae_denoise_fraction <= 1.0:
            raise ValueError(f"ae_denoise_fraction must be in [0, 1], got {self.ae_denoise_fraction}")
        if self.ae_anomaly_weight < 0:
            raise ValueError(f"ae_anomaly_weight must be >= 0, got {self.ae_anomaly_weight}")
        if self.ae_anomaly_patches < 1:
            raise ValueError(f"ae_anomaly_patches must be >= 1, got {self.ae_anomaly_patches}")
        if self.ae_grad_clip < 0:
            raise ValueError(f"ae_grad_clip must be >= 0, got {self.ae_grad_clip}")
        if self.ae_lr_after_pretrain is not None and self.ae_lr_after_pretrain <= 0:
            raise ValueError(f"ae_lr_after_pretrain must be None or > 0, got {self.ae_lr_after_pretrain}")
        positive = [
            "patch_size",
            "ae_batch_size",
            "pred_batch_size",
            "pred_crop_size",
            "profile_stack",
            "predictor_updates_per_ae_update",
            "profile_refresh_every",
            "synthetic_refresh_updates",
            "pred_rank_pairs",
        ]
        for name in [*positive, "inference_batch_size"]:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "alpha_decay_updates",
            "pretrain_epochs",
            "predictor_warmup_updates",
            "ae_reset_every",
            "synthetic_noise_first_updates",
        ):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.pretrain_patches_per_epoch is not None and self.pretrain_patches_per_epoch < 1:
            raise ValueError(
                f"pretrain_patches_per_epoch must be None (one per image) or >= 1, got {self.pretrain_patches_per_epoch}"
            )
        if self.lr <= 0 or (self.pred_lr is not None and self.pred_lr <= 0):
            raise ValueError(f"learning rates must be > 0, got lr={self.lr}, pred_lr={self.pred_lr}")
        if self.pred_weight_decay < 0:
            raise ValueError(f"pred_weight_decay must be >= 0, got {self.pred_weight_decay}")
        if not 0.0 <= self.pred_positive_fraction <= 1.0:
            raise ValueError(f"pred_positive_fraction must be in [0, 1], got {self.pred_positive_fraction}")
        if self.alpha_start < 0 or self.alpha_end < 0:
            raise ValueError(f"alpha_start and alpha_end must be >= 0, got {self.alpha_start}, {self.alpha_end}")
        if len(self.fused_weights) != 3:
            raise ValueError(f"fused_weights must be (w_mae, w_var, w_grad), got {self.fused_weights}")
        if self.patch_size % self.ae.stride:
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of the AE's total stride {self.ae.stride}")
        if self.ae.in_channels != 3:
            raise ValueError(f"ae.in_channels must be 3 (RGB images), got {self.ae.in_channels}")
        # The predictor reads K stacked 3-channel profiles, the 3-channel image and 2 texture channels, as asked
        n_in = (
            self.ae.in_channels
            * (self.profile_stack * ("profile" in self.predictor_inputs) + ("image" in self.predictor_inputs))
            + TEXTURE_CHANNELS * ("texture" in self.predictor_inputs)
            + GLOBAL_CHANNELS * ("global" in self.predictor_inputs)
        )
        if self.global_size < 1 or self.global_components < 1:
            sizes = f"{self.global_size}, {self.global_components}"
            raise ValueError(f"global_size and global_components must be >= 1, got {sizes}")
        if self.texture_sigma <= 0:
            raise ValueError(f"texture_sigma must be > 0, got {self.texture_sigma}")
        if self.map_predictor_flips and (not self.pred_flip or self.predictor.coord_channels):
            logger.warning(
                "map_predictor_flips averages the predictor over flips of its input that it %s",
                "never trains on (pred_flip is off)" if not self.pred_flip else "sees with unflipped coordinate channels",
            )
        self.predictor = replace(self.predictor, in_channels=n_in)
        try:
            torch.device(self.device)
        except RuntimeError as e:
            raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:0', got {self.device!r}") from e

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (lists for tuples): safe for ``torch.load(weights_only=True)`` and YAML."""
        return plain(asdict(self))  # type: ignore[return-value]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError listing the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = set(d) - valid
        if unknown:
            raise ValueError(f"unknown DetectorConfig keys {sorted(unknown)}; valid keys: {sorted(valid)}")
        return cls(**d)


def _window_on(pixel: int, shape: tuple[int, int], side: int, offset: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """Top-left corner of the ``side``-pixel window centred on flat index ``pixel`` of an (H, W) image, moved by
    ``offset`` (dy, dx) and kept inside the image."""
    H, W = shape
    y = min(max(pixel // W + offset[0] - side // 2, 0), H - side)
    x = min(max(pixel % W + offset[1] - side // 2, 0), W - side)
    return y, x


def _zoom_crop(
    profile: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, side: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resize one training window to ``side`` x ``side``: profile and image bilinearly, the mask thresholded at 0.5.

    (C, w, w) float, (3, w, w) uint8 and (w, w) bool -> (C, side, side), (3, side, side) uint8, (side, side) bool.
    """

    def resize(x: torch.Tensor) -> torch.Tensor:  # (C, w, w) -> (C, side, side) float
        return torch.nn.functional.interpolate(x[None].float(), size=(side, side), mode="bilinear", align_corners=False)[0]

    image = resize(image).round_().clamp_(0, 255).to(torch.uint8)
    mask = resize(mask[None])[0] >= 0.5
    return resize(profile).to(profile.dtype), image, mask


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), reflect padding (replicate where the map is too small to reflect)."""
    radius = max(1, int(3.0 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (2r + 1,)
    B, C, H, W = x.shape
    mode = "reflect" if min(H, W) > radius else "replicate"
    y = x.reshape(B * C, 1, H, W)
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(y, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(y, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return y.reshape(B, C, H, W)


def texture_channels(images: torch.Tensor, sigma: float = 8.0) -> torch.Tensor:
    """Local brightness and contrast of each pixel, as robust z-scores within its own image.

    The grey image's Gaussian-weighted local mean and standard deviation (window sigma ``sigma``), each centred on
    its image's median and divided by its median absolute deviation: a region brighter, darker, smoother or rougher
    than the rest of its image scores far from 0, whatever the image's overall exposure.

    Args:
        images: float (B, 3, H, W) in [0, 1].
        sigma: the local window's Gaussian sigma in pixels.

    Returns:
        (B, 2, H, W): [local mean, local standard deviation], standardised per image and channel, clipped to
        ±``TEXTURE_CLIP``.
    """
    H, W = images.shape[-2:]
    grey = images.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    moments = torch.cat([grey, grey * grey], dim=1)  # (B, 2, H, W): x, x^2
    k = max(1, min(int(sigma // 2), H, W))  # the window is wide: its moments can be taken on k x k block means
    if k > 1:
        moments = torch.nn.functional.avg_pool2d(moments, k)  # (B, 2, H / k, W / k)
    blurred = _gaussian_blur(moments, sigma / k)  # (B, 2, h, w): local E[x], E[x^2]
    if k > 1:
        blurred = torch.nn.functional.interpolate(blurred, size=(H, W), mode="bilinear", align_corners=False)
    mean = blurred[:, :1]
    std = (blurred[:, 1:] - mean * mean).clamp_min(0.0).sqrt()
    stats = torch.cat([mean, std], dim=1)  # (B, 2, H, W)
    flat = stats.flatten(2)  # (B, 2, H*W)
    median = flat.median(dim=-1).values[..., None, None]  # (B, 2, 1, 1)
    mad = (stats - median).abs().flatten(2).median(dim=-1).values[..., None, None]
    # clipped: where over half an image has the same statistics (a flat background) the MAD is ~0
    return ((stats - median) / (mad + 1e-4)).clamp(-TEXTURE_CLIP, TEXTURE_CLIP)  # (B, 2, H, W)


def smooth_maps(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of float32 (N, H, W) anomaly maps (reflected borders); sigma 0 returns them as they are."""
    if sigma <= 0 or not len(maps):
        return maps
    return np.stack([cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for m in maps])


def close_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """Grey-level morphological closing of float32 (N, H, W) anomaly maps with a ``size``-pixel disc (reflected
    borders); 0 returns them as they are. Closing never lowers a score: it raises the low pixels between lit ones
    closer than ``size``, such as the inside of a large defect whose edge alone the predictor marks."""
    if size <= 0 or not len(maps):
        return maps
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return np.stack([cv2.morphologyEx(m, cv2.MORPH_CLOSE, disc, borderType=cv2.BORDER_REFLECT) for m in maps])


def choose_smoothing(
    raw_maps: np.ndarray, masks: np.ndarray, sigmas: tuple[float, ...], image_labels: np.ndarray | None = None
) -> tuple[float, dict[str, float], np.ndarray, dict[float, dict[str, float]]]:
    """The smoothing sigma with the best pixel F1max on a labelled split (ties: the smaller sigma).

    Args:
        raw_maps: float32 (N, H, W) unsmoothed anomaly maps; masks: bool (N, H, W); sigmas: the candidates.
        image_labels: (N,) bool for ``compute_metrics``' image AUROC (None: from the masks).

    Returns:
        The chosen sigma, the split's metrics with it, its smoothed maps (N, H, W), and every candidate's metrics.
    """
    if not sigmas:
        raise ValueError("choose_smoothing needs at least one candidate sigma")
    best: tuple[float, dict[str, float], np.ndarray] | None = None
    scores: dict[float, dict[str, float]] = {}
    for sigma in sorted(sigmas):
        maps = smooth_maps(raw_maps, sigma)
        scores[sigma] = compute_metrics(maps, masks, image_labels=image_labels)
        if best is None or scores[sigma]["pixel_f1max"] > best[1]["pixel_f1max"]:
            best = (sigma, scores[sigma], maps)
    assert best is not None
    return (*best, scores)


def _images_to_uint8_chw(images: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy -> uint8 (N, 3, H, W) torch (a copy, contiguous)."""
    if isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a numpy uint8 array (N, H, W, 3)")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be a uint8 array of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


class Detector:
    """Autoencoder + predictor with their optimisers, schedules and the pool's loss-profile cache.

    Args:
        config: hyperparameters.
        train_images: normal training images, uint8 (N, H, W, 3) RGB at the working size; None for an
            inference-only detector (e.g. one rebuilt from a checkpoint for evaluation).
        pool_images: the predictor's training images (labelled anomalies + normal pool), uint8 (M, H, W, 3).
        pool_masks: their defect masks, bool (M, H, W) (all False for normal images).
        seed: seeds the private generator behind every random choice of this object.

    Attributes:
        ae, predictor: the networks. ae_optimizer, predictor_optimizer: their Adam optimisers.
        ae_updates, predictor_updates: optimiser steps taken so far (warm-ups included).
        ae_version: bumped whenever the AE's weights change (update, reset, load); the profile cache
            compares it to decide whether to recompute.
        last_ae_loss, last_pred_loss: the latest training losses (None before the first update).
    """

    def __init__(
        self,
        config: DetectorConfig | None = None,
        train_images: np.ndarray | None = None,
        pool_images: np.ndarray | None = None,
        pool_masks: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config = config or DetectorConfig()
        self.device = torch.device(config.device)
        self._memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self._gen = torch.Generator().manual_seed(int(seed))
        self.seed = int(seed)

        # Data stays uint8 (4x smaller than float32) and is converted lazily, patch by patch
        self._train: torch.Tensor | None = None  # (N, 3, H, W) uint8
        if train_images is not None:
            self._train = _images_to_uint8_chw(train_images, "train_images")
            self._check_size(self._train, "train_images")
        self._pool: torch.Tensor | None = None  # (M, 3, H, W) uint8
        self._pool_masks: torch.Tensor | None = None  # (M, H, W) bool
        self._positives: list[tuple[int, torch.Tensor]] = []  # (pool index, flat indices of its defect pixels)
        if (pool_images is None) != (pool_masks is None):
            raise ValueError("pool_images and pool_masks must be given together")
        if pool_images is not None and pool_masks is not None:
            self._pool = _images_to_uint8_chw(pool_images, "pool_images")
            self._check_size(self._pool, "pool_images")
            expected = (pool_images.shape[0], *pool_images.shape[1:3])
            if pool_masks.shape != expected:
                raise ValueError(f"pool_masks must have shape {expected}, got {pool_masks.shape}")
            self._pool_masks = torch.from_numpy(np.ascontiguousarray(pool_masks.astype(bool)))
            for i in range(len(self._pool_masks)):
                flat = torch.nonzero(self._pool_masks[i].flatten()).flatten()
                if len(flat):
                    self._positives.append((i, flat))

        # The PCA of whole normal images behind the "global" input and map_global_weight: fitted here for the input (or on
        # first use by the maps), restored by load_state_dict without data
        self.global_residual: GlobalResidual | None = None
        if "global" in config.predictor_inputs and self._train is not None:
            self._global()

        if config.ae_anomaly_weight > 0 and self._train is not None and not self._positives:
            logger.warning(
                "ae_anomaly_weight %g has no labelled defect pixels to act on: the AE trains as the paper's",
                config.ae_anomaly_weight,
            )
        self.ae = self._new_ae()
        self.predictor = self._new_predictor()
        # The weights' moving average that makes the maps (predictor_ema > 0); a copy, never trained directly
        self.predictor_average = copy.deepcopy(self.predictor).requires_grad_(False) if config.predictor_ema else None
        self.ae_optimizer = torch.optim.Adam(self.ae.parameters(), lr=config.lr)
        pred_lr = config.pred_lr or config.lr
        self.predictor_optimizer: torch.optim.Optimizer = (
            torch.optim.AdamW(self.predictor.parameters(), lr=pred_lr, weight_decay=config.pred_weight_decay)
            if config.pred_weight_decay
            else torch.optim.Adam(self.predictor.parameters(), lr=pred_lr)
        )

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
        self._pred_global: torch.Tensor | None = None  # (M + S, 3, s, s) their coarse global residuals, made lazily

    # ------------------------------------------------------------------ construction helpers
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
        data = self._train if what == "train" else self._pool
        if data is None or len(data) == 0:
            raise RuntimeError(f"this Detector was built without {what} images; pass them to the constructor")
        return data

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

    def defect_patches(self, n: int, side: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches of the labelled anomalies, each centred (within the image) on a defect pixel: the labelled image
        uniformly, then one of its defect pixels uniformly (so every labelled image counts alike, whatever its size).

        Args:
            n: number of patches.
            side: their side p (None: ``config.patch_size``).

        Returns:
            float32 (n, 3, p, p) in [0, 1] and their masks, bool (n, p, p), on the CPU.
        """
        if not self._pool_positives:
            raise RuntimeError("this Detector has no labelled defect pixels: pass anomalous pool images with masks")
        pool, masks = self._require("pool"), self._pool_masks
        assert masks is not None
        H, W = pool.shape[-2:]
        p = side or self.config.patch_size
        which = torch.randint(0, len(self._pool_positives), (n,), generator=self._gen).tolist()
        patches, patch_masks = [], []
        for k in which:
            i, flat = self._pool_positives[k]
            pixel = int(flat[int(torch.randint(0, len(flat), (1,), generator=self._gen))])
            y, x = _window_on(pixel, (H, W), p)
            patches.append(pool[i, :, y : y + p, x : x + p])
            patch_masks.append(masks[i, y : y + p, x : x + p])
        return torch.stack(patches).float() / 255.0, torch.stack(patch_masks)  # (n, 3, p, p), (n, p, p)

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
        """One Adam step of the AE on the MSE of ``patches`` (eq. 7); with ``config.ae_denoise_fraction`` a share of
        them is damaged first and the MSE is against the clean patches.

        When ``config.ae_reset_every = N > 0``, the AE and its optimiser are re-initialised once N, 2N, ...
        updates after pre-training are done, just before the next one (so training update N + 1 is the first on
        fresh weights). Never inside :meth:`pretrain_ae`, whose updates do not count.

        Args:
            patches: float32 (B, 3, p, p) in [0, 1] (any p that is a multiple of the AE's stride).

        Returns:
            The MSE before the step (of the normal pixels, with ``config.ae_anomaly_weight``).
        """
        if patches.ndim != 4 or patches.shape[1] != 3:
            raise ValueError(f"patches must be (B, 3, p, p), got {tuple(patches.shape)}")
        N = self.config.ae_reset_every
        if N and not self._pretraining and self.ae_train_updates and self.ae_train_updates % N == 0:
            self.reset_ae()
        target = patches.to(self.device, torch.float32).contiguous(memory_format=self._memory_format)
        x = target
        if self.config.ae_denoise_fraction > 0:
            damaged, _ = corrupt_patches(patches.detach().float().cpu(), self._gen, self.config.ae_denoise_fraction)
            x = damaged.to(self.device).contiguous(memory_format=self._memory_format)  # (B, 3, p, p)
        weight = self.config.ae_anomaly_weight if self._pool_positives else 0.0
        defect = None
        if weight > 0:  # the labelled anomalies' patches join the batch: their normal pixels the MSE, their defects the push
            extra, extra_masks = self.defect_patches(self.config.ae_anomaly_patches, side=patches.shape[-1])
            extra = extra.to(self.device).contiguous(memory_format=self._memory_format)
            x, target = torch.cat([x, extra]), torch.cat([target, extra])  # (B + n, 3, p, p)
            clean = torch.zeros(len(patches), *patches.shape[-2:], dtype=torch.bool)
            defect = torch.cat([clean, extra_masks]).to(self.device)  # (B + n, p, p)
        # Train mode: BatchNorm uses batch statistics, dropout is on (drawing from the private RNG)
        self.ae.train()
        with self._private_rng():
            if defect is None:
                loss = mse = torch.mean((self.ae(x) - target) ** 2)
            else:
                loss, mse = anomaly_push_loss(self.ae(x), target, defect, weight)
            self.ae_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.ae_grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.ae.parameters(), self.config.ae_grad_clip)
            self.ae_optimizer.step()
        self.ae_updates += 1
        self.ae_train_updates += 0 if self._pretraining else 1
        self.ae_version += 1
        self.last_ae_loss = float(mse.detach())
        return self.last_ae_loss

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

    def residual_map(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """AE-only anomaly map (the classic unsupervised residual baseline): channel-mean loss profile.

        Args:
            images: as for :meth:`loss_profiles`.

        Returns:
            float32 (N, H, W), not normalised (residuals of images in [0, 1]).
        """
        chunk = 64  # bounds the (chunk, 3, H, W) float32 profiles held at once: a 762-image category would need 600 MB
        parts = [self.loss_profiles(images[i : i + chunk]).mean(dim=1).cpu().numpy() for i in range(0, len(images), chunk)]
        return np.concatenate(parts) if parts else self.loss_profiles(images).mean(dim=1).cpu().numpy()

    def fused_maps(self, images: np.ndarray) -> np.ndarray:
        """Fused structural maps (paper eqs. 9-12) computed with the *current* AE.

        The env calls this once right after AE pre-training and caches the result, which makes ``Z_mae``
        the pre-trained AE's residual as the paper asks.

        Args:
            images: uint8 (N, H, W, 3).

        Returns:
            float32 (N, H, W) in [0, 1].
        """
        if len(images) == 0:
            return np.zeros((0, *images.shape[1:3]), np.float32)
        mae = self.residual_map(images)  # (N, H, W)
        w, sigma = self.config.fused_weights, self.config.fused_blur_sigma
        return np.stack([fused_structural_map(img, m, weights=w, blur_sigma=sigma) for img, m in zip(images, mae)])

    def pretrain_ae(self, epochs: int | None = None, progress: bool = False) -> list[float]:
        """AE pre-training on uniform random normal patches (§III.E, first warm-up).

        Args:
            epochs: number of epochs; None: ``config.pretrain_epochs``. An epoch is
                ``config.pretrain_patches_per_epoch`` patches (default: one per training image) in
                mini-batches of ``config.ae_batch_size``.
            progress: show a tqdm bar.

        Returns:
            The mean training loss of each epoch.
        """
        epochs = self.config.pretrain_epochs if epochs is None else epochs
        n_patches = self.config.pretrain_patches_per_epoch or len(self._require("train"))
        n_batches = max(1, math.ceil(n_patches / self.config.ae_batch_size))
        history: list[float] = []
        bar = tqdm(range(epochs), desc="AE pre-training", disable=not progress)
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
                "white, with no gradient): use ae.output=linear, ae.norm=batch, a lower lr or ae_grad_clip",
                100 * saturated,
            )

    # ------------------------------------------------------------------ predictor
    @property
    def alpha(self) -> float:
        """Current weight of normal pixels in the weighted BCE: linear decay over predictor updates."""
        c = self.config
        if c.alpha_decay_updates <= 0:
            return float(c.alpha_start)
        t = min(1.0, self.predictor_updates / c.alpha_decay_updates)
        return float(c.alpha_start + t * (c.alpha_end - c.alpha_start))

    @property
    def pred_lr(self) -> float:
        """The predictor's learning rate for its next update (``pred_lr_schedule``); a function of the update count,
        so a resumed run continues the schedule without saving any scheduler state."""
        c = self.config
        peak = self.predictor_optimizer.defaults["lr"]  # pred_lr, or lr when it is None (set once, in __init__)
        warmup = c.predictor_warmup_updates
        if c.pred_lr_schedule == "constant" or warmup <= 0:
            return float(peak)
        t = min(1.0, self.predictor_updates / warmup)
        return float(peak * (c.pred_lr_floor + (1.0 - c.pred_lr_floor) * 0.5 * (1.0 + math.cos(math.pi * t))))

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
        noise_only = self.predictor_updates < c.synthetic_noise_first_updates  # the self-supervised start
        paste_fraction = 0.0 if noise_only else c.synthetic_paste_fraction
        for _ in range(c.synthetic_pool_size):
            target = hwc[int(rng.integers(len(train)))].numpy()
            # drawn only when enabled, so the streams of configurations without shifts stay as they were
            if c.synthetic_shift_fraction and rng.random() < c.synthetic_shift_fraction:
                image, mask = shift_anomaly(target, rng)
            elif self._pool_positives and rng.random() < paste_fraction:
                i = self._pool_positives[int(rng.integers(len(self._pool_positives)))][0]
                source, source_mask = pool[i].permute(1, 2, 0).numpy(), pool_masks[i].numpy()
                image, mask = paste_defect(
                    target,
                    source,
                    source_mask,
                    rng,
                    rotate=c.synthetic_paste_rotate,
                    match=c.synthetic_paste_match,
                    margin=c.synthetic_paste_margin,
                )
            else:
                source = hwc[int(rng.integers(len(train)))].numpy()
                image, mask = noise_anomaly(
                    target,
                    source,
                    rng,
                    c.synthetic_noise_opacity,
                    c.synthetic_noise_scales,
                    c.synthetic_noise_min_change,
                    c.synthetic_noise_window,
                )
            images.append(image)
            masks.append(mask)
        synth = _images_to_uint8_chw(np.stack(images), "synthetic images")  # (S, 3, H, W)
        synth_masks = torch.from_numpy(np.stack(masks))  # (S, H, W)
        self._pred_images = torch.cat([pool, synth])
        self._pred_global = None
        self._pred_masks = torch.cat([pool_masks, synth_masks])
        M = len(pool)
        self._positives = list(self._pool_positives)
        for j in range(len(synth_masks)):
            flat = torch.nonzero(synth_masks[j].flatten()).flatten()
            if len(flat):
                self._positives.append((M + j, flat))

    def _predictor_input(
        self, profiles: torch.Tensor, images: torch.Tensor, global_maps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Stack what the predictor reads: (B, 3K, H, W) profiles and (B, 3, H, W) float images -> (B, C_in, H, W).

        ``global_maps`` (B, 3, H, W): the "global" input for crops, cut from their whole images' residuals; None: the
        images are whole and their global residual is computed here."""
        parts = [profiles] if "profile" in self.config.predictor_inputs else []
        if "image" in self.config.predictor_inputs:
            parts.append(images)
        if "texture" in self.config.predictor_inputs:
            parts.append(texture_channels(images, self.config.texture_sigma))
        if "global" in self.config.predictor_inputs:
            parts.append(self._global()(images) if global_maps is None else global_maps)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _global(self) -> GlobalResidual:
        """The global residual's PCA, fitted on first use from the training images (seeded by ``seed`` alone: it draws
        nothing from the private generator, so the training stream is the same with or without it)."""
        if self.global_residual is None:
            self.global_residual = GlobalResidual(self.config.global_size, self.config.global_components)
        if not self.global_residual.fitted:
            self.global_residual.fit(self._require("train"), seed=self.seed).to(self.device)
        return self.global_residual

    def _pool_global(self) -> torch.Tensor | None:
        """The coarse global residuals (M + S, 3, s, s) of the predictor's training images (None without that input)."""
        if "global" not in self.config.predictor_inputs or self._pred_images is None:
            return None
        if self._pred_global is None:
            images, bs, pca = self._pred_images, self.config.inference_batch_size * 8, self._global()
            with torch.inference_mode():
                parts = [pca.coarse_residual(self._to_float(images[i : i + bs])) for i in range(0, len(images), bs)]
            self._pred_global = torch.cat(parts).clone()  # clone: a normal tensor, not an inference one
        return self._pred_global

    def _sample_crops(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n predictor training crops: (n, C_in, c, c) predictor inputs and (n, 1, c, c) float masks."""
        assert self._profiles is not None and self._pred_masks is not None and self._pred_images is not None
        M, _, H, W = self._profiles.shape
        c = min(self.config.pred_crop_size, H, W)
        g = self._gen
        xs_, ims_, ys_, gs_ = [], [], [], []
        pool_global = self._pool_global()  # (M + S, 3, s, s) or None
        zoom = self.config.pred_zoom
        for _ in range(n):
            w = c  # the window's side: c, or c / z for a zoomed crop (drawn only when enabled: other streams unchanged)
            if zoom > 1.0:
                w = max(1, round(c / (1.0 + (zoom - 1.0) * float(torch.rand((), generator=g)))))
            if self._positives and float(torch.rand((), generator=g)) < self.config.pred_positive_fraction:
                # Centre (with jitter up to a quarter window) on a random defect pixel of a random anomaly
                j = int(torch.randint(0, len(self._positives), (), generator=g))
                i, flat = self._positives[j]
                pix = int(flat[int(torch.randint(0, len(flat), (), generator=g))])
                jy, jx = (torch.randint(-(w // 4), w // 4 + 1, (2,), generator=g)).tolist()
                y0, x0 = _window_on(pix, (H, W), w, (jy, jx))
            else:
                i = int(torch.randint(0, M, (), generator=g))
                y0 = int(torch.randint(0, H - w + 1, (), generator=g))
                x0 = int(torch.randint(0, W - w + 1, (), generator=g))
            prof = self._profiles[i, :, y0 : y0 + w, x0 : x0 + w]  # (3K, w, w)
            im = self._pred_images[i, :, y0 : y0 + w, x0 : x0 + w]  # (3, w, w) uint8
            mask = self._pred_masks[i, y0 : y0 + w, x0 : x0 + w]  # (w, w) bool
            n_prof = len(prof)
            if pool_global is not None:  # the whole image's global residual, cut like the rest (and zoomed with them)
                glob = GlobalResidual.upsample(pool_global[i : i + 1], (H, W))[0, :, y0 : y0 + w, x0 : x0 + w]  # (3, w, w)
                prof = torch.cat([prof, glob])
            if w != c:
                prof, im, mask = _zoom_crop(prof, im, mask, c)
            if pool_global is not None:
                prof, glob = prof[:n_prof], prof[n_prof:]
                gs_.append(glob)
            xs_.append(prof)
            ims_.append(im)
            ys_.append(mask)
        images = self._to_float(torch.stack(ims_))  # (n, 3, c, c)
        jitter = self.config.pred_jitter
        if jitter and "image" in self.config.predictor_inputs:
            gain = 1.0 + jitter * (2.0 * torch.rand(n, 1, 1, 1, generator=g) - 1.0)  # (n, 1, 1, 1) in [1 - j, 1 + j]
            offset = 0.5 * jitter * (2.0 * torch.rand(n, 1, 1, 1, generator=g) - 1.0)  # in [-j/2, j/2]
            images = (images * gain.to(images.device) + offset.to(images.device)).clamp_(0.0, 1.0)
        x = self._predictor_input(torch.stack(xs_), images, torch.stack(gs_) if gs_ else None)  # (n, C_in, c, c)
        y = torch.stack(ys_).unsqueeze(1).to(self.device, torch.float32)  # (n, 1, c, c)
        if self.config.pred_flip:
            # Flip each crop with its mask: same choice for x and y, drawn from the private generator
            for dim in (-1, -2):
                flip = torch.rand(n, generator=g) < 0.5
                x[flip], y[flip] = x[flip].flip(dim), y[flip].flip(dim)
        return x.contiguous(memory_format=self._memory_format), y

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
        if self.config.pred_rank_weight > 0:
            rank = pairwise_auc_loss(prob, y, self.config.pred_rank_pairs, self._gen)
            loss = loss + self.config.pred_rank_weight * rank
        self.predictor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.predictor_optimizer.param_groups:
            group["lr"] = self.pred_lr
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
            progress: show a tqdm bar.

        Returns:
            The loss of each update.
        """
        updates = self.config.predictor_warmup_updates if updates is None else updates
        losses = []
        bar = tqdm(range(updates), desc="predictor warm-up", disable=not progress)
        for _ in bar:
            losses.append(self.predictor_update())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", alpha=f"{self.alpha:.3f}")
        return losses

    def anomaly_map(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Per-pixel defect probabilities: image -> AE -> loss profile -> predictor (all in eval mode).

        With ``profile_stack = K > 1`` the current profile is repeated K times at inference: a single image
        has no history of profiles, and a converged AE's recent profiles are close to the current one.

        Args:
            images: uint8 (N, H, W, 3) numpy (or (N, 3, H, W) torch, as for :meth:`loss_profiles`).

        Returns:
            float32 (N, H, W) in [0, 1], at the input resolution.
        """
        self.ae.eval()
        predictor = self.predictor if self.predictor_average is None else self.predictor_average
        predictor.eval()
        K = self.config.profile_stack
        out = []
        bs = self.config.inference_batch_size

        def probabilities(x: torch.Tensor) -> torch.Tensor:  # (b, 3, H, W) -> (b, H, W)
            prof = (x - self.ae(x)).abs()  # (b, 3, H, W)
            if K > 1:
                prof = prof.repeat(1, K, 1, 1)  # (b, 3K, H, W)
            z = self._predictor_input(prof, x)  # (b, C_in, H, W)
            if not self.config.map_predictor_flips:
                return predictor(z)[:, 0]
            maps = [predictor(z)[:, 0]]  # (b, H, W)
            for dims in ((-1,), (-2,), (-2, -1)):  # mirrored, upside down, both: each map flipped back
                maps.append(predictor(z.flip(dims))[:, 0].flip(dims))
            return torch.stack(maps).mean(0)  # (b, H, W)

        with torch.inference_mode():
            for i in range(0, len(images), bs):
                x = self._to_float(images[i : i + bs])  # (b, 3, H, W)
                p = probabilities(x)  # (b, H, W)
                if self.config.map_flip_tta:
                    p = 0.5 * (p + probabilities(x.flip(-1)).flip(-1))
                if self.config.map_global_weight:
                    p = fuse_global(p, self._global().normalised(x), self.config.map_global_weight)
                out.append(p.cpu())
        if not out:
            H, W = images.shape[1:3] if isinstance(images, np.ndarray) else images.shape[-2:]
            return np.zeros((0, H, W), np.float32)
        return smooth_maps(torch.cat(out).numpy(), self.config.map_smoothing_sigma)  # (N, H, W)

    def global_map(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """The normalised global residual that ``map_global_weight`` mixes in: uint8 (N, H, W, 3) -> float32 (N, H, W)."""
        bs, out = self.config.inference_batch_size, []
        with torch.inference_mode():
            for i in range(0, len(images), bs):
                out.append(self._global().normalised(self._to_float(images[i : i + bs])).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, *images.shape[1:3]), np.float32)

    # ------------------------------------------------------------------ the no-RL control
    def fit_random(
        self, ae_updates: int, progress: bool = False, predictor_updates_per_ae_update: int | None = None
    ) -> dict[str, list[float]]:
        """The "no-RL" detector: AE updates on uniform random patches, each followed by predictor updates.

        This is the control the env's uniform random sampler should match.

        Args:
            ae_updates: number of AE updates (mini-batches of ``config.ae_batch_size`` patches).
            progress: show a tqdm bar.
            predictor_updates_per_ae_update: predictor updates after each AE update (the profiles are
                refreshed once, before the first); None: ``config.predictor_updates_per_ae_update``.

        Returns:
            ``{"ae_loss": [...], "pred_loss": [...], "alpha": [...]}``, one entry per AE update
            (pred_loss and alpha: the last predictor update's).
        """
        if predictor_updates_per_ae_update is None:
            predictor_updates_per_ae_update = self.config.predictor_updates_per_ae_update
        hist: dict[str, list[float]] = {"ae_loss": [], "pred_loss": [], "alpha": []}
        bar = tqdm(range(ae_updates), desc="fit (random patches)", disable=not progress)
        for _ in bar:
            hist["ae_loss"].append(self.ae_update(self.random_patches(self.config.ae_batch_size)))
            hist["alpha"].append(self.alpha)
            for _ in range(predictor_updates_per_ae_update):
                self.predictor_update()
            hist["pred_loss"].append(float("nan") if self.last_pred_loss is None else self.last_pred_loss)
            bar.set_postfix(ae=f"{hist['ae_loss'][-1]:.5f}", pred=f"{hist['pred_loss'][-1]:.4f}")
        return hist

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training and to evaluate, as tensors, primitives, dicts and lists.

        The pool's profile stack is included only for ``profile_stack > 1`` (older profiles cannot be
        recomputed); with K = 1 the profile is recomputed from the AE on the next refresh. Like
        ``nn.Module.state_dict``, the network tensors alias the live weights: deep-copy to snapshot in memory.
        """
        stack = self._profiles.cpu() if self.config.profile_stack > 1 and self._profiles is not None else None
        pca = self.global_residual
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "seed": self.seed,
            "ae": self.ae.state_dict(),
            "predictor": self.predictor.state_dict(),
            "predictor_average": None if self.predictor_average is None else self.predictor_average.state_dict(),
            "global_residual": pca.state_dict() if pca is not None and pca.fitted else None,
            "ae_optimizer": self.ae_optimizer.state_dict(),
            "predictor_optimizer": self.predictor_optimizer.state_dict(),
            "counters": {
                "ae_updates": self.ae_updates,
                "ae_train_updates": self.ae_train_updates,
                "ae_version": self.ae_version,
                "predictor_updates": self.predictor_updates,
                "last_ae_loss": self.last_ae_loss,
                "last_pred_loss": self.last_pred_loss,
                "profiles_fresh": self._profiles is not None and self._profiles_version == self.ae_version,
            },
            "rng": self._gen.get_state(),
            "profile_stack": stack,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. The networks' configs, the predictor's inputs (and their ``texture_sigma``) and
        ``profile_stack`` must match this detector's.

        Raises:
            ValueError: the state is not a detector state or its networks do not fit this config.
        """
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a detector state (expected a dict with format={CHECKPOINT_FORMAT!r})")
        missing = {"config", "ae", "predictor", "ae_optimizer", "predictor_optimizer", "counters", "rng"} - set(state)
        if missing:
            raise ValueError(f"detector state lacks {sorted(missing)}")
        saved = DetectorConfig.from_dict(state["config"])
        for name in ("ae", "predictor", "profile_stack"):
            ours, theirs = getattr(self.config, name), getattr(saved, name)
            if ours != theirs:
                raise ValueError(f"saved {name} config {theirs} does not match this detector's {ours}")
        # What the predictor reads: two input sets with the same channel count would otherwise load into each other
        # silently (the stacking order is fixed, so the sets are compared, not the tuples)
        ours_in, theirs_in = set(self.config.predictor_inputs), set(saved.predictor_inputs)
        if ours_in != theirs_in:
            raise ValueError(f"saved predictor_inputs {sorted(theirs_in)} do not match this detector's {sorted(ours_in)}")
        if "texture" in ours_in and saved.texture_sigma != self.config.texture_sigma:
            ours_sigma, theirs_sigma = self.config.texture_sigma, saved.texture_sigma
            raise ValueError(f"saved texture_sigma {theirs_sigma} does not match this detector's {ours_sigma}")
        if "global" in ours_in or self.config.map_global_weight:
            for name in ("global_size", "global_components"):
                ours_v, theirs_v = getattr(self.config, name), getattr(saved, name)
                if ours_v != theirs_v:
                    raise ValueError(f"saved {name} {theirs_v} does not match this detector's {ours_v}")
        if "global" in ours_in and not isinstance(state.get("global_residual"), dict):
            raise ValueError("detector state lacks the fitted PCA of its 'global' predictor input")
        if saved.map_smoothing_candidates:  # the sigma that validation chose belongs to these weights
            self.config.map_smoothing_sigma = saved.map_smoothing_sigma
        try:
            self.ae.load_state_dict(state["ae"])
            self.predictor.load_state_dict(state["predictor"])
            if self.predictor_average is not None:
                self.predictor_average.load_state_dict(state.get("predictor_average") or state["predictor"])
            self.ae_optimizer.load_state_dict(state["ae_optimizer"])
            self.predictor_optimizer.load_state_dict(state["predictor_optimizer"])
            self._gen.set_state(state["rng"])
            if isinstance(state.get("global_residual"), dict):
                self.global_residual = GlobalResidual(self.config.global_size, self.config.global_components)
                self.global_residual.load_state_dict(state["global_residual"])
                self.global_residual.to(self.device)
                self._pred_global = None
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"detector state does not fit this detector: {e}") from e
        self.ae.to(self.device, memory_format=self._memory_format)  # type: ignore[call-overload]
        self.predictor.to(self.device, memory_format=self._memory_format)  # type: ignore[call-overload]
        if self.predictor_average is not None:
            self.predictor_average.to(self.device, memory_format=self._memory_format)  # type: ignore[call-overload]
        c = state["counters"]
        self.ae_updates = int(c["ae_updates"])
        self.ae_train_updates = int(c.get("ae_train_updates", c["ae_updates"]))  # older checkpoints counted all
        self.ae_version = int(c["ae_version"])
        self.predictor_updates = int(c["predictor_updates"])
        self.last_ae_loss = c["last_ae_loss"]
        self.last_pred_loss = c["last_pred_loss"]
        self.seed = int(state.get("seed", self.seed))
        stack = state.get("profile_stack")
        if stack is not None and self._pool is not None and stack.shape[0] == len(self._pool):
            self._profiles = stack.to(self.device)
            self._profiles_version = self.ae_version if c.get("profiles_fresh") else -1
        else:
            self._profiles, self._profiles_version = None, -1

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (temporary file in the same folder, then rename)."""
        atomic_torch_save(self.state_dict(), path)

    @staticmethod
    def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
        """Load a checkpoint written by :meth:`save` with ``torch.load(weights_only=True)``.

        Raises:
            ValueError: the file is missing, unreadable, corrupt or not a detector checkpoint (names the path).
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
            # the kind of failure only: torch's own message runs to many lines of advice about weights_only
            kind = type(e).__name__
            raise ValueError(f"{path}: not a readable detector checkpoint (expected a saved Detector state; {kind})") from e
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a detector checkpoint (expected a dict with format={CHECKPOINT_FORMAT!r})")
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: detector checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
        return state

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Restore this detector from a file written by :meth:`save`.

        Raises:
            ValueError: the file is corrupt or does not fit this detector (the message names the path).
        """
        state = self.read_checkpoint(path)
        try:
            self.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        train_images: np.ndarray | None = None,
        pool_images: np.ndarray | None = None,
        pool_masks: np.ndarray | None = None,
        device: str | None = None,
    ) -> Detector:
        """Rebuild a detector from its checkpoint alone (the config is saved with the weights).

        Without data it is inference-only: :meth:`anomaly_map`, :meth:`residual_map`, :meth:`fused_maps`.

        Args:
            path: a file written by :meth:`save`.
            train_images, pool_images, pool_masks: the data, to resume training; None for inference.
            device: override the saved device (e.g. "cpu" for a checkpoint trained on a GPU).
        """
        state = cls.read_checkpoint(path)
        try:
            config = DetectorConfig.from_dict(state["config"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: invalid saved config: {e}") from e
        if device is not None:
            config = replace(config, device=device)
        detector = cls(config, train_images, pool_images, pool_masks, seed=int(state.get("seed", 0)))
        try:
            detector.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        return detector


def fuse_global(maps: torch.Tensor, global_maps: torch.Tensor, weight: float) -> torch.Tensor:
    """Late fusion of (B, H, W) anomaly maps with (B, H, W) normalised global residuals in [0, 1]: a convex mix."""
    return (1.0 - weight) * maps + weight * global_maps.to(maps.device)


def ae_baseline_maps(detector: Detector, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """AE-only baseline anomaly maps: the channel-mean reconstruction residual (no predictor).

    Args:
        detector: a detector whose AE is trained (e.g. after :meth:`Detector.pretrain_ae`).
        images: uint8 (N, H, W, 3).

    Returns:
        float32 (N, H, W), larger = more anomalous.
    """
    return detector.residual_map(images)
