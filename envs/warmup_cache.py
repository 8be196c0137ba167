"""A disk cache of ``MVTecPatch-v0``'s warm-up: pay AE pre-training and the predictor's warm-up once per data, seed and
detector config, not once per algorithm, sampler or re-run.

The warm-up (:meth:`MVTecPatchEnv.warm_up`) never sees the agent: its result is a function of the images it trains
on, the split, the detector's config, the random streams at its start and the code and machine that run it. The key
is a digest of exactly those:

- the images and masks of the AE's training set, the labelled defects and the normal pool, and the split's record;
- the full :class:`DetectorConfig` (every env setting the warm-up reads is one of its fields; the sampler's settings,
  reward, β schedule, crop and move sizes are not, so runs that differ only there share one entry);
- the source of the ``models`` and ``envs`` packages, torch's and numpy's versions, the thread count and the CPU's
  instruction set (another kernel gives other last bits).

The warm-up draws its randomness from the detector's own generator (its dropout and initialisation fork torch's
global one), so an entry holds the detector's state (networks, optimisers, counters, generator, the predictor's pool),
the fused maps and the reward scales: loading it leaves the env, and torch's and numpy's global streams, as the
warm-up would have, bit for bit (``tests/test_warmup_cache.py`` checks both). An entry is read with
``torch.load(weights_only=True)`` (no code runs) and used only if the key it stores is the one computed; an unreadable
or mismatched entry is computed again and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.runtime import atomic_write

if TYPE_CHECKING:
    from envs.mvtec_patch import MVTecPatchEnv

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "default_cache_dir", "entry_lock", "entry_path", "load", "save", "warmup_key"]

FORMAT = "mvtecpatch-warmup/1"
_PACKAGES = ("models", "envs")


def default_cache_dir() -> Path:
    """``warmup/`` in the cache folder of the synthetic category: ``$RLBS_CACHE``, else ``~/.cache/rl-batch-sampler``."""
    from envs.synthetic import CACHE_ENV_VAR, DEFAULT_CACHE_BASE

    return Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_BASE).expanduser() / "warmup"


def _code_digest() -> str:
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "cpu": model, "capability": str(torch.backends.cpu.get_cpu_capability())}


def warmup_key(env: MVTecPatchEnv) -> str:
    """The digest of everything ``env``'s warm-up depends on, computed before it starts (hex)."""
    from envs.config import detector_config

    split = env.split
    data = hashlib.sha256()
    for name in ("train", "labelled", "normal_pool"):
        indices = np.asarray(getattr(split, name), dtype=np.int64)
        data.update(name.encode() + indices.tobytes())
        data.update(np.ascontiguousarray(env.category.images[indices]).tobytes())
        data.update(np.ascontiguousarray(env.category.masks[indices]).tobytes())
    from envs.split import split_json

    parts = {
        "format": FORMAT,
        "data": data.hexdigest(),
        "split": split_json(split, env.category),
        "detector": detector_config(env.config).to_dict(),
        "seed": env.config.seed,
        "code": _code_digest(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "threads": torch.get_num_threads(),
        **_machine(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def entry_path(directory: str | os.PathLike[str], env: MVTecPatchEnv, key: str) -> Path:
    """Where the entry for ``key`` lives: ``<directory>/<category>-seed<seed>-<key[:16]>.pt``."""
    name = env.category.name or "category"
    return Path(directory).expanduser() / f"{name}-seed{env.config.seed}-{key[:16]}.pt"


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` for the block, so that of two runs wanting one entry (paired
    cells of a comparison started together) one computes it and the other reads it. Where no lock can be taken (a
    read-only or lock-less file system) the block runs unlocked: the cost is a warm-up computed twice, never a wrong one.
    """
    import fcntl

    fd = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as error:
        logger.warning("warm-up cache %s: no lock (%s)", path, error)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def save(env: MVTecPatchEnv, path: Path, key: str) -> None:
    """Write the warmed-up state of ``env`` to ``path`` (atomically)."""
    state = env.state_dict()
    entry = {
        "format": FORMAT,
        "key": key,
        "detector": state["detector"],
        "detector_pool": state["detector_pool"],
        "fused": state["fused"],
        "clone_scale": state["clone_scale"],
        "residual_scale": state["residual_scale"],
        "last_ae_loss": state["last_ae_loss"],
        "last_pred_loss": state["last_pred_loss"],
    }
    try:
        atomic_write(path, lambda handle: torch.save(entry, handle))
    except OSError as error:  # a full disk or a read-only cache costs the next run its warm-up, not this run
        logger.warning("could not write the warm-up cache %s (%s)", path, error)


def load(env: MVTecPatchEnv, path: Path, key: str) -> bool:
    """Put ``env`` in the state its warm-up gives, from ``path``; False (and a warning if the file exists but does not
    fit) where there is no usable entry, with ``env``'s detector as it was built."""
    if not path.is_file():
        return False
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            raise ValueError(f"not a warm-up cache entry (expected format {FORMAT!r})")
        if entry.get("key") != key:
            raise ValueError("its key does not match this run's")
        detector, pool = entry["detector"], entry["detector_pool"]
        env.detector.load_state_dict(detector)
        env.detector.load_pool_state(pool)
        fused = entry["fused"].numpy()
        if fused.shape != env.fused.shape:
            raise ValueError(f"fused maps of shape {fused.shape}, expected {env.fused.shape}")
        env.fused = fused.copy()
        env.clone_scale, env.residual_scale = float(entry["clone_scale"]), float(entry["residual_scale"])
        env.last_ae_loss, env.last_pred_loss = float(entry["last_ae_loss"]), float(entry["last_pred_loss"])
    except Exception as error:  # noqa: BLE001 - any failure: warm up again, from a detector as it was built
        logger.warning("warm-up cache %s not used (%s): warming up again", path, error)
        from envs.config import detector_config
        from models.detector import build_detector

        env.detector = build_detector(detector_config(env.config), env.category, env.split, seed=env.config.seed)
        return False
    return True
