"""benchmarks/compare.py: cells are train.py processes, finished cells are skipped, tables have a row per category."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_mvtec_tree
from tests.test_train import SMALL_ENV

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare  # noqa: E402


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("data")
    for name in ("widget", "gadget"):
        write_mvtec_tree(root, name, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    env = {k: yaml.safe_load(v) for k, v in (pair.split(":", 1) for pair in SMALL_ENV)}
    variants = tmp_path_factory.mktemp("cfg") / "variants.yml"
    variants.write_text(
        yaml.safe_dump(
            {
                "tiny": {"algo": "random", "n_timesteps": 16, "env_kwargs": env},
                "tiny_image": {
                    "algo": "random",
                    "n_timesteps": 16,
                    "env_kwargs": {**env, "detector": {"predictor_inputs": ["profile", "image"]}},
                },
            }
        )
    )
    out = tmp_path_factory.mktemp("out")
    return root, variants, out


def run(root: Path, variants: Path, out: Path, *methods: str) -> int:
    return compare.main(
        ["--data-root", str(root), "--categories", "widget", "gadget", "--methods", *methods]
        + ["--seeds", "0", "--variants", str(variants), "--out", str(out), "--threads", "1"]
    )


def test_compare_runs_every_cell_once_and_writes_the_tables(grid: tuple[Path, Path, Path], monkeypatch) -> None:
    root, variants, out = grid
    assert run(root, variants, out, "tiny", "ae@tiny", "tiny_image") == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [tuple(r[k] for k in ("category", "method")) for r in rows] == [
        (c, m) for c in ("widget", "gadget") for m in ("tiny", "ae@tiny", "tiny_image")
    ]
    assert set(rows[0]) == set(compare.CSV_COLUMNS)
    assert all(0.0 <= float(r["pixel_auroc"]) <= 1.0 for r in rows)
    # the AE-only row reads the same training's baseline: 2 categories x 2 trained configurations
    assert len(list((out / "cells").glob("*/*/seed0/result.json"))) == 4
    run_config = yaml.safe_load(next((out / "cells" / "widget" / "tiny_image").rglob("config.yml")).read_text())
    assert run_config["env_kwargs"]["detector"]["predictor_inputs"] == ["profile", "image"]
    table = (out / "table.md").read_text()
    assert "### widget" in table and "### gadget" in table
    f1_table = table.split("### pixel F1max")[1].split("###")[0]
    assert sum(line.startswith("| widget") or line.startswith("| gadget") for line in f1_table.splitlines()) == 2

    # A rerun trains nothing: every cell is finished
    def no_training(*args: object, **kwargs: object) -> int:
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(subprocess, "Popen", no_training)
    assert run(root, variants, out, "tiny", "ae@tiny", "tiny_image") == 0
    # --table-only reports the finished cells and trains nothing, even for a seed that never ran
    assert (
        compare.main(
            ["--data-root", str(root), "--categories", "widget", "--methods", "tiny", "--seeds", "0", "5"]
            + ["--variants", str(variants), "--out", str(out), "--table-only"]
        )
        == 0
    )
    assert [r["seed"] for r in csv.DictReader((out / "results.csv").open())] == ["0"]


def write_recorded(path: Path, rows: list[tuple[str, str, int, float]]) -> Path:
    """A results.csv of (category, method, seed, pixel AUROC) rows; the other metrics 0.5, CPU time not recorded."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=compare.CSV_COLUMNS)
        writer.writeheader()
        for category, method, seed, auroc in rows:
            metrics = {k: 0.5 for k in compare.METRICS} | {"pixel_auroc": auroc}
            writer.writerow(
                {"category": category, "method": method, "seed": seed, **metrics, "seconds": 60, "cpu_seconds": ""}
            )
    return path


def fake_cell(out: Path, method: str, seed: int, score: float, ae_score: float) -> None:
    """A finished cell of --out, as run_cell leaves it: result.json, the run's metrics and its AE-only metrics."""
    cell = out / "cells" / "widget" / method / f"seed{seed}"
    run_dir = cell / "logs" / "random" / "MVTecPatch-v0_1"
    (run_dir / "ae_baseline").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({k: score for k in compare.METRICS}))
    (run_dir / "ae_baseline" / "metrics.json").write_text(json.dumps({k: ae_score for k in compare.METRICS}))
    (cell / "result.json").write_text(json.dumps({"run": str(run_dir), "seconds": 1.0, "cpu_seconds": 1.0}))


def aurocs(out: Path) -> list[tuple[str, str, float]]:
    return [(r["method"], r["seed"], float(r["pixel_auroc"])) for r in csv.DictReader((out / "results.csv").open())]


def test_recorded_rows_count_as_finished_cells(grid: tuple[Path, Path, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    root, variants, _ = grid
    early = write_recorded(tmp_path / "early.csv", [("widget", "tiny", 3, 0.111), ("widget", "ae@tiny", 3, 0.456)])
    late = write_recorded(tmp_path / "late.csv", [("widget", "tiny", 3, 0.123), ("widget", "tiny", 4, 0.7)])
    trained: list[list[str]] = []

    def fake_training(cmd: list[str], **kwargs: object) -> object:
        trained.append(cmd)
        seed = int(cmd[cmd.index("--seed") + 1])
        fake_cell(out, "tiny", seed, 0.9, 0.8)  # what the training would leave, metrics included
        raise AssertionError("stop here")  # the test's cells are made by fake_cell

    monkeypatch.setattr(subprocess, "Popen", fake_training)
    out = tmp_path / "out"
    argv = ["--data-root", str(root), "--categories", "widget", "--methods", "tiny", "ae@tiny", "--seeds", "3"]
    argv += ["--variants", str(variants), "--out", str(out), "--recorded", str(early), str(late)]
    assert compare.main(argv) == 0  # every row recorded: nothing trains
    assert trained == []
    assert aurocs(out) == [("tiny", "3", 0.123), ("ae@tiny", "3", 0.456)]  # the later file wins a tie
    assert "| tiny | 1 | 0.123 |" in (out / "table.md").read_text()
    # seed 4: tiny is recorded but ae@tiny is not, so its training is needed (here it "fails" after making its cell)
    with pytest.raises(AssertionError, match="stop here"):
        compare.main([*argv, "--seeds", "4"])
    assert len(trained) == 1 and trained[0][trained[0].index("--seed") + 1] == "4"
    # a finished cell in --out wins over recorded rows, with and without --table-only
    fake_cell(out, "tiny", 3, 0.9, 0.8)
    for extra in ([], ["--table-only"]):
        assert compare.main([*argv, *extra]) == 0
        assert aurocs(out) == [("tiny", "3", 0.9), ("ae@tiny", "3", 0.8)]
    assert len(trained) == 1
    # a name that depends on --preset is matched by name alone: a warning says so
    write_recorded(late, [("widget", "random", 3, 0.3)])
    assert compare.main([*argv[:5], "random", *argv[7:]]) == 0
    assert aurocs(out) == [("random", "3", 0.3)] and "matched by name" in capsys.readouterr().err
    # files that are not results.csv files: one line naming the file, exit 2, the tables already written are kept
    table = (out / "table.md").read_text()
    (tmp_path / "columns.csv").write_text("category,method\nwidget,tiny\n")
    write_recorded(tmp_path / "value.csv", [("widget", "tiny", 3, 0.5)])
    (tmp_path / "value.csv").write_text((tmp_path / "value.csv").read_text().replace(",3,", ",three,"))
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage")
    for name in ("columns.csv", "value.csv", "binary.csv", "missing.csv"):
        assert compare.main([*argv[:-2], str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert name in err and err.strip().count("\n") == 0, err
    assert "line 2" in (compare.main([*argv[:-2], str(tmp_path / "value.csv")]), capsys.readouterr().err)[1]
    assert (out / "table.md").read_text() == table
    assert compare.main([*argv, "--workers", "2"]) == 2
    assert "--recorded" in capsys.readouterr().err


def test_compare_restarts_an_interrupted_cell(grid: tuple[Path, Path, Path]) -> None:
    root, variants, out = grid
    cell = out / "cells" / "widget" / "tiny" / "seed0"
    (cell / "result.json").unlink()
    (cell / "stale.txt").write_text("left by an interrupted attempt")
    assert run(root, variants, out, "tiny") == 0
    assert (cell / "result.json").is_file() and not (cell / "stale.txt").exists()


def test_compare_rejects_an_unknown_method(grid: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, variants, out = grid
    assert run(root, variants, out, "nonsense") == 2
    assert "unknown method 'nonsense'" in capsys.readouterr().err


def test_device_reaches_every_cell_and_a_missing_one_fails_before_any_cell(grid: tuple[Path, Path, Path], capsys) -> None:
    """--device is train.py's --device for every cell; a device this machine lacks is a one-line error (exit 2) before
    any cell starts, not one failure per cell."""
    root, variants, _ = grid
    spec = {"algo": "reinforce", "preset": "default"}
    args = argparse.Namespace(data_root=str(root), threads=1, device="cuda:0")
    command = compare.train_command(spec, "widget", 0, args, root / "unused")
    assert command[command.index("--device") + 1] == "cuda:0"
    assert "--device" not in compare.train_command(spec, "widget", 0, argparse.Namespace(data_root=None, threads=1), root)
    out = root.parent / "device-out"
    code = compare.main(["--data-root", str(root), "--categories", "widget", "--out", str(out), "--device", "cuda:99"])
    assert code == 2 and "cuda:99" in capsys.readouterr().err
    assert not (out / "cells").exists()


def test_several_cells_on_one_gpu_are_warned_about(grid: tuple[Path, Path, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    """--parallel N with a CUDA device: the processes time-slice one GPU (session 27), so the runner says so."""
    import models.runtime

    root, variants, _ = grid
    monkeypatch.setattr(models.runtime, "check_device", lambda device: device)  # no GPU here: pretend there is one
    argv = ["--data-root", str(root), "--categories", "widget", "--variants", str(variants), "--out", str(tmp_path)]
    argv += ["--methods", "reinforce", "--table-only"]  # trains nothing
    compare.main([*argv, "--device", "cuda", "--parallel", "2"])
    assert "time-sliced" in capsys.readouterr().err
    compare.main([*argv, "--device", "cuda", "--parallel", "1"])
    compare.main([*argv, "--parallel", "2"])
    assert "time-sliced" not in capsys.readouterr().err


def test_every_variant_of_the_ablation_file_is_a_valid_configuration(grid: tuple[Path, Path, Path]) -> None:
    """benchmarks/ablation.yml is what the README's tables are rerun from: each variant must resolve and its merged
    env config validate (train.py --dry-run builds MVTecPatchConfig and DetectorConfig), or a grid fails hours in."""
    import train

    root = grid[0]
    ablation = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.yml"
    variants = compare.load_variants(str(ablation))
    assert {"reflect-pad", "default-s5"} <= set(variants)
    args = argparse.Namespace(data_root=str(root), threads=1)
    for name in variants:
        _, spec, _ = compare.resolve_method(name, variants, "default")
        command = compare.train_command(spec, "widget", 0, args, root / "unused")
        assert train.main([*command[2:], "--dry-run"]) == 0, name


def test_the_default_preset_is_the_variant_the_readme_names_as_the_default() -> None:
    """The README reports the default's rows under a pinned variant name (global-fusion since session 25; focal in
    sessions 18-24, warm3000 before): the default preset must be that variant, and each previous default must differ
    from the next by the one option that moved, or rows recorded under one name describe another configuration."""
    import train
    from agents.hyperparams_opt import deep_merge

    variants = compare.load_variants(str(Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.yml"))
    default = train.load_preset("reinforce", "MVTecPatch-v0", "default")["env_kwargs"]

    def merged(name: str) -> dict:
        _, spec, _ = compare.resolve_method(name, variants, "default")
        assert spec["preset"] == "default" and spec["algo"] in ("reinforce", "random")
        return deep_merge(default, spec.get("env_kwargs") or {})

    def one_option_apart(a: dict, b: dict) -> set:
        assert {k for k in a if a[k] != b[k]} <= {"detector"}
        return {k for k in a["detector"].keys() | b["detector"].keys() if a["detector"].get(k) != b["detector"].get(k)}

    assert merged("global-fusion") == default == merged("global-fusion-random")
    focal = merged("focal")
    assert focal == merged("focal-random")
    assert one_option_apart(default, focal) == {"map_global_weight"}
    assert (focal["detector"]["map_global_weight"], default["detector"]["map_global_weight"]) == (0.0, 0.1)
    previous = merged("warm3000")
    assert previous == merged("warm3000-random")
    assert one_option_apart(focal, previous) == {"pred_loss"}
    assert (previous["detector"]["pred_loss"], focal["detector"]["pred_loss"]) == ("bce", "focal")
    before = merged("ema-flips")  # the default of sessions 10-11: the warm-up is all that separates it from warm3000
    assert {k for k in previous if previous[k] != before[k]} == {"predictor_warmup_updates"}
    candidates = (
        ("paste-margin", "synthetic_paste_margin"),
        ("paste-norotate", "synthetic_paste_rotate"),
        ("ema999-random", "predictor_ema"),
    )
    for candidate, option in candidates:
        other = merged(candidate)  # a candidate measured against the focal default changes exactly one option of it
        assert one_option_apart(focal, other) == {option}


def test_ae_health_reports_a_live_initial_ae_and_rejects_an_unknown_preset(grid, capsys) -> None:
    import ae_health

    root = grid[0]
    common = ["--data-root", str(root), "--category", "widget", "--epochs", "0", "--images", "2"]
    assert ae_health.main([*common, "--set", "ae.output=sigmoid"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("initialised: output 0.4") and "max grad" in line  # a fresh AE's sigmoid sits near 0.5
    assert ae_health.main(common) == 0  # the default's linear output starts near 0
    assert abs(float(capsys.readouterr().out.split("output ")[1].split("..")[0])) < 0.2
    assert ae_health.main(["--data-root", str(root), "--category", "widget", "--preset", "fast"]) == 2
    assert "unknown preset 'fast'" in capsys.readouterr().err


def test_entropy_curve_reads_the_policy_entropy_from_tensorboard(tmp_path: Path, capsys) -> None:
    import entropy_curve
    from torch.utils.tensorboard import SummaryWriter

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
