"""How much a sampler of the predictor's data could win back under contamination, if it acts after the warm-up.

    python -m experiments.predictor_data_lever --data-root ../shared/data --category magnetic_tile --seeds 0 2 \\
        --variant c20-random --log runs/predictor_data_lever.jsonl

Contamination costs the default its accuracy through the predictor's data, not the AE (docs/results.md, "The sampler
under contamination"): vetting all of it from the start (``vetted_predictor_data``) wins back most of the cost. A
sampler, though, acts only after the warm-up, which ``MVTecPatch-v0`` pays before the agent's first step. This loop
measures what choosing the predictor's paste targets from then on is worth, on one warm-up (the env's, read from the
warm-up cache when it holds it) and three arms with the same random stream:

- ``random``: the predictor's synthetic defects keep being pasted into any training image (the default);
- ``oracle``: from the first step on, only into ``train/good`` (the ground truth: the best any chooser can do);
- ``vet``: only into the training images the warmed-up detector scores lowest (max of its map), dropping the top
  ``--drop`` fraction: a heuristic with the information a sampler has.

and three arms that choose from the start instead, a second training from the same initial weights and random stream
(warm-up included, not cached), whose synthetic defects and global residual read only the chosen images:

- ``reoracle``: ``train/good`` (the ground truth; ``vetted_predictor_data`` with the normal pool left as it is);
- ``revet``: the images the first training's warmed-up detector kept (the ``vet`` choice): self-vetting in two passes;
- ``vetted``: ``vetted_predictor_data``, the normal pool from ``train/good`` too (the env's ``c20-random-oracle``).

Each arm then trains as the env's random sampler does (``Detector.fit_random``: one AE update of random patches and
the preset's predictor updates per cycle, the env's ``n_timesteps / ae_batch_size`` cycles), keeps the best validation
F1max of every ``eval_freq`` steps, as train.py does, and is scored on the test split. Also printed: how well the
warmed-up detector's image score finds the contaminated training images (AUROC), and the share of them among the
dropped ones. One JSON line per seed and arm, appended to ``--log`` as each arm ends.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from sklearn.metrics import roc_auc_score

from agents.hyperparams_opt import deep_merge
from agents.run_config import load_preset
from envs import warmup_cache
from envs.mvtec_patch import MVTecPatchEnv
from models.metrics import compute_metrics

ARMS = ("random", "oracle", "vet", "reoracle", "revet", "vetted")
LATE = ("random", "oracle", "vet")  # arms that start from the warm-up
ABLATION = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.yml"


def variant_settings(variant: str, variants: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A comparison variant's env settings (its preset's, with the variant's on top) and its algorithm's settings."""
    if not variants.is_file():
        raise SystemExit(f"error: --variants {variants}: no such file (expected a YAML file of named variants)")
    table = yaml.safe_load(variants.read_text()) or {}
    if variant not in table:
        raise SystemExit(f"error: no variant {variant!r} in {variants}")
    spec = table[variant]
    preset = load_preset(spec.get("algo", "random"), "MVTecPatch-v0", spec.get("preset", "default"))
    env_kwargs = deep_merge(preset.pop("env_kwargs"), spec.get("env_kwargs") or {})
    return env_kwargs, {**preset, **{k: v for k, v in spec.items() if k in ("n_timesteps", "eval_freq")}}


def train_and_score(env: MVTecPatchEnv, detector: Any, cycles: int, eval_every: int) -> dict[str, Any]:
    """``cycles`` random-patch cycles, validating every ``eval_every``; the best validation F1max's test metrics."""
    images, masks, split = env.category.images, env.category.masks, env.split
    best_f1, best_state = -1.0, None
    done = 0
    curve = []  # validation F1max at 0, eval_every, ... cycles
    while True:
        f1 = compute_metrics(detector.anomaly_map(images[split.val]), masks[split.val])["pixel_f1max"]
        curve.append(round(f1, 4))
        if f1 > best_f1:
            best_f1, best_state = f1, copy.deepcopy(detector.state_dict())
        if done >= cycles:
            break
        detector.fit_random(min(eval_every, cycles - done))
        done = min(cycles, done + eval_every)
    detector.load_state_dict(best_state)
    test = compute_metrics(detector.anomaly_map(images[split.test]), masks[split.test])
    keys = ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "image_auroc")
    return {"val_f1max": round(best_f1, 4), **{k: round(float(test[k]), 4) for k in keys}, "val_curve": curve}


def run(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    env_kwargs, algo = variant_settings(args.variant, args.variants)
    start = time.perf_counter()
    cache = warmup_cache.default_cache_dir()
    env = MVTecPatchEnv(warmup_cache=cache, data_root=args.data_root, category=args.category, seed=seed, **env_kwargs)
    env.warm_up()
    warmed = env.detector
    warmed._global()  # the global residual's PCA: the warm-up's in every arm (fitted here if no map needed it yet)
    split = env.split
    train_ids = split.train  # dataset indices of the AE's training images, in the order of env.train_images
    contaminated = np.isin(train_ids, split.contaminated)  # (N,) bool
    scores = warmed.anomaly_map(env.train_images).reshape(len(train_ids), -1).max(axis=1)  # (N,) image scores
    finding = float(roc_auc_score(contaminated, scores)) if 0 < contaminated.sum() < len(contaminated) else float("nan")
    keep_vet = scores <= np.quantile(scores, 1.0 - args.drop)  # (N,) bool
    dropped = ~keep_vet
    share = float(contaminated[dropped].mean()) if dropped.any() else float("nan")
    cycles = int(algo["n_timesteps"]) // warmed.config.ae_batch_size
    eval_every = max(1, int(algo["eval_freq"]) // warmed.config.ae_batch_size)
    rows = []
    for arm in args.arms:
        arm_start = time.perf_counter()
        keep = None if arm == "random" else ~contaminated if arm in ("oracle", "reoracle", "vetted") else keep_vet  # (N,)
        if arm in LATE:
            run_env, detector = env, copy.deepcopy(warmed)  # the same warmed-up state and random stream for every arm
        else:  # the first training's initial weights and stream; "vetted": the split vets the normal pool too
            kwargs = {**env_kwargs, "vetted_predictor_data": True} if arm == "vetted" else env_kwargs
            run_env = MVTecPatchEnv(data_root=args.data_root, category=args.category, seed=seed, **kwargs)
            detector = run_env.detector
        if keep is not None and arm != "vetted":  # "vetted": the detector's reference images are train/good already
            detector._reference = torch.from_numpy(np.ascontiguousarray(env.train_images[keep].transpose(0, 3, 1, 2)))
        if arm not in LATE:
            run_env.warm_up()  # no cache: the key does not know the reference images
        row = {
            "category": args.category,
            "variant": args.variant,
            "seed": seed,
            "arm": arm,
            "drop": args.drop,
            "targets": int(len(train_ids) if keep is None else keep.sum()),
            "contaminated_in_train": int(contaminated.sum()),
            "finding_auroc": round(finding, 4),
            "contaminated_share_of_dropped": round(share, 4),
            **train_and_score(run_env, detector, cycles, eval_every),
            "arm_s": round(time.perf_counter() - arm_start, 1),
            "total_s": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(row), flush=True)
        if args.log:  # each arm as it ends: a stopped run keeps what it measured
            args.log.parent.mkdir(parents=True, exist_ok=True)
            with args.log.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variant", default="c20-random", help="a variant of --variants (its env settings and schedule)")
    parser.add_argument("--variants", type=Path, default=ABLATION)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--drop", type=float, default=0.2, help="share of the training images the 'vet' arm drops")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the warm-up cache's key includes it)")
    parser.add_argument("--log", type=Path, default=None, help="append each JSON line here")
    args = parser.parse_args(argv)
    if not 0.0 < args.drop < 1.0:
        parser.error(f"--drop {args.drop} is invalid: expected a number in (0, 1)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")  # the warm-up's progress
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        torch.manual_seed(seed)
        np.random.seed(seed)
        run(args, seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
