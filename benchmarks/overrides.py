"""``--set key=value`` overrides of a configuration, shared by the tools that build a detector outside train.py.

A key names an ``MVTecPatchConfig`` field of :data:`ENV_FIELDS` (the split's and the detector's schedule) or a
``DetectorConfig`` field; a dotted key (``ae.norm``, ``predictor.width``) sets a field of a nested config. Values are
YAML (``1e-3``, ``true``, ``[profile, image]``).
"""

from __future__ import annotations

from typing import Any

import yaml

from agents.hyperparams_opt import set_dotted
from envs.data import DATA_KEYS

ENV_FIELDS = {"pretrain_epochs", "predictor_warmup_updates", "alpha_decay_updates", "ae_reset_every", "profile_stack"}
ENV_FIELDS |= set(DATA_KEYS) - {"data_root", "category"}  # the data protocol's settings


def parse_sets(pairs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``key=value`` pairs -> (env kwargs, detector kwargs); dotted keys (``ae.norm``) go into nested dicts.

    Raises:
        SystemExit: a pair without ``=`` (a one-line error for the command line).
    """
    env: dict[str, Any] = {}
    det: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --set expects key=value, got {pair!r}")
        value = yaml.safe_load(text)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if key in ENV_FIELDS:
            env[key] = value
        else:
            set_dotted(det, key, value)
    return env, det
