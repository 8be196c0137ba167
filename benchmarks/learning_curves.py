"""Learning curves of trained runs from their TensorBoard logs: is a model still learning when its training stops?

    python -m benchmarks.learning_curves RUN [RUN ...] --out docs/img/vqvae2_learning_curves.png

Plots, over optimiser updates, the training reconstruction loss (a running mean), the codebook usage of a VQ-VAE-2
(how many of the top and bottom codes a batch uses) and the validation pixel AUROC, F1max and image AUROC of each run,
and prints the validation points as a Markdown table. Any run folder with TensorBoard logs works: a scalar a run does
not log is left out of its panel.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["read_scalars", "main"]

PANELS = (
    ("train reconstruction loss", ("train/recon_loss",), "log"),
    ("codebook usage (codes in use per batch)", ("train/codes_top", "train/codes_bottom"), "linear"),
    ("validation pixel AUROC", ("eval/pixel_auroc",), "linear"),
    ("validation pixel F1max", ("eval/pixel_f1max",), "linear"),
    ("validation image AUROC", ("eval/image_auroc",), "linear"),
)


def read_scalars(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of a run's TensorBoard logs: tag -> (steps, values), in step order (the last write of a step wins).

    Raises:
        ValueError: the folder holds no TensorBoard event file.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run.rglob("events.out.tfevents.*"))
    if not files:
        raise ValueError(f"'{run}' has no TensorBoard logs (expected events.out.tfevents.* under it)")
    merged: dict[str, dict[int, float]] = {}
    for path in files:
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            merged.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return {tag: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for tag, v in merged.items()}


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    c = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    n = np.minimum(np.arange(1, len(values) + 1), window)
    return (c[1:] - c[np.arange(1, len(values) + 1) - n]) / n


def find_runs(paths: list[Path]) -> list[Path]:
    """The run folders (with a ``config.yml``) at or below each path, in order; a path without any stands for one run."""
    runs: list[Path] = []
    for path in paths:
        found = [path] if (path / "config.yml").is_file() else sorted(c.parent for c in path.rglob("config.yml"))
        runs += [run for run in found or [path] if run not in runs]
    return runs


def labels(runs: list[Path]) -> list[str]:
    """A distinct short name per run: its path below the runs' common folder (the folder's name for a single run)."""
    resolved = [run.resolve() for run in runs]
    if len(resolved) == 1:
        return [resolved[0].name]
    common = Path(os.path.commonpath(resolved))
    return [str(r.relative_to(common)) for r in resolved]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run folders, or folders above them (each run found by its config.yml)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figure here (PNG)")
    parser.add_argument("--smooth", type=int, default=200, help="running-mean window of the training curves, in updates")
    args = parser.parse_args(argv)
    try:
        if args.smooth < 1:
            raise ValueError(f"--smooth {args.smooth} is invalid: expected an integer >= 1")
        runs = find_runs(args.runs)
        curves = {name: read_scalars(run) for name, run in zip(labels(runs), runs)}
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print("| run | update | pixel AUROC | pixel F1max | image AUROC |")
    print("|---|---|---|---|---|")
    for name, scalars in curves.items():
        steps = scalars.get("eval/pixel_auroc", (np.array([]), None))[0]
        for i, step in enumerate(steps):
            cells = []
            for tag in ("eval/pixel_auroc", "eval/pixel_f1max", "eval/image_auroc"):
                s, v = scalars.get(tag, (np.array([]), np.array([])))
                hit = np.flatnonzero(s == step)
                cells.append(f"{v[hit[0]]:.3f}" if len(hit) else "-")
            print(f"| {name if i == 0 else ''} | {step} | {' | '.join(cells)} |")

    if args.out is not None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
        for ax, (title, tags, scale) in zip(axes, PANELS):
            for name, scalars in curves.items():
                for tag in tags:
                    if tag not in scalars:
                        continue
                    steps, values = scalars[tag]
                    if tag.startswith("train/"):
                        values = running_mean(values, args.smooth)
                    suffix = f" ({tag.rsplit('_', 1)[-1]})" if len(tags) > 1 else ""
                    ax.plot(steps, values, label=name + suffix, marker="" if tag.startswith("train/") else ".")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("updates")
            ax.set_yscale(scale)
            ax.grid(alpha=0.3)
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=110)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
