"""What a trained run scores with another inference-time map, without training again: trades of speed for quality
(the predictor's four flips), and the anomaly map's and image score's definitions of a baseline.

    python -m benchmarks.map_variants --runs RUN [RUN ...] --variants map_predictor_flips=false
    python -m benchmarks.map_variants --runs VQ_RUN --variants map_residual=ssim map_residual=l2

Each variant sets fields of the run's detector or baseline config that only the maps read (``map_*``); a variant
``a=1,b=2`` sets two. For each run, the reference (the run's own config) and every variant are scored on the run's
test split: pixel AUROC, F1max, AP, AUPRO, image AUROC for each image score (``max``: the map's maximum, what
evaluate.py uses; ``top1pct``: the mean of its top 1% pixels), and the CPU milliseconds per image of its maps (after
one untimed call, so that no variant pays the first call's set-up). Then
the variant's mean difference from the reference over the runs. (``experiments/map_options.py`` searches the method's
own map options further: smoothing grids chosen on the validation split, closing, a second scale.)
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["image_scores", "parse_variant", "main"]

SCORES = ("max", "top1pct")
KEYS = ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro")


def image_scores(maps: np.ndarray, how: str) -> np.ndarray:
    """(N, H, W) maps -> (N,) image scores: the maximum, or the mean of the top 1% of pixels."""
    flat = maps.reshape(len(maps), -1)
    if how == "max":
        return flat.max(axis=1)
    if how == "top1pct":
        k = max(1, flat.shape[1] // 100)
        return np.partition(flat, -k, axis=1)[:, -k:].mean(axis=1)
    raise ValueError(f"unknown image score {how!r} (valid: {', '.join(SCORES)})")


def parse_variant(text: str) -> dict[str, Any]:
    """``"a=1,b=false"`` -> ``{"a": 1, "b": False}`` (values as ``--hyperparams`` reads them)."""
    from agents.run_config import parse_value

    fields = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("map_"):
            raise ValueError(f"variant {text!r}: expected map_FIELD=VALUE[,map_FIELD=VALUE] (fields the maps alone read)")
        fields[key] = parse_value(value)
    return fields


def with_fields(model: Any, fields: dict[str, Any]) -> Any:
    """A shallow copy of ``model`` whose config has ``fields`` set (checked against the config's fields)."""
    config = copy.copy(model.config)
    for key, value in fields.items():
        if not hasattr(config, key):
            raise ValueError(f"{type(config).__name__} has no field {key!r}")
        setattr(config, key, value)
    if hasattr(config, "__post_init__"):
        copy.copy(config).__post_init__()  # the config's own checks (on a copy: some normalise fields in place)
    variant = copy.copy(model)
    variant.config = config
    return variant


def score(model: Any, images: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from models.metrics import compute_metrics

    model.anomaly_map(images[:1])  # untimed: the first call's allocations and kernel choices
    start = time.process_time()
    maps = model.anomaly_map(images)  # (N, H, W)
    cpu_ms = 1000 * (time.process_time() - start) / len(images)
    metrics = compute_metrics(maps, masks, image_labels=labels)
    row = {key: metrics[key] for key in KEYS}
    for how in SCORES:  # NaN where the test split holds one kind of image only, as compute_metrics gives
        one_kind = labels.all() or not labels.any()
        row[f"image_auroc_{how}"] = float("nan") if one_kind else float(roc_auc_score(labels, image_scores(maps, how)))
    row["cpu_ms_per_image"] = cpu_ms
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="run folders (train.py's)")
    parser.add_argument("--variants", nargs="+", required=True, metavar="map_FIELD=VALUE[,...]", help="map settings to try")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    import torch

    from evaluate import load_run

    try:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads} is invalid: expected an integer >= 1")
        torch.set_num_threads(args.threads)
        variants = {text: parse_variant(text) for text in args.variants}
        rows: dict[str, list[dict[str, float]]] = {"reference": [], **{text: [] for text in variants}}
        columns = [*KEYS, *(f"image_auroc_{how}" for how in SCORES), "cpu_ms_per_image"]
        print("| run | variant | " + " | ".join(columns) + " |")
        print("|---|---|" + "---|" * len(columns))
        for run in args.runs:
            _, data, split, model = load_run(run)
            images, masks = data.images[split.test], data.masks[split.test]
            labels = np.array([data.samples[i].is_anomalous for i in split.test], dtype=bool)
            for name, fields in (("reference", {}), *variants.items()):
                row = score(with_fields(model, fields) if fields else model, images, masks, labels)
                rows[name].append(row)
                print(
                    f"| {run} | {name} | "
                    + " | ".join(f"{row[c]:.4f}" if c != columns[-1] else f"{row[c]:.1f}" for c in columns)
                    + " |",
                    flush=True,
                )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\nmean difference from the reference over the runs:")
    for name in variants:
        diffs = {c: np.mean([v[c] - r[c] for v, r in zip(rows[name], rows["reference"])]) for c in columns[:-1]}
        speed = np.mean([r["cpu_ms_per_image"] for r in rows["reference"]]) / np.mean(
            [v["cpu_ms_per_image"] for v in rows[name]]
        )
        print(f"  {name}: " + ", ".join(f"{c} {d:+.4f}" for c, d in diffs.items()) + f"; maps {speed:.2f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
