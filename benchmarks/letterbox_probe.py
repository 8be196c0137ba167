"""Does the reader's square resize hurt a category of non-square images? Train on an aspect-keeping copy and score it
on the reader's own pixels.

The reader resizes every image to ``image_size`` × ``image_size`` (``envs/mvtec.py``), so a 600 × 240 tile is squeezed
2.5 times more across than down and its texture changes scale and angle from image to image. ``write`` makes a copy of a
category in which each image is scaled by one factor (long side to ``--image-size``) and reflect-padded to the square
(a "letterbox"), masks alike, and records each image's valid box in ``boxes.json``. Train on the copy as on any
category (``detector_quality.py --save-dir``), then ``score`` crops each map to its box, resizes it to the reader's
square and scores it against the original category's masks, on the same test split (same file names, same seed):
figures comparable with any run on the original::

    python benchmarks/letterbox_probe.py write --data-root ../shared/data --category magnetic_tile --out runs/letterbox
    python benchmarks/detector_quality.py --data-root runs/letterbox --category magnetic_tile --seeds 0 --streams 0 1 \\
        --preset-env agents/hyperparams/reinforce.yml --preset default --save-dir runs/letterbox_det
    python benchmarks/letterbox_probe.py score --data-root runs/letterbox --original-root ../shared/data \\
        --category magnetic_tile --seed 0 --checkpoints runs/letterbox_det/seed0_stream0.pt runs/letterbox_det/seed0_stream1.pt

A checkpoint trained on the original category can be scored by the same command with ``--data-root`` the original
(no ``boxes.json``: its maps are already in the reader's frame). Prints one Markdown row per checkpoint, with the
pixel AUROC of each defect type pooled with the good images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing
sys.path.insert(1, str(Path(__file__).resolve().parent))  # per_type.py, imported where it is needed

from envs.mvtec import DatasetError, make_mvtec_samples  # noqa: E402

BOXES = "boxes.json"
KEYS = ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "image_auroc")


def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(y0, x0, h, w): where an image of ``height`` × ``width`` lies in a ``size`` square once its long side is ``size``."""
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - h) // 2, (size - w) // 2, h, w


def letterbox(array: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    """Scale ``array`` (H, W[, C]) by one factor to fit a ``size`` square and fill the rest by reflection."""
    y0, x0, h, w = letterbox_box(*array.shape[:2], size)
    small = cv2.resize(array, (w, h), interpolation=interpolation)
    bottom, right = size - h - y0, size - w - x0
    while y0 or x0 or bottom or right:  # a reflection is at most the image's side - 1: repeat for a very long image
        if min(small.shape[:2]) == 1:  # nothing to reflect
            return cv2.copyMakeBorder(small, y0, bottom, x0, right, cv2.BORDER_REPLICATE)
        top_pad, left_pad = min(y0, small.shape[0] - 1), min(x0, small.shape[1] - 1)
        bottom_pad, right_pad = min(bottom, small.shape[0] - 1), min(right, small.shape[1] - 1)
        small = cv2.copyMakeBorder(small, top_pad, bottom_pad, left_pad, right_pad, cv2.BORDER_REFLECT_101)
        y0, x0, bottom, right = y0 - top_pad, x0 - left_pad, bottom - bottom_pad, right - right_pad
    return small


def write_letterboxed(root: Path, category: str, out: Path, size: int = 256) -> Path:
    """Write ``root/category`` letterboxed to ``size`` under ``out/category`` with ``boxes.json``; returns that folder.

    Masks are area-resized then ``> 0`` (the reader's rule: a thin defect keeps a pixel) and padded by the same
    reflection as their image, so that every pixel of the copy keeps its label."""
    src, dst = root / category, out / category
    if dst.exists():
        raise FileExistsError(f"'{dst}' exists already (expected a new folder: nothing is overwritten)")
    boxes = {}
    for sample in make_mvtec_samples(root, category):
        image = cv2.imread(str(sample.path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DatasetError(f"'{sample.path}' is not a readable image")
        rel = Path(sample.relative_to(src)).with_suffix(".png")
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst / rel), letterbox(image, size, cv2.INTER_AREA))
        boxes[rel.as_posix()] = list(letterbox_box(*image.shape[:2], size))
        if sample.mask_path is not None:
            mask = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE)
            if mask is None or mask.shape != image.shape[:2]:
                found = "unreadable" if mask is None else f"{mask.shape[0]}x{mask.shape[1]}"
                raise DatasetError(
                    f"'{sample.mask_path}' is {found}: expected a readable mask of its image's size "
                    f"{image.shape[0]}x{image.shape[1]}"
                )
            boxed = letterbox((mask > 0).astype(np.float32), size, cv2.INTER_AREA) > 0
            target = dst / sample.mask_path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), boxed.astype(np.uint8) * 255)
    (dst / BOXES).write_text(json.dumps(boxes))
    return dst


def to_reader_frame(maps: np.ndarray, boxes: list[list[int]]) -> np.ndarray:
    """Letterboxed maps float32 (N, S, S) -> the reader's frame (N, S, S): each map's box resized to the square."""
    side = maps.shape[-1]
    return np.stack(
        [cv2.resize(np.ascontiguousarray(m[y0 : y0 + h, x0 : x0 + w]), (side, side)) for m, (y0, x0, h, w) in zip(maps, boxes)]
    )


def _read_boxes(path: Path, files: list[str]) -> list[list[int]] | None:
    """Each file's box from a copy's ``boxes.json``; None where there is no such file (the original category)."""
    if not path.is_file():
        return None
    try:
        boxes = json.loads(path.read_text())
        return [[int(v) for v in boxes[name]] for name in files]
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(
            f"'{path}' is not a box list of this copy ({type(error).__name__}: {error}): expected the file "
            "letterbox_probe.py write made, with [y0, x0, h, w] for every image"
        ) from None


def score(data_root: str, original_root: str, category: str, seed: int, checkpoints: list[str]) -> list[dict]:
    """Each checkpoint's test metrics in the original category's frame, on the seed's test split."""
    from per_type import TestMaps, type_scores  # each defect type pooled with the good images

    from envs.mvtec_patch import MVTecPatchConfig, load_env_data
    from models.detector import Detector
    from models.metrics import compute_metrics

    data, split = load_env_data(MVTecPatchConfig.from_kwargs(data_root=data_root, category=category, seed=seed))
    original, original_split = load_env_data(
        MVTecPatchConfig.from_kwargs(data_root=original_root, category=category, seed=seed)
    )
    names = [Path(s.relative_to(data.folder)).with_suffix("").as_posix() for s in data.samples]
    if names != [Path(s.relative_to(original.folder)).with_suffix("").as_posix() for s in original.samples]:
        raise DatasetError(f"'{data.folder}' and '{original.folder}' do not hold the same files")
    index = split.test
    assert np.array_equal(index, original_split.test)  # same files and seed: the same split
    boxes = _read_boxes(data.folder / BOXES, [names[i] + ".png" for i in index])
    masks = original.masks[index]  # (N, S, S) bool, the reader's frame
    labels = np.array([data.samples[i].is_anomalous for i in index])
    kinds = [data.samples[i].label for i in index]
    rows = []
    for path in checkpoints:
        maps = Detector.from_checkpoint(path, device="cpu").anomaly_map(data.images[index])  # (N, S, S)
        if boxes is not None:
            maps = to_reader_frame(maps, boxes)
        metrics = compute_metrics(maps, masks, image_labels=labels)
        test = TestMaps(images=data.images[index], masks=masks, maps=maps, labels=kinds, names=[names[i] for i in index])
        per_type = {kind: round(auroc, 4) for kind, (auroc, _, _) in type_scores(test).items()}
        rows.append(
            {"checkpoint": path, "letterboxed": boxes is not None}
            | {k: round(float(metrics[k]), 4) for k in KEYS}
            | {"per_type_auroc": per_type}
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write a letterboxed copy of a category")
    write.add_argument("--data-root", required=True)
    write.add_argument("--category", required=True)
    write.add_argument("--out", required=True)
    write.add_argument("--image-size", type=int, default=256)
    scorer = commands.add_parser("score", help="score checkpoints in the original category's frame")
    scorer.add_argument("--data-root", required=True, help="the root the checkpoints were trained on (a copy or the original)")
    scorer.add_argument("--original-root", required=True)
    scorer.add_argument("--category", required=True)
    scorer.add_argument("--seed", type=int, required=True)
    scorer.add_argument("--checkpoints", nargs="+", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "write":
            print(f"wrote '{write_letterboxed(Path(args.data_root), args.category, Path(args.out), args.image_size)}'")
            return 0
        import torch

        torch.set_num_threads(1)
        rows = score(args.data_root, args.original_root, args.category, args.seed, args.checkpoints)
    except (DatasetError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        "| checkpoint | letterboxed | " + " | ".join(KEYS) + " | pixel AUROC per type |\n|---|---|" + "---|" * (len(KEYS) + 1)
    )
    for row in rows:
        types = ", ".join(f"{t} {v:.3f}" for t, v in row["per_type_auroc"].items())
        print(f"| {row['checkpoint']} | {row['letterboxed']} | " + " | ".join(f"{row[k]:.4f}" for k in KEYS) + f" | {types} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
