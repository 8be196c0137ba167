"""benchmarks/resize_category.py: a pre-resized copy of a category loads to the original's arrays, file for file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import resize_category
from envs.mvtec import load_category
from tests.conftest import write_mvtec_tree


@pytest.mark.parametrize("grey", [True, False])
def test_the_copy_loads_to_the_same_images_masks_and_names(tmp_path: Path, grey: bool) -> None:
    root = tmp_path / "data"
    write_mvtec_tree(root, "widget", size_hw=(40, 60), grey=grey)
    dst = resize_category.write_resized(root, "widget", tmp_path / "small", image_size=32)
    original, copy = load_category(root, "widget", 32), load_category(tmp_path / "small", "widget", 32)
    assert [s.relative_to(dst) for s in copy.samples] == [s.relative_to(root / "widget") for s in original.samples]
    assert np.array_equal(copy.images, original.images) and np.array_equal(copy.masks, original.masks)
    assert copy.masks.any() and all(hw == (32, 32) for hw in copy.original_sizes)


def test_an_existing_output_is_not_overwritten_and_a_broken_input_is_one_line(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    write_mvtec_tree(root, "widget")
    (tmp_path / "out" / "widget").mkdir(parents=True)
    argv = ["--data-root", str(root), "--category", "widget", "--out", str(tmp_path / "out")]
    assert resize_category.main(argv) == 2
    assert "exists already" in capsys.readouterr().err and not any((tmp_path / "out" / "widget").iterdir())
    assert resize_category.main(["--data-root", str(root), "--category", "nope", "--out", str(tmp_path / "o2")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
