"""The semi-supervised split protocol (paper §IV.A; docs/design.md).

From a loaded category and one seed:

- ``labelled``: ``k_shot`` defect images per defect type, with masks: the only anomalies the method may train on.
  They are removed from every evaluation split (no leakage).
- ``normal_pool``: a fixed subset of ``train/good``; the predictor trains on it with empty masks.
- ``train``: all of ``train/good``; the autoencoder's (and the sampler's) images.
- ``val``: a per-type stratified part (``val_fraction``) of the remaining test images, for the threshold and the checkpoint.
- ``test``: the rest; metrics are reported on it.

Each type (``good`` and every defect) is shuffled by its own generator seeded from ``(seed, crc32(type))``, so adding
a defect type does not reshuffle the others, and the same seed gives the same split byte for byte.

Too few images: a defect type keeps at least 2 images for evaluation (one validation, one test). With ``n`` images
and ``n < k_shot + 2`` it gets ``max(n - 2, 0)`` labelled images instead of ``k_shot``, and a warning says so.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from envs.mvtec import GOOD, TEST, TRAIN, Category, DatasetError

logger = logging.getLogger(__name__)

MIN_EVAL_PER_TYPE = 2  # one validation and one test image per defect type, when the type has enough images


@dataclass(frozen=True)
class SplitConfig:
    k_shot: int = 5  # labelled anomalies per defect type (paper: 5)
    normal_pool: int = 15  # train/good images in the predictor's pool (with ~25 anomalies: the paper-sized pool of ~40)
    val_fraction: float = 0.2  # share of each type's remaining test images used for validation
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k_shot < 1:
            raise ValueError(f"k_shot must be >= 1, got {self.k_shot}")
        if self.normal_pool < 0:
            raise ValueError(f"normal_pool must be >= 0, got {self.normal_pool}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class Split:
    """Indices into ``Category.samples`` for each role; every array sorted ascending."""

    labelled: np.ndarray
    normal_pool: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    config: SplitConfig

    def to_dict(self, category: Category) -> dict:
        """JSON-ready record of which files went where (relative to the category folder)."""
        return {
            "category": category.name,
            "config": asdict(self.config),
            **{role: category.relative_paths(getattr(self, role)) for role in ("labelled", "normal_pool", "val", "test")},
        }

    def summary(self, category: Category) -> dict:
        """Counts per split and per defect type, for the dry run and the logs."""

        def per_type(indices: np.ndarray) -> dict[str, int]:
            counts: dict[str, int] = {}
            for i in indices:
                label = category.samples[i].label
                counts[label] = counts.get(label, 0) + 1
            return dict(sorted(counts.items()))

        return {
            "category": category.name,
            "root": str(category.root),
            "image_size": category.image_size,
            "defect_types": category.defect_types,
            "counts": {role: int(len(getattr(self, role))) for role in ("train", "normal_pool", "labelled", "val", "test")},
            "per_type": {role: per_type(getattr(self, role)) for role in ("labelled", "val", "test")},
            "config": asdict(self.config),
        }


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _n_val(remaining: int, fraction: float) -> int:
    """Validation share of a type: round(fraction * n), at least 1 and at most n - 1 when n >= 2."""
    if remaining < 2 or fraction == 0.0:
        return 0
    return int(min(max(round(fraction * remaining), 1), remaining - 1))


def make_split(category: Category, config: SplitConfig = SplitConfig()) -> Split:
    """Split a category by the protocol above (deterministic in ``config.seed``)."""
    labelled: list[int] = []
    val: list[int] = []
    test: list[int] = []
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
        rest = idx[k:]
        n_val = _n_val(len(rest), config.val_fraction)
        val += rest[:n_val].tolist()
        test += rest[n_val:].tolist()

    good_test = _rng(config.seed, GOOD).permutation(category.indices(TEST, GOOD))
    n_val = _n_val(len(good_test), config.val_fraction)
    val += good_test[:n_val].tolist()
    test += good_test[n_val:].tolist()

    train = category.indices(TRAIN, GOOD)
    pool_size = min(config.normal_pool, len(train))
    normal_pool = _rng(config.seed, "normal_pool").choice(train, size=pool_size, replace=False) if pool_size else train[:0]

    def sorted_array(values: list[int] | np.ndarray) -> np.ndarray:
        return np.sort(np.asarray(values, dtype=np.int64))

    split = Split(sorted_array(labelled), sorted_array(normal_pool), train, sorted_array(val), sorted_array(test), config)
    if not split.labelled.size:
        raise DatasetError(f"category '{category.name}' leaves no labelled anomalies (every defect type has < 3 images)")
    return split


def split_json(split: Split, category: Category) -> str:
    """The split record as stable JSON text (same seed -> same bytes)."""
    return json.dumps(split.to_dict(category), indent=2, sort_keys=True)
