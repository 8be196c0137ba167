"""Env throughput at the paper's sizes: MVTecPatch-v0 steps/s with random actions, and where the time goes.

    python -m benchmarks.bench_env [--steps 640] [--data-root R --category C] [--threads N] [--preset default|paper]

256x256 images, 128x128 crops, 64x64 patches, AE batch 32 (one AE update every 32 patches, then the preset's
predictor updates and profile refreshes). Target: >= 25 steps/s on 2 CPU cores. The warm-up (pre-training etc.) is not timed.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

import envs  # noqa: F401
from agents.run_config import load_preset
from envs.mvtec_patch import MVTecPatchEnv


def timed(store: dict[str, float], name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store[name] += time.perf_counter() - start

    return wrapper


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=640)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--category", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default", help="env settings of this preset (agents/hyperparams/env.yml)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    env_kwargs = load_preset("random", "MVTecPatch-v0", args.preset)["env_kwargs"]
    # the warm-ups are not timed: shortened; the predictor trains from the first step
    env_kwargs.update(pretrain_epochs=1, predictor_warmup_updates=5, predictor_freeze_steps=0)
    env = MVTecPatchEnv(data_root=args.data_root, category=args.category, **env_kwargs)
    env.reset(seed=args.seed)
    times: dict[str, float] = defaultdict(float)
    detector = env.detector
    # refresh_profiles is timed on its own and subtracted from the predictor update that calls it
    detector.refresh_profiles = timed(times, "profile refresh", detector.refresh_profiles)  # type: ignore[method-assign]
    detector.ae_update = timed(times, "AE update", detector.ae_update)  # type: ignore[method-assign]
    detector.predictor_update = timed(times, "predictor update (incl. refresh)", detector.predictor_update)  # type: ignore
    env._observation = timed(times, "observation", env._observation)  # type: ignore[method-assign]
    env._take_patch = timed(times, "patch + reward terms", env._take_patch)  # type: ignore[method-assign]

    rng = np.random.default_rng(args.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        _, _, terminated, _, _ = env.step(int(rng.integers(9)))
        if terminated:
            env.reset()
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu_start  # CPU seconds of this process: robust to other load when threads == 1
    times["predictor update"] = times.pop("predictor update (incl. refresh)") - times["profile refresh"]
    shares = {k: round(100 * v / total, 1) for k, v in sorted(times.items(), key=lambda kv: -kv[1])}
    other = round(100 - sum(shares.values()), 1)
    report = {
        "steps": args.steps,
        "steps_per_s": round(args.steps / total, 1),
        "ms_per_step": round(1000 * total / args.steps, 2),
        "steps_per_cpu_s": round(args.steps / cpu, 1),
        "ae_updates": detector.ae_updates,
        "time_share_percent": {**shares, "other (env logic, resets)": other},
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "category": env.category.name,
        "preset": args.preset,
        "train_images": len(env.train_images),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
