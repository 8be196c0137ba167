"""benchmarks/compare.py: cells are train.py processes, finished cells are skipped, tables have a row per category;
the recorded rows and docs/results.md's tables agree."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from benchmarks import compare, results_table, tables
from tests.conftest import write_mvtec_tree
from tests.test_train import SMALL_ENV

ROOT = Path(__file__).resolve().parents[1]


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
    assert [tuple(r[k] for k in ("category", "variant")) for r in rows] == [
        (c, m) for c in ("widget", "gadget") for m in ("tiny", "ae@tiny", "tiny_image")
    ]
    assert list(rows[0]) == list(compare.CSV_COLUMNS)
    assert {(r["cpu_model"], r["commit"]) for r in rows} == {(tables.cpu_model(), tables.code_commit())}
    assert tables.code_commit() != tables.UNKNOWN  # the tests run in a git checkout
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
                {"variant": method, "category": category, "seed": seed, **metrics, "seconds": 60, "cpu_seconds": ""}
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
    return [(r["variant"], r["seed"], float(r["pixel_auroc"])) for r in csv.DictReader((out / "results.csv").open())]


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


def test_compare_restarts_an_interrupted_cell_that_other_code_began(grid: tuple[Path, Path, Path]) -> None:
    """An interrupted cell continues only with the code that began it (tests/test_baselines.py: the continuation);
    another commit's, or one without usage.json (an older version's), starts over."""
    root, variants, out = grid
    cell = out / "cells" / "widget" / "tiny" / "seed0"
    assert run(root, variants, out, "tiny") == 0
    (cell / "result.json").unlink()
    usage = json.loads((cell / "usage.json").read_text())
    usage["attempts"][0]["commit"] = "0000000"
    (cell / "usage.json").write_text(json.dumps(usage))
    (cell / "stale.txt").write_text("left by an interrupted attempt")
    assert run(root, variants, out, "tiny") == 0
    assert (cell / "result.json").is_file() and not (cell / "stale.txt").exists()
    assert len(json.loads((cell / "result.json").read_text())["attempts"]) == 1


def test_compare_starts_over_a_cell_that_train_py_cannot_continue(grid: tuple[Path, Path, Path], capsys) -> None:
    """A cell of this code killed after its run wrote results but before any checkpoint: train.py -i refuses the
    folder (exit 2), and the grid starts the cell over instead of failing on it at every rerun."""
    import shutil

    root, variants, out = grid
    cell = out / "cells" / "gadget" / "tiny" / "seed0"
    assert run(root, variants, out, "tiny") == 0
    (cell / "result.json").unlink()
    shutil.rmtree(next((cell / "logs" / "random").glob("MVTecPatch-v0_*")) / "checkpoints")
    assert run(root, variants, out, "tiny") == 0
    assert "train.py -i refused to continue it; starting over" in capsys.readouterr().out
    result = json.loads((cell / "result.json").read_text())
    assert "-i" not in result["command"] and len(result["attempts"]) == 1


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
    """--parallel N with a CUDA device: the processes time-slice one GPU, so the runner says so."""
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


def test_every_variant_of_the_ablation_file_is_a_valid_configuration(tmp_path: Path) -> None:
    """benchmarks/ablation.yml is what docs/results.md's tables are rerun from: each variant must resolve and its merged
    env config validate (train.py --dry-run builds MVTecPatchConfig and DetectorConfig), or a grid fails hours in."""
    import train

    root = tmp_path  # defect images to spare for the contaminated variants (20% of the AE's images: 2)
    write_mvtec_tree(root, "widget", n_train=6, n_test_good=6, defects={"scratch": 12, "hole": 12}, size_hw=(32, 32))
    variants = compare.load_variants(str(compare.ABLATION))
    from models.baselines import BASELINES

    tabled = {v for table in results_table.TABLES.values() for v in table.variants}
    for name in tabled:  # every tabled name resolves: a variant, a baseline, or a row of one (ae@, budget@)
        compare.resolve_method(name, variants, "default")
    assert {v.rpartition("@")[2] for v in tabled if v not in BASELINES} <= set(variants)
    assert {"default", "default-random", "paper", "paper-random"} <= set(variants)
    args = argparse.Namespace(data_root=str(root), threads=1)
    for name in variants:
        _, spec, _ = compare.resolve_method(name, variants, "default")
        command = compare.train_command(spec, "widget", 0, args, root / "unused")
        assert command[1:3] == ["-m", "train"]
        assert train.main([*command[3:], "--dry-run"]) == 0, name


def test_the_default_variant_is_the_default_preset_and_each_ablation_row_moves_one_setting() -> None:
    """docs/results.md reports the default preset's rows under the pinned variant ``default``: the preset must be that
    variant, its random-sampler twin the same configuration, and each ablation row the default with one setting moved,
    or rows recorded under one name describe another configuration."""
    from agents import run_config
    from agents.hyperparams_opt import deep_merge

    variants = compare.load_variants(str(compare.ABLATION))

    def merged(name: str, preset: str = "default") -> tuple[str, dict]:
        _, spec, _ = compare.resolve_method(name, variants, "default")
        assert spec["preset"] == preset
        base = run_config.load_preset(spec["algo"], "MVTecPatch-v0", preset)["env_kwargs"]
        return spec["algo"], deep_merge(base, spec.get("env_kwargs") or {})

    default = run_config.load_preset("reinforce", "MVTecPatch-v0", "default")["env_kwargs"]
    assert merged("default") == ("reinforce", default)
    assert merged("default-random") == ("random", default)
    paper = run_config.load_preset("reinforce", "MVTecPatch-v0", "paper")["env_kwargs"]
    assert merged("paper", "paper") == ("reinforce", paper) and merged("paper-random", "paper")[0] == "random"
    for name, field, value in (
        *((f"labels-{k}", "k_shot", k) for k in (10, 15, 25)),
        *((f"normal-pool-{n}", "normal_pool", n) for n in (0, 60, 240)),
    ):
        algo, env = merged(name)
        assert algo == "reinforce" and env == {**default, field: value} and default.get(field) != value, name


def test_recorded_results_make_tables_of_current_and_removed_variants(tmp_path: Path, capsys) -> None:
    """benchmarks/results/results.csv is in the runner's schema, one CPU and commit per row; --table-only builds tables
    from it without training, for variants of ablation.yml and for names only the rows still know."""
    results = ROOT / "benchmarks" / "results" / "results.csv"
    header = results.read_text().splitlines()[0].split(",")
    assert header == list(compare.CSV_COLUMNS)
    rows = tables.read_rows(results)
    assert all(r["cpu_model"] and r["commit"] != tables.UNKNOWN for r in rows)
    assert {"default", "default-random", "ae@default", "unet", "vqvae2", "rank-loss"} <= {r["variant"] for r in rows}
    assert not list((ROOT / "benchmarks" / "results").glob("*session*"))
    argv = ["--categories", "magnetic_tile", "--seeds", "0", "1", "2", "--recorded", str(results), "--table-only"]
    argv += ["--out", str(tmp_path), "--prefer-cpu", results_table.REFERENCE_CPU]
    assert compare.main([*argv, "--methods", "default", "rank-loss", "ae@default"]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| default | 3 | 0.843 ± 0.041 | 0.490 ± 0.036 |" in table  # the reference CPU's rows
    assert "| rank-loss | 3 | 0.837 ± 0.026 | 0.491 ± 0.017 |" in table  # a removed variant, from its rows alone
    capsys.readouterr()
    assert compare.main([*argv[:-2], "--methods", "default"]) == 0  # without a preference: the last rows recorded
    assert "| default | 3 | 0.844 ± 0.037 | 0.486 ± 0.019 |" in (tmp_path / "table.md").read_text()
    assert compare.main([*argv, "--methods", "no-such-variant"]) == 2  # a name no row knows is still an error
    assert "unknown method 'no-such-variant'" in capsys.readouterr().err


def test_a_preferred_cpu_wins_a_cell_and_the_last_row_wins_otherwise() -> None:
    """--prefer-cpu names a CPU by words in order (the model name between them may vary); of a cell's rows, the last
    one on that CPU wins, else the last one."""
    assert tables.cpu_matches("AMD EPYC family 26 model 2", "AMD EPYC 9B14 96-Core Processor family 26 model 2")
    assert not tables.cpu_matches("AMD EPYC family 26 model 2", "AMD EPYC family 2 model 26")
    assert not tables.cpu_matches("AMD EPYC family 26 model 2", "AMD EPYC family 26 model 23")

    def row(cpu: str, auroc: float, seed: int = 0) -> dict:
        return {"category": "c", "variant": "v", "seed": seed, "cpu_model": cpu, "pixel_auroc": auroc}

    rows = [row("A family 1 model 1", 0.1), row("B family 2 model 2", 0.2), row("A family 1 model 1", 0.3)]
    rows += [row("B family 2 model 2", 0.4), row("B family 2 model 2", 0.5, seed=1)]
    assert [r["pixel_auroc"] for r in tables.index_rows(rows).values()] == [0.4, 0.5]
    assert [r["pixel_auroc"] for r in tables.index_rows(rows, "A family 1 model 1").values()] == [0.3, 0.5]


def test_docs_results_tables_are_what_the_recorded_rows_give(tmp_path: Path) -> None:
    """docs/results.md's generated blocks equal what benchmarks.results_table makes from results.csv, and the check
    catches a drifted table."""
    assert results_table.main(["--check"]) == 0
    doc = tmp_path / "results.md"
    doc.write_text(results_table.DOC.read_text().replace("| default | 3 | 0.843", "| default | 3 | 0.850"))
    assert results_table.main(["--check", "--doc", str(doc)]) == 1
    assert results_table.main(["--doc", str(doc)]) == 0
    assert doc.read_text() == results_table.DOC.read_text()


def test_ae_health_reports_a_live_initial_ae_and_rejects_an_unknown_preset(grid, capsys) -> None:
    from benchmarks import ae_health

    root = grid[0]
    common = ["--data-root", str(root), "--category", "widget", "--epochs", "0", "--images", "2"]
    assert ae_health.main([*common, "--set", "ae.output=sigmoid"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("initialised: output 0.4") and "max grad" in line  # a fresh AE's sigmoid sits near 0.5
    assert ae_health.main(common) == 0  # the default's linear output starts near 0
    assert abs(float(capsys.readouterr().out.split("output ")[1].split("..")[0])) < 0.2
    assert ae_health.main(["--data-root", str(root), "--category", "widget", "--preset", "fast"]) == 2
    assert "unknown preset 'fast'" in capsys.readouterr().err


def test_paired_table_subtracts_the_reference_seed_by_seed() -> None:
    def row(variant: str, seed: int, auroc: float, f1: float) -> dict:
        return {"variant": variant, "category": "tile", "seed": seed, "pixel_auroc": auroc, "pixel_f1max": f1}

    rows = [row("random", 0, 0.80, 0.40), row("random", 1, 0.70, 0.50), row("random", 2, 0.90, 0.45)]
    rows += [row("rl", 0, 0.82, 0.41), row("rl", 1, 0.69, 0.52), row("other", 0, 0.5, 0.5)]
    lines = tables.paired_table(rows, {"rl": "random", "absent": "random"}, "tile", (0, 1, 2), ("pixel_auroc", "pixel_f1max"))
    assert len(lines) == 3  # header, rule, one pair: a variant without rows is left out
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:4] == ["rl", "random", "0, 1", "+0.020 / -0.010"]  # seed 2 has no rl row: not paired
    assert cells[4] == "+0.005 ± 0.021" and cells[5] == "+0.010 / +0.020" and cells[7] == "1 of 2"


def test_the_sampler_goal_picks_c_star_on_complete_levels_and_checks_every_condition() -> None:
    """c* is the level whose random sampler loses most AUROC among the levels with every seed; a sampler meets the
    goal only with half of both costs back, ahead on every seed, level at c = 0 and a committed policy."""

    def row(variant: str, seed: int, auroc: float, f1: float, entropy: float = float("nan")) -> dict:
        return {
            "variant": variant,
            "category": "tile",
            "seed": seed,
            "pixel_auroc": auroc,
            "pixel_f1max": f1,
            "policy_entropy": entropy,
        }

    rows = [row("c00-random", s, 0.90, 0.50) for s in (0, 1)]
    rows += [row("c10-random", s, 0.84, 0.44) for s in (0, 1)]  # costs 0.06 / 0.06 on both seeds
    rows += [row("c20-random", 0, 0.50, 0.10)]  # costs more, but on one seed of two: not eligible
    rows += [row("c10-good", 0, 0.88, 0.48, 1.0), row("c10-good", 1, 0.87, 0.47, 1.2)]  # wins back 0.035 of 0.06
    rows += [row("c00-good", s, 0.90, 0.495) for s in (0, 1)]
    rows += [row("c10-uniform", s, 0.88, 0.48, 2.19) for s in (0, 1)]  # as good, but its policy did not commit
    rows += [row("c00-uniform", s, 0.90, 0.50) for s in (0, 1)]
    rows += [row("c10-mixed", 0, 0.89, 0.49, 1.0), row("c10-mixed", 1, 0.83, 0.49, 1.0)]  # behind on seed 1
    rows += [row("c00-mixed", s, 0.90, 0.50) for s in (0, 1)]
    rows += [row("c10-costly", s, 0.88, 0.48, 1.0) for s in (0, 1)]
    rows += [row("c00-costly", s, 0.88, 0.48) for s in (0, 1)]  # 0.02 below random at c = 0
    lines = tables.sampler_goal_table(rows, "tile", (0, 1), ("10", "20"), ("good", "uniform", "mixed", "costly", "absent"))
    text = "\n".join(lines)
    assert "c* = c10: random lost 0.060 AUROC and 0.060 F1max" in text
    goal = {
        cells[1]: cells[1:]
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)
        if cells[0] == "c10 (c*)"
    }
    assert goal["good"][2] == "+0.035 (+58%)" and goal["good"][4] == "2 of 2" and goal["good"][-1] == "met"
    assert goal["uniform"][-1] == goal["mixed"][-1] == goal["costly"][-1] == "not met"
    assert goal["mixed"][4] == "1 of 2" and goal["costly"][5].startswith("-0.020 / -0.020")
    assert goal["absent"][2] == "no rows"
    assert not any(line.startswith("| c20") for line in lines[lines.index(next(x for x in lines if x.startswith("c* ="))) :])
    rows = [r for r in rows if r["seed"] == 0 or r["variant"] != "c10-random"]
    assert "no c*" in tables.sampler_goal_table(rows, "tile", (0, 1), ("10",), ("good",))[-1]
