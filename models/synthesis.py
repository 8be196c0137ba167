"""Extra positives for the predictor: labelled defects pasted into normal images, and synthetic anomalies.

Five labelled images per defect type are the protocol, but the predictor can learn from many more positives
made from them and from the normal images, as few-shot and unsupervised segmenters do:

* :func:`paste_defect` copies the pixels under a labelled defect's mask (randomly flipped, rotated by a multiple
  of 90 degrees and rescaled) into a normal image, at the same place or a random one ("copy-paste", Ghiasi et
  al., CVPR 2021). The new mask is exactly the set of pasted pixels. With ``match``, the pasted pixels are shifted
  so that the defect keeps its contrast with its surroundings rather than its absolute colour (a faint discolouration
  cut from a bright image stays faint in a dark one, instead of becoming a stark step). With ``margin``, the defect
  brings its own surroundings, faded into the target, so its edge is the real one and not a cut (the blending that
  Dwibedi et al., ICCV 2017, found necessary so that a detector does not learn the cut's boundary artefacts).
* :func:`noise_anomaly` blends a blob-shaped region of a normal image with a texture taken from another normal
  image of the same category, or with a flat random colour, under a smooth-noise mask (DRAEM's recipe, Zavrtanik
  et al., ICCV 2021, with value noise in place of Perlin noise and without external texture datasets).
* :func:`shift_anomaly` changes the brightness and contrast of a large region of a normal image, bounded by one or
  two straight edges (a discoloured or differently finished area, as magnetic_tile's `uneven` and MVTec AD's
  `color` defects): its texture stays the image's own, so only the comparison with the rest of the image gives it away.
* :func:`corrupt_patches` is for the autoencoder, not the predictor: it damages a share of a mini-batch of normal
  patches with DRAEM-style blobs, so that the AE can be trained to restore the clean patch (a denoising AE). An AE
  trained on normal patches alone learns to copy whatever it sees, defects included; one trained to undo damage
  reconstructs the normal appearance instead, and its residual lights up what is not normal.

Only the images given to these functions are used: the detector passes its training images and its pool's
labelled anomalies, never validation or test images. All randomness comes from the generator passed in (``numpy``;
``torch`` for :func:`corrupt_patches`, which works on the AE's mini-batch tensors).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["noise_mask", "ring_mean", "paste_defect", "noise_anomaly", "region_mask", "shift_anomaly", "corrupt_patches"]


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


def _random_view(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, scale: tuple[float, float], rotate: bool = True
) -> tuple:
    """Flip, rotate by k * 90 degrees (if ``rotate``) and rescale an image crop and its mask together."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if rotate:
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    f = float(rng.uniform(*scale))
    h, w = mask.shape
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    # Nearest for both: every pasted pixel is a defect pixel, never a blend with the source's background
    image = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=cv2.INTER_NEAREST)
    mask = cv2.resize(np.ascontiguousarray(mask).astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) > 0
    return image.reshape(nh, nw, -1), mask


def ring_mean(image: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray | None:
    """Per-channel mean of ``image`` (H, W, C) over the band of ``width`` pixels just outside ``mask`` (H, W).

    None when the band is empty (a mask that covers the whole image).

    Raises:
        ValueError: ``width`` < 1 (there would be no band to read).
    """
    if width < 1:
        raise ValueError(f"ring width must be >= 1 pixel, got {width}")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    ring = (cv2.dilate(mask.astype(np.uint8), kernel) > 0) & ~mask
    if not ring.any():
        return None
    return image[ring].reshape(-1, image.shape[-1]).astype(np.float32).mean(axis=0)  # (C,)


def paste_defect(
    target: np.ndarray,
    source: np.ndarray,
    source_mask: np.ndarray,
    rng: np.random.Generator,
    same_place: float = 0.5,
    scale: tuple[float, float] = (0.75, 1.25),
    rotate: bool = True,
    match: bool = False,
    ring_width: int = 8,
    margin: int = 0,
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
        rotate: also rotate by a random multiple of 90 degrees when moving the defect; False keeps the texture's
            orientation (flips only), for surfaces with a direction (brushed or ground metal, wood, fabric).
        match: add to the pasted pixels, per channel, the difference between the target's mean and the source's
            mean over the ``ring_width``-pixel band around the defect (clipped to [0, 255]): the defect keeps its
            contrast with its surroundings, as a discolouration does, not its absolute colour.
        ring_width: width in pixels of that band.
        margin: also carry the source's own surroundings, ``margin`` pixels around the defect, faded linearly into
            the target (blend weight 1 at the defect's edge, 0 at ``margin`` pixels from it). The defect then keeps
            its real boundary with the normal surface it grew in, and the seam between source and target becomes a
            soft blend of two normal surfaces, labelled normal; 0: the defect's pixels alone, a hard seam at its edge.

    Returns:
        The new image, uint8 (H, W, 3), and its mask, bool (H, W): the defect's pixels, replaced exactly by the
        source's (with ``margin``, the pixels around them are blended, and stay normal in the mask).
    """
    if not source_mask.any():
        raise ValueError("source_mask is empty: there is no defect to paste")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    H, W = source_mask.shape
    ys, xs = np.nonzero(source_mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if margin:  # the defect's box grown by the margin
        y0, y1, x0, x1 = max(0, y0 - margin), min(H, y1 + margin), max(0, x0 - margin), min(W, x1 + margin)
    patch_mask = source_mask[y0:y1, x0:x1]
    # each pixel's blend weight, 255 on the defect, fading to 0 at ``margin`` pixels from it (0 outside without one)
    distance = cv2.distanceTransform((~patch_mask).astype(np.uint8), cv2.DIST_L2, 5) if margin else ~patch_mask
    weight = np.round(255 * np.clip(1 - distance / max(margin, 1), 0, 1)).astype(np.uint8)[..., None]  # (h, w, 1)
    patch = np.concatenate([source[y0:y1, x0:x1], weight], axis=-1)  # the weight travels with the pixels
    if rng.random() < same_place:
        py, px = int(y0), int(x0)
    else:
        patch, patch_mask = _random_view(patch, patch_mask, rng, scale, rotate)
        ph, pw = patch_mask.shape
        if ph > H or pw > W:  # a rescaled defect larger than the image: crop it
            patch, patch_mask = patch[:H, :W], patch_mask[:H, :W]
            ph, pw = patch_mask.shape
        py, px = int(rng.integers(0, H - ph + 1)), int(rng.integers(0, W - pw + 1))
    ph, pw = patch_mask.shape
    image = target.copy()
    mask = np.zeros((H, W), bool)
    mask[py : py + ph, px : px + pw] = patch_mask
    pixels, weight = patch[..., :-1].astype(np.float32), patch[..., -1:].astype(np.float32) / 255  # (ph, pw, C), (ph, pw, 1)
    if match:
        source_ring, target_ring = ring_mean(source, source_mask, ring_width), ring_mean(target, mask, ring_width)
        if source_ring is not None and target_ring is not None:
            pixels = np.clip(np.round(pixels + (target_ring - source_ring)), 0, 255)
    region = image[py : py + ph, px : px + pw].astype(np.float32)
    blended = np.round(weight * pixels + (1 - weight) * region).astype(image.dtype)
    blended[patch_mask] = pixels[patch_mask].astype(image.dtype)  # the defect's own pixels, exactly
    image[py : py + ph, px : px + pw] = blended
    return image, mask


def noise_anomaly(
    target: np.ndarray,
    texture_source: np.ndarray,
    rng: np.random.Generator,
    opacity: tuple[float, float] = (0.2, 1.0),
    scales: tuple[int, int] = (2, 6),
    min_change: float = 0.0,
    window: tuple[float, float] | None = None,
    attempts: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """A DRAEM-style synthetic anomaly: ``target`` blended with a foreign texture under a noise mask.

    The texture is ``texture_source`` flipped, rotated and shifted (another normal image: a plausible but misplaced
    structure), with random brightness and contrast, or with probability 1/4 a flat random colour. It replaces
    the target inside the mask with an opacity drawn from ``opacity``.

    On an object against a plain background much of a blend changes nothing visible (background shifted over
    background): 35% of the masked pixels on tire move by less than 10 grey levels. Labelled "defect", those
    pixels teach the predictor that a defect can look exactly like a normal pixel. ``min_change`` keeps the
    label honest: masked pixels whose largest channel change is below it are restored and left out of the mask,
    so the mask is exactly the set of visibly changed pixels (as :func:`paste_defect`'s is).

    Args:
        target, texture_source: normal images, uint8 (H, W, 3), same size.
        rng: numpy generator.
        opacity: range of the blend factor of the texture (1: full replacement).
        scales: (min, max) scale of :func:`noise_mask`; a larger min makes only small blobs (H/8 across at 3).
        min_change: grey levels (0-255, largest over the channels) a pixel must move to count as anomalous;
            0: every pixel under the noise mask counts, as in DRAEM.
        window: (min, max) side of a random square, as a fraction of the image side, outside which the noise mask is
            cleared; None: the whole image. Noise blobs cover a median 18,000 pixels of a 256² image where a real defect
            may cover 150, so a pixel-wise loss would learn mostly from them; a window bounds their size.
        attempts: new draws when fewer than 16 pixels are left in the mask (with ``min_change`` or ``window``); the
            last draw is returned regardless.

    Returns:
        The new image, uint8 (H, W, 3), and its mask, bool (H, W).
    """
    H, W = target.shape[:2]
    for _ in range(max(attempts, 1)):
        mask = noise_mask(H, W, rng, min_scale=scales[0], max_scale=scales[1])
        if window is not None:
            side = max(2, round(float(rng.uniform(*window)) * min(H, W)))
            y0, x0 = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
            inside = np.zeros_like(mask)
            inside[y0 : y0 + side, x0 : x0 + side] = True
            mask &= inside
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
        image = np.round(blended).astype(np.uint8)
        if min_change <= 0 and window is None:
            return image, mask
        if min_change > 0:
            change = np.abs(image.astype(np.int16) - target.astype(np.int16)).max(axis=-1)  # (H, W)
            mask &= change >= min_change
            image[~mask] = target[~mask]
        if mask.sum() >= 16:
            break
    return image, mask


def region_mask(height: int, width: int, rng: np.random.Generator, band: float = 0.5) -> np.ndarray:
    """A bool (H, W) mask of a large region with straight edges: one side of a random line (a half-plane) or, with
    probability ``band``, the strip between two parallel lines. The line's direction is uniform; the region covers
    roughly 10-60% of the image.
    """
    theta = float(rng.uniform(0.0, np.pi))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # signed distance along the line's normal, scaled to [-1, 1] over the image
    d = (np.cos(theta) * (xs - width / 2) + np.sin(theta) * (ys - height / 2)) / (0.5 * np.hypot(height, width))
    if rng.random() < band:
        centre, half = float(rng.uniform(-0.6, 0.6)), float(rng.uniform(0.1, 0.35))
        return np.abs(d - centre) < half
    cut = float(rng.uniform(0.1, 0.6))  # the region's depth from the image's edge, in the same units
    return d > 1.0 - 2.0 * cut if rng.random() < 0.5 else d < 2.0 * cut - 1.0


def shift_anomaly(
    target: np.ndarray,
    rng: np.random.Generator,
    gain: tuple[float, float] = (0.6, 1.4),
    bias: tuple[float, float] = (-40.0, 40.0),
    min_change: float = 12.0,
    attempts: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """A region of ``target`` (:func:`region_mask`) with its brightness and contrast changed: ``(x - m) * g + m + b``
    for the region's mean colour ``m``, a gain ``g`` and an offset ``b`` drawn from ``gain`` and ``bias``.

    The region is the defect, as a real discoloured area's mask is drawn; a draw whose pixels move by a median of
    less than ``min_change`` grey levels (largest over the channels) is invisible as a region and is redrawn, up to
    ``attempts`` times (the last draw is returned regardless).

    Returns:
        The new image, uint8 (H, W, 3), and its mask, bool (H, W): exactly the region, outside which nothing changed.
    """
    H, W = target.shape[:2]
    image, mask = target.copy(), np.zeros((H, W), bool)
    for _ in range(max(attempts, 1)):
        mask = region_mask(H, W, rng)
        g, b = float(rng.uniform(*gain)), float(rng.uniform(*bias))
        pixels = target[mask].astype(np.float32)  # (n, 3)
        mean = pixels.mean(axis=0, keepdims=True) if len(pixels) else 0.0
        shifted = np.clip(np.round((pixels - mean) * g + mean + b), 0, 255).astype(np.uint8)
        image = target.copy()
        image[mask] = shifted
        moved = np.abs(shifted.astype(np.int16) - target[mask].astype(np.int16)).max(axis=-1)  # (n,)
        if mask.sum() >= 16 and float(np.median(moved)) >= min_change:
            break
    return image, mask


def corrupt_patches(
    patches: torch.Tensor,
    generator: torch.Generator,
    fraction: float,
    opacity: tuple[float, float] = (0.2, 1.0),
    scales: tuple[int, int] = (1, 3),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Damage a random share of normal patches under smooth blob masks, for a denoising AE (DRAEM's reconstructive
    training, Zavrtanik et al., ICCV 2021, at the AE's patch size and without external textures).

    Each chosen patch gets a value-noise blob mask (2^s cells per side, s in ``scales``, two octaves, thresholded at
    a random level in [0.5, 0.75)), filled with one of, equally likely: another patch of the batch, flipped and
    rotated, with a random gain in [0.6, 1.4] and offset in [-0.16, 0.16] (a misplaced structure); the patch itself
    with such a gain and offset (a discoloured region that keeps its texture); a flat random colour. The fill is
    blended in with an opacity drawn from ``opacity``.

    Args:
        patches: float (B, C, p, p) in [0, 1], normal patches (not modified).
        generator: the torch generator all draws come from (the detector's private one).
        fraction: probability that a patch is damaged.
        opacity: (min, max) blend factor of the fill (1: full replacement).
        scales: (min, max) of s; at p = 64, s = 1 makes blobs about half a patch across, s = 3 an eighth.

    Returns:
        The damaged patches, float (B, C, p, p) in [0, 1], and the blend weight of each pixel, float (B, 1, p, p)
        (0 where nothing changed).
    """
    B, C, H, W = patches.shape
    chosen = torch.rand(B, generator=generator) < fraction  # (B,)
    n = int(chosen.sum())
    weight = torch.zeros(B, 1, H, W)
    if n == 0:
        return patches.clone(), weight
    # Blob masks: value noise, two octaves, one scale per patch
    s = torch.randint(scales[0], scales[1] + 1, (n,), generator=generator)
    noise = torch.zeros(n, 1, H, W)
    for octave, amplitude in ((0, 1.0), (1, 0.5)):
        for level in range(scales[0], scales[1] + 1):
            cells = 2 ** (level + octave)
            grid = torch.rand(n, 1, cells, cells, generator=generator)  # drawn for all, kept where s == level
            up = F.interpolate(grid, size=(H, W), mode="bicubic", align_corners=False)
            noise += amplitude * up * (s == level).float().view(n, 1, 1, 1)
    threshold = 0.5 + 0.25 * torch.rand(n, 1, 1, 1, generator=generator)
    mask = (noise / 1.5 > threshold).float()  # (n, 1, H, W)
    for i in (mask.flatten(1).amax(1) == 0).nonzero().flatten().tolist():  # as noise_mask: one blob at the maximum
        y, x = divmod(int(noise[i].flatten().argmax()), W)
        mask[i, :, max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = 1.0
    # Fills: 0 another patch of the batch (flipped, rotated), 1 the patch itself, 2 a flat colour; gain and offset
    kind = torch.randint(3, (n,), generator=generator)
    other = torch.randint(B, (n,), generator=generator)
    turns = torch.randint(4, (n,), generator=generator)
    gain = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)
    offset = 0.32 * torch.rand(n, 1, 1, 1, generator=generator) - 0.16
    colour = torch.rand(n, C, 1, 1, generator=generator)
    idx = chosen.nonzero().flatten()  # (n,)
    own = patches[idx].float()  # (n, C, H, W)
    foreign = torch.stack([torch.rot90(patches[j].flip(-1), int(k), (-2, -1)) for j, k in zip(other.tolist(), turns.tolist())])
    source = torch.where((kind == 0).view(n, 1, 1, 1), foreign.float(), own)
    fill = torch.where((kind == 2).view(n, 1, 1, 1), colour.expand(n, C, H, W), source * gain + offset)
    a = opacity[0] + (opacity[1] - opacity[0]) * torch.rand(n, 1, 1, 1, generator=generator)
    weight[idx] = a * mask
    damaged = patches.clone()
    damaged[idx] = ((1 - weight[idx]) * own + weight[idx] * fill).clamp(0.0, 1.0).to(patches.dtype)
    return damaged, weight
