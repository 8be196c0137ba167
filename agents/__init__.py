"""Registry of the RL algorithms that can drive the sampler (like rl-zoo's ``ALGOS``).

Every entry is an SB3-style class (``cls("CnnPolicy", env, **kwargs)``, ``learn``, ``predict``, ``save``, ``load``);
``make_agent`` gives each one the sampler network of ``models/sampler.py``, so ablations differ only in the
algorithm. Adding an algorithm is one line in ``AGENTS`` (plus ``AGENT_DEFAULTS`` if SB3's defaults do not fit).

Only ``Reinforce`` honours the env's ``info["rl_feedback"] = False`` warm-up; the SB3 algorithms learn from those
transitions too (DQN's ``learning_starts`` defaults to the env's 100-step warm-up for that reason).
"""

import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.save_util import is_json_serializable, recursive_getattr, save_to_zip_file
from stable_baselines3.common.type_aliases import GymEnv

from agents.heuristic import HeuristicAgent
from agents.random_agent import RandomAgent
from agents.reinforce import Reinforce
from models.sampler import policy_kwargs_for

logger = logging.getLogger(__name__)

REINFORCE = Reinforce  # the algorithm's usual spelling; ``Reinforce`` (SB3's A2C/PPO style) stays
__all__ = [
    "AGENTS",
    "AGENT_DEFAULTS",
    "REINFORCE",
    "HeuristicAgent",
    "RandomAgent",
    "Reinforce",
    "check_agent_zip",
    "load_agent",
    "make_agent",
    "save_agent",
]

AGENTS: dict[str, type[BaseAlgorithm]] = {
    "reinforce": Reinforce,
    "ppo": PPO,
    "a2c": A2C,
    "dqn": DQN,
    "random": RandomAgent,
    "heuristic": HeuristicAgent,
}

# Defaults that differ from the class's own, for 6x128x128 float32 observations (393 KB each).
AGENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "dqn": dict(
        # SB3's 1e6 transitions would need ~790 GB: with optimize_memory_usage=False the buffer holds obs and next_obs,
        # so 2_000 transitions take ~1.6 GB. (optimize_memory_usage=True halves it but conflicts with SB3's default
        # timeout handling.)
        buffer_size=2_000,
        optimize_memory_usage=False,
        learning_starts=100,  # the env's RL warm-up length
        target_update_interval=500,  # SB3's 10_000 is more steps than a typical run here
    ),
    # SB3's n_steps=2048 holds 0.8 GB of observations and waits 2048 slow env steps per update; 256 = 8 episodes of 32.
    "ppo": dict(n_steps=256, batch_size=64),
}


def _agent_class(name: str) -> type[BaseAlgorithm]:
    if name not in AGENTS:
        raise ValueError(f"unknown algo {name!r}; valid: {', '.join(AGENTS)}")
    return AGENTS[name]


def make_agent(
    name: str,
    env: GymEnv,
    *,
    seed: int | None = None,
    tensorboard_log: str | None = None,
    device: str = "auto",
    verbose: int = 0,
    **hyperparams: Any,
) -> BaseAlgorithm:
    """Build agent ``name`` on ``env`` with the sampler CNN policy ("CnnPolicy").

    Args:
        name: a key of ``AGENTS``.
        env: the training environment.
        seed: seed for python, numpy, torch, the action space and the env.
        tensorboard_log: TensorBoard log folder (None: no TensorBoard).
        device: torch device ("auto": cuda when available).
        verbose: SB3 verbosity.
        hyperparams: keyword arguments of the algorithm's class; they override ``AGENT_DEFAULTS[name]``. A
            ``policy_kwargs`` dict is merged over ``policy_kwargs_for(name)`` (top-level keys of the user's win).

    Returns:
        the agent.
    """
    cls = _agent_class(name)
    kwargs = {**AGENT_DEFAULTS.get(name, {}), **hyperparams}
    user_policy_kwargs = kwargs.pop("policy_kwargs", None) or {}
    policy_kwargs = {**policy_kwargs_for(name, on_policy=issubclass(cls, OnPolicyAlgorithm)), **user_policy_kwargs}
    logger.info("building %s agent (%s) with %s", name, cls.__name__, kwargs)
    return cls(
        "CnnPolicy",
        env,
        seed=seed,
        tensorboard_log=tensorboard_log,
        device=device,
        verbose=verbose,
        policy_kwargs=policy_kwargs,
        **kwargs,
    )


# An entry of agent.zip's "data" that SB3 would have cloudpickled; save_agent writes this marker (with a plain
# description of a space) instead, and load_agent rebuilds the object from the agent's config.
REBUILT = ":rebuilt:"
PICKLED = ":serialized:"  # SB3's marker of a cloudpickled entry: never loaded without allow_pickle


def save_agent(agent: BaseAlgorithm, path: str | os.PathLike[str]) -> None:
    """``agent.save(path)`` without pickled objects, written atomically (a temporary file, then a rename).

    SB3's zip layout: ``data`` (JSON), the state dicts (``policy.pth``, ``policy.optimizer.pth``, read back with
    ``torch.load(weights_only=True)``) and its version files. Where SB3 would cloudpickle an attribute (the spaces,
    the policy class and kwargs, schedules, the last observation) ``data`` holds a marker instead, with a plain
    description of each space; :func:`load_agent` rebuilds those from the agent's config, so loading a file runs no
    code from it. SB3's own ``load`` reads the file given ``custom_objects`` for the marked entries.
    """
    path = Path(path)
    state_dicts, torch_variables = agent._get_torch_save_params()
    excluded = set(agent._excluded_save_params()) | {name.split(".")[0] for name in state_dicts + torch_variables}
    data = {}
    for key, value in vars(agent).items():
        if key in excluded:
            continue
        if is_json_serializable(value):
            data[key] = value
        else:
            data[key] = {REBUILT: type(value).__name__, **_describe_space(value)}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            save_to_zip_file(
                handle,
                data=data,
                params=agent.get_parameters(),
                pytorch_variables={name: recursive_getattr(agent, name) for name in torch_variables},
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _describe_space(value: Any) -> dict[str, Any]:
    """A plain description of a Box with uniform bounds or a Discrete space ({} for anything else)."""
    if isinstance(value, spaces.Discrete):
        return {"space": {"type": "Discrete", "n": int(value.n), "start": int(value.start)}}
    if isinstance(value, spaces.Box) and np.unique(value.low).size == 1 and np.unique(value.high).size == 1:
        low, high = float(value.low.flat[0]), float(value.high.flat[0])
        return {"space": {"type": "Box", "low": low, "high": high, "shape": list(value.shape), "dtype": str(value.dtype)}}
    return {}


def _space(description: dict[str, Any]) -> spaces.Space:
    if description["type"] == "Discrete":
        return spaces.Discrete(int(description["n"]), start=int(description["start"]))
    low, high, shape = float(description["low"]), float(description["high"]), tuple(int(n) for n in description["shape"])
    return spaces.Box(low, high, shape=shape, dtype=np.dtype(str(description["dtype"])))


class _SpacesOnly(gym.Env):
    """An env that has only spaces: what an agent loaded without an env is built on (it can ``predict``)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        raise RuntimeError("this agent was loaded without an env: pass env= to load_agent to train it")

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        raise RuntimeError("this agent was loaded without an env: pass env= to load_agent to train it")


def _read_data(path: Path) -> dict[str, Any]:
    """The zip's ``data`` entry as plain JSON: nothing in it is unpickled.

    Raises:
        _Refused: it holds pickled entries.
    """
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data").decode())
    if not isinstance(data, dict):
        raise ValueError("its data entry is not a JSON object")
    pickled = sorted(key for key, value in data.items() if isinstance(value, dict) and PICKLED in value)
    if pickled:
        raise _Refused(
            f"{os.fspath(path)!r} holds pickled Python objects ({', '.join(pickled)}), which can run code when "
            "loaded: refused (this project writes agents without them; load_agent(..., allow_pickle=True) reads a "
            "file you trust)"
        )
    return data


def check_agent_zip(path: str | os.PathLike[str]) -> None:
    """Refuse an agent zip that :func:`load_agent` would refuse for its content (pickled entries), reading only its
    JSON: ``train.py -i`` calls it before it writes anything.

    Raises:
        ValueError: the file is missing, not a zip, or holds pickled entries.
    """
    try:
        _read_data(Path(path))
    except _Refused as e:
        raise ValueError(str(e)) from None
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{os.fspath(path)!r} is not an agent zip ({type(e).__name__})") from None


def load_agent(
    name: str,
    path: str | os.PathLike[str],
    env: GymEnv | None = None,
    device: str = "auto",
    *,
    allow_pickle: bool = False,
    **hyperparams: Any,
) -> BaseAlgorithm:
    """Load an agent written by :func:`save_agent`, without running any code from the file.

    The zip's ``data`` is read as plain JSON and its weights with ``torch.load(weights_only=True)``; what SB3 would
    have unpickled (spaces, policy class and kwargs, schedules) is rebuilt with :func:`make_agent` from ``hyperparams``.
    A file with pickled entries (SB3's own ``save``, or a crafted file) is refused: unpickling can run any code, as
    SB3's and PyTorch's docs warn.

    Args:
        name: a key of ``AGENTS``; the class that saved the file.
        path: the ``.zip`` written by ``save_agent``.
        env: env to attach (its spaces must match the saved ones); None to only ``predict``.
        device: torch device.
        allow_pickle: load a file with pickled entries through SB3's ``load`` (only for a file you trust).
        hyperparams: the keyword arguments the agent was built with (``make_agent``'s; a run's ``config.yml``
            ``hyperparams``): they rebuild the pickled-in-SB3 objects (``policy_kwargs``, PPO's ``clip_range``).

    Returns:
        the agent.

    Raises:
        ValueError: unknown name, or a missing, corrupt, pickled or mismatching file.
    """
    cls = _agent_class(name)
    path = Path(path)
    expected = "expected a zip written by save_agent() with spaces matching the env"
    try:
        if allow_pickle:
            return cls.load(path, env=env, device=device)
        data = _read_data(path)
        rebuilt = {key: value for key, value in data.items() if isinstance(value, dict) and REBUILT in value}
        described = [key for key in ("observation_space", "action_space") if "space" in rebuilt.get(key, {})]
        saved_spaces = {key: _space(rebuilt[key]["space"]) for key in described}
        if env is None and len(saved_spaces) < 2:
            raise _Refused(f"{os.fspath(path)!r} does not describe its spaces: pass the env it was trained on (env=)")
        reference = make_agent(name, env if env is not None else _SpacesOnly(**saved_spaces), device=device, **hyperparams)
        custom = {key: getattr(reference, key, None) for key in rebuilt}
        custom.update(saved_spaces)  # SB3 checks them against the env's
        return cls.load(path, env=env, device=device, custom_objects=custom)
    except _Refused as e:
        raise ValueError(str(e)) from None
    except (
        OSError,
        EOFError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        json.JSONDecodeError,
        UnicodeDecodeError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
        RuntimeError,
        AssertionError,
    ) as e:
        detail = " ".join(str(e).split())  # one line: torch's state-dict errors span several
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise ValueError(
            f"cannot load a {name!r} agent from {os.fspath(path)!r}: {expected} ({type(e).__name__}: {detail})"
        ) from e


class _Refused(Exception):
    """A file that load_agent will not read: its message is the whole error."""
