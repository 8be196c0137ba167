"""Train the neural batch sampler (and with it the autoencoder and predictor) on an MVTec AD category.

    python train.py --env MVTecPatch-v0                     # embedded synthetic category
    python train.py --data-root DATA --category grid --dry-run

Recipe: parse the config, seed, build, run, save (CleanRL / rl-baselines3-zoo style).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from envs.mvtec import DatasetError, load_category
from envs.split import SplitConfig, make_split

logger = logging.getLogger("train")


def resolve_data(data_root: str | None, category: str | None) -> tuple[Path, str]:
    """The dataset root and category; without a root, the embedded synthetic category (generated on first use)."""
    if data_root is None:
        from envs.synthetic import SYNTHETIC_CATEGORY, default_root

        if category not in (None, SYNTHETIC_CATEGORY):
            raise DatasetError(f"--category {category!r} needs --data-root (without it the embedded '{SYNTHETIC_CATEGORY}' is used)")
        return default_root(), SYNTHETIC_CATEGORY
    if category is None:
        raise DatasetError(f"--data-root '{data_root}' needs --category (a folder name under it)")
    return Path(data_root), category


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding MVTec AD categories (default: embedded synthetic)")
    parser.add_argument("--category", default=None, help="category folder name under --data-root")
    parser.add_argument("--image-size", type=int, default=256, help="working image size (square)")
    parser.add_argument("--k-shot", type=int, default=5, help="labelled anomalies per defect type")
    parser.add_argument("--seed", type=int, default=0, help="one seed for the split, the networks and the actions")
    parser.add_argument("--dry-run", action="store_true", help="load and validate the data, print the split as JSON, exit")
    return parser


def dry_run(args: argparse.Namespace) -> dict:
    root, category_name = resolve_data(args.data_root, args.category)
    category = load_category(root, category_name, image_size=args.image_size, progress=sys.stderr.isatty())
    split = make_split(category, SplitConfig(k_shot=args.k_shot, seed=args.seed))
    return split.summary(category)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.dry_run:
            print(json.dumps(dry_run(args), indent=2))
            return 0
        raise SystemExit("error: training is not implemented yet; use --dry-run")
    except (DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
