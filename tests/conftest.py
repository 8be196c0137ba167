"""Shared fixtures: a tiny fake MVTec AD tree written under tmp_path (like anomalib's DummyImageDatasetGenerator)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

# the synthetic category and train.py's warm-up cache live in the user's cache folder: the tests use their own
os.environ.setdefault("RLBS_CACHE", tempfile.mkdtemp(prefix="rl-batch-sampler-tests-"))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> None:
    """Tiny convolutions run faster on one thread, and two threads on a busy 2-core machine are many times slower."""
    torch.set_num_threads(1)


def write_mvtec_tree(
    root: Path,
    category: str = "widget",
    *,
    n_train: int = 6,
    n_test_good: int = 4,
    defects: dict[str, int] | None = None,
    size_hw: tuple[int, int] = (40, 60),
    grey: bool = False,
    seed: int = 0,
) -> Path:
    """Write a small category in MVTec layout; non-square images; each defect a bright square with its mask."""
    defects = {"scratch": 9, "hole": 8} if defects is None else defects
    rng = np.random.default_rng(seed)
    h, w = size_hw
    folder = root / category

    def image() -> np.ndarray:
        img = rng.integers(60, 120, size=(h, w) if grey else (h, w, 3), dtype=np.uint8)
        return img

    for sub, n in (("train/good", n_train), ("test/good", n_test_good)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(folder / sub / f"{i:03d}.png"), image())
    for defect, n in defects.items():
        (folder / "test" / defect).mkdir(parents=True, exist_ok=True)
        (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = image()
            mask = np.zeros((h, w), dtype=np.uint8)
            y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            mask[y : y + 8, x : x + 8] = 255
            img[mask > 0] = 250
            cv2.imwrite(str(folder / "test" / defect / f"{i:03d}.png"), img)
            cv2.imwrite(str(folder / "ground_truth" / defect / f"{i:03d}_mask.png"), mask)
    return folder


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    """A dataset root with one RGB category 'widget' (40x60 images)."""
    write_mvtec_tree(tmp_path)
    return tmp_path
