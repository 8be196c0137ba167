"""Pixel metrics per defect type of finished runs: which defects a detector finds and which it misses.

    python benchmarks/per_type.py --runs runs/issue8c/cells/magnetic_tile/reinforce/seed*/logs/reinforce/MVTecPatch-v0_1

Each run's best detector (or baseline) is loaded as ``evaluate.py`` does and maps its test split with the run's own
options; each defect type is scored pooled with the split's good images (as anomalib's per-category figures pool
one category). Prints one line per run and type: pixel AUROC, F1max and the type's defect pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evaluate import load_run  # noqa: E402
from models.metrics import compute_metrics  # noqa: E402


def per_type(run: Path) -> dict[str, tuple[float, float, int]]:
    """{defect type: (pixel AUROC, pixel F1max, defect pixels)} on the run's test split."""
    _, data, split, detector = load_run(run)
    masks = data.masks[split.test]  # (N, H, W) bool
    labels = [data.samples[i].label for i in split.test]
    maps = detector.anomaly_map(data.images[split.test])  # (N, H, W)
    good = [i for i, label in enumerate(labels) if label == "good"]
    out = {}
    for kind in sorted(set(labels) - {"good"}):
        own = [i for i, label in enumerate(labels) if label == kind]
        if masks[own].any():
            metrics = compute_metrics(maps[good + own], masks[good + own])
            out[kind] = (float(metrics["pixel_auroc"]), float(metrics["pixel_f1max"]), int(masks[own].sum()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders written by train.py")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for run in args.runs:
        try:
            scores = per_type(Path(run))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for kind, (auroc, f1, pixels) in scores.items():
            print(f"{run}  {kind:<16} AUROC {auroc:.3f}  F1max {f1:.3f}  defect pixels {pixels}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
