"""train.py and evaluate.py end to end on a tiny generated category (in-process smoke runs, like CleanRL's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
        (train.main, ["--preset", "fast", "--dry-run"], "valid: default, paper, paper-long"),
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
