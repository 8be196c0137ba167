"""train.py -optimize: Optuna studies on the tiny env (search spaces, pruning, the report, workers on one storage)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

import agents.run_config
import train
from agents.hyperparams_opt import ALGO_SPACES, ENV_SPACE, deep_merge, grid, space_for, suggest, to_config
from tests.test_train import SMALL_ALGO, SMALL_ENV, data_root  # noqa: F401 - the module-scoped data fixture


def study_args(data_root: Path, folder: Path, *extra: str) -> list[str]:  # noqa: F811
    return [
        "-optimize",
        "--algo",
        "reinforce",
        "-n",
        "32",
        "--seed",
        "1",
        "-f",
        str(folder),
        "--data-root",
        str(data_root),
        "--category",
        "widget",
        "--eval-freq",
        "16",
        "--no-progress",
        "-v",
        "0",
        "--env-kwargs",
        *SMALL_ENV,
        "--hyperparams",
        *SMALL_ALGO["reinforce"],
        "--study-name",
        "tiny",
        "--tune",
        "algo",  # the env space's budgets (pre-training epochs, warm-ups) would make tiny trials slow
        *extra,
    ]


def load(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'reinforce' / 'optuna' / 'tiny' / 'study.db'}")


def test_spaces_suggest_and_nest() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = suggest(trial, space_for("reinforce"))
    assert set(values) == set(ALGO_SPACES["reinforce"]) | {f"env_kwargs.{k}" for k in ENV_SPACE}
    hyperparams, env_kwargs = to_config(values)
    assert set(hyperparams) == set(ALGO_SPACES["reinforce"])
    assert set(env_kwargs["detector"]) == {k.split(".")[1] for k in ENV_SPACE if k.startswith("detector.")}
    assert 1e-4 <= env_kwargs["detector"]["lr"] <= 1e-3 and env_kwargs["pretrain_epochs"] in range(20, 61, 10)
    lattice = grid(space_for("reinforce", "algo"))
    assert lattice["n_steps"] == [32, 64, 128] and len(lattice["learning_rate"]) == 3
    with pytest.raises(ValueError, match="no search space"):
        space_for("sac")
    with pytest.raises(ValueError, match="no knobs of its own"):
        space_for("random", "algo")


def test_three_trials_write_the_best_preset(data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    assert train.main(study_args(data_root, tmp_path, "--n-trials", "3", "--pruner", "none")) == 0
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    report = tmp_path / "reinforce" / "optuna" / "tiny"
    fragment = yaml.safe_load((report / "best_preset.yml").read_text())
    preset = fragment["MVTecPatch-v0"]["tuned-tiny"]
    assert {k: preset[k] for k in study.best_trial.params} == study.best_trial.params  # the tuned values ...
    assert preset["n_timesteps"] == 32 and preset["env_kwargs"]["detector"]  # ... over everything the trial ran with
    assert not {"data_root", "category", "seed", "device"} & set(preset["env_kwargs"])
    assert (report / "report.csv").read_text().count("\n") == 4  # header + 3 trials
    assert (report / "optimization_history.png").is_file()
    for trial in study.trials:  # every 16 steps of >= 32 (a rollout of n_steps may overshoot); never the test split
        assert len(trial.intermediate_values) >= 2
        assert trial.value == max(trial.intermediate_values.values())
        run = Path(trial.user_attrs["run"])
        assert (run / "best_detector.pt").is_file() and not (run / "metrics.json").exists()
    # the study continues where it stopped: one more trial on the same storage
    assert train.main(study_args(data_root, tmp_path, "--n-trials", "1", "--pruner", "none")) == 0
    assert len(load(tmp_path).trials) == 4


def test_the_best_preset_pasted_into_the_algo_file_reproduces_the_trial(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """best_preset.yml is meant to be pasted into hyperparams/<algo>.yml: the preset it names, which env.yml does not
    know, must resolve to the best trial's own config."""
    assert train.main(study_args(data_root, tmp_path, "--n-trials", "2", "--pruner", "none")) == 0
    best = load(tmp_path).best_trial
    report = tmp_path / "reinforce" / "optuna" / "tiny"
    hyperparams_dir = tmp_path / "hyperparams"
    hyperparams_dir.mkdir()
    for name in ("reinforce.yml", "env.yml"):
        (hyperparams_dir / name).write_text((agents.run_config.HYPERPARAMS_DIR / name).read_text())
    table = yaml.safe_load((hyperparams_dir / "reinforce.yml").read_text())
    table["MVTecPatch-v0"].update(yaml.safe_load((report / "best_preset.yml").read_text())["MVTecPatch-v0"])
    (hyperparams_dir / "reinforce.yml").write_text(yaml.safe_dump(table))
    monkeypatch.setattr(agents.run_config, "HYPERPARAMS_DIR", hyperparams_dir)
    args = ["--preset", "tuned-tiny", "--data-root", str(data_root), "--category", "widget", "--seed", "1"]
    config = agents.run_config.resolve_config(train.build_parser().parse_args(args))
    trial_config = yaml.safe_load((Path(best.user_attrs["run"]) / "config.yml").read_text())
    assert config["hyperparams"] == trial_config["hyperparams"]
    assert config["env_kwargs"] == trial_config["env_kwargs"]
    assert config["n_timesteps"] == trial_config["n_timesteps"]


def test_a_pruned_trial_is_marked_pruned(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import agents.sweeps

    # a validation metric is at most 1: this pruner stops every trial at its first report
    monkeypatch.setattr(agents.sweeps, "make_pruner", lambda *a: optuna.pruners.ThresholdPruner(lower=1.5))
    assert train.main(study_args(data_root, tmp_path, "--n-trials", "1", "--no-report")) == 0
    trial = load(tmp_path).trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert len(trial.intermediate_values) == 1  # stopped after the first validation, not at the end


def test_optimize_refuses_what_it_cannot_tune(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert train.main(["-optimize", "--method", "unet", "-f", str(tmp_path)]) == 2
    assert "has no search space" in capsys.readouterr().err
    assert train.main(["-optimize", "--algo", "random", "--tune", "algo", "-f", str(tmp_path)]) == 2
    assert "no knobs of its own" in capsys.readouterr().err
    assert train.main(["-optimize", "-f", str(tmp_path), "--storage", "ftp://host/x"]) == 2
    assert "expected an RDB URL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["-optimize", "--sampler", "cmaes"])


def test_two_workers_share_one_study(data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    args = study_args(data_root, tmp_path, "--n-trials", "2", "--n-jobs", "2", "--pruner", "none", "--sampler", "random")
    assert train.main(args) == 0
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2  # one trial per worker
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 2  # the workers' samplers differ
    assert (tmp_path / "reinforce" / "optuna" / "tiny" / "best_preset.yml").is_file()


def test_a_network_knob_nests_into_its_config_and_merges_over_the_preset() -> None:
    """``detector.predictor.padding_mode`` becomes ``detector: {predictor: {padding_mode}}``, other fields kept."""
    _, env_kwargs = to_config({"env_kwargs.detector.predictor.padding_mode": "reflect"})
    assert env_kwargs == {"detector": {"predictor": {"padding_mode": "reflect"}}}
    preset = {"detector": {"predictor": {"width": 16, "padding_mode": "replicate"}, "lr": 1e-3}}
    merged = deep_merge(preset, env_kwargs)
    assert merged["detector"] == {"predictor": {"width": 16, "padding_mode": "reflect"}, "lr": 1e-3}


def test_two_workers_started_with_one_command_never_repeat_a_trial(data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """The same command on two machines (here two processes, nothing told apart): every trial its own point."""
    import os
    import subprocess
    import sys

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "train.py", *study_args(data_root, tmp_path, "--n-trials", "3", "--pruner", "none")]
    command += ["--storage", storage, "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    workers = [subprocess.Popen(command, cwd=root, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [w.wait(timeout=600) for w in workers] == [0, 0], [w.stderr.read() for w in workers if w.stderr]
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert len(trials) == 6 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6  # no two trials share their parameters


def fake_storage(folder: Path) -> str:
    return f"sqlite:///{folder / 'reinforce' / 'optuna' / 'fake' / 'study.db'}"


def fake_study(folder: Path, calls: list[int], *extra: str) -> optuna.Study:
    """A study of the default preset whose trials train nothing (each returns 0.5), on SQLite in ``folder``."""
    from agents.optimize import optimize_hyperparameters

    argv = ["-optimize", "-f", str(folder), "--study-name", "fake", "--tune", "algo", "--no-report", *extra]
    args = train.build_parser().parse_args(argv)

    def fake_train(config: dict, run_dir: Path, **kwargs: object) -> dict[str, float]:
        calls.append(kwargs["trial"].number)  # type: ignore[attr-defined]
        return {"objective": 0.5}

    optimize_hyperparameters(agents.run_config.resolve_config(args), args, argv, fake_train, Path("train.py"))
    return optuna.load_study(study_name="fake", storage=fake_storage(folder))


def test_a_study_of_one_worker_repeats_from_its_seed(tmp_path: Path) -> None:
    runs = [fake_study(tmp_path / name, [], "--n-trials", "3", "--seed", "4") for name in ("a", "b")]
    assert [t.params for t in runs[0].trials] == [t.params for t in runs[1].trials]
    assert len({tuple(sorted(t.params.items())) for t in runs[0].trials}) == 3
    more = fake_study(tmp_path / "a", [], "--n-trials", "2", "--seed", "4")  # continuing a study draws new points
    assert len({tuple(sorted(t.params.items())) for t in more.trials}) == 5


def test_a_repeated_point_is_pruned_untrained(tmp_path: Path) -> None:
    """A point that a running or finished trial holds (a grid handing out a running point, a rerun's duplicate) is not
    trained again: the trial is pruned and marked ``repeat_of``."""
    calls: list[int] = []
    first = fake_study(tmp_path, calls, "--n-trials", "1", "--sampler", "random").trials[0]
    optuna.load_study(study_name="fake", storage=fake_storage(tmp_path)).enqueue_trial(first.params)
    second = fake_study(tmp_path, calls, "--n-trials", "1", "--sampler", "random").trials[1]
    assert calls == [0]  # trained once
    assert second.state == optuna.trial.TrialState.PRUNED and second.user_attrs["repeat_of"] == 0
    assert not (tmp_path / "reinforce" / "optuna" / "fake" / "trial_1").exists()
