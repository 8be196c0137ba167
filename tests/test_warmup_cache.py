"""The warm-up cache: a cached warm-up leaves the env, and the run after it, exactly as a computed one does; runs that
differ only in the sampler's settings share an entry; anything the warm-up reads changes the key; a bad entry is
computed again."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from envs import warmup_cache
from envs.mvtec_patch import MVTecPatchEnv
from tests.conftest import write_mvtec_tree
from tests.test_env import small_kwargs


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    write_mvtec_tree(path, size_hw=(64, 64))
    return path


def run(root: Path, cache: Path | None, steps: int = 24, **overrides) -> tuple[MVTecPatchEnv, list[float], dict]:
    """Seed as train.py does, warm up, take ``steps`` fixed actions; the rewards and the detector's final state (and,
    on the env, the global streams right after the warm-up)."""
    np.random.seed(0)
    torch.manual_seed(0)
    env = MVTecPatchEnv(warmup_cache=cache, **small_kwargs(root, **overrides))
    env.warm_up()
    env.after_warm_up = (torch.get_rng_state(), np.random.get_state()[1].copy())  # type: ignore[attr-defined]
    env.reset(seed=0)
    rewards = [env.step(a % 9)[1] for a in range(steps)]
    return env, rewards, env.detector.state_dict()


def assert_same_state(a: dict, b: dict) -> None:
    for name in ("ae", "predictor"):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key} differs"


def test_cached_warm_up_gives_the_computed_run_bit_for_bit(root: Path, tmp_path: Path) -> None:
    plain_env, plain_rewards, plain_state = run(root, None)
    first_env, first_rewards, _ = run(root, tmp_path)
    entries = list(tmp_path.glob("*.pt"))
    assert len(entries) == 1 and entries[0].name.startswith("widget-seed0-")
    cached_env, cached_rewards, cached_state = run(root, tmp_path)
    assert plain_rewards == first_rewards == cached_rewards
    assert_same_state(plain_state, cached_state)
    assert np.array_equal(plain_env.fused, cached_env.fused)
    assert plain_env.clone_scale == cached_env.clone_scale and plain_env.residual_scale == cached_env.residual_scale
    assert torch.equal(plain_env.after_warm_up[0], cached_env.after_warm_up[0])  # the global streams continue alike
    assert np.array_equal(plain_env.after_warm_up[1], cached_env.after_warm_up[1])


def test_the_sampler_settings_share_an_entry_and_the_detector_settings_do_not(root: Path, tmp_path: Path) -> None:
    def key(**overrides) -> str:
        np.random.seed(0)
        torch.manual_seed(0)
        return warmup_cache.warmup_key(MVTecPatchEnv(**small_kwargs(root, **overrides)))

    base = key()
    assert key(reward="defect_avoid", beta_decay_steps=7, move_step=3, crop_size=48, observation="rgb_history") == base
    changes = ({"seed": 1}, {"pretrain_epochs": 2}, {"predictor_warmup_updates": 3}, {"k_shot": 1}, {"patch_size": 8})
    for changed in (*changes, {"contamination": 0.2}, {"detector": {"lr": 5e-4}}):
        assert key(**changed) != base, changed


@pytest.mark.parametrize("damage", ["truncate", "foreign"])
def test_a_bad_entry_is_computed_again_and_replaced(
    root: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, plain_rewards, plain_state = run(root, None)
    run(root, tmp_path)
    (entry,) = tmp_path.glob("*.pt")
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:100])
    else:
        torch.save({"format": warmup_cache.FORMAT, "key": "0" * 64}, entry)
    with caplog.at_level(logging.WARNING):
        _, rewards, state = run(root, tmp_path)
    assert "not used" in caplog.text and entry.name in caplog.text
    assert rewards == plain_rewards
    assert_same_state(plain_state, state)
    _, again, _ = run(root, tmp_path)  # the entry was replaced by a good one
    assert again == plain_rewards


def test_an_entry_runs_no_code(root: Path, tmp_path: Path) -> None:
    run(root, tmp_path)
    (entry,) = tmp_path.glob("*.pt")

    class Payload:
        def __reduce__(self):
            return (Path(tmp_path / "ran").touch, ())

    torch.save({"format": warmup_cache.FORMAT, "payload": Payload()}, entry)
    run(root, tmp_path)
    assert not (tmp_path / "ran").exists()


def test_train_py_pays_the_warm_up_once_per_seed_and_gives_the_uncached_run(tmp_path: Path) -> None:
    import train
    from tests.test_train import run_args

    data = tmp_path / "data"
    write_mvtec_tree(data, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    cache = tmp_path / "cache"
    no_cache = ["--no-warmup-cache", "--no-evaluate"]
    assert train.main(run_args(data, tmp_path / "plain", "reinforce", 32, *no_cache)) == 0
    assert not cache.exists()
    for algo in ("reinforce", "random", "reinforce"):  # the first writes the entry, the others read it
        assert train.main(run_args(data, tmp_path / "cached", algo, 32, "--warmup-cache", str(cache), "--no-evaluate")) == 0
    assert len(list(cache.glob("*.pt"))) == 1
    plain = (tmp_path / "plain" / "reinforce" / "MVTecPatch-v0_1" / "detector.pt").read_bytes()
    for n in (1, 2):
        assert (tmp_path / "cached" / "reinforce" / f"MVTecPatch-v0_{n}" / "detector.pt").read_bytes() == plain
