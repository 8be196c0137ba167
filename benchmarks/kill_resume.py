"""Kill train.py with SIGKILL at three points, continue each run with ``-i``, and check that it ends with the
uninterrupted run's ``best_detector.pt``, bit for bit.

    python -m benchmarks.kill_resume                       # a few minutes on 2 CPU cores
    python -m benchmarks.kill_resume -n 1024 --save-freq 256 --eval-freq 384 --env-kwargs pretrain_epochs:5

One seeded run of the embedded category (the ``default`` preset, shortened by ``-n`` and ``--env-kwargs``) is trained
without interruption, then three times more, each killed once:

- **during the warm-up** (half-way through the uninterrupted run's warm-up time): no checkpoint exists yet, and ``-i``
  starts the run again from the beginning;
- **mid-episode**: once the run's progress log reports a step past the middle of a checkpoint interval, so that the
  kill falls inside an episode and ``-i`` continues from the checkpoint before it, redoing the steps in between;
- **just after a checkpoint**: as soon as ``checkpoints/latest.json`` names the second periodic checkpoint.

Each killed run is continued with ``train.py -i RUN`` to its end. The table gives, per kill, where it fell, the
checkpoint ``-i`` continued from, and whether ``best_detector.pt`` and ``detector.pt`` equal the uninterrupted run's
byte for byte (SHA-256). The exit code is 0 when every continued run finished and matched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

EPISODE = 32  # MVTecPatch-v0's default episode_length
RUN = Path("reinforce") / "MVTecPatch-v0_1"
DEFAULT_ENV_KWARGS = ["pretrain_epochs:1", "predictor_warmup_updates:10"]


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def checkpoint_step(run: Path) -> int | None:
    latest = run / "checkpoints" / "latest.json"
    try:
        return int(json.loads(latest.read_text())["num_timesteps"])
    except (OSError, ValueError, KeyError):
        return None


def logged_step(log: Path) -> int:
    """The last step the run's progress lines (``--no-progress``) report."""
    steps = re.findall(r"step (\d+)/\d+ \(", log.read_text()) if log.is_file() else []
    return int(steps[-1]) if steps else 0


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with log.open("a") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def kill_when(process: subprocess.Popen, ready: Callable[[], bool]) -> bool:
    """SIGKILL ``process`` as soon as ``ready()``; False if it ended first."""
    while process.poll() is None:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    return False


def kill_at(point: str, process: subprocess.Popen, log: Path, run: Path, warm_up: float, mid: int, second: int) -> str:
    """SIGKILL the run at ``point``; where it fell (an error line if the run ended first)."""
    if point == "during the warm-up":
        began: list[float] = []

        def in_warm_up() -> bool:
            if not began and "warm-up: AE pre-training" in (log.read_text() if log.is_file() else ""):
                began.append(time.perf_counter())
            return bool(began) and time.perf_counter() - began[0] >= warm_up / 2

        if not kill_when(process, in_warm_up):
            raise RuntimeError("ended before the kill")
        if "warm-up took" in log.read_text():
            return "after the warm-up (it ran faster than the uninterrupted run's)"
        return f"{warm_up / 2:.0f} s into the warm-up (of {warm_up:.0f} s)"
    if point == "mid-episode":
        if not kill_when(process, lambda: logged_step(log) >= mid):
            raise RuntimeError("ended before the kill")
        step = logged_step(log)
        return f"step {step}+ (episode {step // EPISODE + 1}, its step {step % EPISODE + 1})"
    if not kill_when(process, lambda: (checkpoint_step(run) or 0) >= second):
        raise RuntimeError("ended before the kill")
    return f"step {checkpoint_step(run)}, its checkpoint just written"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed")
    parser.add_argument("-n", "--n-timesteps", type=int, default=160, help="env steps of each run")
    parser.add_argument("--save-freq", type=int, default=64, help="train.py --save-freq")
    parser.add_argument("--eval-freq", type=int, default=80, help="train.py --eval-freq (not a multiple of --save-freq)")
    parser.add_argument(
        "--env-kwargs", nargs="*", default=DEFAULT_ENV_KWARGS, help=f"train.py --env-kwargs (default: {DEFAULT_ENV_KWARGS})"
    )
    parser.add_argument("--threads", type=int, default=1, help="train.py --threads")
    parser.add_argument("-f", "--log-folder", default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.n_timesteps < 2 * args.save_freq + EPISODE or args.save_freq < EPISODE:
        parser.error("needs --save-freq >= 32 and -n >= 2 * --save-freq + 32 (two checkpoints and an episode after)")

    folder = Path(args.log_folder or tempfile.mkdtemp(prefix="kill_resume_"))
    folder.mkdir(parents=True, exist_ok=True)
    flags = ["-n", str(args.n_timesteps), "--save-freq", str(args.save_freq), "--eval-freq", str(args.eval_freq)]
    flags += ["--seed", str(args.seed), "--threads", str(args.threads), "--no-progress", "--no-evaluate"]
    flags += ["--env-kwargs", *args.env_kwargs]
    start = time.perf_counter()

    # the uninterrupted run, and its warm-up time
    reference = folder / "uninterrupted"
    log = reference.with_suffix(".log")
    code = launch([sys.executable, "-m", "train", *flags, "-f", str(reference)], log).wait()
    if code != 0:
        print(f"error: the uninterrupted run ended with exit code {code}; see {log}", file=sys.stderr)
        return 1
    took = re.search(r"warm-up took ([\d.]+) s", log.read_text())
    warm_up = float(took.group(1)) if took else 10.0
    expected = {name: sha256(reference / RUN / name) for name in ("best_detector.pt", "detector.pt")}

    mid = args.save_freq + args.save_freq // 2 + EPISODE // 2  # inside an episode, between two checkpoints
    second = 2 * args.save_freq  # the second periodic checkpoint (the first is the warm-up's, at step 0)
    rows, ok = [], True
    for name in ("during the warm-up", "mid-episode", "just after a checkpoint"):
        logs = folder / name.replace(" ", "-")
        log = logs.with_suffix(".log")
        run = logs / RUN
        process = launch([sys.executable, "-m", "train", *flags, "-f", str(logs)], log)
        try:
            where = kill_at(name, process, log, run, warm_up, mid, second)
        except RuntimeError:
            print(f"error: the run killed {name} ended before the kill; see {log}", file=sys.stderr)
            return 1
        continues = checkpoint_step(run)
        code = launch([sys.executable, "-m", "train", "-i", str(run), "--no-progress", "--no-evaluate"], log).wait()
        same = {file: sha256(run / file) == digest and digest is not None for file, digest in expected.items()}
        ok &= code == 0 and all(same.values())
        rows.append(
            [
                name,
                where,
                "none: -i starts again" if continues is None else f"step {continues}",
                str(code),
                *("identical" if same[file] else "DIFFERENT" for file in expected),
            ]
        )

    print(
        f"{len(rows)} SIGKILLs of a seeded run (-n {args.n_timesteps}, --save-freq {args.save_freq}, --eval-freq "
        f"{args.eval_freq}, --env-kwargs {' '.join(args.env_kwargs)}), each continued with -i, in "
        f"{time.perf_counter() - start:.0f} s; runs in {folder}"
    )
    print("| kill | killed at | -i continues from | exit code | best_detector.pt | detector.pt |")
    print("|---|---|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"uninterrupted best_detector.pt sha256 {expected['best_detector.pt']}")
    print("all continued runs equal the uninterrupted run, bit for bit" if ok else "error: a continued run differs")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
