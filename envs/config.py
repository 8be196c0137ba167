"""``MVTecPatch-v0``'s settings, :class:`MVTecPatchConfig`, and the detector config they make.

Apart from the env module so that loading data and building a detector (evaluate.py, the baselines) need no
gymnasium env.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any

from models.detector import DetectorConfig
from models.runtime import check_device
from models.validation import check_fields

__all__ = ["ENV_DETECTOR_FIELDS", "OBSERVATIONS", "REWARDS", "MVTecPatchConfig", "detector_config"]

OBSERVATIONS = ("enriched", "rgb_history")  # paper's 6 channels | Chu & Kitani's RGB + history
# the paper's composite | plus minus the detector's defect probability on the chosen patch (docs/design.md)
REWARDS = ("paper", "defect_avoid")
# DetectorConfig fields that the env config sets itself (from its fields of the same names)
ENV_DETECTOR_FIELDS = (
    "patch_size",
    "ae_batch_size",
    "alpha_decay_updates",
    "pretrain_epochs",
    "predictor_warmup_updates",
    "ae_reset_every",
    "profile_stack",
    "device",
)


@dataclass
class MVTecPatchConfig:
    """Every knob of the environment; ``gymnasium.make("MVTecPatch-v0", **kwargs)`` takes these names."""

    data_root: str | None = None  # folder holding MVTec AD categories; None: the embedded synthetic category
    category: str | None = None
    image_size: int = 256  # paper §IV.B
    k_shot: int = 5  # labelled anomalies per defect type
    normal_pool: int = 15  # normal images in the predictor's pool
    val_fraction: float = 0.2
    contamination: float = 0.0  # share of unlabelled defect images among the AE's training images (envs/split.py)
    contamination_reserve: float = 0.0  # levels up to this share keep one val and test set (envs/split.py)
    vetted_normal_pool: bool = False  # the predictor's normal pool from train/good only (envs/split.py)
    vetted_predictor_data: bool = False  # a diagnostic: all the predictor's data from train/good only (envs/split.py)
    seed: int = 0  # fixes the split and the networks' initialisation; reset(seed=...) fixes the actions' randomness
    crop_size: int = 128  # the sampler's view
    patch_size: int = 64  # what the AE trains on
    move_step: int = 24  # pixels per move
    episode_length: int = 32  # one AE mini-batch of moves
    ae_batch_size: int = 32
    beta_decay_steps: int = 2000  # L in beta = max(beta_min, 1 - j / L)
    beta_min: float = 0.15
    alpha_decay_updates: int = 200  # predictor updates over which alpha goes 1.0 -> 0.15
    predictor_freeze_steps: int = 50  # no predictor update before this env step
    feedback_start_steps: int = 100  # the sampler gets no RL feedback before this env step
    pretrain_epochs: int = 40  # AE pre-training epochs of one patch per training image (the paper: 100, preset "paper")
    predictor_warmup_updates: int = 100
    observation: str = "enriched"  # one of OBSERVATIONS
    reward: str = "paper"  # one of REWARDS
    ae_reset_every: int = 0  # Chu & Kitani: re-initialise the AE every N updates; 0 = never (paper)
    profile_stack: int = 1  # Chu & Kitani: predictor input = last K loss profiles; 1 = paper
    detector: dict[str, Any] | None = None  # further DetectorConfig fields (nested "ae" / "predictor" dicts allowed)
    device: str = "cpu"

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r} is invalid: expected {expected}")

        check_fields(self)  # types first: a string where a number belongs is named here, not a TypeError below
        if self.observation not in OBSERVATIONS:
            raise bad("observation", f"one of {', '.join(OBSERVATIONS)}")
        if self.reward not in REWARDS:
            raise bad("reward", f"one of {', '.join(REWARDS)}")
        if not 0.0 <= self.contamination < 1.0:
            raise bad("contamination", "a number in [0, 1): the share of defect images among the AE's training images")
        if not 0.0 <= self.contamination_reserve < 1.0:
            raise bad("contamination_reserve", "a number in [0, 1): the largest contamination kept out of val and test")
        if self.k_shot < 1:
            raise bad("k_shot", "an integer >= 1")
        if self.image_size < 16:
            raise bad("image_size", "an integer >= 16")
        if not 8 <= self.crop_size <= self.image_size or self.crop_size % 2:
            raise bad("crop_size", f"an even number, 8 <= crop_size <= image_size ({self.image_size})")
        if not 4 <= self.patch_size <= self.crop_size or self.patch_size % 2:
            raise bad("patch_size", f"an even number, 4 <= patch_size <= crop_size ({self.crop_size})")
        for name in ("move_step", "episode_length", "ae_batch_size", "beta_decay_steps"):
            if getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        for name in (
            "predictor_freeze_steps",
            "feedback_start_steps",
            "pretrain_epochs",
            "predictor_warmup_updates",
            "ae_reset_every",
            "alpha_decay_updates",
        ):
            if getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        if self.profile_stack < 1:
            raise bad("profile_stack", "an integer >= 1")
        if not 0.0 <= self.beta_min <= 1.0:
            raise bad("beta_min", "a number in [0, 1]")
        if self.normal_pool < 0:
            raise bad("normal_pool", "an integer >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "a number in [0, 1)")
        check_device(self.device)  # every spelling torch accepts: cpu, cuda, cuda:N, mps
        if self.detector is not None:
            if not isinstance(self.detector, dict):
                raise bad("detector", "a dict of DetectorConfig fields")
            owned = sorted(set(ENV_DETECTOR_FIELDS) & set(self.detector))
            if owned:  # the value is the whole merged detector dict: name the keys only
                raise ValueError(
                    f"detector holds settings that are the env's own ({', '.join(owned)}): give them as env kwargs "
                    f"({' '.join(f'{key}:{self.detector[key]!r}' for key in owned)}), not inside detector"
                )
        detector_config(self)  # the detector's own validation (it names the bad field), before any data is read

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> MVTecPatchConfig:
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(f"unknown MVTecPatch-v0 kwarg(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**kwargs)


def detector_config(config: MVTecPatchConfig) -> DetectorConfig:
    """The env config's DetectorConfig: its ``detector`` dict plus the env's own fields (validated: a bad value raises
    ValueError naming it), without building networks."""
    own = {name: getattr(config, name) for name in ENV_DETECTOR_FIELDS}
    return DetectorConfig.from_dict({**own, **copy.deepcopy(config.detector or {})})
