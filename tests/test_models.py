"""Tests of the detector's networks and helpers: autoencoder, predictor, weighted BCE, structural maps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.autoencoder import Autoencoder, AutoencoderConfig
from models.predictor import Predictor, PredictorConfig, weighted_bce, weighted_focal_loss
from models.resize import resize_bilinear
from models.structural import fused_structural_map, gradient_magnitude, local_variance, sobel_magnitude


def _all_params_get_grad(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


# ---------------------------------------------------------------------- autoencoder
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 32, 48), (3, 3, 256, 256)])
def test_autoencoder_shapes_and_range(shape: tuple[int, int, int, int]) -> None:
    ae = Autoencoder(AutoencoderConfig(widths=(8, 16, 32), latent_channels=8)).eval()
    x = torch.rand(shape)
    y = ae(x)
    assert y.shape == shape and y.dtype == torch.float32
    assert (y > 0).all() and (y < 1).all()  # sigmoid output


@pytest.mark.parametrize("widths", [(8,), (8, 16), (8, 16, 32)])
def test_autoencoder_gradient_reaches_every_parameter(widths: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(widths=widths, latent_channels=4, dropout=0.0)).train()
    x = torch.rand(4, 3, 32, 32)
    F.mse_loss(ae(x), x).backward()
    _all_params_get_grad(ae)


def test_autoencoder_architecture_matches_the_paper() -> None:
    ae = Autoencoder(AutoencoderConfig())
    mods = list(ae.modules())
    bns = [m for m in mods if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.affine for m in bns)
    assert all(m.negative_slope == 0.2 for m in mods if isinstance(m, torch.nn.LeakyReLU))
    drops = [m for m in mods if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 1 and drops[0].p == 0.3
    # dropout is the first thing the bottleneck does
    assert isinstance(ae.bottleneck[0], torch.nn.Dropout)


@pytest.mark.parametrize("hw", [(60, 64), (64, 36), (17, 17)])
def test_autoencoder_rejects_sizes_not_multiple_of_stride(hw: tuple[int, int]) -> None:
    ae = Autoencoder(AutoencoderConfig(widths=(8, 16, 32)))
    with pytest.raises(ValueError, match="multiples of the total stride 8"):
        ae(torch.rand(1, 3, *hw))


def test_autoencoder_eval_mode_is_deterministic_and_batch_independent() -> None:
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(widths=(8, 16), latent_channels=4))
    x = torch.rand(4, 3, 32, 32)
    ae.train()
    ae(x)  # moves the BatchNorm running stats away from their init
    ae.eval()
    full = ae(x)
    one = ae(x[:1])
    assert torch.allclose(full[:1], one, atol=1e-6)
    assert torch.equal(ae(x), full)


def test_autoencoder_config_validation() -> None:
    with pytest.raises(ValueError, match="dropout"):
        AutoencoderConfig(dropout=1.0)
    with pytest.raises(ValueError, match="widths"):
        AutoencoderConfig(widths=())
    assert AutoencoderConfig(widths=(4, 4, 4, 4)).stride == 16


# ---------------------------------------------------------------------- predictor
@pytest.mark.parametrize("in_channels,hw", [(3, (64, 64)), (6, (37, 50)), (9, (16, 16))])
def test_predictor_shapes_and_gradients(in_channels: int, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    pred = Predictor(PredictorConfig(in_channels=in_channels, width=8))
    x = torch.rand(2, in_channels, *hw)
    y = pred(x)
    assert y.shape == (2, 1, *hw) and y.dtype == torch.float32
    assert ((y > 0) & (y < 1)).all()
    weighted_bce(y, (torch.rand_like(y) > 0.8).float(), alpha=0.5).backward()
    _all_params_get_grad(pred)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(8, 1, 32, 32), (3, 1, 17, 23)])
def test_resize_bilinear_keeps_torchs_values_and_gradients_bit_for_bit(threads: int, shape: tuple[int, ...]) -> None:
    """The faster CPU backward must not change a seeded run: same map, same gradient, to the last bit."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        z = torch.randn(*shape)
        size = (2 * shape[2] + 1, 2 * shape[3])
        grad = torch.randn(shape[0], 1, *size)
        a, b = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        expected = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        got = resize_bilinear(b, size)
        expected.backward(grad)
        got.backward(grad)
        assert got.shape == (shape[0], 1, *size) and torch.equal(got, expected)
        assert torch.equal(b.grad, a.grad) and b.grad.stride() == a.grad.stride()
    finally:
        torch.set_num_threads(old_threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels_last", [True, False])
def test_resize_bilinear_matches_torch_for_features_whose_gradient_is_a_slice(threads: int, channels_last: bool) -> None:
    """The decoder's case: many channels, concatenated after the resize, so the gradient arrives as a strided slice of
    the concatenation's; values, gradients and the gradient's layout must be torch's own."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    try:
        torch.manual_seed(0)
        z = torch.randn(3, 8, 9, 12).contiguous(memory_format=layout)
        skip = torch.randn(3, 4, 18, 24).contiguous(memory_format=layout)
        weight = torch.randn(3, 12, 18, 24).contiguous(memory_format=layout)  # sets the incoming gradient's layout
        grads = []
        for resize in (
            lambda t: F.interpolate(t, size=(18, 24), mode="bilinear", align_corners=False),
            lambda t: resize_bilinear(t, (18, 24)),
        ):
            leaf = z.clone().requires_grad_(True)
            features = leaf.clone()  # not a leaf: its gradient keeps the layout the resize's backward gave it
            seen: list[torch.Tensor] = []
            features.register_hook(seen.append)
            up = resize(features)  # (3, 8, 18, 24)
            (torch.cat([up, skip], dim=1) * weight).sum().backward()
            grads.append((up.detach(), seen[0]))
        (expected, expected_grad), (got, got_grad) = grads
        assert torch.equal(got, expected) and torch.equal(got_grad, expected_grad)
        assert got_grad.stride() == expected_grad.stride()
    finally:
        torch.set_num_threads(old_threads)


def test_predictor_training_step_is_unchanged_by_the_faster_resize(monkeypatch) -> None:
    """A whole encoder-decoder predictor step in the channels-last layout (as the detector trains it): the same
    parameter gradients with the fast resize as with torch's own interpolate."""
    import models.predictor as predictor_module

    def step() -> list[torch.Tensor]:
        torch.manual_seed(0)
        pred = Predictor(PredictorConfig(in_channels=6, width=8, downsample=4, padding_mode="reflect", norm="group"))
        pred = pred.to(memory_format=torch.channels_last)
        x = torch.rand(4, 6, 64, 64).contiguous(memory_format=torch.channels_last)
        weighted_focal_loss(pred(x), (torch.rand(4, 1, 64, 64) > 0.9).float(), 0.5, 2.0).backward()
        return [p.grad.clone() for p in pred.parameters()]

    fast = step()
    monkeypatch.setattr(
        predictor_module, "resize_bilinear", lambda z, size: F.interpolate(z, size=size, mode="bilinear", align_corners=False)
    )
    assert all(torch.equal(f, n) for f, n in zip(fast, step(), strict=True))


@pytest.mark.parametrize("channels_last", [True, False])
def test_unet_training_step_is_unchanged_by_the_faster_resize(monkeypatch, channels_last: bool) -> None:
    """The U-Net baseline, in either memory layout: the same parameter gradients with ``resize_bilinear`` as with
    torch's own interpolate."""
    import models.unet as unet_module
    from models.unet import UNet, UNetConfig

    layout = torch.channels_last if channels_last else torch.contiguous_format

    def step() -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = UNet(UNetConfig(3, 8, 2, "group", "reflect")).to(memory_format=layout)
        x = torch.rand(2, 3, 32, 32).contiguous(memory_format=layout)
        weighted_bce(torch.sigmoid(net(x)), (torch.rand(2, 1, 32, 32) > 0.9).float(), 0.5).backward()
        return [p.grad.clone() for p in net.parameters()]

    fast = step()
    monkeypatch.setattr(
        unet_module, "resize_bilinear", lambda z, size: F.interpolate(z, size=size, mode="bilinear", align_corners=False)
    )
    assert all(torch.equal(f, n) for f, n in zip(fast, step(), strict=True))


@pytest.mark.parametrize("shape, pad", [((2, 8, 9, 12), 1), ((1, 3, 16, 16), 3), ((2, 4, 5, 7), 4), ((1, 2, 2, 3), 1)])
def test_reflect_pad_copies_torchs_values_and_layout(shape: tuple[int, ...], pad: int) -> None:
    from models.padding import applies, reflect_pad, upsample2x_reflect_pad

    torch.manual_seed(0)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert applies(x, pad)
        expected = F.pad(x, (pad,) * 4, mode="reflect")
        got = reflect_pad(x, pad)
        assert torch.equal(got, expected) and got.stride() == expected.stride()
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        expected = F.pad(up, (pad,) * 4, mode="reflect")
        got = upsample2x_reflect_pad(x, pad)
        assert torch.equal(got, expected) and got.stride() == expected.stride()


def test_fast_padding_applies_to_cpu_inference_on_channels_last_maps_only() -> None:
    from models.padding import applies

    x = torch.randn(2, 8, 6, 6)
    with torch.inference_mode():
        assert applies(x.contiguous(memory_format=torch.channels_last), 2)
        assert not applies(x, 2)  # the contiguous layout: torch's pad
        assert not applies(x[:, :1].contiguous(memory_format=torch.channels_last), 2)  # one channel: both layouts at once
        assert not applies(x.contiguous(memory_format=torch.channels_last), 6)  # as deep as the map: torch raises
    assert not applies(x.contiguous(memory_format=torch.channels_last), 2)  # gradients on: training keeps torch's ops


@pytest.mark.parametrize("threads", [1, 2])
def test_autoencoder_inference_is_unchanged_by_the_fast_padding(monkeypatch, threads: int) -> None:
    """The AE's reconstruction with the copy path equals torch's pad and upsample to the last bit, with the same
    state-dict names, and the copy path is taken (every padded layer of the encoder, bottleneck and decoder)."""
    import models.padding as padding

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        config = AutoencoderConfig(norm="none", padding_mode="reflect", upsample="resize", output="linear")
        ae = Autoencoder(config).eval().to(memory_format=torch.channels_last)
        assert "decoder.0.1.weight" in ae.state_dict() and "decoder.3.weight" in ae.state_dict()  # nn.Sequential's names
        x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        calls: list[str] = []
        for name in ("reflect_pad", "upsample2x_reflect_pad"):
            original = getattr(padding, name)
            monkeypatch.setattr(padding, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
        with torch.inference_mode():
            got = ae(x)
            monkeypatch.setattr(padding, "ENABLED", False)
            expected = ae(x)
        assert calls.count("reflect_pad") == 5 and calls.count("upsample2x_reflect_pad") == 3
        assert torch.equal(got, expected) and got.stride() == expected.stride()
    finally:
        torch.set_num_threads(old_threads)


def test_autoencoder_training_keeps_torchs_padding(monkeypatch) -> None:
    """With gradients the AE runs torch's own ops (their backward is what a seeded run's updates were measured with)."""
    import models.padding as padding

    def fail(*args: object) -> torch.Tensor:
        raise AssertionError("the copy path ran with gradients on")

    monkeypatch.setattr(padding, "reflect_pad", fail)
    monkeypatch.setattr(padding, "upsample2x_reflect_pad", fail)
    ae = Autoencoder(AutoencoderConfig(norm="none", padding_mode="reflect", upsample="resize")).to(
        memory_format=torch.channels_last
    )
    ae(torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)).mean().backward()
    _all_params_get_grad(ae)


def test_predictor_uses_the_papers_dilations() -> None:
    pred = Predictor(PredictorConfig())
    convs = [m for m in pred.body if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation for c in convs] == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert all(c.kernel_size == (3, 3) and c.padding == c.dilation for c in convs)
    assert pred.head.kernel_size == (1, 1) and pred.head.out_channels == 1
    assert PredictorConfig().receptive_field == 31


def test_predictor_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        Predictor(PredictorConfig(in_channels=3))(torch.rand(1, 6, 8, 8))


# ---------------------------------------------------------------------- weighted BCE (eq. 8)
_P = torch.tensor([[0.9, 0.2], [0.6, 0.1]])
_Y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


# By hand: y=1 pixels give ln 0.9 + ln 0.1 = -2.4079456; y=0 pixels give ln 0.8 + ln 0.4 = -1.1394343.
# alpha=1: (2.4079456 + 1.1394343) / 4 = 0.8868450; alpha=0.15: (2.4079456 + 0.15 * 1.1394343) / 4 = 0.6447152
@pytest.mark.parametrize("alpha,expected", [(1.0, 0.8868450), (0.15, 0.6447152)])
def test_weighted_bce_matches_hand_computation(alpha: float, expected: float) -> None:
    assert weighted_bce(_P, _Y, alpha).item() == pytest.approx(expected, abs=1e-6)
    # batch and channel dims are averaged over like pixels
    assert weighted_bce(_P.expand(3, 1, 2, 2), _Y.expand(3, 1, 2, 2), alpha).item() == pytest.approx(expected, abs=1e-6)


def test_weighted_bce_alpha_one_is_torch_bce() -> None:
    p = torch.rand(2, 1, 8, 8) * 0.98 + 0.01
    y = (torch.rand(2, 1, 8, 8) > 0.7).float()
    assert weighted_bce(p, y, 1.0).item() == pytest.approx(F.binary_cross_entropy(p, y).item(), rel=1e-5)
    w = torch.where(y > 0, 1.0, 0.15)  # alpha weights only the normal pixels
    assert weighted_bce(p, y, 0.15).item() == pytest.approx(F.binary_cross_entropy(p, y, weight=w).item(), rel=1e-5)


# By hand, gamma 2, alpha 0.15: y=1 terms 0.1^2 ln 0.9 + 0.9^2 ln 0.1 = -1.8661475; y=0 terms 0.2^2 ln 0.8 + 0.6^2 ln 0.4
# = -0.3387904; (1.8661475 + 0.15 * 0.3387904) / 4 = 0.4792415
def test_weighted_focal_loss_matches_hand_computation_and_is_eq8_at_gamma_zero() -> None:
    assert weighted_focal_loss(_P, _Y, 0.15, gamma=2.0).item() == pytest.approx(0.4792415, abs=1e-6)
    p = torch.rand(2, 1, 8, 8) * 0.98 + 0.01
    y = (torch.rand(2, 1, 8, 8) > 0.7).float()
    assert weighted_focal_loss(p, y, 0.15, gamma=0.0).item() == pytest.approx(weighted_bce(p, y, 0.15).item(), rel=1e-6)


def test_weighted_focal_loss_weighs_hard_pixels_over_easy_ones() -> None:
    """Against eq. 8, an easy pixel's gradient shrinks far more than a hard one's: the point of the focal term."""
    y = torch.tensor([0.0, 0.0])
    grads = {}
    for name, loss_fn in (("bce", lambda p: weighted_bce(p, y, 1.0)), ("focal", lambda p: weighted_focal_loss(p, y, 1.0))):
        p = torch.tensor([0.05, 0.6], requires_grad=True)  # an easy normal pixel, a hard one
        loss_fn(p).backward()
        assert p.grad is not None
        grads[name] = p.grad.abs()
    ratio = grads["focal"] / grads["bce"]  # (easy, hard)
    assert ratio[0] < 0.02 and ratio[1] > 0.3
    with pytest.raises(ValueError, match="same shape"):
        weighted_focal_loss(_P, _Y[:1], 0.5)


def test_weighted_bce_is_finite_at_saturated_predictions() -> None:
    p = torch.tensor([0.0, 1.0, 0.0, 1.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = weighted_bce(p, y, 0.5)
    loss.backward()
    assert p.grad is not None and torch.isfinite(loss) and torch.isfinite(p.grad).all()
    with pytest.raises(ValueError, match="same shape"):
        weighted_bce(p, y[:2], 0.5)


# ---------------------------------------------------------------------- structural maps
def _textured_image(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(80, 120, size=(size, size, 3), dtype=np.uint8)
    img[10:20, 5:40] = 250  # an edge-rich bright bar
    return img


def test_fused_map_range_and_extremes() -> None:
    img = _textured_image()
    mae = np.random.default_rng(1).random((48, 48)).astype(np.float32) * 0.05
    for normalize in (True, False):
        z = fused_structural_map(img, mae, normalize_components=normalize)
        assert z.shape == (48, 48) and z.dtype == np.float32
        assert z.min() == pytest.approx(0.0, abs=1e-6) and z.max() == pytest.approx(1.0, abs=1e-6)


def test_fused_map_weights_select_components() -> None:
    img = _textured_image()
    mae = np.zeros((48, 48), np.float32)
    mae[30:40, 30:40] = 0.1
    only_mae = fused_structural_map(img, mae, weights=(1.0, 0.0, 0.0))
    assert only_mae[35, 35] == pytest.approx(1.0) and only_mae[0, 0] == pytest.approx(0.0)
    grey = img.mean(axis=2) / 255.0
    only_grad = fused_structural_map(img, mae, weights=(0.0, 0.0, 1.0))
    g = gradient_magnitude(grey.astype(np.float32))
    assert np.corrcoef(only_grad.ravel(), g.ravel())[0, 1] > 0.99
    # normalised components: the 0.7 weight of a tiny-scale residual still dominates the fusion
    fused = fused_structural_map(img, mae)
    assert np.corrcoef(fused.ravel(), only_mae.ravel())[0, 1] > 0.8
    raw = fused_structural_map(img, mae, normalize_components=False)
    assert np.corrcoef(raw.ravel(), only_mae.ravel())[0, 1] < np.corrcoef(fused.ravel(), only_mae.ravel())[0, 1]


def test_local_variance_and_gradient_on_known_images() -> None:
    flat = np.full((32, 32), 0.5, np.float32)
    assert np.allclose(local_variance(flat), 0.0, atol=1e-7)
    assert np.allclose(gradient_magnitude(flat), 0.0)
    step = np.zeros((32, 32), np.float32)
    step[:, 16:] = 1.0
    g = gradient_magnitude(step)
    assert g[16, 15] == pytest.approx(4.0) and g[16, 5] == 0.0  # 3x3 Sobel of a unit step: 1 + 2 + 1
    assert local_variance(step)[16, 16] > 0.1 and local_variance(step)[16, 2] < 1e-3


def test_gradient_magnitude_does_not_depend_on_where_the_arrays_lie() -> None:
    # cv2.magnitude rounded some pixels one ulp differently depending on its buffers' addresses, so the cloning reward of
    # a seeded run depended on the process's allocation history; every copy of the image must give the same bits
    rng = np.random.default_rng(0)
    grey = rng.random((64, 64)).astype(np.float32)
    gx, gy = (cv2.Sobel(grey, cv2.CV_32F, dx, dy, ksize=3).astype(np.float64) for dx, dy in ((1, 0), (0, 1)))
    reference = gradient_magnitude(grey)
    np.testing.assert_allclose(reference, np.sqrt(gx**2 + gy**2), rtol=1e-6)
    keep = []
    for offset in range(32):  # the input at every 4-byte offset of a cache line, the heap moved by other allocations
        keep.append(np.empty(int(rng.integers(1, 300_000)), np.uint8))
        raw = np.empty(grey.nbytes + 128, np.uint8)[4 * offset : 4 * offset + grey.nbytes]
        copy = raw.view(np.float32).reshape(grey.shape)
        copy[...] = grey
        assert np.array_equal(gradient_magnitude(copy), reference), offset


def test_sobel_magnitude_per_channel() -> None:
    patch = np.zeros((3, 16, 16), np.float32)
    patch[1, :, 8:] = 1.0  # only channel 1 has an edge
    s = sobel_magnitude(patch)
    assert s.shape == (3, 16, 16) and s.dtype == np.float32
    assert s[0].max() == 0.0 and s[2].max() == 0.0 and s[1].max() == pytest.approx(4.0)
    u8 = (patch * 255).astype(np.uint8)
    assert np.allclose(sobel_magnitude(u8), s, atol=1e-5)  # uint8 is read as [0, 255] -> [0, 1]
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        sobel_magnitude(patch[0])


# ---------------------------------------------------------------------- options of the presets
def test_autoencoder_without_batchnorm_trains_independently_of_the_batch() -> None:
    """norm="none": an image's training-mode reconstruction does not depend on the other images in its batch."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    for norm, independent in (("none", True), ("batch", False)):
        ae = Autoencoder(AutoencoderConfig(widths=(8, 16), latent_channels=4, dropout=0.0, norm=norm)).train()
        alone = ae(x[:1])
        together = ae(x)[:1]
        assert torch.allclose(alone, together, atol=1e-6) is independent


def test_reflect_padding_and_resize_upsampling_leave_no_border_or_checkerboard() -> None:
    """On a flat image, reflect padding + resize upsampling reconstruct a flat image; zeros + transpose do not."""
    x = torch.full((1, 3, 32, 32), 0.5)
    torch.manual_seed(1)
    flat = Autoencoder(AutoencoderConfig(widths=(8, 16), latent_channels=4, padding_mode="reflect", upsample="resize"))
    torch.manual_seed(1)
    paper = Autoencoder(AutoencoderConfig(widths=(8, 16), latent_channels=4))
    with torch.no_grad():
        assert float(flat.eval()(x).std(dim=(2, 3)).max()) < 1e-5  # spatial spread, per channel
        assert float(paper.eval()(x).std(dim=(2, 3)).max()) > 1e-4


@pytest.mark.parametrize("padding_mode,flat", [("reflect", True), ("replicate", True), ("zeros", False)])
def test_predictor_padding_controls_border_stripes(padding_mode: str, flat: bool) -> None:
    torch.manual_seed(0)
    p = Predictor(PredictorConfig(in_channels=3, width=4, padding_mode=padding_mode, batch_norm=False)).eval()
    with torch.no_grad():
        out = p(torch.full((1, 3, 40, 40), 0.3))
    assert (float(out.std()) < 1e-6) is flat


def test_predictor_downsample_keeps_the_size_and_doubles_the_receptive_field() -> None:
    cfg = PredictorConfig(in_channels=6, width=8, downsample=2)
    p = Predictor(cfg)
    x = torch.rand(2, 6, 48, 64, requires_grad=True)
    assert p(x).shape == (2, 1, 48, 64)
    assert cfg.receptive_field > 2 * PredictorConfig().receptive_field - 1
    p(x)[0, 0, 24, 32].backward()  # the gradient of one output pixel reaches far beyond the paper's 31 px
    reach = torch.nonzero(x.grad.abs().sum((0, 1)))  # type: ignore[union-attr]
    assert int(reach[:, 1].max() - reach[:, 1].min()) > 31


def test_soft_dice_loss_is_zero_for_a_perfect_prediction_and_one_for_a_disjoint_one() -> None:
    from models.predictor import soft_dice_loss

    y = torch.zeros(1, 1, 8, 8)
    y[..., 2:4, 2:4] = 1
    assert float(soft_dice_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_dice_loss(1 - y, y)) > 0.95


def test_predictor_group_norm_trains_independently_of_the_batch() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    for norm, independent in (("group", True), ("batch", False)):
        p = Predictor(PredictorConfig(in_channels=3, width=8, norm=norm, downsample=2)).train()
        assert torch.allclose(p(x[:1]), p(x)[:1], atol=1e-6) is independent


def test_predictor_reflect_padding_falls_back_on_a_map_too_small_to_reflect() -> None:
    """At 1/8 resolution a 64-px image is 8 cells, which a dilation-8 layer cannot reflect 8 deep: replicate there,
    reflect (torch's own) on larger maps; a flat image still gives a flat map either way."""
    torch.manual_seed(0)
    p = Predictor(PredictorConfig(in_channels=3, width=8, downsample=8, norm="group", padding_mode="reflect")).eval()
    with torch.no_grad():
        small = p.logits(torch.full((1, 3, 64, 64), 0.3))  # (1, 1, 64, 64): the fallback
        big_x = torch.rand(1, 3, 256, 256)
        big = p.logits(big_x)
    assert small.shape == (1, 1, 64, 64) and float(small.std()) < 1e-5
    body = p.body[-1][0]  # the dilation-8 convolution at 1/8 resolution
    h = torch.rand(1, body.in_channels, 32, 32)
    reference = nn.Conv2d(body.in_channels, body.out_channels, 3, padding=8, dilation=8, bias=False, padding_mode="reflect")
    reference.load_state_dict(body.state_dict())
    assert torch.equal(body(h), reference(h)) and big.shape == big_x[:, :1].shape


@pytest.mark.parametrize("seed", [0, 1])
def test_linear_output_keeps_the_autoencoder_alive_on_a_dark_category(seed: int) -> None:
    """Without BatchNorm, Adam drives a sigmoid output into saturation on dark images within a few dozen updates
    (every pixel ~0, no gradient: the loss profile becomes the image itself); a linear output keeps reconstructing."""
    x = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 0.15  # mean 0.075, like tire
    outputs = {}
    for output in ("sigmoid", "linear"):
        torch.manual_seed(seed)
        config = AutoencoderConfig(
            widths=(8, 16, 32), latent_channels=8, norm="none", padding_mode="reflect", upsample="resize", output=output
        )
        ae = Autoencoder(config)
        optimizer = torch.optim.Adam(ae.parameters(), lr=1e-3)
        for _ in range(40):
            loss = torch.mean((ae(x) - x) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            outputs[output] = ae.eval()(x)  # (32, 3, 16, 16)
    assert float(outputs["sigmoid"].max()) < 1e-3  # dead: reconstructs black
    assert 0.03 < float(outputs["linear"].mean()) < 0.12  # alive: the images' mean level
    assert float(torch.mean((outputs["linear"] - x) ** 2)) < 0.5 * float(torch.mean((outputs["sigmoid"] - x) ** 2))


def test_autoencoder_output_option_bounds_the_reconstruction_only_with_the_sigmoid() -> None:
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(0)
    sigmoid = Autoencoder(AutoencoderConfig(widths=(8, 16), latent_channels=4)).eval()
    torch.manual_seed(0)
    linear = Autoencoder(AutoencoderConfig(widths=(8, 16), latent_channels=4, output="linear")).eval()
    with torch.no_grad():
        assert torch.allclose(sigmoid(x), torch.sigmoid(linear(x)), atol=1e-6)  # same weights, same logits
    with pytest.raises(ValueError, match="output must be one of sigmoid, linear"):
        AutoencoderConfig(output="tanh")
