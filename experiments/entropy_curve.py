"""How far from uniform is the learned sampler? Prints its policy entropy over training, read from TensorBoard.

SB3 logs ``train/entropy_loss`` = −entropy at every policy update; a uniform policy over the 9 actions has
ln 9 = 2.197 nats. Each run is one column, each row a step (the logged update nearest to it).

    python -m experiments.entropy_curve --runs runs/compare/cells/*/default/seed0/logs/reinforce/MVTecPatch-v0_1
    python -m experiments.entropy_curve --runs RUN --every 512
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

TAG = "train/entropy_loss"


def entropy_curve(run: Path) -> list[tuple[int, float]]:
    """(step, entropy in nats) of every policy update logged under ``run`` (a train.py run folder or a TB folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run.rglob("events.out.tfevents.*"))
    if not files:
        raise ValueError(f"'{run}': no TensorBoard event file below it (expected a train.py run folder)")
    curve: dict[int, float] = {}
    for file in files:  # a resumed run (-i) writes a second file; later values win
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        accumulator.Reload()
        if TAG in accumulator.Tags()["scalars"]:
            curve.update({event.step: -event.value for event in accumulator.Scalars(TAG)})
    if not curve:
        raise ValueError(f"'{run}': no {TAG} logged (an algorithm without one, or a run cut before its first update)")
    return sorted(curve.items())


def nearest(curve: list[tuple[int, float]], step: int) -> float:
    return min(curve, key=lambda point: abs(point[0] - step))[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="train.py run folders")
    parser.add_argument("--every", type=int, default=1024, help="print a row every this many steps")
    parser.add_argument("--actions", type=int, default=9, help="size of the action space (uniform = ln of it)")
    args = parser.parse_args(argv)
    if args.every < 1:
        print(f"error: --every must be >= 1, got {args.every}", file=sys.stderr)
        return 2
    try:
        curves = [entropy_curve(Path(run)) for run in args.runs]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    last = max(curve[-1][0] for curve in curves)
    steps = sorted({*range(args.every, last + 1, args.every), *(curve[0][0] for curve in curves), last})
    print(f"policy entropy in nats (uniform over {args.actions} actions: {math.log(args.actions):.3f})")
    for i, run in enumerate(args.runs):
        print(f"  [{i}] {run}")
    print("step    " + "  ".join(f"[{i}]".rjust(6) for i in range(len(curves))))
    for step in steps:
        print(f"{step:<7d} " + "  ".join(f"{nearest(curve, step):6.3f}" for curve in curves))
    print("min     " + "  ".join(f"{min(v for _, v in curve):6.3f}" for curve in curves))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
