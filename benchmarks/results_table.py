"""Writes the tables of docs/results.md from the recorded rows, so that the document cannot drift from the data.

    python -m benchmarks.results_table            # rewrite the generated blocks of docs/results.md
    python -m benchmarks.results_table --check    # exit 1 if docs/results.md differs from what results.csv gives

Each table of :data:`TABLES` fills the block between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in
the document: the command that reruns its cells, then per category the variants' mean ± std over seeds (the rows as
``compare.py --recorded ... --prefer-cpu`` picks them: of a cell's rows the last one on the reference CPU, else the
last one). The text around the blocks is written by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.tables import category_table, index_rows, paired_table, read_rows, sampler_goal_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "results.csv"
DOC = ROOT / "docs" / "results.md"
REFERENCE_CPU = "AMD EPYC family 26 model 2"  # where the comparison's cells all ran, the paper's tire cells aside


@dataclass(frozen=True)
class GoalCheck:
    """The contamination goal (:func:`benchmarks.tables.sampler_goal_table`): c* from the levels' costs to the random
    sampler, then each sampler's share of its level's cost won back, at c* and at the other levels it ran at."""

    category: str
    levels: tuple[str, ...]
    learners: tuple[str, ...]
    controls: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class Table:
    variants: tuple[str, ...]
    categories: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    pairs: tuple[tuple[str, str], ...] = ()  # (variant, reference): a second table of their differences seed by seed


def _against(reference: str, variants: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((variant, reference) for variant in variants)


# the contamination grid's variants beside each level's random sampler (the reference they pair with)
_C00_SAMPLERS = ("c00-heuristic", "c00-reinforce", "c00-reinforce-avoid", "c00-ppo-avoid")
_C10_SAMPLERS = ("c10-heuristic", "c10-reinforce", "c10-reinforce-avoid", "c10-ppo-avoid")
_C20_VARIANTS = (
    "c20-random-vetted",
    "c20-random-oracle",
    "c20-heuristic",
    "c20-reinforce",
    "c20-reinforce-avoid",
    "c20-ppo-avoid",
)

_LEVELS = ("00", "05", "10", "20")  # the degradation curve's contamination levels, in percent
_CURVE = (("ae@", "random"), ("", "random"), ("", "reinforce"))  # its rows per level: AE-only, random, REINFORCE


TABLES = {
    "comparison": Table(
        (
            "default",
            "default-random",
            "paper",
            "ae@default",
            "unet",
            "budget@unet-plateau",  # the plateau run at the budget: the budget run (agents/baseline_trainer.py)
            "unet-plateau",
            "vqvae2",
            "budget@vqvae2-plateau",
            "vqvae2-plateau",
        ),
        ("magnetic_tile", "tire"),
    ),
    "ablation": Table(
        ("default", "labels-10", "labels-15", "labels-25", "normal-pool-0", "normal-pool-60", "normal-pool-240"),
        ("magnetic_tile",),
    ),
    "contamination": Table(
        (
            "ae@c00-random",
            "c00-random",
            *_C00_SAMPLERS,
            "ae@c10-random",
            "c10-random",
            *_C10_SAMPLERS,
            "ae@c20-random",
            "c20-random",
            *_C20_VARIANTS,
        ),
        ("magnetic_tile",),
        pairs=(
            ("c20-random", "c00-random"),  # what contamination costs the random sampler
            ("ae@c20-random", "ae@c00-random"),  # ... and the AE-only residual
            ("c10-random", "c00-random"),
            *_against("c00-random", _C00_SAMPLERS),
            *_against("c10-random", _C10_SAMPLERS),
            *_against("c20-random", _C20_VARIANTS),
        ),
    ),
    "degradation": Table(  # the cost of each contamination level to the AE-only residual, random and REINFORCE
        tuple(f"{prefix}c{level}-{sampler}" for level in _LEVELS for prefix, sampler in _CURVE),
        ("magnetic_tile",),
        pairs=tuple(
            (f"{prefix}c{level}-{sampler}", f"{prefix}c00-{sampler}") for level in _LEVELS[1:] for prefix, sampler in _CURVE
        ),
    ),
    "contamination-tire": Table(
        ("ae@c00-random", "c00-random", "ae@c20-random", "c20-random", "c20-heuristic", "c20-reinforce-avoid"),
        ("tire",),
        pairs=(
            ("c20-random", "c00-random"),
            ("ae@c20-random", "ae@c00-random"),
            *_against("c20-random", ("c20-heuristic", "c20-reinforce-avoid")),
        ),
    ),
}
CHECKS = {
    "sampler-goal": GoalCheck(
        "magnetic_tile", _LEVELS[1:], learners=("reinforce", "reinforce-avoid", "ppo-avoid"), controls=("heuristic",)
    ),
}
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n).*?(<!-- end generated -->)", re.DOTALL)


def _rows(results: Path, seeds: tuple[int, ...]) -> list[dict]:
    chosen = index_rows(read_rows(results), REFERENCE_CPU)
    return [row for (_, _, seed), row in chosen.items() if seed in seeds]


def render_check(check: GoalCheck, results: Path = RESULTS) -> str:
    """The generated block of the goal check: the levels' costs, c*, and each sampler against the goal."""
    rows = _rows(results, check.seeds)
    lines = sampler_goal_table(rows, check.category, check.seeds, check.levels, check.learners, check.controls)
    return "\n".join([f"**{check.category}**, seeds {', '.join(map(str, check.seeds))}:", "", *lines, ""])


def render(name: str, table: Table, results: Path = RESULTS) -> str:
    """The generated block of one table: its rerun command and one Markdown table per category."""
    rows = _rows(results, table.seeds)
    command = [
        "python -m benchmarks.compare --data-root ../shared/data --categories " + " ".join(table.categories),
        "    --methods " + " ".join(table.variants),
        f"    --seeds {' '.join(map(str, table.seeds))} --parallel 2 --threads 1 --out runs/{name}",
    ]
    lines = ["```bash", " \\\n".join(command), "```", ""]
    for category in table.categories:
        lines += [f"**{category}**", "", *category_table(rows, list(table.variants), category, wall_clock=False)]
        have = {r["variant"] for r in rows if r["category"] == category}
        missing = [v for v in table.variants if v not in have]
        if missing:
            lines += ["", f"No recorded rows: {', '.join(missing)}."]
        if table.pairs:
            paired = paired_table(rows, dict(table.pairs), category, table.seeds, ("pixel_auroc", "pixel_f1max"))
            lines += ["", f"Paired by seed (the same split), **{category}**:", "", *paired]
        lines.append("")
    return "\n".join(lines)


def regenerate(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated block rewritten from ``results``.

    Raises:
        ValueError: a block names no table of :data:`TABLES` or :data:`CHECKS`, or one of them has no block.
    """
    names = [m["name"] for m in BLOCK.finditer(text)]
    unknown, absent = set(names) - set(TABLES) - set(CHECKS), (set(TABLES) | set(CHECKS)) - set(names)
    if unknown or absent:
        known = [*TABLES, *CHECKS]
        raise ValueError(f"generated blocks: unknown {sorted(unknown)}, missing {sorted(absent)} (tables: {known})")

    def block(name: str) -> str:
        return render_check(CHECKS[name], results) if name in CHECKS else render(name, TABLES[name], results)

    return BLOCK.sub(lambda m: m[1] + block(m["name"]) + m[3], text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS), help="the recorded rows (default: %(default)s)")
    parser.add_argument("--doc", default=str(DOC), help="the document with generated blocks (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the document is out of date")
    args = parser.parse_args(argv)
    doc = Path(args.doc)
    try:
        text = doc.read_text()
        new = regenerate(text, Path(args.results))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{doc} is out of date: run python -m benchmarks.results_table", file=sys.stderr)
            return 1
        return 0
    if new != text:
        doc.write_text(new)
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
