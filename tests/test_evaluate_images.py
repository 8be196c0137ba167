"""evaluate.py on what a user hands it: a run without its best checkpoint (the weights scored are named), a folder of
new images with an unreadable file, a folder named like an image and two files of one stem, and a run folder whose
training data are gone."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import evaluate
import train
from envs import mvtec
from tests.conftest import write_mvtec_tree
from tests.test_train import SMALL_ALGO, SMALL_ENV

# the default preset mixes in the global residual, whose basis inference needs
GLOBAL = "detector:{'map_global_weight': 0.1, 'global_size': 16}"


def train_run(data_root: Path, logs: Path, eval_freq: int) -> Path:
    args = ["--algo", "reinforce", "-n", "32", "--seed", "1", "-f", str(logs), "--data-root", str(data_root)]
    args += ["--category", "widget", "--eval-freq", str(eval_freq), "--save-freq", "16", "--no-progress", "-v", "0"]
    args += ["--no-evaluate", "--env-kwargs", *SMALL_ENV, GLOBAL, "--hyperparams", *SMALL_ALGO["reinforce"]]
    assert train.main(args) == 0
    return logs / "reinforce" / "MVTecPatch-v0_1"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mvtec_tree(root, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    return root


@pytest.fixture(scope="module")
def run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(data_root, tmp_path_factory.mktemp("logs"), eval_freq=16)


def test_without_best_weights_the_last_are_scored_and_named(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert evaluate.evaluate_run(run, out=tmp_path / "best") and not caplog.records
    assert json.loads((tmp_path / "best" / "metrics.json").read_text())["weights"] == "best_detector.pt"
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "best_detector.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="evaluate"):
        evaluate.evaluate_run(copy, out=tmp_path / "last")
    assert json.loads((tmp_path / "last" / "metrics.json").read_text())["weights"] == "detector.pt"
    assert "detector.pt" in caplog.text and "best_detector.pt" in caplog.text  # said in the log too
    rows = (tmp_path / "last" / "metrics.csv").read_text().splitlines()
    assert rows[0].endswith(",weights") and rows[1].endswith(",detector.pt")


def test_new_images_skip_unreadable_files_and_name_every_map(
    run: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "new"
    images.mkdir()
    source = sorted((data_root / "widget" / "test" / "hole").glob("*.png"))
    shutil.copy(source[0], images / "a.png")
    shutil.copy(source[1], images / "x.png")
    cv2.imwrite(str(images / "x.jpg"), cv2.imread(str(source[2])))  # same stem, other picture
    (images / "broken.png").write_bytes(b"not an image")
    (images / "dir.png").mkdir()  # a folder is not an image
    out = tmp_path / "maps"
    assert evaluate.main(["--run", str(run), "--images", str(images), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 3 and report["skipped"] == [str(images / "broken.png")]
    assert sorted(p.name for p in out.glob("*_map.png")) == ["a_map.png", "x_jpg_map.png", "x_png_map.png"]
    x_png, x_jpg = (cv2.imread(str(out / f"x_{ext}_map.png"), cv2.IMREAD_GRAYSCALE) for ext in ("png", "jpg"))
    assert not np.array_equal(x_png, x_jpg)  # two maps, not one written twice
    (images / "a.png").unlink()
    (images / "x.png").unlink()
    (images / "x.jpg").unlink()
    assert evaluate.main(["--run", str(run), "--images", str(images), "--out", str(out)]) == 2  # nothing readable
    assert "none of the 1 images" in capsys.readouterr().err


def test_maps_of_new_images_need_the_run_folder_alone(tmp_path: Path) -> None:
    """A run trained without validation (no best checkpoint, the global residual never used in training) still maps new
    images after its data set is deleted, with the maps the data would have given."""
    data = tmp_path / "data"
    write_mvtec_tree(data, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    run = train_run(data, tmp_path / "logs", eval_freq=0)
    images = tmp_path / "new"
    shutil.copytree(data / "widget" / "test" / "scratch", images)
    pictures = np.stack([mvtec.read_image(p, 64)[0] for p in sorted(images.glob("*.png"))])
    with_data = evaluate.predict_maps(evaluate.load_run(run)[3], pictures, "detector")
    shutil.rmtree(data)
    mvtec._load_category_cached.cache_clear()  # nothing read before stands in for the folder
    assert evaluate.main(["--run", str(run), "--images", str(images), "--out", str(tmp_path / "maps")]) == 0
    assert len(list((tmp_path / "maps").glob("*_map.png"))) == len(pictures)
    _, detector, image_size, weights = evaluate.load_model(run)
    assert weights.name == "detector.pt" and image_size == 64
    np.testing.assert_array_equal(evaluate.predict_maps(detector, pictures, "detector"), with_data)


def test_load_detector_maps_new_images_of_any_size_from_the_run_folder_alone(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _, data, split, reference = evaluate.load_run(run)  # the same weights, rebuilt with the training data
    images = data.images[split.test[:3]]  # uint8 (3, 64, 64, 3)
    detector = evaluate.load_detector(copy)
    assert detector.image_size == 64
    record = json.loads((copy / "best_detector.json").read_text())
    assert detector.threshold == pytest.approx(record["f1max_threshold"])
    result = detector.predict(images)
    expected = reference.anomaly_map(images)
    assert result.maps.shape == (3, 64, 64) and np.abs(result.maps - expected).max() <= 1e-6
    assert np.array_equal(result.scores, expected.reshape(3, -1).max(axis=1))
    assert result.masks is not None and np.array_equal(result.masks, expected >= detector.threshold)
    # one image, a larger one (resized as training did), a grey one, a file: each as the reader gives it
    assert np.abs(detector.predict(images[0]).maps - result.maps[:1]).max() <= 1e-6  # batch 1: other float sums
    big = cv2.resize(images[1], (96, 80), interpolation=cv2.INTER_LINEAR)
    assert detector.predict([big]).maps.shape == (1, 64, 64)
    cv2.imwrite(str(tmp_path / "part.png"), images[2][..., ::-1])
    assert np.abs(detector.predict([tmp_path / "part.png"]).maps - result.maps[2:]).max() <= 1e-6
    grey = detector.predict(images[0, ..., 0])
    assert grey.maps.shape == (1, 64, 64)
    with pytest.raises(ValueError, match=r"^image 0: expected uint8"):
        detector.predict(images.astype(np.float32))
    # the AE residual has no validation threshold; the last weights have none either
    ae = evaluate.load_detector(copy, method="ae")
    assert ae.threshold is None and ae.predict(images).masks is None
    (copy / "best_detector.pt").unlink()
    assert evaluate.load_detector(copy).threshold is None


def test_an_exported_model_maps_new_images_without_the_training_data(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    data = tmp_path / "data"
    write_mvtec_tree(data, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    run = train_run(data, tmp_path / "logs", eval_freq=16)
    new = tmp_path / "new"
    new.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):  # other sizes than the working one: resized as training did
        cv2.imwrite(str(new / f"part{i}.png"), rng.integers(0, 256, (80 + 8 * i, 72, 3), dtype=np.uint8))
    shutil.rmtree(data)
    model = tmp_path / "export" / "model.onnx"
    assert evaluate.main(["--run", str(run), "--export", str(model)]) == 0
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, 64, 64] and sidecar["threshold"] is not None
    detector = evaluate.load_detector(run)
    images = detector.prepare(sorted(new.iterdir()))  # uint8 (3, 64, 64, 3)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for batch in (images[:1], images):  # the batch axis is dynamic
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        maps = session.run(None, {"images": x})[0]
        assert maps.shape == (len(batch), 64, 64)
        assert np.abs(maps - detector.predict(batch).maps).max() <= 1e-4
    assert sidecar["threshold"] == pytest.approx(detector.threshold)
    # torch's own pad and upsampling ops are traced, not the CPU copy path (scatters: 2x slower in onnxruntime)
    onnx = pytest.importorskip("onnx")
    ops = {node.op_type for node in onnx.load(str(model)).graph.node}
    assert "Pad" in ops and not ops & {"ScatterND", "ScatterElements"}, sorted(ops)
    from models import padding

    assert padding.ENABLED  # back on for PyTorch's inference


def test_export_refuses_a_baseline_run_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    write_mvtec_tree(data, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    args = ["--method", "unet", "-n", "2", "-f", str(tmp_path / "logs"), "--data-root", str(data), "--category", "widget"]
    args += ["--no-progress", "-v", "0", "--no-evaluate", "--env-kwargs", "image_size:64", "--hyperparams", "crop_size:32"]
    assert train.main(args) == 0
    (run,) = (tmp_path / "logs" / "unet").iterdir()
    assert evaluate.main(["--run", str(run), "--export", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --export takes a run of the method") and "\n" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_map_variants_score_the_method_without_its_flips(run: Path, capsys: pytest.CaptureFixture) -> None:
    from benchmarks import map_variants

    assert map_variants.main(["--runs", str(run), "--variants", "map_predictor_flips=false"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[1]: line.split(" | ")[2:] for line in out.splitlines() if line.startswith(f"| {run}")}
    assert set(rows) == {"reference", "map_predictor_flips=false"}
    assert rows["reference"][:4] != rows["map_predictor_flips=false"][:4]
    assert "x faster" in out.split("map_predictor_flips=false: ")[1]
