"""The one comparison runner: (category, method, seed) cells, each a train.py process, then the tables.

    python -m benchmarks.compare --data-root ../shared/data --categories magnetic_tile tire \\
        --methods default default-random ae@default --seeds 0 1 2 --out runs/compare
    python -m benchmarks.compare ... --methods reinforce random ae --preset paper  # the registry's algorithms on a preset

A *method* is one of
  * an RL algorithm of the registry (``reinforce``, ``random``, ``ppo``, ``a2c``, ``dqn``), trained with ``--preset``;
  * ``ae``: the AE-only residual baseline of the ``reinforce`` cell of the same (category, seed) (run if missing);
  * a baseline of the paper's tables, ``unet`` or ``vqvae2`` (``train.py --method``, same split and metrics);
  * a name from ``--variants FILE`` (default: ``benchmarks/ablation.yml``, the variants of docs/results.md), a YAML
    mapping ``name: {algo | method, preset, env_kwargs, hyperparams, n_timesteps}`` (every key optional): a named,
    pinned configuration (``method: unet`` with ``hyperparams`` varies a baseline). ``ae@NAME`` is the AE-only
    baseline of that variant; ``budget@NAME``, of a baseline with an early stop (``unet-plateau``), is its run as it
    stood at ``min_updates`` (``<run>/budget/``), which is the run of the ``budget`` preset: one cell, two rows.

Every cell runs ``train.py`` in its own process (``--parallel`` at a time, ``--threads`` torch threads each) into
``OUT/cells/<category>/<method>/seed<k>/`` and is finished once ``result.json`` is there: a rerun skips finished
cells, and an interrupted one (no ``result.json``) continues from its last checkpoint (``train.py -i``) when the code
is the same commit, else starts over; its seconds and CPU seconds add up over the attempts.
Cells share nothing but the output folder, so several machines can split a grid by category or seed.

*Worker mode* (``--storage URL`` or ``--workers N``; the flag names of rl-baselines3-zoo): the grid is an Optuna
study (``--study-name``, default ``compare-<name of --out>``) in which every training cell is one trial with the fixed
parameter ``cell`` = ``category/method/seed``; every worker queues the grid's missing cells when it starts, takes
queued cells until none is left, then waits while other workers' cells run (a cell whose worker died is failed after
``--grace-period`` seconds without a heartbeat and queued again, up to 3 times), and writes the tables from the
study. A cell is trained once: a second trial of the same cell (two workers queueing it at the same moment) reuses the
finished one or yields to the lower-numbered one. ``--workers N`` starts N worker processes here (``--threads`` =
cores / N each) on ``--storage`` (default: an SQLite file ``OUT/<study name>.db``)::

    python -m benchmarks.compare --categories magnetic_tile tire ... --workers 2          # one machine
    python -m benchmarks.compare --categories magnetic_tile tire ... \\
        --storage postgresql://user:pw@host/db --study-name grid1                         # on every machine

Every worker needs the same grid arguments (``--categories``, ``--methods``, ``--seeds``, ``--variants``): a study
refuses another grid. A journal file on a shared filesystem (``--storage /shared/grid1.log``) also works, but has no
heartbeat: a dead worker's cell stays "running", and a worker does not wait for other workers' cells. The table
rows live in the study (trial user attribute ``rows``), so ``--table-only --storage URL`` writes them anywhere; the
run folders stay on the machine that trained them. Failed cells are queued again when a worker starts.

Writes ``OUT/results.csv`` (one row per cell and method, the schema of ``benchmarks/results/results.csv``: the
method as ``variant``, the metrics, ``seconds`` of wall clock, the cell's own ``cpu_seconds``, the ``cpu_model`` and
the ``commit`` of the code that trained it) and ``OUT/table.md``: per category, a row per method with every metric as
mean ± std over seeds, then the paper's two tables (pixel F1max and pixel AUROC, category x method).

*Recorded rows* (``--recorded CSV ...``, not with worker mode): rows of ``results.csv`` files
(``benchmarks/results/results.csv`` keeps this project's) stand in for cells, so a table can combine grids that ran
on other machines or in other checkouts, whose run folders are gone. A training is skipped when every row of it that
the grid asks for is recorded (its method and, if asked, its ``ae@`` or ``budget@`` row); otherwise it runs, and a
finished cell in ``OUT`` always wins over recorded rows. Of several recorded rows of one cell the last wins, or one
measured on the CPU that ``--prefer-cpu`` names. Rows are matched by (category, method, seed) alone, so record pinned
variants: a recorded ``reinforce`` row is whatever ``--preset`` meant when it was recorded (the runner warns when it
uses one). Rows of variants not in ``--variants`` make tables with ``--table-only``::

    python -m benchmarks.compare --categories magnetic_tile tire --methods default default-random focal \\
        --seeds 0 1 2 --recorded benchmarks/results/results.csv --prefer-cpu "family 26 model 2" --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agents.baseline_trainer import BUDGET_SNAPSHOT
from benchmarks.tables import (
    CSV_COLUMNS,
    METRICS,
    UNKNOWN,
    Key,
    code_commit,
    cpu_model,
    index_rows,
    markdown_tables,
    read_rows,
    write_rows,
)

if TYPE_CHECKING:
    import optuna

__all__ = ["CSV_COLUMNS", "METRICS", "main"]
ABLATION = Path(__file__).with_name("ablation.yml")  # the default --variants: the named configurations of docs/results.md


def load_variants(path: str | None) -> dict[str, dict[str, Any]]:
    """The named configurations of the YAML file ``path`` ({} for None).

    Raises:
        ValueError: the file is missing, not YAML, or not a mapping of variants (the message names it).
    """
    if path is None:
        return {}
    try:
        table = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        problem = getattr(error, "problem", None) or getattr(error, "strerror", None) or type(error).__name__
        raise ValueError(f"--variants '{path}': cannot read it as YAML ({problem})") from error
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"'{path}': expected a mapping of variant name -> {{algo, preset, env_kwargs, hyperparams}}")
    allowed = {"algo", "method", "preset", "env_kwargs", "hyperparams", "n_timesteps", "description"}
    for name, spec in table.items():
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"'{path}': variant {name!r} has unknown keys {sorted(unknown)} (valid: {sorted(allowed)})")
    return table


def load_recorded(paths: list[str] | None, prefer_cpu: str | None = None) -> dict[Key, dict[str, Any]]:
    """Rows of ``results.csv`` files, one per (category, variant, seed) (:func:`benchmarks.tables.index_rows`: a later
    row wins a tie, a row measured on ``prefer_cpu`` wins over others).

    Raises:
        ValueError: a file is unreadable or not a ``results.csv`` (the message names it).
    """
    return index_rows([row for path in paths or [] for row in read_rows(path)], prefer_cpu)


# PREFIX@NAME: a row read from a folder inside NAME's run instead of the run itself
SUB_RUNS = {"ae": "ae_baseline", "budget": BUDGET_SNAPSHOT}


def resolve_method(method: str, variants: dict[str, dict[str, Any]], preset: str) -> tuple[str, dict[str, Any], str | None]:
    """A method name -> (the cell that trains it, its training spec, the folder of its run that holds the row: None
    for the run itself, ``ae_baseline`` for ``ae@``, ``budget`` for ``budget@``)."""
    from agents import AGENTS
    from models.baselines import BASELINES

    prefix, _, name = method.rpartition("@")
    if method == "ae":
        prefix, name = "ae", "reinforce"
    if prefix and prefix not in SUB_RUNS:
        raise ValueError(f"unknown method {method!r}: {prefix!r}@ is not a row of a run (valid: ae@, budget@)")
    if name in variants:
        spec = dict(variants[name])
    elif name in AGENTS:
        spec = {"algo": name}
    elif name in BASELINES and prefix != "ae":
        spec = {"method": name}
    else:
        valid = [*AGENTS, "ae", *BASELINES, *variants, *(f"ae@{v}" for v in variants)]
        raise ValueError(f"unknown method {method!r} (valid: {', '.join(valid)})")
    baseline = spec.get("method") in BASELINES
    if baseline and prefix == "ae":
        raise ValueError(f"{method!r}: a {spec['method']} baseline has no AE-only residual")
    if baseline and "algo" in spec:
        raise ValueError(f"{method!r}: a variant names either an algo or a baseline method, not both")
    if not baseline:
        spec.setdefault("algo", "reinforce")
    spec.setdefault("preset", preset)
    if prefix == "budget" and not (baseline and spec["preset"] == "plateau"):
        raise ValueError(f"{method!r}: budget@ reads a baseline trained with an early stop (preset plateau)")
    return name, spec, SUB_RUNS.get(prefix)


def run_flags(args: argparse.Namespace) -> list[str]:
    """The train.py flags of every cell, new or continued: quiet, the grid's threads and device."""
    flags = ["--no-progress", "-v", "1", "--threads", str(args.threads)]
    return flags + (["--device", args.device] if getattr(args, "device", None) is not None else [])


def train_command(spec: dict[str, Any], category: str, seed: int, args: argparse.Namespace, folder: Path) -> list[str]:
    model = ["--method", spec["method"]] if "method" in spec else ["--algo", spec["algo"]]
    cmd = [sys.executable, "-m", "train", *model, "--preset", spec["preset"], "--seed", str(seed)]
    cmd += ["-f", str(folder), *run_flags(args)]
    if args.data_root is not None:
        cmd += ["--data-root", args.data_root, "--category", category]
    if spec.get("n_timesteps") is not None:
        cmd += ["-n", str(spec["n_timesteps"])]
    if spec.get("env_kwargs"):
        cmd += ["--env-kwargs", *(f"{k}:{v!r}" for k, v in spec["env_kwargs"].items())]
    if spec.get("hyperparams"):
        cmd += ["--hyperparams", *(f"{k}:{v!r}" for k, v in spec["hyperparams"].items())]
    return cmd


_LIBC: Any = None


def _die_with_parent() -> None:
    """``preexec_fn`` of every cell's train.py (Linux): killed with the compare process (or worker) that started it, so
    a stopped grid leaves no training behind, and a dead worker's train.py does not go on writing into the cell folder
    that the retry of its cell starts over. (The death signal follows the thread that forked, which waits for the
    child to its end.)"""
    parent = os.getppid()
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the worker died before prctl
        os._exit(1)


def _child_options() -> dict[str, Any]:
    global _LIBC
    if not sys.platform.startswith("linux"):
        return {}
    if _LIBC is None:  # loaded here, not after fork
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return {"preexec_fn": _die_with_parent}


def cell_folder(out: str | Path, category: str, base: str, seed: int) -> Path:
    """Where one training of the grid lives: ``OUT/cells/<category>/<method>/seed<k>``."""
    return Path(out) / "cells" / category / base / f"seed{seed}"


USAGE_POLL = 30.0  # seconds between two records of a running cell's CPU time (usage.json)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running (or not yet reaped) process, all its threads, from ``/proc/<pid>/stat``
    (Linux; None elsewhere or once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3 (state) on
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15: utime, stime


def cell_runs(cell: Path, spec: dict[str, Any]) -> list[Path]:
    """The run folders train.py wrote in a cell, oldest first: the last is the cell's run."""
    return sorted((cell / "logs" / (spec.get("method") or spec["algo"])).glob("MVTecPatch-v0_*"))


def continuation(cell: Path, spec: dict[str, Any]) -> tuple[Path | None, list[dict[str, Any]]]:
    """An interrupted cell's run folder and the attempts recorded in its ``usage.json``, when this code (the same
    commit) began it, so that ``train.py -i`` may continue it; else (None, []): it starts over."""
    usage, runs = cell / "usage.json", cell_runs(cell, spec)
    if not usage.is_file() or not runs or not (runs[-1] / "config.yml").is_file():
        return None, []
    try:
        attempts = json.loads(usage.read_text())["attempts"]
    except (ValueError, KeyError, TypeError):
        return None, []
    if not attempts or any(a.get("commit") != code_commit() for a in attempts):
        return None, []  # another commit's run is not this code's to continue
    return runs[-1], attempts


def run_cell(category: str, base: str, spec: dict[str, Any], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one cell unless it is finished; returns its result.json (the run folder, the seconds and CPU seconds of
    all its attempts).

    An interrupted cell (no ``result.json``: the grid was stopped or killed) continues from its run's last checkpoint
    (``train.py -i``, which gives the uninterrupted run) when the code is the same commit, else starts over. While a
    cell runs, ``usage.json`` records each attempt's seconds and CPU seconds every :data:`USAGE_POLL` seconds, so a
    killed attempt's cost still counts."""
    import threading

    cell = cell_folder(args.out, category, base, seed)
    done = cell / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    run, attempts = continuation(cell, spec) if cell.exists() else (None, [])
    if run is None and cell.exists():  # an interrupted attempt that cannot be continued: start the cell over
        shutil.rmtree(cell)
    cell.mkdir(parents=True, exist_ok=True)
    if run is None:
        cmd = train_command(spec, category, seed, args, cell / "logs")
    else:
        cmd = [sys.executable, "-m", "train", "-i", str(run), *run_flags(args)]
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    print(f"[compare] {category} {base} seed {seed}: {' '.join(cmd)}", flush=True)
    attempt = {"started": time.time(), "commit": code_commit(), "seconds": 0.0, "cpu_seconds": 0.0}

    def record(seconds: float, cpu_seconds: float) -> None:
        attempt.update(seconds=round(seconds, 1), cpu_seconds=round(cpu_seconds, 1))
        tmp = cell / "usage.tmp"
        tmp.write_text(json.dumps({"attempts": [*attempts, attempt]}, indent=2))
        tmp.replace(cell / "usage.json")

    start, finished = time.perf_counter(), threading.Event()
    record(0.0, 0.0)
    with (cell / "train.log").open("a" if run is not None else "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, **_child_options())

        def poll() -> None:
            while not finished.wait(USAGE_POLL):
                cpu = process_cpu_seconds(process.pid)
                if cpu is not None:
                    record(time.perf_counter() - start, cpu)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own CPU time, whatever else runs
        finished.set()
        watcher.join()
        process.returncode = code = os.waitstatus_to_exitcode(status)
    record(time.perf_counter() - start, usage.ru_utime + usage.ru_stime)
    attempts = [*attempts, attempt]
    seconds, cpu_seconds = sum(a["seconds"] for a in attempts), sum(a["cpu_seconds"] for a in attempts)
    if code == 2 and run is not None:  # train.py -i refused the folder (e.g. killed before its first checkpoint)
        print(f"[compare] {category} {base} seed {seed}: train.py -i refused to continue it; starting over", flush=True)
        shutil.rmtree(cell)
        return run_cell(category, base, spec, seed, args)
    if code != 0:
        raise RuntimeError(f"cell {category}/{base}/seed{seed} failed with exit code {code}; see {cell / 'train.log'}")
    runs = cell_runs(cell, spec)
    if not runs or not (runs[-1] / "metrics.json").is_file():
        raise RuntimeError(f"cell {category}/{base}/seed{seed} wrote no metrics.json; see {cell / 'train.log'}")
    result = {"run": str(runs[-1]), "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}
    result |= {"cpu_model": cpu_model(), "commit": code_commit(), "command": cmd, "attempts": attempts}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(done)
    print(
        f"[compare] {category} {base} seed {seed}: done in {seconds / 60:.1f} min ({cpu_seconds / 60:.1f} CPU min"
        + (f", {len(attempts)} attempts" if len(attempts) > 1 else "")
        + ")",
        flush=True,
    )
    return result


def cell_row(category: str, variant: str, seed: int, result: dict[str, Any], sub_run: str | None) -> dict[str, Any]:
    """A finished cell's ``results.csv`` row (``variant`` is the grid's method name; ``sub_run``: the folder of the
    run that holds the row, :data:`SUB_RUNS`). A ``budget@`` row's CPU seconds are its snapshot's (``cost.json``:
    training up to the snapshot, then its test evaluation); its wall seconds were not measured (NaN)."""
    run = Path(result["run"])
    metrics = json.loads(((run / sub_run) if sub_run else run).joinpath("metrics.json").read_text())
    entropy_file = run / "policy_entropy.json"  # the sampler's final entropy (agents/entropy.py); not an AE-only row's
    entropy = json.loads(entropy_file.read_text())["policy_entropy"] if entropy_file.is_file() and not sub_run else None
    seconds, cpu_seconds = result["seconds"], result.get("cpu_seconds", float("nan"))
    if sub_run == BUDGET_SNAPSHOT:  # the snapshot's process CPU, plus the attempts before that process
        cost = json.loads((run / sub_run / "cost.json").read_text())
        before = [a["cpu_seconds"] for a in result.get("attempts", []) if a["started"] < cost.get("written", 0)][:-1]
        seconds, cpu_seconds = float("nan"), round(sum(before) + cost["cpu_seconds"] + cost["test_cpu_seconds"], 1)
    return {
        "variant": variant,
        "category": category,
        "seed": seed,
        **{k: float(metrics[k]) for k in METRICS},
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "cpu_model": result.get("cpu_model", UNKNOWN),
        "commit": result.get("commit", UNKNOWN),
        "policy_entropy": float("nan") if entropy is None else float(entropy),
    }


def write_tables(out: Path, rows: list[dict[str, Any]], variants: list[str], categories: list[str]) -> str:
    """``OUT/results.csv`` and ``OUT/table.md`` (each replaced at once: several workers may write them); returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "results.csv", rows)
    table = markdown_tables(rows, variants, categories)
    tmp = out / f".table.md.{os.getpid()}.tmp"
    tmp.write_text(table + "\n")
    tmp.replace(out / "table.md")
    return table


# ---------------------------------------------------------------------------------------------------------------------
# Worker mode: the grid as an Optuna study


def cell_key(category: str, base: str, seed: int) -> str:
    return f"{category}/{base}/{seed}"


def trial_cell(trial: optuna.trial.FrozenTrial) -> str | None:
    """The cell of a trial: its ``cell`` parameter, or the one it was queued with; None for a trial of no cell."""
    cell = trial.params.get("cell", trial.system_attrs.get("fixed_params", {}).get("cell"))
    return cell if isinstance(cell, str) else None


def open_study(args: argparse.Namespace, grid: list[str], create: bool) -> tuple[optuna.Study, Any]:
    """The grid's study (made, unless ``create`` is False) and its storage; a study of another grid is refused.

    Raises:
        ValueError: an unusable storage, no such study (``create`` False), or a study that is not this grid's.
    """
    import optuna

    from agents.sweeps import make_storage

    name = args.study_name
    sampler = optuna.samplers.RandomSampler()  # every cell's trial has its parameter fixed: nothing to sample
    for attempt in range(4):  # workers started together on a new database race to create its tables: try again
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = make_storage(args.storage, args.heartbeat_interval, args.grace_period)
            if create:
                study = optuna.create_study(
                    storage=storage, study_name=name, direction="maximize", sampler=sampler, load_if_exists=True
                )
            else:
                study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
            break
        except KeyError as error:
            raise ValueError(f"no study {name!r} in --storage (a run without --table-only makes it)") from error
        except Exception as error:  # sqlalchemy's errors: an unusable URL or database, or that race
            from_database = [
                type(e).__module__.startswith("sqlalchemy") or isinstance(e, optuna.exceptions.StorageInternalError)
                for e in (error, error.__cause__)
            ]
            if any(from_database) and attempt < 3:
                time.sleep(0.5 * 2**attempt)
                continue
            if isinstance(error, ValueError) or not (
                from_database[0] or isinstance(error, (optuna.exceptions.OptunaError, ImportError, OSError))
            ):
                raise  # make_storage's own message, or not the storage's
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise ValueError(f"--storage: cannot open study {name!r} ({type(error).__name__}: {first_line})") from error
    has_trials = bool(study.get_trials(deepcopy=False))  # read first: a grid's maker records it before queueing cells
    recorded = study.user_attrs.get("grid")
    if recorded is None:
        if has_trials or study.directions != [optuna.study.StudyDirection.MAXIMIZE]:
            raise ValueError(f"study {name!r} is not a comparison grid (no grid recorded); choose another --study-name")
        if create:
            study.set_user_attr("grid", grid)
    elif sorted(recorded) != grid:
        absent = sorted(set(grid) - set(recorded))
        extra = sorted(set(recorded) - set(grid))

        def some(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "") if keys else "none"

        raise ValueError(
            f"study {name!r} holds another grid ({len(recorded)} rows, this command's {len(grid)}; only in this command's:"
            f" {some(absent)}; only in the study's: {some(extra)}): give the study's --categories/--methods/--seeds/"
            "--variants, or another --study-name"
        )
    return study, storage


def enqueue_missing(study: optuna.Study, cells: list[str]) -> int:
    """Queue every cell that has no queued, running or finished trial (so also a failed one); returns how many.

    Two workers queueing at the same moment may queue a cell twice: its second trial then does no training (see
    ``make_objective``)."""
    from optuna.trial import TrialState

    live = {TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE}
    have = {trial_cell(t) for t in study.get_trials(deepcopy=False) if t.state in live}
    missing = [key for key in cells if key not in have]
    for key in missing:
        study.enqueue_trial({"cell": key})
    return len(missing)


def has_work(study: optuna.Study, heartbeat: bool, poll: float) -> bool:
    """Whether a queued trial is there. With a heartbeat, waits while other workers' cells run, failing (and so
    queueing again) those whose worker stopped beating: the last worker leaves when the whole grid is done."""
    import optuna
    from optuna.trial import TrialState

    said = False
    while True:
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if any(t.state == TrialState.WAITING for t in trials):
            return True
        running = sorted(key for t in trials if (key := trial_cell(t)) is not None)
        if not heartbeat or not running:
            return False
        if not said:
            print(f"[compare] no cell queued; waiting for the {len(running)} running in other workers", flush=True)
            said = True
        time.sleep(poll)


def make_objective(
    args: argparse.Namespace,
    cells: dict[str, tuple[str, str, int]],
    trainings: dict[tuple[str, str, int], dict[str, Any]],
    plan: list[tuple[str, str, dict[str, Any], str | None]],
) -> Any:
    """One trial = one cell: trains it (``run_cell``), keeps its table rows in the user attribute ``rows``.

    A trial of no cell (the queue was empty when it started) is pruned with ``idle``; a second trial of a cell reuses a
    finished one's rows, or is pruned with ``duplicate`` while a lower-numbered trial of the cell is queued or running
    (trial numbers are fixed when a cell is queued, so every worker agrees on which trial trains it)."""
    import optuna
    from optuna.trial import TrialState

    choices = sorted(cells)

    def objective(trial: optuna.Trial) -> float:
        trials = trial.study.get_trials(deepcopy=False)
        key = next((trial_cell(t) for t in trials if t.number == trial.number), None)
        if key is None or key not in cells:
            trial.set_user_attr("idle", True)
            raise optuna.TrialPruned("no queued cell")
        trial.suggest_categorical("cell", choices)
        others = [t for t in trials if t.number != trial.number and trial_cell(t) == key]
        finished = [t for t in others if t.state == TrialState.COMPLETE and "rows" in t.user_attrs]
        if finished:
            first = min(finished, key=lambda t: t.number)
            trial.set_user_attr("duplicate", first.number)
            trial.set_user_attr("rows", first.user_attrs["rows"])
            print(f"[compare] {key}: trial {trial.number} reuses trial {first.number}'s result", flush=True)
            return float(first.value) if first.value is not None else float("nan")
        earlier = [t.number for t in others if t.state in (TrialState.WAITING, TrialState.RUNNING) and t.number < trial.number]
        if earlier:
            trial.set_user_attr("duplicate", min(earlier))
            print(f"[compare] {key}: trial {trial.number} leaves the cell to trial {min(earlier)}", flush=True)
            raise optuna.TrialPruned(f"cell {key} belongs to trial {min(earlier)}")
        category, base, seed = cells[key]
        try:
            result = run_cell(category, base, trainings[(category, base, seed)], seed, args)
        except RuntimeError as error:
            trial.set_user_attr("error", str(error))
            raise
        rows = {method: cell_row(category, method, seed, result, sub_run) for method, b, _, sub_run in plan if b == base}
        trial.set_user_attr("rows", rows)
        trial.set_user_attr("run", result["run"])
        return float(next(iter(rows.values()))["pixel_f1max"])

    return objective


def study_rows(
    study: optuna.Study, cells: dict[str, tuple[str, str, int]]
) -> tuple[dict[str, dict[str, dict[str, Any]]], list[str]]:
    """Each finished cell's rows (by method) from its first complete trial, and the messages of the failed cells
    (failed, and neither queued, running nor finished)."""
    from optuna.trial import TrialState

    done: dict[str, dict[str, dict[str, Any]]] = {}
    live: set[str] = set()
    failures: dict[str, str] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        key = trial_cell(t)
        if key not in cells or t.user_attrs.get("idle"):
            continue
        if t.state == TrialState.COMPLETE and "rows" in t.user_attrs and "duplicate" not in t.user_attrs:
            done.setdefault(key, t.user_attrs["rows"])
        elif t.state in (TrialState.WAITING, TrialState.RUNNING):
            live.add(key)
        elif t.state == TrialState.FAIL:
            failures[key] = t.user_attrs.get("error") or (
                f"cell {key}: trial {t.number} failed (its worker died or was interrupted; a rerun queues it again)"
            )
    return done, [message for key, message in failures.items() if key not in done and key not in live]


def start_workers(args: argparse.Namespace, argv: list[str]) -> list[int]:
    """``--workers N``: N worker processes of this command on the study; returns their exit codes."""
    cmd = [sys.executable, "-m", "benchmarks.compare", *argv, "--storage", args.storage, "--study-name", args.study_name]
    cmd += ["--threads", str(args.threads), "--workers", "1", "--worker"]
    print(f"[compare] {args.workers} workers on study {args.study_name!r}, {args.threads} threads each", flush=True)
    processes = [subprocess.Popen(cmd, **_child_options()) for _ in range(args.workers)]
    try:
        return [process.wait() for process in processes]
    finally:  # Ctrl-C reaches the workers too: let them stop
        for process in processes:
            process.wait()


def run_study(
    args: argparse.Namespace,
    argv: list[str],
    plan: list[tuple[str, str, dict[str, Any], str | None]],
    categories: list[str],
    trainings: dict[tuple[str, str, int], dict[str, Any]],
) -> int:
    import optuna

    from agents.sweeps import serialize_asks

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cells = {cell_key(*key): key for key in trainings}
    grid = sorted(f"{category}/{method}/{seed}" for category in categories for method, *_ in plan for seed in args.seeds)
    try:
        study, storage = open_study(args, grid, create=not args.table_only)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed: list[str] = []
    try:
        if not args.table_only:
            queued = enqueue_missing(study, list(cells))
            if queued:
                print(f"[compare] study {args.study_name!r}: queued {queued} of {len(cells)} cells", flush=True)
            if args.workers > 1:
                codes = start_workers(args, argv)
                failed += [f"worker {i} exited with code {code}" for i, code in enumerate(codes) if code != 0]
            else:
                heartbeat = isinstance(storage, optuna.storages.RDBStorage)
                poll = min(float(args.heartbeat_interval), 5.0)  # the last cell done, the others leave soon
                if has_work(study, heartbeat, poll):

                    def stop_when_done(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
                        if not has_work(study, heartbeat, poll):
                            study.stop()

                    objective = make_objective(args, cells, trainings, plan)
                    serialize_asks(study, args.storage)  # SQLite: one worker at a time takes a queued cell
                    study.optimize(objective, callbacks=[stop_when_done], catch=(RuntimeError,), gc_after_trial=False)
    except KeyboardInterrupt:
        print("[compare] interrupted: a rerun queues the interrupted cells again", file=sys.stderr)
        return 130
    if args.worker:  # started by --workers: the parent writes the tables
        return 0
    done, failures = study_rows(study, cells)
    failed = failures + failed if not args.table_only else []
    rows = [
        done[key][method]
        for category in categories
        for method, base, _, _ in plan
        for seed in args.seeds
        if (key := cell_key(category, base, seed)) in done and method in done[key]
    ]
    if args.table_only and not rows:
        return _nothing_to_tabulate(args)
    print(write_tables(Path(args.out), rows, [m for m, *_ in plan], categories))
    for message in failed:
        print(f"error: {message}", file=sys.stderr)
    return 1 if failed else 0


def _nothing_to_tabulate(args: argparse.Namespace) -> int:
    """--table-only found no row: say so (an empty table would read as a grid that ran and measured nothing)."""
    where = f"the study {args.study_name!r}" if args.study_mode else f"'{args.out}'"
    print(
        f"error: --table-only found no finished cell of this grid in {where} (nor in --recorded rows): nothing to tabulate",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    from agents.sweeps import GRACE_PERIOD, HEARTBEAT_INTERVAL, default_storage

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder of MVTec AD categories (default: the embedded one)")
    parser.add_argument("--categories", nargs="+", default=None, help="category folders under --data-root")
    parser.add_argument("--methods", nargs="+", default=["reinforce", "random", "ae"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--preset", default="default", help="train.py preset for methods that do not name one")
    parser.add_argument(
        "--variants",
        default=str(ABLATION),
        help="YAML of named configurations (see the module docstring; default: the package's ablation.yml)",
    )
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--parallel", type=int, default=1, help="cells run at once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per cell (default: cores / parallel)")
    parser.add_argument(
        "--device", default=None, help="torch device of every cell (train.py --device; default: train.py's, the CPU)"
    )
    parser.add_argument("--table-only", action="store_true", help="train nothing: tables of the cells already finished")
    parser.add_argument(
        "--recorded",
        nargs="+",
        default=None,
        metavar="CSV",
        help="results.csv files of earlier grids: their rows count as finished cells (see the module docstring)",
    )
    parser.add_argument(
        "--prefer-cpu",
        default=None,
        metavar="TEXT",
        help="of several recorded rows of one cell, take the last on this CPU (the words of TEXT in its cpu_model, in "
        "order; default: the last row)",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="worker mode: the grid's Optuna study lives here, an RDB URL (sqlite:///grid.db, postgresql://...) or a "
        "journal file path; every worker on every machine gives the same (see the module docstring)",
    )
    parser.add_argument("--study-name", default=None, help="the grid's study (default: compare-<name of --out>)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes to start here on the study (default 1: this process is the worker); with N > 1 and "
        "no --storage, the study is an SQLite file in --out",
    )
    parser.add_argument(
        "--heartbeat-interval", type=int, default=HEARTBEAT_INTERVAL, help="worker mode: seconds between heartbeats"
    )
    parser.add_argument(
        "--grace-period",
        type=int,
        default=GRACE_PERIOD,
        help="worker mode: seconds without a heartbeat after which a cell's worker counts as dead (the cell is queued again)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # started by --workers: no tables
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        if args.data_root is not None and not args.categories:
            raise ValueError("--data-root needs --categories (category folders under it)")
        if args.data_root is not None:
            args.data_root = str(Path(args.data_root).resolve())
        args.out = str(Path(args.out).resolve())  # run folders and result.json files hold absolute paths
        if args.workers < 1:
            raise ValueError("--workers must be at least 1")
        if args.parallel < 1:
            raise ValueError(f"--parallel {args.parallel} is invalid: expected an integer >= 1 (cells run at once)")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads {args.threads} is invalid: expected an integer >= 1 (torch threads per cell)")
        if args.device is not None:
            from models.runtime import check_device

            check_device(args.device)  # a missing GPU fails here, not in every cell
        if args.heartbeat_interval < 1 or args.grace_period <= args.heartbeat_interval:
            raise ValueError("--grace-period must be longer than --heartbeat-interval (both whole seconds, at least 1)")
        args.study_mode = args.storage is not None or args.workers > 1
        if args.study_mode and args.parallel != 1:
            raise ValueError("--parallel runs cells in one process; with --storage or --workers, start --workers N instead")
        args.study_name = args.study_name or f"compare-{Path(args.out).name}"
        if args.study_mode and args.storage is None:
            args.storage = default_storage(args.out, args.study_name)
        args.threads = args.threads or max(1, (os.cpu_count() or 1) // (args.workers if args.study_mode else args.parallel))
        categories = args.categories or ["synthetic"]
        variants = load_variants(args.variants)
        if args.recorded and args.study_mode:
            raise ValueError("--recorded works without --storage/--workers (a study keeps its own rows)")
        recorded = load_recorded(args.recorded, args.prefer_cpu)
        plan = []
        for method in args.methods:
            try:
                plan.append((method, *resolve_method(method, variants, args.preset)))
            except ValueError:  # a name that only recorded rows know (a variant not in --variants): tables only
                if not (args.table_only and any(key[1] == method for key in recorded)):
                    raise
                plan.append((method, method, {}, None))
    except (ValueError, OSError, yaml.YAMLError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cells_at_once = args.workers if args.study_mode else args.parallel
    if args.device is not None and args.device.startswith("cuda") and cells_at_once > 1:
        print(
            f"warning: {cells_at_once} cells at once on --device {args.device}: processes that share a GPU are time-sliced "
            "(12 cells on one H200 got none through the predictor's warm-up in 8 minutes, which one alone does in "
            "about 35 s); run one cell per GPU",
            file=sys.stderr,
        )

    # One training per (category, trained configuration, seed); "ae" methods reuse their configuration's cell
    trainings: dict[tuple[str, str, int], dict[str, Any]] = {}
    for category in categories:
        for seed in args.seeds:
            for _, base, spec, _ in plan:
                trainings.setdefault((category, base, seed), spec)
    # A training whose every row is recorded (its methods: itself and its "ae" rows in this grid) is not run again
    needed = {(c, base, s) for c in categories for s in args.seeds for m, base, *_ in plan if (c, m, s) not in recorded}
    all_trainings = trainings
    trainings = {key: spec for key, spec in trainings.items() if key in needed}
    if args.study_mode:
        return run_study(args, argv, plan, categories, trainings)
    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    failed: list[str] = []
    # Finished cells are read even where their rows are recorded: a cell in --out wins over a recorded row
    for key in all_trainings if args.table_only else set(all_trainings) - set(trainings):
        done = cell_folder(args.out, *key) / "result.json"
        if done.is_file():
            results[key] = json.loads(done.read_text())
    if args.table_only:
        trainings = {}
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {key: pool.submit(run_cell, key[0], key[1], spec, key[2], args) for key, spec in trainings.items()}
        for key, future in futures.items():
            try:
                results[key] = future.result()
            except RuntimeError as error:
                failed.append(str(error))
    rows: list[dict[str, Any]] = []
    by_name: list[str] = []  # recorded rows whose meaning depends on --preset
    for category in categories:
        for method, base, spec, sub_run in plan:
            for seed in args.seeds:
                if (category, base, seed) in results:
                    rows.append(cell_row(category, method, seed, results[(category, base, seed)], sub_run))
                elif (category, method, seed) in recorded:
                    rows.append(recorded[(category, method, seed)])
                    if base not in variants and spec and method not in by_name:  # a recorded-only name is pinned
                        by_name.append(method)
    if by_name:
        print(
            f"warning: the recorded rows of {', '.join(by_name)} were matched by name alone: they are what that name meant "
            "when they were recorded (record pinned --variants for rows that stay valid)",
            file=sys.stderr,
        )
    if args.table_only and not rows:
        return _nothing_to_tabulate(args)
    table = write_tables(Path(args.out), rows, [m for m, *_ in plan], categories)
    print(table)
    for message in failed:
        print(f"error: {message}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
