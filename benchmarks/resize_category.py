"""Write a category pre-resized to the working size, in MVTec layout, loading to the same arrays as the original.

The reader resizes every image (bilinear) and mask (area, then ``> 0``) to a square of ``--image-size`` on load, and a
resize to the size an image already has changes nothing, so a copy written at that size loads bit-identical: same file
names, same split, same images and masks. Use it where the originals are too large to move, e.g. to an accelerator
machine that takes a 64 MiB working tree (magnetic_tile: 80 MiB of PNGs, 53 MiB at 256 px):

    python -m benchmarks.resize_category --data-root ../shared/data --category magnetic_tile --out .gpudata

Grey images stay grey PNGs, colour ones RGB PNGs; masks are 0/255 PNGs. The copy is loaded again and compared with
the original before the script reports success; an existing output category folder is not overwritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from envs.mvtec import DatasetError, load_category


def write_resized(root: Path, category: str, out: Path, image_size: int = 256) -> Path:
    """Write ``root/category`` at ``image_size`` under ``out/category``; returns that folder.

    Raises:
        FileExistsError: ``out/category`` exists already (nothing is overwritten).
        DatasetError: the original is not a readable category, or the copy does not load to the same arrays.
    """
    src, dst = root / category, out / category
    if dst.exists():
        raise FileExistsError(f"'{dst}' exists already (expected a new folder: nothing is overwritten)")
    data = load_category(root, category, image_size)
    for sample, image, mask in zip(data.samples, data.images, data.masks):
        target = dst / Path(sample.relative_to(src)).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        grey = bool((image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all())
        cv2.imwrite(str(target), image[..., 0] if grey else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if sample.mask_path is not None:
            mask_target = dst / sample.mask_path.relative_to(src)
            mask_target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask_target), mask.astype(np.uint8) * 255)
    copy = load_category(out, category, image_size)
    same_files = [s.relative_to(dst) for s in copy.samples] == [
        Path(s.relative_to(src)).with_suffix(".png").as_posix() for s in data.samples
    ]
    if not (same_files and np.array_equal(copy.images, data.images) and np.array_equal(copy.masks, data.masks)):
        raise DatasetError(f"'{dst}' does not load to the same images and masks as '{src}'")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="folder of MVTec AD categories")
    parser.add_argument("--category", required=True, help="the category folder to copy")
    parser.add_argument("--out", required=True, help="folder to write the resized category into")
    parser.add_argument("--image-size", type=int, default=256, help="the working size the runs will use (default 256)")
    args = parser.parse_args(argv)
    try:
        dst = write_resized(Path(args.data_root), args.category, Path(args.out), args.image_size)
    except (DatasetError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    print(f"wrote '{dst}' ({size / 2**20:.1f} MiB); it loads to the same {args.image_size}-px images and masks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
