"""The data protocol: a category (MVTec AD layout, or the embedded synthetic one) and its split.

The env, the baselines and evaluate.py all load their data here, with the same arguments and the same files, and
without importing the gymnasium env.
"""

from __future__ import annotations

from pathlib import Path

from envs.config import MVTecPatchConfig
from envs.mvtec import Category, load_category_cached
from envs.split import Split, SplitConfig, make_split

__all__ = ["load_data", "load_env_data"]


def load_data(
    data_root: str | None = None,
    category: str | None = None,
    image_size: int = 256,
    k_shot: int = 5,
    normal_pool: int = 15,
    val_fraction: float = 0.2,
    seed: int = 0,
    contamination: float = 0.0,
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
    if image_size < 16:
        raise ValueError(f"image_size={image_size!r} is invalid: expected an integer >= 16")
    if k_shot < 1:
        raise ValueError(f"k_shot={k_shot!r} is invalid: expected an integer >= 1")
    data = load_category_cached(root, name, image_size)
    return data, make_split(data, SplitConfig(k_shot, normal_pool, val_fraction, seed, contamination))


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
    )
