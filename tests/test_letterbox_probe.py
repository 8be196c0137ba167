"""benchmarks/letterbox_probe.py: an aspect-keeping copy of a category keeps every label, and its maps are scored on
the original category's pixels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from envs.mvtec import load_category
from tests.conftest import write_mvtec_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import letterbox_probe  # noqa: E402


@pytest.mark.parametrize(("hw", "box"), [((30, 90), (10, 0, 11, 32)), ((90, 30), (0, 10, 32, 11)), ((32, 32), (0, 0, 32, 32))])
def test_the_box_keeps_the_aspect(hw: tuple[int, int], box: tuple[int, int, int, int]) -> None:
    assert letterbox_probe.letterbox_box(*hw, 32) == box


@pytest.mark.parametrize("hw", [(30, 90), (4, 200), (1, 50), (200, 7)])
def test_the_padding_reflects_the_image_even_past_its_side(hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(*hw, 3), dtype=np.uint8)
    out = letterbox_probe.letterbox(image, 64, cv2.INTER_AREA)
    y0, x0, h, w = letterbox_probe.letterbox_box(*hw, 64)
    assert out.shape == (64, 64, 3)
    inside = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out[y0 : y0 + h, x0 : x0 + w], inside)  # the image itself, scaled by one factor
    if h > 1 and w > 1 and y0:  # the row above the image mirrors the row below its first one
        assert np.array_equal(out[y0 - 1, x0 : x0 + w], inside[1])
    if h > 1 and w > 1 and x0:
        assert np.array_equal(out[y0 : y0 + h, x0 - 1], inside[:, 1])


def test_the_copy_keeps_images_masks_and_boxes_aligned(tmp_path: Path) -> None:
    root = tmp_path / "data"
    folder = write_mvtec_tree(root, "widget", size_hw=(30, 90))
    dst = letterbox_probe.write_letterboxed(root, "widget", tmp_path / "lb", size=32)
    boxes = json.loads((dst / "boxes.json").read_text())
    copy = load_category(tmp_path / "lb", "widget", 32)  # the reader takes the copy as it is (32 px squares)
    assert len(boxes) == len(copy.samples) and copy.masks.any()
    for sample, image, mask in zip(copy.samples, copy.images, copy.masks):
        y0, x0, h, w = boxes[sample.relative_to(dst)]
        assert (y0, x0, h, w) == (10, 0, 11, 32)
        original = cv2.imread(str(folder / sample.relative_to(dst)), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(
            image[y0 : y0 + h, x0 : x0 + w], cv2.resize(original, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1]
        )
        if not sample.is_anomalous:
            assert not mask.any()
            continue
        source = cv2.imread(str(sample.mask_path).replace(str(dst), str(folder)), cv2.IMREAD_GRAYSCALE) > 0
        expected = cv2.resize(source.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0  # the reader's rule
        assert np.array_equal(mask[y0 : y0 + h, x0 : x0 + w], expected)
        assert np.array_equal(mask[y0 - 1], mask[y0 + 1]) and np.array_equal(mask[y0 + h], mask[y0 + h - 2])  # mirrored
        grey = image.mean(axis=-1)
        assert grey[mask].mean() > grey[~mask].mean() + 40  # the bright defect lies under its mask, padding included
    with pytest.raises(FileExistsError):
        letterbox_probe.write_letterboxed(root, "widget", tmp_path / "lb", size=32)


def test_maps_are_scored_on_the_original_pixels(tmp_path: Path, monkeypatch, capsys) -> None:
    """A detector whose map is the copy's own mask scores ~1 in the original frame, but only once each map is cropped
    to its box: scored uncropped against the original masks it is far below."""
    root = tmp_path / "data"
    write_mvtec_tree(root, "widget", size_hw=(40, 100), defects={"scratch": 12, "hole": 12}, n_test_good=8)
    letterbox_probe.write_letterboxed(root, "widget", tmp_path / "lb", size=256)
    copy = load_category(tmp_path / "lb", "widget", 256)
    by_image = {img.tobytes(): mask.astype(np.float32) for img, mask in zip(copy.images, copy.masks)}

    class MaskDetector:
        def anomaly_map(self, images: np.ndarray) -> np.ndarray:
            return np.stack([cv2.GaussianBlur(by_image[x.tobytes()], (0, 0), 1.0) for x in images])

    import models.detector

    monkeypatch.setattr(models.detector.Detector, "from_checkpoint", staticmethod(lambda path, device="cpu": MaskDetector()))
    [row] = letterbox_probe.score(str(tmp_path / "lb"), str(root), "widget", 0, ["fake.pt"])
    assert row["letterboxed"] and row["pixel_auroc"] > 0.99 and row["pixel_f1max"] > 0.8
    assert set(row["per_type_auroc"]) == {"hole", "scratch"} and min(row["per_type_auroc"].values()) > 0.99
    (tmp_path / "lb" / "widget" / "boxes.json").unlink()  # the same maps taken to be in the reader's frame already
    [uncropped] = letterbox_probe.score(str(tmp_path / "lb"), str(root), "widget", 0, ["fake.pt"])
    assert uncropped["pixel_f1max"] < 0.6
    assert (
        letterbox_probe.main(
            [
                "score",
                "--data-root",
                str(tmp_path / "nope"),
                "--original-root",
                str(root),
                "--category",
                "widget",
                "--seed",
                "0",
                "--checkpoints",
                "x.pt",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith("error: ")


def test_a_broken_mask_or_box_list_is_one_line_naming_the_file(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    folder = write_mvtec_tree(root, "widget", size_hw=(30, 90))
    mask = next((folder / "ground_truth").rglob("*_mask.png"))
    cv2.imwrite(str(mask), np.zeros((30, 40), np.uint8))
    argv = ["write", "--data-root", str(root), "--category", "widget", "--out", str(tmp_path / "lb")]
    assert letterbox_probe.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and mask.name in err and "30x90" in err and "\n" not in err
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"test/good/000.png": [0, 0, 8, 8]}')
    with pytest.raises(letterbox_probe.DatasetError, match="boxes.json"):
        letterbox_probe._read_boxes(boxes, ["test/good/000.png", "test/good/001.png"])
    boxes.write_text("not json")
    with pytest.raises(letterbox_probe.DatasetError, match="boxes.json"):
        letterbox_probe._read_boxes(boxes, ["test/good/000.png"])
    assert letterbox_probe._read_boxes(tmp_path / "none.json", ["x.png"]) is None
