"""A hand-made sampler with the information of the ``defect_avoid`` reward: the control an RL sampler must beat.

At every step it reads, for each of the eight moves, the highest defect probability ``q`` that the detector's current
anomaly map gives inside the patch the move would take (``MVTecPatchEnv.move_defect_probabilities``: what
``reward="defect_avoid"`` charges), and draws its action from a fixed rule (docs/design.md, "The sampler"):

- ``threshold``: uniform over the moves with ``q <= tau`` and skip (skip alone when every move is above ``tau``);
- ``proportional``: each move weighted ``1 - q``, skip weighted 1.

Where the detector sees no defect (``q`` = 0 everywhere) both rules are the uniform random sampler, so the heuristic
differs from it only by avoiding what looks defective. Built on :class:`agents.random_agent.RandomAgent`: the same
SB3 interface, logging, callbacks and checkpoints; its draws come from the seeded action space.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.vec_env import VecEnv

from agents.random_agent import RandomAgent, UniformRandomPolicy

RULES = ("threshold", "proportional")
N_MOVES = 8  # actions 0-7 move; the last action (8) skips


def action_probabilities(q: np.ndarray, rule: str, tau: float) -> np.ndarray:
    """float64 (9,): the heuristic's distribution over the actions, given ``q`` (8,) of the eight moves' patches."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (N_MOVES,):
        raise ValueError(f"expected the defect probabilities of the {N_MOVES} moves, got shape {q.shape}")
    moves = (q <= tau).astype(np.float64) if rule == "threshold" else np.clip(1.0 - q, 0.0, 1.0)
    weights = np.append(moves, 1.0)  # skip: never a defective patch
    return weights / weights.sum()


def entropy(probabilities: np.ndarray) -> float:
    """Entropy in nats of a distribution (zeros allowed)."""
    p = probabilities[probabilities > 0]
    return float(-(p * np.log(p)).sum())


class HeuristicAgent(RandomAgent):
    """Avoid the patches the detector takes for defects, by a fixed rule (module docstring).

    Args:
        policy: as for :class:`RandomAgent` (``predict`` without the env draws uniformly: the rule needs the env).
        env: an ``MVTecPatch-v0`` env (it must offer ``move_defect_probabilities``).
        rule: ``threshold`` or ``proportional``.
        tau: the ``threshold`` rule's limit on a move's defect probability, in [0, 1].
        kwargs: :class:`RandomAgent`'s (seed, tensorboard_log, verbose, device, ...).
    """

    policy_aliases: ClassVar[dict[str, type[UniformRandomPolicy]]] = RandomAgent.policy_aliases

    def __init__(
        self,
        policy: str | type[UniformRandomPolicy],
        env: GymEnv | str | None,
        rule: str = "threshold",
        tau: float = 0.5,
        **kwargs: Any,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"rule={rule!r} is invalid: expected one of {', '.join(RULES)}")
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau={tau!r} is invalid: expected a defect probability in [0, 1]")
        self.rule, self.tau = rule, float(tau)
        self.action_entropy = math.log(N_MOVES + 1)  # of the last step's distribution (mean over envs), in nats
        super().__init__(policy, env, **kwargs)

    def _actions(self, env: VecEnv) -> np.ndarray:
        try:
            per_env = env.env_method("move_defect_probabilities")
        except AttributeError as error:
            raise ValueError(
                "the heuristic sampler reads the detector's defect probabilities of the moves' patches: it needs "
                "MVTecPatch-v0 (an env with move_defect_probabilities)"
            ) from error
        actions, entropies = [], []
        for q in per_env:
            p = action_probabilities(q, self.rule, self.tau)
            actions.append(int(self.action_space.np_random.choice(len(p), p=p)))
            entropies.append(entropy(p))
        self.action_entropy = float(np.mean(entropies))
        return np.asarray(actions)  # (n_envs,)
