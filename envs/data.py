"""The data protocol: a category (MVTec AD layout, or the embedded synthetic one) and its split.

The env, the baselines and evaluate.py all load their data here, with the same arguments and the same files, and
without importing the gymnasium env.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from envs.config import MVTecPatchConfig
from envs.mvtec import Category, load_category_cached
from envs.split import Split, SplitConfig, make_split
from models.validation import check_value

__all__ = ["DATA_KEYS", "check_data_options", "load_data", "load_env_data"]

# the env settings that fix the data and its split (with the seed): what a baseline takes from the env's preset
DATA_KEYS = (
    "data_root",
    "category",
    "image_size",
    "k_shot",
    "normal_pool",
    "val_fraction",
    "contamination",
    "contamination_reserve",
    "vetted_normal_pool",
    "vetted_predictor_data",
)


def load_data(
    data_root: str | None = None,
    category: str | None = None,
    image_size: int = 256,
    k_shot: int = 5,
    normal_pool: int = 15,
    val_fraction: float = 0.2,
    seed: int = 0,
    contamination: float = 0.0,
    contamination_reserve: float = 0.0,
    vetted_normal_pool: bool = False,
    vetted_predictor_data: bool = False,
) -> tuple[Category, Split]:
    """A category (embedded synthetic without ``data_root``) and its split."""
    if data_root is None:
        from envs.synthetic import SYNTHETIC_CATEGORY, default_root

        if category not in (None, SYNTHETIC_CATEGORY):
            raise ValueError(f"category={category!r} needs data_root (without it '{SYNTHETIC_CATEGORY}' is used)")
        root, name = default_root(), SYNTHETIC_CATEGORY
    else:
        if category is None:
            raise ValueError("data_root is set but category is not: expected the name of a category folder under data_root")
        root, name = Path(data_root), category
    options = check_data_options(
        image_size=image_size,
        k_shot=k_shot,
        normal_pool=normal_pool,
        val_fraction=val_fraction,
        contamination=contamination,
        contamination_reserve=contamination_reserve,
        vetted_normal_pool=vetted_normal_pool,
        vetted_predictor_data=vetted_predictor_data,
    )
    data = load_category_cached(root, name, options["image_size"])
    split_config = SplitConfig(
        options["k_shot"],
        options["normal_pool"],
        options["val_fraction"],
        seed,
        options["contamination"],
        options["contamination_reserve"],
        options["vetted_normal_pool"],
        options["vetted_predictor_data"],
    )
    return data, make_split(data, split_config)


def check_data_options(**options: Any) -> dict[str, Any]:
    """Check :func:`load_data`'s keyword arguments (types and ranges) without reading anything.

    Returns:
        ``options``, numbers converted where unambiguous (:func:`models.validation.check_value`).

    Raises:
        ValueError: an unknown option or a bad value (names it and what it expects).
    """
    hints = {key: hint for key, hint in typing.get_type_hints(load_data).items() if key != "return"}
    unknown = sorted(set(options) - set(hints))
    if unknown:
        raise ValueError(f"unknown data option(s) {', '.join(unknown)} (valid: {', '.join(hints)})")
    options = {key: check_value(key, value, hints[key]) for key, value in options.items()}
    if options.get("image_size", 256) < 16:
        raise ValueError(f"image_size={options['image_size']!r} is invalid: expected an integer >= 16")
    if options.get("k_shot", 5) < 1:
        raise ValueError(f"k_shot={options['k_shot']!r} is invalid: expected an integer >= 1")
    split_keys = (
        "k_shot",
        "normal_pool",
        "val_fraction",
        "seed",
        "contamination",
        "contamination_reserve",
        "vetted_normal_pool",
        "vetted_predictor_data",
    )
    SplitConfig(**{key: options[key] for key in split_keys if key in options})  # their ranges
    return options


def load_env_data(config: MVTecPatchConfig) -> tuple[Category, Split]:
    """The category and split of an env config."""
    return load_data(
        config.data_root,
        config.category,
        config.image_size,
        config.k_shot,
        config.normal_pool,
        config.val_fraction,
        config.seed,
        config.contamination,
        config.contamination_reserve,
        config.vetted_normal_pool,
        config.vetted_predictor_data,
    )
