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


def test_recorded_rows_count_as_finished_cells(grid: tuple[Path, Path, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    root, variants, _ = grid
    recorded = tmp_path / "recorded.csv"
    values = {k: 0.5 for k in compare.METRICS}
    with recorded.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=compare.CSV_COLUMNS)
        writer.writeheader()
        for method, auroc in (("tiny", 0.123), ("ae@tiny", 0.456)):
            writer.writerow(
                {"category": "widget", "method": method, "seed": 3, **values, "pixel_auroc": auroc}
                | {"seconds": 60, "cpu_seconds": ""}
            )

    def no_training(*args: object, **kwargs: object) -> int:
        raise AssertionError("a recorded cell was trained")

    monkeypatch.setattr(subprocess, "Popen", no_training)
    out = tmp_path / "out"
    argv = ["--data-root", str(root), "--categories", "widget", "--methods", "tiny", "ae@tiny", "--seeds", "3"]
    argv += ["--variants", str(variants), "--out", str(out), "--recorded", str(recorded)]
    assert compare.main(argv) == 0  # every row recorded: nothing trains
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["seed"], float(r["pixel_auroc"])) for r in rows] == [("tiny", "3", 0.123), ("ae@tiny", "3", 0.456)]
    assert "| tiny | 1 | 0.123 |" in (out / "table.md").read_text()
    # a finished cell in --out wins over its recorded rows
    cell = out / "cells" / "widget" / "tiny" / "seed3"
    run_dir = cell / "logs" / "random" / "MVTecPatch-v0_1"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({k: 0.9 for k in compare.METRICS}))
    (run_dir / "ae_baseline").mkdir()
    (run_dir / "ae_baseline" / "metrics.json").write_text(json.dumps({k: 0.8 for k in compare.METRICS}))
    (cell / "result.json").write_text(json.dumps({"run": str(run_dir), "seconds": 1.0, "cpu_seconds": 1.0}))
    assert compare.main([*argv, "--table-only"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], float(r["pixel_auroc"])) for r in rows] == [("tiny", 0.9), ("ae@tiny", 0.8)]
    # a file that is not a results.csv: one line naming it, exit 2, the tables already written are kept
    bad = tmp_path / "bad.csv"
    bad.write_text("category,method\nwidget,tiny\n")
    assert compare.main([*argv[:-1], str(bad)]) == 2
    assert "bad.csv" in capsys.readouterr().err and (out / "table.md").is_file()


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
