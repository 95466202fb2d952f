"""A PyTorch statement of the brain encoder's decoder + readout, for the parity tests.

Written from the published description with upstream's module names, so its state_dict has
upstream's keys: `query_embed.weight`, `transformer.decoder.layers.0.{multihead_attn, self_attn,
norm1, norm2, norm3, linear1, linear2}`, `transformer.decoder.norm`, `transformer.memory_proj`,
`{lh,rh}_embed.0`. It uses `nn.MultiheadAttention` in its (sequence, batch, dim) layout and
applies the `rois_all` masks the way upstream's criterion does (per-vertex sum over queries).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sine_code(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """[dim, h, w] DETR-style code of an unpadded grid (y half first)."""
    npf = dim // 2
    ones = torch.ones(1, h, w)
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    t = torch.arange(npf, dtype=torch.float32)
    t = temperature ** (2 * torch.div(t, 2, rounding_mode="floor") / npf)
    px, py = x[..., None] / t, y[..., None] / t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)[0]


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout)  # unused, as upstream
        self.multihead_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
        self.linear1 = nn.Linear(d, ff)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ff, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, t, memory, pos, query_pos):
        a, w = self.multihead_attn(self.norm1(t) + query_pos, memory + pos, memory)
        t = t + self.dropout2(a)
        h = self.linear2(self.dropout(F.relu(self.linear1(self.norm3(t)))))
        return t + self.dropout3(h), w


class Decoder(nn.Module):
    def __init__(self, layer: DecoderLayer, d: int):
        super().__init__()
        self.layers = nn.ModuleList([layer])
        self.norm = nn.LayerNorm(d)


class Transformer(nn.Module):
    def __init__(self, d, heads, ff, dropout):
        super().__init__()
        self.decoder = Decoder(DecoderLayer(d, heads, ff, dropout), d)
        self.memory_proj = nn.Conv2d(d, 64, kernel_size=1)  # unused, as upstream


class RefBrainEncoder(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, readout: str, lh_v: int, rh_v: int,
                 lh_masks=None, rh_masks=None, dropout: float = 0.1):
        super().__init__()
        self.readout, self.lh_v = readout, lh_v
        if readout == "rois_all":
            q = lh_masks.shape[0] + rh_masks.shape[0]
            self.register_buffer("lh_masks", torch.as_tensor(lh_masks).float(), persistent=False)
            self.register_buffer("rh_masks", torch.as_tensor(rh_masks).float(), persistent=False)
        else:
            q = 2 if readout == "hemis" else lh_v + rh_v
        self.transformer = Transformer(d, heads, ff, dropout)
        self.query_embed = nn.Embedding(q, d)
        self.lh_embed = nn.Sequential(nn.Linear(d, lh_v))
        self.rh_embed = nn.Sequential(nn.Linear(d, rh_v))

    @torch.no_grad()
    def randomize(self, seed: int = 0) -> "RefBrainEncoder":
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
        return self

    def forward(self, src):
        """src [B, d, H, W] -> (lh [B, lh_v], rh [B, rh_v], attention [B, Q, H*W])."""
        b, d, h, w = src.shape
        memory = src.flatten(2).permute(2, 0, 1)
        pos = sine_code(h, w, d).flatten(1).permute(1, 0)[:, None, :]
        query_pos = self.query_embed.weight[:, None, :].repeat(1, b, 1)
        layer = self.transformer.decoder.layers[0]
        t, attn = layer(torch.zeros_like(query_pos), memory, pos, query_pos)
        tokens = self.transformer.decoder.norm(t).transpose(0, 1)  # [B, Q, d]
        if self.readout == "hemis":
            return self.lh_embed(tokens[:, 0]), self.rh_embed(tokens[:, 1]), attn
        if self.readout == "voxels":
            lh = torch.diagonal(self.lh_embed(tokens[:, :self.lh_v]), dim1=-2, dim2=-1)
            rh = torch.diagonal(self.rh_embed(tokens[:, self.lh_v:]), dim1=-2, dim2=-1)
            return lh, rh, attn
        half = tokens.shape[1] // 2
        lh = torch.movedim(self.lh_embed(tokens[:, :half]), 1, -1)   # [B, V, Q]
        rh = torch.movedim(self.rh_embed(tokens[:, half:]), 1, -1)
        lh = (self.lh_masks.T[None] * lh).sum(2)
        rh = (self.rh_masks.T[None] * rh).sum(2)
        return lh, rh, attn
