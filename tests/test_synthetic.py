"""Tests for the embedded synthetic MVTec-layout category (envs/synthetic.py, envs/synthetic_render.py): determinism,
layout, exact masks, caching and the CLI. Small images and few of them, so the whole file runs in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from envs import synthetic
from envs.synthetic import (
    GENERATOR_VERSION,
    MARKER_NAME,
    SYNTHETIC_CATEGORY,
    SyntheticConfig,
    default_root,
    generate,
    is_complete,
    main,
)
from envs.synthetic_render import image_rngs, render_texture, to_uint8

SMALL = SyntheticConfig(image_size=64, n_train=3, n_test_good=2, n_per_defect=3)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.dtype == np.uint8 and mask.ndim == 2, path
    return mask


def _clean(config: SyntheticConfig, split: str, label: str, index: int) -> np.ndarray:
    """The defect-free rendering of one image, re-drawn from its texture stream. (H, W, 3) uint8 RGB."""
    texture_rng, _ = image_rngs(config.seed, split, label, index)
    return to_uint8(render_texture(texture_rng, config.image_size))


@pytest.fixture(scope="module")
def category(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("syn"), SMALL)


def test_generation_is_byte_identical_and_seed_dependent(tmp_path: Path, category: Path) -> None:
    again = generate(tmp_path / "a", SMALL)
    first, second = _files(category), _files(again)
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)

    other = _files(generate(tmp_path / "b", SyntheticConfig(**{**SMALL.__dict__, "seed": 1})))
    images = [name for name in first if name.endswith(".png")]
    assert sum(first[name] != other[name] for name in images) == len(images)


def test_image_does_not_depend_on_counts(tmp_path: Path, category: Path) -> None:
    # Per-image streams: fewer images or other defect types leave the images that remain unchanged.
    config = SyntheticConfig(image_size=64, n_train=1, n_test_good=0, n_per_defect=1, defect_types=("hole",))
    fewer = generate(tmp_path, config)
    for name in ("train/good/000.png", "test/hole/000.png", "ground_truth/hole/000_mask.png"):
        assert (fewer / name).read_bytes() == (category / name).read_bytes()


def test_layout(category: Path) -> None:
    assert category.name == SYNTHETIC_CATEGORY
    assert sorted(p.name for p in (category / "test").iterdir()) == sorted(("good", *SMALL.defect_types))
    assert sorted(p.name for p in (category / "ground_truth").iterdir()) == sorted(SMALL.defect_types)
    assert len(list((category / "train" / "good").glob("*.png"))) == SMALL.n_train
    assert len(list((category / "test" / "good").glob("*.png"))) == SMALL.n_test_good
    for image_path in (category / "train" / "good").glob("*.png"):
        assert _read_rgb(image_path).shape == (SMALL.image_size, SMALL.image_size, 3)
    for defect in SMALL.defect_types:
        images = sorted((category / "test" / defect).glob("*.png"))
        masks = sorted((category / "ground_truth" / defect).glob("*.png"))
        assert len(images) == len(masks) == SMALL.n_per_defect
        for image_path in images:
            mask = _read_mask(category / "ground_truth" / defect / f"{image_path.stem}_mask.png")
            assert mask.shape == _read_rgb(image_path).shape[:2]
            assert set(np.unique(mask)) == {0, 255}  # binary and non-empty
    marker = json.loads((category / MARKER_NAME).read_text())
    assert marker["version"] == GENERATOR_VERSION and marker["config"]["seed"] == SMALL.seed
    assert [p.name for p in category.parent.iterdir()] == [SYNTHETIC_CATEGORY]  # no temporary folders left behind


def test_masks_are_exactly_the_changed_pixels(category: Path) -> None:
    for index in range(SMALL.n_test_good):  # good images are the clean rendering, in RGB order
        assert np.array_equal(_read_rgb(category / "test" / "good" / f"{index:03d}.png"), _clean(SMALL, "test", "good", index))
    for defect in SMALL.defect_types:
        for index in range(SMALL.n_per_defect):
            image = _read_rgb(category / "test" / defect / f"{index:03d}.png")
            mask = _read_mask(category / "ground_truth" / defect / f"{index:03d}_mask.png") > 0
            changed = np.any(image != _clean(SMALL, "test", defect, index), axis=2)
            assert np.array_equal(changed, mask), (defect, index)


@pytest.mark.parametrize("defect", ["hole", "stain"])
def test_blob_masks_have_no_holes(category: Path, defect: str) -> None:
    for index in range(SMALL.n_per_defect):
        mask = _read_mask(category / "ground_truth" / defect / f"{index:03d}_mask.png")
        outside = np.pad(mask, 1)
        cv2.floodFill(outside, None, (0, 0), 255)  # fills the background reachable from the border
        assert (outside == 0).sum() == 0, (defect, index)


def test_thin_scratch_is_low_contrast(tmp_path: Path) -> None:
    config = SyntheticConfig(image_size=128, n_train=1, n_test_good=0, n_per_defect=4, defect_types=("thin_scratch", "hole"))
    folder = generate(tmp_path, config)
    for index in range(config.n_per_defect):
        image = _read_rgb(folder / "test" / "thin_scratch" / f"{index:03d}.png").astype(int)
        mask = _read_mask(folder / "ground_truth" / "thin_scratch" / f"{index:03d}_mask.png") > 0
        delta = np.abs(image - _clean(config, "test", "thin_scratch", index)).max(axis=2)[mask]
        assert 0.05 * 255 - 1 <= np.median(delta) <= 0.10 * 255 + 1
        assert mask.mean() < 0.02  # a 1 px line, not a blob


def test_default_root_reuses_then_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLBS_CACHE", str(tmp_path))
    root = default_root(config=SMALL)
    assert root == tmp_path / GENERATOR_VERSION
    marker = root / SYNTHETIC_CATEGORY / MARKER_NAME
    mtime = marker.stat().st_mtime_ns
    sentinel = root / SYNTHETIC_CATEGORY / "sentinel"
    sentinel.touch()

    real_generate = synthetic.generate
    monkeypatch.setattr(synthetic, "generate", lambda *args, **kwargs: pytest.fail("regenerated a complete cache"))
    assert default_root(config=SMALL) == root
    assert marker.stat().st_mtime_ns == mtime and sentinel.exists()

    monkeypatch.setattr(synthetic, "generate", real_generate)
    marker.unlink()  # as if generation had been interrupted before the marker
    assert default_root(config=SMALL) == root
    assert is_complete(root / SYNTHETIC_CATEGORY, SMALL) and not sentinel.exists()

    sentinel.touch()  # another config (here: seed) is not a match either
    other = SyntheticConfig(**{**SMALL.__dict__, "seed": 3})
    assert default_root(config=other) == root
    assert is_complete(root / SYNTHETIC_CATEGORY, other) and not is_complete(root / SYNTHETIC_CATEGORY, SMALL)
    assert not sentinel.exists()

    assert default_root(tmp_path / "explicit", config=SMALL) == tmp_path / "explicit" / GENERATOR_VERSION


def test_interrupted_generation_leaves_nothing_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_write = synthetic._write_png

    def failing_write(path: Path, image: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        real_write(path, image)

    monkeypatch.setattr(synthetic, "_write_png", failing_write)
    with pytest.raises(OSError, match="disk full"):
        generate(tmp_path, SMALL)
    assert not is_complete(tmp_path / SYNTHETIC_CATEGORY, SMALL)
    assert list(tmp_path.iterdir()) == []  # the temporary folder was removed


def test_bad_config_lists_choices() -> None:
    with pytest.raises(ValueError, match="scratch"):
        SyntheticConfig(defect_types=("dent",))
    with pytest.raises(ValueError, match="image_size"):
        SyntheticConfig(image_size=8)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--out",
        str(tmp_path),
        "--image-size",
        "64",
        "--n-train",
        "2",
        "--n-test-good",
        "1",
        "--n-per-defect",
        "2",
        "--defect-types",
        "scratch",
        "crack",
        "--seed",
        "5",
    ]
    assert main(argv) == 0
    folder = tmp_path / SYNTHETIC_CATEGORY
    assert capsys.readouterr().out.strip() == str(folder)
    assert sorted(p.name for p in (folder / "test").iterdir()) == ["crack", "good", "scratch"]
    assert len(list((folder / "ground_truth" / "crack").glob("*_mask.png"))) == 2
    expected = SyntheticConfig(
        seed=5, image_size=64, n_train=2, n_test_good=1, n_per_defect=2, defect_types=("scratch", "crack")
    )
    assert is_complete(folder, expected)
