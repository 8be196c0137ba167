"""Embedded default dataset: a deterministic synthetic texture category in the MVTec AD layout.

The project must run on a fresh machine without a download (docs/design.md), so when no dataset
is given this module renders a small industrial-looking category and writes it exactly as MVTec AD lays out a
category, which lets the one MVTec reader load it like any other::

    <root>/synthetic_texture/train/good/000.png ...
    <root>/synthetic_texture/test/good/*.png
    <root>/synthetic_texture/test/<defect>/*.png
    <root>/synthetic_texture/ground_truth/<defect>/<stem>_mask.png     (uint8 grey, 0 or 255)

Images are a woven / brushed surface (oriented sinusoids + filtered noise + a smooth illumination gradient, with a
mild warm tint and per-image jitter of phase, orientation and brightness). Defects are drawn on a clean rendering:

- ``scratch``: 1-2 bezier polylines 1-3 px wide, 70% brighter / 30% darker by 0.10-0.30 (a third at 0.10-0.15);
- ``thin_scratch``: one 1 px bezier line only 0.06-0.10 brighter or darker (subtle: tests recall on faint defects);
- ``hole``: dark ellipses (level 0.02-0.07, soft edge) with a brighter raised rim (+0.10-0.20);
- ``crack``: branching random walks of 1-2 px lines darkening by 45-75%, with a faint dark halo;
- ``stain``: blurred blobs of a brownish colour shift of 0.06-0.15 (low contrast, soft edge).
(Intensities are on a [0, 1] scale; the clean surface sits around 0.5 with +-0.1 of texture.)

The mask is the set of pixels the defect changed: a pixel is masked when its strongest channel moved by at least
``MIN_CHANGE_LEVELS`` grey levels (so every masked pixel differs from the clean image after 8-bit rounding), and
every other pixel is left exactly as the clean rendering.

Every image has its own random streams, seeded from ``(seed, split, label, index)``, so a given image is the same
bytes whatever the counts in the config, and the whole category is byte-identical across runs. Generation writes to a
temporary sibling folder, adds a ``.complete`` marker (JSON with the generator version and config) and renames it
into place, so an interrupted generation is never mistaken for a complete one.

CLI: ``python -m envs.synthetic --out DIR [--seed N] [--image-size N] [--n-train N] ...`` prints the category path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from envs.synthetic_render import DEFECT_TYPES, image_rngs, render_defect, render_texture, to_uint8

logger = logging.getLogger(__name__)

SYNTHETIC_CATEGORY = "synthetic_texture"
# Bump when the rendered bytes change: the cache folder and the marker carry it, so old caches are regenerated.
GENERATOR_VERSION = "synthetic-v1"
GOOD_LABEL = "good"
MARKER_NAME = ".complete"
CACHE_ENV_VAR = "RLBS_CACHE"
DEFAULT_CACHE_BASE = Path("~/.cache/rl-batch-sampler")
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast; the noisy textures barely compress anyway


@dataclass
class SyntheticConfig:
    """What to generate. The defaults give a light default job yet enough images for the split protocol.

    Args:
        seed: master seed; every image derives its own streams from it.
        image_size: side of the square images, in pixels.
        n_train: normal training images (``train/good``).
        n_test_good: normal test images (``test/good``).
        n_per_defect: images per defect type in ``test/<defect>``: 5 labelled + validation + test.
        defect_types: defect folders to write; each one of ``DEFECT_TYPES``.
    """

    seed: int = 0
    image_size: int = 256
    n_train: int = 120
    n_test_good: int = 30
    n_per_defect: int = 20  # 5 labelled (k_shot) + 15 split between validation and test
    defect_types: tuple[str, ...] = ("scratch", "hole", "crack", "stain", "thin_scratch")

    def __post_init__(self) -> None:
        self.defect_types = tuple(self.defect_types)
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if self.n_train < 1 or self.n_test_good < 0 or self.n_per_defect < 1:
            raise ValueError(
                f"need n_train >= 1, n_test_good >= 0, n_per_defect >= 1; got {self.n_train}, {self.n_test_good}, "
                f"{self.n_per_defect}"
            )
        unknown = [d for d in self.defect_types if d not in DEFECT_TYPES]
        if unknown or not self.defect_types or len(set(self.defect_types)) != len(self.defect_types):
            raise ValueError(
                f"defect_types must be distinct and non-empty, each one of {sorted(DEFECT_TYPES)}; got {self.defect_types}"
            )


def render_sample(config: SyntheticConfig, split: str, label: str, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one image of the category exactly as ``generate`` writes it.

    Args:
        config: the generation config (its seed and image size are used).
        split: ``"train"`` or ``"test"``.
        label: ``"good"`` or a defect type.
        index: the image's number in its folder.

    Returns:
        (image, mask): (H, W, 3) uint8 RGB and, for defects, the (H, W) uint8 mask in {0, 255}; None for good images.
    """
    texture_rng, defect_rng = image_rngs(config.seed, split, label, index)
    clean = render_texture(texture_rng, config.image_size)
    if label == GOOD_LABEL:
        return to_uint8(clean), None
    image, mask = render_defect(clean, label, defect_rng)
    return to_uint8(image), mask.astype(np.uint8) * 255


# ----------------------------------------------------------------------------------------------------------------------
# Writing the category


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write uint8 RGB (H, W, 3) or grey (H, W) as PNG; cv2 wants BGR."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image), _PNG_PARAMS):
        raise OSError(f"cv2.imwrite failed for {path}")


def _marker_payload(config: SyntheticConfig) -> dict:
    # The JSON round trip turns tuples into lists, so that a loaded marker compares equal.
    return json.loads(json.dumps({"version": GENERATOR_VERSION, "config": asdict(config)}, sort_keys=True))


def is_complete(category_dir: Path, config: SyntheticConfig | None = None) -> bool:
    """Whether ``category_dir`` holds a finished generation made with this generator version and ``config``.

    Args:
        category_dir: the category folder (``<root>/synthetic_texture``).
        config: the expected config; defaults to ``SyntheticConfig()``.

    Returns:
        True if the ``.complete`` marker exists and matches.
    """
    marker = Path(category_dir) / MARKER_NAME
    try:
        payload = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return payload == _marker_payload(config or SyntheticConfig())


def _write_category(folder: Path, config: SyntheticConfig) -> None:
    width = max(3, len(str(max(config.n_train, config.n_test_good, config.n_per_defect) - 1)))
    folders = [("train", GOOD_LABEL, config.n_train), ("test", GOOD_LABEL, config.n_test_good)]
    folders += [("test", defect, config.n_per_defect) for defect in config.defect_types]
    jobs = []
    for split, label, count in folders:
        (folder / split / label).mkdir(parents=True, exist_ok=True)
        if label != GOOD_LABEL:
            (folder / "ground_truth" / label).mkdir(parents=True, exist_ok=True)
        jobs += [(split, label, index) for index in range(count)]

    def render_and_write(job: tuple[str, str, int]) -> None:
        split, label, index = job
        stem = f"{index:0{width}d}"
        image, mask = render_sample(config, split, label, index)
        _write_png(folder / split / label / f"{stem}.png", image)
        if mask is not None:
            _write_png(folder / "ground_truth" / label / f"{stem}_mask.png", mask)

    # Each image has its own random streams, so threads change nothing in the bytes; cv2 and NumPy release the GIL.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in pool.map(render_and_write, jobs):  # iterating re-raises the first worker error
            pass


def generate(out_dir: Path, config: SyntheticConfig | None = None) -> Path:
    """Generate the synthetic category under ``out_dir`` atomically.

    An incomplete or differently configured category there is replaced; a complete one with the same config (e.g.
    written meanwhile by a concurrent process) is identical byte for byte, so it is kept.

    Args:
        out_dir: dataset root; created if missing.
        config: what to generate; defaults to ``SyntheticConfig()``.

    Returns:
        The category folder, ``out_dir / SYNTHETIC_CATEGORY``.
    """
    config = config or SyntheticConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / SYNTHETIC_CATEGORY
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{SYNTHETIC_CATEGORY}.tmp-", dir=out_dir))
    try:
        _write_category(tmp, config)
        # The marker goes in last: a folder without it (or with another config) is never taken as complete.
        (tmp / MARKER_NAME).write_text(json.dumps(_marker_payload(config), sort_keys=True, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if final.exists():
            if is_complete(final, config):  # another process finished the same generation meanwhile
                shutil.rmtree(tmp)
                return final
            stale = Path(tempfile.mkdtemp(prefix=f".{SYNTHETIC_CATEGORY}.old-", dir=out_dir))
            os.replace(final, stale / SYNTHETIC_CATEGORY)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_complete(final, config):  # lost a race to an identical generation: its result is as good
            return final
        raise
    n_images = config.n_train + config.n_test_good + config.n_per_defect * len(config.defect_types)
    logger.info("generated %d synthetic images in %s (%.1fs)", n_images, final, time.perf_counter() - start)
    return final


def default_root(cache_dir: Path | None = None, config: SyntheticConfig | None = None) -> Path:
    """The dataset root holding the synthetic category, generated on first use and reused afterwards.

    The cache is ``<base>/synthetic-v1`` with ``<base>`` = ``cache_dir``, else ``$RLBS_CACHE``, else
    ``~/.cache/rl-batch-sampler``; the version tag means a changed generator writes a fresh cache.

    Args:
        cache_dir: base cache folder overriding ``$RLBS_CACHE``.
        config: what to generate; defaults to ``SyntheticConfig()``. A cached category made with another config
            is regenerated.

    Returns:
        The root folder (it contains ``SYNTHETIC_CATEGORY``), ready for the MVTec reader's root + category.
    """
    config = config or SyntheticConfig()
    if cache_dir is None:
        cache_dir = Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_BASE)
    root = Path(cache_dir).expanduser() / GENERATOR_VERSION
    if is_complete(root / SYNTHETIC_CATEGORY, config):
        logger.debug("reusing synthetic category in %s", root)
    else:
        logger.info("generating the synthetic default category in %s", root)
        generate(root, config)
    return root


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    """Generate the synthetic category from the command line and print its path.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status, 0 on success.
    """
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(prog="python -m envs.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="dataset root; the category folder goes inside")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--n-test-good", type=int, default=defaults.n_test_good)
    parser.add_argument("--n-per-defect", type=int, default=defaults.n_per_defect)
    parser.add_argument("--defect-types", nargs="+", default=list(defaults.defect_types), choices=sorted(DEFECT_TYPES))
    args = parser.parse_args(argv)
    config = SyntheticConfig(
        seed=args.seed,
        image_size=args.image_size,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_per_defect=args.n_per_defect,
        defect_types=tuple(args.defect_types),
    )
    print(generate(args.out, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
