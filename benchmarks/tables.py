"""Result rows as data: the ``results.csv`` schema, reading and writing it, and the Markdown tables made from it.

One row is one trained cell (a variant on a category with a seed): its test-split metrics, the cell's wall-clock
``seconds`` and its own ``cpu_seconds``, the CPU it ran on, the commit of the code and the sampler's final
``policy_entropy`` (nats; empty where none was recorded). ``compare.py`` writes these
rows, ``benchmarks/results/results.csv`` keeps the project's, and ``results_table.py`` builds docs/results.md from them.
"""

from __future__ import annotations

import csv
import functools
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "image_auroc", "f1_at_val_threshold")
CSV_COLUMNS = ("variant", "category", "seed", *METRICS, "seconds", "cpu_seconds", "cpu_model", "commit", "policy_entropy")
OPTIONAL_COLUMNS = ("cpu_seconds", "cpu_model", "commit", "policy_entropy")  # absent from older files
LABELS = {
    "pixel_auroc": "AUROC",
    "pixel_f1max": "F1max",
    "f1_at_val_threshold": "F1@val",
    "pixel_ap": "AP",
    "pixel_aupro": "AUPRO",
    "image_auroc": "img AUROC",
    "policy_entropy": "entropy",
}
UNKNOWN = "unknown"
Key = tuple[str, str, int]  # (category, variant, seed)


@functools.cache
def cpu_model() -> str:
    """This machine's CPU as ``<model name> family <F> model <M>`` (Linux ``/proc/cpuinfo``), else what the platform
    says; the family and model tell apart CPUs that virtual machines all name alike."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in fields:
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name", platform.processor() or UNKNOWN)
    name = " ".join(re.sub(r"\((R|TM|tm)\)", "", name).split())  # "Intel(R) Xeon(R)" -> "Intel Xeon"
    if "cpu family" in fields and "model" in fields:
        name += f" family {fields['cpu family']} model {fields['model']}"
    return name


@functools.cache
def code_commit() -> str:
    """The short commit of the checkout this code runs from, ``-dirty`` when tracked files differ from it; ``unknown``
    outside a git checkout."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=7", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN
    return commit + ("-dirty" if dirty else "")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of one ``results.csv``, in file order; the :data:`OPTIONAL_COLUMNS` may be absent.

    Raises:
        ValueError: the file is unreadable or not a ``results.csv`` of this schema (the message names it).
    """
    required = set(CSV_COLUMNS) - set(OPTIONAL_COLUMNS)
    rows = []
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = required - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"'{path}': not a results.csv (lacks columns {sorted(missing)})")
            for r in reader:
                try:
                    rows.append(
                        {
                            "variant": r["variant"],
                            "category": r["category"],
                            "seed": int(r["seed"]),
                            **{k: float(r[k]) for k in (*METRICS, "seconds")},
                            "cpu_seconds": float(r.get("cpu_seconds") or "nan"),
                            "cpu_model": r.get("cpu_model") or UNKNOWN,
                            "commit": r.get("commit") or UNKNOWN,
                            "policy_entropy": float(r.get("policy_entropy") or "nan"),
                        }
                    )
                except (TypeError, ValueError) as error:
                    where = f"'{path}', line {reader.line_num}"
                    raise ValueError(f"{where}: expected a whole seed and numbers in {CSV_COLUMNS[3:11]} ({error})") from error
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ValueError(f"'{path}': cannot read recorded rows ({reason})") from error
    return rows


def cpu_matches(text: str, model: str) -> bool:
    """Whether the words of ``text`` appear in ``model`` in order: ``AMD EPYC family 26 model 2`` matches
    ``AMD EPYC 9B14 96-Core Processor family 26 model 2``, not ``AMD EPYC family 2 model 26``."""
    words = iter(model.split())
    return all(word in words for word in text.split())  # each search resumes where the last one stopped


def index_rows(rows: list[dict[str, Any]], prefer_cpu: str | None = None) -> dict[Key, dict[str, Any]]:
    """One row per (category, variant, seed): a later row wins a tie, except that a row on the CPU ``prefer_cpu``
    names (:func:`cpu_matches`) wins over one on another CPU (so a table can keep to one CPU where it has the rows)."""
    chosen: dict[Key, dict[str, Any]] = {}
    for row in rows:
        key = (row["category"], row["variant"], row["seed"])
        old = chosen.get(key)
        preferred = prefer_cpu is None or cpu_matches(prefer_cpu, row["cpu_model"])
        if old is None or preferred or not cpu_matches(prefer_cpu or "", old["cpu_model"]):
            chosen[key] = row
    return chosen


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """``path`` replaced at once by a ``results.csv`` of ``rows`` (several workers may write it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    tmp.replace(path)


def mean_std(values: list[float], missing: str | None = None) -> str:
    """``mean ± std`` (sample std) of ``values``, the value alone for one; with ``missing``, non-finite values are left
    out, and ``missing`` stands for none."""
    arr = np.asarray(values, dtype=float)
    if missing is not None:
        arr = arr[np.isfinite(arr)]
        if not len(arr):
            return missing
    if len(arr) == 1:
        return f"{arr[0]:.3f}"
    return f"{arr.mean():.3f} ± {arr.std(ddof=1):.3f}"


def category_table(rows: list[dict[str, Any]], variants: list[str], category: str, wall_clock: bool = True) -> list[str]:
    """Markdown lines: one row per variant with rows on ``category``, every metric as mean ± std over its seeds (and
    the final policy entropy where a row of the table has one), the mean (wall-clock and) CPU minutes of a cell, and
    the CPUs and commits of its rows."""
    chosen = [r for r in rows if r["category"] == category and r["variant"] in variants]
    keys = (*METRICS, "policy_entropy") if any(np.isfinite(r.get("policy_entropy", np.nan)) for r in chosen) else METRICS
    header = " | ".join(LABELS[k] for k in keys)
    minutes = "minutes | " if wall_clock else ""
    lines = [f"| variant | seeds | {header} | {minutes}CPU minutes | CPU | commit |"]
    lines.append("|---" * (len(keys) + 5 + wall_clock) + "|")
    for variant in variants:
        rs = [r for r in rows if r["category"] == category and r["variant"] == variant]
        if not rs:
            continue
        cpus = [r["cpu_seconds"] for r in rs if np.isfinite(r["cpu_seconds"])]
        cpu_minutes = f"{np.mean(cpus) / 60:.1f}" if cpus else "-"
        wall = f"{np.mean([r['seconds'] for r in rs]) / 60:.1f} | " if wall_clock else ""
        stats = " | ".join(mean_std([r.get(k, np.nan) for r in rs], "-" if k == "policy_entropy" else None) for k in keys)
        where = ", ".join(dict.fromkeys(r.get("cpu_model", UNKNOWN) for r in rs))
        commits = ", ".join(dict.fromkeys(r.get("commit", UNKNOWN) for r in rs))
        lines.append(f"| {variant} | {len(rs)} | {stats} | {wall}{cpu_minutes} | {where} | {commits} |")
    return lines


def seed_deltas(
    by_key: dict[tuple[str, int], dict[str, Any]], variant: str, reference: str, seeds: tuple[int, ...], keys: tuple[str, ...]
) -> tuple[list[int], np.ndarray]:
    """The seeds both ``variant`` and ``reference`` have rows for (``by_key``: (variant, seed) -> row), and the
    variant's metrics minus the reference's on each of them: float (seeds, len(keys))."""
    both = [s for s in seeds if (variant, s) in by_key and (reference, s) in by_key]
    diff = [[by_key[(variant, s)][k] - by_key[(reference, s)][k] for k in keys] for s in both]
    return both, np.array(diff, dtype=float).reshape(len(both), len(keys))


def paired_table(
    rows: list[dict[str, Any]], pairs: dict[str, str], category: str, seeds: tuple[int, ...], keys: tuple[str, ...]
) -> list[str]:
    """Markdown lines: per ``variant: reference`` pair, the variant's metric minus the reference's on the same seed
    (the same split), seed by seed, their mean ± std over the seeds both have, and on how many of them it is ahead."""
    by_key = {(r["variant"], r["seed"]): r for r in rows if r["category"] == category}
    heads = " | ".join(f"Δ {LABELS[k]} per seed | Δ {LABELS[k]} mean ± std" for k in keys)
    lines = [f"| variant | against | seeds | {heads} | ahead on (Δ {LABELS[keys[0]]}) |", "|---" * (4 + 2 * len(keys)) + "|"]
    for variant, reference in pairs.items():
        both, diff = seed_deltas(by_key, variant, reference, seeds, keys)
        if not both:
            continue
        cells = []
        for k, key in enumerate(keys):
            deltas = list(diff[:, k])
            spread = f" ± {np.std(deltas, ddof=1):.3f}" if len(deltas) > 1 else ""
            cells += [" / ".join(f"{d:+.3f}" for d in deltas), f"{np.mean(deltas):+.3f}{spread}"]
            if key == keys[0]:
                ahead = f"{sum(d > 0 for d in deltas)} of {len(deltas)}"
        lines.append(f"| {variant} | {reference} | {', '.join(map(str, both))} | {' | '.join(cells)} | {ahead} |")
    return lines


def markdown_tables(rows: list[dict[str, Any]], variants: list[str], categories: list[str]) -> str:
    """Per category a :func:`category_table`, then the paper's two tables (pixel F1max and AUROC, category x variant)."""

    def cells(category: str, variant: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["category"] == category and r["variant"] == variant]

    out: list[str] = []
    for category in categories:
        out += [f"### {category}", "", *category_table(rows, variants, category), ""]
    for key in ("pixel_f1max", "pixel_auroc"):
        out += [f"### pixel {LABELS[key]} (mean ± std over seeds)", "", "| category | " + " | ".join(variants) + " |"]
        out.append("|---" * (len(variants) + 1) + "|")
        for category in categories:
            stats = (mean_std([r[key] for r in cells(category, v)]) if cells(category, v) else "-" for v in variants)
            out.append(f"| {category} | " + " | ".join(stats) + " |")
        out.append("")
    return "\n".join(out)


def sampler_goal_table(
    rows: list[dict[str, Any]],
    category: str,
    seeds: tuple[int, ...],
    levels: tuple[str, ...],
    learners: tuple[str, ...],
    controls: tuple[str, ...] = (),
) -> list[str]:
    """Markdown lines: the contamination goal checked from recorded rows.

    First what each level ``c<level>`` costs the uniform random sampler against ``c00`` (seed by seed, on the
    seeds both have); c* is the level with the largest mean pixel AUROC cost among the levels that have every seed.
    Then per sampler at c* (variants ``c<c*>-<sampler>``), and likewise at every other such level it has rows at:
    the share of that level's cost it wins back against random on the same seeds (pixel AUROC and F1max), on how
    many seeds it is ahead on both, its difference from random at c = 0, its mean final entropy, and whether it
    meets the goal: half of both costs back, ahead on every seed, within 0.01 of random on both at c = 0, entropy
    below 1.9 nats (only ``learners`` can; ``controls`` are shown).
    """
    by_key = {(r["variant"], r["seed"]): r for r in rows if r["category"] == category}
    keys = ("pixel_auroc", "pixel_f1max")

    def deltas(variant: str, reference: str) -> tuple[list[int], np.ndarray]:
        return seed_deltas(by_key, variant, reference, seeds, keys)  # (seeds, 2): Δ AUROC, Δ F1max

    head = "| level | seeds | random's cost, AUROC per seed | mean | random's cost, F1max per seed | mean |"
    lines = [head, "|---" * 6 + "|"]
    costs: dict[str, np.ndarray] = {}
    for level in levels:
        both, diff = deltas(f"c{level}-random", "c00-random")
        if not both:
            continue
        if len(both) == len(seeds):
            costs[level] = diff.mean(0)
        per_seed = [" / ".join(f"{d:+.3f}" for d in diff[:, k]) for k in range(2)]
        lines.append(
            f"| c{level} | {', '.join(map(str, both))} | {per_seed[0]} | {diff[:, 0].mean():+.3f} | {per_seed[1]} | "
            f"{diff[:, 1].mean():+.3f} |"
        )
    if not costs:
        return [*lines, "", f"No level has the random sampler on every seed ({', '.join(map(str, seeds))}): no c*."]
    star = min(costs, key=lambda level: costs[level][0])
    cost = -costs[star]
    lines += ["", f"c* = c{star}: random lost {cost[0]:.3f} AUROC and {cost[1]:.3f} F1max on the seed mean.", ""]
    lines += [
        "| level | sampler | seeds | AUROC won back (of the cost) | F1max won back | ahead on both | Δ at c = 0 "
        "(AUROC / F1max) | entropy | goal |",
        "|---" * 9 + "|",
    ]
    samplers = (*controls, *learners)
    shown = [
        star,
        *(lvl for lvl in costs if lvl != star and any((f"c{lvl}-{x}", s) in by_key for x in samplers for s in seeds)),
    ]
    for level in shown:
        cost = -costs[level]  # (2,): what contamination cost random at this level, positive where it cost
        name = f"c{level} (c*)" if level == star else f"c{level}"
        for sampler in samplers:
            both, diff = deltas(f"c{level}-{sampler}", f"c{level}-random")
            if not both:
                if level == star:  # elsewhere a sampler that was not run is left out
                    lines.append(f"| {name} | {sampler} | – | no rows | | | | | |")
                continue
            gained = diff.mean(0)
            share = [f"{g:+.3f} ({g / c:+.0%})" if c > 0 else f"{g:+.3f}" for g, c in zip(gained, cost)]
            ahead = int(np.sum(np.all(diff > 0, axis=1)))
            clean_seeds, clean = deltas(f"c00-{sampler}", "c00-random")
            at_clean = "–"
            if clean_seeds:
                at_clean = " / ".join(f"{d:+.3f}" for d in clean.mean(0)) + f" (seeds {', '.join(map(str, clean_seeds))})"
            entropy = [by_key[(f"c{level}-{sampler}", s)].get("policy_entropy", np.nan) for s in both]
            met = (
                len(both) == len(seeds)
                and len(clean_seeds) == len(seeds)
                and bool(np.all(cost > 0) and np.all(gained >= cost / 2))
                and ahead == len(both)
                and bool(np.all(clean.mean(0) >= -0.01))
                and float(np.nanmean(entropy)) < 1.9
            )
            goal = "control" if sampler in controls else ("met" if met else "not met")
            lines.append(
                f"| {name} | {sampler} | {', '.join(map(str, both))} | {share[0]} | {share[1]} | {ahead} of {len(both)} | "
                f"{at_clean} | {mean_std(entropy, '-')} | {goal} |"
            )
    return lines
