"""Every bad value is one line on stderr, a non-zero exit and no traceback, before any data is read or any folder is
made: --hyperparams and --env-kwargs (types, ranges, unknown keys, unreadable values), the run flags, a run folder's
config.yml and checkpoints/latest.json, --storage, and compare.py's --variants, --parallel and --table-only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import evaluate
import train
from agents.run_config import resolve_config
from benchmarks import compare
from envs.config import MVTecPatchConfig, detector_config


def write_run(folder: Path, config_text: str | None = None) -> Path:
    """A run folder holding ``config_text`` as config.yml (default: a valid config of the default preset)."""
    folder.mkdir(parents=True, exist_ok=True)
    if config_text is None:
        config_text = yaml.safe_dump(resolve_config(train.build_parser().parse_args([])), sort_keys=False)
    (folder / "config.yml").write_text(config_text)
    return folder


def bad_variants(folder: Path) -> Path:
    path = folder / "variants.yml"
    path.write_text("tiny: {algo: random\n")
    return path


def corrupt_latest(folder: Path) -> Path:
    run = write_run(folder / "run")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest.json").write_text("{not json")
    return run


# (entry point, its arguments given a tmp folder, what the line must say)
CASES: dict[str, tuple[Callable[[list[str] | None], int], Callable[[Path], list[str]], str]] = {
    "unknown algorithm kwarg": (train.main, lambda t: ["--hyperparams", "foo:1"], "foo: not a setting of Reinforce"),
    "learning rate not a number": (
        train.main,
        lambda t: ["--hyperparams", "learning_rate:abc"],
        "learning_rate='abc' is invalid: expected a number",
    ),
    "gamma not a number": (train.main, lambda t: ["--hyperparams", "gamma:high"], "gamma='high' is invalid"),
    "negative n_steps": (
        train.main,
        lambda t: ["--hyperparams", "n_steps:-5"],
        "n_steps=-5 is invalid: expected an integer >= 1",
    ),
    "algorithm's own check": (train.main, lambda t: ["--hyperparams", "baseline:median"], "unknown baseline 'median'"),
    "env kwarg not a number": (
        train.main,
        lambda t: ["--env-kwargs", "pretrain_epochs:abc"],
        "pretrain_epochs='abc' is invalid: expected an integer",
    ),
    "env kwarg not an integer": (train.main, lambda t: ["--env-kwargs", "pretrain_epochs:1.5"], "pretrain_epochs=1.5"),
    "detector field not a number": (
        train.main,
        lambda t: ["--env-kwargs", "detector:{'lr': 'abc'}"],
        "detector.lr='abc' is invalid: expected a number",
    ),
    "unclosed dict": (train.main, lambda t: ["--env-kwargs", "detector:{'a': 1"], "--env-kwargs detector: cannot read"),
    "env field inside detector": (
        train.main,
        lambda t: ["--env-kwargs", "detector:{'pretrain_epochs': 3}"],
        "env's own (pretrain_epochs)",
    ),
    "baseline setting not a number": (
        train.main,
        lambda t: ["--method", "unet", "--hyperparams", "lr:abc"],
        "lr='abc' is invalid: expected a number",
    ),
    "zero threads": (train.main, lambda t: ["--threads", "0"], "--threads=0 is invalid: expected an integer >= 1"),
    "negative save-freq": (train.main, lambda t: ["--save-freq", "-1"], "--save-freq=-1 is invalid"),
    "negative eval-freq": (train.main, lambda t: ["--eval-freq", "-5"], "--eval-freq=-5 is invalid"),
    "config.yml not YAML": (
        train.main,
        lambda t: ["-i", str(write_run(t / "run", "env: [unclosed\n"))],
        "config.yml' is not valid YAML",
    ),
    "config.yml a scalar": (train.main, lambda t: ["-i", str(write_run(t / "run", "42\n"))], "holds an int"),
    "config.yml without keys": (
        train.main,
        lambda t: ["-i", str(write_run(t / "run", "{}\n"))],
        "lacks env, seed, device, env_kwargs, hyperparams",
    ),
    "evaluate: config.yml not YAML": (
        evaluate.main,
        lambda t: ["--run", str(write_run(t / "run", "env: [unclosed\n"))],
        "is not valid YAML",
    ),
    "evaluate: config.yml a scalar": (evaluate.main, lambda t: ["--run", str(write_run(t / "run", "- a\n"))], "holds a list"),
    "evaluate: config.yml without keys": (
        evaluate.main,
        lambda t: ["--run", str(write_run(t / "run", "seed: 0\n"))],
        "lacks env, device, env_kwargs",
    ),
    "corrupt latest.json": (train.main, lambda t: ["-i", str(corrupt_latest(t))], "latest.json"),
    "storage without ://": (train.main, lambda t: ["-optimize", "--storage", "sqlite//x.db"], "a URL needs '://'"),
    "database file as a journal path": (
        train.main,
        lambda t: ["-optimize", "--storage", str(t / "study.db")],
        "names a database file as a path",
    ),
    "SQLite file in a missing folder": (
        train.main,
        lambda t: ["-optimize", "--storage", f"sqlite:///{t}/no/such/folder/study.db"],
        "does not exist",
    ),
    "compare: bad --variants YAML": (
        compare.main,
        lambda t: ["--variants", str(bad_variants(t)), "--out", str(t / "out")],
        "variants.yml",
    ),
    "compare: --parallel 0": (compare.main, lambda t: ["--parallel", "0", "--out", str(t / "out")], "--parallel 0"),
    "compare: --table-only without results": (
        compare.main,
        lambda t: ["--table-only", "--methods", "random", "--out", str(t / "out")],
        "nothing to tabulate",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_value_is_one_line_before_any_folder(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main, argv, expected = CASES[case]
    args = argv(tmp_path)
    if main is train.main:
        args += ["-f", str(tmp_path / "logs"), "-v", "0"]
        if "--threads" not in args and "-i" not in args:
            args += ["--n-trials", "0"] if "-optimize" in args else ["--dry-run"]  # where a value used to pass: fast
    before = sorted(tmp_path.rglob("*"))
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0, err
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith("error:") and expected in err, err
    assert len(err) < 400, err  # never a whole merged config
    assert sorted(tmp_path.rglob("*")) == before  # no run folder, no storage, no table


def test_a_yaml_number_string_is_read_as_the_number() -> None:
    """YAML 1.1 reads ``{pred_lr: 1e-4}`` (no dot) as a string: a float field takes it as the number it spells."""
    config = MVTecPatchConfig.from_kwargs(detector={"pred_lr": "1e-4"}, pretrain_epochs=30.0)
    assert detector_config(config).pred_lr == 1e-4 and config.pretrain_epochs == 30
    args = train.build_parser().parse_args(["--env-kwargs", "detector:{pred_lr: 1e-4}", "--hyperparams", "gamma:0.9"])
    assert resolve_config(args)["env_kwargs"]["detector"]["pred_lr"] == "1e-4"  # checked, kept as written


def test_a_dry_run_checks_the_algorithm_kwargs(capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run refuses an unknown --hyperparams key before the data is read (it used to pass and fail after the
    warm-up)."""
    assert train.main(["--dry-run", "--algo", "ppo", "--hyperparams", "baseline:mean"]) == 2
    assert "baseline: not a setting of PPO" in capsys.readouterr().err
