"""The README's main job, timed, beside another checkout's: how much faster is this code, and is its quality the same?

    python -m benchmarks.main_job --against ../main-at-some-commit            # this checkout, then the other one
    python -m benchmarks.main_job --against ../other --repeats 2              # ours, theirs, theirs, ours
    python -m benchmarks.main_job --threads 2 -- -n 1024                      # train.py flags after --

Each run is ``/usr/bin/time -v python train.py --env MVTecPatch-v0 --threads N --no-progress -f OUT/...`` in the
checkout's folder with its own code (``--no-warmup-cache`` where its train.py has one, so that every run computes its
warm-up). Printed per run: wall clock, CPU time, peak RSS and the test split's pixel AUROC and F1max (its
``metrics.json``); then the medians and this checkout's speed-up. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "parse_time_v", "run_main_job"]

ROOT = Path(__file__).resolve().parents[1]


def parse_time_v(text: str) -> dict[str, float]:
    """``/usr/bin/time -v``'s report -> wall seconds, CPU seconds (user + system) and peak RSS in GiB."""
    fields = {}
    for key, pattern in (
        ("user", r"User time \(seconds\): ([\d.]+)"),
        ("system", r"System time \(seconds\): ([\d.]+)"),
        ("rss_kib", r"Maximum resident set size \(kbytes\): (\d+)"),
        ("wall", r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)"),
    ):
        match = re.search(pattern, text)
        if match is None:
            raise ValueError(f"no {key!r} in /usr/bin/time's report")
        fields[key] = match.group(1)
    wall = 0.0
    for part in fields["wall"].split(":"):
        wall = wall * 60 + float(part)
    return {
        "wall_s": wall,
        "cpu_s": float(fields["user"]) + float(fields["system"]),
        "rss_gib": int(fields["rss_kib"]) / 1024**2,
    }


def run_main_job(checkout: Path, out: Path, threads: int, extra: list[str]) -> dict[str, float]:
    """One main job in ``checkout`` (its code, this interpreter), its log in ``out/train.log``: timings and quality."""
    out = out.resolve()  # the job runs in the checkout's folder
    train = (checkout / "train.py").read_text()
    command = [sys.executable, "train.py", "--env", "MVTecPatch-v0", "--threads", str(threads), "--no-progress"]
    command += ["-f", str(out / "logs"), *(["--no-warmup-cache"] if "--no-warmup-cache" in train else []), *extra]
    report = out / "time-v.txt"
    timer = ["/usr/bin/time", "-v", "-o", str(report)] if Path("/usr/bin/time").is_file() else None
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "train.log", "w") as log:
        done = subprocess.run([*(timer or []), *command], cwd=checkout, env=env, stdout=log, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the main job failed in '{checkout}' (exit {done.returncode}): {tail}; log: {out / 'train.log'}")
    result = parse_time_v(report.read_text()) if timer else {"wall_s": wall, "cpu_s": float("nan"), "rss_gib": float("nan")}
    (metrics_file,) = sorted((out / "logs").rglob("metrics.json"))[-1:] or [None]
    metrics = json.loads(metrics_file.read_text()) if metrics_file is not None else {}
    return {
        **result,
        "pixel_auroc": metrics.get("pixel_auroc", float("nan")),
        "pixel_f1max": metrics.get("pixel_f1max", float("nan")),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, default=None, metavar="CHECKOUT", help="another checkout to time beside")
    parser.add_argument("--ours", type=Path, default=ROOT, metavar="CHECKOUT", help="the checkout timed as ours (this one)")
    parser.add_argument("--threads", type=int, default=2, help="train.py --threads (the README's figure: 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per checkout, alternating (ours, theirs, theirs, ours)")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    try:
        if args.threads < 1 or args.repeats < 1:
            raise ValueError("--threads and --repeats must be integers >= 1")
        for flag, checkout in (("--ours", args.ours), ("--against", args.against)):
            if checkout is not None and not (checkout / "train.py").is_file():
                raise ValueError(f"{flag} '{checkout}' is not a checkout of this project (no train.py)")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    checkouts = {"ours": args.ours, **({"theirs": args.against} if args.against is not None else {})}
    order = [name for i in range(args.repeats) for name in (checkouts if i % 2 == 0 else reversed(list(checkouts)))]
    out = (args.out or Path(tempfile.mkdtemp(prefix="main_job_"))).resolve()  # train.py runs in the checkout's folder
    results: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    print(f"{'run':10s} {'wall':>9s} {'CPU':>9s} {'peak RSS':>9s} {'pixel AUROC':>12s} {'F1max':>7s}")
    try:
        for i, name in enumerate(order):
            r = run_main_job(checkouts[name], out / f"{i}-{name}", args.threads, extra)
            results[name].append(r)
            print(
                f"{name:10s} {r['wall_s'] / 60:7.2f} m {r['cpu_s'] / 60:7.2f} m {r['rss_gib']:7.2f} G "
                f"{r['pixel_auroc']:12.4f} {r['pixel_f1max']:7.4f}",
                flush=True,
            )
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    median = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    if "theirs" in median:
        ours, theirs = median["ours"], median["theirs"]
        auroc, f1 = ours["pixel_auroc"] - theirs["pixel_auroc"], ours["pixel_f1max"] - theirs["pixel_f1max"]
        print(
            f"\nmedians: ours {ours['wall_s'] / 60:.2f} min, theirs {theirs['wall_s'] / 60:.2f} min: "
            f"{theirs['wall_s'] / ours['wall_s']:.2f}x faster by wall clock, {theirs['cpu_s'] / ours['cpu_s']:.2f}x by CPU; "
            f"pixel AUROC {auroc:+.4f}, F1max {f1:+.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
