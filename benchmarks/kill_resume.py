"""Kill train.py with SIGKILL at random points and continue it with ``-i``: how many steps does each kill lose?

    python -m benchmarks.kill_resume --trials 5 --seed 0 -n 1024 --save-freq 256 --eval-freq 512

One run of the embedded category (default preset, shortened by ``-n``) is killed ``--trials`` times at random steps
drawn after the first checkpoint (a kill before it leaves nothing to continue from: ``-i`` refuses, and the run starts
again), each time continued with ``-i``. Steps done at a kill are counted from ``monitor.csv`` (whole 32-step
episodes, so a kill may have done up to 31 more); steps lost = steps done - the checkpoint that ``-i`` continues from.
Prints a table, and whether the finished run wrote its metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EPISODE = 32  # MVTecPatch-v0's default episode_length


def episodes(run: Path) -> int:
    """Episodes that monitor.csv has recorded (two header lines)."""
    monitor = run / "monitor.csv"
    return max(len(monitor.read_text().splitlines()) - 2, 0) if monitor.is_file() else 0


def checkpoint_step(run: Path) -> int:
    latest = run / "checkpoints" / "latest.json"
    return int(json.loads(latest.read_text())["num_timesteps"]) if latest.is_file() else 0


def run_until(cmd: list[str], run: Path, target: int | None, start_step: int, log: Path) -> tuple[int, int]:
    """Run ``cmd``; SIGKILL it once ``target`` steps are done (None: let it finish). Returns (exit code, steps done)."""
    base = episodes(run)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with log.open("a") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            time.sleep(0.2)
            if target is not None:
                done = start_step + (episodes(run) - base) * EPISODE
                if done >= target:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    return -signal.SIGKILL, done
    return process.returncode, start_step + (episodes(run) - base) * EPISODE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5, help="kills, at increasing random steps of one run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run and of the kill points")
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="shorten the run (default: the preset's)")
    parser.add_argument("--save-freq", type=int, default=None, help="train.py --save-freq (default: the preset's)")
    parser.add_argument("--eval-freq", type=int, default=None, help="train.py --eval-freq (default: the preset's)")
    parser.add_argument("--n-steps", type=int, default=64, help="the agent's rollout length (the preset's n_steps)")
    parser.add_argument("-f", "--log-folder", default=None, help="where the run goes (default: a temporary folder)")
    args = parser.parse_args(argv)

    log_folder = Path(args.log_folder or tempfile.mkdtemp(prefix="kill_resume_"))
    log_folder.mkdir(parents=True, exist_ok=True)  # a new folder given with -f
    flags = [("-n", args.n_timesteps), ("--save-freq", args.save_freq), ("--eval-freq", args.eval_freq)]
    extra = [str(x) for flag, value in flags if value is not None for x in (flag, value)]
    first = [sys.executable, "-m", "train", "--seed", str(args.seed), "-f", str(log_folder), "--no-progress", *extra]
    n = args.n_timesteps or 6144
    save_freq = args.save_freq or 1024
    rng = np.random.default_rng(args.seed)
    # after the first checkpoint (written at the first rollout start past save_freq), before the last episode
    low, high = save_freq + args.n_steps + EPISODE, n - EPISODE
    targets = sorted(int(t) for t in rng.integers(low, high, args.trials))
    run = log_folder / "reinforce" / "MVTecPatch-v0_1"
    log = log_folder / "kill_resume.log"
    rows = []
    start = time.perf_counter()
    cmd, start_step = first, 0
    for trial, target in enumerate(targets, 1):
        code, done = run_until(cmd, run, target, start_step, log)
        if code != -signal.SIGKILL:
            print(f"error: attempt {trial} ended with exit code {code} before step {target}; see {log}", file=sys.stderr)
            return 1
        resumed_from = checkpoint_step(run)
        rows.append(
            {
                "kill": trial,
                "target step": target,
                "killed at": done,
                "resumes from": resumed_from,
                "steps lost": done - resumed_from,
            }
        )
        cmd = [sys.executable, "-m", "train", "-i", str(run), "--no-progress"]
        start_step = resumed_from
    code, done = run_until(cmd, run, None, start_step, log)
    finished = (run / "metrics.json").is_file()
    print(
        f"run {run}: {args.trials} SIGKILLs, then -i to the end in {time.perf_counter() - start:.0f} s; "
        f"final exit code {code}, metrics.json {'written' if finished else 'MISSING'}"
    )
    print("| kill | target step | killed at | resumes from | steps lost |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    lost = [r["steps lost"] for r in rows]
    print(
        f"steps lost: max {max(lost)}, mean {np.mean(lost):.0f}; counted in whole {EPISODE}-step episodes, so each may be "
        f"up to {EPISODE - 1} more (bound: one save interval {save_freq} + one rollout {args.n_steps})"
    )
    return 0 if finished and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
