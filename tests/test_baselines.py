"""The paper's baselines: U-Net and VQ-VAE-2 trainers, their runs through train.py / evaluate.py, and compare.py cells."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

import evaluate
import train
from envs.data import load_data
from models.baselines import (
    BASELINES,
    Baseline,
    UNetBaseline,
    UNetBaselineConfig,
    VQVAE2Baseline,
    VQVAE2BaselineConfig,
    build_baseline,
)
from models.unet import UNet, UNetConfig
from models.vqvae2 import VQVAE2Config
from tests.conftest import write_mvtec_tree

TINY = {
    "unet": ["net:{'width': 4, 'levels': 2}", "crop_size:32", "batch_size:4", "alpha_decay_updates:4"],
    "vqvae2": ["net:{'hidden': 8, 'res_channels': 4, 'embed_dim': 4, 'n_codes': 16}", "crop_size:32", "batch_size:4"],
}


def tiny_settings(method: str) -> dict:
    """TINY[method] as a variant's ``hyperparams`` mapping (what --hyperparams makes of it)."""
    from agents.run_config import parse_value

    return {key: parse_value(value) for key, value in (item.split(":", 1) for item in TINY[method])}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mvtec_tree(root, n_train=6, n_test_good=6, defects={"scratch": 6, "hole": 6}, size_hw=(64, 64))
    return root


def run_args(data_root: Path, logs: Path, method: str, updates: int = 8, *extra: str) -> list[str]:
    return [
        "--method",
        method,
        "-n",
        str(updates),
        "--seed",
        "1",
        "-f",
        str(logs),
        "--data-root",
        str(data_root),
        "--category",
        "widget",
        "--image-size",
        "64",
        "--k-shot",
        "2",
        "--env-kwargs",
        "normal_pool:3",
        "--eval-freq",
        "4",
        "--save-freq",
        "4",
        "--no-progress",
        "-v",
        "0",
        "--hyperparams",
        *TINY[method],
        *extra,
    ]


@pytest.fixture(scope="module", params=list(BASELINES))
def baseline_run(request: pytest.FixtureRequest, data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    logs = tmp_path_factory.mktemp("logs")
    assert train.main(run_args(data_root, logs, request.param)) == 0
    return logs / request.param / "MVTecPatch-v0_1"


def separable_set(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy images, each with a bright square (its mask) in half of them: separable by brightness alone."""
    rng = np.random.default_rng(seed)
    images = rng.integers(20, 80, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), bool)
    for i in range(0, n, 2):
        y, x = rng.integers(0, size - 8, 2)
        masks[i, y : y + 8, x : x + 8] = True
        images[i][masks[i]] = 230
    return images, masks


class Split:
    def __init__(self, n: int, labelled: int) -> None:
        self.labelled, self.normal_pool, self.train = np.arange(labelled), np.arange(labelled, n), np.arange(n)

    def known_masks(self, masks: np.ndarray, indices: np.ndarray) -> np.ndarray:
        return masks[indices]  # no contaminated images: every mask is known


# ---------------------------------------------------------------------------------------------- networks and trainers
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 64, 48)])
def test_unet_keeps_the_resolution_and_reaches_every_weight(shape: tuple[int, ...]) -> None:
    net = UNet(UNetConfig(width=4, levels=3))
    logits = net(torch.rand(shape))
    assert logits.shape == (shape[0], 1, *shape[2:])
    logits.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 3, 36, 32))
    with pytest.raises(ValueError, match="norm"):
        UNetConfig(norm="layer")


def test_unet_learns_a_separable_case() -> None:
    images, masks = separable_set(16)
    config = UNetBaselineConfig(
        net=UNetConfig(width=8, levels=2), batch_size=8, crop_size=0, max_shift=4, map_smoothing_sigma=0
    )
    trainer = UNetBaseline(config, images, masks, seed=0)
    trainer.fit(60)
    test_images, test_masks = separable_set(8, seed=1)
    maps = trainer.anomaly_map(test_images)
    assert maps.shape == test_masks.shape and maps.dtype == np.float32
    assert roc_auc_score(test_masks.ravel(), maps.ravel()) > 0.9


def test_vqvae2_trainer_uses_its_codebooks_and_its_loss_falls() -> None:
    images, _ = separable_set(8)
    net = VQVAE2Config(hidden=16, res_channels=8, embed_dim=8, n_codes=32)
    config = VQVAE2BaselineConfig(net=net, crop_size=0, batch_size=4)
    trainer = VQVAE2Baseline(config, images, seed=0)
    history = trainer.fit(40)
    assert history[-1]["codes_top"] > 1 and history[-1]["codes_bottom"] > 1
    assert np.mean([h["recon_loss"] for h in history[-5:]]) < 0.5 * history[0]["recon_loss"]
    assert trainer.anomaly_map(images[:2]).shape == (2, 32, 32)


@pytest.mark.parametrize("method", list(BASELINES))
def test_same_seed_same_training_and_resume_is_exact(method: str, tmp_path: Path) -> None:
    images, masks = separable_set(8)
    settings = {"unet": {"net": {"width": 4, "levels": 2}, "crop_size": 16}, "vqvae2": {"net": {"hidden": 8}, "crop_size": 16}}
    settings[method].update(batch_size=2, map_smoothing_sigma=0)

    def build() -> Baseline:
        return build_baseline(method, settings[method], 3, images, masks, Split(8, 4))

    straight, resumed = build(), build()
    straight.fit(6)
    resumed.fit(3)
    resumed.save(tmp_path / "trainer.pt")
    again = build()
    again.load_weights(tmp_path / "trainer.pt")
    again.fit(3)
    for a, b in zip(straight.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(a, b)
    assert again.updates == 6
    inference_only = build_baseline(method, settings[method], 3)
    inference_only.load_weights(tmp_path / "trainer.pt")
    np.testing.assert_array_equal(inference_only.anomaly_map(images[:2]), resumed.anomaly_map(images[:2]))


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    unet = build_baseline("unet", {"net": {"width": 4, "levels": 2}})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        unet.load_weights(bad)
    vq = build_baseline("vqvae2", {"net": {"hidden": 8}})
    vq.save(tmp_path / "vq.pt")
    with pytest.raises(ValueError, match="'vqvae2' state cannot load into a 'unet'"):
        unet.load_weights(tmp_path / "vq.pt")
    with pytest.raises(ValueError, match="unknown unet setting"):
        build_baseline("unet", {"widht": 4})
    with pytest.raises(ValueError, match="unknown unet net setting"):
        build_baseline("unet", {"net": {"widht": 4}})
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baseline("resnet", {})


def test_unet_trains_on_exactly_the_labelled_and_pool_files(data_root: Path) -> None:
    category, split = load_data(str(data_root), "widget", 64, k_shot=2, normal_pool=3, seed=1)
    trainer = build_baseline("unet", {"net": {"width": 4, "levels": 2}}, 1, category.images, category.masks, split)
    expected = np.sort(np.concatenate([split.labelled, split.normal_pool]))
    assert trainer._images is not None and len(trainer._images) == len(expected) == 2 * 2 + 3
    chw = torch.from_numpy(category.images[expected]).permute(0, 3, 1, 2)
    assert torch.equal(trainer._images, chw)
    record = split.to_dict(category)
    names = {category.relative_paths(expected)[i] for i in range(len(expected))}
    assert names == set(record["labelled"]) | set(record["normal_pool"])
    vq = build_baseline("vqvae2", {"net": {"hidden": 8}}, 1, category.images, category.masks, split)
    assert vq._images is not None and len(vq._images) == len(split.train) == 6  # train/good only


# ---------------------------------------------------------------------------------------------- train.py, evaluate.py
def test_baseline_run_writes_the_run_layout_and_evaluates(baseline_run: Path, tmp_path: Path) -> None:
    for name in ("config.yml", "split.json", "detector.pt", "best_detector.pt", "metrics.json", "metrics.csv"):
        assert (baseline_run / name).is_file(), name
    for name in ("predictions.png", "roc.png", "pr.png", "checkpoints/trainer.pt"):
        assert (baseline_run / name).is_file(), name
    assert list((baseline_run / "tensorboard").rglob("events.out.tfevents.*"))
    config = yaml.safe_load((baseline_run / "config.yml").read_text())
    assert config["method"] == baseline_run.parent.name and "algo" not in config
    assert evaluate.main(["--run", str(baseline_run), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == config["method"]
    for key in ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "image_auroc"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_baseline_split_is_the_methods_split(baseline_run: Path, data_root: Path, tmp_path: Path) -> None:
    from tests.test_train import run_args as method_args

    assert train.main(method_args(data_root, tmp_path, "random", 16, "--no-evaluate")) == 0
    method_split = json.loads((tmp_path / "random" / "MVTecPatch-v0_1" / "split.json").read_text())
    assert json.loads((baseline_run / "split.json").read_text()) == method_split


def test_baseline_resume_and_bad_input(baseline_run: Path, data_root: Path, tmp_path: Path, capsys) -> None:
    method = baseline_run.parent.name
    assert train.main(["-i", str(baseline_run), "-n", "12", "--no-progress", "-v", "0", "--no-evaluate"]) == 0
    assert yaml.safe_load((baseline_run / "config.yml").read_text())["n_updates"] == 12
    state = torch.load(baseline_run / "checkpoints" / "trainer.pt", weights_only=True)
    assert state["updates"] == 12
    capsys.readouterr()
    for argv, message in (
        (["--method", "resnet"], "unknown method 'resnet'"),
        (["--method", method, "--algo", "ppo"], "trains no agent"),
        (run_args(data_root, tmp_path, method, 4, "--preset", "paper-long"), "unknown preset"),
        (run_args(data_root, tmp_path, method, 4, "--env-kwargs", "crop_size:32"), "do not apply"),
        (run_args(data_root, tmp_path, method, 4, "--hyperparams", "lr:-1"), "lr must be > 0"),
        (["-i", str(baseline_run), "--method", "unet"], "--method"),
    ):
        assert train.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err, err
    assert evaluate.main(["--run", str(baseline_run), "--method", "ae"]) == 2
    assert "no autoencoder" in capsys.readouterr().err
    (baseline_run / "checkpoints" / "trainer.pt").rename(tmp_path / "moved.pt")
    try:
        assert train.main(["-i", str(baseline_run)]) == 2
        assert "no checkpoint" in capsys.readouterr().err
    finally:
        (tmp_path / "moved.pt").rename(baseline_run / "checkpoints" / "trainer.pt")


# ---------------------------------------------------------------------------------------------- compare.py
def test_compare_runs_baseline_cells(data_root: Path, tmp_path: Path) -> None:
    from benchmarks import compare

    variants = tmp_path / "variants.yml"
    common = {"preset": "default", "n_timesteps": 4, "env_kwargs": {"image_size": 64, "k_shot": 2, "normal_pool": 3}}
    variants.write_text(
        yaml.safe_dump(
            {
                "tiny_unet": {"method": "unet", **common, "hyperparams": tiny_settings("unet")},
                "tiny_vq": {"method": "vqvae2", **common, "hyperparams": tiny_settings("vqvae2")},
            }
        )
    )
    argv = ["--data-root", str(data_root), "--categories", "widget", "--methods", "tiny_unet", "tiny_vq"]
    argv += ["--seeds", "0", "--variants", str(variants), "--out", str(tmp_path / "out"), "--threads", "1"]
    assert compare.main(argv) == 0
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("tiny_unet,widget,0,")
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| widget |" in table and "tiny_vq" in table
    assert compare.resolve_method("unet", {}, "default")[1] == {"method": "unet", "preset": "default"}
    with pytest.raises(ValueError, match="no AE-only"):
        compare.resolve_method("ae@tiny_unet", yaml.safe_load(variants.read_text()), "default")


# ---------------------------------------------------------------------------------------------- early stop at a plateau
def scripted_validation(f1: list[float]):
    """A stand-in for evaluate.validate whose pixel F1max follows ``f1``, one value per validation (then the last)."""
    calls: list[int] = []

    def validate(model, images, masks, labels):
        calls.append(model.updates)
        value = f1[min(len(calls), len(f1)) - 1]
        return {"pixel_f1max": value, "pixel_auroc": value}, np.zeros(masks.shape, np.float32)

    return validate, calls


@pytest.mark.parametrize(
    ("patience", "min_updates", "stops_at"),
    [(0, 0, 40), (2, 0, 16), (2, 20, 20), (3, 0, 20)],  # best at update 8 (0.3); evaluations every 4 updates
)
def test_plateau_stops_after_patience_evaluations_without_a_better_f1max(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patience: int, min_updates: int, stops_at: int
) -> None:
    validate, calls = scripted_validation([0.1, 0.3, 0.2, 0.25, 0.1, 0.2])
    monkeypatch.setattr(evaluate, "validate", validate)
    argv = run_args(data_root, tmp_path, "vqvae2", 40, f"patience:{patience}", f"min_updates:{min_updates}", "--no-evaluate")
    assert train.main(argv) == 0
    run = tmp_path / "vqvae2" / "MVTecPatch-v0_1"
    assert torch.load(run / "detector.pt", weights_only=True)["updates"] == stops_at
    assert calls[-1] == stops_at
    assert json.loads((run / "best_detector.json").read_text())["updates"] == 8
    config = yaml.safe_load((run / "config.yml").read_text())
    assert (config["patience"], config["min_updates"]) == (patience, min_updates)


def test_a_resumed_run_stops_at_the_same_plateau(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f1 = [0.1, 0.3, 0.2, 0.25, 0.1, 0.2]
    monkeypatch.setattr(evaluate, "validate", scripted_validation(f1)[0])
    assert train.main(run_args(data_root, tmp_path, "vqvae2", 12, "patience:2", "--no-evaluate")) == 0
    run = tmp_path / "vqvae2" / "MVTecPatch-v0_1"
    validate, calls = scripted_validation(f1[3:])  # the evaluations after update 12
    monkeypatch.setattr(evaluate, "validate", validate)
    assert train.main(["-i", str(run), "-n", "40", "--no-progress", "-v", "0", "--no-evaluate"]) == 0
    assert calls == [16]  # best at 8, read back from best_detector.pt: two evaluations without a gain
    assert torch.load(run / "detector.pt", weights_only=True)["updates"] == 16


def test_ctrl_c_or_a_kill_at_the_plateau_ends_where_the_uninterrupted_run_ends(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    f1 = [0.1, 0.3, 0.2, 0.25, 0.1, 0.2]  # best at 8; the plateau is found at 16
    argv = run_args(data_root, tmp_path, "vqvae2", 40, "patience:2")
    run = tmp_path / "vqvae2" / "MVTecPatch-v0_1"

    def validate_then_ctrl_c(at: int):
        validate, calls = scripted_validation(f1)

        def wrapped(model, images, masks, labels):
            result = validate(model, images, masks, labels)
            if model.updates == at:
                os.kill(os.getpid(), signal.SIGINT)
            return result

        return wrapped, calls

    # Ctrl-C during the validation at 12: a checkpoint, exit 130; -i continues to the plateau at 16
    validate, calls = validate_then_ctrl_c(12)
    monkeypatch.setattr(evaluate, "validate", validate)
    assert train.main([*argv, "--no-evaluate"]) == 130
    assert calls == [4, 8, 12] and not (run / "detector.pt").exists()
    monkeypatch.setattr(evaluate, "validate", scripted_validation(f1[3:])[0])
    assert train.main(["-i", str(run), "--no-progress", "-v", "0", "--no-evaluate"]) == 0
    assert torch.load(run / "detector.pt", weights_only=True)["updates"] == 16
    # Ctrl-C during the validation that finds the plateau: the run is over, it ends as if uninterrupted
    validate, calls = validate_then_ctrl_c(16)
    monkeypatch.setattr(evaluate, "validate", validate)
    other = tmp_path / "other"
    assert train.main([*run_args(data_root, other, "vqvae2", 40, "patience:2"), "--no-evaluate"]) == 0
    assert calls == [4, 8, 12, 16]
    assert torch.load(other / "vqvae2" / "MVTecPatch-v0_1" / "detector.pt", weights_only=True)["updates"] == 16
    # killed after that validation's checkpoint, before detector.pt: -i trains nothing more and validates nothing again
    (run / "detector.pt").unlink()
    validate, calls = scripted_validation([0.0])
    monkeypatch.setattr(evaluate, "validate", validate)
    assert train.main(["-i", str(run), "--no-progress", "-v", "0", "--no-evaluate"]) == 0
    assert calls == [] and torch.load(run / "detector.pt", weights_only=True)["updates"] == 16


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["patience:-1"], "patience=-1 is invalid"),
        (["min_updates:x"], "min_updates"),
        (["patience:2", "--eval-freq", "0"], "needs validation"),
    ],
)
def test_plateau_settings_are_checked(data_root: Path, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    assert train.main(run_args(data_root, tmp_path, "unet", 8, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "unet").exists()


# ---------------------------------------------------------------------------------------------- residual maps
def test_ssim_map_matches_its_definition_at_a_pixel() -> None:
    from models.residual import ssim_map

    rng = np.random.default_rng(0)
    x = rng.random((1, 1, 24, 24))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    got = ssim_map(torch.from_numpy(x), torch.from_numpy(y))[0, 0, 12, 9].item()
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()  # (11, 11), the window centred on (12, 9): rows 7..17, columns 4..14
    a, b = x[0, 0, 7:18, 4:15], y[0, 0, 7:18, 4:15]
    ma, mb = (w * a).sum(), (w * b).sum()
    va, vb, cab = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2, (w * a * b).sum() - ma * mb
    c1, c2 = 0.01**2, 0.03**2
    want = (2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    assert got == pytest.approx(want, abs=1e-9)
    assert torch.allclose(ssim_map(torch.from_numpy(x), torch.from_numpy(x)), torch.ones(1, 1, 24, 24, dtype=torch.float64))


def test_residual_maps_light_up_the_difference_and_reject_unknown_kinds() -> None:
    from models.residual import residual_map

    x = torch.full((1, 3, 32, 32), 0.5)
    recon = x.clone()
    recon[..., 10:20, 10:20] += torch.linspace(-0.2, 0.2, 10)  # a textured difference in one square
    for kind in ("l1", "l2", "ssim"):
        m = residual_map(x, recon, kind)  # (1, 32, 32)
        assert m.shape == (1, 32, 32)
        assert m[0, 12:18, 12:18].min() > m[0, :3, :3].max() + 1e-4, kind  # inside the square vs a far corner
    assert torch.allclose(residual_map(x, recon, "l2"), ((x - recon) ** 2).mean(1))
    with pytest.raises(ValueError, match="unknown residual"):
        residual_map(x, recon, "lpips")
    with pytest.raises(ValueError, match="map_residual"):
        VQVAE2BaselineConfig(map_residual="ssim3")


def test_learning_curves_read_a_runs_logs(baseline_run: Path, tmp_path: Path, capsys) -> None:
    from benchmarks import learning_curves

    scalars = learning_curves.read_scalars(baseline_run)
    steps = list(scalars["eval/pixel_auroc"][0])
    assert steps[:2] == [4, 8] and all(s % 4 == 0 for s in steps)  # validation every 4 updates (the run may be resumed)
    assert len(scalars["train/loss"][0]) >= 8
    assert learning_curves.main([str(baseline_run), "--out", str(tmp_path / "curves.png"), "--smooth", "3"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert "| 4 |" in out and "| 8 |" in out
    assert learning_curves.main([str(tmp_path)]) == 2  # no logs there
    assert "no TensorBoard logs" in capsys.readouterr().err
    runs = [tmp_path / "a" / "seed0", tmp_path / "a" / "seed1", tmp_path / "b" / "seed0"]
    for run in runs:
        run.mkdir(parents=True)
        (run / "config.yml").write_text("{}")
    assert learning_curves.find_runs([tmp_path, runs[0]]) == runs  # every run once, each by its config.yml
    assert learning_curves.labels(runs) == ["a/seed0", "a/seed1", "b/seed0"]  # distinct, where the last parts are not
    apart = [tmp_path / "x" / "tire" / "seed0", tmp_path / "y" / "grid" / "seed0"]  # alike again after they differ
    assert learning_curves.labels(apart) == ["x/tire/seed0", "y/grid/seed0"]
    means = learning_curves.running_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2)
    assert np.allclose(means, [1.0, 2.0, 4.0, 6.0])


def test_map_variants_rescore_a_trained_run(baseline_run: Path, tmp_path: Path, capsys) -> None:
    from benchmarks import map_variants

    assert evaluate.main(["--run", str(baseline_run), "--out", str(tmp_path)]) == 0
    reference = json.loads((tmp_path / "metrics.json").read_text())
    capsys.readouterr()
    assert map_variants.main(["--runs", str(baseline_run), "--variants", "map_smoothing_sigma=0.0"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[1]: line.split(" | ")[2:] for line in out.splitlines() if line.startswith(f"| {baseline_run}")}
    assert set(rows) == {"reference", "map_smoothing_sigma=0.0"}
    assert float(rows["reference"][0]) == pytest.approx(reference["pixel_auroc"], abs=1e-4)  # what evaluate.py scores
    assert float(rows["reference"][4]) == pytest.approx(reference["image_auroc"], abs=1e-4)  # image score: the maximum
    assert rows["reference"][:4] != rows["map_smoothing_sigma=0.0"][:4]  # unsmoothed maps score otherwise
    assert "map_smoothing_sigma=0.0: pixel_auroc" in out
    maps = np.zeros((2, 10, 10))
    maps[0, 0, :2] = 1.0  # two hot pixels: top 1% (one pixel) of 100 is 1.0
    maps[1] = 0.5
    assert list(map_variants.image_scores(maps, "top1pct")) == [1.0, 0.5]
    for bad, message in (("lr=1", "map_FIELD=VALUE"), ("map_nonsense=1", "no field 'map_nonsense'")):
        assert map_variants.main(["--runs", str(baseline_run), "--variants", bad]) == 2
        assert message in capsys.readouterr().err


def test_map_variants_try_another_vqvae2_residual(data_root: Path, tmp_path: Path, capsys) -> None:
    from benchmarks import map_variants

    assert train.main(run_args(data_root, tmp_path, "vqvae2", 4, "--no-evaluate")) == 0
    run = tmp_path / "vqvae2" / "MVTecPatch-v0_1"
    assert map_variants.main(["--runs", str(run), "--variants", "map_residual=ssim", "map_residual=l2"]) == 0
    out = capsys.readouterr().out
    assert "map_residual=ssim: pixel_auroc" in out and "map_residual=l2: pixel_auroc" in out
    assert map_variants.main(["--runs", str(run), "--variants", "map_residual=lpips"]) == 2
    assert "map_residual must be one of" in capsys.readouterr().err


def test_a_plateau_run_keeps_the_budget_run_it_passed_through(data_root: Path, tmp_path: Path) -> None:
    """budget/ of a run with an early stop is, file for file, the run that stops at min_updates: same best weights,
    same test metrics; compare reads it as the budget@ row with the snapshot's own CPU seconds."""
    from benchmarks import compare

    budget_logs = tmp_path / "budget"
    assert train.main(run_args(data_root, budget_logs, "unet", 12)) == 0
    budget_run = budget_logs / "unet" / "MVTecPatch-v0_1"

    variants = tmp_path / "variants.yml"
    protocol = {"image_size": 64, "k_shot": 2, "normal_pool": 3}
    settings = {**tiny_settings("unet"), "eval_freq": 4, "save_freq": 4, "min_updates": 12, "patience": 3}
    plateau = {"method": "unet", "preset": "plateau", "n_timesteps": 40, "env_kwargs": protocol, "hyperparams": settings}
    variants.write_text(yaml.safe_dump({"tiny_plateau": plateau}))
    argv = ["--data-root", str(data_root), "--categories", "widget", "--methods", "tiny_plateau", "budget@tiny_plateau"]
    argv += ["--seeds", "1", "--variants", str(variants), "--out", str(tmp_path / "out"), "--threads", "1"]
    assert compare.main(argv) == 0

    cell = json.loads((tmp_path / "out" / "cells" / "widget" / "tiny_plateau" / "seed1" / "result.json").read_text())
    snapshot = Path(cell["run"]) / "budget"
    ours, theirs = (torch.load(run / "best_detector.pt", weights_only=True) for run in (snapshot, budget_run))
    assert ours["updates"] == theirs["updates"] <= 12
    for key, value in theirs["net"].items():
        assert torch.equal(ours["net"][key], value), key
    assert yaml.safe_load((snapshot / "config.yml").read_text())["n_updates"] == 12
    assert "patience" not in yaml.safe_load((snapshot / "config.yml").read_text())
    expected = json.loads((budget_run / "metrics.json").read_text())
    rows = {row["variant"]: row for row in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert set(rows) == {"tiny_plateau", "budget@tiny_plateau"}
    snapshot_metrics = json.loads((snapshot / "metrics.json").read_text())
    for key in ("pixel_auroc", "pixel_f1max", "image_auroc"):
        assert snapshot_metrics[key] == expected[key], key
        assert float(rows["budget@tiny_plateau"][key]) == pytest.approx(expected[key], abs=1e-4), key  # the CSV's 4 places
    cost = json.loads((snapshot / "cost.json").read_text())
    assert float(rows["budget@tiny_plateau"]["cpu_seconds"]) == round(cost["cpu_seconds"] + cost["test_cpu_seconds"], 1)
    assert 0 < float(rows["budget@tiny_plateau"]["cpu_seconds"]) <= float(rows["tiny_plateau"]["cpu_seconds"])
    with pytest.raises(ValueError, match="early stop"):
        compare.resolve_method("budget@unet", {}, "default")
    with pytest.raises(ValueError, match="not a row of a run"):
        compare.resolve_method("best@unet", {}, "default")


def test_an_interrupted_grid_cell_continues_from_its_checkpoint(data_root: Path, tmp_path: Path) -> None:
    """A grid killed in the middle of a cell continues it with train.py -i on the next run: the same weights as an
    uninterrupted cell, and the killed attempt's CPU time counted (usage.json)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from agents.runs import TRAINER_CHECKPOINT
    from benchmarks import compare

    settings = tiny_settings("unet") | {"eval_freq": 200, "save_freq": 20}
    tiny = {"method": "unet", "preset": "default", "n_timesteps": 600, "hyperparams": settings}
    tiny["env_kwargs"] = {"image_size": 64, "k_shot": 2, "normal_pool": 3}
    variants = tmp_path / "variants.yml"
    variants.write_text(yaml.safe_dump({"tiny": tiny}))

    grid = ["--data-root", str(data_root), "--categories", "widget", "--methods", "tiny", "--seeds", "1"]
    grid += ["--variants", str(variants), "--threads", "1"]

    script = "import sys; from benchmarks import compare; compare.USAGE_POLL = 0.2; sys.exit(compare.main(sys.argv[1:]))"
    root = Path(compare.__file__).resolve().parents[1]
    command = [sys.executable, "-c", script, *grid, "--out", str(tmp_path / "out")]
    first = subprocess.Popen(command, cwd=root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cell = tmp_path / "out" / "cells" / "widget" / "tiny" / "seed1"
    checkpoint = cell / "logs" / "unet" / "MVTecPatch-v0_1" / TRAINER_CHECKPOINT
    deadline = time.monotonic() + 120
    while not checkpoint.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few polls of usage.json
    os.killpg(first.pid, signal.SIGKILL)  # the grid and, with it, the cell's train.py
    first.wait()
    assert checkpoint.is_file() and not (cell / "result.json").exists()
    killed = json.loads((cell / "usage.json").read_text())["attempts"]
    assert len(killed) == 1 and killed[0]["cpu_seconds"] > 0

    assert compare.main([*grid, "--out", str(tmp_path / "out")]) == 0
    result = json.loads((cell / "result.json").read_text())
    assert "-i" in result["command"] and len(result["attempts"]) == 2
    assert result["cpu_seconds"] == pytest.approx(sum(a["cpu_seconds"] for a in result["attempts"]), abs=0.11)
    assert "resumed from" in (cell / "train.log").read_text()

    assert compare.main([*grid, "--out", str(tmp_path / "again")]) == 0  # uninterrupted
    again = json.loads((tmp_path / "again" / "cells" / "widget" / "tiny" / "seed1" / "result.json").read_text())
    ours, theirs = (torch.load(Path(r["run"]) / "detector.pt", weights_only=True) for r in (result, again))
    assert ours["updates"] == theirs["updates"] == 600
    for key, value in theirs["net"].items():
        assert torch.equal(ours["net"][key], value), key


def test_a_budget_row_counts_the_attempts_before_its_snapshot(tmp_path: Path) -> None:
    """cost.json holds the CPU of the process that wrote the snapshot; attempts of the cell before that one add theirs,
    the attempts after it (which continued the plateau run) do not."""
    from benchmarks import compare

    run = tmp_path / "run"
    (run / "budget").mkdir(parents=True)
    metrics = {key: 0.5 for key in compare.METRICS}
    for folder in (run, run / "budget"):
        (folder / "metrics.json").write_text(json.dumps(metrics))
    (run / "budget" / "cost.json").write_text(json.dumps({"cpu_seconds": 10.0, "test_cpu_seconds": 2.0, "written": 150}))
    attempts = [
        {"started": 100, "cpu_seconds": 50.0},
        {"started": 140, "cpu_seconds": 30.0},
        {"started": 200, "cpu_seconds": 5.0},
    ]
    result = {"run": str(run), "seconds": 99.0, "cpu_seconds": 85.0, "attempts": attempts}
    row = compare.cell_row("widget", "budget@tiny", 0, result, "budget")
    assert row["cpu_seconds"] == 62.0 and np.isnan(row["seconds"])  # 50 (killed before) + 10 (up to it) + 2 (its test)
    assert compare.cell_row("widget", "tiny", 0, result, None)["cpu_seconds"] == 85.0
