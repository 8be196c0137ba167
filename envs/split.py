"""The semi-supervised split protocol (paper §IV.A; docs/design.md).

From a loaded category and one seed:

- ``labelled``: ``k_shot`` defect images per defect type, with masks: the only anomalies the method may train on.
  They are removed from every evaluation split (no leakage).
- ``normal_pool``: a fixed subset of ``train/good``; the predictor trains on it with empty masks.
- ``train``: all of ``train/good``, plus the ``contaminated`` images; the autoencoder's (and the sampler's) images.
- ``contaminated`` (``contamination`` > 0 only): defect images of the types' unlabelled remainder moved into ``train``
  without their masks, as unlabelled production images would hold some defective parts. They are never evaluated.
- ``val``: a per-type stratified part (``val_fraction``) of the remaining test images, for the threshold and the checkpoint.
- ``test``: the rest; metrics are reported on it.

Each type (``good`` and every defect) is shuffled by its own generator seeded from ``(seed, crc32(type))``, so adding
a defect type does not reshuffle the others, and the same seed gives the same split byte for byte.

Contamination ``c`` is the share of defect images among the AE's training images: ``n = round(c * G / (1 - c))``
(at least one) for ``G`` ``train/good`` images, drawn from the defect types in proportion to the images each can spare
(its unlabelled images beyond the 2 kept for evaluation; largest remainder, ties in type order). A type gives the
last ``m`` images of its shuffled order, so a larger ``c`` moves a superset of a smaller one's images; the normal pool
is drawn from ``train`` as a whole, contaminated images included (``vetted_normal_pool``: from ``train/good`` only, as a
user who looks at its few images would make it; ``vetted_predictor_data``, a diagnostic, vets everything of the
predictor's: its normal pool, and, in :func:`models.detector.build_detector`, the images its synthetic defects are
pasted into and the global residual's PCA). ``c = 0`` gives the split without the option.
A degradation curve over levels up to ``r`` sets ``contamination_reserve = r`` at every level: the images level ``r``
would move are kept out of ``val`` and ``test`` at all of them (those beyond level ``c`` unused), so the levels are
evaluated on the same images and their rows pair.

Too few images: a defect type keeps at least 2 images for evaluation (one validation, one test). With ``n`` images
and ``n < k_shot + 2`` it gets ``max(n - 2, 0)`` labelled images instead of ``k_shot``, and a warning says so.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from envs.mvtec import GOOD, TEST, TRAIN, Category, DatasetError
from models.validation import check_fields

logger = logging.getLogger(__name__)

MIN_EVAL_PER_TYPE = 2  # one validation and one test image per defect type, when the type has enough images


@dataclass(frozen=True)
class SplitConfig:
    k_shot: int = 5  # labelled anomalies per defect type (paper: 5)
    normal_pool: int = 15  # train/good images in the predictor's pool (with ~25 anomalies: the paper-sized pool of ~40)
    val_fraction: float = 0.2  # share of each type's remaining test images used for validation
    seed: int = 0
    contamination: float = 0.0  # share of defect images among the AE's training images (unlabelled, never evaluated)
    # images set aside for contamination up to this share, so that every level up to it has the same val and test sets
    contamination_reserve: float = 0.0
    # the normal pool drawn from train/good only, as a user who looks at its images would make it (contamination > 0)
    vetted_normal_pool: bool = False
    # a diagnostic: everything of the predictor's from train/good only (its normal pool, the images its synthetic
    # defects are pasted into, the global residual's PCA), so that the contaminated images reach the AE alone
    vetted_predictor_data: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        if self.k_shot < 1:
            raise ValueError(f"k_shot must be >= 1, got {self.k_shot}")
        if self.normal_pool < 0:
            raise ValueError(f"normal_pool must be >= 0, got {self.normal_pool}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.contamination < 1.0:
            raise ValueError(f"contamination={self.contamination!r} is invalid: expected a number in [0, 1)")
        if not 0.0 <= self.contamination_reserve < 1.0:
            raise ValueError(
                f"contamination_reserve={self.contamination_reserve!r} is invalid: expected a number in [0, 1) (the "
                "largest contamination whose images are kept out of val and test)"
            )


@dataclass
class Split:
    """Indices into ``Category.samples`` for each role; every array sorted ascending."""

    labelled: np.ndarray
    normal_pool: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    config: SplitConfig
    contaminated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # defect images in ``train``

    @property
    def roles(self) -> tuple[str, ...]:
        """The recorded roles: ``contaminated`` only where the option is set, so a split without it reads as before."""
        contaminated = self.config.contamination or self.config.contamination_reserve
        return ("labelled", "normal_pool", "val", "test", *(("contaminated",) if contaminated else ()))

    @property
    def train_good(self) -> np.ndarray:
        """``train`` less the contaminated images: the category's ``train/good``."""
        return np.setdiff1d(self.train, self.contaminated) if self.contaminated.size else self.train

    def known_masks(self, masks: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """``masks[indices]`` as a user knows them: a contaminated image is unlabelled, so its mask is empty."""
        known = masks[indices]
        if self.contaminated.size:
            known = np.where(np.isin(indices, self.contaminated)[:, None, None], False, known)
        return known

    def to_dict(self, category: Category) -> dict:
        """JSON-ready record of which files went where (relative to the category folder)."""
        config = asdict(self.config)
        for key in ("contamination", "contamination_reserve", "vetted_normal_pool", "vetted_predictor_data"):
            if not config[key]:
                del config[key]  # the record of a split without the option stays byte for byte as it was
        return {
            "category": category.name,
            "config": config,
            **{role: category.relative_paths(getattr(self, role)) for role in self.roles},
        }

    def summary(self, category: Category) -> dict:
        """Counts per split and per defect type, for the dry run and the logs."""

        def per_type(indices: np.ndarray) -> dict[str, int]:
            counts: dict[str, int] = {}
            for i in indices:
                label = category.samples[i].label
                counts[label] = counts.get(label, 0) + 1
            return dict(sorted(counts.items()))

        extra = [role for role in self.roles if role not in ("labelled", "normal_pool")]  # val, test[, contaminated]
        return {
            "category": category.name,
            "root": str(category.root),
            "image_size": category.image_size,
            "defect_types": category.defect_types,
            "counts": {role: int(len(getattr(self, role))) for role in ("train", "normal_pool", "labelled", *extra)},
            "per_type": {role: per_type(getattr(self, role)) for role in ("labelled", *extra)},
            "config": asdict(self.config),
        }


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _n_val(remaining: int, fraction: float) -> int:
    """Validation share of a type: round(fraction * n), at least 1 and at most n - 1 when n >= 2."""
    if remaining < 2 or fraction == 0.0:
        return 0
    return int(min(max(round(fraction * remaining), 1), remaining - 1))


def _contaminated_per_type(name: str, unlabelled: dict[str, np.ndarray], n_good: int, contamination: float) -> dict[str, int]:
    """How many images each defect type moves into ``train``: ``round(c * G / (1 - c))`` (at least one for ``c`` > 0) in
    proportion to what each type can spare beyond the 2 it keeps for evaluation (largest remainder, ties in type order).

    Raises:
        ValueError: the types cannot spare that many images (one line naming the option).
    """
    if not contamination:
        return dict.fromkeys(unlabelled, 0)
    n = max(round(contamination * n_good / (1.0 - contamination)), 1)
    spare = {defect: max(len(rest) - MIN_EVAL_PER_TYPE, 0) for defect, rest in unlabelled.items()}
    total = sum(spare.values())
    if n > total:
        raise ValueError(
            f"contamination={contamination} needs {n} defect images beside the {n_good} train/good ones, but category "
            f"'{name}' has {total} to spare (unlabelled, beyond {MIN_EVAL_PER_TYPE} per type kept for evaluation): "
            "expected a smaller contamination"
        )
    shares = {defect: n * count / total for defect, count in spare.items()}
    counts = {defect: int(share) for defect, share in shares.items()}
    by_remainder = sorted(shares, key=lambda defect: -(shares[defect] - counts[defect]))  # stable: ties in type order
    for defect in by_remainder[: n - sum(counts.values())]:
        counts[defect] += 1
    return counts


def make_split(category: Category, config: SplitConfig = SplitConfig()) -> Split:
    """Split a category by the protocol above (deterministic in ``config.seed``)."""
    labelled: list[int] = []
    val: list[int] = []
    test: list[int] = []
    unlabelled: dict[str, np.ndarray] = {}  # per defect type, its shuffled images after the labelled ones
    for defect in category.defect_types:
        idx = _rng(config.seed, defect).permutation(category.indices(TEST, defect))
        k = config.k_shot
        if len(idx) < k + MIN_EVAL_PER_TYPE:
            k = max(len(idx) - MIN_EVAL_PER_TYPE, 0)
            message = (
                f"defect type '{defect}' has {len(idx)} images, fewer than k_shot + {MIN_EVAL_PER_TYPE} = "
                f"{config.k_shot + MIN_EVAL_PER_TYPE}: using {k} labelled image(s) and keeping {len(idx) - k} for evaluation"
            )
            logger.warning(message)  # once: the CLI shows log records, and a warnings.warn would repeat it
        labelled += idx[:k].tolist()
        unlabelled[defect] = idx[k:]
    train_good = category.indices(TRAIN, GOOD)
    moved = _contaminated_per_type(category.name, unlabelled, len(train_good), config.contamination)
    reserve = max(config.contamination_reserve, config.contamination)
    reserved = _contaminated_per_type(category.name, unlabelled, len(train_good), reserve) if reserve else moved
    contaminated: list[int] = []
    for defect, rest in unlabelled.items():
        # the last images of the type's order: a larger contamination moves a superset, and the reserve (never
        # evaluated) holds every level up to it (at most the reserve's count of a type: rounding may shift one image)
        n_moved = min(moved[defect], reserved[defect])
        if n_moved:
            contaminated += rest[len(rest) - n_moved :].tolist()
        if reserved[defect]:
            rest = rest[: len(rest) - reserved[defect]]
        n_val = _n_val(len(rest), config.val_fraction)
        val += rest[:n_val].tolist()
        test += rest[n_val:].tolist()

    good_test = _rng(config.seed, GOOD).permutation(category.indices(TEST, GOOD))
    n_val = _n_val(len(good_test), config.val_fraction)
    val += good_test[:n_val].tolist()
    test += good_test[n_val:].tolist()

    train = np.sort(np.concatenate([train_good, np.asarray(contaminated, dtype=np.int64)])) if contaminated else train_good
    candidates = train_good if config.vetted_normal_pool or config.vetted_predictor_data else train
    pool_size = min(config.normal_pool, len(candidates))
    normal_pool = (
        _rng(config.seed, "normal_pool").choice(candidates, size=pool_size, replace=False) if pool_size else train[:0]
    )

    def sorted_array(values: list[int] | np.ndarray) -> np.ndarray:
        return np.sort(np.asarray(values, dtype=np.int64))

    split = Split(
        sorted_array(labelled),
        sorted_array(normal_pool),
        train,
        sorted_array(val),
        sorted_array(test),
        config,
        sorted_array(contaminated),
    )
    if not split.labelled.size:
        raise DatasetError(f"category '{category.name}' leaves no labelled anomalies (every defect type has < 3 images)")
    return split


def split_json(split: Split, category: Category) -> str:
    """The split record as stable JSON text (same seed -> same bytes)."""
    return json.dumps(split.to_dict(category), indent=2, sort_keys=True)
