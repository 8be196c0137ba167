"""Extra positives: pasted defects and noise-mask anomalies keep image and mask aligned, are seeded, and only ever
use the detector's own training and pool images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.detector import Detector
from models.synthesis import noise_anomaly, noise_mask, paste_defect
from tests.test_detector import SIZE, make_data, tiny_config


def _source(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 50, size=(SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[5:9, 10:20] = True
    mask[6, 21] = True  # an odd, non-rectangular shape
    image[mask] = rng.integers(200, 256, size=(int(mask.sum()), 3), dtype=np.uint8)
    return image, mask


@pytest.mark.parametrize("same_place", [0.0, 1.0])
def test_paste_replaces_exactly_the_mask_pixels_with_defect_pixels(same_place: float) -> None:
    rng = np.random.default_rng(0)
    source, source_mask = _source(rng)
    target = np.full((SIZE, SIZE, 3), 100, np.uint8)
    for seed in range(20):
        image, mask = paste_defect(target, source, source_mask, np.random.default_rng(seed), same_place=same_place)
        changed = (image != target).any(axis=-1)
        assert mask.any()
        assert np.array_equal(changed, mask)  # every pasted pixel differs from the flat target, and nothing else does
        assert image[mask].min() >= 200  # they come from the defect, not from the source's background
        if same_place == 1.0:
            assert np.array_equal(mask, source_mask) and np.array_equal(image[mask], source[source_mask])


def test_a_moved_paste_is_also_turned_by_quarter_turns() -> None:
    """The source defect is wider than tall (rows 5-8, columns 10-21): flips and rescales keep that, quarter turns not."""
    rng = np.random.default_rng(0)
    source, source_mask = _source(rng)
    target = np.full((SIZE, SIZE, 3), 100, np.uint8)

    def wide(seed: int) -> bool:
        _, mask = paste_defect(target, source, source_mask, np.random.default_rng(seed), same_place=0.0)
        ys, xs = np.nonzero(mask)
        return bool(np.ptp(xs) > np.ptp(ys))

    shapes = [wide(seed) for seed in range(40)]
    assert any(shapes) and not all(shapes)


def test_paste_rejects_an_empty_defect() -> None:
    with pytest.raises(ValueError, match="empty"):
        blank = np.zeros((8, 8, 3), np.uint8)
        paste_defect(blank, blank, np.zeros((8, 8), bool), np.random.default_rng())


def test_noise_anomaly_changes_only_masked_pixels_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    texture = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    a_img, a_mask = noise_anomaly(target, texture, np.random.default_rng(7))
    b_img, b_mask = noise_anomaly(target, texture, np.random.default_rng(7))
    c_img, c_mask = noise_anomaly(target, texture, np.random.default_rng(8))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not (np.array_equal(a_img, c_img) and np.array_equal(a_mask, c_mask))
    assert a_mask.any() and not a_mask.all()
    assert np.array_equal(a_img[~a_mask], target[~a_mask])


def test_noise_anomaly_shape_options_move_blob_size_and_strength_as_documented() -> None:
    """Larger noise scales make smaller blobs; a lower opacity makes a fainter change."""
    target = np.full((64, 64, 3), 128, np.uint8)
    texture = np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)

    def blobs(scale: int) -> float:
        masks = [noise_anomaly(target, texture, np.random.default_rng(s), scales=(scale, scale))[1] for s in range(40)]
        return float(np.mean([cv2.connectedComponents(m.astype(np.uint8))[0] - 1 for m in masks]))

    assert blobs(5) > 3 * blobs(1)  # many small blobs at scale 5, one or two large ones at scale 1
    strong, faint = [], []
    for s in range(40):
        img, mask = noise_anomaly(target, texture, np.random.default_rng(s), opacity=(1.0, 1.0))
        strong.append(np.abs(img[mask].astype(float) - 128).mean())
        img, mask = noise_anomaly(target, texture, np.random.default_rng(s), opacity=(0.1, 0.1))
        faint.append(np.abs(img[mask].astype(float) - 128).mean())
    assert np.mean(faint) < 0.2 * np.mean(strong)


@pytest.mark.parametrize(
    "bad",
    [
        {"synthetic_noise_opacity": (0.0, 0.5)},
        {"synthetic_noise_opacity": (0.2,)},
        {"synthetic_noise_scales": (5, 3)},
    ],
)
def test_noise_shape_options_are_checked(bad: dict) -> None:
    from models.detector import DetectorConfig

    with pytest.raises(ValueError, match="synthetic_noise"):
        DetectorConfig(**bad)


def test_noise_mask_is_never_empty() -> None:
    for seed in range(30):
        assert noise_mask(16, 24, np.random.default_rng(seed)).any()


def test_detector_synthetic_pool_uses_only_its_own_images_and_is_seeded() -> None:
    """Every synthetic image is a training image with pixels from a pool anomaly or another training image; the
    validation/test images (never given to the detector) cannot appear: we check the pasted pixels' provenance."""
    train, pool, masks = make_data(seed=4, n_train=6, n_pool=6)
    config = tiny_config(synthetic_pool_size=8, synthetic_paste_fraction=1.0)
    det = Detector(config, train, pool, masks, seed=5)
    det.refresh_profiles()
    images, synth_masks = det._pred_images, det._pred_masks
    assert images is not None and synth_masks is not None
    assert len(images) == len(pool) + 8
    anomaly_pixels = {tuple(p) for i in range(len(pool)) if masks[i].any() for p in pool[i][masks[i]]}
    for k in range(len(pool), len(images)):
        img = images[k].permute(1, 2, 0).numpy()
        m = synth_masks[k].numpy()
        assert m.any()
        assert any(np.array_equal(img[~m], t[~m]) for t in train)  # the background is a training image
        assert {tuple(p) for p in img[m]} <= anomaly_pixels  # the defect comes from the pool's labelled anomalies
    again = Detector(config, train, pool, masks, seed=5)
    again.refresh_profiles()
    assert again._pred_images is not None and torch.equal(again._pred_images, images)
    assert det._profiles is not None and det._profiles.shape[0] == len(images)


def test_synthetic_pool_is_renewed_at_each_refresh_and_positives_follow() -> None:
    train, pool, masks = make_data(seed=4)
    det = Detector(tiny_config(synthetic_pool_size=4, synthetic_paste_fraction=0.0), train, pool, masks, seed=1)
    det.refresh_profiles()
    first = det._pred_images.clone()  # type: ignore[union-attr]
    det.ae_update(det.random_patches(4))
    assert det.refresh_profiles() is True
    assert not torch.equal(first[len(pool) :], det._pred_images[len(pool) :])  # type: ignore[index]
    indices = {i for i, _ in det._positives}
    assert indices >= set(range(len(pool), len(pool) + 4))  # every synthetic image contributes positives
    det.predictor_update()  # crops come from the enlarged pool without error


def test_synthetic_images_are_renewed_during_the_predictor_warm_up() -> None:
    """No AE update happens in the warm-up: the synthetic images still change every synthetic_refresh_updates."""
    train, pool, masks = make_data(seed=4)
    det = Detector(tiny_config(synthetic_pool_size=3, synthetic_refresh_updates=2), train, pool, masks, seed=1)
    seen = []
    for _ in range(6):
        det.predictor_update()
        seen.append(det._pred_images[len(pool) :].clone())  # type: ignore[index]
    assert det.ae_updates == 0
    changes = [not torch.equal(a, b) for a, b in zip(seen, seen[1:])]
    assert changes == [False, True, False, True, False]
    assert det._profiles is not None and det._profiles.shape[0] == len(pool) + 3
    # the profiles of the renewed images are those of the current AE
    assert torch.allclose(det._profiles[len(pool) :], det.loss_profiles(det._pred_images[len(pool) :]))  # type: ignore[index]
