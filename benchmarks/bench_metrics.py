"""Benchmark of models.metrics.compute_metrics on a synthetic MVTec-size test split.

Builds a seeded split (default 150 images of 256x256, 2/3 of them with elliptic defects) whose maps are smoothed noise
raised over the defects, then prints the wall time of compute_metrics (exact or binned) and roc_pr_curves, and the peak
resident memory of the process before and after (resource.getrusage; the inputs themselves take 5 bytes per pixel).

    python -m benchmarks.bench_metrics
    python -m benchmarks.bench_metrics --num-bins 10000
"""

from __future__ import annotations

import argparse
import resource
import time

import cv2
import numpy as np

from models.metrics import compute_metrics, roc_pr_curves


def make_split(n_images: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic (maps, masks): float32 (N, size, size) scores, bool (N, size, size) masks."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=np.uint8)
    for mask in masks[: (2 * n_images) // 3]:
        for _ in range(int(rng.integers(1, 4))):
            centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            axes = (int(rng.integers(2, size // 8)), int(rng.integers(2, size // 8)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    maps = rng.random((n_images, size, size), dtype=np.float32)
    for i in range(n_images):
        maps[i] = cv2.GaussianBlur(maps[i], (0, 0), 2.0) + 0.15 * cv2.GaussianBlur(masks[i].astype(np.float32), (0, 0), 3.0)
    return maps, masks.astype(bool)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=150)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-bins", type=int, default=None, help="bin the scores (default: exact mode)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    maps, masks = make_split(args.n_images, args.size, args.seed)
    print(
        f"split: {maps.shape} float32, {masks.mean():.4f} defect pixels, inputs {(maps.nbytes + masks.nbytes) / 2**20:.0f} MiB"
    )
    print(f"peak RSS before metrics: {peak_rss_mib():.0f} MiB")
    for run in range(args.repeats):
        start = time.perf_counter()
        result = compute_metrics(maps, masks, num_bins=args.num_bins)
        elapsed = time.perf_counter() - start
        print(f"run {run}: compute_metrics {elapsed:.2f} s, peak RSS {peak_rss_mib():.0f} MiB")
    print({key: round(value, 6) for key, value in result.items()})
    start = time.perf_counter()
    roc_pr_curves(maps, masks, num_bins=args.num_bins)
    print(f"roc_pr_curves {time.perf_counter() - start:.2f} s, peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
