"""A small PyTorch statement of the DINOv2 ViT, laid out like the torch-hub state_dict.

Written for the parity tests from the published architecture (not copied from upstream): the
parameter names match `dinov2_vitb14`'s state_dict (`patch_embed.proj`, `blocks.N.attn.qkv`,
`blocks.N.ls1.gamma`, ...), the position table is resized with torch's own
`F.interpolate(mode="bicubic")` using torch-hub's scale-factor rule, and a forward hook on one
block's `qkv` captures the query projection the brain encoder uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((w @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int, chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class RefViT(nn.Module):
    """DINOv2-style ViT; `randomize()` gives every parameter non-trivial values."""

    def __init__(self, dim: int = 96, depth: int = 2, heads: int = 4, patch: int = 14,
                 grid: int = 5, mlp_ratio: float = 4.0, offset: float = 0.1):
        super().__init__()
        self.patch, self.offset = patch, offset
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    @torch.no_grad()
    def randomize(self, seed: int = 0) -> "RefViT":
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            scale = 0.3 if ("norm" in name or "ls" in name) else 0.08
            base = 1.0 if (name.endswith("weight") and "norm" in name) or "gamma" in name else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))
        return self

    def position_table(self, gh: int, gw: int, square: bool):
        n = self.pos_embed.shape[1] - 1
        m = int(math.sqrt(n))
        if gh * gw == n and square:
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.offset:
            scale = ((gh + self.offset) / m, (gw + self.offset) / m)
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        else:
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=False)
        assert grid.shape[-2:] == (gh, gw)
        grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def features(self, images, kind: str = "dinov2_q", block: int = -1):
        """Same contract as `popt_jax.dinov2.DinoV2.features` -> [B, D, gh, gw]."""
        b, _, h, w = images.shape
        gh, gw = h // self.patch, w // self.patch
        captured = {}
        target = self.blocks[block]
        hook = target.attn.qkv.register_forward_hook(
            lambda mod, inp, out: captured.__setitem__("qkv", out))
        try:
            x = self.patch_embed(images)
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
            x = x + self.position_table(gh, gw, h == w)
            outputs = []
            for blk in self.blocks:
                x = blk(x)
                outputs.append(x)
        finally:
            hook.remove()
        d = x.shape[-1]
        if kind == "dinov2_q":
            tokens = captured["qkv"][..., :d]
        else:
            tokens = self.norm(outputs[block])
        return tokens[:, 1:].reshape(b, gh, gw, d).permute(0, 3, 1, 2)


def preprocess(images_uint8):
    """uint8 [B, H, W, 3] numpy -> normalised, zero-padded [B, 3, H', W'] torch tensor."""
    x = torch.as_tensor(images_uint8).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (x - mean) / std
    h, w = x.shape[-2:]
    ph, pw = -(-h // 14) * 14, -(-w // 14) * 14
    out = torch.zeros(x.shape[0], 3, ph, pw)
    out[:, :, :h, :w] = x
    return out
