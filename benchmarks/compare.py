"""The one comparison runner: (category, method, seed) cells, each a train.py process, then the tables.

    python benchmarks/compare.py --data-root ../shared/data --categories magnetic_tile tire \\
        --methods reinforce random ae --seeds 0 1 2 --out runs/compare
    python benchmarks/compare.py ... --variants benchmarks/ablation.yml --methods paper +image +synthetic  # ablations

A *method* is one of
  * an RL algorithm of the registry (``reinforce``, ``random``, ``ppo``, ``a2c``, ``dqn``), trained with ``--preset``;
  * ``ae``: the AE-only residual baseline of the ``reinforce`` cell of the same (category, seed) (run if missing);
  * a baseline of the paper's tables, ``unet`` or ``vqvae2`` (``train.py --method``, same split and metrics);
  * a name from ``--variants FILE``, a YAML mapping ``name: {algo | method, preset, env_kwargs, hyperparams,
    n_timesteps}`` (every key optional): a named configuration for ablations (``method: unet`` with ``hyperparams``
    varies a baseline). ``ae@NAME`` is the AE-only baseline of that variant.

Every cell runs ``train.py`` in its own process (``--parallel`` at a time, ``--threads`` torch threads each) into
``OUT/cells/<category>/<method>/seed<k>/`` and is finished once ``result.json`` is there: a rerun skips finished
cells, and an interrupted one (no ``result.json``) starts over, so an interruption loses at most the running cells.
Cells share nothing but the output folder, so several machines can split a grid by category or seed.

Writes ``OUT/results.csv`` (one row per cell; ``seconds`` is wall-clock, ``cpu_seconds`` the cell's own CPU time)
and ``OUT/table.md``: per category, a row per method with every metric
as mean ± std over seeds, then the paper's two tables (pixel F1max and pixel AUROC, category x method).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "image_auroc", "f1_at_val_threshold")
CSV_COLUMNS = ("category", "method", "seed", *METRICS, "seconds", "cpu_seconds")
LABELS = {
    "pixel_auroc": "AUROC",
    "pixel_f1max": "F1max",
    "f1_at_val_threshold": "F1@val",
    "pixel_ap": "AP",
    "pixel_aupro": "AUPRO",
    "image_auroc": "img AUROC",
}


def load_variants(path: str | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    table = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"'{path}': expected a mapping of variant name -> {{algo, preset, env_kwargs, hyperparams}}")
    allowed = {"algo", "method", "preset", "env_kwargs", "hyperparams", "n_timesteps", "description"}
    for name, spec in table.items():
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"'{path}': variant {name!r} has unknown keys {sorted(unknown)} (valid: {sorted(allowed)})")
    return table


def resolve_method(method: str, variants: dict[str, dict[str, Any]], preset: str) -> tuple[str, dict[str, Any], bool]:
    """A method name -> (the cell that trains it, its training spec, whether to read its AE-only baseline)."""
    from agents import AGENTS
    from models.baselines import BASELINES

    ae_only = method == "ae" or method.startswith("ae@")
    base = "reinforce" if method == "ae" else method[3:] if ae_only else method
    if base in variants:
        spec = dict(variants[base])
    elif base in AGENTS:
        spec = {"algo": base}
    elif base in BASELINES and not ae_only:
        spec = {"method": base}
    else:
        valid = [*AGENTS, "ae", *BASELINES, *variants, *(f"ae@{v}" for v in variants)]
        raise ValueError(f"unknown method {method!r} (valid: {', '.join(valid)})")
    if spec.get("method") in BASELINES:
        if ae_only:
            raise ValueError(f"{method!r}: a {spec['method']} baseline has no AE-only residual")
        if "algo" in spec:
            raise ValueError(f"{method!r}: a variant names either an algo or a baseline method, not both")
    else:
        spec.setdefault("algo", "reinforce")
    spec.setdefault("preset", preset)
    return base, spec, ae_only


def train_command(spec: dict[str, Any], category: str, seed: int, args: argparse.Namespace, folder: Path) -> list[str]:
    model = ["--method", spec["method"]] if "method" in spec else ["--algo", spec["algo"]]
    cmd = [sys.executable, str(ROOT / "train.py"), *model, "--preset", spec["preset"], "--seed", str(seed)]
    cmd += ["-f", str(folder), "--no-progress", "-v", "1"]
    if args.data_root is not None:
        cmd += ["--data-root", args.data_root, "--category", category]
    if spec.get("n_timesteps") is not None:
        cmd += ["-n", str(spec["n_timesteps"])]
    if spec.get("env_kwargs"):
        cmd += ["--env-kwargs", *(f"{k}:{v!r}" for k, v in spec["env_kwargs"].items())]
    if spec.get("hyperparams"):
        cmd += ["--hyperparams", *(f"{k}:{v!r}" for k, v in spec["hyperparams"].items())]
    return cmd


def run_cell(category: str, base: str, spec: dict[str, Any], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one cell unless it is finished; returns its result.json (the run folder and the seconds it took)."""
    cell = Path(args.out) / "cells" / category / base / f"seed{seed}"
    done = cell / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if cell.exists():  # an interrupted attempt: start the cell over
        shutil.rmtree(cell)
    cell.mkdir(parents=True)
    cmd = train_command(spec, category, seed, args, cell / "logs")
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    print(f"[compare] {category} {base} seed {seed}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with (cell / "train.log").open("w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own CPU time, whatever else runs
        process.returncode = code = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    cpu_seconds = usage.ru_utime + usage.ru_stime
    if code != 0:
        raise RuntimeError(f"cell {category}/{base}/seed{seed} failed with exit code {code}; see {cell / 'train.log'}")
    runs = sorted((cell / "logs" / (spec.get("method") or spec["algo"])).glob("MVTecPatch-v0_*"))
    if not runs or not (runs[-1] / "metrics.json").is_file():
        raise RuntimeError(f"cell {category}/{base}/seed{seed} wrote no metrics.json; see {cell / 'train.log'}")
    result = {"run": str(runs[-1]), "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "command": cmd}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(done)
    print(
        f"[compare] {category} {base} seed {seed}: done in {seconds / 60:.1f} min ({cpu_seconds / 60:.1f} CPU min)", flush=True
    )
    return result


def cell_row(category: str, method: str, seed: int, result: dict[str, Any], ae_only: bool) -> dict[str, Any]:
    run = Path(result["run"])
    metrics = json.loads((run / "ae_baseline" / "metrics.json" if ae_only else run / "metrics.json").read_text())
    return {
        "category": category,
        "method": method,
        "seed": seed,
        **{k: float(metrics[k]) for k in METRICS},
        "seconds": result["seconds"],
        "cpu_seconds": result.get("cpu_seconds", float("nan")),
    }


def mean_std(values: list[float]) -> str:
    arr = np.asarray(values, dtype=float)
    if len(arr) == 1:
        return f"{arr[0]:.3f}"
    return f"{arr.mean():.3f} ± {arr.std(ddof=1):.3f}"


def markdown_tables(rows: list[dict[str, Any]], methods: list[str], categories: list[str]) -> str:
    def cells(category: str, method: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["category"] == category and r["method"] == method]

    out: list[str] = []
    for category in categories:
        header = " | ".join(LABELS[k] for k in METRICS)
        out += [f"### {category}", "", f"| method | seeds | {header} | minutes | CPU minutes |"]
        out.append("|---" * (len(METRICS) + 4) + "|")
        for method in methods:
            rs = cells(category, method)
            if rs:
                minutes = np.mean([r["seconds"] for r in rs]) / 60
                cpus = [r["cpu_seconds"] for r in rs if np.isfinite(r["cpu_seconds"])]  # absent from older cells
                cpu = f"{np.mean(cpus) / 60:.1f}" if cpus else "-"
                stats = " | ".join(mean_std([r[k] for r in rs]) for k in METRICS)
                out.append(f"| {method} | {len(rs)} | {stats} | {minutes:.1f} | {cpu} |")
        out.append("")
    for key in ("pixel_f1max", "pixel_auroc"):
        out += [f"### pixel {LABELS[key]} (mean ± std over seeds)", "", "| category | " + " | ".join(methods) + " |"]
        out.append("|---" * (len(methods) + 1) + "|")
        for category in categories:
            out.append(
                f"| {category} | "
                + " | ".join(mean_std([r[key] for r in cells(category, m)]) if cells(category, m) else "-" for m in methods)
                + " |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder of MVTec AD categories (default: the embedded one)")
    parser.add_argument("--categories", nargs="+", default=None, help="category folders under --data-root")
    parser.add_argument("--methods", nargs="+", default=["reinforce", "random", "ae"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--preset", default="default", help="train.py preset for methods that do not name one")
    parser.add_argument("--variants", default=None, help="YAML of named configurations (see the module docstring)")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--parallel", type=int, default=1, help="cells run at once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per cell (default: cores / parallel)")
    parser.add_argument("--table-only", action="store_true", help="train nothing: tables of the cells already finished")
    args = parser.parse_args(argv)
    try:
        if args.data_root is not None and not args.categories:
            raise ValueError("--data-root needs --categories (category folders under it)")
        if args.data_root is not None:
            args.data_root = str(Path(args.data_root).resolve())
        args.out = str(Path(args.out).resolve())  # cells run train.py from the project root
        args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.parallel)
        categories = args.categories or ["synthetic"]
        variants = load_variants(args.variants)
        plan = [(m, *resolve_method(m, variants, args.preset)) for m in args.methods]
    except (ValueError, OSError, yaml.YAMLError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # One training per (category, trained configuration, seed); "ae" methods reuse their configuration's cell
    trainings: dict[tuple[str, str, int], dict[str, Any]] = {}
    for category in categories:
        for seed in args.seeds:
            for _, base, spec, _ in plan:
                trainings.setdefault((category, base, seed), spec)
    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    failed: list[str] = []
    if args.table_only:
        for key in trainings:
            done = Path(args.out) / "cells" / key[0] / key[1] / f"seed{key[2]}" / "result.json"
            if done.is_file():
                results[key] = json.loads(done.read_text())
        trainings = {}
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {key: pool.submit(run_cell, key[0], key[1], spec, key[2], args) for key, spec in trainings.items()}
        for key, future in futures.items():
            try:
                results[key] = future.result()
            except RuntimeError as error:
                failed.append(str(error))
    rows = [
        cell_row(category, method, seed, results[(category, base, seed)], ae_only)
        for category in categories
        for method, base, _, ae_only in plan
        for seed in args.seeds
        if (category, base, seed) in results
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    table = markdown_tables(rows, [m for m, *_ in plan], categories)
    (out / "table.md").write_text(table + "\n")
    print(table)
    for message in failed:
        print(f"error: {message}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
