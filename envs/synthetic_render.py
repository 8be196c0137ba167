"""The embedded synthetic category's images: a woven / brushed texture and five kinds of drawn defects.

Rendering only: :mod:`envs.synthetic` writes the images in the MVTec AD layout and caches them. Every image draws from
its own random streams (:func:`image_rngs`), so a given image is the same bytes whatever else is generated.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable

import cv2
import numpy as np

__all__ = ["DEFECT_TYPES", "MIN_CHANGE_LEVELS", "image_rngs", "render_defect", "render_texture", "to_uint8"]

# A pixel belongs to the mask when the defect moved its strongest channel by at least this many 8-bit levels;
# 1.5 guarantees a difference of at least one level after rounding, so the mask is exactly the changed pixels.
MIN_CHANGE_LEVELS = 1.5
# Soft footprints (blurred alpha) are cut below this, so near-invisible halos neither change pixels nor get masked.
ALPHA_FLOOR = 0.1
MIN_MASK_PIXELS = 4
_SPLITS = {"train": 0, "test": 1}
_TINT = np.array([1.04, 1.0, 0.92], dtype=np.float32)  # warm, brass-like cast (RGB)


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
