"""train.py and evaluate.py end to end on a tiny generated category (in-process smoke runs, like CleanRL's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import evaluate
import train
from agents import AGENTS
from tests.conftest import write_mvtec_tree

SMALL_ENV = [
    "image_size:64",
    "crop_size:32",
    "patch_size:16",
    "move_step:6",
    "episode_length:8",
    "ae_batch_size:8",
    "pretrain_epochs:1",
    "predictor_warmup_updates:2",
    "predictor_freeze_steps:8",
    "feedback_start_steps:16",
    "beta_decay_steps:50",
    "alpha_decay_updates:10",
    "k_shot:2",
    "normal_pool:3",
]
SMALL_ALGO = {
    "reinforce": ["n_steps:16"],
    "ppo": ["n_steps:16", "batch_size:8", "n_epochs:1"],
    "a2c": ["n_steps:8"],
    "dqn": ["buffer_size:100", "learning_starts:16", "train_freq:4", "target_update_interval:16"],
    "random": [],
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mvtec_tree(root, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    return root


def run_args(data_root: Path, log_folder: Path, algo: str, steps: int = 32, *extra: str) -> list[str]:
    return [
        "--algo",
        algo,
        "-n",
        str(steps),
        "--seed",
        "1",
        "-f",
        str(log_folder),
        "--data-root",
        str(data_root),
        "--category",
        "widget",
        "--eval-freq",
        "16",
        "--save-freq",
        "16",
        "--no-progress",
        "-v",
        "0",
        "--env-kwargs",
        *SMALL_ENV,
        "--hyperparams",
        *SMALL_ALGO[algo],
        *extra,
    ]


@pytest.fixture(scope="module")
def reinforce_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    logs = tmp_path_factory.mktemp("logs")
    assert train.main(run_args(data_root, logs, "reinforce", 48)) == 0
    return logs / "reinforce" / "MVTecPatch-v0_1"


def test_registry_covers_the_required_algorithms() -> None:
    assert {"reinforce", "ppo", "a2c", "dqn", "random"} <= set(AGENTS)


@pytest.mark.parametrize("algo", [a for a in SMALL_ALGO if a != "reinforce"])
def test_every_algorithm_trains(algo: str, data_root: Path, tmp_path: Path) -> None:
    assert train.main(run_args(data_root, tmp_path, algo, 32, "--no-evaluate")) == 0
    run = tmp_path / algo / "MVTecPatch-v0_1"
    for name in ("config.yml", "split.json", "agent.zip", "detector.pt", "monitor.csv"):
        assert (run / name).is_file(), name
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["num_timesteps"] >= 32


def test_reinforce_run_writes_everything(reinforce_run: Path) -> None:
    for name in (
        "config.yml",
        "split.json",
        "agent.zip",
        "detector.pt",
        "best_detector.pt",
        "metrics.json",
        "metrics.csv",
        "predictions.png",
        "roc.png",
        "pr.png",
        "ae_baseline/metrics.json",
    ):
        assert (reinforce_run / name).is_file(), name
    metrics = json.loads((reinforce_run / "metrics.json").read_text())
    for key in ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "f1_at_val_threshold"):
        assert 0.0 <= metrics[key] <= 1.0, key
    split = json.loads((reinforce_run / "split.json").read_text())
    assert not set(split["labelled"]) & (set(split["val"]) | set(split["test"]))


def test_tensorboard_has_reward_terms_and_validation(reinforce_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((reinforce_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    tags: set[str] = set()
    images: set[str] = set()
    for event in events:
        acc = EventAccumulator(str(event.parent))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
    for tag in (
        "env/r_clone",
        "env/r_cover",
        "env/r_pred",
        "env/beta",
        "env/alpha",
        "env/ae_loss",
        "eval/pixel_auroc",
        "eval/pixel_f1max",
        "eval/pixel_aupro",
        "rollout/ep_rew_mean",
        "train/policy_loss",
    ):
        assert tag in tags, tag
    assert "sampler/history_maps" in images and "eval/image_profile_prediction_truth" in images


def test_resume_continues_from_the_checkpoint(data_root: Path, tmp_path: Path) -> None:
    assert train.main(run_args(data_root, tmp_path, "reinforce", 32, "--no-evaluate")) == 0
    run = tmp_path / "reinforce" / "MVTecPatch-v0_1"
    best_before = json.loads((run / "best_detector.json").read_text())["pixel_f1max"]
    assert train.main(["-i", str(run), "-n", "64", "--no-progress", "-v", "0", "--no-evaluate"]) == 0
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["num_timesteps"] == 64 and latest["global_step"] == 64
    assert len(list((run / "checkpoints").glob("step_*"))) == 1
    assert json.loads((run / "best_detector.json").read_text())["pixel_f1max"] >= best_before  # the best survives
    assert not (tmp_path / "reinforce" / "MVTecPatch-v0_2").exists()


def test_evaluate_methods_and_unlabelled_images(reinforce_run: Path, data_root: Path, tmp_path: Path) -> None:
    assert evaluate.main(["--run", str(reinforce_run), "--method", "ae", "--out", str(tmp_path / "ae")]) == 0
    ae = json.loads((tmp_path / "ae" / "metrics.json").read_text())
    assert ae["method"] == "ae" and 0.0 <= ae["pixel_auroc"] <= 1.0
    images = data_root / "widget" / "test" / "hole"
    assert evaluate.main(["--run", str(reinforce_run), "--images", str(images), "--out", str(tmp_path / "maps")]) == 0
    assert len(list((tmp_path / "maps").glob("*_map.png"))) == 6


def test_bad_input_gives_one_line_errors(reinforce_run: Path, data_root: Path, tmp_path: Path, capsys) -> None:
    cases = [
        (train.main, ["--algo", "sac", "--dry-run"], "valid: reinforce"),
        (train.main, ["--env", "CartPole-v1", "--dry-run"], "valid: MVTecPatch-v0"),
        (train.main, ["--preset", "fast", "--dry-run"], "valid: default, default-v1, paper"),
        (
            train.main,
            ["--env-kwargs", "observation:depth", "--data-root", str(data_root), "--category", "widget", "--dry-run"],
            "observation",
        ),
        (  # a bad detector value: caught by the dry run, before any data or warm-up
            train.main,
            ["--env-kwargs", "detector:{'predictor': {'padding_mode': 'bogus'}}", "--data-root", str(data_root)]
            + ["--category", "widget", "--dry-run"],
            "padding_mode must be",
        ),
        (train.main, ["-i", str(tmp_path)], "not a run folder"),
        (evaluate.main, ["--run", str(tmp_path)], "not a run folder"),
    ]
    for main, argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and expected in err and "\n" not in err, err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yml").write_text((reinforce_run / "config.yml").read_text())
    (broken / "detector.pt").write_bytes(b"not a checkpoint")
    assert evaluate.main(["--run", str(broken)]) == 2
    assert "detector.pt" in capsys.readouterr().err


def test_map_options_reproduce_the_runs_own_metrics(reinforce_run: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import map_options

    detector_config = yaml.safe_load((reinforce_run / "config.yml").read_text())["env_kwargs"]["detector"]
    flips = (bool(detector_config.get("map_flip_tta", False)), bool(detector_config.get("map_predictor_flips", False)))
    tta = {v: k for k, v in map_options.TTA.items()}[flips]
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
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import map_options

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
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import map_options

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
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import map_options

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


def test_a_run_chooses_its_smoothing_on_validation_and_evaluates_with_it(data_root: Path, tmp_path: Path) -> None:
    candidates = "detector:{'map_smoothing_candidates': [0.0, 2.0, 8.0]}"
    args = run_args(data_root, tmp_path, "reinforce", 32)
    args.insert(args.index("--hyperparams"), candidates)  # one more --env-kwargs item (a second flag would replace them)
    assert train.main(args) == 0
    run = tmp_path / "reinforce" / "MVTecPatch-v0_1"
    best = json.loads((run / "best_detector.json").read_text())  # the validation record of the saved checkpoint
    assert best["map_smoothing_sigma"] in (0.0, 2.0, 8.0)
    assert best["pixel_f1max"] == max(best[f"pixel_f1max_sigma{s}"] for s in ("0", "2", "8"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["map_smoothing_sigma"] == best["map_smoothing_sigma"]  # the test split is scored with the choice
    assert evaluate.main(["--run", str(run), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["pixel_auroc"] == pytest.approx(metrics["pixel_auroc"], abs=1e-6)


def test_per_type_scores_every_defect_type_of_the_test_split(reinforce_run: Path, capsys) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import per_type

    split = json.loads((reinforce_run / "split.json").read_text())
    test_types = {Path(p).parent.name for p in split["test"]} - {"good"}
    scores = per_type.per_type(reinforce_run)
    assert set(scores) == test_types
    assert all(0.0 <= auroc <= 1.0 and 0.0 <= f1 <= 1.0 and pixels > 0 for auroc, f1, pixels in scores.values())
    assert per_type.main(["--runs", str(reinforce_run.parent)]) == 2  # not a run folder: a one-line error
    assert capsys.readouterr().err.startswith("error:")


def test_per_type_says_which_images_cost_the_pooled_auroc(reinforce_run: Path, tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import per_type

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


def test_detector_quality_sets_split_fields_on_the_env_and_the_rest_on_the_detector() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from detector_quality import parse_sets

    env, det = parse_sets(["k_shot=15", "pretrain_epochs=3", "ae.norm=none", "pred_lr=1e-3", "map_flip_tta=true"])
    assert env == {"k_shot": 15, "pretrain_epochs": 3}
    assert det == {"ae": {"norm": "none"}, "pred_lr": 1e-3, "map_flip_tta": True}
    with pytest.raises(SystemExit, match="key=value"):
        parse_sets(["k_shot"])


def test_detector_quality_rejects_an_unknown_field_in_one_line(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import detector_quality

    with pytest.raises(SystemExit, match="error: .*no_such_field"):
        detector_quality.main(
            ["--data-root", str(tmp_path), "--category", "x", "--set", "no_such_field=1", "--log", str(tmp_path / "l")]
        )


def test_detector_quality_rejects_an_invalid_value_in_one_line(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import detector_quality

    with pytest.raises(SystemExit, match="error: pred_rank_weight must be >= 0, got -1"):
        detector_quality.main(
            ["--data-root", str(tmp_path), "--category", "x", "--set", "pred_rank_weight=-1", "--log", str(tmp_path / "l")]
        )


def test_detector_quality_warmup_curve_scores_every_n_updates(mvtec_root: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import detector_quality

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


def test_common_test_scores_a_subset_and_refuses_images_the_run_did_not_keep_for_test(
    reinforce_run: Path, tmp_path: Path, capsys
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import common_test

    files = common_test.test_files(reinforce_run)
    own = common_test.score_on(reinforce_run, files)
    metrics = json.loads((reinforce_run / "metrics.json").read_text())
    assert own["pixel_auroc"] == pytest.approx(metrics["pixel_auroc"], abs=1e-4)  # its own test split: its own figures
    assert own["pixel_f1max"] == pytest.approx(metrics["pixel_f1max"], abs=1e-4)
    defective = [f for f in files if not f.startswith("test/good/")]
    subset = [f for f in files if f.startswith("test/good/")] + defective[: len(defective) // 2]
    assert common_test.score_on(reinforce_run, subset)["pixel_auroc"] != own["pixel_auroc"]  # a subset is scored
    # a reference whose test split holds a validation image of the run: refused, one line
    split = json.loads((reinforce_run / "split.json").read_text())
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "split.json").write_text(json.dumps({**split, "test": files + split["val"][:1]}))
    assert common_test.main(["--reference", str(reference), "--runs", str(reinforce_run)]) == 2
    assert "not in this run's test split" in capsys.readouterr().err


def test_bench_detector_takes_detector_fields_and_rejects_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_detector

    small = ["--size", "64", "--train-images", "4", "--pool", "4", "--repeats", "1", "--batch", "2", "--threads", "1"]
    bench_detector.main([*small, "--set", "map_global_weight=0.1"])
    out = capsys.readouterr().out
    assert "set map_global_weight=0.1" in out and "inference, batch 1" in out
    with pytest.raises(SystemExit, match="error: .*nonsense"):
        bench_detector.main([*small, "--set", "nonsense=1"])


def test_ensemble_scores_each_detector_as_detector_quality_did_and_their_mean(
    mvtec_root: Path, tmp_path: Path, capsys
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import detector_quality
    import ensemble

    dq_log, log = tmp_path / "dq.jsonl", tmp_path / "ensemble.jsonl"
    sets = ["image_size=128", "pretrain_epochs=1", "predictor_warmup_updates=5", "k_shot=2", "pred_batch_size=2"]
    argv = ["--data-root", str(mvtec_root), "--category", "widget", "--cycles", "0", "--streams", "0", "1"]
    assert detector_quality.main([*argv, "--log", str(dq_log), "--save-dir", str(tmp_path), "--set", *sets]) == 0
    trained = [json.loads(line)["test"] for line in dq_log.read_text().splitlines()]
    checkpoints = [str(tmp_path / f"seed0_stream{s}.pt") for s in (0, 1)]
    split = ["--set", "image_size=128", "k_shot=2"]
    base = ["--data-root", str(mvtec_root), "--category", "widget", "--seed", "0", "--checkpoints", *checkpoints]
    assert ensemble.main([*base, *split, "--log", str(log)]) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines() if json.loads(line)["split"] == "test"]
    assert [r["members"] for r in rows] == [[0], [1], [0, 1]]
    for row, own in zip(rows, trained):  # each detector alone: the figures it was trained and saved with
        assert row["pixel_auroc"] == pytest.approx(own["pixel_auroc"], abs=1e-4)
        assert row["pixel_f1max"] == pytest.approx(own["pixel_f1max"], abs=1e-4)
    # a field that is not a split field, and a file that is not a checkpoint, are refused in one line
    capsys.readouterr()
    assert ensemble.main([*base, "--set", "k_shots=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "k_shots" in err and "\n" not in err
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    assert ensemble.main([*base[:-2], str(tmp_path / "broken.pt"), *split]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "broken.pt" in err and "\n" not in err


def test_ensemble_names_checkpoints_apart_when_their_stems_agree() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ensemble

    assert ensemble.checkpoint_names(["a/s0.pt", "a/s1.pt"]) == ["s0", "s1"]
    assert ensemble.checkpoint_names(["runs/k25/s0.pt", "runs/streams/s0.pt"]) == ["k25/s0", "streams/s0"]
    assert ensemble.checkpoint_names(["x/k/s0.pt", "y/k/s0.pt", "y/j/s0.pt"]) == ["x/k/s0", "y/k/s0", "y/j/s0"]


def test_ensemble_rows_score_the_mean_of_the_members_maps() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ensemble

    rng = np.random.default_rng(0)
    masks = np.zeros((4, 8, 8), bool)
    masks[:2, 2:5, 2:5] = True
    labels = np.array([True, True, False, False])
    truth = masks.astype(np.float32)
    noisy = [truth + rng.normal(0, 0.8, truth.shape).astype(np.float32) for _ in range(3)]  # three noisy detectors
    rows = ensemble.ensemble_rows(noisy, masks, labels)
    assert [r["members"] for r in rows] == [[0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2]]
    singles = np.mean([r["pixel_auroc"] for r in rows[:3]])
    assert rows[-1]["pixel_auroc"] > singles  # independent noise averages out: the ensemble ranks better
    same = ensemble.ensemble_rows([noisy[0], noisy[0]], masks, labels)
    assert same[2] | {"members": [0]} == same[0]  # the mean of one map twice is that map
