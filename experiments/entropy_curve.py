"""How far from uniform is the learned sampler? Prints its policy entropy over training, read from TensorBoard.

train.py logs ``rollout/policy_entropy``, the entropy of the distribution the sampler acted from over each rollout
(agents/entropy.py: every on-policy algorithm, the random and the heuristic sampler); runs without it are read from
SB3's ``train/entropy_loss`` = −entropy of each policy update. A uniform policy over the 9 actions has
ln 9 = 2.197 nats. Each run is one column, each row a step (the logged value nearest to it). A run's final figure,
the mean over its last 1,024 steps, is in its ``policy_entropy.json``.

    python -m experiments.entropy_curve --runs runs/compare/cells/*/default/seed0/logs/reinforce/MVTecPatch-v0_1
    python -m experiments.entropy_curve --runs RUN --every 512
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

TAG = "rollout/policy_entropy"  # the entropy itself
FALLBACK_TAG = "train/entropy_loss"  # minus the entropy, at each policy update


def entropy_curve(run: Path) -> list[tuple[int, float]]:
    """(step, entropy in nats) of every policy update logged under ``run`` (a train.py run folder or a TB folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run.rglob("events.out.tfevents.*"))
    if not files:
        raise ValueError(f"'{run}': no TensorBoard event file below it (expected a train.py run folder)")
    curves: dict[str, dict[int, float]] = {TAG: {}, FALLBACK_TAG: {}}
    for file in files:  # a resumed run (-i) writes a second file; later values win
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag, sign in ((TAG, 1.0), (FALLBACK_TAG, -1.0)):
            if tag in accumulator.Tags()["scalars"]:
                curves[tag].update({event.step: sign * event.value for event in accumulator.Scalars(tag)})
    curve = curves[TAG] or curves[FALLBACK_TAG]
    if not curve:
        raise ValueError(
            f"'{run}': neither {TAG} nor {FALLBACK_TAG} logged (an algorithm without a policy distribution, or a run cut "
            "before its first rollout)"
        )
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
