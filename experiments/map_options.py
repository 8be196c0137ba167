"""Inference-only map options on trained runs: Gaussian smoothing sigma, the predictor's flip test-time augmentation,
late fusion with the global residual, morphological closing and a second, smaller scale.

    python -m experiments.map_options --runs runs/compare/cells/*/default/seed*/logs/reinforce/MVTecPatch-v0_1

These options change only how a trained detector's maps are made (``map_smoothing_sigma``, and the test-time
augmentation ``map_predictor_flips``), so they can be compared on finished runs without training again: each run's best
detector is loaded as ``evaluate.py`` does, its raw maps of the validation and test splits are computed with each
augmentation (none; "flips4": the predictor on its input's four flips), and smoothed with each ``--sigmas``. Prints a
Markdown table per split of the mean pixel AUROC / F1max / AP / AUPRO over the runs of each category; choose on the
validation split (the checkpoint was chosen there with the run's own options, so the gain of a full run with the new
options can differ a little). A last table chooses sigma per run on its validation split (``--choose-by``) and scores
the test split with it. ``--log`` appends one JSON line per run, split and option.

``--global-weights`` adds late fusion with the global residual before smoothing, as ``map_global_weight`` does in
training (:class:`models.global_residual.GlobalResidual`, a PCA of whole normal images fitted on 90% of the run's
training images; the other 10% set its scale). 0 (the default) is the run's own map.

``--closings`` closes each (fused) map with a disc of that many pixels before smoothing
(:func:`models.detector.close_maps`): it raises the low inside of a region whose edges are lit. 0 (the default): none.

``--scales`` averages each raw map with the map of the same image resized by that factor (:func:`scaled_maps`: the
whole detector, AE and predictor, on the smaller image, its map resized back), before fusion: the detector sees twice
the context at 0.5, at coarser detail. 1 (the default): the run's own map alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from evaluate import load_run
from models.detector import Detector, close_maps, fuse_global, smooth_maps
from models.metrics import compute_metrics

KEYS = ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro")
TTA = {"none": False, "flips4": True}  # map_predictor_flips
SCALE_MULTIPLE = 16  # a resized image's sides are rounded to a multiple of this: the AE's and predictor's strides divide it


def scaled_maps(detector: Detector, images: np.ndarray, scale: float) -> np.ndarray:
    """The detector's maps of the images resized by ``scale`` (area interpolation), resized back (bilinear).

    uint8 (N, H, W, 3) -> float32 (N, H, W); each side becomes the nearest multiple of ``SCALE_MULTIPLE`` (at least one)."""
    H, W = images.shape[1:3]
    h, w = (max(SCALE_MULTIPLE, SCALE_MULTIPLE * round(side * scale / SCALE_MULTIPLE)) for side in (H, W))
    small = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in images])  # (N, h, w, 3)
    maps = detector.anomaly_map(small)  # (N, h, w)
    return np.stack([cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR) for m in maps]).astype(np.float32)


def run_rows(
    run: Path,
    sigmas: list[float],
    ttas: list[str] | None = None,
    weights: tuple[float, ...] = (0.0,),
    pca_size: int = 64,
    pca_components: int = 256,
    closings: tuple[int, ...] = (0,),
    scales: tuple[float, ...] = (1.0,),
) -> list[dict]:
    """One row per (split, TTA, scale, global weight, closing, sigma) for one run: the metrics of its best detector's
    maps."""
    _, data, split, detector = load_run(run)
    if not isinstance(detector, Detector):
        raise ValueError(f"'{run}' is a {type(detector).__name__} run: map options apply to the method's detector")
    # raw maps here (no smoothing, no fusion: a run of the default preset fuses its own); each weight and sigma below
    detector.config.map_smoothing_sigma, detector.config.map_global_weight = 0.0, 0.0
    pca = detector.global_residual
    if any(weights) and (pca is None or (pca.size, pca.components) != (pca_size, pca_components)):
        # a run without the PCA, or another PCA asked for: fitted here on the run's training images, as a run would
        detector.global_residual = None
        detector.config.global_size, detector.config.global_components = pca_size, pca_components
    rows = []
    for part in ("val", "test"):
        index = getattr(split, part)
        images, masks = data.images[index], data.masks[index]  # (N, H, W, 3) uint8, (N, H, W) bool
        labels = np.array([data.samples[i].is_anomalous for i in index])
        for tta, flips in TTA.items():
            if ttas is not None and tta not in ttas:
                continue
            detector.config.map_predictor_flips = flips
            own = detector.anomaly_map(images)  # (N, H, W)
            glob = torch.from_numpy(detector.global_map(images)) if any(weights) else None  # (N, H, W)
            for scale in scales:
                raw = own if scale == 1 else 0.5 * (own + scaled_maps(detector, images, scale))
                for w in weights:
                    fused = raw if not w or glob is None else fuse_global(torch.from_numpy(raw), glob, w).numpy()
                    for size in closings:
                        closed = close_maps(fused, size)
                        for sigma in sigmas:
                            metrics = compute_metrics(smooth_maps(closed, sigma), masks, image_labels=labels)
                            option = {"tta": tta, "scale": scale, "global": w, "closing": size, "sigma": sigma}
                            rows.append(
                                {"run": str(run), "category": data.name, "split": part}
                                | option
                                | {"global_size": pca_size if glob is not None else None}
                                | {k: round(float(metrics[k]), 4) for k in KEYS}
                            )
    return rows


def _option(row: dict) -> tuple:
    return row["tta"], row.get("scale", 1.0), row["global"], row.get("closing", 0), row["sigma"]


def table(rows: list[dict], part: str) -> str:
    categories = sorted({r["category"] for r in rows})
    lines = [
        f"**{part} split** (mean over runs: pixel AUROC / F1max / AP / AUPRO)",
        "",
        "| TTA | scale | global | closing | sigma | "
        + " | ".join(f"{c} ({len({r['run'] for r in rows if r['category'] == c})} runs)" for c in categories)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(categories),
    ]
    options = sorted({_option(r) for r in rows}, key=lambda o: (list(TTA).index(o[0]), *o[1:]))
    for option in options:
        cells = []
        for c in categories:
            sel = [r for r in rows if r["category"] == c and r["split"] == part and _option(r) == option]
            cells.append(" / ".join(f"{np.mean([r[k] for r in sel]):.3f}" for k in KEYS))
        tta, scale, w, size, sigma = option
        lines.append(f"| {tta} | {scale:g} | {w:g} | {size} | {sigma:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_cell(rows: list[dict]) -> str:
    return " / ".join(f"{np.mean([r[k] for r in rows]):.3f}" for k in KEYS)


def chosen_table(rows: list[dict], choose_by: str) -> str:
    """Per run and TTA, the sigma of the best validation ``choose_by`` (ties: the smaller), and the test split with it."""
    lines = [
        f"**sigma chosen per run on the validation {choose_by}** (test split: pixel AUROC / F1max / AP / AUPRO)",
        "",
        "| TTA | scale | global | closing | category | runs | chosen sigmas | test, chosen sigma "
        "| test, best fixed sigma on the mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups = sorted({_option(r)[:4] for r in rows}, key=lambda o: (list(TTA).index(o[0]), *o[1:]))
    for tta, scale, w, size in groups:
        for category in sorted({r["category"] for r in rows}):
            sel = [r for r in rows if _option(r)[:4] == (tta, scale, w, size) and r["category"] == category]
            runs = sorted({r["run"] for r in sel})
            picks: list[dict] = []
            fixed: dict[float, list[dict]] = {}
            for run in runs:
                val = sorted((r for r in sel if r["run"] == run and r["split"] == "val"), key=lambda r: r["sigma"])
                sigma = max(val, key=lambda r: (r[choose_by], -r["sigma"]))["sigma"]
                picks.append(next(r for r in sel if r["run"] == run and r["split"] == "test" and r["sigma"] == sigma))
            for r in sel:
                if r["split"] == "test":
                    fixed.setdefault(r["sigma"], []).append(r)
            best = max(fixed, key=lambda s: np.mean([r[choose_by] for r in fixed[s]]))
            sigmas = ", ".join(f"{r['sigma']:g}" for r in picks)
            lines.append(
                f"| {tta} | {scale:g} | {w:g} | {size} | {category} | {len(runs)} | {sigmas} | {_mean_cell(picks)} "
                f"| {best:g}: {_mean_cell(fixed[best])} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders written by train.py (the method's runs)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 2.0, 4.0, 8.0])
    parser.add_argument("--tta", nargs="+", choices=list(TTA), default=None, help="test-time augmentations (default: all)")
    parser.add_argument("--choose-by", choices=KEYS, default="pixel_f1max", help="validation metric that picks sigma per run")
    parser.add_argument(
        "--global-weights", type=float, nargs="+", default=[0.0], help="late fusion with the global residual (0: none)"
    )
    size_help = "side of the coarse images of the global residual's PCA (a run's own PCA when it matches, else fitted here)"
    parser.add_argument("--global-size", type=int, default=64, help=size_help)
    parser.add_argument("--global-components", type=int, default=256, help="its principal components")
    closing_help = "morphological closing of the (fused) maps with a disc of this many pixels, before smoothing (0: none)"
    parser.add_argument("--closings", type=int, nargs="+", default=[0], help=closing_help)
    scale_help = "average each raw map with the map of the image resized by this factor, in (0, 2] (1: none)"
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help=scale_help)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log", default=None, help="append one JSON line per run, split and option here")
    args = parser.parse_args(argv)
    if any(s < 0 for s in args.sigmas):
        print("error: --sigmas must be >= 0", file=sys.stderr)
        return 2
    if any(not 0 <= w <= 1 for w in args.global_weights):
        print("error: --global-weights must be in [0, 1]", file=sys.stderr)
        return 2
    if args.global_size < 1 or args.global_components < 1:
        sizes = f"got {args.global_size} and {args.global_components}"
        print(f"error: --global-size and --global-components must be >= 1, {sizes}", file=sys.stderr)
        return 2
    if any(k < 0 for k in args.closings):
        print(f"error: --closings must be >= 0 pixels, got {args.closings}", file=sys.stderr)
        return 2
    if any(not 0 < x <= 2 for x in args.scales):
        print(f"error: --scales must be in (0, 2], got {args.scales}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = []
    for run in args.runs:
        try:
            new = run_rows(
                Path(run),
                args.sigmas,
                args.tta,
                args.global_weights,
                args.global_size,
                args.global_components,
                tuple(args.closings),
                tuple(args.scales),
            )
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        rows += new
        if args.log:
            with open(args.log, "a") as log:
                log.writelines(json.dumps(r) + "\n" for r in new)
        print(f"[map_options] {run}: done", file=sys.stderr, flush=True)
    print("\n\n".join([table(rows, part) for part in ("val", "test")] + [chosen_table(rows, args.choose_by)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
