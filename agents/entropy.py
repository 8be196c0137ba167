"""The sampler's policy entropy as a recorded figure: how far the policy is from uniform (ln 9 = 2.197 nats over the
nine actions), logged for every rollout and written, as the mean over the last steps, into the run folder.

The entropy is that of the distribution the sampler acts from:

- an on-policy algorithm (REINFORCE, PPO, A2C): the mean entropy of its policy on the rollout's observations, computed
  after the rollout and before the update, without gradient (it changes nothing the run computes);
- the random sampler: ln |A|; the heuristic sampler: the mean entropy of the distributions it drew from;
- other algorithms (DQN acts greedily with ε-exploration): none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from agents.random_agent import RandomAgent
from agents.runs import atomic_write_text

__all__ = ["ENTROPY_FILE", "TAG", "PolicyEntropyCallback", "rollout_entropy"]

ENTROPY_FILE = "policy_entropy.json"
TAG = "rollout/policy_entropy"
CHUNK = 64  # observations per forward pass (6x128x128 float32: 25 MB)


def rollout_entropy(model: BaseAlgorithm) -> float | None:
    """The mean entropy in nats of the distribution ``model`` acted from over its last rollout (module docstring), or
    None for an algorithm without one."""
    if isinstance(model, OnPolicyAlgorithm):
        observations = model.rollout_buffer.observations  # (n_steps, n_envs, *obs_shape)
        if not isinstance(observations, np.ndarray):
            return None  # dict observations: not this project's env
        flat = observations.reshape(-1, *observations.shape[2:])  # (n_steps * n_envs, *obs_shape)
        values = []
        with torch.no_grad():
            for i in range(0, len(flat), CHUNK):
                obs = torch.as_tensor(flat[i : i + CHUNK], device=model.device)
                values.append(model.policy.get_distribution(obs).entropy().float().cpu())  # (chunk,)
        return float(torch.cat(values).mean()) if values else None
    entropy = getattr(model, "action_entropy", None)
    if entropy is not None:
        return float(entropy)
    if isinstance(model, RandomAgent) and isinstance(model.action_space, spaces.Discrete):
        return math.log(int(model.action_space.n))
    return None


class PolicyEntropyCallback(BaseCallback):
    """Log the policy's entropy after every rollout as ``rollout/policy_entropy``; when training ends, write the mean
    over the rollouts of the last ``window`` env steps (``policy_entropy``) and the curve in ``bin_steps`` bins to
    ``path`` (JSON).

    A run continued with ``train.py -i`` writes what the continued part logged: the last ``window`` steps unless it
    was stopped within them.

    Args:
        path: the JSON file (None: log only).
        window: env steps at the end of training whose rollouts make the final figure.
        bin_steps: env steps per point of the curve in the file.
    """

    def __init__(self, path: str | Path | None = None, window: int = 1024, bin_steps: int = 256, verbose: int = 0) -> None:
        super().__init__(verbose)
        if window < 1 or bin_steps < 1:
            raise ValueError(f"window={window} and bin_steps={bin_steps} are invalid: expected integers >= 1")
        self.path = None if path is None else Path(path)
        self.window, self.bin_steps = window, bin_steps
        self.history: list[tuple[int, float]] = []  # (env steps at the rollout's end, entropy)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        value = rollout_entropy(self.model)
        if value is None:
            return
        self.logger.record_mean(TAG, value)
        self.history.append((int(self.num_timesteps), value))

    def final(self) -> float | None:
        """The mean entropy over the rollouts that ended in the last ``window`` env steps (None: none logged)."""
        if not self.history:
            return None
        last = self.history[-1][0]
        return float(np.mean([value for step, value in self.history if step > last - self.window]))

    def curve(self) -> list[list[float]]:
        """[[last step of the bin, mean entropy], ...] over bins of ``bin_steps`` env steps."""
        bins: dict[int, list[float]] = {}
        for step, value in self.history:
            bins.setdefault((step - 1) // self.bin_steps, []).append(value)
        return [[min((b + 1) * self.bin_steps, self.history[-1][0]), float(np.mean(v))] for b, v in sorted(bins.items())]

    def _on_training_end(self) -> None:
        final = self.final()
        if self.path is None or final is None:
            return
        record: dict[str, Any] = {"policy_entropy": round(final, 6), "window_steps": self.window}
        if isinstance(self.model.action_space, spaces.Discrete):
            record["uniform"] = round(math.log(int(self.model.action_space.n)), 6)
        record["curve"] = [[int(step), round(value, 6)] for step, value in self.curve()]
        atomic_write_text(self.path, json.dumps(record, indent=2) + "\n")
