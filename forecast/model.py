"""Encoder-only Transformer regressor over patch tokens, with positional encoding.

The lookback of each channel is cut into patches (tokens), embedded linearly, given a position
code and passed through a stack of self-attention blocks; a linear head maps all tokens to the
H future values. Read top to bottom in the order data flows.

References:
- Vaswani et al., "Attention Is All You Need", 2017: blocks and the sinusoidal code (§3.5).
- Nie et al., "A Time Series is Worth 64 Words" (PatchTST), ICLR 2023: patching, channel
  independence, flatten head.
- Kim et al., "Reversible Instance Normalization" (RevIN), ICLR 2022.
- Li et al., "Revisiting Long-term Time Series Forecasting: An Investigation on Linear
  Mapping" (RLinear), 2023: the optional linear skip from the normalised lookback.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from forecast.config import ModelConfig


def sinusoidal_encoding(n_positions: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    pos = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)  # [N x 1]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # [ceil(d/2)]
    angle = pos / torch.pow(10000.0, two_i / d_model)  # [N x ceil(d/2)]
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.float()


def patch_count(lookback: int, cfg: ModelConfig) -> int:
    return (lookback - cfg.patch_len) // cfg.patch_stride + 1 + int(cfg.pad_end)


class RevIN(nn.Module):
    """Instance normalisation of each window, undone on the forecast (Kim et al. 2022)."""

    def __init__(self, n_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_channels))
        self.bias = nn.Parameter(torch.zeros(n_channels))

    def statistics(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std [B x 1 x C] of each window's real steps; x: [B x L x C], valid:
        [B x L x 1] with 1 on real steps, 0 on padding."""
        count = valid.sum(1, keepdim=True).clamp_min(1.0)  # [B x 1 x 1]
        mean = ((x * valid).sum(1, keepdim=True) / count).detach()
        var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / count
        return mean, torch.sqrt(var + self.eps).detach()

    def normalize(
        self, x: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, std = self.statistics(x, valid)
        return (x - mean) / std * self.weight + self.bias, mean, std

    def denormalize(self, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        # y: [B x H x C]
        return (y - self.bias) / (self.weight + self.eps**2) * std + mean


class Dropout(nn.Module):
    """Dropout whose CPU mask comes from random bytes, eight per 64-bit draw.

    torch's CPU dropout draws one Bernoulli sample per element: at PatchTST's ETTh1 size that
    was a fifth of each training step. Bytes make the drop probability a multiple of 1/256
    (0.3 → 77/256 = 0.3008); on a GPU torch's own kernel is used. The mask is multiplied in as
    floats: keeping it as bools for backward (1 byte, not 4) made a PatchTST-size training step
    about 13% slower (bool-float multiplies) with no measurable change in peak RSS.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return x * keep.to(x.dtype).mul_(256 / (256 - self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.threshold}/256"


class TokenBatchNorm(nn.Module):
    """BatchNorm over the token width, as PatchTST uses instead of LayerNorm."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(d_model)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z: [B x N x d] -> BatchNorm1d wants [B x d x N]
        return self.bn(z.transpose(1, 2)).transpose(1, 2)


def make_norm(cfg: ModelConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model) if cfg.norm == "layer" else TokenBatchNorm(cfg.d_model)


class SelfAttention(nn.Module):
    """Multi-head self-attention on the fused scaled_dot_product_attention kernel."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        # key, query, value projections for all heads, but in a batch
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = Dropout(cfg.dropout)

    def forward(self, z: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        # z: [B x N x d]; keep: [B x 1 x 1 x N] bool, True for tokens that may be attended to
        B, N, d = z.shape
        q, k, v = self.qkv(z).split(d, dim=2)
        # each: [B x heads x N x d/heads]
        q, k, v = (t.view(B, N, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # [B x heads x N x d/heads]
        y = y.transpose(1, 2).reshape(B, N, d)  # [B x N x d]
        return self.drop(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), Dropout(cfg.dropout),
            nn.Linear(cfg.d_ff, cfg.d_model), Dropout(cfg.dropout),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Block(nn.Module):
    """Attention then feed-forward, each with a residual connection and a norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.norm1, self.norm2 = make_norm(cfg), make_norm(cfg)
        self.attn = SelfAttention(cfg)
        self.ff = FeedForward(cfg)

    def forward(self, z: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if self.norm_first:
            z = z + self.attn(self.norm1(z), keep)
            return z + self.ff(self.norm2(z))
        z = self.norm1(z + self.attn(z, keep))
        return self.norm2(z + self.ff(z))


class ChannelLinear(nn.Module):
    """One linear map per channel: [B x C x L] → [B x C x H]."""

    def __init__(self, n_channels: int, in_features: int, out_features: int) -> None:
        super().__init__()
        # nn.Linear's initialisation, per channel
        bound = in_features ** -0.5
        self.weight = nn.Parameter(
            torch.empty(n_channels, out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_channels, out_features).uniform_(-bound, bound))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bcl,chl->bch", h, self.weight) + self.bias  # [B x C x H]


class PatchTransformer(nn.Module):
    """Encoder-only Transformer regressor: [B x L x C] history → [B x H x C] forecast."""

    def __init__(self, cfg: ModelConfig, lookback: int, horizon: int, n_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.lookback, self.horizon, self.n_channels = lookback, horizon, n_channels
        self.n_patches = patch_count(lookback, cfg)
        token_width = cfg.patch_len * (1 if cfg.channel_independent else n_channels)
        self.revin = RevIN(n_channels) if cfg.revin else None
        self.embed = nn.Linear(token_width, cfg.d_model)
        if cfg.positional == "sinusoidal":
            self.register_buffer(
                "position", sinusoidal_encoding(self.n_patches, cfg.d_model), persistent=False
            )
        else:
            self.position = nn.Parameter(
                torch.empty(self.n_patches, cfg.d_model).uniform_(-0.02, 0.02))
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # pre-norm blocks leave the residual stream unnormalised; post-norm ones end normalised
        self.final_norm = make_norm(cfg) if cfg.norm_first else nn.Identity()
        out = horizon if cfg.channel_independent else horizon * n_channels
        self.head_drop = Dropout(cfg.head_dropout)
        self.head = nn.Linear(self.n_patches * cfg.d_model, out)
        # a lookback → horizon map shared by all channels (RLinear, Li et al. 2023), or one per
        # channel where the channels' dynamics differ (what the per-channel Ridge baseline fits)
        self.skip: nn.Module | None = None
        if cfg.linear_skip:
            inputs = lookback + int(cfg.skip_level)  # the level is one more input
            self.skip = ChannelLinear(n_channels, inputs, horizon) \
                if cfg.skip_per_channel else nn.Linear(inputs, horizon)
        if self.skip is not None and cfg.skip_fit == "least_squares":
            self.skip.requires_grad_(False)  # solved in closed form (forecast.skip_fit) instead

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B x L x C]; pad_mask: [B x L] bool, True where a step is left padding."""
        B, L, C = x.shape
        P, S = self.cfg.patch_len, self.cfg.patch_stride
        if pad_mask is not None and not bool(pad_mask.any()):
            pad_mask = None
        valid = (
            torch.ones(B, L, 1, dtype=x.dtype, device=x.device) if pad_mask is None
            else (~pad_mask).unsqueeze(-1).to(x.dtype)
        )  # [B x L x 1]
        if self.revin is not None:
            x, mean, std = self.revin.normalize(x, valid)
        if pad_mask is not None:
            x = x * valid  # padded steps become 0, so their values cannot reach the output
        history = x  # [B x L x C], normalised, padding zeroed
        if self.cfg.pad_end:
            x = torch.cat([x, x[:, -1:].expand(B, S, C)], dim=1)  # [B x (L+S) x C]
            valid = torch.cat([valid, valid[:, -1:].expand(B, S, 1)], dim=1)
        patches = x.unfold(1, P, S)  # [B x N x C x P]
        N = patches.shape[1]
        if self.cfg.channel_independent:
            tokens = patches.permute(0, 2, 1, 3).reshape(B * C, N, P)  # [(B*C) x N x P]
        else:
            tokens = patches.reshape(B, N, C * P)  # [B x N x (C*P)]
        z = self.drop(self.embed(tokens) + self.position)  # [B' x N x d]

        keep = None
        token_real = None
        if pad_mask is not None:
            token_real = valid.unfold(1, P, S).amax(-1).squeeze(-1) > 0  # [B x N]
            if self.cfg.channel_independent:
                token_real = token_real.repeat_interleave(C, dim=0)  # [(B*C) x N]
            keep = token_real[:, None, None, :]  # [B' x 1 x 1 x N]
        for block in self.blocks:
            z = block(z, keep)
        z = self.final_norm(z)
        if token_real is not None:
            z = z * token_real.unsqueeze(-1).to(z.dtype)  # padding tokens add nothing to the head

        y = self.head(self.head_drop(z.flatten(1)))  # [B' x H] or [B x H*C]
        if self.cfg.channel_independent:
            y = y.view(B, C, self.horizon).transpose(1, 2)  # [B x H x C]
        else:
            y = y.view(B, self.horizon, C)
        if self.skip is not None:
            skip_in = history.transpose(1, 2)  # [B x C x L]
            if self.cfg.skip_level:  # the window's level in its own scale: mean / std
                skip_in = torch.cat([skip_in, (mean / std).transpose(1, 2)], dim=2)
            y = y + self.skip(skip_in).transpose(1, 2)  # [B x H x C]
        if self.revin is not None:
            y = self.revin.denormalize(y, mean, std)
        return y


def build_model(cfg: ModelConfig, lookback: int, horizon: int, n_channels: int) -> PatchTransformer:
    if cfg.patch_len > lookback:
        raise ValueError(f"patch_len {cfg.patch_len} > lookback {lookback}")
    return PatchTransformer(cfg, lookback, horizon, n_channels)


def describe(model: PatchTransformer) -> str:
    c = model.cfg
    mode = "channel-independent" if c.channel_independent else "channel-mixing"
    skip = "" if not c.linear_skip else \
        f"{'per-channel ' if c.skip_per_channel else ''}linear skip, "
    return (
        f"PatchTransformer({model.n_patches} tokens of {c.patch_len} steps, d_model={c.d_model}, "
        f"{c.n_layers} layers x {c.n_heads} heads, {mode}, {c.positional} positions, "
        f"{skip}"
        f"{model.n_params():,} params, ~{math.ceil(model.n_params() * 4 / 1024)} KiB)"
    )
