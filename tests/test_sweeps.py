"""agents/sweeps.py: storages by spelling, and queued trials taken exactly once by racing processes on SQLite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from agents.sweeps import make_storage

WORKER = textwrap.dedent(
    """
    import sys, time
    import optuna
    from agents.sweeps import make_storage, serialize_asks

    spec, lock = sys.argv[1], sys.argv[2] == "lock"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="race", storage=make_storage(spec))
    if lock:
        serialize_asks(study, spec)

    def objective(trial):
        if not trial.user_attrs.get("queued"):  # nothing was queued any more
            trial.study.stop()
            raise optuna.TrialPruned()
        time.sleep(0.02)
        return float(trial.suggest_int("i", 0, 1000))  # the queued value

    study.optimize(objective, n_trials=200)
    """
)


def race(tmp_path: Path, lock: bool, n: int = 40, workers: int = 3) -> list[int]:
    spec = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=make_storage(spec))
    for i in range(n):
        study.enqueue_trial({"i": i}, user_attrs={"queued": True})
    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, "-c", WORKER, spec, "lock" if lock else "nolock"]
    processes = [subprocess.Popen(args, cwd=root, stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert all(p.returncode == 0 for p in processes), errors
    done = optuna.load_study(study_name="race", storage=make_storage(spec)).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    return sorted(int(t.value or 0) for t in done)


def test_queued_trials_run_exactly_once_on_sqlite(tmp_path: Path) -> None:
    assert race(tmp_path, lock=True) == list(range(40))


def test_storage_spellings(tmp_path: Path) -> None:
    assert isinstance(make_storage(f"sqlite:///{tmp_path / 's.db'}"), optuna.storages.RDBStorage)
    assert isinstance(make_storage(str(tmp_path / "j.log")), optuna.storages.JournalStorage)
    with pytest.raises(ValueError, match="needs '://'"):
        make_storage("sqlite:/x.db")
    with pytest.raises(ValueError, match=r"u:\*\*\*@") as error:
        make_storage("ftp://u:secret@host/db")
    assert "secret" not in str(error.value)
