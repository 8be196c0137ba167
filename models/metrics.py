"""Pixel- and image-level anomaly-detection metrics (MVTec AD protocol): AUROC, AP, F1max, AUPRO, image AUROC.

All pixel metrics pool every pixel of every image of a split (~10^7 pixels for an MVTec test split). sklearn's curves argsort
all of them (seconds, plus several float64/int64 arrays of that length), so this module builds the curves itself, from one
table of *levels*: groups of pixels that flip to "predicted defective" together as the threshold decreases.

Exact mode (the default up to ``EXACT_MAX_PIXELS`` pixels). Normal pixels are only *sorted* (``np.sort``, ~10x faster than
``argsort``); the few defect pixels are argsorted. Every distinct defect score is one level (ties flip together), and the
normal pixels between two consecutive distinct defect scores form one level each: merging normal-only thresholds drops only
collinear points of the ROC and PRO curves, never changes AP (recall does not move) and never holds the F1 maximum (more false
positives at the same true positives). The metrics therefore equal those computed over every distinct score value, i.e.
sklearn's ``roc_auc_score`` / ``average_precision_score`` and a brute-force F1max, up to float rounding.

Binned mode (``num_bins`` given, or automatically above ``EXACT_MAX_PIXELS`` pixels with ``AUTO_NUM_BINS`` bins). Scores are
histogrammed over ``num_bins`` equal-width bins on [min, max], image by image (memory beyond the inputs: a few arrays of
``num_bins`` and of one image). This equals exact mode on scores replaced by their bin's lower edge: binning only creates
ties within a bin. Bin edges lie on every exact curve, so with ``pos_b``/``neg_b`` the defect/normal pixels of bin b,
``P``/``N`` their totals and ``K_b`` the pixels in bins above b, ``|binned - exact|`` is at most:

- pixel AUROC: ``0.5 * sum_b pos_b * neg_b / (P * N)`` (pairs sharing a bin count as ties);
- pixel AP: ``sum_b pos_b * min(1, (pos_b + neg_b - 1) / (K_b + 1)) / P``;
- pixel F1max (binned <= exact): ``max_b 2 * TP_b / (K_b + pos_b + P) - F1max_binned``, ``TP_b`` the defect pixels in bins
  >= b;
- AUPRO: ``sum_b dFPR_b * dPRO_b / max_fpr`` over the bins whose FPR starts below ``max_fpr``.

``binned_error_bounds`` returns these figures and compute_metrics logs them in binned mode.

AUPRO follows MVTec AD / anomalib: regions are the 8-connected components of each ground-truth mask, FPR is over all normal
pixels of the split, PRO is the mean over all regions of (region pixels predicted defective / region area); the PRO-vs-FPR
curve (linear between thresholds) is integrated from 0 to ``max_fpr``, cut at exactly ``max_fpr`` and divided by it.
Because PRO is linear in the pixels, it is a weighted cumulative count (defect pixel weight = 1 / area of its region / number
of regions) and comes from the same level table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

logger = logging.getLogger(__name__)

EXACT_MAX_PIXELS = 50_000_000  # above this many pixels compute_metrics bins scores unless num_bins is given
AUTO_NUM_BINS = 10_000  # bins used when binning is switched on automatically
_BOUND_WARNING = 1e-3  # automatic binning warns when an error bound exceeds this

METRIC_KEYS = ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "image_auroc", "f1max_threshold")


@dataclass(frozen=True)
class _Levels:
    """Pixel groups in decreasing score order; a threshold at level k predicts levels 0..k defective."""

    thresholds: np.ndarray  # (K,) float64 lowest score in the level: predicted defective iff score >= threshold
    pos: np.ndarray  # (K,) int64 defect pixels in the level
    neg: np.ndarray  # (K,) int64 normal pixels in the level
    pro: np.ndarray  # (K,) float64 sum over the level's defect pixels of 1 / area of their region
    n_regions: int  # connected defect regions in the split


def _validate(anomaly_maps: np.ndarray, masks: np.ndarray, need_normal: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Check inputs; return the maps as float32/float64 (float16 is widened, longer floats narrowed) and the masks."""
    if not isinstance(anomaly_maps, np.ndarray) or not isinstance(masks, np.ndarray):
        raise ValueError(
            f"anomaly_maps and masks must be numpy arrays, got {type(anomaly_maps).__name__} and {type(masks).__name__} "
            "(for torch tensors use .cpu().numpy())"
        )
    if not np.issubdtype(anomaly_maps.dtype, np.floating):
        raise ValueError(f"anomaly_maps must have a float dtype (float16, float32 or float64), got {anomaly_maps.dtype}")
    if masks.dtype != np.bool_:
        raise ValueError(f"masks must have dtype bool, got {masks.dtype} (e.g. pass masks > 0)")
    if anomaly_maps.ndim != 3 or masks.ndim != 3:
        raise ValueError(f"anomaly_maps and masks must be [N, H, W], got shapes {anomaly_maps.shape} and {masks.shape}")
    if anomaly_maps.shape != masks.shape:
        raise ValueError(f"anomaly_maps and masks shapes differ: {anomaly_maps.shape} vs {masks.shape}")
    if anomaly_maps.size == 0:
        raise ValueError(f"anomaly_maps is empty: shape {anomaly_maps.shape}")
    if not np.isfinite(anomaly_maps).all():
        raise ValueError("anomaly_maps contains NaN or infinite values")
    n_pos = int(np.count_nonzero(masks))
    if n_pos == 0:
        raise ValueError("masks contain no defect pixels: pixel metrics are undefined on a split without defects")
    if need_normal and n_pos == masks.size:
        raise ValueError("masks contain no normal pixels: AUROC, AP and AUPRO need both defect and normal pixels")
    if anomaly_maps.dtype.itemsize < 4:
        anomaly_maps = anomaly_maps.astype(np.float32)
    elif anomaly_maps.dtype.itemsize > 8:
        anomaly_maps = anomaly_maps.astype(np.float64)
    return anomaly_maps, masks


def _region_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """1 / area of the 8-connected region of each defect pixel of one (H, W) mask (row-major order), and the region count."""
    n_labels, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)  # labels (H, W) int32, 0 = background
    areas = np.bincount(labels.ravel(), minlength=n_labels).astype(np.float64)  # (n_labels,)
    areas[0] = np.inf  # background never indexed through mask, keeps the division finite
    return (1.0 / areas)[labels[mask]], n_labels - 1


def _exact_levels(maps: np.ndarray, masks: np.ndarray) -> _Levels:
    """One level per distinct defect score, plus one per run of normal pixels between two of them."""
    flat_maps, flat_masks = maps.reshape(-1), masks.reshape(-1)
    neg = flat_maps[~flat_masks]  # (N,) normal scores
    neg.sort()  # ascending, in place: np.sort is far cheaper than argsort over ~10^7 pixels
    pos = flat_maps[flat_masks]  # (P,) defect scores, row-major over images like the weights below
    per_image = [_region_weights(m) for m in masks]
    weights = np.concatenate([w for w, _ in per_image])  # (P,)
    n_regions = sum(r for _, r in per_image)

    order = np.argsort(pos)[::-1]  # descending; grouping by value below makes ties flip together
    pos_sorted, w_sorted = pos[order], weights[order]
    starts = np.flatnonzero(np.r_[True, pos_sorted[1:] != pos_sorted[:-1]])  # (U,) first index of each distinct value
    values = pos_sorted[starts]  # (U,) distinct defect scores, descending
    pos_count = np.diff(np.r_[starts, pos_sorted.size])
    pro_sum = np.add.reduceat(w_sorted, starts)
    n_neg = neg.size
    neg_ge = n_neg - np.searchsorted(neg, values, side="left")  # (U,) normals scoring >= value
    neg_gt = n_neg - np.searchsorted(neg, values, side="right")  # (U,) normals scoring > value

    # Slots 2k+1: the pixels scoring exactly values[k]. Slots 2k: normals strictly between values[k] and values[k-1]
    # (slot 0: above values[0]; slot 2U: below values[-1]); their threshold is their lowest score.
    n_slots = 2 * values.size + 1
    thresholds = np.zeros(n_slots, dtype=np.float64)
    pos_lv = np.zeros(n_slots, dtype=np.int64)
    neg_lv = np.zeros(n_slots, dtype=np.int64)
    pro_lv = np.zeros(n_slots, dtype=np.float64)
    thresholds[1::2], pos_lv[1::2], neg_lv[1::2], pro_lv[1::2] = values, pos_count, neg_ge - neg_gt, pro_sum
    below = np.r_[neg_gt, n_neg]  # (U+1,) normals counted once slot 2k is included
    neg_lv[0::2] = below - np.r_[0, neg_ge]
    if n_neg:
        thresholds[0::2] = neg[np.minimum(n_neg - below, n_neg - 1)]
    keep = (pos_lv + neg_lv) > 0
    return _Levels(thresholds[keep], pos_lv[keep], neg_lv[keep], pro_lv[keep], n_regions)


def _bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin b of each score such that ``x >= edges[b]`` iff ``bin >= b`` (last bin closed), exactly, despite rounding."""
    n_bins = edges.size - 1
    span = edges[-1] - edges[0]
    scale = n_bins / span if span > 0 else 0.0
    idx = ((x - edges[0]) * scale).astype(np.int64)  # float64 arithmetic, may be one bin off at an edge
    np.clip(idx, 0, n_bins - 1, out=idx)
    upper = np.r_[edges[1:n_bins], np.inf]  # (n_bins,) exclusive upper edge, +inf for the last bin
    wrong = (x < edges[idx]) | (x >= upper[idx])
    if wrong.any():
        idx[wrong] = np.clip(np.searchsorted(edges, x[wrong], side="right") - 1, 0, n_bins - 1)
    return idx


def _binned_levels(maps: np.ndarray, masks: np.ndarray, num_bins: int) -> _Levels:
    """One level per non-empty bin of ``num_bins`` equal-width bins over [min, max], histogrammed image by image."""
    edges = np.linspace(float(maps.min()), float(maps.max()), num_bins + 1)  # (num_bins+1,) float64
    pos_hist = np.zeros(num_bins, dtype=np.int64)
    neg_hist = np.zeros(num_bins, dtype=np.int64)
    pro_hist = np.zeros(num_bins, dtype=np.float64)
    n_regions = 0
    for image, mask in zip(maps, masks):  # (H, W) each: bounded extra memory
        idx = _bin_index(image.ravel(), edges)  # (H*W,)
        flat_mask = mask.ravel()
        weights, regions = _region_weights(mask)
        n_regions += regions
        pos_hist += np.bincount(idx[flat_mask], minlength=num_bins)
        neg_hist += np.bincount(idx[~flat_mask], minlength=num_bins)
        pro_hist += np.bincount(idx[flat_mask], weights=weights, minlength=num_bins)
    keep = (pos_hist + neg_hist)[::-1] > 0
    return _Levels(edges[:-1][::-1][keep], pos_hist[::-1][keep], neg_hist[::-1][keep], pro_hist[::-1][keep], n_regions)


def _levels(maps: np.ndarray, masks: np.ndarray, num_bins: int | None) -> tuple[_Levels, bool]:
    """Exact or binned levels following the num_bins / EXACT_MAX_PIXELS rule; also says whether binned."""
    if num_bins is not None:
        if isinstance(num_bins, bool) or not isinstance(num_bins, int | np.integer) or num_bins < 1:
            raise ValueError(f"num_bins must be None (exact up to {EXACT_MAX_PIXELS} pixels) or an int >= 1, got {num_bins!r}")
        return _binned_levels(maps, masks, int(num_bins)), True
    if maps.size > EXACT_MAX_PIXELS:
        logger.info("%d pixels > EXACT_MAX_PIXELS=%d: binning scores into %d bins", maps.size, EXACT_MAX_PIXELS, AUTO_NUM_BINS)
        return _binned_levels(maps, masks, AUTO_NUM_BINS), True
    return _exact_levels(maps, masks), False


def _cumulative(lv: _Levels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative TP, FP and PRO after each level, with a leading point where nothing is predicted defective."""
    tp = np.r_[0, np.cumsum(lv.pos)]  # (K+1,)
    fp = np.r_[0, np.cumsum(lv.neg)]  # (K+1,)
    pro = np.minimum(np.r_[0.0, np.cumsum(lv.pro)] / lv.n_regions, 1.0)  # (K+1,) clip float rounding above 1
    return tp, fp, pro


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _partial_area(x: np.ndarray, y: np.ndarray, max_x: float) -> float:
    """Area under the piecewise-linear curve (x non-decreasing, x[0] = 0) from 0 to max_x, cut at exactly max_x."""
    i = int(np.searchsorted(x, max_x, side="right"))  # x[:i] <= max_x
    if i < x.size:  # interpolate on the segment that crosses max_x (x[i-1] <= max_x < x[i])
        y_cut = y[i - 1] + (y[i] - y[i - 1]) * (max_x - x[i - 1]) / (x[i] - x[i - 1])
        x, y = np.r_[x[:i], max_x], np.r_[y[:i], y_cut]
    return _trapezoid(x, y)


def _pixel_metrics(lv: _Levels, max_fpr: float) -> dict[str, float]:
    tp, fp, pro = _cumulative(lv)
    n_pos, n_neg = int(tp[-1]), int(fp[-1])
    tpr, fpr = tp / n_pos, fp / n_neg
    precision = tp[1:] / (tp[1:] + fp[1:])  # (K,) every level holds at least one pixel
    f1 = 2.0 * tp[1:] / (tp[1:] + fp[1:] + n_pos)  # (K,) 2PR/(P+R) = 2TP/(2TP+FP+FN)
    best = int(np.argmax(f1))  # first maximum: the highest threshold among equals
    return {
        "pixel_auroc": _trapezoid(fpr, tpr),
        "pixel_f1max": float(f1[best]),
        "pixel_ap": float(np.sum(np.diff(tp) * precision) / n_pos),  # sum_n (R_n - R_{n-1}) P_n, as sklearn
        "pixel_aupro": _partial_area(fpr, pro, max_fpr) / max_fpr,
        "f1max_threshold": float(lv.thresholds[best]),
    }


def _error_bounds(lv: _Levels, max_fpr: float, f1max: float) -> dict[str, float]:
    """Bounds on |binned - exact| for levels that are bins (see the module docstring)."""
    tp, fp, pro = _cumulative(lv)
    n_pos, n_neg = int(tp[-1]), int(fp[-1])
    above = (tp + fp)[:-1]  # (K,) pixels in higher bins
    count = lv.pos + lv.neg  # (K,)
    fpr = fp / n_neg
    cut = fpr[:-1] < max_fpr  # (K,) bins whose FPR range starts below max_fpr
    return {
        "pixel_auroc": float(0.5 * np.sum(lv.pos * lv.neg) / (n_pos * n_neg)),
        "pixel_ap": float(np.sum(lv.pos * np.minimum(1.0, (count - 1) / (above + 1))) / n_pos),
        "pixel_f1max": max(0.0, float(np.max(2.0 * tp[1:] / (above + lv.pos + n_pos))) - f1max),
        "pixel_aupro": float(np.sum((np.diff(fpr) * np.diff(pro))[cut]) / max_fpr),
    }


def _check_max_fpr(max_fpr: float) -> None:
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")


def compute_metrics(
    anomaly_maps: np.ndarray,
    masks: np.ndarray,
    *,
    max_fpr: float = 0.3,
    num_bins: int | None = None,
    image_labels: np.ndarray | None = None,
) -> dict[str, float]:
    """Pooled pixel AUROC / F1max / AP / AUPRO and image AUROC of a split.

    Exact up to ``EXACT_MAX_PIXELS`` pixels (an MVTec test split of 150 x 256 x 256 takes about a second); binned above it
    or when ``num_bins`` is given, within the bounds stated in the module docstring (logged; see ``binned_error_bounds``).

    Args:
        anomaly_maps: (N, H, W) float scores, higher = more anomalous.
        masks: (N, H, W) bool ground truth, True = defect pixel. Must hold at least one defect and one normal pixel.
        max_fpr: AUPRO integrates PRO over FPR in [0, max_fpr] and divides by max_fpr, so it lies in [0, 1].
        num_bins: bin the scores into this many equal-width bins instead of sorting them.
        image_labels: (N,) bool, True = defective image, for ``image_auroc``; take them from the image's folder (a thin
            defect can lose every mask pixel on resize). None: an image is defective iff its mask has a defect pixel.

    Returns:
        ``pixel_auroc``, ``pixel_f1max``, ``pixel_ap``, ``pixel_aupro``, ``image_auroc`` (image score = max of its map,
        label = ``image_labels``, or any defect pixel; NaN, with a warning, when all images have the same label) and
        ``f1max_threshold`` (predict defect iff score >= it to reach F1max; the highest such threshold).
    """
    _check_max_fpr(max_fpr)
    maps, masks = _validate(anomaly_maps, masks)
    lv, binned = _levels(maps, masks, num_bins)
    result = _pixel_metrics(lv, max_fpr)
    if binned:
        bounds = _error_bounds(lv, max_fpr, result["pixel_f1max"])
        # Warn only when binning was not asked for: a caller who set num_bins chose the trade-off.
        level = logging.WARNING if num_bins is None and max(bounds.values()) > _BOUND_WARNING else logging.INFO
        logger.log(level, "binned metrics (%d non-empty bins), bounds on |binned - exact|: %s", lv.pos.size, bounds)

    image_scores = maps.reshape(maps.shape[0], -1).max(axis=1)  # (N,)
    if image_labels is None:
        labels = masks.reshape(masks.shape[0], -1).any(axis=1)  # (N,)
    elif np.shape(image_labels) != (maps.shape[0],):
        raise ValueError(f"image_labels must have shape ({maps.shape[0]},), got {np.shape(image_labels)}")
    else:
        labels = np.asarray(image_labels, dtype=bool)
    n_defective = int(np.count_nonzero(labels))
    if n_defective in (0, labels.size):  # roc_auc_score would raise; the pixel metrics are still valid
        logger.warning("image_auroc is NaN: all %d images are %s", labels.size, "defective" if n_defective else "normal")
        result["image_auroc"] = float("nan")
    else:
        result["image_auroc"] = float(roc_auc_score(labels, image_scores))
    return {key: result[key] for key in METRIC_KEYS}


def auroc_shortfall_by_image(anomaly_maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's share of the pooled pixel AUROC's shortfall, 1 - AUROC: which images cost the pooled figure.

    Pooled pixel AUROC is the chance that a random defect pixel outscores a random normal pixel (ties count half), so its
    shortfall splits exactly over the defect pixels, each costing the share of normal pixels that score at least as high
    (ties half), divided by the defect pixels' count P; and, read the other way, over the normal pixels, each costing the
    share of defect pixels that score at most as high (ties half), divided by the normal pixels' count N. Summed per
    image, the first says where the missed defects are, the second where the false alarms are. Exact (sorted scores).

    Args:
        anomaly_maps: (N, H, W) float scores, higher = more anomalous.
        masks: (N, H, W) bool ground truth, True = defect pixel; at least one defect and one normal pixel.

    Returns:
        ``(missed, false_alarms)``: float64 (N,) each, and each sums to 1 - pixel AUROC (up to float rounding).
    """
    maps, masks = _validate(anomaly_maps, masks)
    flat, defect = maps.reshape(len(maps), -1), masks.reshape(len(masks), -1)  # (N, H*W)
    normal_sorted = np.sort(flat[~defect]).astype(np.float64)  # (N_normal,)
    defect_sorted = np.sort(flat[defect]).astype(np.float64)  # (P,)
    n_normal, n_defect = normal_sorted.size, defect_sorted.size
    missed, false_alarms = np.zeros(len(maps)), np.zeros(len(maps))
    for i, (scores, is_defect) in enumerate(zip(flat, defect)):
        s = scores.astype(np.float64)
        if is_defect.any():  # normal pixels >= each defect pixel, ties half
            v = np.sort(s[is_defect])  # sorted queries search faster
            below = np.searchsorted(normal_sorted, v, "left") + np.searchsorted(normal_sorted, v, "right")  # 2x (< + ties/2)
            missed[i] = np.sum(1.0 - below / (2.0 * n_normal)) / n_defect
        if not is_defect.all():  # defect pixels <= each normal pixel, ties half
            v = np.sort(s[~is_defect])
            below = np.searchsorted(defect_sorted, v, "left") + np.searchsorted(defect_sorted, v, "right")
            false_alarms[i] = np.sum(below / (2.0 * n_defect)) / n_normal
    return missed, false_alarms


def binned_error_bounds(
    anomaly_maps: np.ndarray, masks: np.ndarray, *, max_fpr: float = 0.3, num_bins: int = AUTO_NUM_BINS
) -> dict[str, float]:
    """Upper bounds on |binned - exact| for the pixel metrics of ``compute_metrics(..., num_bins=num_bins)``.

    Args:
        anomaly_maps: (N, H, W) float scores.
        masks: (N, H, W) bool ground truth.
        max_fpr: as in compute_metrics.
        num_bins: number of equal-width bins.

    Returns:
        ``pixel_auroc``, ``pixel_ap``, ``pixel_f1max``, ``pixel_aupro`` bounds (formulas in the module docstring).
    """
    _check_max_fpr(max_fpr)
    maps, masks = _validate(anomaly_maps, masks)
    lv, _ = _levels(maps, masks, num_bins)
    return _error_bounds(lv, max_fpr, _pixel_metrics(lv, max_fpr)["pixel_f1max"])


def f1_at_threshold(anomaly_maps: np.ndarray, masks: np.ndarray, threshold: float) -> float:
    """Pooled pixel F1 when predicting defect iff score >= threshold (compared in float64).

    Args:
        anomaly_maps: (N, H, W) float scores.
        masks: (N, H, W) bool ground truth with at least one defect pixel.
        threshold: decision threshold, e.g. ``f1max_threshold`` picked on a validation split.

    Returns:
        2TP / (2TP + FP + FN).
    """
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    maps, masks = _validate(anomaly_maps, masks, need_normal=False)
    predicted = maps >= np.float64(threshold)  # (N, H, W); a float64 scalar makes numpy compare in float64
    tp = np.count_nonzero(predicted & masks)
    return float(2 * tp / (np.count_nonzero(predicted) + np.count_nonzero(masks)))


def _downsample(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most max_points points, evenly spaced along the curve's length (L1), first and last included."""
    if x.size <= max_points:
        return x, y
    length = np.r_[0.0, np.cumsum(np.abs(np.diff(x)) + np.abs(np.diff(y)))]  # (n,)
    if length[-1] > 0:
        idx = np.searchsorted(length, np.linspace(0.0, length[-1], max_points - 1))
    else:
        idx = np.linspace(0, x.size - 1, max_points - 1).astype(np.int64)
    idx = np.unique(np.r_[np.minimum(idx, x.size - 1), x.size - 1])
    return x[idx], y[idx]


def roc_pr_curves(
    anomaly_maps: np.ndarray, masks: np.ndarray, max_points: int = 2000, *, num_bins: int | None = None
) -> dict[str, np.ndarray]:
    """Pooled pixel ROC and PR curves for plotting, downsampled to at most ``max_points`` points each.

    Args:
        anomaly_maps: (N, H, W) float scores.
        masks: (N, H, W) bool ground truth with defect and normal pixels.
        max_points: points kept per curve (>= 2), spaced evenly along the curve.
        num_bins: as in compute_metrics.

    Returns:
        ``fpr``, ``tpr`` (from (0, 0) to (1, 1)) and ``recall``, ``precision`` (from (0, 1), sklearn's convention, to
        recall 1), float64 arrays ordered by decreasing threshold.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    maps, masks = _validate(anomaly_maps, masks)
    lv, _ = _levels(maps, masks, num_bins)
    tp, fp, _ = _cumulative(lv)
    fpr, tpr = _downsample(fp / fp[-1], tp / tp[-1], max_points)
    recall = np.r_[0.0, tp[1:] / tp[-1]]
    precision = np.r_[1.0, tp[1:] / (tp[1:] + fp[1:])]
    recall, precision = _downsample(recall, precision, max_points)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}
