"""Tests of the two-level VQ-VAE baseline: shapes, gradients, EMA codebook updates, dead-code restarts, training."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models.vqvae2 import VQVAE2, VectorQuantizerEMA, VQVAE2Config, codes_used

SMALL = dict(hidden=16, res_channels=8, embed_dim=8, n_codes=16)  # fast networks for the shape and gradient tests


def _buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in module.named_buffers()}


def _mosaic(n: int = 8, size: int = 32, cell: int = 8, seed: int = 0) -> torch.Tensor:
    """Images tiled with ``cell``-pixel squares whose colours come from a small palette; (n, 3, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.rand(4, 3, generator=g)  # (P, 3)
    idx = torch.randint(4, (n, size // cell, size // cell), generator=g)  # (n, size/cell, size/cell)
    img = palette[idx].permute(0, 3, 1, 2)  # (n, 3, size/cell, size/cell)
    return F.interpolate(img, scale_factor=cell, mode="nearest")  # (n, 3, size, size)


# ---------------------------------------------------------------------- shapes and validation
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 64, 48), (3, 1, 16, 24), (1, 4, 8, 8)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_shapes_dtypes_and_code_range(shape: tuple[int, int, int, int], mode: str) -> None:
    torch.manual_seed(0)
    B, C, H, W = shape
    cfg = VQVAE2Config(in_channels=C, **SMALL)
    model = VQVAE2(cfg).train(mode == "train")
    recon, latent_loss, (codes_t, codes_b) = model(torch.rand(shape))
    assert recon.shape == shape and recon.dtype == torch.float32
    assert latent_loss.ndim == 0 and torch.isfinite(latent_loss) and latent_loss >= 0
    assert codes_t.shape == (B, H // 8, W // 8) and codes_b.shape == (B, H // 4, W // 4)
    for codes in (codes_t, codes_b):
        assert codes.dtype == torch.long
        assert codes.min() >= 0 and codes.max() < cfg.n_codes


@pytest.mark.parametrize("shape", [(1, 3, 36, 32), (1, 3, 32, 20), (2, 3, 4, 4)])
def test_size_not_multiple_of_8_raises(shape: tuple[int, int, int, int]) -> None:
    model = VQVAE2(VQVAE2Config(**SMALL))
    with pytest.raises(ValueError, match=r"multiples of 8.*" + r"\(" + ", ".join(map(str, shape))):
        model(torch.rand(shape))


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (3, 32, 32)])
def test_wrong_channels_or_rank_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected input of shape"):
        VQVAE2(VQVAE2Config(**SMALL))(torch.rand(shape))


@pytest.mark.parametrize(
    "field, value",
    [
        ("in_channels", 0),
        ("hidden", 1),
        ("res_blocks", -1),
        ("res_channels", 0),
        ("embed_dim", 0),
        ("n_codes", 1),
        ("decay", 1.0),
        ("decay", -0.1),
        ("commitment", -0.5),
        ("dead_code_threshold", -1.0),
        ("eps", 0.0),
    ],
)
def test_invalid_config_raises_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        VQVAE2Config(**{field: value})


def test_invalid_quantizer_arguments_raise() -> None:
    with pytest.raises(ValueError, match="dim"):
        VectorQuantizerEMA(0, 8)
    with pytest.raises(ValueError, match="n_codes"):
        VectorQuantizerEMA(4, 1)
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizerEMA(4, 8, decay=1.5)
    with pytest.raises(ValueError, match="expected input of shape"):
        VectorQuantizerEMA(4, 8)(torch.rand(1, 3, 2, 2))


def test_defaults_and_architecture() -> None:
    cfg = VQVAE2Config()
    assert (cfg.in_channels, cfg.hidden, cfg.embed_dim, cfg.n_codes, cfg.decay, cfg.commitment) == (3, 64, 32, 256, 0.99, 0.25)
    model = VQVAE2(cfg)
    mods = list(model.modules())
    norms = (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.InstanceNorm2d, torch.nn.LayerNorm)
    assert not any(isinstance(m, norms) for m in mods)
    assert not any(isinstance(m, (torch.nn.Sigmoid, torch.nn.Tanh)) for m in mods)
    # the codebooks and their EMA statistics are buffers, not parameters
    assert not any("codebook" in n or "cluster_size" in n or "embed_sum" in n for n, _ in model.named_parameters())
    buffers = dict(model.named_buffers())
    for level in ("t", "b"):
        assert buffers[f"quantize_{level}.codebook"].shape == (256, 32)
        assert buffers[f"quantize_{level}.cluster_size"].shape == (256,)
        assert buffers[f"quantize_{level}.embed_sum"].shape == (256, 32)


def test_module_imports_only_torch_and_the_standard_library() -> None:
    src = Path(__file__).resolve().parents[1] / "models" / "vqvae2.py"
    roots = set()
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "dataclasses", "torch", "typing"}, roots


def test_codes_used_counts_distinct_codes() -> None:
    assert codes_used(torch.tensor([[[3, 3], [3, 3]]])) == 1
    assert codes_used(torch.tensor([[[0, 5], [5, 7]], [[7, 7], [2, 0]]])) == 4


# ---------------------------------------------------------------------- gradients and the latent loss
@pytest.mark.parametrize("res_blocks", [0, 1, 2])
def test_gradient_reaches_every_parameter(res_blocks: int) -> None:
    torch.manual_seed(0)
    model = VQVAE2(VQVAE2Config(**{**SMALL, "res_blocks": res_blocks})).train()
    x = torch.rand(2, 3, 32, 32)
    recon, latent_loss, _ = model(x)
    (F.mse_loss(recon, x) + latent_loss).backward()
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("enc_t.") for n in names) and any(n.startswith("dec_t.") for n in names)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


def test_reconstruction_gradient_passes_straight_through_both_codebooks() -> None:
    torch.manual_seed(0)
    model = VQVAE2(VQVAE2Config(**SMALL)).train()
    x = torch.rand(2, 3, 32, 32)
    recon, latent_loss, _ = model(x)
    F.mse_loss(recon, x).backward(retain_graph=True)  # the reconstruction alone reaches the encoders through both codes
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no reconstruction gradient at {name}"
    model.zero_grad(set_to_none=True)
    latent_loss.backward()  # the commitment loss pulls the encoder side only, never the decoder
    for name, p in model.named_parameters():
        if name.startswith(("dec.", "upsample_t.")):
            assert p.grad is None or not p.grad.any(), f"commitment gradient reached the decoder at {name}"
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no commitment gradient at {name}"


def test_latent_loss_is_commitment_times_both_levels() -> None:
    x = torch.rand(2, 3, 32, 32)
    results = {}
    for commitment in (0.0, 0.25, 0.5):
        torch.manual_seed(0)
        model = VQVAE2(VQVAE2Config(**SMALL, commitment=commitment)).eval()
        losses: list[torch.Tensor] = []
        for q in (model.quantize_t, model.quantize_b):
            q.register_forward_hook(lambda _m, _i, out, store=losses: store.append(out[1].detach()))
        recon, latent_loss, _ = model(x)
        assert len(losses) == 2 and all(v > 0 for v in losses)
        torch.testing.assert_close(latent_loss, commitment * (losses[0] + losses[1]))
        results[commitment] = (recon, latent_loss)
    assert results[0.0][1] == 0
    torch.testing.assert_close(results[0.5][1], 2 * results[0.25][1])
    torch.testing.assert_close(results[0.5][0], results[0.25][0])  # the weight does not change the forward pass


def test_quantizer_nearest_code_straight_through_and_commitment_loss() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(4, 10).eval()
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    quantized, loss, codes = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)  # (N, D)
    expected_codes = torch.cdist(flat, vq.codebook).argmin(1).view(2, 3, 5)  # (B, H, W)
    assert torch.equal(codes, expected_codes)
    expected_q = vq.codebook[codes].permute(0, 3, 1, 2)  # (B, D, H, W)
    torch.testing.assert_close(quantized, expected_q)
    torch.testing.assert_close(loss, F.mse_loss(z.detach(), expected_q))
    w = torch.randn_like(z)
    (quantized * w).sum().backward()
    torch.testing.assert_close(z.grad, w)  # straight-through: d quantized / d z is the identity
    z.grad = None
    loss.backward()
    torch.testing.assert_close(z.grad, 2 * (z.detach() - expected_q) / z.numel())  # only the encoder is pulled


# ---------------------------------------------------------------------- EMA updates: train vs eval
def test_eval_leaves_buffers_bit_identical_and_train_updates_codebooks() -> None:
    torch.manual_seed(0)
    model = VQVAE2(VQVAE2Config(**SMALL))
    x = torch.rand(2, 3, 32, 32)
    before = _buffers(model)
    assert set(before) == {f"quantize_{lv}.{b}" for lv in "tb" for b in ("codebook", "cluster_size", "embed_sum")}
    model.eval()
    for _ in range(2):
        model(x)
    with torch.no_grad():
        model(x)
    for name, b in model.named_buffers():
        assert torch.equal(b, before[name]), f"eval changed {name}"
    model.train()
    model(x)
    after = dict(model.named_buffers())
    for name in ("quantize_t.codebook", "quantize_b.codebook", "quantize_t.cluster_size", "quantize_b.cluster_size"):
        assert not torch.equal(after[name], before[name]), f"training forward left {name} unchanged"


def test_ema_update_matches_the_laplace_smoothed_formula() -> None:
    decay, eps = 0.75, 1e-5
    vq = VectorQuantizerEMA(2, 3, decay=decay, eps=eps, dead_code_threshold=0.0).train()
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, -10.0]])
    vq.codebook.copy_(codebook)
    vq.embed_sum.copy_(codebook)
    vq.cluster_size.fill_(1.0)
    vectors = torch.tensor([[1.0, 1.0], [0.0, 1.0], [9.0, 9.0], [1.0, 0.0]])  # codes 0, 0, 1, 0; code 2 unused
    z = vectors.T.reshape(1, 2, 2, 2)  # (1, D, 2, 2): pixel (i, j) holds vectors[2 * i + j]
    _, _, codes = vq(z)
    assert codes.flatten().tolist() == [0, 0, 1, 0]
    counts = torch.tensor([3.0, 1.0, 0.0])
    sums = torch.tensor([[2.0, 2.0], [9.0, 9.0], [0.0, 0.0]])
    cluster = decay * 1.0 + (1 - decay) * counts  # (K,)
    embed_sum = decay * codebook + (1 - decay) * sums  # (K, D)
    n = cluster.sum()
    smoothed = (cluster + eps) / (n + 3 * eps) * n
    torch.testing.assert_close(vq.cluster_size, cluster)
    torch.testing.assert_close(vq.embed_sum, embed_sum)
    torch.testing.assert_close(vq.codebook, embed_sum / smoothed[:, None])


# ---------------------------------------------------------------------- dead-code restarts
def _collapsed_quantizer(threshold: float) -> VectorQuantizerEMA:
    """8 codes of dimension 4: code 0 at the origin, the others far from any standard-normal vector."""
    vq = VectorQuantizerEMA(4, 8, dead_code_threshold=threshold).train()
    codebook = torch.zeros(8, 4)
    codebook[1:] = 100.0 + torch.arange(7.0)[:, None]
    vq.codebook.copy_(codebook)
    vq.embed_sum.copy_(codebook)
    vq.cluster_size.fill_(1.0)
    return vq


def test_dead_codes_restart_on_batch_vectors() -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 4, 4, 4)  # N = 32 vectors, all nearest to code 0
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)  # (N, D)
    vq = _collapsed_quantizer(1.0)
    _, _, codes = vq(z)
    assert codes_used(codes) == 1  # the returned codes are those of the codebook before the update
    # codes 1..7 were unused: their EMA size fell to 0.99 < 1, so each now sits exactly on a distinct batch vector
    dist = torch.cdist(vq.codebook[1:], flat)  # (7, N)
    assert dist.min(1).values.max() < 1e-6
    assert dist.argmin(1).unique().numel() == 7
    torch.testing.assert_close(vq.cluster_size[1:], torch.ones(7))  # reset to the threshold
    torch.testing.assert_close(vq.embed_sum[1:], vq.codebook[1:])  # statistics consistent with the new codes
    assert vq.cluster_size[0] > 1  # the used code is not restarted
    for _ in range(3):
        _, _, codes = vq(z)
    assert codes_used(codes) > 1


def test_restart_is_off_with_threshold_zero() -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 4, 4, 4)
    vq = _collapsed_quantizer(0.0)
    for _ in range(4):
        _, _, codes = vq(z)
    assert codes_used(codes) == 1
    assert (vq.codebook[1:] > 50).all()


def test_restart_is_reproducible_under_a_seed() -> None:
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    books = []
    for seed in (7, 7, 8):
        vq = _collapsed_quantizer(1.0)
        torch.manual_seed(seed)
        vq(z)
        books.append(vq.codebook.clone())
    assert torch.equal(books[0], books[1])
    assert not torch.equal(books[0], books[2])


# ---------------------------------------------------------------------- training and reproducibility
def test_training_uses_the_codebooks_and_lowers_the_reconstruction_error() -> None:
    x = _mosaic()  # (8, 3, 32, 32): 8x8 squares of 4 palette colours
    baseline = F.mse_loss(x, x.mean((0, 2, 3), keepdim=True).expand_as(x)).item()  # best constant colour per channel
    torch.manual_seed(0)
    model = VQVAE2(VQVAE2Config(hidden=32, res_channels=16, embed_dim=16, n_codes=32))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.no_grad():
        start = F.mse_loss(model.eval()(x)[0], x).item()
    model.train()
    for _ in range(50):
        recon, latent_loss, _ = model(x)
        loss = F.mse_loss(recon, x) + latent_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        recon, _, (codes_t, codes_b) = model.eval()(x)
    end = F.mse_loss(recon, x).item()
    assert codes_used(codes_t) > 1 and codes_used(codes_b) > 1
    assert end < 0.6 * start, (start, end)
    assert end < 0.75 * baseline, (baseline, end)  # more than the mean colour: the codes carry the image content


def test_same_seed_same_model_and_outputs() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        model = VQVAE2(VQVAE2Config(**SMALL))
        eval_recon = model.eval()(x)[0]
        train_recon, _, codes = model.train()(x)  # the update restarts codes with torch's global RNG
        outs.append((eval_recon, train_recon, codes, _buffers(model)))
    (e0, t0, c0, b0), (e1, t1, c1, b1), (e2, *_) = outs
    assert torch.equal(e0, e1) and torch.equal(t0, t1)
    assert all(torch.equal(a, b) for a, b in zip(c0, c1))
    assert all(torch.equal(b0[k], b1[k]) for k in b0)
    assert not torch.equal(e0, e2)


def test_eval_reconstruction_does_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    model = VQVAE2(VQVAE2Config(**SMALL))
    model.train()(torch.rand(4, 3, 32, 32))  # move the codebooks off their random start
    model.eval()
    latents: list[torch.Tensor] = []  # the continuous encoder outputs, which a batch statistic would shift
    for q in (model.quantize_t, model.quantize_b):
        q.register_forward_hook(lambda _m, inputs, _out: latents.append(inputs[0][:1].clone()))
    x = torch.cat([torch.rand(1, 3, 32, 32), torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)])  # very unlike batch-mates
    alone = model.reconstruct(x[:1])
    together = model.reconstruct(x)[:1]
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)
    for a, b in zip(latents[:2], latents[2:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not alone.requires_grad
