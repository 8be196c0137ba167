"""Reliability: reproducible seeded runs, resumable GPU runs, device spellings, clean interrupts."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import evaluate
import train
from tests.conftest import write_mvtec_tree
from tests.test_train import run_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mvtec_tree(root, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    return root


def weights(run: Path) -> dict[str, torch.Tensor]:
    """The sampler's and the detector's final weights of a run."""
    with zipfile.ZipFile(run / "agent.zip") as archive:
        policy = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu", weights_only=True)
    detector = torch.load(run / "detector.pt", map_location="cpu", weights_only=True)
    return {
        **{f"policy.{k}": v for k, v in policy.items()},
        **{f"ae.{k}": v for k, v in detector["ae"].items()},
        **{f"predictor.{k}": v for k, v in detector["predictor"].items()},
    }


def test_seeded_runs_in_separate_processes_are_bit_identical(data_root: Path, tmp_path: Path) -> None:
    """Same command, other process: once with one OpenMP thread, once with two and a competing busy process."""
    runs = []
    for omp_threads, busy in ((1, False), (2, True)):
        env = {**os.environ, "OMP_NUM_THREADS": str(omp_threads), "MKL_NUM_THREADS": str(omp_threads)}
        argv = run_args(data_root, tmp_path / f"omp{omp_threads}", "reinforce", 64, "--no-evaluate")
        load = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            done = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, env=env, capture_output=True, timeout=300)
        finally:
            if load is not None:
                load.kill()
                load.wait()
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        runs.append(weights(tmp_path / f"omp{omp_threads}" / "reinforce" / "MVTecPatch-v0_1"))
    first, second = runs
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# --- 1. a GPU run resumes: the env state loads to the CPU, the RNG state stays a CPU ByteTensor ----------------------
class RecordingGenerator:
    """Stands in for the detector's torch.Generator and records the states handed to set_state."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.states: list[torch.Tensor] = []

    def set_state(self, state: torch.Tensor) -> torch.Generator:
        self.states.append(state)
        return self.generator.set_state(state)

    def __getattr__(self, name: str) -> object:
        return getattr(self.generator, name)


def test_env_state_of_a_gpu_run_loads_on_the_cpu(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envs.mvtec_patch import MVTecPatchEnv
    from tests.test_env import small_kwargs

    env = MVTecPatchEnv(**small_kwargs(data_root))
    env.reset(seed=0)
    for action in (0, 3, 1, 2) * 3:
        env.step(action)
    env.save_state(tmp_path / "env_state.pt")
    resumed = MVTecPatchEnv(**small_kwargs(data_root))
    resumed.config.device = "cuda:0"  # the run's config names a GPU; this machine loads what it can
    recorder = RecordingGenerator(resumed.detector._gen)
    resumed.detector._gen = recorder  # type: ignore[assignment]
    requested: list[object] = []
    real_load = torch.load

    def load(*args: object, **kwargs: object) -> object:
        requested.append(kwargs.get("map_location"))
        return real_load(*args, **{**kwargs, "map_location": "cpu"})  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", load)
    resumed.load_state(tmp_path / "env_state.pt")
    assert requested == ["cpu"]
    assert recorder.states and all(s.device.type == "cpu" and s.dtype == torch.uint8 for s in recorder.states)
    assert resumed.global_step == env.global_step
    np.testing.assert_array_equal(resumed.history, env.history)


# --- 2. every device spelling torch accepts ---------------------------------------------------------------------------
def test_device_check_accepts_every_cuda_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    from envs.config import MVTecPatchConfig
    from models.runtime import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("cpu", "cuda", "cuda:0", "cuda:1"):
        assert check_device(device) == device
        assert MVTecPatchConfig(device=device).device == device
    for device in ("cuda:2", "gpu", "cuda:x", "tpu"):
        with pytest.raises(ValueError, match="valid here: cpu, cuda, cuda:0, cuda:1"):
            MVTecPatchConfig(device=device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"device='cuda' .*valid here: cpu"):
        check_device("cuda")
    assert train.main(["--device", "cuda", "--dry-run"]) == 2
    assert evaluate.main(["--run", "nowhere", "--device", "cuda"]) == 2


# --- 5, 6, 7. Ctrl-C between rollouts, -i without a checkpoint, -i with flags it cannot honour --------------------------
def test_ctrl_c_stops_between_steps_checkpoints_and_resumes(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from envs.mvtec_patch import MVTecPatchEnv

    take_patch = MVTecPatchEnv._take_patch

    def interrupted_take_patch(self: MVTecPatchEnv) -> tuple[float, float]:
        out = take_patch(self)
        if self.global_step == 21:  # Ctrl-C in the middle of env.step, after the patch is queued
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(MVTecPatchEnv, "_take_patch", interrupted_take_patch)
    handler = signal.getsignal(signal.SIGINT)
    assert train.main(run_args(data_root, tmp_path, "reinforce", 48, "--no-evaluate")) == 130
    assert signal.getsignal(signal.SIGINT) is handler
    err = capsys.readouterr().err.strip().splitlines()[-1]
    run = tmp_path / "reinforce" / "MVTecPatch-v0_1"
    assert err.startswith("error: interrupted at 32 steps") and f"-i {run}" in err
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["num_timesteps"] == latest["global_step"] == 32  # at the next rollout's start (n_steps 16)
    monkeypatch.setattr(MVTecPatchEnv, "_take_patch", take_patch)
    assert train.main(["-i", str(run), "--no-progress", "-v", "0", "--no-evaluate"]) == 0
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["num_timesteps"] >= 48  # whole rollouts


def test_resume_refuses_what_it_cannot_honour(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "reinforce" / "MVTecPatch-v0_1"
    run.mkdir(parents=True)
    from agents.run_config import resolve_config

    parsed = train.build_parser().parse_args(["-n", "32", "--data-root", str(data_root), "--category", "widget"])
    (run / "config.yml").write_text(yaml.safe_dump(resolve_config(parsed), sort_keys=False))
    (run / "best_detector.pt").write_bytes(b"from a dead attempt")  # a result without a checkpoint: no restart
    cases = [
        ([], "no complete checkpoint"),
        (["--algo", "ppo"], "--algo cannot change"),
        (["--seed", "0"], "--seed cannot change"),
        (["--preset", "paper"], "--preset cannot change"),
        (["--save-freq", "8"], "--save-freq cannot change"),
    ]
    for flags, expected in cases:
        assert train.main(["-i", str(run), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and expected in err and "\n" not in err, err
    assert not (run / "checkpoints").exists()  # nothing started over


def test_resume_honours_device_threads_and_a_larger_n(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="models.progress"):
        assert train.main(run_args(data_root, tmp_path, "reinforce", 32, "--no-evaluate", "--no-warmup-cache")) == 0
    messages = [r.getMessage() for r in caplog.records]
    progress = [m for m in messages if m.startswith("step ")]
    assert progress and "/32 (" in progress[-1] and "steps/s, ETA" in progress[-1]  # lines without a progress bar
    # the warm-up reports too, each phase to its end, with its latest loss
    assert any(m.startswith("AE pre-training: epoch 1/1 (100%)") and "; loss " in m for m in messages), messages
    assert any(m.startswith("predictor warm-up: update 2/2 (100%)") and "; loss " in m for m in messages), messages
    assert "predictor warm-up: 2 updates" in messages  # said when the phase starts
    run = tmp_path / "reinforce" / "MVTecPatch-v0_1"
    assert yaml.safe_load((run / "config.yml").read_text())["threads"] == 1
    assert train.main(["-i", str(run), "-n", "16", "-v", "0"]) == 2  # smaller than done
    assert (
        train.main(
            ["-i", str(run), "-n", "48", "--device", "cpu", "--threads", "2", "--no-progress", "-v", "0", "--no-evaluate"]
        )
        == 0
    )
    config = yaml.safe_load((run / "config.yml").read_text())
    assert (config["n_timesteps"], config["device"], config["threads"]) == (48, "cpu", 2)
    assert torch.get_num_threads() == 1  # restored after training
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["num_timesteps"] >= 48  # whole rollouts


# --- 4. thin defects survive the resize; image labels come from the folder ------------------------------------------
def test_a_thin_scratch_survives_downscaling(tmp_path: Path) -> None:
    import cv2

    from envs.mvtec import read_mask, resize_mask

    mask = np.zeros((1024, 1024), dtype=np.uint8)
    mask[501:504, 100:900] = 255  # a 3-px scratch: nearest-neighbour sampling at 256 px reads rows 500 and 504 only
    cv2.imwrite(str(tmp_path / "000_mask.png"), mask)
    resized = read_mask(tmp_path / "000_mask.png", 256, (1024, 1024))
    assert resized.any(axis=1).sum() == 1 and resized.sum() == 200  # one row, as long as the scratch
    diagonal = np.eye(1024, dtype=bool)  # a 1-px diagonal stays connected
    assert resize_mask(diagonal, 256).sum() >= 256
    small = np.zeros((40, 60), dtype=bool)
    small[3:5, 7:9] = True
    up = resize_mask(small, 120)  # height upscaled (nearest), width downscaled (area)
    assert up.shape == (120, 120) and up.any(axis=1).sum() == 6
    square = np.zeros((32, 32), dtype=bool)
    square[5:9, 10:11] = True
    expected = cv2.resize(square.astype(np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST).astype(bool)
    np.testing.assert_array_equal(resize_mask(square, 64), expected)  # upscaling stays nearest


def test_empty_defect_mask_warns_once_and_counts_as_defective(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import cv2

    from envs.mvtec import load_category
    from models.metrics import compute_metrics

    folder = write_mvtec_tree(tmp_path, defects={"scratch": 3}, size_hw=(32, 32))
    cv2.imwrite(str(folder / "ground_truth" / "scratch" / "001_mask.png"), np.zeros((32, 32), np.uint8))
    with caplog.at_level("WARNING", logger="envs.mvtec"):
        category = load_category(tmp_path, "widget", image_size=32, workers=1)
    warnings = [r.getMessage() for r in caplog.records if "empty mask" in r.getMessage()]
    assert len(warnings) == 1 and "scratch/001.png" in warnings[0]
    test = category.indices("test")
    labels = np.array([category.samples[i].is_anomalous for i in test])
    maps = category.masks[test].astype(np.float32)
    maps[labels & ~category.masks[test].any(axis=(1, 2))] = 2.0  # the empty-mask defect scores highest
    with_folder_labels = compute_metrics(maps, category.masks[test], image_labels=labels)["image_auroc"]
    assert with_folder_labels == 1.0 and compute_metrics(maps, category.masks[test])["image_auroc"] < 1.0


def test_reinforce_is_exported_under_both_names() -> None:
    from agents import REINFORCE, Reinforce

    assert REINFORCE is Reinforce


def test_prediction_grid_has_column_titles_and_a_colour_scale(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    maps = rng.random((3, 32, 32)).astype(np.float32)
    evaluate.save_prediction_grid(tmp_path / "p.png", images, maps, maps > 0.9)
    grid = cv2.imread(str(tmp_path / "p.png"))
    assert grid is not None
    columns = [(0, 32), (36, 68), (72, 104)]
    assert grid.shape[1] > 104 + 10  # a colour bar right of the three columns
    header = grid[:20]
    assert all((header[:, a:b] < 128).any() for a, b in columns)  # a title over each column
    bar = grid[22 : 22 + 32, 108:118]
    assert len(np.unique(bar.reshape(-1, 3), axis=0)) > 16  # a colour ramp
