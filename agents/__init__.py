"""Registry of the RL algorithms that can drive the sampler (like rl-zoo's ``ALGOS``).

Every entry is an SB3-style class (``cls("CnnPolicy", env, **kwargs)``, ``learn``, ``predict``, ``save``, ``load``);
``make_agent`` gives each one the sampler network of ``models/sampler.py``, so ablations differ only in the
algorithm. Adding an algorithm is one line in ``AGENTS`` (plus ``AGENT_DEFAULTS`` if SB3's defaults do not fit).

Only ``Reinforce`` honours the env's ``info["rl_feedback"] = False`` warm-up; the SB3 algorithms learn from those
transitions too (DQN's ``learning_starts`` defaults to the env's 100-step warm-up for that reason).
"""

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv

from agents.heuristic import HeuristicAgent
from agents.random_agent import RandomAgent
from agents.reinforce import Reinforce
from models.sampler import policy_kwargs_for

logger = logging.getLogger(__name__)

REINFORCE = Reinforce  # the algorithm's usual spelling; ``Reinforce`` (SB3's A2C/PPO style) stays
__all__ = ["AGENTS", "AGENT_DEFAULTS", "REINFORCE", "HeuristicAgent", "RandomAgent", "Reinforce", "load_agent", "make_agent"]

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


def load_agent(name: str, path: str | os.PathLike[str], env: GymEnv | None = None, device: str = "auto") -> BaseAlgorithm:
    """Load an agent saved with ``agent.save(path)``.

    Args:
        name: a key of ``AGENTS``; the class that saved the file.
        path: the ``.zip`` written by ``save``.
        env: env to attach (its spaces must match the saved ones); None to only ``predict``.
        device: torch device.

    Returns:
        the agent.

    Raises:
        ValueError: unknown name, or a missing, corrupt or mismatching file.
    """
    cls = _agent_class(name)
    try:
        return cls.load(Path(path), env=env, device=device)
    except (
        OSError,
        EOFError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
        RuntimeError,
        AssertionError,
    ) as e:
        raise ValueError(
            f"cannot load a {name!r} agent from {os.fspath(path)!r}: expected a zip written by {cls.__name__}.save() "
            f"with spaces matching the env ({type(e).__name__}: {e})"
        ) from e
