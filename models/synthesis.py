"""Extra positives for the predictor: labelled defects pasted into normal images, and synthetic anomalies.

Five labelled images per defect type are the protocol, but the predictor can learn from many more positives
made from them and from the normal images, as few-shot and unsupervised segmenters do:

* :func:`paste_defect` copies the pixels under a labelled defect's mask (randomly flipped, rotated by a multiple
  of 90 degrees and rescaled) into a normal image, at the same place or a random one ("copy-paste", Ghiasi et
  al., CVPR 2021). The new mask is exactly the set of pasted pixels.
* :func:`noise_anomaly` blends a blob-shaped region of a normal image with a texture taken from another normal
  image of the same category, or with a flat random colour, under a smooth-noise mask (DRAEM's recipe, Zavrtanik
  et al., ICCV 2021, with value noise in place of Perlin noise and without external texture datasets).

Only the images given to these functions are used: the detector passes its training images and its pool's
labelled anomalies, never validation or test images. All randomness comes from the numpy generator passed in.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["noise_mask", "paste_defect", "noise_anomaly"]


def noise_mask(
    height: int, width: int, rng: np.random.Generator, min_scale: int = 2, max_scale: int = 6, threshold: float = 0.5
) -> np.ndarray:
    """A bool (H, W) mask of smooth random blobs: value noise at a random scale, thresholded.

    Value noise: a (2^s x 2^s) grid of uniform random values upsampled bicubically, summed over two octaves; the
    scale ``s`` draws from ``[min_scale, max_scale]``, so blobs range from about H/4 down to H/64 across. A mask
    that would be empty gets one blob at its maximum.
    """
    s = int(rng.integers(min_scale, max_scale + 1))
    noise = np.zeros((height, width), np.float32)
    for octave, amplitude in ((0, 1.0), (1, 0.5)):
        n = 2 ** (s + octave)
        grid = rng.random((n, n)).astype(np.float32)
        noise += amplitude * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    noise /= 1.5
    mask = noise > threshold + 0.25 * float(rng.random())  # threshold in [0.5, 0.75): smaller or larger blobs
    if not mask.any():
        y, x = np.unravel_index(int(np.argmax(noise)), noise.shape)
        mask[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = True
    return mask


def _random_view(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, scale: tuple[float, float]) -> tuple:
    """Flip, rotate by k * 90 degrees and rescale an image crop and its mask together."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    f = float(rng.uniform(*scale))
    h, w = mask.shape
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    # Nearest for both: every pasted pixel is a defect pixel, never a blend with the source's background
    image = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=cv2.INTER_NEAREST)
    mask = cv2.resize(np.ascontiguousarray(mask).astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) > 0
    return image.reshape(nh, nw, -1), mask


def paste_defect(
    target: np.ndarray,
    source: np.ndarray,
    source_mask: np.ndarray,
    rng: np.random.Generator,
    same_place: float = 0.5,
    scale: tuple[float, float] = (0.75, 1.25),
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the defect of ``source`` (its pixels under ``source_mask``) into ``target``.

    Args:
        target: normal image, uint8 (H, W, 3).
        source: labelled anomalous image, uint8 (H, W, 3), same size.
        source_mask: its defect mask, bool (H, W), not empty.
        rng: numpy generator.
        same_place: probability of pasting at the defect's own position without any transform (the
            natural place for aligned objects); otherwise flipped/rotated/rescaled and placed at random.
        scale: range of the rescaling factor.

    Returns:
        The new image, uint8 (H, W, 3), and its mask, bool (H, W): the defect's pixels, replaced exactly by the
        source's.
    """
    if not source_mask.any():
        raise ValueError("source_mask is empty: there is no defect to paste")
    H, W = source_mask.shape
    ys, xs = np.nonzero(source_mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    patch, patch_mask = source[y0:y1, x0:x1], source_mask[y0:y1, x0:x1]
    if rng.random() < same_place:
        py, px = int(y0), int(x0)
    else:
        patch, patch_mask = _random_view(patch, patch_mask, rng, scale)
        ph, pw = patch_mask.shape
        if ph > H or pw > W:  # a rescaled defect larger than the image: crop it
            patch, patch_mask = patch[:H, :W], patch_mask[:H, :W]
            ph, pw = patch_mask.shape
        py, px = int(rng.integers(0, H - ph + 1)), int(rng.integers(0, W - pw + 1))
    ph, pw = patch_mask.shape
    image = target.copy()
    image[py : py + ph, px : px + pw][patch_mask] = patch[patch_mask]
    mask = np.zeros((H, W), bool)
    mask[py : py + ph, px : px + pw] = patch_mask
    return image, mask


def noise_anomaly(
    target: np.ndarray,
    texture_source: np.ndarray,
    rng: np.random.Generator,
    opacity: tuple[float, float] = (0.2, 1.0),
    scales: tuple[int, int] = (2, 6),
) -> tuple[np.ndarray, np.ndarray]:
    """A DRAEM-style synthetic anomaly: ``target`` blended with a foreign texture under a noise mask.

    The texture is ``texture_source`` flipped, rotated and shifted (another normal image: a plausible but misplaced
    structure), with random brightness and contrast, or with probability 1/4 a flat random colour. It replaces
    the target inside the mask with an opacity drawn from ``opacity``.

    Args:
        target, texture_source: normal images, uint8 (H, W, 3), same size.
        rng: numpy generator.
        opacity: range of the blend factor of the texture (1: full replacement).
        scales: (min, max) scale of :func:`noise_mask`; a larger min makes only small blobs (H/8 across at 3).

    Returns:
        The new image, uint8 (H, W, 3), and its mask, bool (H, W).
    """
    H, W = target.shape[:2]
    mask = noise_mask(H, W, rng, min_scale=scales[0], max_scale=scales[1])
    if rng.random() < 0.25:
        texture = np.broadcast_to(rng.integers(0, 256, 3).astype(np.float32), (H, W, 3))
    else:
        tex = np.rot90(texture_source[:, ::-1] if rng.random() < 0.5 else texture_source, int(rng.integers(4)))
        tex = np.roll(np.ascontiguousarray(tex), (int(rng.integers(H)), int(rng.integers(W))), axis=(0, 1))
        tex = cv2.resize(tex, (W, H)) if tex.shape[:2] != (H, W) else tex
        gain, bias = float(rng.uniform(0.6, 1.4)), float(rng.uniform(-40, 40))
        texture = np.clip(tex.astype(np.float32) * gain + bias, 0, 255)
    a = float(rng.uniform(*opacity))
    blended = target.astype(np.float32)
    blended[mask] = (1 - a) * blended[mask] + a * texture[mask]
    return np.round(blended).astype(np.uint8), mask
