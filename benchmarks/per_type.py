"""Pixel metrics per defect type of finished runs: which defects a detector finds and which it misses.

    python -m benchmarks.per_type --runs runs/compare/cells/magnetic_tile/default/seed*/logs/reinforce/MVTecPatch-v0_1
    python -m benchmarks.per_type --runs RUN --images 8 --grid costliest.png

Each run's best detector (or baseline) is loaded as ``evaluate.py`` does and maps its test split with the run's own
options; each defect type is scored pooled with the split's good images (as anomalib's per-category figures pool
one category). Prints one line per run and type: pixel AUROC, F1max and the type's defect pixels.

Then where the pooled pixel AUROC is lost (:func:`models.metrics.auroc_shortfall_by_image`): its shortfall, 1 - AUROC,
split exactly over the defect pixels by type ("missed"), and again over the normal pixels by where they lie ("false
alarms": good images, or the normal part of each type's defective images). ``--images K`` lists the K images that cost
most on each side, and ``--grid`` draws them (image | prediction | ground truth, costliest first; missed, then false
alarms).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluate import load_run, save_prediction_grid
from models.metrics import auroc_shortfall_by_image, compute_metrics


@dataclass
class TestMaps:
    """A run's test split, mapped: ``names`` are paths relative to the category folder (``uneven/0058.png``)."""

    images: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) bool
    maps: np.ndarray  # (N, H, W) float32
    labels: list[str]  # (N,) defect type or "good", from the folder
    names: list[str]  # (N,)


def test_maps(run: Path) -> TestMaps:
    """Map the run's test split with its best detector (or baseline), as ``evaluate.py`` does."""
    _, data, split, detector = load_run(run)
    samples = [data.samples[i] for i in split.test]
    return TestMaps(
        images=data.images[split.test],
        masks=data.masks[split.test],
        maps=detector.anomaly_map(data.images[split.test]),
        labels=[s.label for s in samples],
        names=[f"{s.path.parent.name}/{s.path.name}" for s in samples],
    )


def type_scores(t: TestMaps) -> dict[str, tuple[float, float, int]]:
    """{defect type: (pixel AUROC, pixel F1max, defect pixels)}, each type pooled with the good images."""
    good = [i for i, label in enumerate(t.labels) if label == "good"]
    out = {}
    for kind in sorted(set(t.labels) - {"good"}):
        own = [i for i, label in enumerate(t.labels) if label == kind]
        if t.masks[own].any():
            metrics = compute_metrics(t.maps[good + own], t.masks[good + own])
            out[kind] = (float(metrics["pixel_auroc"]), float(metrics["pixel_f1max"]), int(t.masks[own].sum()))
    return out


def per_type(run: Path) -> dict[str, tuple[float, float, int]]:
    """{defect type: (pixel AUROC, pixel F1max, defect pixels)} on the run's test split."""
    return type_scores(test_maps(run))


def shortfall_lines(t: TestMaps, images: int) -> tuple[list[str], list[int], list[str]]:
    """Where 1 - pooled pixel AUROC goes, by type and (``images`` > 0) by image; also the listed images' indices and a
    title for each (name, side and cost)."""
    missed, false_alarms = auroc_shortfall_by_image(t.maps, t.masks)
    kinds = sorted(set(t.labels), key=lambda k: (k == "good", k))

    def by_type(cost: np.ndarray) -> str:
        parts = {k: sum(c for c, label in zip(cost, t.labels) if label == k) for k in kinds}
        return ", ".join(f"{k} {v:.4f}" for k, v in parts.items() if v > 0)

    lines = [
        f"pooled pixel AUROC {1 - missed.sum():.4f}, shortfall {missed.sum():.4f}",
        f"  missed (defect pixels, by type): {by_type(missed)}",
        f"  false alarms (normal pixels, by the image's folder): {by_type(false_alarms)}",
    ]
    shown: list[int] = []
    titles: list[str] = []
    for side, cost in (("missed", missed), ("false alarms", false_alarms)):
        top = [int(i) for i in np.argsort(-cost, kind="stable")[:images] if cost[i] > 0]
        if top:
            lines.append(f"  costliest {len(top)} images, {side}: " + ", ".join(f"{t.names[i]} {cost[i]:.4f}" for i in top))
        shown += top
        titles += [f"{t.names[i]}: {side} {cost[i]:.4f} of the AUROC" for i in top]
    return lines, shown, titles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders written by train.py")
    parser.add_argument("--images", type=int, default=5, help="images listed per side of the shortfall (0: none)")
    parser.add_argument("--grid", type=Path, help="PNG of the listed images (one run only): missed first, then false alarms")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.images < 0:
        parser.error(f"--images must be >= 0, got {args.images}")
    if args.grid is not None and (len(args.runs) != 1 or args.images == 0):
        parser.error("--grid draws the listed images of one run: give one --runs folder and --images >= 1")
    if args.grid is not None and args.grid.suffix.lower() != ".png":
        parser.error(f"--grid {args.grid}: expected a .png file name")
    torch.set_num_threads(args.threads)
    for run in args.runs:
        try:
            t = test_maps(Path(run))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for kind, (auroc, f1, pixels) in type_scores(t).items():
            print(f"{run}  {kind:<16} AUROC {auroc:.3f}  F1max {f1:.3f}  defect pixels {pixels}")
        lines, shown, titles = shortfall_lines(t, args.images)
        print("\n".join(f"{run}  {line}" for line in lines))
        if args.grid is not None:
            args.grid.parent.mkdir(parents=True, exist_ok=True)
            save_prediction_grid(args.grid, t.images, t.maps, t.masks, order=shown, titles=titles)
            print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
