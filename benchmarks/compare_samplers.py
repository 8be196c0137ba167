"""Does RL help? Train the same category with several samplers from the same seed(s) and print test metrics side by side.

    python benchmarks/compare_samplers.py --data-root ../shared/data --category magnetic_tile --algos reinforce random \
        --seeds 0 [--parallel 2] [-- extra train.py arguments]

Each (algo, seed) is one ``train.py`` run in its own process (one torch thread each, ``--parallel`` at a time); the
AE-only baseline comes from the same runs (``<run>/ae_baseline``). Prints a JSON table and writes it to
``<log-folder>/comparison.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

KEYS = ("pixel_auroc", "pixel_f1max", "f1_at_val_threshold", "pixel_ap", "pixel_aupro", "image_auroc")
ROOT = Path(__file__).resolve().parents[1]


def run_one(algo: str, seed: int, args: argparse.Namespace, extra: list[str]) -> tuple[str, int, Path, float]:
    log_folder = Path(args.log_folder) / f"seed{seed}"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--algo",
        algo,
        "--seed",
        str(seed),
        "-f",
        str(log_folder),
        "--no-progress",
        "-v",
        "1",
    ]
    if args.data_root:
        cmd += ["--data-root", args.data_root, "--category", args.category]
    cmd += extra
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    log = log_folder / f"{algo}.log"
    log_folder.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        code = subprocess.call(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({code}); see {log}")
    runs = sorted((log_folder / algo).glob("MVTecPatch-v0_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    return algo, seed, runs[-1], time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--category", default=None)
    parser.add_argument("--algos", nargs="+", default=["reinforce", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("-f", "--log-folder", default="logs/compare")
    args = parser.parse_args(argv)

    jobs = [(algo, seed) for seed in args.seeds for algo in args.algos]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda job: run_one(job[0], job[1], args, extra), jobs))
    table = []
    for algo, seed, run, seconds in results:
        detector = json.loads((run / "metrics.json").read_text())
        table.append(
            {
                "method": algo,
                "seed": seed,
                "run": str(run),
                "minutes": round(seconds / 60, 1),
                **{k: round(detector[k], 4) for k in KEYS},
            }
        )
        ae = json.loads((run / "ae_baseline" / "metrics.json").read_text())
        table.append({"method": f"ae-only ({algo} run)", "seed": seed, "run": str(run), **{k: round(ae[k], 4) for k in KEYS}})
    text = json.dumps(table, indent=2)
    (Path(args.log_folder) / "comparison.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
