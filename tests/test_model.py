from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch

from forecast.config import ModelConfig, SplitConfig, TrainConfig, WindowConfig
from forecast.data import SeriesSet
from forecast.model import (
    PatchTransformer,
    TokenBatchNorm,
    build_model,
    describe,
    patch_count,
    sinusoidal_encoding,
)
from forecast.train import fit, validation_loss
from forecast.windows import prepare


def small_cfg(**kw) -> ModelConfig:
    base = dict(patch_len=4, patch_stride=2, d_model=8, n_heads=2, n_layers=2, d_ff=16,
                dropout=0.0, linear_skip=False)
    base.update(kw)
    return ModelConfig(**base)


def model_for(cfg: ModelConfig, L: int = 16, H: int = 5, C: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg, L, H, C).eval()


@pytest.mark.parametrize("d_model", [6, 7])
def test_sinusoidal_encoding_matches_formula(d_model):
    pe = sinusoidal_encoding(10, d_model)
    assert pe.shape == (10, d_model) and pe.dtype == torch.float32
    # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))
    checks = {
        (0, 0): math.sin(0.0),
        (0, 1): math.cos(0.0),
        (3, 0): math.sin(3.0),
        (3, 1): math.cos(3.0),
        (5, 2): math.sin(5 / 10000 ** (2 / d_model)),
        (5, 3): math.cos(5 / 10000 ** (2 / d_model)),
        (9, 4): math.sin(9 / 10000 ** (4 / d_model)),
        (9, 5): math.cos(9 / 10000 ** (4 / d_model)),
    }
    if d_model == 7:
        checks[(7, 6)] = math.sin(7 / 10000 ** (6 / 7))  # odd width: last column is a sine
    for (pos, col), value in checks.items():
        assert pe[pos, col].item() == pytest.approx(value, abs=1e-6), (pos, col)


def test_patch_count():
    assert patch_count(16, small_cfg()) == (16 - 4) // 2 + 1 + 1
    assert patch_count(16, small_cfg(pad_end=False)) == 7
    assert patch_count(16, small_cfg(patch_len=1, patch_stride=1, pad_end=False)) == 16


@pytest.mark.parametrize("channel_independent", [True, False])
@pytest.mark.parametrize("pad_end", [True, False])
@pytest.mark.parametrize("patch", [(4, 2), (1, 1), (5, 3)])
def test_output_shapes(channel_independent, pad_end, patch):
    cfg = small_cfg(patch_len=patch[0], patch_stride=patch[1], pad_end=pad_end,
                    channel_independent=channel_independent)
    model = model_for(cfg, L=16, H=5, C=3)
    assert model.n_patches == patch_count(16, cfg)
    assert model.position.shape == (model.n_patches, 8)
    width = patch[0] * (1 if channel_independent else 3)
    assert model.embed.in_features == width
    assert model.head.out_features == (5 if channel_independent else 15)
    y = model(torch.randn(4, 16, 3))
    assert y.shape == (4, 5, 3)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("channel_independent", [True, False])
@pytest.mark.parametrize("revin", [True, False])
@pytest.mark.parametrize("linear_skip", [False, True])
def test_padded_values_do_not_change_forecast(channel_independent, revin, linear_skip):
    cfg = small_cfg(channel_independent=channel_independent, revin=revin, linear_skip=linear_skip)
    model = model_for(cfg, L=16, H=5, C=3)
    torch.manual_seed(1)
    x = torch.randn(3, 16, 3)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, :5] = True  # 11 real steps: a patch straddles the boundary
    mask[1, :12] = True  # 4 real steps (= patch_len)
    # row 2 unpadded
    x2 = x.clone()
    x2[mask] = 1e3 * torch.randn(int(mask.sum()), 3)
    with torch.no_grad():
        y1, y2 = model(x, mask), model(x2, mask)
        unmasked = model(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    # The mask is what makes the difference: without it the padded values leak in.
    assert not torch.allclose(unmasked[:2], y1[:2], atol=1e-3)
    # A row with no padding is unaffected by the other rows' masks.
    torch.testing.assert_close(y1[2], unmasked[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("revin", [True, False])
def test_channel_independent_is_permutation_equivariant(revin):
    model = model_for(small_cfg(revin=revin), L=16, H=5, C=4)
    x = torch.randn(2, 16, 4)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(x[:, :, perm]), model(x)[:, :, perm],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channel_independent", [True, False])
def test_linear_skip_adds_one_shared_map_of_the_lookback(channel_independent):
    cfg = small_cfg(revin=False, linear_skip=True, channel_independent=channel_independent)
    model = model_for(cfg, L=16, H=5, C=3)
    assert model.skip.weight.shape == (5, 16)
    assert model_for(small_cfg(), L=16, H=5, C=3).skip is None
    x = torch.randn(2, 16, 3)
    with torch.no_grad():
        y = model(x)
        w, b = model.skip.weight.clone(), model.skip.bias.clone()
        model.skip.weight.zero_()
        model.skip.bias.zero_()
        encoder_only = model(x)
    # each channel c: y[:, h, c] - encoder_only[:, h, c] = sum_t w[h, t] x[:, t, c] + b[h]
    expected = torch.einsum("ht,btc->bhc", w, x) + b[None, :, None]
    torch.testing.assert_close(y - encoder_only, expected, rtol=1e-5, atol=1e-5)


def test_channel_mixing_sees_other_channels():
    model = model_for(small_cfg(channel_independent=False, revin=False), L=16, H=5, C=3)
    x = torch.randn(1, 16, 3)
    x2 = x.clone()
    x2[:, :, 2] += 5.0
    with torch.no_grad():
        y1, y2 = model(x), model(x2)
    # Changing channel 2 changes the forecast of channel 0 only when channels mix.
    assert not torch.allclose(y1[..., 0], y2[..., 0], atol=1e-4)
    ci = model_for(small_cfg(revin=False), L=16, H=5, C=3)
    with torch.no_grad():
        torch.testing.assert_close(ci(x)[..., 0], ci(x2)[..., 0])


def test_post_norm_variant():
    model = model_for(small_cfg(norm_first=False), L=16, H=5, C=2)
    assert isinstance(model.final_norm, torch.nn.Identity)
    assert not model.blocks[0].norm_first
    assert model(torch.randn(3, 16, 2)).shape == (3, 5, 2)


def test_batch_norm_variant():
    cfg = small_cfg(norm="batch")
    torch.manual_seed(0)
    model = build_model(cfg, 16, 5, 2)
    assert isinstance(model.blocks[0].norm1, TokenBatchNorm)
    assert isinstance(model.final_norm, TokenBatchNorm)
    model.train()
    assert model(torch.randn(6, 16, 2)).shape == (6, 5, 2)
    # Training mode updated the running statistics.
    assert int(model.blocks[0].norm1.bn.num_batches_tracked) == 1
    model.eval()
    assert model(torch.randn(1, 16, 2)).shape == (1, 5, 2)


def test_learned_positions_are_parameters():
    learned = model_for(small_cfg(positional="learned"))
    names = dict(learned.named_parameters())
    assert "position" in names and names["position"].requires_grad
    assert names["position"].shape == (learned.n_patches, 8)
    sinus = model_for(small_cfg())
    assert "position" not in dict(sinus.named_parameters())
    # The sinusoidal code is rebuilt, never saved.
    assert "position" not in sinus.state_dict()
    torch.testing.assert_close(sinus.position, sinusoidal_encoding(sinus.n_patches, 8))


def test_build_model_rejects_patch_longer_than_lookback():
    with pytest.raises(ValueError, match=r"patch_len 32 > lookback 16"):
        build_model(small_cfg(patch_len=32), 16, 4, 1)


def test_describe_names_mode_and_params():
    model = model_for(small_cfg(channel_independent=False))
    text = describe(model)
    assert "channel-mixing" in text and f"{model.n_params():,} params" in text
    assert model.n_params() == sum(p.numel() for p in model.parameters())
    assert "linear skip" not in text
    assert "linear skip" in describe(model_for(small_cfg(linear_skip=True)))


def test_overfits_a_sine(tmp_path):
    n = 300
    t = np.arange(n)
    values = np.stack([np.sin(2 * np.pi * t / 24), np.cos(2 * np.pi * t / 16)], 1)
    series = SeriesSet(["s"], [values.astype(np.float32)],
                       [pd.date_range("2024-01-01", periods=n, freq="h")], ["x", "y"], "h")
    prepared = prepare(series, SplitConfig(), WindowConfig(lookback=32, horizon=8))
    cfg = ModelConfig(patch_len=8, patch_stride=4, d_model=16, n_heads=2, n_layers=1,
                      d_ff=32, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg, 32, 8, 2)
    train = TrainConfig(epochs=30, batch_size=32, lr=3e-3, patience=0, seed=0,
                        num_threads=1, weight_decay=0.0, warmup_frac=0.0)
    t0 = time.perf_counter()
    result = fit(model, prepared, train, tmp_path / "ckpt", "sine")
    elapsed = time.perf_counter() - t0
    mse = validation_loss(model, prepared.windows("train"), 256, torch.nn.functional.mse_loss,
                          torch.device("cpu"))
    assert mse < 0.01, f"training MSE {mse:.4f} after {len(result.history)} epochs"
    assert result.history[0].train_loss > 10 * mse
    assert elapsed < 30
    assert isinstance(model, PatchTransformer)


def test_byte_mask_dropout_drops_its_share_keeps_the_mean_and_is_identity_in_eval() -> None:
    from forecast.model import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.ones(1000, 1000)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert drop.threshold == 77 and dropped == pytest.approx(77 / 256, abs=2e-3)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 256 / 179))  # scaled by 1 / (1 - p)
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # seeded like every other torch draw
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    x.requires_grad_(True)
    drop.train()(x).sum().backward()
    assert torch.unique(x.grad).tolist() == pytest.approx([0.0, 256 / 179])
