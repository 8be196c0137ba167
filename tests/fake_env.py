"""A tiny image env with the MVTecPatch-v0 interface, for agent tests that must run in seconds.

Same spaces as the real env (channel-first float32 images in [0, 1], ``Discrete(9)``), a fixed episode length ended
with ``terminated=True``, and the env's warm-up flag ``info["rl_feedback"]``; the reward is trivially learnable
(1 for one chosen action, else 0), so a working policy gradient must find it quickly.
"""

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FakeImageEnv(gym.Env):
    """Random-noise observations, reward for one action.

    Args:
        channels: observation channels C.
        size: observation side S; observations are ``(C, S, S)``.
        episode_length: steps per episode; the last one returns ``terminated=True``.
        rewarded_action: the action that earns reward 1 (all others earn 0).
        no_feedback_steps: the first this many steps over the env's whole life carry ``info["rl_feedback"] = False``;
            when 0 the key is left out of ``info`` (as an env without a warm-up would do).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        channels: int = 6,
        size: int = 32,
        episode_length: int = 8,
        rewarded_action: int = 3,
        no_feedback_steps: int = 0,
    ) -> None:
        super().__init__()
        self.observation_space = spaces.Box(0.0, 1.0, shape=(channels, size, size), dtype=np.float32)
        self.action_space = spaces.Discrete(9)
        self.episode_length = episode_length
        self.rewarded_action = rewarded_action
        self.no_feedback_steps = no_feedback_steps
        self.total_steps = 0  # over all episodes, like the real env's global step counter j
        self._t = 0

    def move_defect_probabilities(self) -> np.ndarray:
        """The real env's per-move defect probabilities (what the heuristic sampler reads): 0 for the rewarded
        action's move, 1 for every other move, so a sampler that avoids defects picks the rewarded action or skip."""
        q = np.ones(8)
        if self.rewarded_action < 8:
            q[self.rewarded_action] = 0.0
        return q

    def _obs(self) -> np.ndarray:
        return self.np_random.random(self.observation_space.shape, dtype=np.float32)  # (C, S, S)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._t += 1
        self.total_steps += 1
        reward = float(int(action) == self.rewarded_action)
        terminated = self._t >= self.episode_length
        info: dict[str, Any] = {}
        if self.no_feedback_steps > 0:
            info["rl_feedback"] = self.total_steps > self.no_feedback_steps
        # truncated=False: the fixed-length episode ends by termination, so REINFORCE needs no bootstrap
        return self._obs(), reward, terminated, False, info
