"""How honest and how large the noise-mask anomalies are on a category, against its real defects.

    python benchmarks/synthetic_anomalies.py --data-root ../shared/data --category tire

Draws ``--n`` noise-mask anomalies (:func:`models.synthesis.noise_anomaly`) from the category's ``train/good``
images, with and without ``--min-change`` / ``--window``, and prints the share of masked pixels that barely changed
(< 10 grey levels) and the masks' sizes, next to the sizes of the real defects in ``ground_truth/``. The figures
behind the README's "Why the noise-mask anomalies hurt an object".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from envs.mvtec import read_image, resize_mask  # noqa: E402
from models.synthesis import noise_anomaly  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--n", type=int, default=200, help="anomalies drawn per setting")
    parser.add_argument("--images", type=int, default=60, help="train/good images to draw from")
    parser.add_argument("--min-change", type=float, default=12.0)
    parser.add_argument("--window", type=float, nargs=2, default=(0.05, 0.4))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = Path(args.data_root) / args.category
    files = sorted((folder / "train" / "good").glob("*.png"))[: args.images]
    if not files:
        raise SystemExit(f"error: no PNG images in '{folder / 'train' / 'good'}' (expected an MVTec AD category folder)")
    images = [read_image(f, 256)[0] for f in files]
    settings = {
        "noise mask as drawn (default)": {},
        f"min_change {args.min_change:g}": {"min_change": args.min_change},
        f"min_change {args.min_change:g} + window {args.window[0]:g}-{args.window[1]:g}": {
            "min_change": args.min_change,
            "window": tuple(args.window),
        },
    }
    print(f"{args.category}: {args.n} anomalies per setting from {len(images)} train/good images at 256 px")
    for name, kwargs in settings.items():
        rng = np.random.default_rng(args.seed)
        faint, sizes = [], []
        for _ in range(args.n):
            target, source = images[rng.integers(len(images))], images[rng.integers(len(images))]
            image, mask = noise_anomaly(target, source, rng, **kwargs)
            change = np.abs(image.astype(np.int16) - target.astype(np.int16)).max(axis=-1)[mask]
            faint.append(float((change < 10).mean()) if mask.any() else 0.0)
            sizes.append(int(mask.sum()))
        print(
            f"  {name}: masked pixels changed < 10 levels {np.mean(faint):.0%}; "
            f"mask pixels median {np.median(sizes):.0f}, mean {np.mean(sizes):.0f}"
        )
    masks = sorted((folder / "ground_truth").glob("*/*.png"))
    if masks:
        px = [int(resize_mask(cv2.imread(str(m), cv2.IMREAD_GRAYSCALE), 256).sum()) for m in masks]
        print(f"  real defects ({len(px)} masks): pixels median {np.median(px):.0f}, mean {np.mean(px):.0f}")


if __name__ == "__main__":
    main()
