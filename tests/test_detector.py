"""Tests of the Detector: training steps, profile cache, schedules, variants, checkpoints, reproducibility."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from models.autoencoder import AutoencoderConfig
from models.detector import Detector, DetectorConfig, ae_baseline_maps, close_maps
from models.predictor import PredictorConfig

SIZE = 32
Data = tuple[np.ndarray, np.ndarray, np.ndarray]  # train images, pool images, pool masks


def tiny_config(**overrides: object) -> DetectorConfig:
    """A detector that runs in milliseconds on 32x32 images."""
    base = DetectorConfig(
        patch_size=16,
        ae_batch_size=4,
        pred_batch_size=4,
        pred_crop_size=16,
        alpha_decay_updates=10,
        pretrain_epochs=2,
        predictor_warmup_updates=3,
        inference_batch_size=3,
        ae=AutoencoderConfig(widths=(8, 16), latent_channels=4),
        predictor=PredictorConfig(width=4),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def make_data(seed: int = 0, n_train: int = 10, n_pool: int = 6) -> Data:
    """Noise textures; the first half of the pool carries a bright 6x6 defect with its mask."""
    rng = np.random.default_rng(seed)
    train = rng.integers(60, 120, size=(n_train, SIZE, SIZE, 3), dtype=np.uint8)
    pool = rng.integers(60, 120, size=(n_pool, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((n_pool, SIZE, SIZE), dtype=bool)
    for i in range(n_pool // 2):
        y, x = rng.integers(0, SIZE - 6, size=2)
        masks[i, y : y + 6, x : x + 6] = True
        pool[i][masks[i]] = 250
    return train, pool, masks


@pytest.fixture
def data() -> Data:
    return make_data()


@pytest.fixture
def detector(data: Data) -> Detector:
    return Detector(tiny_config(), *data, seed=3)


# ---------------------------------------------------------------------- autoencoder side
def test_random_patches_shape_range_and_seed(data: Data) -> None:
    a, b, c = (Detector(tiny_config(), *data, seed=s) for s in (1, 1, 2))
    pa, pb, pc = a.random_patches(5), b.random_patches(5), c.random_patches(5)
    assert pa.shape == (5, 3, 16, 16) and pa.dtype == torch.float32
    assert 60 / 255 - 1e-6 <= pa.min() and pa.max() <= 120 / 255 + 1e-6
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_ae_update_lowers_the_loss_on_a_fixed_batch(detector: Detector) -> None:
    batch = detector.random_patches(4)
    losses = [detector.ae_update(batch) for _ in range(30)]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert detector.ae_updates == 30 and detector.ae_version == 30
    assert detector.last_ae_loss == losses[-1]


def test_loss_profiles_are_the_eval_mode_residual(detector: Detector, data: Data) -> None:
    _, pool, _ = data
    detector.ae_update(detector.random_patches(4))
    prof = detector.loss_profiles(pool)
    assert prof.shape == (len(pool), 3, SIZE, SIZE) and prof.dtype == torch.float32 and (prof >= 0).all()
    x = torch.from_numpy(pool).permute(0, 3, 1, 2).float() / 255
    detector.ae.eval()
    with torch.no_grad():
        expected = (x - detector.ae(x)).abs()
    assert torch.allclose(prof, expected, atol=1e-6)
    # torch inputs (uint8 or float, channel-first) give the same profiles
    assert torch.allclose(detector.loss_profiles(x), prof, atol=1e-6)
    assert torch.allclose(detector.loss_profiles(torch.from_numpy(pool).permute(0, 3, 1, 2)), prof, atol=1e-6)
    res = detector.residual_map(pool)
    assert res.shape == (len(pool), SIZE, SIZE) and res.dtype == np.float32
    assert np.allclose(res, prof.mean(1).numpy(), atol=1e-6)
    assert np.array_equal(ae_baseline_maps(detector, pool), res)


def test_pretrain_ae_counts_epochs_and_updates(data: Data) -> None:
    det = Detector(tiny_config(pretrain_patches_per_epoch=10), *data)
    history = det.pretrain_ae(epochs=3)
    assert len(history) == 3 and all(np.isfinite(history))
    assert det.ae_updates == 3 * 3  # ceil(10 patches / batch 4) updates per epoch
    det2 = Detector(tiny_config(), *data)  # default: one patch per training image (10) -> 3 updates
    assert len(det2.pretrain_ae()) == 2 and det2.ae_updates == 2 * 3


# ---------------------------------------------------------------------- profile cache and predictor
def test_refresh_profiles_recomputes_only_after_an_ae_change(detector: Detector) -> None:
    assert detector.pool_profiles is None
    assert detector.refresh_profiles() is True
    first = detector.pool_profiles
    assert first is not None and first.shape == (6, 3, SIZE, SIZE)
    assert detector.refresh_profiles() is False
    detector.predictor_update()  # uses the cache, does not touch the AE
    assert detector.refresh_profiles() is False and detector.pool_profiles is first
    detector.ae_update(detector.random_patches(4))
    assert detector.refresh_profiles() is True
    assert not torch.equal(detector.pool_profiles, first)
    assert detector.refresh_profiles() is False


def test_predictor_update_refreshes_and_counts(detector: Detector) -> None:
    loss = detector.predictor_update()
    assert np.isfinite(loss) and loss == detector.last_pred_loss
    assert detector.predictor_updates == 1 and detector.pool_profiles is not None
    detector.ae_update(detector.random_patches(4))
    version = detector.ae_version
    detector.predictor_update()
    assert detector.refresh_profiles() is False  # the update refreshed for the new AE version
    assert detector.ae_version == version


@pytest.mark.parametrize(
    "decay,updates,expected", [(10, 0, 1.0), (10, 5, 0.575), (10, 10, 0.15), (10, 25, 0.15), (0, 0, 1.0), (0, 500, 1.0)]
)
def test_alpha_schedule(data: Data, decay: int, updates: int, expected: float) -> None:
    det = Detector(tiny_config(alpha_decay_updates=decay), *data)
    det.predictor_updates = updates
    assert det.alpha == pytest.approx(expected)


def test_alpha_follows_real_predictor_updates(detector: Detector) -> None:
    detector.warmup_predictor(updates=4)
    assert detector.predictor_updates == 4
    assert detector.alpha == pytest.approx(1.0 - 0.4 * 0.85)


def test_positive_crops_contain_defects(data: Data) -> None:
    det = Detector(tiny_config(pred_positive_fraction=1.0, pred_crop_size=8), *data)
    det.refresh_profiles()
    _, y = det._sample_crops(40)
    assert y.shape == (40, 1, 8, 8)
    assert (y.flatten(1).sum(1) > 0).all()  # every crop holds defect pixels (jitter < half the 6-px defect + crop)
    det0 = Detector(tiny_config(pred_positive_fraction=0.0, pred_crop_size=8), *data)
    det0.refresh_profiles()
    _, y0 = det0._sample_crops(40)
    assert (y0.flatten(1).sum(1) == 0).any()  # uniform crops often miss a 6x6 defect


def test_anomaly_map_shape_range_and_batch_independence(detector: Detector, data: Data) -> None:
    _, pool, _ = data
    detector.fit_random(3)
    maps = detector.anomaly_map(pool)
    assert maps.shape == (6, SIZE, SIZE) and maps.dtype == np.float32
    assert (maps >= 0).all() and (maps <= 1).all()
    assert np.allclose(detector.anomaly_map(pool[2:3])[0], maps[2], atol=1e-5)
    assert detector.anomaly_map(pool[:0]).shape == (0, SIZE, SIZE)


def test_fused_maps(detector: Detector, data: Data) -> None:
    train, _, _ = data
    z = detector.fused_maps(train[:4])
    assert z.shape == (4, SIZE, SIZE) and z.dtype == np.float32
    assert np.allclose(z.min(axis=(1, 2)), 0.0, atol=1e-6) and np.allclose(z.max(axis=(1, 2)), 1.0, atol=1e-6)


# ---------------------------------------------------------------------- variants
def test_ae_reset_every_reinitialises(data: Data) -> None:
    det = Detector(tiny_config(ae_reset_every=3), *data)
    batch = det.random_patches(4)
    for _ in range(3):
        det.ae_update(batch)
    ae_before, opt_before = det.ae, det.ae_optimizer
    trained = [p.detach().clone() for p in det.ae.parameters()]
    det.ae_update(batch)  # the 4th update starts from fresh weights and a fresh optimiser
    assert det.ae is not ae_before and det.ae_optimizer is not opt_before
    steps = {int(s["step"]) for s in det.ae_optimizer.state.values()}
    assert steps == {1}
    moved = sum(float((p.detach() - q).abs().sum()) for p, q in zip(det.ae.parameters(), trained))
    assert moved > 1.0  # far from the trained weights: not merely one more Adam step
    for _ in range(2):
        det.ae_update(batch)
    ae_mid = det.ae
    det.ae_update(batch)  # update 7 -> reset again
    assert det.ae is not ae_mid and det.ae_updates == 7
    no_reset = Detector(tiny_config(), *data)
    ae0 = no_reset.ae
    for _ in range(7):
        no_reset.ae_update(batch)
    assert no_reset.ae is ae0


@pytest.mark.parametrize("K", [1, 2, 3])
def test_profile_stack(data: Data, K: int) -> None:
    _, pool, _ = data
    det = Detector(tiny_config(profile_stack=K), *data)
    first_conv = det.predictor.body[0]
    assert first_conv.in_channels == 3 * K and det.config.predictor.in_channels == 3 * K
    det.refresh_profiles()
    assert det.pool_profiles is not None
    stack0 = det.pool_profiles.clone()
    assert stack0.shape == (6, 3 * K, SIZE, SIZE)
    for k in range(1, K):  # the first refresh fills every slot with the current profile
        assert torch.equal(stack0[:, 3 * k : 3 * k + 3], stack0[:, :3])
    det.ae_update(det.random_patches(4))
    det.refresh_profiles()
    stack1 = det.pool_profiles
    assert stack1 is not None
    assert torch.allclose(stack1[:, -3:], det.loss_profiles(pool))
    if K > 1:
        assert torch.equal(stack1[:, :-3], stack0[:, 3:])  # rolled: oldest dropped
    assert np.isfinite(det.predictor_update())
    assert det.anomaly_map(pool).shape == (6, SIZE, SIZE)


# ---------------------------------------------------------------------- checkpoints and reproducibility
@pytest.mark.parametrize("K", [1, 2])
def test_save_load_resumes_exactly(tmp_path: Path, data: Data, K: int) -> None:
    _, pool, _ = data
    det = Detector(tiny_config(profile_stack=K), *data, seed=5)
    det.pretrain_ae(epochs=1)
    det.fit_random(3)
    det.ae_update(det.random_patches(4))  # leave the cache stale: the reloaded one must refresh the same way
    path = tmp_path / "ckpt" / "detector.pt"
    det.save(path)
    assert path.exists() and not list(path.parent.glob("*.tmp"))

    other = Detector(tiny_config(profile_stack=K), *data, seed=99)
    other.load_weights(path)
    assert np.array_equal(other.anomaly_map(pool), det.anomaly_map(pool))
    assert other.predictor_update() == det.predictor_update()  # same crops (RNG), optimiser state and alpha
    assert other.ae_update(other.random_patches(4)) == det.ae_update(det.random_patches(4))  # same dropout
    assert other.predictor_update() == det.predictor_update()
    assert (other.ae_updates, other.predictor_updates) == (det.ae_updates, det.predictor_updates)

    # inference-only rebuild from the file alone
    rebuilt = Detector.from_checkpoint(path)
    loaded = Detector(tiny_config(profile_stack=K), *data)
    loaded.load_weights(path)
    assert np.array_equal(rebuilt.anomaly_map(pool), loaded.anomaly_map(pool))
    with pytest.raises(RuntimeError, match="without train images"):
        rebuilt.random_patches(2)


def test_checkpoint_is_weights_only_loadable(tmp_path: Path, detector: Detector) -> None:
    detector.save(tmp_path / "d.pt")
    state = torch.load(tmp_path / "d.pt", weights_only=True)
    assert state["config"]["patch_size"] == 16 and isinstance(state["rng"], torch.Tensor)


def test_corrupt_or_wrong_checkpoint_raises_value_error(tmp_path: Path, detector: Detector) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        detector.load_weights(garbage)
    good = tmp_path / "good.pt"
    detector.save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.pt"):
        detector.load_weights(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt.*not a detector checkpoint"):
        Detector.from_checkpoint(foreign)
    with pytest.raises(ValueError, match="missing.pt"):
        detector.load_weights(tmp_path / "missing.pt")
    bigger = Detector(tiny_config(ae=AutoencoderConfig(widths=(8, 32), latent_channels=4)), *make_data())
    with pytest.raises(ValueError, match="good.pt.*ae config"):
        bigger.load_weights(good)


def test_a_checkpoint_with_other_predictor_inputs_of_the_same_width_is_refused(tmp_path: Path, data: Data) -> None:
    # (image,) and (profile,) both give the predictor 3 input channels: only the inputs differ
    Detector(tiny_config(predictor_inputs=("image",)), *data).save(tmp_path / "d.pt")
    other = Detector(tiny_config(predictor_inputs=("profile",)), *data)
    assert other.config.predictor.in_channels == 3
    with pytest.raises(ValueError, match="d.pt.*predictor_inputs"):
        other.load_weights(tmp_path / "d.pt")
    Detector(tiny_config(predictor_inputs=("profile", "image")), *data).save(tmp_path / "both.pt")
    same = Detector(tiny_config(predictor_inputs=("image", "profile")), *data)  # the order does not matter
    same.load_weights(tmp_path / "both.pt")


def test_same_seed_same_training_and_global_rng_untouched(data: Data) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = Detector(tiny_config(), *data, seed=7).fit_random(4)
    assert torch.equal(torch.rand(3), expected_next)  # init and dropout drew from the private generator
    b = Detector(tiny_config(), *data, seed=7).fit_random(4)
    c = Detector(tiny_config(), *data, seed=8).fit_random(4)
    assert a == b and a != c


# ---------------------------------------------------------------------- validation
def test_config_validation_and_round_trip() -> None:
    with pytest.raises(ValueError, match="pred_positive_fraction"):
        DetectorConfig(pred_positive_fraction=1.5)
    with pytest.raises(ValueError, match="multiple of the AE's total stride"):
        DetectorConfig(patch_size=60)
    with pytest.raises(ValueError, match="profile_stack"):
        DetectorConfig(profile_stack=0)
    with pytest.raises(ValueError, match="valid keys"):
        DetectorConfig.from_dict({"patch_sise": 64})
    cfg = tiny_config(profile_stack=2, fused_weights=(0.5, 0.25, 0.25))
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_data_raises(data: Data) -> None:
    train, pool, masks = data
    with pytest.raises(ValueError, match="pool_masks must have shape"):
        Detector(tiny_config(), train, pool, masks[:, :-1])
    with pytest.raises(ValueError, match="multiples of 4"):
        Detector(tiny_config(), train[:, :30, :30], pool, masks)
    with pytest.raises(ValueError, match="uint8"):
        Detector(tiny_config(), train.astype(np.float32), pool, masks)
    with pytest.raises(ValueError, match="given together"):
        Detector(tiny_config(), train, pool, None)


def test_predictor_learns_to_find_bright_defects() -> None:
    """End to end on a toy problem: the trained detector ranks defect pixels above normal ones."""
    train, pool, masks = make_data(seed=1, n_train=20, n_pool=8)
    det = Detector(tiny_config(pred_batch_size=8, alpha_decay_updates=0, lr=3e-3), train, pool, masks, seed=0)
    det.pretrain_ae(epochs=10)
    det.warmup_predictor(updates=60)
    _, test, test_masks = make_data(seed=2, n_pool=8)
    maps = det.anomaly_map(test)
    assert roc_auc_score(test_masks.ravel(), maps.ravel()) > 0.9


# ---------------------------------------------------------------------- options of the presets
def test_predictor_reads_the_image_when_asked(data: Data) -> None:
    det = Detector(tiny_config(predictor_inputs=("profile", "image")), *data, seed=0)
    assert det.predictor.config.in_channels == 6
    assert det.config.predictor.in_channels == 6
    det.predictor_update()
    assert det.anomaly_map(data[1]).shape == (len(data[1]), SIZE, SIZE)
    only_image = Detector(tiny_config(predictor_inputs=("image",)), *data, seed=0)
    assert only_image.predictor.config.in_channels == 3
    with pytest.raises(ValueError, match="predictor_inputs"):
        DetectorConfig(predictor_inputs=("profile", "rgb"))


def test_map_smoothing_spreads_and_lowers_a_single_spike(data: Data) -> None:
    raw = Detector(tiny_config(), *data, seed=0)
    smooth = Detector(tiny_config(map_smoothing_sigma=2.0), *data, seed=0)
    a, b = raw.anomaly_map(data[1]), smooth.anomaly_map(data[1])
    assert a.shape == b.shape
    assert float(b.std()) < float(a.std())  # smoothing removes pixel-level noise
    assert abs(float(a.mean()) - float(b.mean())) < 0.01  # and keeps the level
    with pytest.raises(ValueError, match="map_smoothing_sigma"):
        DetectorConfig(map_smoothing_sigma=-1)


def test_closing_fills_the_inside_of_a_lit_edge_and_never_lowers_a_score() -> None:
    maps = np.zeros((2, 64, 64), dtype=np.float32)
    maps[0, 20:44, 20:44] = 1.0
    maps[0, 24:40, 24:40] = 0.0  # a 16-pixel hole inside a lit ring, as the predictor marks a large defect's edge only
    maps[1, 30, 30] = 1.0  # a lone lit pixel: no second lit pixel to close towards
    np.testing.assert_array_equal(close_maps(maps, 0), maps)  # 0: off
    small, wide = close_maps(maps, 9), close_maps(maps, 25)
    assert (small >= maps).all() and (wide >= maps).all()  # extensive: closing only raises
    assert small[0, 32, 32] == 0.0 and wide[0, 32, 32] == 1.0  # a disc wider than the hole fills it
    assert wide[0, 5, 5] == 0.0 and wide[0, 32, 50] == 0.0  # outside the ring nothing is raised
    np.testing.assert_array_equal(wide[1], maps[1])  # nor around a lone pixel


def test_profile_refresh_every_skips_refreshes_between_due_updates(data: Data) -> None:
    det = Detector(tiny_config(profile_refresh_every=3), *data, seed=0)
    assert det.refresh_profiles() is True  # the first always computes
    results = []
    for _ in range(6):
        det.ae_update(det.random_patches(4))
        results.append(det.refresh_profiles())
    assert results == [False, False, True, False, False, True]


def test_fit_random_uses_the_configured_predictor_updates(data: Data) -> None:
    det = Detector(tiny_config(predictor_updates_per_ae_update=3), *data, seed=0)
    det.fit_random(2)
    assert det.ae_updates == 2 and det.predictor_updates == 6


def test_ae_lr_after_pretrain_applies_once_pretraining_ends(data: Data) -> None:
    det = Detector(tiny_config(ae_lr_after_pretrain=1e-4), *data, seed=0)
    assert det.ae_optimizer.param_groups[0]["lr"] == det.config.lr
    det.pretrain_ae()
    assert det.ae_optimizer.param_groups[0]["lr"] == 1e-4


def test_flip_and_dice_options_train(data: Data) -> None:
    det = Detector(tiny_config(pred_flip=True, pred_loss="bce_dice"), *data, seed=0)
    x, y = (det.refresh_profiles(), det._sample_crops(8))[1]
    assert x.shape[0] == y.shape[0] == 8
    assert np.isfinite(det.predictor_update())


def test_focal_loss_option_trains_on_the_focal_loss(data: Data) -> None:
    focal = Detector(tiny_config(pred_loss="focal"), *data, seed=0)
    bce = Detector(tiny_config(), *data, seed=0)
    loss_focal, loss_bce = focal.predictor_update(), bce.predictor_update()  # same crops and weights, another loss
    assert np.isfinite(loss_focal) and 0.0 < loss_focal < loss_bce
    at_zero = Detector(tiny_config(pred_loss="focal", pred_focal_gamma=0.0), *data, seed=0)
    assert at_zero.predictor_update() == pytest.approx(loss_bce, rel=1e-6)  # gamma 0 is eq. 8
    with pytest.raises(ValueError, match="pred_focal_gamma"):
        DetectorConfig(pred_focal_gamma=-1.0)
    with pytest.raises(ValueError, match="pred_loss must be one of bce, bce_dice, focal"):
        DetectorConfig(pred_loss="dice")


def test_ae_reset_every_never_resets_during_pretraining(data: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    det = Detector(tiny_config(ae_reset_every=2, pretrain_epochs=3, pretrain_patches_per_epoch=8), *data)  # 6 updates
    resets: list[tuple[bool, int]] = []
    reset_ae = det.reset_ae

    def recording_reset() -> None:
        resets.append((det._pretraining, det.ae_updates))
        reset_ae()

    monkeypatch.setattr(det, "reset_ae", recording_reset)
    det.pretrain_ae()
    assert det.ae_updates == 6 and resets == []
    batch = det.random_patches(4)
    for _ in range(5):  # training updates 1..5: resets before the 3rd and the 5th
        det.ae_update(batch)
    assert resets == [(False, 8), (False, 10)]
    state = det.state_dict()  # the cadence survives a checkpoint
    resumed = Detector(tiny_config(ae_reset_every=2), *data)
    resumed.load_state_dict(state)
    assert resumed.ae_train_updates == 5


def test_predictor_average_follows_the_weights_and_makes_the_maps(data: Data, tmp_path: Path) -> None:
    det = Detector(tiny_config(predictor_ema=0.5), *data, seed=0)
    assert det.predictor_average is not None
    for n, decay in ((0, 0.1), (100, 0.5)):  # the decay ramps up as (1 + n) / (10 + n), then holds at predictor_ema
        det.predictor_updates = n
        before = [p.detach().clone() for p in det.predictor_average.parameters()]
        det.predictor_update()
        for avg, old, new in zip(det.predictor_average.parameters(), before, det.predictor.parameters()):
            assert torch.allclose(avg, decay * old + (1 - decay) * new.detach())  # one EMA step
    maps = det.anomaly_map(data[1])
    raw = Detector(tiny_config(), *data, seed=0)
    raw.load_state_dict({**det.state_dict(), "config": raw.config.to_dict()})  # same weights, no average
    assert not np.allclose(maps, raw.anomaly_map(data[1]))  # the maps come from the average, not the raw weights
    det.save(tmp_path / "d.pt")
    again = Detector.from_checkpoint(tmp_path / "d.pt")
    assert np.array_equal(again.anomaly_map(data[1]), maps)
    with pytest.raises(ValueError, match="predictor_ema"):
        DetectorConfig(predictor_ema=1.0)


def test_map_predictor_flips_averages_the_predictor_over_its_inputs_four_flips(data: Data) -> None:
    det = Detector(tiny_config(predictor_inputs=("profile", "image"), map_predictor_flips=True), *data, seed=0)
    images = data[1][:3]
    ae_calls = []
    det.ae.register_forward_hook(lambda *_: ae_calls.append(1))
    maps = det.anomaly_map(images)  # (N, H, W)
    assert len(ae_calls) == 1  # one batch, one AE pass: only the predictor sees the flips
    with torch.inference_mode():
        x = det._to_float(images)  # (N, 3, H, W)
        z = det._predictor_input((x - det.ae(x)).abs(), x)
        per_flip = [det.predictor(z.flip(d))[:, 0].flip(d).numpy() for d in ((-1,), (-2,), (-2, -1))]
        plain = det.predictor(z)[:, 0].numpy()
    assert not np.allclose(per_flip[0], plain, atol=1e-5)  # the predictor alone is not flip-equivariant
    np.testing.assert_allclose(maps, (plain + sum(per_flip)) / 4, atol=1e-6)


def test_map_predictor_flips_use_the_weight_average(data: Data) -> None:
    det = Detector(tiny_config(predictor_inputs=("profile", "image"), predictor_ema=0.5, pred_flip=True), *data, seed=0)
    for _ in range(3):
        det.predictor_update()
    images = data[1][:3]
    det.config.map_predictor_flips = True
    flips = det.anomaly_map(images)
    assert det.predictor_average is not None
    raw_predictor, det.predictor = det.predictor, det.predictor_average  # the average makes the maps, not the raw weights
    det.predictor_average = None
    np.testing.assert_allclose(det.anomaly_map(images), flips, atol=1e-6)
    det.predictor, det.predictor_average = raw_predictor, det.predictor
    assert not np.allclose(det.anomaly_map(images), Detector(det.config, *data, seed=0).anomaly_map(images), atol=1e-5)


def test_reseed_changes_the_stream_but_not_the_networks(data: Data) -> None:
    a, b = Detector(tiny_config(), *data, seed=1), Detector(tiny_config(), *data, seed=1)
    b.reseed(12345)
    assert all(torch.equal(p, q) for p, q in zip(a.predictor.parameters(), b.predictor.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(a.ae.parameters(), b.ae.parameters()))
    first = b.random_patches(5)
    assert not torch.equal(a.random_patches(5), first)
    c = Detector(tiny_config(), *data, seed=1)
    c.reseed(12345)
    assert torch.equal(c.random_patches(5), first)  # a reseeded stream is itself reproducible


def test_pretraining_warns_when_the_sigmoid_output_saturates(caplog: pytest.LogCaptureFixture) -> None:
    """A dark category, no BatchNorm, a sigmoid output: pre-training kills the AE and says so; a linear one lives."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 40, size=(8, SIZE, SIZE, 3), dtype=np.uint8)  # mean ~0.08, like tire
    _, pool, masks = make_data()
    for output, warned in (("sigmoid", True), ("linear", False)):
        ae = AutoencoderConfig(
            widths=(8, 16, 32), latent_channels=8, norm="none", padding_mode="reflect", upsample="resize", output=output
        )
        config = tiny_config(ae=ae, lr=1e-3, ae_batch_size=32, pretrain_patches_per_epoch=32 * 40, pretrain_epochs=1)
        caplog.clear()
        with caplog.at_level("WARNING", logger="models.detector"):
            Detector(config, train, pool, masks, seed=0).pretrain_ae()
        assert ("sigmoid output is saturated" in caplog.text) is warned


def test_a_checkpoint_saved_before_the_output_option_rebuilds_a_sigmoid_ae(tmp_path: Path, data: Data) -> None:
    """Checkpoints written before ``ae.output`` existed were trained with the sigmoid and must keep it."""
    detector = Detector(tiny_config(ae=AutoencoderConfig(widths=(8, 16), latent_channels=4, output="sigmoid")), *data)
    state = detector.state_dict()
    del state["config"]["ae"]["output"]
    torch.save(state, tmp_path / "old.pt")
    rebuilt = Detector.from_checkpoint(tmp_path / "old.pt")
    assert rebuilt.config.ae.output == "sigmoid"
    _, pool, _ = data
    assert np.array_equal(rebuilt.anomaly_map(pool), detector.anomaly_map(pool))


def test_map_predictor_flips_without_flipped_training_warns(data: Data, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="models.detector"):
        Detector(tiny_config(map_predictor_flips=True, pred_flip=True), *data, seed=0)
    assert "never trains on" not in caplog.text
    with caplog.at_level("WARNING", logger="models.detector"):
        Detector(tiny_config(map_predictor_flips=True), *data, seed=0)
    assert "never trains on" in caplog.text


def test_a_removed_option_loads_at_its_no_op_value_only(tmp_path: Path, data: Data) -> None:
    """A config saved with options that no longer exist (config.yml, a checkpoint) loads when they held the value
    that made them a no-op, and is refused, naming the option, otherwise."""
    old = {**tiny_config().to_dict(), "map_flip_tta": False, "map_smoothing_candidates": [], "pred_lr_schedule": "constant"}
    old["predictor"] = {**old["predictor"], "arch": "dilated", "coord_channels": False}
    assert DetectorConfig.from_dict(old) == tiny_config()
    with pytest.raises(ValueError, match="'map_flip_tta' was removed"):
        DetectorConfig.from_dict({**old, "map_flip_tta": True})
    with pytest.raises(ValueError, match="'arch' was removed"):
        DetectorConfig.from_dict({**old, "predictor": {**old["predictor"], "arch": "unet"}})
    with pytest.raises(ValueError, match="unknown predictor keys"):
        DetectorConfig.from_dict({**old, "predictor": {**old["predictor"], "widht": 4}})
    detector = Detector(tiny_config(), *data, seed=0)
    state = detector.state_dict()
    state["config"] = old
    torch.save(state, tmp_path / "old.pt")
    assert np.array_equal(Detector.from_checkpoint(tmp_path / "old.pt").anomaly_map(data[1]), detector.anomaly_map(data[1]))
