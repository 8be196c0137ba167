"""Uniform random sampler: the control that says whether RL helps (docs/design.md).

It steps the env with uniformly random actions, so the AE and predictor inside the env train on randomly chosen
patches exactly as they would under an RL sampler. Built on SB3's ``BaseAlgorithm`` with a parameter-free policy, so
that env wrapping, seeding, the logger (TensorBoard, ``rollout/ep_rew_mean``), callbacks (``CheckpointCallback``,
``EvalCallback``, custom ones), ``predict`` and ``save``/``load`` behave exactly as for the RL agents.
"""

import logging
import sys
import time
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import VecEnv

logger = logging.getLogger(__name__)

SelfRandomAgent = TypeVar("SelfRandomAgent", bound="RandomAgent")


class UniformRandomPolicy(BasePolicy):
    """A policy without parameters: every action is drawn uniformly from the action space.

    Args:
        observation_space: the env's observation space (used only to batch observations).
        action_space: the env's action space; its RNG (seeded by the agent) drives the draws.
        kwargs: ignored (accepts SB3's usual policy arguments).
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, **kwargs: Any) -> None:
        super().__init__(observation_space, action_space)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> torch.Tensor:
        return self._predict(obs, deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> torch.Tensor:
        # `deterministic` is ignored: a uniform policy has no greedy action, and the control must stay random.
        first = next(iter(observation.values())) if isinstance(observation, dict) else observation
        n = first.shape[0]
        return torch.as_tensor(np.stack([self.action_space.sample() for _ in range(n)]))  # (B, *action_shape)


class RandomAgent(BaseAlgorithm):
    """Uniform random actions behind SB3's algorithm interface.

    Args:
        policy: "CnnPolicy", "MlpPolicy" or "MultiInputPolicy" (all the same uniform policy) or a policy class.
        env: the environment (a Gymnasium env, a VecEnv or a registered id).
        seed: seed of python, numpy, torch, the action space (hence the action sequence) and the env.
        tensorboard_log: TensorBoard log folder (None: no TensorBoard).
        verbose: 0 silent, 1 info, 2 debug.
        device: torch device (only where observations are put before ``predict`` ignores them).
        stats_window_size: episodes averaged for ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean``.
        _init_setup_model: build the policy now (False is used by ``load``).
        ignored_kwargs: hyperparameters of the RL agents (learning_rate, policy_kwargs, ...), accepted so that one
            command line can switch algorithms; they have no effect.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": UniformRandomPolicy,
        "CnnPolicy": UniformRandomPolicy,
        "MultiInputPolicy": UniformRandomPolicy,
    }
    policy: UniformRandomPolicy

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str | None,
        seed: int | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        device: torch.device | str = "auto",
        stats_window_size: int = 100,
        _init_setup_model: bool = True,
        **ignored_kwargs: Any,
    ) -> None:
        super().__init__(
            policy,
            env,
            learning_rate=0.0,  # nothing is learnt
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            seed=seed,
            stats_window_size=stats_window_size,
        )
        if ignored_kwargs:
            logger.info("RandomAgent ignores %s", ", ".join(sorted(ignored_kwargs)))
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space).to(self.device)  # type: ignore[assignment]

    def _actions(self, env: VecEnv) -> np.ndarray:
        """The actions of one step, one per env: uniform draws from the action space (a subclass draws otherwise)."""
        return np.stack([self.action_space.sample() for _ in range(env.num_envs)])  # (n_envs, *action_shape)

    def dump_logs(self) -> None:
        """Write the episode statistics and timing to SB3's logger, at the current timestep."""
        assert self.ep_info_buffer is not None
        time_elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        fps = int((self.num_timesteps - self._num_timesteps_at_start) / time_elapsed)
        self.logger.record("time/episodes", self._episode_num, exclude="tensorboard")
        if len(self.ep_info_buffer) > 0 and len(self.ep_info_buffer[0]) > 0:
            self.logger.record("rollout/ep_rew_mean", safe_mean([ep_info["r"] for ep_info in self.ep_info_buffer]))
            self.logger.record("rollout/ep_len_mean", safe_mean([ep_info["l"] for ep_info in self.ep_info_buffer]))
        self.logger.record("time/fps", fps)
        self.logger.record("time/time_elapsed", int(time_elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)

    def learn(
        self: SelfRandomAgent,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int | None = 1,
        tb_log_name: str = "Random",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRandomAgent:
        """Step the env with random actions for ``total_timesteps`` steps (summed over envs).

        Args:
            total_timesteps: env steps to run.
            callback: SB3 callback(s); ``on_step`` sees ``actions``, ``new_obs``, ``rewards``, ``dones``, ``infos``
                in ``self.locals`` and can stop the run by returning False.
            log_interval: dump the logs every this many finished episodes (None: never).
            tb_log_name: name of the TensorBoard run.
            reset_num_timesteps: start counting from 0 (else continue, and run ``total_timesteps`` more).
            progress_bar: show a progress bar (tqdm + rich).

        Returns:
            self.
        """
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        callback.on_training_start(locals(), globals())
        assert self.env is not None
        env = self.env

        while self.num_timesteps < total_timesteps:
            # Every step is a rollout of its own: a callback that acts between rollouts (a checkpoint, a clean stop)
            # sees the state after a whole step, as it would after an RL agent's update
            callback.on_rollout_start()
            actions = self._actions(env)  # (n_envs, *action_shape)
            new_obs, rewards, dones, infos = env.step(actions)
            self.num_timesteps += env.num_envs

            # Give access to local variables
            callback.update_locals(locals())
            if not callback.on_step():
                break

            self._update_info_buffer(infos, dones)
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            for done in dones:
                if done:
                    self._episode_num += 1
                    if log_interval is not None and self._episode_num % log_interval == 0:
                        self.dump_logs()
            callback.on_rollout_end()

        callback.on_training_end()
        return self
