"""The scripts of benchmarks/ and experiments/ on a tiny trained run: they load it as evaluate.py does, reproduce its
own figures where they should, and refuse bad input in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import evaluate
import train
from tests.conftest import write_mvtec_tree
from tests.test_train import run_args


@pytest.fixture(scope="module")
def reinforce_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished REINFORCE run of a few steps on a tiny category (the configuration of tests/test_train.py)."""
    root = tmp_path_factory.mktemp("data")
    write_mvtec_tree(root, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    logs = tmp_path_factory.mktemp("logs")
    assert train.main(run_args(root, logs, "reinforce", 48)) == 0
    return logs / "reinforce" / "MVTecPatch-v0_1"


def test_map_options_reproduce_the_runs_own_metrics(reinforce_run: Path) -> None:
    from experiments import map_options

    detector_config = yaml.safe_load((reinforce_run / "config.yml").read_text())["env_kwargs"]["detector"]
    tta = {v: k for k, v in map_options.TTA.items()}[bool(detector_config.get("map_predictor_flips", False))]
    own = (tta, float(detector_config.get("map_smoothing_sigma", 0.0)), float(detector_config.get("map_global_weight", 0.0)))
    rows = map_options.run_rows(reinforce_run, sorted({0.0, 8.0, own[1]}), weights=tuple(sorted({0.0, own[2]})))
    assert {(r["split"], r["tta"]) for r in rows} == {(s, t) for s in ("val", "test") for t in map_options.TTA}
    metrics = json.loads((reinforce_run / "metrics.json").read_text())
    (same,) = [r for r in rows if r["split"] == "test" and (r["tta"], r["sigma"], r["global"]) == own]
    assert same["pixel_auroc"] == pytest.approx(metrics["pixel_auroc"], abs=1e-4)  # the options are the run's own
    assert same["pixel_f1max"] == pytest.approx(metrics["pixel_f1max"], abs=1e-4)
    assert len({r["pixel_auroc"] for r in rows if r["split"] == "test"}) > 1  # and the others change the maps
    assert "| TTA | scale | global | closing | sigma |" in map_options.table(rows, "val")
    # late fusion with the global residual: a positive weight changes the map that weight 0 leaves as the predictor's
    fused = map_options.run_rows(reinforce_run, [own[1]], [own[0]], weights=(0.0, 0.5), pca_size=8, pca_components=4)
    (w0,) = [r for r in fused if r["split"] == "test" and r["global"] == 0.0]
    (w5,) = [r for r in fused if r["split"] == "test" and r["global"] == 0.5]
    assert [w5[k] for k in map_options.KEYS] != [w0[k] for k in map_options.KEYS]
    # the run's own PCA when the asked size matches it, another one (fitted there) when not
    size, components = int(detector_config.get("global_size", 64)), int(detector_config.get("global_components", 256))
    mine = map_options.run_rows(reinforce_run, [own[1]], [own[0]], weights=(0.5,), pca_size=size, pca_components=components)
    (m5,) = [r for r in mine if r["split"] == "test"]
    assert [m5[k] for k in map_options.KEYS] != [w5[k] for k in map_options.KEYS]
    assert (m5["global_size"], w5["global_size"]) == (size, 8)
    # closing: 0 is the run's own map; a wide disc raises scores between lit pixels and so changes the metrics
    closed = map_options.run_rows(reinforce_run, [own[1]], [own[0]], weights=(own[2],), closings=(0, 33))
    (c0,) = [r for r in closed if r["split"] == "test" and r["closing"] == 0]
    (c33,) = [r for r in closed if r["split"] == "test" and r["closing"] == 33]
    assert c0["pixel_auroc"] == pytest.approx(metrics["pixel_auroc"], abs=1e-4)
    assert [c33[k] for k in map_options.KEYS] != [c0[k] for k in map_options.KEYS]
    # a second scale: 1 is the run's own map; 0.5 mixes in the half-size image's map and so changes the metrics
    both = map_options.run_rows(reinforce_run, [own[1]], [own[0]], weights=(own[2],), scales=(1.0, 0.5))
    (s1,) = [r for r in both if r["split"] == "test" and r["scale"] == 1.0]
    (s5,) = [r for r in both if r["split"] == "test" and r["scale"] == 0.5]
    assert s1["pixel_auroc"] == pytest.approx(metrics["pixel_auroc"], abs=1e-4)
    assert [s5[k] for k in map_options.KEYS] != [s1[k] for k in map_options.KEYS]
    assert "| flips4 | 0.5 |" in map_options.table(both, "test") or "| none | 0.5 |" in map_options.table(both, "test")


def test_scaled_maps_runs_the_detector_on_the_resized_image_and_resizes_its_map_back() -> None:
    from experiments import map_options

    class Brightness:  # a stand-in detector whose map is the grey image: the resizing is all that is tested
        sizes: list[tuple[int, int]] = []

        def anomaly_map(self, images: np.ndarray) -> np.ndarray:
            self.sizes.append(images.shape[1:3])
            return images.mean(-1).astype(np.float32) / 255.0

    ramp = np.tile(np.linspace(0, 255, 96, dtype=np.float32), (64, 1))  # (64, 96): smooth, so resizing keeps it
    images = np.repeat(ramp[None, ..., None], 3, axis=-1).astype(np.uint8)  # (1, 64, 96, 3)
    detector = Brightness()
    maps = map_options.scaled_maps(detector, images, 0.4)  # type: ignore[arg-type]
    assert maps.shape == (1, 64, 96) and maps.dtype == np.float32
    assert detector.sizes == [(32, 32)]  # 25.6 x 38.4 rounded to multiples of 16
    assert np.abs(maps[0] - ramp / 255.0).max() < 0.05  # the map is back at full size and in place
    assert np.abs(maps[0] - ramp / 255.0).mean() < 0.02


def test_map_options_rejects_bad_options_before_loading_a_run(tmp_path: Path, capsys) -> None:
    from experiments import map_options

    missing = str(tmp_path / "no-run")  # never read: the options are checked first
    for flags, expected in (
        (["--global-size", "0"], "--global-size and --global-components must be >= 1"),
        (["--global-components", "-1"], "--global-size and --global-components must be >= 1"),
        (["--global-weights", "1.5"], "--global-weights must be in [0, 1]"),
        (["--sigmas", "-1"], "--sigmas must be >= 0"),
        (["--closings", "-3"], "--closings must be >= 0"),
        (["--scales", "0"], "--scales must be in (0, 2]"),
    ):
        assert map_options.main(["--runs", missing, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and expected in err and "\n" not in err, err


def test_map_options_chooses_sigma_per_run_on_the_validation_split() -> None:
    from experiments import map_options

    def row(run: str, split: str, sigma: float, f1: float) -> dict:
        scores = {key: 0.5 for key in map_options.KEYS} | {"pixel_f1max": f1}
        return {"run": run, "category": "widget", "split": split, "tta": "flips4", "global": 0.0, "sigma": sigma} | scores

    rows = [
        row("a", "val", 4.0, 0.3), row("a", "val", 16.0, 0.4), row("a", "test", 4.0, 0.9), row("a", "test", 16.0, 0.1),
        row("b", "val", 4.0, 0.4), row("b", "val", 16.0, 0.4), row("b", "test", 4.0, 0.7), row("b", "test", 16.0, 0.2),
    ]  # fmt: skip
    line = map_options.chosen_table(rows, "pixel_f1max").splitlines()[-1]
    # run a: 16 by validation (its test is worse: the choice never looks at the test split); run b: a tie keeps 4
    assert line.startswith("| flips4 | 1 | 0 | 0 | widget | 2 | 16, 4 | 0.500 / 0.400 / 0.500 / 0.500 |")
    assert line.endswith("| 4: 0.500 / 0.800 / 0.500 / 0.500 |")  # the best fixed sigma on the test mean, for reference


def test_per_type_scores_every_defect_type_of_the_test_split(reinforce_run: Path, capsys) -> None:
    from benchmarks import per_type

    split = json.loads((reinforce_run / "split.json").read_text())
    test_types = {Path(p).parent.name for p in split["test"]} - {"good"}
    scores = per_type.per_type(reinforce_run)
    assert set(scores) == test_types
    assert all(0.0 <= auroc <= 1.0 and 0.0 <= f1 <= 1.0 and pixels > 0 for auroc, f1, pixels in scores.values())
    assert per_type.main(["--runs", str(reinforce_run.parent)]) == 2  # not a run folder: a one-line error
    assert capsys.readouterr().err.startswith("error:")


def test_per_type_says_which_images_cost_the_pooled_auroc(reinforce_run: Path, tmp_path: Path, capsys) -> None:
    from benchmarks import per_type

    grid = tmp_path / "costliest.png"
    assert per_type.main(["--runs", str(reinforce_run), "--images", "2", "--grid", str(grid)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((reinforce_run / "metrics.json").read_text())
    assert f"pooled pixel AUROC {metrics['pixel_auroc']:.4f}" in out  # the run's own test figure, decomposed
    assert "costliest 2 images, missed:" in out and "costliest 2 images, false alarms:" in out
    listed = sum(line.split(": ", 1)[1].count(".png") for line in out.splitlines() if " images, " in line)
    image = cv2.imread(str(grid))
    size = yaml.safe_load((reinforce_run / "config.yml").read_text())["env_kwargs"]["image_size"]
    row = evaluate.TITLE_HEIGHT + size + 4  # a title strip, the image, a gap
    assert listed >= 2 and image is not None and image.shape[0] == 22 + listed * row  # a header, then one row per image
    with pytest.raises(SystemExit):  # a grid is of one run's listed images
        per_type.main(["--runs", str(reinforce_run), str(reinforce_run), "--grid", str(grid)])
    with pytest.raises(SystemExit):  # and a PNG
        per_type.main(["--runs", str(reinforce_run), "--grid", str(tmp_path / "costliest.txt")])


def test_overrides_set_split_fields_on_the_env_and_the_rest_on_the_detector() -> None:
    from benchmarks.overrides import parse_sets

    env, det = parse_sets(["k_shot=15", "pretrain_epochs=3", "ae.norm=none", "pred_lr=1e-3", "map_predictor_flips=true"])
    assert env == {"k_shot": 15, "pretrain_epochs": 3}
    assert det == {"ae": {"norm": "none"}, "pred_lr": 1e-3, "map_predictor_flips": True}
    with pytest.raises(SystemExit, match="key=value"):
        parse_sets(["k_shot"])


def test_detector_quality_rejects_an_unknown_field_in_one_line(tmp_path: Path) -> None:
    from experiments import detector_quality

    with pytest.raises(SystemExit, match="error: .*no_such_field"):
        detector_quality.main(
            ["--data-root", str(tmp_path), "--category", "x", "--set", "no_such_field=1", "--log", str(tmp_path / "l")]
        )


def test_detector_quality_rejects_an_invalid_value_in_one_line(tmp_path: Path) -> None:
    from experiments import detector_quality

    with pytest.raises(SystemExit, match="error: pred_focal_gamma must be >= 0, got -1"):
        detector_quality.main(
            ["--data-root", str(tmp_path), "--category", "x", "--set", "pred_focal_gamma=-1", "--log", str(tmp_path / "l")]
        )


def test_detector_quality_warmup_curve_scores_every_n_updates(mvtec_root: Path, tmp_path: Path) -> None:
    from experiments import detector_quality

    log = tmp_path / "dq.jsonl"
    sets = ["image_size=128", "pretrain_epochs=1", "predictor_warmup_updates=5", "k_shot=2", "pred_batch_size=2"]
    argv = ["--data-root", str(mvtec_root), "--category", "widget", "--cycles", "0", "--log", str(log), "--set", *sets]
    assert detector_quality.main([*argv, "--warmup-curve", "2"]) == 0
    result = json.loads(log.read_text().splitlines()[-1])
    assert [point[0] for point in result["warmup_curve"]] == [2, 4, 5]  # the last chunk stops at the warm-up's length
    assert all(0.0 <= v <= 1.0 for point in result["warmup_curve"] for v in point[1:])
    # the curve only scores: the detector trains exactly as without it (same final test figures)
    assert detector_quality.main([*argv, "--save-dir", str(tmp_path / "best")]) == 0
    plain = json.loads(log.read_text().splitlines()[-1])
    assert plain["warmup_curve"] == [] and plain["test"] == result["test"]
    # --save-dir keeps the best detector of each seed and stream, loadable on its own
    from models.detector import Detector

    saved = Detector.from_checkpoint(tmp_path / "best" / "seed0_stream0.pt")
    assert saved.predictor_updates == 5  # the best is the warmed-up detector: no cycles after it
    with pytest.raises(SystemExit):  # a negative interval would never advance the warm-up: refused in one line
        detector_quality.main([*argv, "--warmup-curve", "-1"])


def test_score_on_reference_scores_a_subset_and_refuses_images_the_run_did_not_keep_for_test(
    reinforce_run: Path, tmp_path: Path, capsys
) -> None:
    from experiments import score_on_reference

    files = score_on_reference.test_files(reinforce_run)
    own = score_on_reference.score_on(reinforce_run, files)
    metrics = json.loads((reinforce_run / "metrics.json").read_text())
    assert own["pixel_auroc"] == pytest.approx(metrics["pixel_auroc"], abs=1e-4)  # its own test split: its own figures
    assert own["pixel_f1max"] == pytest.approx(metrics["pixel_f1max"], abs=1e-4)
    defective = [f for f in files if not f.startswith("test/good/")]
    subset = [f for f in files if f.startswith("test/good/")] + defective[: len(defective) // 2]
    assert score_on_reference.score_on(reinforce_run, subset)["pixel_auroc"] != own["pixel_auroc"]  # a subset is scored
    # a reference whose test split holds a validation image of the run: refused, one line
    split = json.loads((reinforce_run / "split.json").read_text())
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "split.json").write_text(json.dumps({**split, "test": files + split["val"][:1]}))
    assert score_on_reference.main(["--reference", str(reference), "--runs", str(reinforce_run)]) == 2
    assert "not in this run's test split" in capsys.readouterr().err


def test_bench_detector_takes_detector_fields_and_rejects_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_detector

    small = ["--size", "64", "--train-images", "4", "--pool", "4", "--repeats", "1", "--batch", "2", "--threads", "1"]
    bench_detector.main([*small, "--set", "map_global_weight=0.1"])
    out = capsys.readouterr().out
    assert "set map_global_weight=0.1" in out and "inference, batch 1" in out
    if "onnxruntime inference, batch 1" in out:  # with onnxruntime installed: the exported graph gives the same maps
        difference = float(out.split("max abs difference from PyTorch's maps ")[1].split()[0])
        assert difference <= 1e-4 and "onnxruntime inference, batch 2 (per image)" in out
    with pytest.raises(SystemExit, match="error: .*nonsense"):
        bench_detector.main([*small, "--set", "nonsense=1"])


def test_bench_detector_times_the_compiled_graph_and_checks_its_maps(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_detector

    small = ["--size", "64", "--train-images", "4", "--pool", "4", "--repeats", "1", "--batch", "2", "--threads", "1"]
    bench_detector.main([*small, "--no-onnx", "--compile"])
    out = capsys.readouterr().out
    difference = float(out.split("max abs difference from the eager graph's maps ")[1].split()[0])
    assert difference <= 1e-4
    assert "inference graph, eager, batch 1" in out and "inference graph, torch.compile, batch 1" in out


def test_bench_detector_compares_with_another_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_detector

    root = Path(bench_detector.__file__).resolve().parents[1]
    small = ["--size", "64", "--train-images", "4", "--pool", "4", "--repeats", "1", "--batch", "2", "--threads", "1"]
    bench_detector.main([*small, "--no-onnx", "--against", str(root)])  # this checkout against itself
    out = capsys.readouterr().out.split(f"--against {root}:")[1]
    assert "--against" not in out.splitlines()[0]  # the other run is not asked to compare again
    rows = [line for line in out.splitlines() if line.startswith("inference, batch 1 (per image)")]
    assert len(rows) == 1 and rows[0].count("x") >= 2  # its median and CPU time, each with a ratio
    assert bench_detector.without_against(["--threads", "2", "--against", "x", "--against=y", "--batch", "4"]) == [
        "--threads",
        "2",
        "--batch",
        "4",
    ]
    with pytest.raises(SystemExit, match="not a checkout"):
        bench_detector.main([*small, "--against", str(tmp_path)])


def test_entropy_curve_reads_the_policy_entropy_from_tensorboard(tmp_path: Path, capsys) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from experiments import entropy_curve

    run = tmp_path / "run"
    with SummaryWriter(str(run / "tensorboard" / "reinforce_1")) as writer:
        for step, entropy in ((100, 2.197), (1000, 2.0), (2000, 1.5), (3000, 1.9)):
            writer.add_scalar("train/entropy_loss", -entropy, step)
    curve = entropy_curve.entropy_curve(run)
    assert [step for step, _ in curve] == [100, 1000, 2000, 3000]
    assert [value for _, value in curve] == pytest.approx([2.197, 2.0, 1.5, 1.9])
    assert entropy_curve.main(["--runs", str(run), "--every", "1000"]) == 0
    rows = {line.split()[0]: float(line.split()[1]) for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows == pytest.approx({"100": 2.197, "1000": 2.0, "2000": 1.5, "3000": 1.9, "min": 1.5})
    (tmp_path / "empty").mkdir()
    assert entropy_curve.main(["--runs", str(tmp_path / "empty")]) == 2
    assert "no TensorBoard event file" in capsys.readouterr().err


FAKE_TRAIN = """
import json, sys, time
from pathlib import Path
args = sys.argv[1:]
folder = Path(args[args.index("-f") + 1]) / "reinforce" / "MVTecPatch-v0_1"
folder.mkdir(parents=True)
time.sleep(float(open("delay.txt").read()))
if "--fail" in args:
    print("error: broken on purpose", file=sys.stderr)
    raise SystemExit(3)
(folder / "metrics.json").write_text(json.dumps({"pixel_auroc": 0.99, "pixel_f1max": 0.8, "args": args}))
"""


def test_main_job_times_both_checkouts_and_reads_their_quality(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import main_job

    report = "\n".join(
        [
            "User time (seconds): 61.50",
            "System time (seconds): 2.50",
            "Elapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.5",
            "Maximum resident set size (kbytes): 2097152",
        ]
    )
    assert main_job.parse_time_v(report) == {"wall_s": 3723.5, "cpu_s": 64.0, "rss_gib": 2.0}
    with pytest.raises(ValueError, match="wall"):
        main_job.parse_time_v("User time (seconds): 1\nSystem time (seconds): 1\nMaximum resident set size (kbytes): 1")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "train.py").write_text(FAKE_TRAIN + "\n# --no-warmup-cache\n")
    (theirs / "delay.txt").write_text("0.6")
    result = main_job.run_main_job(theirs, tmp_path / "out", 2, ["-n", "64"])
    assert result["pixel_auroc"] == 0.99 and result["wall_s"] >= 0.6
    args = json.loads(next((tmp_path / "out").rglob("metrics.json")).read_text())["args"]
    assert args[:5] == ["--env", "MVTecPatch-v0", "--threads", "2", "--no-progress"]
    assert "--no-warmup-cache" in args and args[-2:] == ["-n", "64"]
    with pytest.raises(RuntimeError, match="exit 3.*broken on purpose"):
        main_job.run_main_job(theirs, tmp_path / "failed", 2, ["--fail"])
    assert main_job.main(["--against", str(tmp_path / "nowhere")]) == 2
    assert "not a checkout" in capsys.readouterr().err
    ours = tmp_path / "ours"
    shutil.copytree(theirs, ours)
    (ours / "delay.txt").write_text("0.2")
    capsys.readouterr()
    argv = ["--ours", str(ours), "--against", str(theirs), "--repeats", "2", "--out", str(tmp_path / "runs")]
    assert main_job.main([*argv, "--", "-n", "64"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:5]] == ["ours", "theirs", "theirs", "ours"]
    speedup = float(out.split("min: ")[1].split("x faster")[0])
    assert speedup > 1  # 0.6 s against 0.2 s, plus the interpreter's start
    assert "pixel AUROC +0.0000, F1max +0.0000" in out
    assert len(list((tmp_path / "runs").rglob("metrics.json"))) == 4
