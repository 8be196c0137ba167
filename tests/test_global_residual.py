"""Tests of the global residual (a PCA of whole normal images) and of its late fusion into the detector's maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.detector import Detector
from models.global_residual import GlobalResidual
from tests.test_detector import SIZE, make_data, tiny_config


def _normal_images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, 32, 32) float: a vertical gradient whose brightness and slope vary per image (a 2-dimensional span)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.0, 1.0, SIZE).view(1, 1, SIZE, 1).expand(n, 3, SIZE, SIZE)
    level, slope = 0.3 + 0.2 * torch.rand(n, 1, 1, 1, generator=g), 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    return (level + slope * ramp).clone()


def test_residual_is_zero_on_the_normal_span_and_marks_a_region_outside_it() -> None:
    pca = GlobalResidual(size=16, components=4).fit(_normal_images(40))
    assert pca.basis is not None and pca.basis.shape == (4, 3 * 16 * 16)
    torch.testing.assert_close(pca.basis @ pca.basis.T, torch.eye(4), atol=1e-4, rtol=0)  # orthonormal
    unseen = _normal_images(5, seed=1)
    assert pca(unseen).shape == (5, 3, SIZE, SIZE)
    assert pca(unseen).max() < 1e-3  # new normal images lie in the span
    spot = unseen.clone()
    spot[:, :, 8:16, 16:24] += 0.2  # a brighter square: smooth, so locally plausible everywhere but at its edge
    res = pca(spot).mean(1)  # (5, 32, 32)
    assert res[:, 10:14, 18:22].mean() > 5 * res[:, 20:].mean()  # its inside stands out, the rest of the image does not


def test_fit_holds_images_out_keeps_at_most_half_the_rest_and_is_deterministic() -> None:
    images = (torch.rand(10, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    a, b = GlobalResidual(size=8, components=50).fit(images), GlobalResidual(size=8, components=50).fit(images)
    assert a.basis is not None and b.basis is not None and a.basis.shape[0] == 4  # 1 held out, 9 fitted, k <= 9 // 2
    x = images[:3].float() / 255
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    c = GlobalResidual(size=8, components=50).fit(images, seed=1)  # another held-out image: another fit
    assert c.basis is not None and not torch.allclose(c.basis.abs(), a.basis.abs())
    g = a.normalised(x)  # (3, 32, 32): in [0, 1], and about 1 at the held-out images' 99th percentile
    assert g.shape == (3, SIZE, SIZE) and 0 <= g.min() and g.max() <= 1 and a.scale is not None and a.scale > 0
    with pytest.raises(RuntimeError, match="not fitted"):
        GlobalResidual()(x)
    with pytest.raises(ValueError, match="at least 3 images"):
        GlobalResidual().fit(images[:2])


def test_late_fusion_mixes_the_global_residual_into_the_maps_without_touching_training(tmp_path: Path) -> None:
    data = make_data()
    plain = Detector(tiny_config(), *data, seed=0)
    fused = Detector(tiny_config(map_global_weight=0.5, global_size=8, global_components=3), *data, seed=0)
    for det in (plain, fused):
        det.pretrain_ae(1)
        det.warmup_predictor(2)
    assert fused.last_pred_loss == plain.last_pred_loss  # the PCA draws nothing from the training stream
    raw, glob = plain.anomaly_map(data[1]), fused.global_map(data[1])  # (6, 32, 32) each
    assert 0 <= glob.min() and glob.max() <= 1 and glob.std() > 0
    np.testing.assert_allclose(fused.anomaly_map(data[1]), 0.5 * raw + 0.5 * glob, atol=1e-6)
    fused.save(tmp_path / "d.pt")
    restored = Detector.from_checkpoint(tmp_path / "d.pt")  # the fitted PCA and its scale travel with the weights
    np.testing.assert_array_equal(restored.anomaly_map(data[1]), fused.anomaly_map(data[1]))
    other = Detector(tiny_config(map_global_weight=0.5, global_size=8, global_components=2), *data, seed=0)
    with pytest.raises(ValueError, match="global_components"):
        other.load_weights(tmp_path / "d.pt")
    with pytest.raises(RuntimeError, match="without train images"):
        Detector(tiny_config(map_global_weight=0.5)).global_map(data[1])
    with pytest.raises(ValueError, match="map_global_weight"):
        tiny_config(map_global_weight=1.5)
