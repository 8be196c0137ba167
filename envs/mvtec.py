"""MVTec AD folder layout -> samples -> images cached in memory at the working size.

This is the only module that knows the MVTec AD layout (https://www.mvtec.com/company/research/datasets/mvtec-ad)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

Images may be grey, RGB or RGBA (8 or 16 bit), of any size and aspect. They are read once, resized to
``image_size`` x ``image_size`` (bilinear for images; masks: area-downscaled then ``> 0``, so that a defect thinner
than the scale factor keeps a pixel, and nearest when upscaled) and kept as
**uint8** RGB arrays: a 300-image category at 256 px takes 59 MB instead of 236 MB as float32, and the float
conversion happens per batch, where it costs next to nothing. Masks are bool; any mask value > 0 is a defect.

Every problem with the folder raises :class:`DatasetError`, whose message is one line naming the path and what was
expected, so the command-line tools can print it without a traceback.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

GOOD = "good"  # the label of defect-free images, in train/ and test/
TRAIN, TEST = "train", "test"
MASK_SUFFIX = "_mask"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset folder that does not follow the MVTec AD layout, or a file in it that cannot be used."""


@dataclass(frozen=True)
class Sample:
    """One image of a category: where it is, which split and label it has, and its mask file (defects only)."""

    path: Path
    split: str  # "train" | "test"
    label: str  # "good" or the defect type
    mask_path: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.label != GOOD

    def relative_to(self, root: Path) -> str:
        return self.path.relative_to(root).as_posix()


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_categories(root: Path) -> list[str]:
    """Names of the folders under ``root`` that look like categories (they hold a ``train/`` folder)."""
    return sorted(p.name for p in Path(root).iterdir() if (p / TRAIN).is_dir())


def make_mvtec_samples(root: str | Path, category: str) -> list[Sample]:
    """Turn ``<root>/<category>`` into a sorted list of samples, pairing each defect image with its mask by stem.

    Raises:
        DatasetError: missing root or category, no ``train/good`` images, no ``test/`` folder or no defect type,
            or a defect image without its mask.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root '{root}' does not exist (expected a folder holding MVTec AD category folders)")
    folder = root / category
    if not folder.is_dir():
        found = ", ".join(list_categories(root)) or "none"
        raise DatasetError(f"category '{category}' not found under '{root}' (categories found: {found})")

    train_good = folder / TRAIN / GOOD
    train_files = _image_files(train_good) if train_good.is_dir() else []
    if not train_files:
        raise DatasetError(f"'{train_good}' has no images (expected defect-free training images, e.g. 000.png)")
    samples = [Sample(p, TRAIN, GOOD) for p in train_files]

    test_dir = folder / TEST
    if not test_dir.is_dir():
        raise DatasetError(f"'{test_dir}' does not exist (expected test/good and test/<defect> folders)")
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and p.name != GOOD)
    if not defect_dirs:
        raise DatasetError(f"'{test_dir}' has no defect folders (expected test/<defect>/ with ground_truth/<defect>/ masks)")
    if (test_dir / GOOD).is_dir():
        samples += [Sample(p, TEST, GOOD) for p in _image_files(test_dir / GOOD)]
    for defect_dir in defect_dirs:
        files = _image_files(defect_dir)
        if not files:
            raise DatasetError(f"'{defect_dir}' has no images (expected defective test images)")
        for path in files:
            mask_path = folder / "ground_truth" / defect_dir.name / f"{path.stem}{MASK_SUFFIX}.png"
            if not mask_path.is_file():
                raise DatasetError(
                    f"mask '{mask_path}' not found for test image '{path}' (expected ground_truth/<defect>/<stem>_mask.png)"
                )
            samples.append(Sample(path, TEST, defect_dir.name, mask_path))
    return samples


def _read(path: Path, flags: int) -> np.ndarray:
    """cv2.imread with the checks it leaves out: unreadable, truncated (PNG/JPEG) and empty files."""
    data = np.fromfile(str(path), dtype=np.uint8)  # fromfile + imdecode also handles non-ASCII paths
    if path.suffix.lower() in (".jpg", ".jpeg") and b"\xff\xd9" not in bytes(data[-1024:]):  # padding may follow EOI
        raise DatasetError(f"cannot read image '{path}': the JPEG file is truncated (no end-of-image marker)")
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None or image.size == 0:
        raise DatasetError(f"cannot read image '{path}': not a readable image file (corrupt or truncated?)")
    return image


def read_image(path: str | Path, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image as RGB uint8 resized (bilinear) to a square working size.

    Returns:
        The image, uint8 ``(image_size, image_size, 3)``, and its original ``(height, width)``.
    """
    path = Path(path)
    image = _read(path, cv2.IMREAD_UNCHANGED)
    if image.dtype == np.uint16:  # 16-bit PNG/TIFF -> 8 bit
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.round(255 * (image - image.min()) / max(float(image.max() - image.min()), 1e-12)).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)  # alpha dropped
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise DatasetError(f"cannot read image '{path}': {image.shape[2]} channels (expected grey, RGB or RGBA)")
    original_hw = (int(image.shape[0]), int(image.shape[1]))
    image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    return image, original_hw


def resize_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
    """Resize a bool mask to a square of ``image_size``: an output pixel is a defect iff it overlaps one.

    Downscaled axes use area interpolation then ``> 0`` (nearest would drop a 3-px scratch on a 1024-px image at 256 px);
    upscaled axes stay nearest.
    """
    h, w = mask.shape
    out = mask.astype(np.float32)
    if image_size < h or image_size < w:
        area = cv2.resize(out, (min(w, image_size), min(h, image_size)), interpolation=cv2.INTER_AREA)
        out = (np.asarray(area) > 0).astype(np.float32)
    return np.asarray(cv2.resize(out, (image_size, image_size), interpolation=cv2.INTER_NEAREST)) > 0


def read_mask(path: str | Path, image_size: int, expected_hw: tuple[int, int], image_path: Path | None = None) -> np.ndarray:
    """Read a 0/255 mask (any value > 0 is a defect), check it matches its image's size, resize to bool
    (:func:`resize_mask`: every defect keeps its thinnest structure)."""
    path = Path(path)
    mask = _read(path, cv2.IMREAD_UNCHANGED)  # keeps 16-bit values: a 0/1 mask in 16 bits stays non-zero
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.shape != expected_hw:
        (h, w), (eh, ew) = mask.shape, expected_hw
        raise DatasetError(f"mask '{path}' is {w}x{h} but its image '{image_path}' is {ew}x{eh} (expected equal sizes)")
    resized = resize_mask(mask > 0, image_size)
    if mask.any() and not resized.any():  # cannot happen with area + "> 0"; kept as a guard on the contract
        logger.warning("defect mask '%s' is empty after resizing to %d px", path.name, image_size)
    return resized


@dataclass
class Category:
    """A loaded category: samples plus their images and masks cached in memory at the working size."""

    name: str
    root: Path
    image_size: int
    samples: list[Sample]
    images: np.ndarray  # uint8 (N, S, S, 3) RGB
    masks: np.ndarray  # bool (N, S, S); all False for good images
    original_sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) before resizing

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.label for s in self.samples if s.is_anomalous})

    def indices(self, split: str, label: str | None = None) -> np.ndarray:
        """Indices of the samples of a split (``"train"``/``"test"``), optionally of one label only."""
        return np.array(
            [i for i, s in enumerate(self.samples) if s.split == split and (label is None or s.label == label)], dtype=np.int64
        )

    def relative_paths(self, indices: np.ndarray | list[int]) -> list[str]:
        return [self.samples[i].relative_to(self.folder) for i in indices]


def _load_one(sample: Sample, image_size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    image, hw = read_image(sample.path, image_size)
    if sample.mask_path is None:
        mask = np.zeros((image_size, image_size), dtype=bool)
    else:
        mask = read_mask(sample.mask_path, image_size, hw, sample.path)
    return image, mask, hw


def load_category(
    root: str | Path, category: str, image_size: int = 256, progress: bool = False, workers: int | None = None
) -> Category:
    """Read and validate a whole category once (threaded: OpenCV releases the GIL while decoding).

    Args:
        root: the folder holding category folders.
        category: the category folder's name.
        image_size: the working size; images are resized to a square of this side.
        progress: show a progress bar.
        workers: decoding threads (default: the CPU count).

    Raises:
        DatasetError: anything wrong with the folder or its files (see :func:`make_mvtec_samples`).
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    root = Path(root)
    samples = make_mvtec_samples(root, category)
    n = len(samples)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=bool)
    sizes: list[tuple[int, int]] = [(0, 0)] * n
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = pool.map(lambda s: _load_one(s, image_size), samples)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=n, desc=f"reading {category}", unit="img")
        for i, (image, mask, hw) in enumerate(results):
            images[i], masks[i], sizes[i] = image, mask, hw
    empty = [s.relative_to(root / category) for s, m in zip(samples, masks) if s.is_anomalous and not m.any()]
    if empty:  # once per load (load_category_cached reads a category once per process)
        logger.warning(
            "%d defect image(s) have an empty mask at %d px; they still count as defective (label from the folder): %s",
            len(empty),
            image_size,
            ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else ""),
        )
    return Category(category, root, image_size, samples, images, masks, sizes)


@functools.lru_cache(maxsize=4)
def _load_category_cached(root: str, category: str, image_size: int) -> Category:
    loaded = load_category(root, category, image_size)
    loaded.images.flags.writeable = False  # shared between envs and evaluators in one process
    loaded.masks.flags.writeable = False
    return loaded


def load_category_cached(root: str | Path, category: str, image_size: int = 256) -> Category:
    """:func:`load_category`, read once per process (several envs, the evaluator and the trainer share it)."""
    return _load_category_cached(str(Path(root).resolve()), category, image_size)
