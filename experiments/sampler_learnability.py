"""Can a sampler's learner commit within a run's budget when the reward does say which patch to avoid?

A stand-in for ``MVTecPatch-v0`` with its observation (6 x 128 x 128), actions (eight moves and skip), episodes (32
steps, terminated) and reward scales, but no detector: in ``--defect-share`` of the states a bright blob (a defect the
AE has not learnt) lies in the residual channel, and the ``defect_avoid`` term charges ``q = 1`` to the moves whose
patch would hold it (skip: the mean over the moves, as in the env); the paper's per-step terms are stood in for by
noise of their size (``--noise``, 0.15 x the spread of ``R_clone + R_cover``) and ``R_pred`` by a constant. The
optimum avoids the blob's moves; the uniform sampler hits one in ``3/9`` of the defect states. What the real env adds
(a detector that changes, a residual that fades as the AE learns) makes learning harder, not easier: a learner that
cannot commit here cannot commit there.

Prints, per agent setting and seed, the share of defect states in which the chosen move hits the defect and the
policy's entropy (nats; uniform: ln 9 = 2.197) over the last ``--window`` steps, and the steps a run took.

    python -m experiments.sampler_learnability --steps 6144 --seeds 0 1 2
    python -m experiments.sampler_learnability --settings default paper --set default:learning_rate=3e-4
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

# the eight moves of MVTecPatch-v0 (dy, dx), in its action order; 8 = skip
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
SKIP = 8


class DefectBlobEnv(gym.Env):
    """Observations like MVTecPatch-v0's; a move charged ``q = 1`` when its patch would hold the state's defect blob."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, defect_share: float = 0.3, noise: float = 0.05, episode_length: int = 32, size: int = 128) -> None:
        super().__init__()
        self.observation_space = spaces.Box(0.0, 1.0, shape=(6, size, size), dtype=np.float32)
        self.action_space = spaces.Discrete(9)
        self.defect_share, self.noise, self.episode_length, self.size = defect_share, noise, episode_length, size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self._grid = (yy, xx)
        self._t = 0
        self.blob: tuple[float, float] | None = None

    def _state(self) -> np.ndarray:
        s, rng = self.size, self.np_random
        obs = np.empty((6, s, s), dtype=np.float32)
        obs[:3] = 0.4 + 0.1 * rng.random((3, 1, 1), dtype=np.float32) + 0.05 * rng.random((3, s, s), dtype=np.float32)
        obs[3] = 0.3 * rng.random((s, s), dtype=np.float32)  # fused structural map
        obs[4] = rng.random() * rng.random((s, s), dtype=np.float32) ** 4  # history
        obs[5] = 0.05 * rng.random((s, s), dtype=np.float32)  # residual
        self.blob = None
        if rng.random() < self.defect_share:  # a blob off the centre, where some moves' patches would take it
            angle, radius = rng.uniform(0, 2 * math.pi), rng.uniform(0.25, 0.45) * s
            cy, cx = s / 2 + radius * math.sin(angle), s / 2 + radius * math.cos(angle)
            yy, xx = self._grid
            obs[5] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.06 * s) ** 2))
            obs[0] += 0.2 * obs[5]  # a defect shows in the image too
            self.blob = (cy - s / 2, cx - s / 2)
        return np.clip(obs, 0.0, 1.0)

    def q(self) -> np.ndarray:
        """float (8,): 1 for the moves towards the blob (within 60 degrees of its direction), else 0."""
        q = np.zeros(8)
        if self.blob is not None:
            direction = math.atan2(*self.blob)
            for a, (dy, dx) in enumerate(MOVES):
                gap = abs((math.atan2(dy, dx) - direction + math.pi) % (2 * math.pi) - math.pi)
                q[a] = float(gap <= math.pi / 3)
        return q

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        return self._state(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        q = self.q()
        charged = float(q.mean() if action == SKIP else q[action])
        info = {"defect_state": self.blob is not None, "hit": charged if action != SKIP else 0.0}
        reward = -0.05 + self.noise * float(self.np_random.standard_normal()) - charged
        self._t += 1
        return self._state(), reward, self._t >= self.episode_length, False, info


class Tally:
    """SB3 callback: per step, whether the state held a defect, whether the move hit it, and the policy's entropy."""

    def __init__(self) -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        tally = self

        class _Callback(BaseCallback):
            def _on_step(self) -> bool:
                info = self.locals["infos"][0]
                obs = self.locals.get("obs_tensor")
                entropy = float("nan")
                if obs is not None and hasattr(self.model.policy, "get_distribution"):
                    with torch.no_grad():
                        entropy = float(self.model.policy.get_distribution(obs).entropy().mean())
                tally.rows.append((info["defect_state"], info["hit"], entropy))
                return True

        self.rows: list[tuple[bool, float, float]] = []
        self.callback = _Callback()

    def summary(self, window: int) -> dict[str, float | None]:
        rows = self.rows[-window:]
        defect = [hit for state, hit, _ in rows if state]
        entropies = [e for *_, e in rows if not math.isnan(e)]
        return {
            "hit_rate": round(float(np.mean(defect)), 3) if defect else None,
            "entropy": round(float(np.mean(entropies)), 3) if entropies else None,
        }


def settings(overrides: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The agent settings compared: the presets' REINFORCE, and variants of one setting each."""
    from agents.run_config import load_preset

    def agent_kwargs(algo: str, preset: str) -> dict[str, Any]:
        skip = ("n_timesteps", "eval_freq", "save_freq", "env_kwargs")
        return {k: v for k, v in load_preset(algo, "MVTecPatch-v0", preset).items() if k not in skip}

    default, paper = agent_kwargs("reinforce", "default"), agent_kwargs("reinforce", "paper")
    table: dict[str, tuple[str, dict[str, Any]]] = {
        "random": ("random", {}),
        "default": ("reinforce", default),
        "paper": ("reinforce", paper),
        "default-lr3e-4": ("reinforce", {**default, "learning_rate": 3e-4}),
        "default-lr3e-4-norm": ("reinforce", {**default, "learning_rate": 3e-4, "normalize_advantage": True}),
        "default-lr3e-4-norm-gamma0": (
            "reinforce",
            {**default, "learning_rate": 3e-4, "normalize_advantage": True, "gamma": 0.0},
        ),
        "default-lr1e-3-norm-gamma0": (
            "reinforce",
            {**default, "learning_rate": 1e-3, "normalize_advantage": True, "gamma": 0.0},
        ),
        "default-lr3e-3-norm-gamma0-n32": (
            "reinforce",
            {**default, "learning_rate": 3e-3, "normalize_advantage": True, "gamma": 0.0, "n_steps": 32},
        ),
        "ppo": ("ppo", agent_kwargs("ppo", "default")),
    }
    for item in overrides:
        name, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        algo, kwargs = table[name]
        table[name] = (algo, {**kwargs, key: json.loads(value)})
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=None, help="agent settings to compare (default: all)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME:K=V", help="change one setting's argument")
    parser.add_argument("--steps", type=int, default=6144, help="env steps per run (a default run's RL phase)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--defect-share", type=float, default=0.3)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--window", type=int, default=1024, help="steps the summary covers, at the end of a run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from agents import make_agent

    table = settings(args.set)
    for name in args.settings or list(table):
        algo, hyperparams = table[name]
        for seed in args.seeds:
            env = DefectBlobEnv(args.defect_share, args.noise)
            agent = make_agent(algo, env, seed=seed, device="cpu", **hyperparams)
            tally = Tally()
            start = time.perf_counter()
            agent.learn(args.steps, callback=tally.callback)
            row = {"setting": name, "seed": seed, **tally.summary(args.window), "seconds": round(time.perf_counter() - start)}
            print(json.dumps(row), flush=True)
    print(f"uniform: hit rate {3 / 9:.3f}, entropy {math.log(9):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
