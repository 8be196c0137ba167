"""Files a user relies on are replaced whole (a temporary file, then a rename), never written in place, so a kill or a
failed write leaves the old file or the new one; the best weights and their metrics cannot be torn apart."""

from __future__ import annotations

import builtins
import io
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

import evaluate
import models.runtime
import train
from agents.runs import BestCheckpoint
from agents.sweeps import write_report
from models.runtime import atomic_write_text
from tests.test_train import data_root, run_args  # noqa: F401 - the module-scoped data fixture

# what a user (or a resumed run) reads back: never opened for writing in place (a checkpoint's files are written into
# a new folder that checkpoints/latest.json names only once they are complete)
PROTECTED = {
    "config.yml",
    "split.json",
    "agent.zip",
    "detector.pt",
    "best_detector.pt",
    "best_detector.json",
    "metrics.json",
    "metrics.csv",
    "policy_entropy.json",
    "report.csv",
    "best_preset.yml",
}


@pytest.fixture
def in_place_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every protected file opened for writing under its own name (the open calls of Python and pathlib)."""
    seen: list[str] = []
    real_open = io.open

    def spying_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        path = Path(file) if isinstance(file, (str, Path)) else None
        if path is not None and path.name in PROTECTED and "checkpoints" not in path.parts and set(mode) & set("wax+"):
            seen.append(f"{file} ({mode})")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", spying_open)
    monkeypatch.setattr(builtins, "open", spying_open)
    return seen


def test_a_run_and_its_evaluation_replace_their_files(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    in_place_writes: list[str],
) -> None:
    assert train.main(run_args(data_root, tmp_path, "reinforce", 32)) == 0  # trains, then evaluates the test split
    run = tmp_path / "reinforce" / "MVTecPatch-v0_1"
    assert evaluate.evaluate_run(run)  # a second row for metrics.csv
    assert {p.name for p in run.iterdir()} >= {"config.yml", "split.json", "agent.zip", "best_detector.json", "metrics.csv"}
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert in_place_writes == []


def test_a_study_report_replaces_its_files(tmp_path: Path, in_place_writes: list[str]) -> None:
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("learning_rate", 1e-4, 1e-3), n_trials=2)
    write_report(study, tmp_path, "reinforce", "MVTecPatch-v0", "default", "pixel_f1max")
    assert (tmp_path / "report.csv").is_file() and (tmp_path / "best_preset.yml").is_file()
    assert in_place_writes == []


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")
    csv_path = tmp_path / "metrics.csv"
    evaluate.append_csv_row(csv_path, {"seed": 0, "pixel_auroc": 0.5})

    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(models.runtime.os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    with pytest.raises(OSError):
        evaluate.append_csv_row(csv_path, {"seed": 1, "pixel_auroc": 0.6})
    assert path.read_text() == "old"
    assert csv_path.read_text().splitlines() == ["seed,pixel_auroc", "0,0.5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.json"]  # no temporary file left


class Weights:
    """A model as BestCheckpoint sees it."""

    def __init__(self, value: float) -> None:
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        return {"w": torch.full((2,), self.value)}

    def save(self, path: Path) -> None:
        torch.save(self.state_dict(), path)


def test_a_kill_between_the_best_weights_and_their_json_cannot_pair_them_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agents.runs

    path = tmp_path / "best_detector.pt"
    BestCheckpoint(path).offer(Weights(1.0), {"pixel_f1max": 0.5, "timesteps": 16})
    real_write = agents.runs.atomic_write_text

    def killed_before_json(target: Path, text: str) -> None:
        if Path(target).suffix == ".json":
            raise KeyboardInterrupt  # the process dies between the two files
        real_write(target, text)

    monkeypatch.setattr(agents.runs, "atomic_write_text", killed_before_json)
    with pytest.raises(KeyboardInterrupt):
        BestCheckpoint(path).offer(Weights(2.0), {"pixel_f1max": 0.7, "timesteps": 32})
    monkeypatch.setattr(agents.runs, "atomic_write_text", real_write)
    assert torch.load(path, weights_only=True)["w"][0] == 2.0
    best = BestCheckpoint(path)  # a resumed run reads the best back
    assert best.best_f1max == 0.7  # the weights' own metrics, not the stale .json's 0.5
    assert json.loads(path.with_suffix(".json").read_text())["pixel_f1max"] == 0.7  # the .json caught up
    best.offer(Weights(3.0), {"pixel_f1max": 0.6, "timesteps": 48})  # worse than the weights on disk: kept
    assert torch.load(path, weights_only=True)["w"][0] == 2.0
