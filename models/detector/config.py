"""The detector's hyperparameters: :class:`DetectorConfig`, validated in one place.

Every way a config arrives (Python, a preset's nested dict, a checkpoint) goes through :meth:`DetectorConfig.from_dict`
or the constructor, so a bad value raises the same ``ValueError`` naming it wherever it was set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from models.autoencoder import AutoencoderConfig
from models.predictor import PredictorConfig
from models.runtime import plain
from models.structural import DEFAULT_FUSED_WEIGHTS
from models.validation import check_fields

__all__ = ["DetectorConfig", "PREDICTOR_INPUTS", "PREDICTOR_LOSSES"]

# the loss profile (the paper), and the image itself (as DRAEM's discriminator reads it)
PREDICTOR_INPUTS = ("profile", "image")
PREDICTOR_LOSSES = ("bce", "bce_dice", "focal")

# Options measured and not kept, at the value that made them a no-op: a saved config (config.yml, a checkpoint) that
# still lists one at that value loads as before; any other value is refused, as the code that ran it is gone.
_REMOVED: dict[str, Any] = {
    "pred_lr_schedule": "constant",
    "pred_lr_floor": 0.1,
    "pred_weight_decay": 0.0,
    "pred_zoom": 1.0,
    "pred_jitter": 0.0,
    "pred_rank_weight": 0.0,
    "pred_rank_pairs": 512,
    "texture_sigma": 8.0,
    "synthetic_noise_first_updates": 0,
    "synthetic_paste_rotate": True,
    "synthetic_paste_match": False,
    "synthetic_paste_margin": 0,
    "synthetic_shift_fraction": 0.0,
    "synthetic_noise_min_change": 0.0,
    "synthetic_noise_window": None,
    "map_smoothing_candidates": (),
    "map_flip_tta": False,
    "ae_denoise_fraction": 0.0,
    "ae_anomaly_weight": 0.0,
    "ae_anomaly_patches": 8,
    "ae_grad_clip": 0.0,
}
_REMOVED_PREDICTOR: dict[str, Any] = {
    "arch": "dilated",
    "unet_levels": 4,
    "global_context": False,
    "strip_context": False,
    "coord_channels": False,
}


def _known(d: dict[str, Any], cls: type, removed: dict[str, Any], owner: str) -> dict[str, Any]:
    """``d`` without the removed options it holds at their no-op value; an unknown key or another value raises."""
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - valid - set(removed))
    if unknown:
        raise ValueError(f"unknown {owner} keys {unknown}; valid keys: {sorted(valid)}")
    for key in sorted(set(d) & set(removed)):
        value = tuple(d[key]) if isinstance(d[key], list) else d[key]
        if value != removed[key]:
            raise ValueError(f"{owner} option {key!r} was removed (only its no-op value {removed[key]!r} is accepted)")
    return {key: value for key, value in d.items() if key in valid}


@dataclass
class DetectorConfig:
    """Hyperparameters of :class:`models.detector.Detector` (paper §IV.C where it gives them).

    docs/configuration.md lists every field with its range and the presets' values; docs/design.md says why the
    defaults of the presets differ from the paper's.

    Args:
        patch_size: side of the AE's training patches (the paper: 64).
        ae_batch_size: patches per AE update (the paper: 32); used by pre-training and :meth:`Detector.fit_random`.
        lr: Adam learning rate of the AE (the paper: 1e-3).
        pred_lr: Adam learning rate of the predictor; None: same as ``lr``.
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
        predictor_inputs: what the predictor reads, a subset of ``PREDICTOR_INPUTS``: ("profile",) is the paper;
            ("profile", "image") adds the RGB image, so the predictor can tell a residual caused by a defect from
            one caused by normal but hard-to-reconstruct structure.
        global_size: side of the coarse images of the global residual's PCA (``map_global_weight``).
        global_components: its principal components (at most half the training images it is fitted on).
        predictor_updates_per_ae_update: predictor steps per AE update (in the env and in :meth:`Detector.fit_random`);
            the paper's one step per 32 patches gives the predictor only a few hundred steps on a CPU budget.
        profile_refresh_every: recompute the pool's loss profiles at most every N AE updates (1: after every
            update). A few AE steps change the residuals little, and the refresh is the costliest part of a cycle.
        synthetic_pool_size: S extra anomalous images in the predictor's pool, made anew at every profile refresh
            from training images (:mod:`models.synthesis`); 0: the paper's pool of labelled + normal images only.
        synthetic_paste_fraction: share of those made by pasting a labelled defect; the rest are noise-mask
            anomalies with a foreign texture.
        synthetic_refresh_updates: renew the synthetic images at least every N predictor updates (the warm-up
            has no AE update to trigger a refresh, and should still see thousands of different anomalies).
        synthetic_noise_opacity: (min, max) blend factor of a noise-mask anomaly's texture (1: full replacement).
        synthetic_noise_scales: (min, max) scale of the noise that shapes the mask: blobs about H/2^s across.
        pred_flip: flip predictor training crops horizontally and vertically at random.
        pred_loss: "bce" (eq. 8), "bce_dice" (eq. 8 plus a batch soft-Dice term) or "focal" (eq. 8 with the focal
            modulation of exponent ``pred_focal_gamma``, as DRAEM's discriminative network trains).
        pred_focal_gamma: the focal loss's exponent (``pred_loss: focal`` only; 0 gives eq. 8).
        map_smoothing_sigma: Gaussian sigma (pixels) applied to anomaly maps at inference; 0: none.
        map_predictor_flips: average the predictor's map over the four flips of its input (none, horizontal, vertical,
            both; each map flipped back), the loss profile computed once: the flips it trained on with ``pred_flip``,
            at the small predictor's cost only, since the AE does not run again.
        map_global_weight: late fusion of the anomaly map with the global residual, before smoothing: ``(1 - w) * map +
            w * g``, g the residual's channel mean over the 99th percentile of held-out normal images' (capped at 1;
            :meth:`models.global_residual.GlobalResidual.normalised`). The PCA of whole normal images sees what no 64²
            patch shows (a region that no normal image has at that place and scale); it is fitted on 90% of the
            training images on first use and saved with the weights; 0: the predictor's map alone.
        predictor_ema: decay of an exponential moving average of the predictor's weights, used for the anomaly
            maps (0: the raw weights, the paper). A few labelled images make single updates noisy; the average
            removes the update-to-update swings of validation scores. The decay is ``min(predictor_ema, (1 + n) /
            (10 + n))`` at update ``n``, so that a long average (0.999) does not keep the random initial weights.
        ae_lr_after_pretrain: the AE's learning rate once pre-training is done (None: keep ``lr``); a smaller
            rate keeps the residual space the predictor has learned from drifting.
        inference_batch_size: images per forward pass for profiles and maps (bounds memory).
        channels_last: run the convolutions in channels-last memory format (oneDNN's fast path on CPU).
        ae: the autoencoder's config.
        predictor: the predictor's config; its ``in_channels`` is set here from ``predictor_inputs`` and ``profile_stack``.
        device: torch device for the networks and the cached profiles ("cpu", "cuda", "cuda:1", ...).
    """

    patch_size: int = 64
    ae_batch_size: int = 32
    lr: float = 1e-3
    pred_lr: float | None = None
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
    global_size: int = 64
    global_components: int = 256
    predictor_updates_per_ae_update: int = 1
    profile_refresh_every: int = 1
    synthetic_pool_size: int = 0
    synthetic_paste_fraction: float = 0.5
    synthetic_refresh_updates: int = 16
    synthetic_noise_opacity: tuple[float, float] = (0.2, 1.0)
    synthetic_noise_scales: tuple[int, int] = (2, 6)
    pred_flip: bool = False
    pred_loss: str = "bce"
    pred_focal_gamma: float = 2.0
    map_smoothing_sigma: float = 0.0
    map_predictor_flips: bool = False
    map_global_weight: float = 0.0
    predictor_ema: float = 0.0
    ae_lr_after_pretrain: float | None = None
    inference_batch_size: int = 4  # larger batches are slower per image on CPU (activations leave the cache)
    channels_last: bool = True
    ae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.ae, dict):
            self.ae = AutoencoderConfig(**_known(self.ae, AutoencoderConfig, {}, "ae"))
        if isinstance(self.predictor, dict):
            self.predictor = PredictorConfig(**_known(self.predictor, PredictorConfig, _REMOVED_PREDICTOR, "predictor"))
        check_fields(self, "detector.")
        self.fused_weights = tuple(float(w) for w in self.fused_weights)  # type: ignore[assignment]
        self.predictor_inputs = tuple(self.predictor_inputs)
        if not self.predictor_inputs or set(self.predictor_inputs) - set(PREDICTOR_INPUTS):
            raise ValueError(f"predictor_inputs must be a non-empty subset of {PREDICTOR_INPUTS}, got {self.predictor_inputs}")
        if self.pred_loss not in PREDICTOR_LOSSES:
            raise ValueError(f"pred_loss must be one of {', '.join(PREDICTOR_LOSSES)}, got {self.pred_loss!r}")
        if self.pred_focal_gamma < 0:
            raise ValueError(f"pred_focal_gamma must be >= 0, got {self.pred_focal_gamma}")
        if self.synthetic_pool_size < 0:
            raise ValueError(f"synthetic_pool_size must be >= 0, got {self.synthetic_pool_size}")
        if self.synthetic_pool_size and self.profile_stack > 1:
            raise ValueError("synthetic_pool_size > 0 needs profile_stack = 1 (synthetic images change at every refresh)")
        if not 0.0 <= self.synthetic_paste_fraction <= 1.0:
            raise ValueError(f"synthetic_paste_fraction must be in [0, 1], got {self.synthetic_paste_fraction}")
        self.synthetic_noise_opacity = tuple(float(a) for a in self.synthetic_noise_opacity)  # type: ignore[assignment]
        self.synthetic_noise_scales = tuple(int(v) for v in self.synthetic_noise_scales)  # type: ignore[assignment]
        opacity, scales = self.synthetic_noise_opacity, self.synthetic_noise_scales
        if len(opacity) != 2 or not 0.0 < opacity[0] <= opacity[1] <= 1.0:
            raise ValueError(f"synthetic_noise_opacity must be (min, max) with 0 < min <= max <= 1, got {opacity}")
        if len(scales) != 2 or not 0 <= scales[0] <= scales[1] <= 8:
            raise ValueError(f"synthetic_noise_scales must be (min, max) with 0 <= min <= max <= 8, got {scales}")
        if not 0.0 <= self.predictor_ema < 1.0:
            raise ValueError(f"predictor_ema must be in [0, 1), got {self.predictor_ema}")
        if not 0.0 <= self.map_global_weight <= 1.0:
            raise ValueError(f"map_global_weight must be in [0, 1], got {self.map_global_weight}")
        if self.map_smoothing_sigma < 0:
            raise ValueError(f"map_smoothing_sigma must be >= 0, got {self.map_smoothing_sigma}")
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
            "inference_batch_size",
            "global_size",
            "global_components",
        ]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("alpha_decay_updates", "pretrain_epochs", "predictor_warmup_updates", "ae_reset_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.pretrain_patches_per_epoch is not None and self.pretrain_patches_per_epoch < 1:
            raise ValueError(
                f"pretrain_patches_per_epoch must be None (one per image) or >= 1, got {self.pretrain_patches_per_epoch}"
            )
        if self.lr <= 0 or (self.pred_lr is not None and self.pred_lr <= 0):
            raise ValueError(f"learning rates must be > 0, got lr={self.lr}, pred_lr={self.pred_lr}")
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
        # The predictor reads K stacked 3-channel profiles and/or the 3-channel image
        inputs = self.predictor_inputs
        n_in = self.ae.in_channels * (self.profile_stack * ("profile" in inputs) + ("image" in inputs))
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
        """Inverse of :meth:`to_dict`, also for the nested dicts of a preset; unknown keys raise ValueError listing
        the valid ones."""
        return cls(**_known(d, cls, _REMOVED, "DetectorConfig"))
