"""An ensemble of detectors trained on one split: is a run's training noise worth averaging away?

    python benchmarks/detector_quality.py --data-root ../shared/data --category magnetic_tile --seeds 0 --streams 0 1 2 \\
        --preset-env agents/hyperparams/reinforce.yml --preset default --save-dir runs/streams
    python benchmarks/ensemble.py --data-root ../shared/data --category magnetic_tile --seed 0 \\
        --checkpoints runs/streams/seed0_stream{0,1,2}.pt

Loads each checkpoint (``Detector.from_checkpoint``: its own config, map options included), computes its maps of the
seed's validation and test splits, and scores each detector alone, every ensemble of two or more (the mean of their
maps) and, per ensemble size, the mean of its members' own figures: what averaging adds over the members. The
checkpoints must share the split: the one ``--seed`` and the split fields of ``--set`` (``k_shot``, ``normal_pool``,
``val_fraction``, ``image_size``; the env's defaults otherwise, as every preset here) give. Prints a Markdown table per
split; ``--log`` appends one JSON line per split and ensemble.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from envs.mvtec_patch import MVTecPatchConfig, load_env_data  # noqa: E402
from models.detector import Detector  # noqa: E402
from models.metrics import compute_metrics  # noqa: E402

KEYS = ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "image_auroc")
SPLIT_FIELDS = ("k_shot", "normal_pool", "val_fraction", "image_size")


def checkpoint_names(paths: list[str]) -> list[str]:
    """Short names for the table: each file's stem, or as many trailing path parts as make them unique (two runs'
    ``seed0_stream0.pt`` read ``k25/seed0_stream0`` and ``streams/seed0_stream0``)."""
    parts = [Path(path).with_suffix("").parts for path in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]  # the same file twice


def ensemble_rows(maps: list[np.ndarray], masks: np.ndarray, labels: np.ndarray) -> list[dict]:
    """One row per non-empty subset of the members (indices into ``maps``): the metrics of the mean of their maps.

    maps: one float (N, H, W) array per member; masks: bool (N, H, W); labels: bool (N,) image labels."""
    rows = []
    for size in range(1, len(maps) + 1):
        for members in itertools.combinations(range(len(maps)), size):
            mean = np.mean([maps[i] for i in members], axis=0)  # (N, H, W)
            metrics = compute_metrics(mean, masks, image_labels=labels)
            rows.append({"members": list(members)} | {k: round(float(metrics[k]), 4) for k in KEYS})
    return rows


def table(rows: list[dict], names: list[str], part: str) -> str:
    cols = " | ".join(KEYS)
    lines = [f"**{part} split**", "", f"| detectors | {cols} |", "|---|" + "---|" * len(KEYS)]
    for row in rows:
        lines.append(f"| {' + '.join(names[i] for i in row['members'])} | " + " | ".join(f"{row[k]:.4f}" for k in KEYS) + " |")
    members = [r for r in rows if len(r["members"]) == 1]
    mean = {k: np.mean([r[k] for r in members]) for k in KEYS}  # the members' own figures
    for size in range(2, len(names) + 1):  # against the ensembles of each size, averaged
        ensembles = [r for r in rows if len(r["members"]) == size]
        gain = {k: np.mean([r[k] for r in ensembles]) - mean[k] for k in KEYS}
        lines.append(f"| mean of {size}-ensembles − mean of members | " + " | ".join(f"{gain[k]:+.4f}" for k in KEYS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--seed", type=int, required=True, help="the seed whose split the checkpoints were trained on")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="detector checkpoints (Detector.save)")
    parser.add_argument("--set", nargs="*", default=[], metavar="K=V", help=f"split fields: {', '.join(SPLIT_FIELDS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log", default=None, help="append one JSON line per split and ensemble here")
    args = parser.parse_args(argv)
    fields = {}
    for pair in args.set:
        key, sep, text = pair.partition("=")
        if not sep or key not in SPLIT_FIELDS:
            print(f"error: --set takes split fields as K=V ({', '.join(SPLIT_FIELDS)}), got {pair!r}", file=sys.stderr)
            return 2
        fields[key] = yaml.safe_load(text)
    torch.set_num_threads(args.threads)
    try:
        detectors = [Detector.from_checkpoint(path, device="cpu") for path in args.checkpoints]
        config = MVTecPatchConfig.from_kwargs(data_root=args.data_root, category=args.category, seed=args.seed, **fields)
        data, split = load_env_data(config)
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = checkpoint_names(args.checkpoints)
    tables = []
    for part in ("val", "test"):
        index = getattr(split, part)
        images, masks = data.images[index], data.masks[index]  # (N, H, W, 3) uint8, (N, H, W) bool
        labels = np.array([data.samples[i].is_anomalous for i in index])
        maps = [detector.anomaly_map(images) for detector in detectors]  # each (N, H, W)
        rows = ensemble_rows(maps, masks, labels)
        if args.log:
            context = {"category": args.category, "seed": args.seed, "split": part}
            with open(args.log, "a") as log:
                log.writelines(json.dumps(context | r | {"names": [names[i] for i in r["members"]]}) + "\n" for r in rows)
        tables.append(table(rows, names, part))
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
