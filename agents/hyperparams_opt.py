"""Search spaces for ``train.py -optimize`` (rl-baselines3-zoo's ``hyperparams_opt.py``): one per algorithm, and one
for the env and detector knobs that every algorithm shares.

A space maps a dotted name (``detector.lr`` is the detector's ``lr`` inside ``env_kwargs``) to a distribution:

* ``("log", low, high)``: log-uniform float; ``("float", low, high)``: uniform float;
* ``("int", low, high, step)``: integers; ``("cat", [choices])``: one of the choices.

:func:`suggest` draws a trial's values from a space (TPE and random samplers); :func:`grid` turns a space into the
value lists of Optuna's ``GridSampler`` (categoricals as they are, integer ranges by their step, floats at three
points), so ``--sampler grid`` explores the same knobs on a coarse lattice.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

__all__ = ["ALGO_SPACES", "ENV_SPACE", "space_for", "suggest", "grid", "to_config", "set_dotted", "deep_merge"]

Space = dict[str, tuple]

ALGO_SPACES: dict[str, Space] = {
    "reinforce": {
        "learning_rate": ("log", 1e-5, 3e-3),
        "n_steps": ("cat", [32, 64, 128]),  # whole 32-step episodes per update
        "gamma": ("cat", [0.9, 0.95, 0.99, 0.999]),
        "baseline": ("cat", ["none", "mean", "value"]),
        "normalize_advantage": ("cat", [True, False]),
        "ent_coef": ("log", 1e-4, 0.1),
        "max_grad_norm": ("cat", [0.3, 0.5, 1.0, 5.0]),
    },
    "ppo": {
        "learning_rate": ("log", 1e-5, 3e-3),
        "n_steps": ("cat", [64, 128, 256, 512]),
        "batch_size": ("cat", [32, 64]),
        "n_epochs": ("cat", [1, 3, 5, 10]),
        "gamma": ("cat", [0.9, 0.95, 0.99, 0.999]),
        "gae_lambda": ("cat", [0.8, 0.9, 0.95, 1.0]),
        "clip_range": ("cat", [0.1, 0.2, 0.3]),
        "ent_coef": ("log", 1e-4, 0.1),
    },
    "a2c": {
        "learning_rate": ("log", 1e-5, 3e-3),
        "n_steps": ("cat", [8, 16, 32, 64]),
        "gamma": ("cat", [0.9, 0.95, 0.99, 0.999]),
        "gae_lambda": ("cat", [0.8, 0.9, 0.95, 1.0]),
        "ent_coef": ("log", 1e-4, 0.1),
    },
    "dqn": {
        "learning_rate": ("log", 1e-5, 3e-3),
        "gamma": ("cat", [0.9, 0.95, 0.99, 0.999]),
        "batch_size": ("cat", [16, 32, 64]),
        "train_freq": ("cat", [1, 4, 8]),
        "target_update_interval": ("cat", [100, 500, 1000]),
        "exploration_fraction": ("float", 0.05, 0.5),
    },
    "random": {},  # the uniform sampler has nothing to tune: a study of it tunes the detector alone
}

# The env's schedules and the detector's knobs with the largest measured effects (docs/design.md)
ENV_SPACE: Space = {
    "pretrain_epochs": ("int", 20, 60, 10),
    "predictor_warmup_updates": ("cat", [500, 1000, 1500, 2000, 3000]),
    "alpha_decay_updates": ("cat", [200, 500, 1000, 2000]),
    "beta_decay_steps": ("cat", [1000, 2000, 4000]),
    "detector.lr": ("log", 1e-4, 1e-3),
    "detector.ae_lr_after_pretrain": ("log", 3e-5, 5e-4),
    "detector.pred_lr": ("log", 3e-4, 3e-3),
    "detector.map_smoothing_sigma": ("cat", [0.0, 2.0, 4.0, 8.0]),
    "detector.synthetic_paste_fraction": ("float", 0.0, 1.0),
    "detector.pred_loss": ("cat", ["bce", "bce_dice", "focal"]),
    "detector.predictor_ema": ("cat", [0.0, 0.99, 0.999]),
    "detector.map_predictor_flips": ("cat", [False, True]),
    "detector.predictor.padding_mode": ("cat", ["reflect", "replicate", "zeros"]),
}


def space_for(algo: str, tune: str = "both") -> Space:
    """The search space of ``algo``: its own knobs (``tune="algo"``), the env's (``"env"``) or both, with env knobs
    prefixed ``env_kwargs.``.

    Raises:
        ValueError: an algorithm without a search space, or an unknown ``tune``.
    """
    if algo not in ALGO_SPACES:
        raise ValueError(f"no search space for algo {algo!r} (valid: {', '.join(ALGO_SPACES)})")
    if tune not in ("algo", "env", "both"):
        raise ValueError(f"tune must be 'algo', 'env' or 'both', got {tune!r}")
    space: Space = {}
    if tune in ("algo", "both"):
        space.update(ALGO_SPACES[algo])
    if tune in ("env", "both"):
        space.update({f"env_kwargs.{name}": spec for name, spec in ENV_SPACE.items()})
    if not space:
        raise ValueError(f"algo {algo!r} has no knobs of its own: tune 'env' or 'both'")
    return space


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """Draw one value per dotted name from an Optuna trial."""
    values: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "log":
            values[name] = trial.suggest_float(name, spec[1], spec[2], log=True)
        elif kind == "float":
            values[name] = trial.suggest_float(name, spec[1], spec[2])
        elif kind == "int":
            values[name] = trial.suggest_int(name, spec[1], spec[2], step=spec[3])
        elif kind == "cat":
            values[name] = trial.suggest_categorical(name, spec[1])
        else:
            raise ValueError(f"search space entry {name!r}: unknown kind {kind!r} (valid: log, float, int, cat)")
    return values


def grid(space: Space) -> dict[str, list[Any]]:
    """Value lists for Optuna's GridSampler: categoricals as they are, ints by their step, floats at three points."""
    out: dict[str, list[Any]] = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "cat":
            out[name] = list(spec[1])
        elif kind == "int":
            out[name] = list(range(spec[1], spec[2] + 1, spec[3]))
        elif kind == "log":
            out[name] = [float(v) for v in np.geomspace(spec[1], spec[2], 3)]
        elif kind == "float":
            out[name] = [float(v) for v in np.linspace(spec[1], spec[2], 3)]
        else:
            raise ValueError(f"search space entry {name!r}: unknown kind {kind!r}")
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, nested dicts merged key by key (``detector:{'ae': {'norm': 'none'}}`` changes
    only the AE's norm of a preset's detector settings)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def to_config(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dotted values -> (algorithm kwargs, nested env kwargs), ready to merge over a preset."""
    hyperparams: dict[str, Any] = {}
    env_kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if not name.startswith("env_kwargs."):
            hyperparams[name] = value
            continue
        set_dotted(env_kwargs, name.removeprefix("env_kwargs."), value)
    return hyperparams, env_kwargs


def set_dotted(tree: dict[str, Any], name: str, value: Any) -> None:
    """``set_dotted(tree, "predictor.width", 8)`` sets ``tree["predictor"]["width"] = 8``, making the dicts on the way."""
    *parents, leaf = name.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value
