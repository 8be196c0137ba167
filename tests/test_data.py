"""MVTec AD reader, split protocol and the dry run's bad-input errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import train
from envs.mvtec import GOOD, DatasetError, load_category, make_mvtec_samples
from envs.split import SplitConfig, make_split, split_json
from tests.conftest import write_mvtec_tree


@pytest.mark.parametrize("grey", [False, True])
def test_reader_loads_non_square_grey_and_rgb(tmp_path: Path, grey: bool) -> None:
    write_mvtec_tree(tmp_path, grey=grey, size_hw=(40, 60))
    cat = load_category(tmp_path, "widget", image_size=32)
    n = 6 + 4 + 9 + 8
    assert cat.images.shape == (n, 32, 32, 3) and cat.images.dtype == np.uint8
    assert cat.masks.shape == (n, 32, 32) and cat.masks.dtype == bool
    assert cat.defect_types == ["hole", "scratch"]
    assert cat.original_sizes[0] == (40, 60)
    if grey:  # grey is repeated into 3 identical channels
        assert np.array_equal(cat.images[..., 0], cat.images[..., 2])
    good = [i for i, s in enumerate(cat.samples) if s.label == GOOD]
    assert not cat.masks[good].any()
    defect = [i for i, s in enumerate(cat.samples) if s.label != GOOD]
    assert all(cat.masks[i].any() for i in defect)
    # the defect (value 250) sits where the mask is, after independent resizing of image and mask
    i = defect[0]
    assert cat.images[i][cat.masks[i]].mean() > 200 > cat.images[i][~cat.masks[i]].mean()


def test_reader_rgb_channel_order_and_rgba(tmp_path: Path) -> None:
    write_mvtec_tree(tmp_path)
    bgra = np.zeros((40, 60, 4), dtype=np.uint8)
    bgra[..., 0], bgra[..., 3] = 255, 128  # pure blue in BGR order, half alpha
    cv2.imwrite(str(tmp_path / "widget/train/good/000.png"), bgra)
    cat = load_category(tmp_path, "widget", image_size=16)
    assert tuple(cat.images[0, 8, 8]) == (0, 0, 255)  # RGB: blue last


def test_all_zero_mask_is_accepted(tmp_path: Path) -> None:
    folder = write_mvtec_tree(tmp_path)
    cv2.imwrite(str(folder / "ground_truth/hole/000_mask.png"), np.zeros((40, 60), np.uint8))
    cat = load_category(tmp_path, "widget", image_size=16)
    assert sum(not m.any() for s, m in zip(cat.samples, cat.masks) if s.label == "hole") == 1


def test_sixteen_bit_mask_with_values_one_is_not_empty(tmp_path: Path) -> None:
    folder = write_mvtec_tree(tmp_path)
    mask = np.zeros((40, 60), np.uint16)
    mask[10:20, 10:20] = 1
    cv2.imwrite(str(folder / "ground_truth/hole/000_mask.png"), mask)
    cat = load_category(tmp_path, "widget", image_size=60)
    i = next(i for i, s in enumerate(cat.samples) if s.label == "hole" and s.path.stem == "000")
    assert cat.masks[i].sum() > 0


def test_samples_pair_masks_by_stem(mvtec_root: Path) -> None:
    samples = make_mvtec_samples(mvtec_root, "widget")
    for s in samples:
        if s.label != GOOD:
            assert s.mask_path is not None and s.mask_path.name == f"{s.path.stem}_mask.png"
            assert s.mask_path.parent.name == s.label


def test_split_is_deterministic_and_leak_free(mvtec_root: Path) -> None:
    cat = load_category(mvtec_root, "widget", image_size=16)
    a = make_split(cat, SplitConfig(k_shot=3, normal_pool=2, seed=7))
    b = make_split(cat, SplitConfig(k_shot=3, normal_pool=2, seed=7))
    c = make_split(cat, SplitConfig(k_shot=3, normal_pool=2, seed=8))
    assert split_json(a, cat) == split_json(b, cat)
    assert split_json(a, cat) != split_json(c, cat)
    labelled, val, test = set(a.labelled), set(a.val), set(a.test)
    assert not labelled & val and not labelled & test and not val & test
    assert labelled | val | test == set(cat.indices("test").tolist())  # every test image used exactly once
    per_type = {d: sum(cat.samples[i].label == d for i in a.labelled) for d in cat.defect_types}
    assert per_type == {"hole": 3, "scratch": 3}
    assert set(a.normal_pool) <= set(a.train) and len(a.normal_pool) == 2
    assert all(cat.samples[i].label == GOOD for i in a.train)
    for defect in cat.defect_types:  # stratified: every type in both val and test
        assert any(cat.samples[i].label == defect for i in a.val)
        assert any(cat.samples[i].label == defect for i in a.test)


def test_split_with_too_few_images_warns_and_keeps_two_for_evaluation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    write_mvtec_tree(tmp_path, defects={"rare": 4, "common": 10})
    cat = load_category(tmp_path, "widget", image_size=16)
    with caplog.at_level("WARNING", logger="envs.split"):
        split = make_split(cat, SplitConfig(k_shot=5))
    assert [r.getMessage() for r in caplog.records if "'rare' has 4 images" in r.getMessage()] != []
    assert len(caplog.records) == 1 and not [w for w in recwarn if "'rare'" in str(w.message)]  # said once
    labels = [cat.samples[i].label for i in split.labelled]
    assert labels.count("rare") == 2 and labels.count("common") == 5
    assert sum(cat.samples[i].label == "rare" for i in split.val) == 1
    assert sum(cat.samples[i].label == "rare" for i in split.test) == 1


def test_k_shot_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="k_shot"):
        SplitConfig(k_shot=0)


def _break_no_train(folder: Path) -> None:
    shutil.rmtree(folder / "train/good")
    (folder / "train/good").mkdir()


def _break_missing_mask(folder: Path) -> None:
    (folder / "ground_truth/hole/003_mask.png").unlink()


def _break_mask_size(folder: Path) -> None:
    cv2.imwrite(str(folder / "ground_truth/hole/002_mask.png"), np.zeros((20, 20), np.uint8))


def _break_truncated(folder: Path) -> None:
    path = folder / "test/good/001.png"
    path.write_bytes(path.read_bytes()[:60])


def _break_not_an_image(folder: Path) -> None:
    (folder / "train/good/002.png").write_text("not a png")


@pytest.mark.parametrize(
    "breaker, expected",
    [
        (_break_no_train, "train/good' has no images"),
        (_break_missing_mask, "003_mask.png' not found"),
        (_break_mask_size, "002_mask.png' is 20x20 but its image"),
        (_break_truncated, "001.png'"),
        (_break_not_an_image, "002.png'"),
    ],
)
def test_broken_folders_give_one_line_errors(mvtec_root: Path, breaker, expected: str, capsys) -> None:
    breaker(mvtec_root / "widget")
    with pytest.raises(DatasetError, match=expected.replace(".", r"\.")):
        load_category(mvtec_root, "widget", image_size=16)
    code = train.main(["--data-root", str(mvtec_root), "--category", "widget", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_missing_root_and_unknown_category(mvtec_root: Path, capsys) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_category(mvtec_root / "nope", "widget")
    with pytest.raises(DatasetError, match=r"category 'bolt' not found .*categories found: widget"):
        load_category(mvtec_root, "bolt")
    assert train.main(["--data-root", str(mvtec_root), "--category", "bolt", "--dry-run"]) != 0
    assert "widget" in capsys.readouterr().err


def test_dry_run_prints_split_summary(mvtec_root: Path, capsys) -> None:
    code = train.main(["--data-root", str(mvtec_root), "--category", "widget", "--image-size", "128", "--dry-run"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["image_size"] == 128
    assert summary["counts"]["train"] == 6 and summary["counts"]["labelled"] == 10
    assert summary["per_type"]["labelled"] == {"hole": 5, "scratch": 5}
    total = sum(summary["counts"][k] for k in ("labelled", "val", "test"))
    assert total == 4 + 9 + 8


def test_loading_data_and_building_a_detector_do_not_import_the_env(mvtec_root: Path) -> None:
    """evaluate.py and the baselines load a split and build its detector without the gymnasium env module."""
    code = (
        "import sys\n"
        "from envs.config import MVTecPatchConfig, detector_config\n"
        "from envs.data import load_env_data\n"
        "from models.detector import build_detector\n"
        f"config = MVTecPatchConfig(data_root={str(mvtec_root)!r}, category='widget', image_size=32, crop_size=32,"
        " patch_size=16, k_shot=2, normal_pool=2)\n"
        "category, split = load_env_data(config)\n"
        "detector = build_detector(detector_config(config), category, split, seed=config.seed)\n"
        "assert detector.anomaly_map(category.images[split.test][:1]).shape == (1, 32, 32)\n"
        "assert 'envs.mvtec_patch' not in sys.modules, 'the env module was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_env_config_validates_its_detector_dict_at_once() -> None:
    """A bad detector value fails when the env config is made (naming the field), before any data is read."""
    from envs.config import MVTecPatchConfig, detector_config

    with pytest.raises(ValueError, match="pred_batch_size"):
        MVTecPatchConfig(detector={"pred_batch_size": 0})
    with pytest.raises(ValueError, match="unknown DetectorConfig keys \\['pred_batch'\\]"):
        MVTecPatchConfig(detector={"pred_batch": 4})
    with pytest.raises(ValueError, match="env's own \\(patch_size\\)"):
        MVTecPatchConfig(detector={"patch_size": 32})
    config = detector_config(MVTecPatchConfig(patch_size=32, seed=4, detector={"predictor": {"width": 8}}))
    assert config.patch_size == 32 and config.predictor.width == 8
