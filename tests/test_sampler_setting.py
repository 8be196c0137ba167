"""The setting in which the sampler's choice matters: contaminated training images, a reward with per-patch credit,
the heuristic control and the recorded policy entropy (docs/design.md, "The sampler: does RL help?")."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger

import envs  # noqa: F401 - registers MVTecPatch-v0
import train
from agents import AGENTS, make_agent
from agents.callbacks import latest_checkpoint
from agents.entropy import ENTROPY_FILE, TAG, PolicyEntropyCallback
from agents.heuristic import HeuristicAgent, action_probabilities
from benchmarks import compare, tables
from envs.config import MVTecPatchConfig
from envs.mvtec import GOOD, TEST, TRAIN, load_category
from envs.mvtec_patch import SKIP, MVTecPatchEnv
from envs.split import SplitConfig, make_split, split_json
from models.baselines import UNetBaseline, VQVAE2Baseline, build_baseline
from models.detector import build_detector
from models.detector.config import DetectorConfig
from tests.conftest import write_mvtec_tree
from tests.fake_env import FakeImageEnv
from tests.test_agents import TINY, RecordingWriter, RecordLocals
from tests.test_env import small_kwargs
from tests.test_train import SMALL_ENV

LN9 = math.log(9)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'widget': 20 normal training images, 12 scratches and 9 holes (room for contamination), 32 px."""
    path = tmp_path_factory.mktemp("data")
    write_mvtec_tree(path, n_train=20, n_test_good=6, defects={"scratch": 12, "hole": 9}, size_hw=(32, 32))
    return path


@pytest.fixture(scope="module")
def category(root: Path):
    return load_category(root, "widget", 32)


# --- contamination: the split option ---------------------------------------------------------------------------------


def test_contamination_moves_unlabelled_defects_of_each_type_into_train_never_evaluated(category) -> None:
    split = make_split(category, SplitConfig(k_shot=5, normal_pool=4, contamination=0.2))
    moved = split.contaminated
    # 20% of the AE's images: round(0.2 * 20 / 0.8) = 5, shared by what each type can spare beyond the 2 it keeps
    # for evaluation (scratch 12 - 5 - 2 = 5, hole 9 - 5 - 2 = 2): 3.57 and 1.43 -> 4 and 1
    assert len(moved) == 5 and len(moved) / len(split.train) == pytest.approx(0.2)
    labels = [category.samples[i].label for i in moved]
    assert {label: labels.count(label) for label in set(labels)} == {"scratch": 4, "hole": 1}
    assert all(category.samples[i].split == TEST and category.samples[i].is_anomalous for i in moved)
    assert set(split.train) == set(category.indices(TRAIN, GOOD)) | set(moved)
    evaluated = set(split.val) | set(split.test)
    assert not set(moved) & (evaluated | set(split.labelled))
    every_defect = {i for d in category.defect_types for i in category.indices(TEST, d)}
    assert set(moved) | set(split.labelled) | (evaluated - set(category.indices(TEST, GOOD))) == every_defect
    assert split.summary(category)["counts"]["contaminated"] == 5
    assert json.loads(split_json(split, category))["contaminated"] == category.relative_paths(moved)


def test_contamination_is_seeded_and_nested_and_zero_leaves_the_split_unchanged(category) -> None:
    def split(seed: int, c: float):
        return make_split(category, SplitConfig(k_shot=5, normal_pool=4, seed=seed, contamination=c))

    assert split_json(split(0, 0.2), category) == split_json(split(0, 0.2), category)
    assert set(split(0, 0.2).contaminated) != set(split(1, 0.2).contaminated)
    assert set(split(0, 0.1).contaminated) < set(split(0, 0.2).contaminated)  # a larger c moves a superset
    # The records of the split without the option, as the protocol gave them before it existed
    digests = {0: "47325b30bbc50adf3dc0bab6c9c20b105ff71b31dbc0cce6b1c78e4aa9ab8b14"}
    digests[1] = "b28e4b4bc6367d640302581c5eeb9163332acb7c80e9fe237d9de57449314ea8"
    for seed, digest in digests.items():
        assert hashlib.sha256(split_json(split(seed, 0.0), category).encode()).hexdigest() == digest
        assert not split(seed, 0.0).contaminated.size


def test_a_reserve_gives_every_level_up_to_it_the_same_evaluation_images(category) -> None:
    def split(c: float, reserve: float = 0.25):
        return make_split(category, SplitConfig(k_shot=5, normal_pool=4, contamination=c, contamination_reserve=reserve))

    top = split(0.25)
    assert split_json(top, category) != split_json(split(0.25, 0.0), category)  # the option is recorded
    assert np.array_equal(top.train, split(0.25, 0.0).train) and np.array_equal(top.test, split(0.25, 0.0).test)
    previous: set[int] = set()
    for c in (0.0, 0.1, 0.2, 0.25):
        level = split(c)
        assert np.array_equal(level.val, top.val) and np.array_equal(level.test, top.test), c
        assert previous <= set(level.contaminated) <= set(top.contaminated)  # nested
        assert not set(level.contaminated) & (set(level.val) | set(level.test))
        previous = set(level.contaminated)
    assert not split(0.0).contaminated.size and np.array_equal(split(0.0).train, split(0.0, 0.0).train)
    assert len(split(0.0).test) < len(split(0.0, 0.0).test)  # the reserve is kept out of evaluation
    with pytest.raises(ValueError, match=r"^contamination_reserve=1.0 is invalid"):
        SplitConfig(contamination_reserve=1.0)


def test_a_vetted_normal_pool_holds_no_contaminated_image_and_changes_nothing_else(category) -> None:
    def split(vetted: bool):
        config = SplitConfig(k_shot=5, normal_pool=8, contamination=0.2, vetted_normal_pool=vetted)
        return make_split(category, config)

    plain, vetted = split(False), split(True)
    assert set(vetted.normal_pool) <= set(category.indices(TRAIN, GOOD)) and len(vetted.normal_pool) == 8
    for role in ("labelled", "train", "val", "test", "contaminated"):
        assert np.array_equal(getattr(plain, role), getattr(vetted, role)), role
    assert '"vetted_normal_pool": true' in split_json(vetted, category)
    assert "vetted_normal_pool" not in split_json(plain, category)  # a split without the option reads as before


def test_a_contaminated_image_is_unlabelled_for_the_predictor(category) -> None:
    """The normal pool is drawn from the contaminated training set, and a contaminated image in it has an empty mask."""
    split = make_split(category, SplitConfig(k_shot=5, normal_pool=25, contamination=0.2))  # the pool: all of train
    assert set(split.contaminated) <= set(split.normal_pool)
    pool = np.concatenate([split.labelled, split.normal_pool])
    assert category.masks[split.contaminated].any(axis=(1, 2)).all()  # they do have defects
    known = split.known_masks(category.masks, pool)
    assert not known[len(split.labelled) :].any() and known[: len(split.labelled)].any()
    detector = build_detector(DetectorConfig(patch_size=16, pretrain_epochs=0), category, split, seed=0)
    assert sorted(i for i, _ in detector._positives) == [i for i in range(len(split.labelled)) if known[i].any()]
    # the supervised baseline trains on the same files with the same masks; the unsupervised one on the AE's images
    unet = build_baseline("unet", {"crop_size": 16}, 0, category.images, category.masks, split)
    files = UNetBaseline.training_indices(split)
    assert unet._masks is not None and unet._masks[:, 0].any(axis=(1, 2)).tolist() == [i in split.labelled for i in files]
    assert set(VQVAE2Baseline.training_indices(split)) == set(split.train)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_a_contamination_out_of_range_is_a_one_line_error(value: float) -> None:
    for make in (lambda: MVTecPatchConfig(contamination=value), lambda: SplitConfig(contamination=value)):
        with pytest.raises(ValueError, match=r"^contamination=.* is invalid: expected a number in \[0, 1\)") as error:
            make()
        assert "\n" not in str(error.value)


def test_too_much_contamination_and_a_bad_reward_are_one_line_errors_of_the_dry_run(root: Path, capsys) -> None:
    base = ["--data-root", str(root), "--category", "widget", "--dry-run", "--env-kwargs"]
    assert train.main([*base, "contamination:0.6"]) == 2  # 30 images needed, 5 + 2 to spare
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: contamination=0.6 needs 30 defect images") and "has 7 to spare" in err
    assert "\n" not in err
    assert train.main([*base, "reward:coverage"]) == 2
    assert capsys.readouterr().err.strip() == "error: reward='coverage' is invalid: expected one of paper, defect_avoid"
    assert train.main([*base, "contamination:0.2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["contamination"] == 0.2 and summary["counts"]["contaminated"] == 5
    assert summary["per_type"]["contaminated"] == {"hole": 1, "scratch": 4}
    assert train.main(["--method", "vqvae2", *base, "contamination:0.2"]) == 0  # a baseline on the same split
    assert json.loads(capsys.readouterr().out)["counts"]["contaminated"] == 5


# --- the defect_avoid reward ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("envdata")
    write_mvtec_tree(path, n_train=6, n_test_good=4, defects={"scratch": 8, "hole": 8}, size_hw=(64, 64))
    return path


def paper_part(info: dict) -> float:
    return info["beta"] * (info["r_clone"] + info["r_cover"]) + (1.0 - info["beta"]) * info["r_pred"]


def test_the_defect_reward_credits_the_chosen_patch(env_root: Path) -> None:
    """Two moves from one state take patches the detector scores differently: their rewards differ by exactly that."""
    env = MVTecPatchEnv(**small_kwargs(env_root, reward="defect_avoid", contamination=0.1))
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))  # defect probability grows to the east
    env.detector.anomaly_map = lambda images: np.repeat(ramp[None], len(images), axis=0)  # type: ignore[method-assign]
    results = {}
    for action in (2, 3, SKIP):  # W, E, skip, each from the same state
        env.reset(seed=0)
        env.center = (32, 32)
        q = env.move_defect_probabilities()
        _, reward, _, _, info = env.step(action)
        results[action] = (reward, info, q)
    for action, (reward, info, q) in results.items():
        expected = q.mean() if action == SKIP else q[action]
        assert info["r_defect"] == pytest.approx(-expected)
        assert reward == pytest.approx(paper_part(info) + info["r_defect"])
    # 16 px patches at x = 32 -+ 6: the east patch's highest probability is column 45, the west one's column 33
    assert results[3][1]["r_defect"] == pytest.approx(-45 / 63) and results[2][1]["r_defect"] == pytest.approx(-33 / 63)
    assert results[3][0] - paper_part(results[3][1]) != pytest.approx(results[2][0] - paper_part(results[2][1]))


def test_the_patch_defect_diagnostic_is_the_ground_truth_share_of_the_patch(env_root: Path) -> None:
    env = MVTecPatchEnv(**small_kwargs(env_root, contamination=0.2))
    env.reset(seed=0)
    contaminated = int(np.flatnonzero(np.isin(env.split.train, env.split.contaminated))[0])
    mask = env.category.masks[env.split.train[contaminated]]  # (64, 64) bool, the defect of a contaminated image
    cy, cx = (int(v) for v in np.argwhere(mask).mean(axis=0).round())
    shares = {}
    for name, (index, center) in {"on the defect": (contaminated, (cy, cx)), "clean image": (0, (32, 32))}.items():
        env.image_index, env.center = index, (min(max(cy, 16), 48), min(max(cx - 6, 16), 48))
        if name == "clean image":
            env.center = center
        info = env.step(3)[4]  # east: the patch at the new centre
        y, x = env.last_patch_corner
        assert info["patch_defect"] == pytest.approx(env.category.masks[env.split.train[index], y : y + 16, x : x + 16].mean())
        shares[name] = info["patch_defect"]
    assert shares["on the defect"] > 0 and shares["clean image"] == 0.0  # index 0: a train/good image
    assert "patch_defect" not in env.step(SKIP)[4]  # no patch, no share


def test_the_defect_reward_reads_the_real_detector_once_per_version(env_root: Path) -> None:
    env = MVTecPatchEnv(**small_kwargs(env_root, reward="defect_avoid"))
    env.reset(seed=1)
    calls = []
    anomaly_map = env.detector.anomaly_map
    env.detector.anomaly_map = lambda images: calls.append(len(images)) or anomaly_map(images)  # type: ignore[method-assign]
    env._defect_cache = None
    for action in (0, 3, 1):  # three moves on one image, no AE update (8 patches per update)
        q = env.move_defect_probabilities()
        assert q.shape == (8,) and ((0.0 <= q) & (q <= 1.0)).all()
        _, _, _, _, info = env.step(action)
        assert info["r_defect"] == pytest.approx(-q[action])
    assert calls == [1]  # one map of one image: the cache holds while the image and the detector stay


def test_the_paper_reward_computes_no_map_and_adds_no_term(env_root: Path) -> None:
    env = MVTecPatchEnv(**small_kwargs(env_root))

    def no_map(images: np.ndarray) -> np.ndarray:
        raise AssertionError("the paper's reward computed an anomaly map")

    env.reset(seed=0)
    env.detector.anomaly_map = no_map  # type: ignore[method-assign]
    for action in (0, 3, SKIP, 5):
        _, reward, _, _, info = env.step(action)
        assert "r_defect" not in info and reward == pytest.approx(paper_part(info))


# --- the heuristic sampler -----------------------------------------------------------------------------------------


def test_the_heuristic_rules() -> None:
    q = np.array([0.0, 0.2, 0.6, 0.9, 0.1, 0.5, 0.51, 1.0])
    p = action_probabilities(q, "threshold", 0.5)
    assert np.allclose(p, np.array([1, 1, 0, 0, 1, 1, 0, 0, 1]) / 5)  # moves with q <= tau, and skip
    assert np.allclose(action_probabilities(np.ones(8), "threshold", 0.5), np.eye(9)[SKIP])  # nowhere to go: skip
    p = action_probabilities(q, "proportional", 0.5)
    assert np.allclose(p, np.append(1 - q, 1.0) / (9 - q.sum()))
    for rule in ("threshold", "proportional"):  # where nothing looks defective it is the uniform random sampler
        assert np.allclose(action_probabilities(np.zeros(8), rule, 0.5), np.full(9, 1 / 9))
    with pytest.raises(ValueError, match="rule='best' is invalid"):
        HeuristicAgent("CnnPolicy", FakeImageEnv(), rule="best")
    with pytest.raises(ValueError, match="tau=2.0 is invalid"):
        HeuristicAgent("CnnPolicy", FakeImageEnv(), tau=2.0)
    agent = make_agent("heuristic", gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="needs MVTecPatch-v0"):
        agent.learn(4)


def test_the_heuristic_follows_its_rule_and_logs_its_entropy() -> None:
    """The fake env's only defect-free move is the rewarded action: the threshold rule draws it or skip, half each."""
    record, entropy = RecordLocals(), PolicyEntropyCallback()
    agent = make_agent("heuristic", FakeImageEnv(episode_length=8, rewarded_action=3), seed=2)
    agent.learn(200, callback=[record, entropy])
    assert set(record.actions) == {3, SKIP} and 60 < record.actions.count(3) < 140
    assert entropy.final() == pytest.approx(math.log(2))
    random_entropy = PolicyEntropyCallback()
    make_agent("random", FakeImageEnv(), seed=2).learn(16, callback=random_entropy)
    assert random_entropy.final() == pytest.approx(LN9)


def heuristic_run(root: Path, logs: Path, tau: float) -> Path:
    argv = ["--algo", "heuristic", "-n", "32", "--seed", "1", "-f", str(logs), "--data-root", str(root)]
    argv += ["--category", "widget", "--eval-freq", "0", "--save-freq", "16", "--no-progress", "-v", "0", "--no-evaluate"]
    argv += ["--env-kwargs", *SMALL_ENV, "contamination:0.2", "reward:defect_avoid", "--hyperparams", f"tau:{tau}"]
    assert train.main(argv) == 0
    return logs / "heuristic" / "MVTecPatch-v0_1"


def test_the_heuristic_trains_through_train_py_and_follows_its_rule(env_root: Path, tmp_path: Path) -> None:
    """tau 0 allows no patch the detector scores above 0 (every one): the heuristic only skips, and the AE sees no
    patch; tau 1 allows every patch."""
    assert "heuristic" in AGENTS
    for tau, visited in ((0.0, False), (1.0, True)):
        run = heuristic_run(env_root, tmp_path / str(tau), tau)
        state = torch.load(latest_checkpoint(run / "checkpoints") / "env_state.pt", weights_only=True)
        assert bool(state["history"].sum() > 0) is visited, tau
        record = json.loads((run / ENTROPY_FILE).read_text())
        assert (record["policy_entropy"] == 0.0) is not visited and record["uniform"] == pytest.approx(LN9)


# --- the recorded policy entropy -----------------------------------------------------------------------------------


def test_the_policy_entropy_follows_a_learning_policy(tmp_path: Path) -> None:
    writer = RecordingWriter()
    path = tmp_path / ENTROPY_FILE
    callback = PolicyEntropyCallback(path, window=128, bin_steps=128)
    agent = make_agent("reinforce", FakeImageEnv(episode_length=8), seed=1, n_steps=16, learning_rate=1e-2, policy_kwargs=TINY)
    agent.set_logger(Logger(folder=None, output_formats=[writer]))
    agent.learn(512, callback=callback)
    first, last = callback.history[0][1], callback.history[-1][1]
    assert abs(first - LN9) < 0.05 and last < 1.0  # from near uniform to committed on the rewarded action
    assert any(TAG in dump for dump in writer.dumps)
    record = json.loads(path.read_text())
    assert record["policy_entropy"] == pytest.approx(np.mean([v for s, v in callback.history if s > 512 - 128]), abs=1e-6)
    assert [step for step, _ in record["curve"]] == [128, 256, 384, 512]


def test_compare_reads_the_final_entropy_into_its_row_and_table(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "ae_baseline").mkdir(parents=True)
    metrics = {k: 0.5 for k in tables.METRICS}
    for folder in (run, run / "ae_baseline"):
        (folder / "metrics.json").write_text(json.dumps(metrics))
    (run / ENTROPY_FILE).write_text(json.dumps({"policy_entropy": 1.234}))
    result = {"run": str(run), "seconds": 60.0}
    row = compare.cell_row("widget", "c10-reinforce-avoid", 0, result, sub_run=None)
    ae_row = compare.cell_row("widget", "ae@c10-reinforce-avoid", 0, result, sub_run="ae_baseline")
    assert row["policy_entropy"] == 1.234 and math.isnan(ae_row["policy_entropy"])
    table = compare.write_tables(tmp_path / "out", [row, ae_row], [row["variant"], ae_row["variant"]], ["widget"])
    assert "| entropy |" in table and "| 1.234 |" in table and "| - |" in table  # the AE-only row has none
    assert tables.read_rows(tmp_path / "out" / "results.csv")[0]["policy_entropy"] == 1.234
    assert "entropy" not in compare.write_tables(tmp_path / "out2", [ae_row], [ae_row["variant"]], ["widget"])


def test_entropy_curve_prefers_the_logged_policy_entropy(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from experiments import entropy_curve

    with SummaryWriter(str(tmp_path / "tensorboard" / "reinforce_1")) as writer:
        for step, value in ((64, 2.19), (128, 2.0)):
            writer.add_scalar(TAG, value, step)
            writer.add_scalar("train/entropy_loss", -value - 0.5, step)
    curve = entropy_curve.entropy_curve(tmp_path)
    assert [step for step, _ in curve] == [64, 128] and [value for _, value in curve] == pytest.approx([2.19, 2.0])


# --- the grid ------------------------------------------------------------------------------------------------------


def test_the_ablation_file_holds_the_sampler_grid() -> None:
    """Every sampler of the comparison at every contamination level, one variant each, differing from the default
    preset only in the algorithm, the contamination and the reward, every level with the same reserve (paired rows)."""
    variants = compare.load_variants(str(compare.ABLATION))
    default_env = variants["default"]["env_kwargs"]
    samplers = {
        "random": ("random", "paper"),
        "heuristic": ("heuristic", "defect_avoid"),
        "reinforce": ("reinforce", "paper"),
        "reinforce-avoid": ("reinforce", "defect_avoid"),
        "ppo-avoid": ("ppo", "defect_avoid"),
    }
    for level, c in (("c00", 0.0), ("c05", 0.05), ("c10", 0.1), ("c20", 0.2)):
        for sampler, (algo, reward) in samplers.items():
            _, spec, _ = compare.resolve_method(f"{level}-{sampler}", variants, "default")
            env = dict(spec["env_kwargs"])
            assert (spec["algo"], spec["preset"]) == (algo, "default")
            assert env.pop("contamination") == c and env.pop("reward", "paper") == reward
            assert env.pop("contamination_reserve") == 0.2
            per_step = (
                {"gamma": 0.0, "normalize_advantage": True, "learning_rate": 3e-4} if sampler == "reinforce-avoid" else {}
            )
            assert spec.get("hyperparams", {}) == per_step, f"{level}-{sampler}"
            assert env == default_env, f"{level}-{sampler}"


def test_vetted_predictor_data_keeps_contaminated_images_for_the_ae_alone(category) -> None:
    from models.detector import DetectorConfig, build_detector

    def split(vetted: bool):
        return make_split(category, SplitConfig(k_shot=5, normal_pool=8, contamination=0.2, vetted_predictor_data=vetted))

    plain, vetted = split(False), split(True)
    good = set(category.indices(TRAIN, GOOD))
    assert set(vetted.normal_pool) <= good and set(vetted.train_good) == good
    for role in ("labelled", "train", "val", "test", "contaminated"):
        assert np.array_equal(getattr(plain, role), getattr(vetted, role)), role
    assert '"vetted_predictor_data": true' in split_json(vetted, category)
    assert "vetted_predictor_data" not in split_json(plain, category)
    config = DetectorConfig(patch_size=16, synthetic_pool_size=4, synthetic_paste_fraction=0.0, global_components=2)
    detector = build_detector(config, category, vetted, seed=0)
    assert len(detector._require("train")) == len(vetted.train)  # the AE still trains on the contaminated images
    reference = detector._require("reference")
    assert len(reference) == len(good) < len(vetted.train)
    assert torch.equal(reference, torch.from_numpy(category.images[vetted.train_good]).permute(0, 3, 1, 2))
    assert build_detector(config, category, plain, seed=0)._reference is None  # the training images, as before


def test_the_synthetic_defects_and_the_global_residual_read_the_reference_images() -> None:
    from models.detector import Detector, DetectorConfig

    rng = np.random.default_rng(0)
    train = np.full((6, 32, 32, 3), 250, np.uint8)  # bright "training" images
    reference = rng.integers(0, 20, (5, 32, 32, 3), dtype=np.uint8)  # dark vetted ones
    pool = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 8:16, 8:16] = True
    config = DetectorConfig(
        patch_size=16, synthetic_pool_size=3, synthetic_paste_fraction=1.0, global_size=8, global_components=2
    )
    detector = Detector(config, train, pool, masks, seed=0, reference_images=reference)
    detector._make_synthetic()
    synthetic = detector._pred_images[2:]  # (3, 3, 32, 32): each a dark reference image with a pasted defect
    assert synthetic.float().median() < 40
    pca = detector._global()
    assert float(pca.mean.max()) < 20 / 255 + 1e-6  # fitted on the dark images, not the bright ones


def test_the_predictor_data_lever_runs_its_arms_from_one_warm_up(env_root: Path, tmp_path: Path, monkeypatch) -> None:
    """experiments.predictor_data_lever: the late arms start from the same warmed-up detector, the others train again;
    the oracles paste into train/good alone, the heuristics into all but the top-scored share; one JSON line per arm."""
    import yaml

    from experiments import predictor_data_lever

    env = {k: yaml.safe_load(v) for k, v in (pair.split(":", 1) for pair in SMALL_ENV)}
    env |= {"contamination": 0.2, "k_shot": 2, "normal_pool": 2, "detector": {"synthetic_pool_size": 4}}
    variants = tmp_path / "variants.yml"
    variants.write_text(yaml.safe_dump({"tiny": {"algo": "random", "n_timesteps": 32, "eval_freq": 16, "env_kwargs": env}}))
    monkeypatch.setenv("RLBS_CACHE", str(tmp_path / "cache"))
    seen = []  # (the env, the arm's paste targets) per arm
    score = predictor_data_lever.train_and_score

    def recording(env, detector, cycles, eval_every):
        seen.append((env, detector._require("reference").clone()))
        return score(env, detector, cycles, eval_every)

    monkeypatch.setattr(predictor_data_lever, "train_and_score", recording)
    log = tmp_path / "lever.jsonl"
    args = ["--data-root", str(env_root), "--category", "widget", "--variant", "tiny", "--variants", str(variants)]
    assert predictor_data_lever.main([*args, "--log", str(log), "--drop", "0.25"]) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["arm"] for r in rows] == ["random", "oracle", "vet", "reoracle", "revet", "vetted"]
    n, bad = rows[0]["targets"], rows[0]["contaminated_in_train"]
    assert bad > 0 and rows[1]["targets"] == n - bad and rows[2]["targets"] == n - round(0.25 * n)
    assert (rows[3]["targets"], rows[4]["targets"]) == (rows[1]["targets"], rows[2]["targets"])
    assert [len(targets) for _, targets in seen] == [r["targets"] for r in rows]
    env = seen[0][0]
    good = torch.from_numpy(env.category.images[env.split.train_good]).permute(0, 3, 1, 2)
    assert torch.equal(seen[0][1], torch.from_numpy(env.train_images).permute(0, 3, 1, 2))  # random: every image
    assert all(torch.equal(seen[i][1], good) for i in (1, 3, 5))  # the oracles: train/good alone
    assert set(seen[5][0].split.normal_pool) <= set(env.split.train_good)  # "vetted": the normal pool too
    assert torch.equal(seen[2][1], seen[4][1])  # the second pass pastes into what the first pass kept
    assert seen[3][0] is not env and seen[4][0] is not env  # a training of their own
    assert len({r["val_curve"][0] for r in rows[:3]}) == 1  # one warm-up: the same detector before the arms differ
    assert len(rows[0]["val_curve"]) == 3  # at 0, 16 and 32 steps (eval_freq / ae_batch_size = 2 cycles apart)
