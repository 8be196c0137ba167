"""REINFORCE (Williams, 1992) as a stable-baselines3 on-policy algorithm: the paper's sampler learner.

Paper §III.B, eq. 6: ``∇θ J(θ) = E[R ∇θ log πθ(a|s)]``, with R the Monte-Carlo return. Built like SB3's a2c.py:
rollouts, logging, callbacks and save/load come from ``OnPolicyAlgorithm``. What differs from A2C:

- Returns are Monte-Carlo sums of discounted rewards *within* each episode (``MonteCarloRolloutBuffer``); no value
  head is ever used to bootstrap, not at a rollout's end and not at a time-limit truncation.
- A transition whose episode does not end inside the rollout (the tail when ``n_steps`` is not a whole number of
  episodes) has no complete return, so it is left out of the loss (unbiased, at the cost of wasted samples; a
  warning says so). The next rollout's first steps are fine: a return-to-go needs only later rewards.
- The env can withhold feedback: transitions whose ``info`` has ``"rl_feedback": False`` (MVTecPatch-v0's warm-up,
  paper §IV.D) get zero weight in every loss term. ``collect_rollouts`` is overridden for this and for the
  truncation rule above; it is otherwise SB3's loop.
- One gradient step per rollout; no update at all before ``learning_starts`` environment steps.
"""

import logging
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

logger = logging.getLogger(__name__)

SelfReinforce = TypeVar("SelfReinforce", bound="Reinforce")

BASELINES = ("none", "mean", "value")


def monte_carlo_returns(
    rewards: np.ndarray, episode_starts: np.ndarray, last_dones: np.ndarray, gamma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Discounted returns-to-go within each episode, without bootstrapping.

    Args:
        rewards: ``(T, N)`` rewards of T steps in N envs.
        episode_starts: ``(T, N)``, 1 where a transition is the first of an episode (SB3's convention).
        last_dones: ``(N,)``, whether the last transition of the rollout ended its episode.
        gamma: discount factor.

    Returns:
        ``(returns, complete)``, both ``(T, N)``: ``returns[t] = sum_k gamma^k r[t+k]`` up to the episode's last step
        inside the rollout, and ``complete[t]`` True when that last step is the episode's real end (otherwise the
        return is partial: the episode goes on after the rollout).
    """
    T = rewards.shape[0]
    returns = np.zeros(rewards.shape, dtype=np.float32)  # (T, N)
    complete = np.zeros(rewards.shape, dtype=bool)  # (T, N)
    running = np.zeros(rewards.shape[1:], dtype=np.float64)  # (N,)
    ended = np.asarray(last_dones, dtype=bool).reshape(rewards.shape[1:]).copy()  # (N,)
    for t in reversed(range(T)):
        running = rewards[t] + gamma * running
        returns[t] = running
        complete[t] = ended
        # Transition t starts an episode, so t - 1 was the previous episode's last step: restart the sum there.
        starts = episode_starts[t].astype(bool)
        running = np.where(starts, 0.0, running)
        ended = ended | starts
    return returns, complete


class MonteCarloRolloutBuffer(RolloutBuffer):
    """SB3's ``RolloutBuffer`` with Monte-Carlo returns and two per-transition masks.

    ``feedback`` ``(n_steps, n_envs)``: 1 where the env gave RL feedback; ``complete`` ``(n_steps, n_envs)``: 1 where
    the transition's episode ends inside the rollout. ``returns`` are filled by ``compute_returns_and_advantage``;
    ``advantages`` there are ``returns - values`` (REINFORCE recomputes its own in ``train``).
    """

    feedback: np.ndarray
    complete: np.ndarray

    def reset(self) -> None:
        super().reset()
        self.feedback = np.ones((self.buffer_size, self.n_envs), dtype=np.float32)
        self.complete = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)

    def add(self, *args: Any, feedback: np.ndarray | None = None, **kwargs: Any) -> None:
        """``RolloutBuffer.add`` plus the transition's feedback flags ``(n_envs,)`` (1 when None)."""
        if feedback is not None:
            self.feedback[self.pos] = feedback
        super().add(*args, **kwargs)

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: np.ndarray) -> None:
        """Monte-Carlo returns; ``last_values`` is ignored on purpose (no bootstrap)."""
        returns, complete = monte_carlo_returns(self.rewards, self.episode_starts, dones, self.gamma)
        self.returns = returns
        self.complete = complete.astype(np.float32)
        self.advantages = self.returns - self.values


class Reinforce(OnPolicyAlgorithm):
    """REINFORCE with an optional baseline, in SB3's on-policy framework.

    Args:
        policy: "CnnPolicy" or "MlpPolicy" (ActorCriticCnnPolicy / ActorCriticPolicy) or a policy class. With float
            image observations pass the sampler's ``policy_kwargs`` (``models.sampler.policy_kwargs_for``).
        env: the environment (a Gymnasium env, a VecEnv or a registered id).
        learning_rate: Adam learning rate, or a schedule of the remaining progress (1 -> 0). 1e-3: REINFORCE takes
            a single gradient step per rollout (PPO's 3e-4 is for ~10 epochs of minibatches over each rollout), the
            paper trains its other networks with Adam at 1e-3, and the gradient is clipped by ``max_grad_norm``.
        n_steps: transitions collected per env between updates. Make it a whole number of episodes (e.g. 4 x 32 for
            MVTecPatch-v0's 32-step episodes): steps of an episode that is cut off by the rollout's end have no
            complete return and are left out of the loss.
        gamma: discount factor of the Monte-Carlo returns.
        baseline: what is subtracted from the return to get the advantage. "none": nothing (eq. 6 of the paper);
            "mean": an exponential running mean of past returns (``running_return_mean``, saved with the agent);
            "value": the value head's prediction V(s), trained with ``vf_coef * MSE(V(s), return)``.
        baseline_decay: decay of the running mean, ``m <- decay * m + (1 - decay) * mean(returns of the rollout)``.
            The mean used for a rollout is the one from before it (the first rollout initialises it).
        normalize_advantage: shift and scale the advantages of each rollout to zero mean and unit std (over the
            transitions in the loss). Off by default: re-centring on the rollout's mean overrides the "none" and
            "mean" baselines (both then give the same update), and Adam already makes the step size insensitive to
            the reward's overall scale.
        ent_coef: weight of the entropy bonus (0: plain REINFORCE).
        vf_coef: weight of the value loss; used only with ``baseline="value"``.
        max_grad_norm: the gradient's global norm is clipped to this value.
        learning_starts: env steps collected before the first gradient step. Earlier rollouts are still collected
            and logged (and update the running mean), but train() leaves the parameters untouched.
        stats_window_size: episodes averaged for ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean``.
        tensorboard_log: TensorBoard log folder (None: no TensorBoard).
        policy_kwargs: keyword arguments for the policy.
        verbose: 0 silent, 1 info, 2 debug.
        seed: seed of python, numpy, torch, the action space and the env.
        device: torch device ("auto": cuda when available).
        _init_setup_model: build the networks now (False is used by ``load``).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
    }
    rollout_buffer: MonteCarloRolloutBuffer

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 128,
        gamma: float = 0.99,
        baseline: str = "mean",
        baseline_decay: float = 0.9,
        normalize_advantage: bool = False,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        learning_starts: int = 0,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; valid: {', '.join(BASELINES)}")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        if learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {learning_starts}")
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=1.0,  # unused: returns are Monte-Carlo
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=False,
            sde_sample_freq=-1,
            rollout_buffer_class=MonteCarloRolloutBuffer,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        self.baseline = baseline
        self.baseline_decay = baseline_decay
        self.normalize_advantage = normalize_advantage
        self.learning_starts = learning_starts
        # Exponential running mean of returns for baseline="mean"; None until the first rollout. Saved by save().
        self.running_return_mean: float | None = None
        self._warned_incomplete = False

        if _init_setup_model:
            self._setup_model()

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """SB3's rollout loop, plus the ``rl_feedback`` mask and minus the value bootstrap on truncation.

        Args:
            env: the training VecEnv.
            callback: called at every step and at the start and end of the rollout.
            rollout_buffer: a ``MonteCarloRolloutBuffer`` to fill.
            n_rollout_steps: steps to collect per env.

        Returns:
            True when the rollout is complete, False if a callback stopped training.
        """
        assert self._last_obs is not None, "No previous observation was provided"
        assert isinstance(rollout_buffer, MonteCarloRolloutBuffer)
        # Switch to eval mode (this affects batch norm / dropout)
        self.policy.set_training_mode(False)

        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()

        while n_steps < n_rollout_steps:
            with torch.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                actions, values, log_probs = self.policy(obs_tensor)
            actions = actions.cpu().numpy()

            new_obs, rewards, dones, infos = env.step(actions)
            self.num_timesteps += env.num_envs

            # Give access to local variables
            callback.update_locals(locals())
            if not callback.on_step():
                return False

            self._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(self.action_space, spaces.Discrete):
                # Reshape in case of discrete action
                actions = actions.reshape(-1, 1)

            # A missing flag means feedback; False marks the env's warm-up.
            feedback = np.array([float(bool(info.get("rl_feedback", True))) for info in infos], dtype=np.float32)
            # Unlike SB3, no `rewards += gamma * V(terminal_obs)` on a time-limit truncation: a truncated episode's
            # return is the sum of the rewards it got (the episode end is in `dones`, so the return stops there).
            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
                feedback=feedback,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones

        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)  # last_values ignored

        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _advantages(self, returns: np.ndarray, weights: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Baseline and advantage per transition.

        Args:
            returns: ``(B,)`` Monte-Carlo returns.
            weights: ``(B,)`` loss weights (0 or 1), at least one 1.
            values: ``(B,)`` value-head predictions (used by baseline="value").

        Returns:
            ``(baseline, advantages)``, both ``(B,)``.
        """
        used = weights > 0
        if self.baseline == "none":
            base = np.zeros_like(returns)
        elif self.baseline == "mean":
            if self.running_return_mean is None:
                self.running_return_mean = float(returns[used].mean())
            base = np.full_like(returns, self.running_return_mean)
        else:  # "value"
            base = values
        advantages = returns - base
        if self.normalize_advantage:
            mean, std = advantages[used].mean(), advantages[used].std()
            advantages = (advantages - mean) / (std + 1e-8)
        return base, advantages

    def train(self) -> None:
        """One REINFORCE gradient step on the rollout: ``-(A · log π(a|s))`` averaged over the transitions in the loss."""
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate (also logs train/learning_rate)
        self._update_learning_rate(self.policy.optimizer)

        buffer = self.rollout_buffer
        # Transitions in the loss: env gave feedback and the episode's return is complete.
        feedback = buffer.swap_and_flatten(buffer.feedback).flatten()  # (B,) with B = n_envs * n_steps
        weights = feedback * buffer.swap_and_flatten(buffer.complete).flatten()  # (B,)
        returns = buffer.swap_and_flatten(buffer.returns).flatten()  # (B,)
        rollout_values = buffer.swap_and_flatten(buffer.values).flatten()  # (B,)
        n_used = int(weights.sum())

        self.logger.record("train/feedback_fraction", float(feedback.mean()))
        self.logger.record("train/loss_fraction", n_used / weights.size)
        if buffer.complete.sum() < buffer.complete.size and not self._warned_incomplete:
            self._warned_incomplete = True
            logger.warning(
                "n_steps=%d cuts an episode at the rollout's end: its steps have no complete return and are left out "
                "of the loss. Use a whole number of episodes per rollout.",
                self.n_steps,
            )

        if n_used == 0:
            logger.debug("no transition with RL feedback and a complete return in this rollout: no update")
            self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
            return

        used = weights > 0
        return_mean = float(returns[used].mean())
        self.logger.record("train/return_mean", return_mean)
        base, advantages = self._advantages(returns, weights, rollout_values)
        self.logger.record("train/baseline", float(base[used].mean()))
        self.logger.record("train/explained_variance", explained_variance(base[used], returns[used]))
        if self.baseline == "mean":
            # Update after use, so that a rollout's baseline does not depend on its own returns.
            assert self.running_return_mean is not None
            self.running_return_mean = self.baseline_decay * self.running_return_mean + (1 - self.baseline_decay) * return_mean

        if self.num_timesteps < self.learning_starts:
            self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
            return

        observations = buffer.to_torch(buffer.swap_and_flatten(buffer.observations))  # (B, *obs_shape)
        actions = buffer.to_torch(buffer.swap_and_flatten(buffer.actions))  # (B, action_dim)
        if isinstance(self.action_space, spaces.Discrete):
            # Convert discrete action from float to long
            actions = actions.long().flatten()  # (B,)
        weight_t = buffer.to_torch(weights / n_used)  # (B,), sums to 1 over the used transitions
        advantages_t = buffer.to_torch(advantages)  # (B,)
        returns_t = buffer.to_torch(returns)  # (B,)

        values, log_prob, entropy = self.policy.evaluate_actions(observations, actions)
        values = values.flatten()  # (B,)

        policy_loss = -(advantages_t * log_prob * weight_t).sum()
        # Entropy loss favours exploration
        entropy_loss = (log_prob * weight_t).sum() if entropy is None else -(entropy * weight_t).sum()
        loss = policy_loss + self.ent_coef * entropy_loss
        if self.baseline == "value":
            value_loss = ((values - returns_t) ** 2 * weight_t).sum()
            loss = loss + self.vf_coef * value_loss
            self.logger.record("train/value_loss", value_loss.item())

        # Optimization step
        self.policy.optimizer.zero_grad()
        loss.backward()
        # Clip grad norm
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()

        self._n_updates += 1
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/policy_loss", policy_loss.item())
        self.logger.record("train/entropy_loss", entropy_loss.item())

    def learn(
        self: SelfReinforce,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "Reinforce",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfReinforce:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
