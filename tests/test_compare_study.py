"""benchmarks/compare.py worker mode: the grid as an Optuna study that several worker processes share.

Every cell is trained exactly once, a killed worker's cell is failed by the heartbeat and trained by another worker,
and the tables are rebuilt from the study alone.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from benchmarks import compare
from tests.conftest import write_mvtec_tree
from tests.test_train import SMALL_ENV

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ["-m", "benchmarks.compare"]

CATEGORIES = ("widget", "gadget")


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny categories and a variant ``tiny`` whose cells train in seconds (as in tests/test_compare.py)."""
    root = tmp_path_factory.mktemp("data")
    for name in CATEGORIES:
        write_mvtec_tree(root, name, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    env = {k: yaml.safe_load(v) for k, v in (pair.split(":", 1) for pair in SMALL_ENV)}
    variants = tmp_path_factory.mktemp("cfg") / "variants.yml"
    variants.write_text(yaml.safe_dump({"tiny": {"algo": "random", "n_timesteps": 16, "env_kwargs": env}}))
    return root, variants


def grid_args(grid: tuple[Path, Path], out: Path, *, seeds: tuple[str, ...] = ("0",), methods=("tiny",)) -> list[str]:
    root, variants = grid
    return ["--data-root", str(root), "--categories", *CATEGORIES, "--methods", *methods, "--seeds", *seeds] + [
        "--variants",
        str(variants),
        "--out",
        str(out),
        "--threads",
        "1",
    ]


def start_worker(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen([sys.executable, *COMPARE, *args], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)


def finish(process: subprocess.Popen, log: Path, timeout: float = 240) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"worker did not finish in {timeout:.0f} s; its output:\n{log.read_text()[-3000:]}")


def cell_of(trial: optuna.trial.FrozenTrial) -> str:
    cell = trial.params.get("cell", trial.system_attrs.get("fixed_params", {}).get("cell"))
    assert isinstance(cell, str), f"trial {trial.number} has no cell"
    return cell


def finished_cells(study: optuna.Study) -> list[str]:
    """The cells of the complete trials that trained (not idle, not a duplicate)."""
    return [
        cell_of(t)
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        if not t.user_attrs.get("idle") and "duplicate" not in t.user_attrs
    ]


def trainings_started(*logs: Path) -> list[str]:
    """Cells whose train.py a worker started, from the workers' ``[compare] <category> <method> seed <k>: <cmd>`` lines."""
    lines = [line for log in logs for line in log.read_text().splitlines()]
    return [line.split(":")[0].removeprefix("[compare] ") for line in lines if f": {sys.executable} " in line]


def rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "results.csv").open()))


@pytest.fixture(scope="module")
def two_workers(grid: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[int], list[Path]]:
    """Two workers started at the same moment on a fresh SQLite study of 4 cells (2 categories x 2 seeds; the table
    has 8 rows: tiny and its AE-only baseline ae@tiny read the same training)."""
    tmp = tmp_path_factory.mktemp("two")
    out, storage = tmp / "out", f"sqlite:///{tmp / 's.db'}"
    args = grid_args(grid, out, seeds=("0", "1"), methods=("tiny", "ae@tiny")) + ["--storage", storage, "--study-name", "t"]
    logs = [tmp / "worker0.log", tmp / "worker1.log"]
    processes = [start_worker(args, log) for log in logs]
    codes = [finish(process, log) for process, log in zip(processes, logs)]
    return out, storage, codes, logs


def test_two_workers_train_every_cell_exactly_once(two_workers: tuple[Path, str, list[int], list[Path]]) -> None:
    out, storage, codes, logs = two_workers
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    cells = sorted(f"{c}/tiny/{s}" for c in CATEGORIES for s in (0, 1))
    # one train.py per cell over both workers
    assert sorted(trainings_started(*logs)) == sorted(f"{c} tiny seed {s}" for c in CATEGORIES for s in (0, 1))
    for key in cells:
        category, method, seed = key.split("/")
        cell = out / "cells" / category / method / f"seed{seed}"
        assert (cell / "result.json").is_file()
        assert len(list((cell / "logs" / "random").glob("MVTecPatch-v0_*"))) == 1
    study = optuna.load_study(study_name="t", storage=storage)
    assert sorted(finished_cells(study)) == cells  # 4 complete trials, one per cell
    assert study.user_attrs["grid"] == sorted(f"{c}/{m}/{s}" for c in CATEGORIES for m in ("tiny", "ae@tiny") for s in (0, 1))
    # results.csv: every (category, method, seed) row, in the folder mode's order, with the run's own metrics
    table = rows(out)
    assert [(r["category"], r["variant"], r["seed"]) for r in table] == [
        (c, m, s) for c in CATEGORIES for m in ("tiny", "ae@tiny") for s in ("0", "1")
    ]
    run = Path(compare.json.loads((out / "cells" / "gadget" / "tiny" / "seed1" / "result.json").read_text())["run"])
    metrics = compare.json.loads((run / "metrics.json").read_text())
    ae_metrics = compare.json.loads((run / "ae_baseline" / "metrics.json").read_text())
    by_key = {(r["category"], r["variant"], r["seed"]): r for r in table}
    assert float(by_key[("gadget", "tiny", "1")]["pixel_auroc"]) == pytest.approx(metrics["pixel_auroc"], abs=1e-4)
    assert float(by_key[("gadget", "ae@tiny", "1")]["pixel_auroc"]) == pytest.approx(ae_metrics["pixel_auroc"], abs=1e-4)
    assert "### widget" in (out / "table.md").read_text()


def test_table_only_rebuilds_the_table_from_the_study(
    two_workers: tuple[Path, str, list[int], list[Path]], grid: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    out, storage, codes, _ = two_workers
    assert codes == [0, 0]

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("--table-only trained a cell")

    monkeypatch.setattr(subprocess, "Popen", no_training)
    elsewhere = tmp_path / "elsewhere"  # no cell folders: the rows can only come from the study
    args = grid_args(grid, elsewhere, seeds=("0", "1"), methods=("tiny", "ae@tiny"))
    assert compare.main([*args, "--storage", storage, "--study-name", "t", "--table-only"]) == 0
    assert (elsewhere / "table.md").read_text() == (out / "table.md").read_text()
    assert (elsewhere / "results.csv").read_text() == (out / "results.csv").read_text()
    assert not (elsewhere / "cells").exists()


def processes_of(cell: Path) -> list[int]:
    """The processes whose command line names the cell folder (its train.py)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(cell) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def wait_for(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"worker exited while waiting for {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_workers_cell_is_trained_by_another_worker(grid: tuple[Path, Path], tmp_path: Path) -> None:
    """Worker A trains a cell, frozen (its train.py stopped, its heartbeat going on); worker B trains the other cell,
    then waits for A's; A is killed: its train.py dies with it, and B trains A's cell once its heartbeat is stale."""
    out, storage = tmp_path / "out", f"sqlite:///{tmp_path / 's.db'}"
    args = grid_args(grid, out) + [
        "--storage",
        storage,
        "--study-name",
        "k",
        "--heartbeat-interval",
        "1",
        "--grace-period",
        "3",
    ]
    logs = tmp_path / "a.log", tmp_path / "b.log"
    a = start_worker(args, logs[0])
    found: list[optuna.trial.FrozenTrial] = []

    def running_cell() -> bool:
        try:
            study = optuna.load_study(study_name="k", storage=storage)
        except KeyError:
            return False
        found[:] = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if cell_of(t)]
        return bool(found)

    wait_for(running_cell, "a running cell", a, logs[0])
    killed = found[0]
    category, method, seed = cell_of(killed).split("/")
    cell = out / "cells" / category / method / f"seed{seed}"
    wait_for(lambda: processes_of(cell), "the cell's train.py", a, logs[0])
    stopped = processes_of(cell)
    try:
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        b = start_worker(args, logs[1])
        wait_for(lambda: "waiting for the 1 running in other workers" in logs[1].read_text(), "B to wait", b, logs[1])
        assert a.poll() is None and not (cell / "result.json").exists()
        a.kill()
        a.wait()
        deadline = time.monotonic() + 5
        while set(processes_of(cell)) & set(stopped):  # killed with its worker
            assert time.monotonic() < deadline, "the killed worker's train.py is still there"
            time.sleep(0.1)
        assert finish(b, logs[1]) == 0, logs[1].read_text()[-3000:]
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    study = optuna.load_study(study_name="k", storage=storage)
    assert study.trials[killed.number].state == TrialState.FAIL  # failed by the heartbeat, then queued again
    retries = [
        t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.system_attrs.get("failed_trial") == killed.number
    ]
    assert [cell_of(t) for t in retries] == [cell_of(killed)]
    assert sorted(finished_cells(study)) == sorted(f"{c}/tiny/0" for c in CATEGORIES)
    assert (cell / "result.json").is_file()
    assert sorted(trainings_started(logs[1])) == sorted(f"{c} tiny seed 0" for c in CATEGORIES)  # B trained both
    assert [(r["category"], r["variant"]) for r in rows(out)] == [(c, "tiny") for c in CATEGORIES]


def test_workers_option_starts_workers_on_a_study_in_the_out_folder(grid: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "grid1"
    log = tmp_path / "parent.log"
    process = start_worker([*grid_args(grid, out), "--workers", "2"], log)
    assert finish(process, log) == 0, log.read_text()[-3000:]
    output = log.read_text()
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert f"[compare] 2 workers on study 'compare-grid1', {threads} threads each" in output
    assert output.count("### pixel F1max") == 1  # the parent's table; the workers write none
    study = optuna.load_study(study_name="compare-grid1", storage=f"sqlite:///{out / 'compare-grid1.db'}")
    assert sorted(finished_cells(study)) == sorted(f"{c}/tiny/0" for c in CATEGORIES)
    assert len(rows(out)) == 2
    # a worker with another grid is refused, naming the study
    refused = subprocess.run(
        [sys.executable, *COMPARE, *grid_args(grid, out, seeds=("0", "1")), "--workers", "2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: study 'compare-grid1' holds another grid") and refused.stderr.count("\n") == 1


def test_a_second_trial_of_a_cell_trains_nothing(grid: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    """Two workers that queue the grid at the same moment may queue a cell twice: the second trial yields to the first
    while that one is queued or running, and reuses its rows once it is complete. (Journal storage: no heartbeat.)"""
    journal = tmp_path / "grid.log"
    study = optuna.create_study(
        storage=JournalStorage(JournalFileBackend(str(journal))), study_name="dup", direction="maximize"
    )
    study.set_user_attr("grid", ["gadget/tiny/0", "widget/tiny/0"])
    for key in ("widget/tiny/0", "gadget/tiny/0", "widget/tiny/0"):  # widget's queued twice
        study.enqueue_trial({"cell": key})
    first = study.ask()  # trial 0 (widget): another worker's, running
    first.suggest_categorical("cell", ["gadget/tiny/0", "widget/tiny/0"])
    study.tell(study.ask(), state=TrialState.FAIL)  # trial 1 (gadget): failed, so queued again by the next worker
    trained: list[str] = []

    def run_cell(category: str, base: str, spec: dict, seed: int, args: object) -> dict[str, object]:
        trained.append(category)
        assert category == "gadget", "a cell was trained twice"
        return fake_result(tmp_path)

    monkeypatch.setattr(compare, "run_cell", run_cell)
    args = [*grid_args(grid, tmp_path / "out"), "--storage", str(journal), "--study-name", "dup"]
    assert compare.main(args) == 0
    trials = study.get_trials()
    assert trained == ["gadget"]
    assert trials[2].state == TrialState.PRUNED and trials[2].user_attrs["duplicate"] == 0
    assert [cell_of(t) for t in trials[3:]] == ["gadget/tiny/0"] and trials[3].state == TrialState.COMPLETE
    assert [r["category"] for r in rows(tmp_path / "out")] == ["gadget"]  # widget's trial 0 is still running

    # the first trial finishes; a third trial of its cell reuses its rows
    widget_row = {**compare.cell_row("gadget", "tiny", 0, fake_result(tmp_path), False), "category": "widget"}
    first.set_user_attr("rows", {"tiny": widget_row})
    study.tell(first, 0.5)
    study.enqueue_trial({"cell": "widget/tiny/0"})
    assert compare.main(args) == 0
    assert trained == ["gadget"]
    reuse = study.get_trials()[-1]
    assert reuse.state == TrialState.COMPLETE and reuse.user_attrs["duplicate"] == 0 and reuse.value == 0.5
    assert sorted(finished_cells(study)) == ["gadget/tiny/0", "widget/tiny/0"]
    assert [r["category"] for r in rows(tmp_path / "out")] == ["widget", "gadget"]


def test_a_failed_cell_fails_its_trial_and_the_worker_goes_on(
    grid: tuple[Path, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    calls: list[str] = []

    def run_cell(category: str, base: str, spec: dict, seed: int, args: object) -> dict[str, object]:
        calls.append(category)
        if category == "widget" and calls.count("widget") == 1:
            raise RuntimeError("cell widget/tiny/seed0 failed with exit code 1; see train.log")
        return fake_result(tmp_path)

    monkeypatch.setattr(compare, "run_cell", run_cell)
    args = [*grid_args(grid, tmp_path / "out"), "--storage", str(tmp_path / "grid.log"), "--study-name", "f"]
    assert compare.main(args) == 1
    assert calls == ["widget", "gadget"]
    assert capsys.readouterr().err == "error: cell widget/tiny/seed0 failed with exit code 1; see train.log\n"
    study = optuna.load_study(study_name="f", storage=JournalStorage(JournalFileBackend(str(tmp_path / "grid.log"))))
    assert [(cell_of(t), t.state) for t in study.trials] == [
        ("widget/tiny/0", TrialState.FAIL),
        ("gadget/tiny/0", TrialState.COMPLETE),
    ]
    assert [r["category"] for r in rows(tmp_path / "out")] == ["gadget"]
    # the next worker queues the failed cell again
    assert compare.main(args) == 0
    assert calls == ["widget", "gadget", "widget"]
    assert [r["category"] for r in rows(tmp_path / "out")] == ["widget", "gadget"]


def fake_result(tmp_path: Path) -> dict[str, object]:
    """A result.json of a run folder with made-up metrics."""
    run = tmp_path / "run"
    (run / "ae_baseline").mkdir(parents=True, exist_ok=True)
    metrics = {key: 0.25 for key in compare.METRICS}
    (run / "metrics.json").write_text(compare.json.dumps(metrics))
    (run / "ae_baseline" / "metrics.json").write_text(compare.json.dumps(metrics))
    return {"run": str(run), "seconds": 1.0, "cpu_seconds": 1.0}


def test_worker_mode_errors(grid: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = grid_args(grid, tmp_path / "out")
    assert compare.main([*args, "--storage", "redis://localhost/0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage 'redis://localhost/0'") and err.count("\n") == 1
    assert compare.main([*args, "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--study-name", "x", "--table-only"]) == 2
    assert capsys.readouterr().err == "error: no study 'x' in --storage (a run without --table-only makes it)\n"
    assert compare.main([*args, "--workers", "2", "--parallel", "2"]) == 2
    assert "--parallel" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_grid_leaves_no_training_behind(grid: tuple[Path, Path], tmp_path: Path, how: signal.Signals) -> None:
    """The folder mode (no study): killing `compare` kills the train.py of every cell it was running."""
    out, log = tmp_path / "out", tmp_path / "compare.log"
    process = start_worker(grid_args(grid, out) + ["--parallel", "2"], log)
    cells = [out / "cells" / category / "tiny" / "seed0" for category in CATEGORIES]
    children: list[int] = []
    try:
        wait_for(lambda: all(processes_of(cell) for cell in cells), "both cells' train.py", process, log)
        children[:] = [pid for cell in cells for pid in processes_of(cell)]
        for pid in children:
            os.kill(pid, signal.SIGSTOP)  # frozen: they cannot finish before the grid dies
        process.send_signal(how)
        process.wait(timeout=30)
        deadline = time.monotonic() + 5
        while any(processes_of(cell) for cell in cells):
            assert time.monotonic() < deadline, f"train.py outlived the killed grid: {[processes_of(c) for c in cells]}"
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
