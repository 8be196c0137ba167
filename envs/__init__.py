"""Gymnasium environments: ``MVTecPatch-v0``, the neural batch sampler's patch-selection process.

``import envs`` registers the id, so ``gymnasium.make("MVTecPatch-v0")`` works (as does ``"envs:MVTecPatch-v0"``).
"""

from gymnasium.envs.registration import register, registry

ENV_ID = "MVTecPatch-v0"

if ENV_ID not in registry:
    # No max_episode_steps: the env ends its fixed-length episodes itself with terminated=True, and a TimeLimit
    # truncation would make SB3 bootstrap from a value head, which Monte-Carlo REINFORCE must not do.
    register(id=ENV_ID, entry_point="envs.mvtec_patch:MVTecPatchEnv")

__all__ = ["ENV_ID"]
