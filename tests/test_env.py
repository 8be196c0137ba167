"""MVTecPatch-v0 on a tiny generated category: checkers, determinism, actions, reward, schedules, history."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401 - registers MVTecPatch-v0
from envs.mvtec_patch import MOVES, SKIP, MVTecPatchEnv
from tests.conftest import write_mvtec_tree


def small_kwargs(root: Path, **overrides) -> dict:
    """A config small enough for a full check in seconds: 64 px images, 32 px crops, 16 px patches."""
    kwargs = dict(
        data_root=str(root),
        category="widget",
        image_size=64,
        crop_size=32,
        patch_size=16,
        move_step=6,
        episode_length=8,
        ae_batch_size=8,
        pretrain_epochs=1,
        predictor_warmup_updates=2,
        predictor_freeze_steps=12,
        feedback_start_steps=20,
        beta_decay_steps=50,
        alpha_decay_updates=10,
        k_shot=2,
        normal_pool=3,
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    write_mvtec_tree(path, n_train=6, n_test_good=4, defects={"scratch": 5, "hole": 5}, size_hw=(64, 64))
    return path


@pytest.fixture
def env(root: Path) -> MVTecPatchEnv:
    return MVTecPatchEnv(render_mode="rgb_array", **small_kwargs(root))


def rollout(env: gym.Env, seed: int, actions: list[int]) -> tuple[list[np.ndarray], list[float], list[bool], list[dict]]:
    obs, _ = env.reset(seed=seed)
    observations, rewards, dones, infos = [obs], [], [], []
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        observations.append(obs)
        rewards.append(reward)
        dones.append(terminated or truncated)
        infos.append(info)
        if terminated or truncated:
            obs, _ = env.reset()
            observations.append(obs)
    return observations, rewards, dones, infos


def test_gymnasium_and_sb3_checkers(root: Path, env: MVTecPatchEnv) -> None:
    gym_check_env(gym.make("MVTecPatch-v0", render_mode="rgb_array", **small_kwargs(root)).unwrapped, skip_render_check=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env, warn=True)
    unexpected = [
        str(w.message)
        for w in caught
        if "image" not in str(w.message).lower()
        and "bounds" not in str(w.message).lower()
        and "dtype" not in str(w.message).lower()
    ]
    assert not unexpected, unexpected


def test_make_by_id(root: Path) -> None:
    for env_id in ("MVTecPatch-v0", "envs:MVTecPatch-v0"):
        env = gym.make(env_id, **small_kwargs(root))
        assert env.observation_space.shape == (6, 32, 32)
        assert env.action_space.n == 9
        assert env.unwrapped.detector.config.patch_size == 16


def test_observation_layout(env: MVTecPatchEnv, root: Path) -> None:
    obs, info = env.reset(seed=0)
    assert obs.shape == (6, 32, 32) and obs.dtype == np.float32
    assert 0.0 <= obs.min() and obs.max() <= 1.0
    cy, cx = env.center
    rgb = env.train_images[env.image_index, cy - 16 : cy + 16, cx - 16 : cx + 16].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(obs[:3], rgb, atol=1e-6)  # channels 1-3: RGB, channel-first
    small = MVTecPatchEnv(**small_kwargs(root, observation="rgb_history"))
    assert small.reset(seed=0)[0].shape == (4, 32, 32)


def test_same_seed_same_actions_same_trajectory(root: Path) -> None:
    actions = np.random.default_rng(1).integers(0, 9, size=50).tolist()
    a = rollout(MVTecPatchEnv(**small_kwargs(root)), 3, actions)
    b = rollout(MVTecPatchEnv(**small_kwargs(root)), 3, actions)
    assert a[1] == b[1] and a[2] == b[2]
    for x, y in zip(a[0], b[0]):
        np.testing.assert_array_equal(x, y)
    assert any(info["pred_loss"] == info["pred_loss"] for info in a[3])  # the predictor trained (not NaN)


@pytest.mark.parametrize("action", range(8))
def test_moves_clamp_at_every_edge(env: MVTecPatchEnv, action: int) -> None:
    env.reset(seed=0)
    half, size, step = 16, 64, 6
    edges = [
        (half, half),
        (half, size - half),
        (size - half, half),
        (size - half, size - half),
        (half, 32),
        (32, half),
        (size - half, 32),
        (32, size - half),
        (32, 32),
        (half + 2, size - half - 3),
    ]
    for center in edges:
        env.center = center
        obs, *_ = env.step(action)
        dy, dx = MOVES[action]
        expected = (
            int(np.clip(center[0] + dy * step, half, size - half)),
            int(np.clip(center[1] + dx * step, half, size - half)),
        )
        assert env.center == expected
        assert obs.shape == (6, 32, 32)
        y, x = env.last_patch_corner
        assert 0 <= y and y + 16 <= size and 0 <= x and x + 16 <= size


def test_skip_takes_no_patch_and_jumps(env: MVTecPatchEnv) -> None:
    env.reset(seed=0)
    history = env.history.copy()
    buffered = len(env.patch_buffer)
    _, _, _, _, info = env.step(SKIP)
    assert np.array_equal(env.history, history) and len(env.patch_buffer) == buffered
    assert info["r_clone"] == 0.0 and info["r_cover"] == 0.0 and info["patch"] is None


def test_history_increments_exactly_over_the_patch(env: MVTecPatchEnv) -> None:
    env.reset(seed=0)
    env.center = (32, 32)
    before = env.history.copy()
    env.step(3)  # east
    diff = env.history.astype(int) - before.astype(int)
    y, x = env.last_patch_corner
    expected = np.zeros_like(diff)
    expected[env.image_index, y : y + 16, x : x + 16] = 1
    np.testing.assert_array_equal(diff, expected)
    env.center = (32, 32)
    _, _, _, _, info = env.step(3)  # the same patch again: history n/(n+1) = 0.5 under all of it
    assert info["r_cover"] == pytest.approx(-0.5)


def test_reward_equals_formula_from_info(env: MVTecPatchEnv) -> None:
    _, rewards, _, infos = rollout(env, 0, np.random.default_rng(0).integers(0, 9, 60).tolist())
    for reward, info in zip(rewards, infos):
        formula = info["beta"] * (info["r_clone"] + info["r_cover"]) + (1 - info["beta"]) * info["r_pred"]
        assert reward == pytest.approx(formula, abs=1e-6)
        assert 0.0 <= info["r_clone"] <= 1.0 and -1.0 <= info["r_cover"] <= 0.0 and -1.0 <= info["r_pred"] <= 0.0


def test_beta_alpha_schedules_feedback_flag_and_frozen_predictor(env: MVTecPatchEnv) -> None:
    env.reset(seed=0)
    updates_after_warmup = env.detector.predictor_updates
    infos = [env.step(int(a))[4] for a in np.random.default_rng(0).integers(0, 8, 60)]
    by_step = {info["global_step"]: info for info in infos}
    assert by_step[0]["beta"] == pytest.approx(1.0)
    assert by_step[25]["beta"] == pytest.approx(0.5)
    assert by_step[45]["beta"] == pytest.approx(0.15)  # floor: 1 - 45/50 = 0.1 < 0.15
    assert [i["rl_feedback"] for i in infos[:20]] == [False] * 20 and all(i["rl_feedback"] for i in infos[20:])
    # AE updates every 8 patches (steps 7, 15, ...); the predictor is frozen before step 12
    assert by_step[7]["pred_loss"] == by_step[0]["pred_loss"]
    assert env.detector.predictor_updates > updates_after_warmup
    n = env.detector.predictor_updates
    assert env.detector.alpha == pytest.approx(max(0.15, 1.0 - (1.0 - 0.15) * n / 10))
    assert infos[-1]["pred_lr"] == env.detector.pred_lr > 0  # the predictor's rate, for TensorBoard's env/pred_lr


def test_bad_kwargs_name_the_kwarg(root: Path) -> None:
    cases = {
        "observation": dict(observation="depth"),
        "patch_size": dict(patch_size=48),
        "crop_size": dict(crop_size=128),
        "even": dict(crop_size=33),
        "device": dict(device="cuda:99"),
        "k_shot": dict(k_shot=0),
        "unknown": dict(crop=3),
    }
    for name, override in cases.items():
        with pytest.raises(ValueError, match=name if name != "unknown" else "unknown MVTecPatch-v0 kwarg"):
            MVTecPatchEnv(**small_kwargs(root, **override))


def test_seeded_reset_restarts_the_training_process(env: MVTecPatchEnv) -> None:
    actions = np.random.default_rng(4).integers(0, 9, 40).tolist()
    first = rollout(env, 9, actions)  # trains the AE and the predictor (AE updates every 8 patches)
    assert env.detector.ae_updates > 0 and env.history.any()
    second = rollout(env, 9, actions)  # the same env: a seeded reset returns to the warmed-up state
    assert first[1] == second[1]
    for x, y in zip(first[0], second[0]):
        np.testing.assert_array_equal(x, y)
    env.reset()  # an unseeded reset continues
    assert env.global_step == 40


def test_state_from_another_config_is_refused(env: MVTecPatchEnv, root: Path, tmp_path: Path) -> None:
    env.reset(seed=0)
    env.save_state(tmp_path / "env.pt")
    other = MVTecPatchEnv(**small_kwargs(root, seed=5))
    with pytest.raises(ValueError, match="seed=0"):
        other.load_state(tmp_path / "env.pt")


def test_render_and_state_roundtrip(env: MVTecPatchEnv, root: Path, tmp_path: Path) -> None:
    actions = np.random.default_rng(2).integers(0, 9, 40).tolist()
    rollout(env, 0, actions[:20])
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (64, 192, 3)
    env.save_state(tmp_path / "env.pt")
    other = MVTecPatchEnv(**small_kwargs(root))
    other.load_state(tmp_path / "env.pt")
    for e in (env, other):
        e.image_index, e.center = 0, (32, 32)
        e.np_random = np.random.default_rng(5)
    np.testing.assert_array_equal(env._observation(), other._observation())
    assert other.global_step == env.global_step
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        other.load_state(tmp_path / "bad.pt")


def test_default_make_uses_embedded_category(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLBS_CACHE", str(tmp_path))
    env = gym.make("MVTecPatch-v0")
    assert env.observation_space.shape == (6, 128, 128)
    assert env.unwrapped.category.name == "synthetic_texture"
