"""Embedded default dataset: a deterministic synthetic texture category in the MVTec AD layout.

The project must run on a fresh machine without a download (DESIGN.md, "An embedded default"), so when no dataset
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
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

SYNTHETIC_CATEGORY = "synthetic_texture"
# Bump when the rendered bytes change: the cache folder and the marker carry it, so old caches are regenerated.
GENERATOR_VERSION = "synthetic-v1"
GOOD_LABEL = "good"
MARKER_NAME = ".complete"
CACHE_ENV_VAR = "RLBS_CACHE"
DEFAULT_CACHE_BASE = Path("~/.cache/rl-batch-sampler")
# A pixel belongs to the mask when the defect moved its strongest channel by at least this many 8-bit levels;
# 1.5 guarantees a difference of at least one level after rounding, so the mask is exactly the changed pixels.
MIN_CHANGE_LEVELS = 1.5
# Soft footprints (blurred alpha) are cut below this, so near-invisible halos neither change pixels nor get masked.
ALPHA_FLOOR = 0.1
MIN_MASK_PIXELS = 4
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast; the noisy textures barely compress anyway
_SPLITS = {"train": 0, "test": 1}
_TINT = np.array([1.04, 1.0, 0.92], dtype=np.float32)  # warm, brass-like cast (RGB)


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


# ----------------------------------------------------------------------------------------------------------------------
# Random streams and the clean texture


def image_rngs(seed: int, split: str, label: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The two random streams of one image: one for its texture, one for its defect.

    Seeded from ``(seed, split, label, index)`` only (the label by its CRC32, not its position in the config), so
    an image does not change when counts or the list of defect types change.

    Args:
        seed: the config's master seed.
        split: ``"train"`` or ``"test"``.
        label: ``"good"`` or a defect type.
        index: the image's number within its folder.

    Returns:
        (texture_rng, defect_rng).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    ss = np.random.SeedSequence([seed, _SPLITS[split], zlib.crc32(label.encode()), index])
    texture_ss, defect_ss = ss.spawn(2)
    return np.random.default_rng(texture_ss), np.random.default_rng(defect_ss)


def _unit_noise(rng: np.random.Generator, size: int, rows: int, cols: int) -> np.ndarray:
    """White noise drawn on a coarse ``rows x cols`` grid and cubic-upsampled to ``size x size``: cheap low-pass
    noise (an anisotropic grid gives streaks). Rescaled to unit standard deviation. (H, W) float32."""
    noise: np.ndarray = rng.standard_normal((rows, cols), dtype=np.float32)
    if (rows, cols) != (size, size):
        noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    return noise / max(float(noise.std()), 1e-6)


@functools.lru_cache(maxsize=4)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # (H, W) each, pixels
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def render_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Render a clean (defect-free) woven / brushed-metal surface.

    Two near-orthogonal families of threads (oriented sinusoids) with an over/under modulation, horizontal brushing
    streaks, fine grain, slow blotches, a smooth illumination gradient and a warm tint; phase, orientation,
    thread period, brightness and tint jitter per image.

    Args:
        rng: the image's texture stream (see ``image_rngs``).
        size: image side in pixels.

    Returns:
        (H, W, 3) float32 RGB in [0.12, 0.88] (the margin leaves room for defects without clipping).
    """
    # Scalars are cast to Python floats: NumPy scalars would promote the float32 arrays to float64 (NEP 50).
    scale = size / 256.0
    yy, xx = _pixel_grid(size)
    theta = math.radians(12.0 + float(rng.normal(0.0, 1.5)))
    u = xx * math.cos(theta) + yy * math.sin(theta)  # (H, W)
    v = yy * math.cos(theta) - xx * math.sin(theta)  # (H, W)
    period = max(4.0, 11.0 * scale) * (1.0 + float(rng.normal(0.0, 0.03)))
    phase_u, phase_v = (float(p) for p in rng.uniform(0.0, 2.0 * math.pi, size=2))
    warp = np.sin((2.0 * math.pi / period) * u + phase_u)  # threads running along v
    weft = np.sin((2.0 * math.pi / period) * v + phase_v)  # threads running along u
    # Over/under weaving: each family is raised on alternate cells of the other's period.
    over = np.sin((math.pi / period) * v + phase_v / 2.0) * np.sin((math.pi / period) * u + phase_u / 2.0)
    weave = 0.045 * warp * (0.6 + 0.4 * over) + 0.035 * weft * (0.6 - 0.4 * over)

    brushed = _unit_noise(rng, size, size, max(4, size // 24))  # streaks along x
    grain = cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (3, 3), 0.7)
    blotch = _unit_noise(rng, size, 4, 4)

    gx, gy = (float(g) for g in rng.normal(0.0, 1.0, size=2))
    norm = math.hypot(gx, gy) + 1e-6
    ramp = (xx - size / 2.0) * (gx / (norm * size)) + (yy - size / 2.0) * (gy / (norm * size))  # in [-0.71, 0.71]
    illumination = float(rng.uniform(0.04, 0.09)) * ramp

    brightness = 0.5 + float(rng.normal(0.0, 0.02))
    grey = brightness + weave + 0.02 * brushed + 0.03 * grain + 0.015 * blotch + illumination  # (H, W)
    tint = (_TINT * (1.0 + rng.normal(0.0, 0.01, size=3))).astype(np.float32)
    rgb = grey[..., None] * tint  # (H, W, 3)
    return np.clip(rgb, 0.12, 0.88).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Defects: each renderer takes the clean image and returns the defective float image; the mask is derived afterwards.


def _random_point(rng: np.random.Generator, size: int, margin: float) -> np.ndarray:
    m = margin * size
    return rng.uniform(m, size - 1 - m, size=2)


def _bezier(rng: np.random.Generator, size: int, min_len: float, max_len: float) -> np.ndarray:
    """Points of a random quadratic bezier curve starting inside the image, as (N, 1, 2) int32 x, y for cv2.polylines."""
    start = _random_point(rng, size, 0.08)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    length = rng.uniform(min_len, max_len) * size
    end = start + length * np.array([math.cos(angle), math.sin(angle)])
    bow = rng.normal(0.0, 0.15) * length  # sideways bend of the control point
    ctrl = (start + end) / 2.0 + bow * np.array([-math.sin(angle), math.cos(angle)])
    t = np.linspace(0.0, 1.0, 40)[:, None]
    pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * end  # (40, 2) x, y
    return np.round(pts).astype(np.int32)[:, None, :]  # cv2 clips what leaves the image


def _scratch(clean: np.ndarray, rng: np.random.Generator, thin: bool = False) -> np.ndarray:
    size = clean.shape[0]
    alpha = np.zeros(clean.shape[:2], np.float32)  # (H, W)
    n_lines = 1 if thin else int(rng.integers(1, 3))
    for _ in range(n_lines):
        thickness = 1 if thin else int(rng.integers(1, 4))
        pts = _bezier(rng, size, 0.25 if thin else 0.15, 0.6 if thin else 0.5)
        cv2.polylines(alpha, [pts], isClosed=False, color=1.0, thickness=thickness, lineType=cv2.LINE_8)
    if thin:
        delta = rng.uniform(0.06, 0.10)
    else:  # a third of the scratches are low contrast
        delta = rng.uniform(0.10, 0.15) if rng.random() < 1 / 3 else rng.uniform(0.15, 0.30)
    sign = 1.0 if rng.random() < 0.7 else -1.0  # scratches on metal mostly catch the light
    return clean + sign * delta * alpha[..., None]


def _hole(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = clean.shape[0]
    centre = _random_point(rng, size, 0.12)
    a = rng.uniform(0.025, 0.07) * size
    b = a * rng.uniform(0.6, 1.0)
    angle = rng.uniform(0.0, 180.0)
    c = (int(round(centre[0])), int(round(centre[1])))
    core: np.ndarray = np.zeros(clean.shape[:2], np.float32)  # (H, W)
    cv2.ellipse(core, c, (max(1, round(a)), max(1, round(b))), angle, 0, 360, 1.0, -1, cv2.LINE_8)
    core = cv2.GaussianBlur(core, (0, 0), sigmaX=1.0 + 0.1 * a)
    rim: np.ndarray = np.zeros_like(core)
    rim_axes = (max(2, round(a + 2)), max(2, round(b + 2)))
    cv2.ellipse(rim, c, rim_axes, angle, 0, 360, 1.0, 2, cv2.LINE_8)
    rim = cv2.GaussianBlur(rim, (0, 0), sigmaX=1.2)
    core = np.where(core >= ALPHA_FLOOR, core, 0.0)
    # The rim lies only outside the dark core: where both overlapped, brightening and darkening could cancel and
    # leave unchanged pixels (holes in the mask) inside the defect.
    rim = np.where((rim >= ALPHA_FLOOR) & (core == 0.0), rim, 0.0)[..., None]
    core = core[..., None]
    dark = rng.uniform(0.02, 0.07) * _TINT
    raised = clean + rng.uniform(0.10, 0.20) * rim  # burr around the hole catches light
    return raised * (1.0 - core) + dark * core


def _crack(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = clean.shape[0]
    alpha = np.zeros(clean.shape[:2], np.float32)  # (H, W)
    step = max(2.0, 0.012 * size)
    # Stack of branches: (position, heading, steps left, thickness).
    branches = [
        (_random_point(rng, size, 0.15), rng.uniform(0.0, 2.0 * math.pi), int(rng.integers(15, 40)), int(rng.integers(1, 3)))
    ]
    n_segments = 0
    while branches and n_segments < 400:
        pos, heading, steps, thickness = branches.pop()
        for remaining in range(steps - 1, -1, -1):
            heading += rng.normal(0.0, 0.35)
            new = pos + step * np.array([math.cos(heading), math.sin(heading)])
            if not (0 <= new[0] < size and 0 <= new[1] < size):
                break  # the branch ran off the image
            p0 = (int(round(pos[0])), int(round(pos[1])))
            p1 = (int(round(new[0])), int(round(new[1])))
            cv2.line(alpha, p0, p1, 1.0, thickness, cv2.LINE_8)
            pos = new
            n_segments += 1
            if rng.random() < 0.08 and remaining > 4:  # fork a thinner, shorter side branch
                side = 1.0 if rng.random() < 0.5 else -1.0
                branches.append((pos.copy(), heading + side * rng.uniform(0.4, 1.0), remaining // 2, 1))
    # A faint dark halo around the fissure (crushed material) makes it look less drawn.
    halo = 0.35 * cv2.GaussianBlur(alpha, (0, 0), sigmaX=1.0)
    alpha = np.maximum(alpha, np.where(halo >= ALPHA_FLOOR, halo, 0.0))[..., None]
    darkness = rng.uniform(0.45, 0.75)
    return clean * (1.0 - darkness * alpha)


def _stain(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = clean.shape[0]
    blob = np.zeros(clean.shape[:2], np.float32)  # (H, W)
    centre = _random_point(rng, size, 0.15)
    radius = rng.uniform(0.04, 0.10) * size
    for _ in range(int(rng.integers(2, 6))):
        c = centre + rng.normal(0.0, 0.5 * radius, size=2)
        axes = (max(1, round(radius * rng.uniform(0.4, 1.0))), max(1, round(radius * rng.uniform(0.3, 0.8))))
        cv2.ellipse(blob, (int(round(c[0])), int(round(c[1]))), axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_8)
    alpha: np.ndarray = cv2.GaussianBlur(blob, (0, 0), sigmaX=rng.uniform(0.2, 0.4) * radius)
    alpha = alpha / max(float(alpha.max()), 1e-6)
    # A higher floor than other defects: the blurred tail of a faint stain is invisible yet would inflate the mask.
    alpha = np.where(alpha >= 2.5 * ALPHA_FLOOR, alpha, 0.0)[..., None]
    # Oil / rust-like colour shift: mostly darker, more so in blue, so it reads as a brownish stain.
    direction = rng.uniform([0.3, 0.5, 0.8], [0.6, 0.8, 1.0]).astype(np.float32)
    direction /= direction.max()
    delta = -rng.uniform(0.06, 0.15) * direction
    return clean + alpha * delta


DefectRenderer = Callable[[np.ndarray, np.random.Generator], np.ndarray]
DEFECT_TYPES: dict[str, DefectRenderer] = {
    "scratch": _scratch,
    "thin_scratch": lambda clean, rng: _scratch(clean, rng, thin=True),
    "hole": _hole,
    "crack": _crack,
    "stain": _stain,
}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 with rounding (how every PNG of this module is quantised)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_defect(clean: np.ndarray, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect on a clean image and derive its exact mask.

    Args:
        clean: (H, W, 3) float32 RGB in [0, 1], e.g. from ``render_texture``.
        defect: one of ``DEFECT_TYPES``.
        rng: the image's defect stream.

    Returns:
        (image, mask): (H, W, 3) float32 RGB equal to ``clean`` outside the mask, and (H, W) bool, true where the
        strongest channel changed by at least ``MIN_CHANGE_LEVELS`` grey levels; never (nearly) empty.
    """
    if defect not in DEFECT_TYPES:
        raise ValueError(f"defect must be one of {sorted(DEFECT_TYPES)}, got {defect!r}")
    for _ in range(10):  # a defect that clipped to nothing is redrawn (rare; deterministic as the stream continues)
        drawn = np.clip(DEFECT_TYPES[defect](clean, rng), 0.0, 1.0)
        change = np.abs(drawn - clean).max(axis=2) * 255.0  # (H, W) grey levels
        mask = change >= MIN_CHANGE_LEVELS
        if mask.sum() >= MIN_MASK_PIXELS:
            image = np.where(mask[..., None], drawn, clean).astype(np.float32)
            return image, mask
    raise RuntimeError(f"could not draw a visible {defect!r} defect")


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
