"""Extra positives: pasted defects and noise-mask anomalies keep image and mask aligned, are seeded, and only ever
use the detector's own training and pool images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.autoencoder import AutoencoderConfig
from models.detector import Detector
from models.synthesis import (
    corrupt_patches,
    noise_anomaly,
    noise_mask,
    paste_defect,
    region_mask,
    ring_mean,
    shift_anomaly,
)
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


def test_paste_without_rotation_keeps_the_defect_direction() -> None:
    """The source defect is wider than tall (rows 5-8, columns 10-21): flips and rescales keep that, quarter turns not."""
    rng = np.random.default_rng(0)
    source, source_mask = _source(rng)
    target = np.full((SIZE, SIZE, 3), 100, np.uint8)

    def wide(rotate: bool, seed: int) -> bool:
        _, mask = paste_defect(target, source, source_mask, np.random.default_rng(seed), same_place=0.0, rotate=rotate)
        ys, xs = np.nonzero(mask)
        return bool(np.ptp(xs) > np.ptp(ys))

    assert all(wide(False, seed) for seed in range(40))
    assert not all(wide(True, seed) for seed in range(40))


@pytest.mark.parametrize("same_place", [0.0, 1.0])
def test_matched_paste_keeps_the_defect_contrast_not_its_colour(same_place: float) -> None:
    """A defect 20 grey levels above a flat 60 background, pasted into a flat 150 image, lands at 170 with ``match``
    (at 80, a stark dark patch, without it); the mask is still exactly the changed pixels."""
    source = np.full((SIZE, SIZE, 3), 60, np.uint8)
    source_mask = np.zeros((SIZE, SIZE), bool)
    source_mask[10:20, 8:30] = True
    source[source_mask] = 80
    target = np.full((SIZE, SIZE, 3), 150, np.uint8)
    for seed in range(10):
        image, mask = paste_defect(target, source, source_mask, np.random.default_rng(seed), same_place, match=True)
        assert np.array_equal((image != target).any(axis=-1), mask)
        assert np.all(image[mask] == 170)
        raw, raw_mask = paste_defect(target, source, source_mask, np.random.default_rng(seed), same_place)
        assert np.array_equal(raw_mask, mask) and np.all(raw[raw_mask] == 80)  # same draws: only the colour differs


def test_matched_paste_clips_to_the_uint8_range() -> None:
    source = np.full((SIZE, SIZE, 3), 10, np.uint8)
    source_mask = np.zeros((SIZE, SIZE), bool)
    source_mask[10:20, 10:20] = True
    source[source_mask] = 250
    image, mask = paste_defect(
        np.full((SIZE, SIZE, 3), 200, np.uint8), source, source_mask, np.random.default_rng(0), match=True
    )
    assert image.dtype == np.uint8 and np.all(image[mask] == 255)


def test_ring_mean_reads_only_the_band_around_the_mask() -> None:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[20:30, 20:30] = True
    image[mask] = 255  # inside: excluded
    image[18:32, 18:32][~mask[18:32, 18:32]] = 40  # a 2-pixel band
    image[0:5, 0:5] = 255  # far away: excluded
    assert np.allclose(ring_mean(image, mask, width=2), 40)
    assert ring_mean(image, np.ones((SIZE, SIZE), bool), width=2) is None
    with pytest.raises(ValueError, match="ring width"):
        ring_mean(image, mask, width=0)


@pytest.mark.parametrize("same_place", [0.0, 1.0])
def test_paste_with_a_margin_keeps_the_defect_exact_and_fades_its_surroundings_into_the_target(same_place: float) -> None:
    """With ``margin``, the mask has the defect's shape as without (same draws; only the place may differ), its
    pixels are still exactly the defect's; the source's background (30) fades into the target (150) over the margin:
    pixels next to the defect are close to the source's, pixels ``margin`` away and further are the target's own."""
    margin = 4
    source = np.full((SIZE, SIZE, 3), 30, np.uint8)
    source_mask = np.zeros((SIZE, SIZE), bool)
    source_mask[12:16, 10:20] = True
    source_mask[11, 12] = True  # an odd shape, so a flip shows
    source[source_mask] = 230
    target = np.full((SIZE, SIZE, 3), 150, np.uint8)

    for seed in range(10):
        image, mask = paste_defect(target, source, source_mask, np.random.default_rng(seed), same_place, margin=margin)
        assert np.all(image[mask] == 230)
        assert 0.5 < mask.sum() / source_mask.sum() < 2  # the defect, rescaled by 0.75-1.25 at most
        if same_place == 1.0:
            assert np.array_equal(mask, source_mask)
        distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
        far = distance >= 1.25 * margin + 1  # a moved defect and its margin are rescaled by up to 1.25
        assert np.array_equal(image[far], target[far])
        touching = (distance > 0) & (distance <= 1)  # the ring just outside the defect: the source's 30 dominates
        assert touching.any() and np.all(image[touching] <= 90) and image[touching].mean() < 75
        if same_place == 1.0:  # the blend weight falls linearly with the distance to the defect
            ring = (distance > 0) & (distance < margin)
            weight = 1 - distance[ring] / margin
            assert np.allclose(image[ring][:, 0], weight * 30 + (1 - weight) * 150, atol=1.5)
        between = image[(distance > 0) & (distance < margin)][:, 0].astype(int)
        assert between.min() >= 30 and between.max() <= 150  # a blend, never beyond either surface
        assert image.dtype == np.uint8


def test_paste_margin_is_checked() -> None:
    source, source_mask = _source(np.random.default_rng(0))
    with pytest.raises(ValueError, match="margin"):
        paste_defect(source, source, source_mask, np.random.default_rng(0), margin=-1)


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


def test_noise_anomaly_min_change_labels_exactly_the_visibly_changed_pixels() -> None:
    """A blend over a near-copy of the target changes little: with min_change, only pixels that moved at least that
    much are in the mask, every other pixel is the target's, and the draw stays seeded."""
    rng = np.random.default_rng(3)
    target = rng.integers(90, 110, size=(64, 64, 3), dtype=np.uint8)  # a faint texture
    faint_share = []
    for seed in range(20):
        loose_img, loose_mask = noise_anomaly(target, target, np.random.default_rng(seed))
        loose_change = np.abs(loose_img.astype(int) - target.astype(int)).max(axis=-1)
        faint_share.append((loose_change[loose_mask] < 12).mean())  # without the rule, faint pixels are labelled too
        img, mask = noise_anomaly(target, target, np.random.default_rng(seed), min_change=12)
        change = np.abs(img.astype(int) - target.astype(int)).max(axis=-1)
        assert np.array_equal(img[~mask], target[~mask])  # outside the mask: untouched
        assert (change[mask] >= 12).all()  # inside: every pixel visibly changed
        again = noise_anomaly(target, target, np.random.default_rng(seed), min_change=12)
        assert np.array_equal(again[0], img) and np.array_equal(again[1], mask)
    assert np.mean(faint_share) > 0.05  # the case is one where the rule matters


def test_noise_anomaly_window_bounds_the_blob_and_keeps_the_mask_exact() -> None:
    rng = np.random.default_rng(4)
    target = rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    texture = rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    for seed in range(20):
        img, mask = noise_anomaly(target, texture, np.random.default_rng(seed), window=(0.1, 0.2), opacity=(1.0, 1.0))
        ys, xs = np.nonzero(mask)
        assert len(ys) >= 16 and np.ptp(ys) < 0.2 * 128 and np.ptp(xs) < 0.2 * 128  # in a square of side <= 26 px
        assert np.array_equal(img[~mask], target[~mask])
    whole = [noise_anomaly(target, texture, np.random.default_rng(s))[1].sum() for s in range(20)]
    assert np.mean(whole) > 0.2**2 * 128**2  # without a window, blobs are larger than the largest window


@pytest.mark.parametrize(
    "bad",
    [
        {"synthetic_noise_window": (0.5, 0.2)},
        {"synthetic_noise_min_change": -1.0},
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


def test_region_mask_is_a_large_straight_edged_region() -> None:
    sizes = []
    for seed in range(40):
        mask = region_mask(64, 64, np.random.default_rng(seed))
        sizes.append(mask.mean())
        rows = [np.nonzero(r)[0] for r in mask if r.any()]
        assert all(len(r) == r[-1] - r[0] + 1 for r in rows)  # convex: each row of a half-plane or strip is one run
    assert 0.1 < float(np.median(sizes)) < 0.6 and max(sizes) < 0.95


def test_shift_anomaly_changes_exactly_its_region_visibly_and_is_seeded() -> None:
    target = np.random.default_rng(0).integers(80, 160, size=(48, 48, 3), dtype=np.uint8)
    for seed in range(20):
        image, mask = shift_anomaly(target, np.random.default_rng(seed))
        again, mask2 = shift_anomaly(target, np.random.default_rng(seed))
        assert np.array_equal(image, again) and np.array_equal(mask, mask2)
        assert mask.sum() >= 16
        assert np.array_equal(image[~mask], target[~mask])  # nothing outside the region moves
        moved = np.abs(image[mask].astype(int) - target[mask].astype(int)).max(axis=-1)
        assert np.median(moved) >= 12  # the region is visibly different


def test_detector_shift_fraction_makes_only_shift_anomalies() -> None:
    train, pool, masks = make_data(seed=4, n_train=6, n_pool=6)
    det = Detector(tiny_config(synthetic_pool_size=6, synthetic_shift_fraction=1.0), train, pool, masks, seed=5)
    det.refresh_profiles()
    assert det._pred_images is not None and det._pred_masks is not None
    train_set = {t.tobytes() for t in train}
    for k in range(len(pool), len(det._pred_images)):
        img, m = det._pred_images[k].permute(1, 2, 0).numpy(), det._pred_masks[k].numpy()
        # some training image equals this one outside the mask: the region was shifted in place, nothing pasted
        assert any(np.array_equal(img[~m], t[~m]) for t in train) and img.tobytes() not in train_set
        assert (img[m] < 250).all()  # no pool defect (250) was pasted: the region holds the training image, shifted
    with pytest.raises(ValueError, match="synthetic_shift_fraction"):
        tiny_config(synthetic_shift_fraction=1.5)


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


def test_detector_matched_paste_changes_only_the_defect_colour() -> None:
    """``synthetic_paste_match`` reaches paste_defect: same seed, same targets and masks, only the pasted colours move."""
    train, pool, masks = make_data(seed=4, n_train=6, n_pool=6)
    pools = {}
    for match in (False, True):
        det = Detector(
            tiny_config(synthetic_pool_size=8, synthetic_paste_fraction=1.0, synthetic_paste_match=match),
            train,
            pool,
            masks,
            seed=5,
        )
        det.refresh_profiles()
        pools[match] = (det._pred_images[len(pool) :], det._pred_masks[len(pool) :])  # type: ignore[index]
    (raw, raw_masks), (matched, matched_masks) = pools[False], pools[True]
    assert torch.equal(raw_masks, matched_masks)
    outside = ~raw_masks.bool().unsqueeze(1).expand_as(raw)  # (S, 3, H, W)
    assert torch.equal(raw[outside], matched[outside])
    assert not torch.equal(raw, matched)


def test_detector_paste_margin_reaches_paste_defect(monkeypatch: pytest.MonkeyPatch) -> None:
    """``synthetic_paste_margin`` is what every paste of the synthetic pool is made with."""
    import models.detector as detector_module

    margins = []

    def spy(*args, **kwargs):
        margins.append(kwargs["margin"])
        return paste_defect(*args, **kwargs)

    monkeypatch.setattr(detector_module, "paste_defect", spy)
    train, pool, masks = make_data(seed=4, n_train=6, n_pool=6)
    config = tiny_config(synthetic_pool_size=6, synthetic_paste_fraction=1.0, synthetic_paste_margin=3)
    Detector(config, train, pool, masks, seed=5).refresh_profiles()
    assert margins and set(margins) == {3}
    with pytest.raises(ValueError, match="synthetic_paste_margin"):
        tiny_config(synthetic_paste_margin=-2)


def test_noise_first_updates_makes_noise_anomalies_then_pastes(monkeypatch: pytest.MonkeyPatch) -> None:
    """``synthetic_noise_first_updates``: every synthetic image is a noise-mask anomaly until the predictor has made that
    many updates, then ``synthetic_paste_fraction`` (here all pastes) applies from the next renewal on."""
    import models.detector as detector_module

    made: list[str] = []

    def paste_spy(*args, **kwargs):
        made.append("paste")
        return paste_defect(*args, **kwargs)

    def noise_spy(*args, **kwargs):
        made.append("noise")
        return noise_anomaly(*args, **kwargs)

    monkeypatch.setattr(detector_module, "paste_defect", paste_spy)
    monkeypatch.setattr(detector_module, "noise_anomaly", noise_spy)
    train, pool, masks = make_data(seed=4)
    config = tiny_config(
        synthetic_pool_size=3, synthetic_paste_fraction=1.0, synthetic_refresh_updates=2, synthetic_noise_first_updates=4
    )
    det = Detector(config, train, pool, masks, seed=1)
    per_update = []
    for _ in range(8):
        before = len(made)
        det.predictor_update()
        per_update.append(set(made[before:]))
    # renewals before updates 0, 2, 4, 6: the first two while fewer than 4 updates were made, the last two after
    assert per_update == [{"noise"}, set(), {"noise"}, set(), {"paste"}, set(), {"paste"}, set()]
    with pytest.raises(ValueError, match="synthetic_noise_first_updates"):
        tiny_config(synthetic_noise_first_updates=-1)


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


def test_corrupt_patches_changes_only_weighted_pixels_and_is_seeded() -> None:
    patches = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    before = patches.clone()
    damaged, weight = corrupt_patches(patches, torch.Generator().manual_seed(1), fraction=0.5)
    assert torch.equal(patches, before)  # the input is not modified
    assert damaged.shape == patches.shape and weight.shape == (16, 1, 16, 16)
    assert 0.0 <= float(damaged.min()) and float(damaged.max()) <= 1.0
    untouched = (weight == 0).expand_as(patches)
    assert torch.equal(damaged[untouched], patches[untouched])  # nothing changes outside the blobs
    hit = weight.flatten(1).amax(1) > 0  # (16,) the damaged patches
    assert 0 < int(hit.sum()) < 16 and float(weight.max()) <= 1.0
    assert ((damaged - patches).abs().flatten(1).amax(1)[hit] > 0).all()  # every chosen patch visibly changed
    again, weight_again = corrupt_patches(patches, torch.Generator().manual_seed(1), fraction=0.5)
    assert torch.equal(again, damaged) and torch.equal(weight_again, weight)
    other, _ = corrupt_patches(patches, torch.Generator().manual_seed(2), fraction=0.5)
    assert not torch.equal(other, damaged)


def test_corrupt_patches_fraction_bounds() -> None:
    patches = torch.rand(8, 3, 16, 16)
    none, weight = corrupt_patches(patches, torch.Generator().manual_seed(0), fraction=0.0)
    assert torch.equal(none, patches) and not weight.any()
    _, weight = corrupt_patches(patches, torch.Generator().manual_seed(0), fraction=1.0)
    assert (weight.flatten(1).amax(1) > 0).all()


def test_denoising_ae_update_reads_damaged_patches_and_fits_the_clean_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.detector as detector_module

    config = tiny_config(ae_denoise_fraction=1.0, ae=AutoencoderConfig(widths=(8, 16), latent_channels=4, dropout=0.0))
    detector = Detector(config, *make_data(), seed=0)
    clean = detector.random_patches(4)  # (4, 3, 16, 16)
    damaged = torch.zeros_like(clean)
    monkeypatch.setattr(detector_module, "corrupt_patches", lambda p, g, f: (damaged, torch.ones(len(p), 1, *p.shape[2:])))
    seen = []
    detector.ae.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        detector.ae.train()
        expected = float(torch.mean((detector.ae(damaged) - clean) ** 2))
    seen.clear()
    loss = detector.ae_update(clean)
    assert len(seen) == 1 and torch.equal(seen[0], damaged)  # the AE reads the damaged patches...
    assert loss == pytest.approx(expected, rel=1e-5)  # ...and its loss is against the clean ones


def test_denoise_off_leaves_the_ae_step_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.detector as detector_module

    def refuse(*args: object) -> None:
        raise AssertionError("corrupt_patches called with ae_denoise_fraction = 0")

    monkeypatch.setattr(detector_module, "corrupt_patches", refuse)
    detector = Detector(tiny_config(), *make_data(), seed=0)  # the default: 0, no draws, the paper's AE step
    detector.ae_update(detector.random_patches(4))
    with pytest.raises(ValueError, match="ae_denoise_fraction"):
        tiny_config(ae_denoise_fraction=1.5)
