"""Detector quality without RL: the fast loop for tuning the AE and the predictor on a real category.

    python -m experiments.detector_quality --data-root ../shared/data --category magnetic_tile --seeds 0 \\
        --streams 0 1 2 --preset-env agents/hyperparams/reinforce.yml --preset default --set pred_focal_gamma=1

Builds the detector exactly as ``MVTecPatch-v0`` does (same split, same config fields), pre-trains the AE, warms
the predictor up, then runs ``Detector.fit_random`` (uniform random patches: the no-RL control) for ``--cycles``
AE updates, validating every ``--eval-every`` cycles and keeping the best validation F1max, as train.py does. Prints
one JSON line per seed with the test metrics (full method and AE-only) and the seconds taken, and appends it to
``--log`` (JSON lines). A full ``train.py`` run is the confirmation; this loop is minutes instead of tens of them.

``--set key=value`` sets env or ``DetectorConfig`` fields (:mod:`benchmarks.overrides`), over ``--preset`` of
``--preset-env`` when given, else over the bare config defaults (the paper's). ``--streams`` trains several detectors
on one seed's split and initial weights with different random streams: one run's training noise, the yardstick for a
change. ``--warmup-curve N`` scores along the predictor's warm-up; ``--save-dir`` keeps each best detector.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.overrides import parse_sets
from envs.config import MVTecPatchConfig, detector_config
from envs.data import load_env_data
from models.detector import build_detector
from models.metrics import compute_metrics, f1_at_threshold


def preset_env_kwargs(path: Path, preset: str) -> dict[str, Any]:
    """A preset's env settings: through :func:`agents.run_config.load_preset` (env.yml merged) for an algorithm's file
    in agents/hyperparams, else the preset's own ``env_kwargs`` in the YAML file."""
    from agents.run_config import HYPERPARAMS_DIR, load_preset

    if path.resolve().parent == HYPERPARAMS_DIR.resolve() and path.stem != "env":
        try:
            return load_preset(path.stem, "MVTecPatch-v0", preset)["env_kwargs"]
        except ValueError as error:
            raise SystemExit(f"error: {error}") from error
    table = (yaml.safe_load(path.read_text()) or {}).get("MVTecPatch-v0") or {}
    if not isinstance(table.get(preset), dict) or "env_kwargs" not in table[preset]:
        raise SystemExit(f"error: '{path}' has no preset {preset!r} with env_kwargs under MVTecPatch-v0")
    return table[preset]["env_kwargs"]


def run(args: argparse.Namespace, seed: int, stream: int = 0) -> dict[str, Any]:
    env_kwargs, det_kwargs = parse_sets(args.set or [])
    if args.preset_env:
        base = preset_env_kwargs(Path(args.preset_env), args.preset)
        merged = copy.deepcopy(base)
        merged_det = merged.pop("detector", None) or {}
        for k, v in det_kwargs.items():
            if isinstance(v, dict) and isinstance(merged_det.get(k), dict):
                merged_det[k] = {**merged_det[k], **v}
            else:
                merged_det[k] = v
        env_kwargs = {**merged, **env_kwargs}
        det_kwargs = merged_det
    try:
        config = MVTecPatchConfig.from_kwargs(
            data_root=args.data_root, category=args.category, seed=seed, detector=det_kwargs or None, **env_kwargs
        )
        detector_options = detector_config(config)  # a bad value (a negative weight, ...) fails before the data is read
    except (TypeError, ValueError) as error:  # an unknown or invalid --set field: one line, not a traceback
        raise SystemExit(f"error: {error}") from error
    category, split = load_env_data(config)
    detector = build_detector(detector_options, category, split, seed=config.seed)
    if stream:  # same split and initial weights, another random stream (stream 0: the seed's own, as train.py)
        detector.reseed(seed * 1_000_003 + stream)
    val_x, val_y = category.images[split.val], category.masks[split.val]
    test_x, test_y = category.images[split.test], category.masks[split.test]
    start = time.perf_counter()
    ae_hist = detector.pretrain_ae(progress=args.progress)
    t_pre = time.perf_counter() - start
    warmup_curve = []  # (updates, val AUROC, val F1max, test AUROC, test F1max): a diagnostic of more warm-up
    if args.warmup_curve:
        total = detector.config.predictor_warmup_updates
        while detector.predictor_updates < total:
            detector.warmup_predictor(min(args.warmup_curve, total - detector.predictor_updates), progress=args.progress)
            v = compute_metrics(detector.anomaly_map(val_x), val_y)
            t = compute_metrics(detector.anomaly_map(test_x), test_y)
            point = [detector.predictor_updates, *(round(m[k], 4) for m in (v, t) for k in ("pixel_auroc", "pixel_f1max"))]
            warmup_curve.append(point)
            print(f"warm-up {point[0]}: val AUROC/F1max {point[1]}/{point[2]}, test {point[3]}/{point[4]}", flush=True)
    else:
        detector.warmup_predictor(progress=args.progress)
    best: tuple[float, dict, float] | None = None
    curve = []
    done = 0
    while True:
        metrics = compute_metrics(detector.anomaly_map(val_x), val_y)
        curve.append((done, round(metrics["pixel_f1max"], 4), round(metrics["pixel_auroc"], 4)))
        if best is None or metrics["pixel_f1max"] > best[0]:
            best = (metrics["pixel_f1max"], copy.deepcopy(detector.state_dict()), metrics["f1max_threshold"])
        if done >= args.cycles:
            break
        n = min(args.eval_every, args.cycles - done)
        detector.fit_random(n, progress=args.progress)
        done += n
    t_train = time.perf_counter() - start
    final_test = compute_metrics(detector.anomaly_map(test_x), test_y)
    assert best is not None
    detector.load_state_dict(best[1])
    if args.save_dir:
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        detector.save(Path(args.save_dir) / f"seed{seed}_stream{stream}.pt")
    maps = detector.anomaly_map(test_x)
    test = compute_metrics(maps, test_y)
    test["f1_at_val_threshold"] = f1_at_threshold(maps, test_y, best[2])
    ae = compute_metrics(detector.residual_map(test_x), test_y)
    labels = [category.samples[i].label for i in split.test]
    per_type = {}
    good = [i for i, label in enumerate(labels) if label == "good"]
    for label in sorted(set(labels) - {"good"}):
        idx = good + [i for i, lab in enumerate(labels) if lab == label]
        if test_y[idx].any():
            m = compute_metrics(maps[idx], test_y[idx])
            per_type[label] = (round(m["pixel_auroc"], 3), round(m["pixel_f1max"], 3))
    if args.figure:
        from evaluate import save_prediction_grid

        save_prediction_grid(Path(args.figure), test_x, maps, test_y, labels, rows=10)
    keys = ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "image_auroc")
    return {
        "category": args.category,
        "seed": seed,
        "stream": stream,
        "set": args.set,
        "preset": args.preset if args.preset_env else None,
        "cycles": args.cycles,
        "test": {k: round(test[k], 4) for k in (*keys, "f1_at_val_threshold")},
        "per_type": per_type,
        "test_final": {k: round(final_test[k], 4) for k in keys[:2]},
        "ae_only": {k: round(ae[k], 4) for k in keys[:2]},
        "val_curve": curve,
        "warmup_curve": warmup_curve,
        "ae_loss_end_pretrain": round(ae_hist[-1], 5) if ae_hist else None,
        "ae_loss_last": detector.last_ae_loss,
        "pretrain_s": round(t_pre, 1),
        "train_s": round(t_train, 1),
        "total_s": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--category", default=None)
    parser.add_argument("--set", nargs="*", metavar="K=V", help="env or DetectorConfig fields; dotted for ae./predictor.")
    parser.add_argument("--preset-env", default=None, help="a hyperparams YAML whose env_kwargs are the starting point")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--cycles", type=int, default=192, help="AE updates after the warm-ups (6144 env steps / 32)")
    parser.add_argument("--eval-every", type=int, default=48)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[0],
        help="random streams per seed (same split and initialisation; 0 is the seed's own): one run's noise",
    )
    parser.add_argument(
        "--warmup-curve",
        type=int,
        default=0,
        metavar="N",
        help="score validation and test every N warm-up updates (a diagnostic of how far more warm-up pays; 0: off)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log", default="logs/detector_quality.jsonl")
    parser.add_argument("--tag", default="")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--figure", default=None, help="save the test split's prediction grid (PNG) here")
    parser.add_argument(
        "--save-dir",
        default=None,
        help="save each seed and stream's best detector here (seed<S>_stream<T>.pt, Detector.from_checkpoint loads it)",
    )
    args = parser.parse_args(argv)
    if args.warmup_curve < 0:
        parser.error(f"--warmup-curve must be >= 0 (0: off), got {args.warmup_curve}")
    torch.set_num_threads(args.threads)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    for seed, stream in ((seed, stream) for seed in args.seeds for stream in args.streams):
        result = {"tag": args.tag, **run(args, seed, stream)}
        line = json.dumps(result)
        print(line, flush=True)
        with open(args.log, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
