"""Tests for models.metrics: exactness against sklearn and brute force, AUPRO by hand, binned-mode bounds, input checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from models import metrics
from models.metrics import auroc_shortfall_by_image, binned_error_bounds, compute_metrics, f1_at_threshold, roc_pr_curves

VARIANTS = ["continuous", "ties", "float64", "float16", "constant"]


def random_split(
    seed: int, variant: str = "continuous", shape: tuple[int, int, int] = (4, 9, 11)
) -> tuple[np.ndarray, np.ndarray]:
    """Small maps and masks: 1-3 rectangles in all images but the last (normal), scores raised on defects."""
    rng = np.random.default_rng(seed)
    n, h, w = shape
    masks = np.zeros(shape, dtype=bool)
    for mask in masks[:-1]:
        for _ in range(int(rng.integers(1, 4))):
            y, x = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
            mask[y : y + int(rng.integers(1, 4)), x : x + int(rng.integers(1, 5))] = True
    maps = rng.random(shape) + 0.6 * masks
    if variant == "ties":
        maps = np.round(maps, 1)
    elif variant == "constant":
        maps = np.full(shape, 0.25)
    dtype = {"float64": np.float64, "float16": np.float16}.get(variant, np.float32)
    return maps.astype(dtype), masks


def brute_force_f1max(maps: np.ndarray, masks: np.ndarray) -> float:
    scores, labels = maps.ravel().astype(np.float64), masks.ravel()
    return max(2 * np.sum((scores >= t) & labels) / (np.sum(scores >= t) + labels.sum()) for t in np.unique(scores))


def brute_force_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float) -> float:
    """PRO curve over every distinct threshold with explicit per-region loops (scipy labelling, 8-connectivity)."""
    maps = maps.astype(np.float64)
    regions = []
    for i, mask in enumerate(masks):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labels == k) for k in range(1, n + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        xs.append(np.sum(predicted & normal) / normal.sum())
        ys.append(np.mean([np.sum(predicted[i] & region) / region.sum() for i, region in regions]))
    area = 0.0
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # clip the crossing segment at max_fpr
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", range(4))
def test_exact_matches_references(seed: int, variant: str) -> None:
    maps, masks = random_split(seed, variant)
    result = compute_metrics(maps, masks)
    assert list(result) == ["pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "image_auroc", "f1max_threshold"]
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-6)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-6)
    assert result["pixel_f1max"] == pytest.approx(brute_force_f1max(maps, masks), abs=1e-6)
    for max_fpr in (0.3, 0.05, 1.0):
        assert compute_metrics(maps, masks, max_fpr=max_fpr)["pixel_aupro"] == pytest.approx(
            brute_force_aupro(maps, masks, max_fpr), abs=1e-6
        )
    image_scores = maps.reshape(len(maps), -1).max(axis=1)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(masks.any(axis=(1, 2)), image_scores), abs=1e-6)


@pytest.mark.parametrize("variant", ["continuous", "ties", "float16"])
@pytest.mark.parametrize("seed", range(3))
def test_f1max_threshold_reproduces_f1max(seed: int, variant: str) -> None:
    maps, masks = random_split(seed, variant)
    result = compute_metrics(maps, masks)
    assert f1_at_threshold(maps, masks, result["f1max_threshold"]) == pytest.approx(result["pixel_f1max"], abs=1e-12)
    # The threshold is a score value: just above it F1 differs (the tie group at the threshold flips).
    assert result["f1max_threshold"] in set(maps.astype(np.float64).ravel().tolist())


def test_f1_at_threshold_matches_sklearn() -> None:
    maps, masks = random_split(1, "ties")
    for threshold in (0.3, 0.8, 1.2):
        expected = f1_score(masks.ravel(), maps.ravel() >= threshold)
        assert f1_at_threshold(maps, masks, threshold) == pytest.approx(expected, abs=1e-12)


def test_constant_map() -> None:
    maps, masks = random_split(0, "constant")
    n_pos, n = masks.sum(), masks.size
    result = compute_metrics(maps, masks)
    assert result["pixel_auroc"] == pytest.approx(0.5)
    assert result["pixel_ap"] == pytest.approx(n_pos / n)
    assert result["pixel_f1max"] == pytest.approx(2 * n_pos / (n_pos + n))  # everything predicted defective
    assert result["f1max_threshold"] == pytest.approx(0.25)
    assert result["pixel_aupro"] == pytest.approx(0.15)  # diagonal PRO curve: 0.3^2 / 2 / 0.3


def test_aupro_hand_case_with_tie() -> None:
    # One row: region A = pixel 0 (area 1), region B = pixels 2-3 (area 2), normals at 1, 4, 5. Pixel 3 ties normal 1.
    maps = np.array([[[0.9, 0.7, 0.8, 0.7, 0.5, 0.1]]])
    masks = np.array([[[True, False, True, True, False, False]]])
    # PRO curve: (0,0) (0,.5) (0,.75) (1/3,1) (2/3,1) (1,1); at FPR 0.3 PRO = 0.75 + 0.25 * 0.9 = 0.975.
    assert compute_metrics(maps, masks, max_fpr=0.3)["pixel_aupro"] == pytest.approx(0.3 * (0.75 + 0.975) / 2 / 0.3)
    assert compute_metrics(maps, masks, max_fpr=0.5)["pixel_aupro"] == pytest.approx((0.875 / 3 + 1 / 6) / 0.5)
    assert compute_metrics(maps, masks, max_fpr=1.0)["pixel_aupro"] == pytest.approx(0.875 / 3 + 2 / 3)


def test_aupro_regions_are_8_connected() -> None:
    # (0,0) touches (1,1) only diagonally: one region of area 3 (4-connectivity would give two regions and AUPRO 0.5).
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True
    maps = np.where(masks, 0.0, 0.5)
    maps[0, 0, 0] = 1.0
    assert compute_metrics(maps, masks)["pixel_aupro"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(3))
def test_perfect_and_inverse_maps(seed: int) -> None:
    _, masks = random_split(seed, shape=(5, 16, 16))
    perfect = compute_metrics(masks.astype(np.float32), masks)
    assert perfect["pixel_auroc"] == perfect["pixel_ap"] == perfect["pixel_f1max"] == perfect["image_auroc"] == 1.0
    assert perfect["pixel_aupro"] == pytest.approx(1.0)
    inverse = compute_metrics((~masks).astype(np.float32), masks)
    assert inverse["pixel_auroc"] == 0.0
    assert inverse["pixel_aupro"] == pytest.approx(0.0, abs=1e-12)


def test_image_auroc_nan_when_one_image_class(caplog: pytest.LogCaptureFixture) -> None:
    maps, masks = random_split(0)
    masks[-1, 0, 0] = True  # now every image is defective
    with caplog.at_level(logging.WARNING, logger="models.metrics"):
        result = compute_metrics(maps, masks)
    assert np.isnan(result["image_auroc"])
    assert "image_auroc is NaN" in caplog.text
    assert not any(np.isnan(v) for k, v in result.items() if k != "image_auroc")


@pytest.mark.parametrize(
    ("maps", "masks", "message"),
    [
        (np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool), "no defect pixels"),
        (np.zeros((2, 4, 4), np.float32), np.ones((2, 4, 4), bool), "no normal pixels"),
        (np.zeros((2, 4, 4), np.float32), np.ones((2, 4, 5), bool), "shapes differ"),
        (np.zeros((4, 4), np.float32), np.ones((4, 4), bool), r"\[N, H, W\]"),
        (np.zeros((2, 4, 4), np.int64), np.ones((2, 4, 4), bool), "float dtype"),
        (np.zeros((2, 4, 4), np.float32), np.ones((2, 4, 4), np.uint8), "dtype bool"),
        (np.full((2, 4, 4), np.nan, np.float32), np.eye(4, dtype=bool)[None].repeat(2, 0), "NaN"),
        ([[[0.0]]], np.ones((1, 1, 1), bool), "numpy arrays"),
    ],
)
def test_invalid_inputs_raise(maps: np.ndarray, masks: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(maps, masks)


def test_invalid_options_raise() -> None:
    maps, masks = random_split(0)
    with pytest.raises(ValueError, match="max_fpr"):
        compute_metrics(maps, masks, max_fpr=0.0)
    with pytest.raises(ValueError, match="num_bins"):
        compute_metrics(maps, masks, num_bins=0)
    with pytest.raises(ValueError, match="no defect pixels"):
        f1_at_threshold(maps, np.zeros_like(masks), 0.5)
    with pytest.raises(ValueError, match="max_points"):
        roc_pr_curves(maps, masks, max_points=1)


@pytest.mark.parametrize("seed", range(3))
def test_binned_within_stated_bounds(seed: int) -> None:
    maps, masks = random_split(seed, shape=(20, 32, 32))
    exact = compute_metrics(maps, masks)
    binned = compute_metrics(maps, masks, num_bins=200)
    bounds = binned_error_bounds(maps, masks, num_bins=200)
    assert bounds["pixel_auroc"] < 0.01  # the check below must not be vacuous
    for key, bound in bounds.items():
        assert abs(binned[key] - exact[key]) <= bound + 1e-12, key
    assert binned["pixel_f1max"] <= exact["pixel_f1max"] + 1e-12
    assert binned["pixel_ap"] != exact["pixel_ap"]  # binning really merged scores
    # The binned threshold is a bin edge that reproduces the binned F1 exactly.
    assert f1_at_threshold(maps, masks, binned["f1max_threshold"]) == pytest.approx(binned["pixel_f1max"], abs=1e-12)


def test_binned_equals_exact_when_bins_separate_values() -> None:
    maps, masks = random_split(2, "ties", shape=(10, 16, 16))  # values on a 0.1 grid, bins 100x finer
    exact, binned = compute_metrics(maps, masks), compute_metrics(maps, masks, num_bins=2000)
    for key in ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro"):
        assert binned[key] == pytest.approx(exact[key], abs=1e-9), key


def test_automatic_binning_above_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    maps, masks = random_split(0, shape=(10, 16, 16))
    monkeypatch.setattr(metrics, "EXACT_MAX_PIXELS", 100)
    monkeypatch.setattr(metrics, "AUTO_NUM_BINS", 50)
    assert compute_metrics(maps, masks) == compute_metrics(maps, masks, num_bins=50)
    assert compute_metrics(maps, masks) != compute_metrics(maps, masks, num_bins=5000)


def test_roc_pr_curves() -> None:
    maps, masks = random_split(0, shape=(20, 32, 32))
    full = roc_pr_curves(maps, masks, max_points=10**6)
    assert np.sum(np.diff(full["fpr"]) * (full["tpr"][1:] + full["tpr"][:-1]) / 2) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9
    )
    small = roc_pr_curves(maps, masks, max_points=50)
    assert all(1 < small[k].size <= 50 for k in small)
    assert small["fpr"].size == small["tpr"].size and small["recall"].size == small["precision"].size
    for key in ("fpr", "tpr", "recall"):
        assert np.all(np.diff(small[key]) >= 0), key
    assert (small["fpr"][0], small["tpr"][0], small["fpr"][-1], small["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (small["recall"][0], small["precision"][0], small["recall"][-1]) == (0.0, 1.0, 1.0)
    assert small["precision"][-1] == pytest.approx(masks.mean())
    assert np.sum(np.diff(small["fpr"]) * (small["tpr"][1:] + small["tpr"][:-1]) / 2) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=0.01
    )


def test_f1max_threshold_is_highest_among_equal_f1() -> None:
    # Threshold 0.9: TP=1, FP=0 -> F1 = 2/3; threshold 0.7: TP=2, FP=2 -> F1 = 4/6 = 2/3 too.
    maps = np.array([[[0.9, 0.8, 0.75, 0.7, 0.1, 0.1]]])
    masks = np.array([[[True, False, False, True, False, False]]])
    result = compute_metrics(maps, masks)
    assert result["pixel_f1max"] == pytest.approx(2 / 3)
    assert result["f1max_threshold"] == 0.9


def test_bin_index_agrees_with_edges_exactly() -> None:
    # Scores on a decimal grid hit linspace edges, where (x - lo) * scale rounds to the wrong bin without correction.
    x = np.r_[np.linspace(0.0, 1.0, 1001), np.random.default_rng(0).random(1000)]
    for edges in (np.linspace(0.0, 1.0, 11), np.linspace(0.0, 1.0, 101), np.array([0.0, 0.3, 0.3, 0.3, 1.0])):
        idx = metrics._bin_index(x, edges)
        for b in range(edges.size - 1):
            np.testing.assert_array_equal(x >= edges[b], idx >= b)


def test_binned_bounds_are_tight_on_adversarial_input() -> None:
    # Four bins on [0, 1]; inside every bin the defect pixels score above the normal ones, which binning turns into ties.
    neg = [0.0, 0.05, 0.05, 0.3, 0.3, 0.3, 0.55, 0.8, 0.8, 0.8, 0.8]
    pos = [0.1, 0.35, 0.6, 0.6, 0.85, 1.0]
    maps = np.array(neg + pos)[None, None]  # (1, 1, 17)
    masks = np.array([False] * len(neg) + [True] * len(pos))[None, None]
    exact, binned = compute_metrics(maps, masks), compute_metrics(maps, masks, num_bins=4)
    bounds = binned_error_bounds(maps, masks, num_bins=4)
    errors = {key: abs(binned[key] - exact[key]) for key in bounds}
    assert errors["pixel_auroc"] == pytest.approx(bounds["pixel_auroc"])  # attained: every within-bin pair was ordered
    assert errors["pixel_f1max"] == pytest.approx(bounds["pixel_f1max"])
    for key in ("pixel_ap", "pixel_aupro"):
        assert 0.4 * bounds[key] <= errors[key] <= bounds[key], key


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("variant", ["continuous", "ties", "float16"])
def test_auroc_shortfall_splits_one_minus_auroc_over_images(seed: int, variant: str) -> None:
    maps, masks = random_split(seed, variant)
    missed, false_alarms = auroc_shortfall_by_image(maps, masks)
    shortfall = 1.0 - roc_auc_score(masks.ravel(), maps.ravel().astype(np.float64))
    assert missed.shape == false_alarms.shape == (len(maps),)
    assert missed.sum() == pytest.approx(shortfall, abs=1e-12) and false_alarms.sum() == pytest.approx(shortfall, abs=1e-12)
    assert (missed >= 0).all() and (false_alarms >= 0).all()
    assert missed[-1] == 0.0  # the last image has no defect pixel, so it misses none


def test_auroc_shortfall_names_the_image_that_costs() -> None:
    maps, masks = random_split(0)
    maps[masks] += 10.0  # every defect found...
    maps[1][masks[1]] -= 20.0  # ...but image 1's, which now score below every normal pixel
    missed, false_alarms = auroc_shortfall_by_image(maps, masks)
    share = masks[1].sum() / masks.sum()  # each of image 1's defect pixels costs 1 / P
    assert missed[1] == pytest.approx(share) and np.delete(missed, 1).sum() == 0.0
    # every normal pixel outranks image 1's defects: the false alarms spread over the normal pixels, image by image
    normal = (~masks).reshape(len(masks), -1).sum(1)
    np.testing.assert_allclose(false_alarms, share * normal / normal.sum())
