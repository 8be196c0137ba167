"""Score finished runs on one common test set: the test split of a reference run.

    python -m experiments.score_on_reference --reference runs/k15/seed0/... --runs runs/k5/seed0/... runs/k10/seed0/...

Runs whose splits differ (another ``k_shot`` or ``val_fraction``) are scored on different test images, so their own
figures do not compare. This scores each run's best detector, with the run's own map options, on the reference run's
test images only. Every one of them must lie in the run's own test split, or the run would be scored on images it
trained or chose its checkpoint on: the script refuses with a one-line error. With the same seed, a larger
``k_shot`` takes its extra labelled images from the front of the same per-type order, so its test split lies inside
a smaller ``k_shot``'s (``envs/split.py``): use the largest as the reference. Prints pixel AUROC / F1max / AP
and each defect type's pixel AUROC (pooled with the good test images) per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from evaluate import load_run
from models.metrics import compute_metrics


def test_files(run: Path) -> list[str]:
    """The run's test images, relative to the category folder (from its ``split.json``)."""
    path = run / "split.json"
    if not path.is_file():
        raise ValueError(f"'{run}' is not a run folder (expected split.json written by train.py)")
    return json.loads(path.read_text())["test"]


def score_on(run: Path, files: list[str]) -> dict[str, float]:
    """Pixel metrics of the run's best detector on ``files`` (which must lie in the run's own test split)."""
    outside = set(files) - set(test_files(run))
    if outside:
        raise ValueError(
            f"'{run}': {len(outside)} of the reference's test images are not in this run's test split (e.g. "
            f"{sorted(outside)[0]}): expected a reference whose test split lies inside every run's"
        )
    _, data, split, detector = load_run(run)
    wanted = set(files)
    index = [i for i in split.test if data.samples[i].relative_to(data.folder) in wanted]
    masks = data.masks[index]  # (N, H, W) bool
    labels = [data.samples[i].label for i in index]
    maps = detector.anomaly_map(data.images[index])  # (N, H, W)
    metrics = compute_metrics(maps, masks)
    out = {k: float(metrics[k]) for k in ("pixel_auroc", "pixel_f1max", "pixel_ap")}
    good = [i for i, label in enumerate(labels) if label == "good"]
    for kind in sorted(set(labels) - {"good"}):
        own = [i for i, label in enumerate(labels) if label == kind]
        if masks[own].any():
            out[f"auroc/{kind}"] = float(compute_metrics(maps[good + own], masks[good + own])["pixel_auroc"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="the run whose test split is the common test set")
    parser.add_argument("--runs", nargs="+", required=True, help="run folders written by train.py (the reference too)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        files = test_files(Path(args.reference))
        print(f"common test set: {len(files)} images ({sum(not f.startswith('test/good/') for f in files)} defective)")
        for run in args.runs:
            scores = score_on(Path(run), files)
            types = "  ".join(f"{k[6:]} {v:.3f}" for k, v in scores.items() if k.startswith("auroc/"))
            print(
                f"{run}  AUROC {scores['pixel_auroc']:.3f}  F1max {scores['pixel_f1max']:.3f}  AP {scores['pixel_ap']:.3f}"
                f"  per-type AUROC: {types}"
            )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
