"""What a checkpoint holds besides the agent's weights and the env's state, so that ``train.py -i`` continues a run
exactly: a killed and continued run ends with the uninterrupted run's weights, bit for bit.

A checkpoint is taken at the start of a rollout, when the agent has learnt from every step the env has seen
(:class:`agents.callbacks.CheckpointCallback`). Its folder holds ``agent.zip`` (weights, optimiser and counters;
:func:`agents.save_agent`), ``env_state.pt`` (detector with its pool and generator, history maps, the sampler's position
and random stream; :meth:`envs.mvtec_patch.MVTecPatchEnv.state_dict`), the best detector so far and ``run_state.pt``:

- torch's (and CUDA's), numpy's and Python's global random generators, and the agent's action space generator;
- the agent's last observation, episode-start flags and episode statistics, which SB3 would pickle;
- the env wrappers' counters: ``Monitor``'s episode in progress and the episodes it has written to ``monitor.csv``,
  ``OrderEnforcing``'s reset flag;
- the callbacks' state (the validation history, the checkpoint schedule).

``run_state.pt`` is written with ``torch.save`` and read with ``torch.load(weights_only=True)``: tensors and plain
values, nothing that can run code.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from models.runtime import generator_state, set_generator_state

logger = logging.getLogger(__name__)

__all__ = [
    "RUN_STATE",
    "capture",
    "keep_files",
    "read",
    "restore",
    "restore_files",
    "trim_monitor",
]

RUN_STATE = "run_state.pt"
FORMAT = "rlbs-run-state"
WRAPPER_FIELDS = ("_has_reset", "_elapsed_steps")
CHECKER_FLAGS = ("checked_reset", "checked_step", "checked_data_reuse")  # the passive checker's one-time checks
MONITOR_FIELDS = ("t_start", "rewards", "needs_reset", "episode_returns", "episode_lengths", "episode_times", "total_steps")


def _global_rng() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def _set_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def _wrappers(env: gym.Env) -> Iterator[gym.Wrapper]:
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env


def _tensor(value: Any) -> Any:
    """An observation (array or dict of arrays) as tensors."""
    if isinstance(value, dict):
        return {key: _tensor(v) for key, v in value.items()}
    return None if value is None else torch.from_numpy(np.array(value))


def _array(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _array(v) for key, v in value.items()}
    return None if value is None else value.numpy().copy()


def capture(agent: Any, env: gym.Env, callbacks: dict[str, Any]) -> dict[str, Any]:
    """The run's state beyond the agent's zip and the env's state (see the module docstring).

    Args:
        agent: the SB3 agent.
        env: the env the agent steps (``Monitor`` and the wrappers ``gym.make`` adds).
        callbacks: name -> a callback with ``state_dict()``.
    """
    wrappers = []
    for wrapper in _wrappers(env):
        fields = MONITOR_FIELDS if hasattr(wrapper, "results_writer") else WRAPPER_FIELDS
        wrappers.append({"type": type(wrapper).__name__, **{k: getattr(wrapper, k) for k in fields if hasattr(wrapper, k)}})
    return {
        "format": FORMAT,
        "rng": _global_rng(),
        "action_space_rng": generator_state(getattr(agent.action_space, "_np_random", None)),
        "agent": {
            "last_obs": _tensor(agent._last_obs),
            "last_episode_starts": _tensor(agent._last_episode_starts),
            "ep_info_buffer": None if agent.ep_info_buffer is None else [dict(info) for info in agent.ep_info_buffer],
            "ep_success_buffer": None if agent.ep_success_buffer is None else [bool(s) for s in agent.ep_success_buffer],
        },
        "wrappers": wrappers,
        "callbacks": {name: callback.state_dict() for name, callback in callbacks.items()},
    }


def restore(state: dict[str, Any], agent: Any, env: gym.Env, callbacks: dict[str, Any]) -> None:
    """Put a :func:`capture` back: call it last before ``learn``, after everything that draws random numbers
    (building the env and the agent, loading the agent, which reseeds the global generators)."""
    saved = state["wrappers"]
    wrappers = list(_wrappers(env))
    if [w["type"] for w in saved] != [type(w).__name__ for w in wrappers]:
        raise ValueError(f"the env's wrappers differ from the checkpoint's ({', '.join(w['type'] for w in saved)})")
    for wrapper, fields in zip(wrappers, saved):
        for key, value in fields.items():
            if key != "type":
                setattr(wrapper, key, list(value) if isinstance(value, list) else value)
        for flag in CHECKER_FLAGS:  # done by the run's first attempt (they compare with data not kept)
            if hasattr(wrapper, flag):
                setattr(wrapper, flag, True)
    a = state["agent"]
    agent._last_obs = _array(a["last_obs"])
    agent._last_episode_starts = _array(a["last_episode_starts"])
    if a["ep_info_buffer"] is not None:
        agent.ep_info_buffer = deque(a["ep_info_buffer"], maxlen=agent._stats_window_size)
        agent.ep_success_buffer = deque(a["ep_success_buffer"] or [], maxlen=agent._stats_window_size)
    for name, callback in callbacks.items():
        callback.load_state_dict(state["callbacks"][name])
    # Loading the agent seeded the vec env for its next reset: that would restart the env's random stream (and
    # rewind a seeded MVTecPatch-v0 to its checkpoint) at the next episode's end
    agent.get_env()._reset_seeds()
    if state["action_space_rng"] is not None:
        agent.action_space._np_random = set_generator_state(state["action_space_rng"])
    _set_global_rng(state["rng"])


def read(checkpoint: Path) -> dict[str, Any]:
    """``run_state.pt`` of ``checkpoint``.

    Raises:
        ValueError: missing (a checkpoint of an older version: it cannot be continued exactly), corrupt or foreign.
    """
    path = Path(checkpoint) / RUN_STATE
    if not path.is_file():
        raise ValueError(f"'{path}' is missing: the checkpoint was written by an older version; start a new run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure here means the file is not a usable state
        raise ValueError(f"'{path}' is corrupt or not a run state ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a run state (expected a dict with format={FORMAT!r})")
    return state


def trim_monitor(path: Path, state: dict[str, Any]) -> None:
    """Cut ``monitor.csv`` back to the episodes it held at the checkpoint (its two header lines, then one row per
    episode): a killed run may have written later ones, which the continued run writes again."""
    monitor = next((w for w in state["wrappers"] if "episode_returns" in w), None)
    if monitor is None or not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = 2 + len(monitor["episode_returns"])
    if len(lines) > keep:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(lines[:keep]))
        os.replace(tmp, path)


def _link(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source`` (a hard link where the file system has them), atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def keep_files(paths: tuple[Path, ...], folder: Path) -> None:
    """Put the current version of each of ``paths`` (the best detector and its metrics) into a checkpoint ``folder``.
    A hard link costs nothing, and keeps the old content when the file is later replaced by a rename."""
    for path in paths:
        if path.is_file():
            _link(path, folder / path.name)


def restore_files(folder: Path, paths: tuple[Path, ...]) -> None:
    """Put back each of ``paths`` as :func:`keep_files` kept it in ``folder``; remove one it did not keep (the killed
    run wrote it after the checkpoint, and the continued run decides it again)."""
    for path in paths:
        kept = folder / path.name
        if kept.is_file():
            _link(kept, path)
        else:
            path.unlink(missing_ok=True)
