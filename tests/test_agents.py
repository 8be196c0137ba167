"""Tests for the sampler network (models/sampler.py) and the agents package (REINFORCE, random control, registry)."""

import logging
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.logger import KVWriter, Logger

from agents import AGENTS, load_agent, make_agent, save_agent
from agents.random_agent import RandomAgent
from agents.reinforce import MonteCarloRolloutBuffer, Reinforce, monte_carlo_returns
from models.sampler import SamplerCNN, SamplerConfig, policy_kwargs_for, sampler_policy_kwargs
from tests.fake_env import FakeImageEnv

# A narrow trunk keeps every test at a few ms per env step.
TINY = dict(features_extractor_kwargs=dict(features_dim=16, config=SamplerConfig(channels=(8, 8, 8, 8))))


def reinforce(env: gym.Env | None = None, **kwargs: Any) -> Reinforce:
    kwargs = {"n_steps": 16, "seed": 0, "policy_kwargs": TINY, **kwargs}
    agent = make_agent("reinforce", env or FakeImageEnv(), **kwargs)
    assert isinstance(agent, Reinforce)
    return agent


def params(agent: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.policy.parameters()]


def same_params(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


class RecordingWriter(KVWriter):
    """Keeps every logger dump in memory."""

    def __init__(self) -> None:
        self.dumps: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.dumps.append(dict(key_values))


class RecordLocals(BaseCallback):
    """Records the actions and the keys of ``self.locals`` seen at each step."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[int] = []
        self.keys: set[str] = set()

    def _on_step(self) -> bool:
        self.actions.extend(int(a) for a in np.asarray(self.locals["actions"]).ravel())
        self.keys |= set(self.locals)
        return True


# --- models/sampler.py ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 128, 128), (4, 32, 32)])
def test_sampler_cnn_shapes_and_gradients(shape: tuple[int, int, int]) -> None:
    net = SamplerCNN(spaces.Box(0.0, 1.0, shape, np.float32), features_dim=24)
    out = net(torch.rand(2, *shape))
    assert out.shape == (2, 24) and out.dtype == torch.float32
    out.pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_sampler_cnn_rejects_non_image_space() -> None:
    with pytest.raises(ValueError, match="channel-first"):
        SamplerCNN(spaces.Box(0.0, 1.0, (10,), np.float32))


def test_policy_kwargs_per_algorithm() -> None:
    base = sampler_policy_kwargs(64)
    assert base["features_extractor_class"] is SamplerCNN and base["normalize_images"] is False and base["net_arch"] == []
    for algo in ("reinforce", "ppo", "a2c"):
        assert policy_kwargs_for(algo)["ortho_init"] is False  # ortho init would overwrite the extractor's layers
    assert "ortho_init" not in policy_kwargs_for("dqn")  # DQNPolicy does not accept it
    assert policy_kwargs_for("dqn", features_dim=8)["features_extractor_kwargs"] == {"features_dim": 8}


# --- Monte-Carlo returns -------------------------------------------------------------------------------------------


def test_monte_carlo_returns_hand_computed() -> None:
    gamma = 0.5
    rewards = np.array([[1, 1], [2, 1], [3, 1], [4, 1], [5, 1], [6, 1]], dtype=np.float32)  # (T=6, N=2)
    starts = np.array([[1, 0], [0, 0], [0, 1], [1, 0], [0, 0], [0, 0]], dtype=np.float32)
    last_dones = np.array([True, False])
    returns, complete = monte_carlo_returns(rewards, starts, last_dones, gamma)
    # env 0: episodes [1, 2, 3] and [4, 5, 6], both ended inside the rollout.
    np.testing.assert_allclose(returns[:, 0], [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 4 + 0.5 * 5 + 0.25 * 6, 5 + 0.5 * 6, 6])
    # env 1: the tail of an earlier episode [1, 1] (complete), then an episode cut by the rollout's end (partial).
    np.testing.assert_allclose(returns[:, 1], [1.5, 1, 1.875, 1.75, 1.5, 1])
    np.testing.assert_array_equal(complete, [[1, 1], [1, 1], [1, 0], [1, 0], [1, 0], [1, 0]])


def test_buffer_returns_ignore_last_values() -> None:
    space = spaces.Box(0.0, 1.0, (1,), np.float32)
    buffer = MonteCarloRolloutBuffer(3, space, spaces.Discrete(2), device="cpu", gamma=0.9)
    for t, reward in enumerate([1.0, 0.0, 2.0]):
        buffer.add(
            np.zeros((1, 1)),
            np.zeros(1),
            np.array([reward]),
            np.array([t == 0]),
            torch.tensor([5.0]),
            torch.zeros(1),
            feedback=np.array([float(t > 0)]),
        )
    buffer.compute_returns_and_advantage(last_values=torch.tensor([100.0]), dones=np.array([False]))
    np.testing.assert_allclose(buffer.returns[:, 0], [1 + 0.81 * 2, 0.9 * 2, 2.0], rtol=1e-6)  # no 100 bootstrapped
    np.testing.assert_array_equal(buffer.feedback[:, 0], [0, 1, 1])
    np.testing.assert_array_equal(buffer.complete[:, 0], [0, 0, 0])


def test_rollout_returns_and_tail_mask(caplog: pytest.LogCaptureFixture) -> None:
    agent = reinforce(FakeImageEnv(episode_length=4), n_steps=10, gamma=0.9)  # 10 = 2 episodes + 2 steps of a third
    with caplog.at_level(logging.WARNING, logger="agents.reinforce"):
        agent.learn(10)
    buf = agent.rollout_buffer
    rewards = buf.rewards[:, 0]
    expected = [sum(0.9**k * rewards[t + k] for k in range(4 - t % 4) if t + k < 10) for t in range(10)]
    np.testing.assert_allclose(buf.returns[:, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(buf.complete[:, 0], [1] * 8 + [0] * 2)
    assert "n_steps=10" in caplog.text


def test_truncation_is_not_bootstrapped() -> None:
    env = gym.wrappers.TimeLimit(FakeImageEnv(episode_length=8), max_episode_steps=3)
    agent = reinforce(env, n_steps=12, baseline="value")
    agent.learn(12)
    # SB3's loop would add gamma * V(s_T) to the reward of each truncated step; ours keeps the env's 0/1 rewards.
    assert set(np.unique(agent.rollout_buffer.rewards)) <= {0.0, 1.0}
    np.testing.assert_array_equal(agent.rollout_buffer.episode_starts[:, 0], [1, 0, 0] * 4)


# --- REINFORCE -----------------------------------------------------------------------------------------------------


def test_reinforce_learns_rewarded_action() -> None:
    # A high learning rate because the tiny trunk's features are small; the default network learns at 1e-3.
    agent = reinforce(FakeImageEnv(episode_length=8, rewarded_action=3), n_steps=16, seed=1, learning_rate=1e-2)
    agent.learn(512)
    obs = np.random.default_rng(0).random((64, 6, 32, 32), dtype=np.float32)
    with torch.no_grad():
        distribution = agent.policy.get_distribution(torch.as_tensor(obs))
    assert isinstance(distribution, CategoricalDistribution)
    probs = distribution.distribution.probs  # (64, 9)
    assert probs[:, 3].mean() > 0.9
    assert (agent.predict(obs, deterministic=True)[0] == 3).all()


def test_reinforce_same_seed_same_run() -> None:
    runs = []
    for seed in (7, 7, 8):
        callback = RecordLocals()
        agent = reinforce(seed=seed)
        agent.learn(64, callback=callback)
        runs.append((callback.actions, params(agent)))
    assert runs[0][0] == runs[1][0] and same_params(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]  # the check can tell runs apart


@pytest.mark.parametrize("baseline", ["mean", "value"])
def test_reinforce_save_load_round_trip(tmp_path: Path, baseline: str) -> None:
    agent = reinforce(baseline=baseline)
    agent.learn(64)
    save_agent(agent, tmp_path / "agent.zip")
    loaded = load_agent("reinforce", tmp_path / "agent.zip", env=FakeImageEnv(), policy_kwargs=TINY)
    assert isinstance(loaded, Reinforce)
    obs = np.random.default_rng(0).random((8, 6, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(agent.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    assert loaded.baseline == baseline and loaded.num_timesteps == 64 and loaded._n_updates == agent._n_updates == 4
    assert loaded.running_return_mean == agent.running_return_mean
    if baseline == "mean":
        assert agent.running_return_mean is not None
    assert same_params(params(agent), params(loaded))


def test_learning_starts_blocks_updates() -> None:
    waiting = reinforce(learning_starts=10_000)
    before = params(waiting)
    waiting.learn(64)
    assert same_params(before, params(waiting)) and waiting._n_updates == 0
    assert waiting.running_return_mean is not None  # rollouts were still processed

    started = reinforce(learning_starts=32)
    before = params(started)
    started.learn(64)
    assert not same_params(before, params(started)) and started._n_updates == 3  # updates at 32, 48 and 64 steps


def test_no_rl_feedback_no_update() -> None:
    muted = reinforce(FakeImageEnv(no_feedback_steps=10**9), ent_coef=0.1, baseline="value")
    before = params(muted)
    muted.learn(64)
    assert same_params(before, params(muted)) and muted._n_updates == 0

    warm = reinforce(FakeImageEnv(no_feedback_steps=5), n_steps=16)
    before = params(warm)
    warm.learn(16)
    np.testing.assert_array_equal(warm.rollout_buffer.feedback[:, 0], [0] * 5 + [1] * 11)
    assert not same_params(before, params(warm))


def test_invalid_baseline() -> None:
    with pytest.raises(ValueError, match="none, mean, value"):
        Reinforce("CnnPolicy", FakeImageEnv(), baseline="median", policy_kwargs=TINY)


def test_reinforce_logs_training_keys() -> None:
    writer = RecordingWriter()
    agent = reinforce(baseline="value", learning_starts=16)
    agent.set_logger(Logger(folder=None, output_formats=[writer]))
    agent.learn(48)
    keys = set().union(*writer.dumps)
    for key in (
        "policy_loss",
        "entropy_loss",
        "value_loss",
        "explained_variance",
        "baseline",
        "return_mean",
        "feedback_fraction",
        "n_updates",
        "learning_rate",
    ):
        assert f"train/{key}" in keys, key
    assert "rollout/ep_rew_mean" in keys


# --- registry and random control -----------------------------------------------------------------------------------

SMALL_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "reinforce": dict(n_steps=16),
    "ppo": dict(n_steps=16, batch_size=16, n_epochs=1),
    "a2c": dict(n_steps=8),
    "dqn": dict(buffer_size=64, learning_starts=8, batch_size=8),
}


@pytest.mark.parametrize("name", list(AGENTS))
def test_every_agent_builds_and_learns(name: str) -> None:
    agent = make_agent(name, FakeImageEnv(), seed=0, policy_kwargs=TINY, **SMALL_HYPERPARAMS.get(name, {}))
    assert isinstance(agent, AGENTS[name])
    agent.learn(32)
    assert agent.num_timesteps >= 32
    action, _ = agent.predict(FakeImageEnv().observation_space.sample())
    assert 0 <= int(action) < 9


def test_unknown_algo_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown algo 'sac'; valid: reinforce, ppo, a2c, dqn, random"):
        make_agent("sac", FakeImageEnv())
    with pytest.raises(ValueError, match="valid:"):
        load_agent("sac", "agent.zip")


def test_load_agent_rejects_corrupt_or_missing_zip(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="corrupt.zip"):
        load_agent("reinforce", corrupt)
    with pytest.raises(ValueError, match="missing.zip"):
        load_agent("ppo", tmp_path / "missing.zip")


def test_random_agent_callbacks_checkpoint_and_logs(tmp_path: Path) -> None:
    writer = RecordingWriter()
    record = RecordLocals()
    agent = make_agent("random", FakeImageEnv(episode_length=8), seed=3, learning_rate=1.0)  # RL kwargs are ignored
    agent.set_logger(Logger(folder=None, output_formats=[writer]))
    agent.learn(32, callback=[record, CheckpointCallback(save_freq=16, save_path=str(tmp_path), name_prefix="rnd")])
    assert {"infos", "rewards", "dones", "new_obs"} <= record.keys
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rnd_16_steps.zip", "rnd_32_steps.zip"]
    assert any("rollout/ep_rew_mean" in d for d in writer.dumps)

    # SB3's own checkpoint pickles its spaces: readable only when the file is trusted
    with pytest.raises(ValueError, match="pickled"):
        load_agent("random", tmp_path / "rnd_32_steps.zip", env=FakeImageEnv())
    loaded = load_agent("random", tmp_path / "rnd_32_steps.zip", env=FakeImageEnv(), allow_pickle=True)
    assert isinstance(loaded, RandomAgent) and loaded.num_timesteps == 32 and loaded.seed == 3

    again = RecordLocals()
    make_agent("random", FakeImageEnv(episode_length=8), seed=3).learn(32, callback=again)
    assert again.actions == record.actions and len(set(record.actions)) > 3  # seeded and uniform-looking
