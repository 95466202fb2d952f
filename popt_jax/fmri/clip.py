"""CLIP image tower (open_clip `VisionTransformer`) in Flax NNX, and its strict weight import.

Upstream's `clip` backbone (`models/clip.py` of transformer_brain_encoder) is open_clip's
`ViT-L-14` with the OpenAI weights: the visual tower run with `output_tokens=True`, its patch
tokens (after `ln_post`, before the projection) multiplied by the tower's `proj` matrix
(1024 -> 768), and laid out as a grid [B, 768, 16, 16] for 224 x 224 input. The class token is
dropped. That is feature kind `clip` here, with one generalisation: `block` picks the block
whose tokens go through `ln_post` and `proj` (-1 = the last block, upstream's only choice).

Architecture (open_clip's defaults for ViT-L/14): a bias-free 14x14 patch convolution, a class
token and a learned position table for the 16 x 16 grid of 224-pixel input, `ln_pre`, 24
pre-norm residual blocks (LayerNorm eps 1e-5, one packed q/k/v attention with 16 heads of 64,
MLP of width 4x), `ln_post`, and `proj` [width, output_dim]. OpenAI's weights were trained with
QuickGELU (x * sigmoid(1.702 x)), which open_clip 2.x used when loading them under the tag
`openai` (upstream's code dates from May 2025); `act="gelu"` gives the erf GELU that open_clip
3.x's `create_model('ViT-L-14', pretrained='openai')` runs (with a mismatch warning).

The position table is not resized: the input grid must equal the table's (224 px for ViT-L/14;
set `features.image_size=224`, as upstream does with `--image_size 224`).

Accepted weight files (read by `core.torch_io.read_checkpoint`, no code is ever unpickled):
open_clip's `open_clip_pytorch_model.bin` / `open_clip_model.safetensors` (e.g. the Hugging Face
repo `timm/vit_large_patch14_clip_224.openai`), or any `.pt`/`.pth`/`.bin` holding a CLIP
`state_dict()` (keys `visual.*`; the text tower's tensors are recognised and skipped) or a
visual tower's own `state_dict()` (keys `conv1.weight`, `class_embedding`, ...). OpenAI's
original `ViT-L-14.pt` is a TorchScript archive, not a state_dict: it is refused with one line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from popt_jax.core import torch_io
from popt_jax.core.nn import Linear
from popt_jax.errors import ConversionError
from popt_jax.fmri import dinov2
from popt_jax.fmri.dinov2 import Attention

__all__ = ["ClipVisionConfig", "ClipVision", "ACTIVATIONS", "OPENAI_MEAN", "OPENAI_STD",
           "load_clip", "clip_from_state_dict", "to_state_dict", "infer_config", "EXPECT"]

ACTIVATIONS = ("quick_gelu", "gelu")
# CLIP's own normalisation (open_clip's OPENAI_DATASET_MEAN/STD); upstream uses ImageNet's.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTH = 64  # open_clip's VisionCfg.head_width: heads = width // 64
# Text-tower tensors of a whole CLIP state_dict (skipped; only `visual.*` is loaded).
_TEXT = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.",
         "text_projection", "logit_scale", "logit_bias", "attn_mask")


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
    """Architecture of an open_clip ViT image tower; the defaults are `ViT-L-14`.

    Attributes:
      patch_size: side of the square patches in pixels.
      width: token width.
      layers: number of residual blocks.
      heads: attention heads per block.
      mlp_ratio: MLP hidden width / width.
      grid: side of the square patch grid of the position table (224 / 14 = 16).
      output_dim: columns of `proj` = the feature channels (768 for ViT-L/14).
      act: 'quick_gelu' (OpenAI weights) or 'gelu'.
      layer_norm_eps: epsilon of every LayerNorm (torch's default).
      in_chans: image channels.
    """

    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    grid: int = 16
    output_dim: int = 768
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    in_chans: int = 3

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)

    def describe(self) -> str:
        """'CLIP ViT-L/14'-style name (by width), for messages."""
        names = {768: "B", 1024: "L", 1280: "H"}
        size = names.get(self.width, f"width{self.width}")
        return (f"CLIP ViT-{size}/{self.patch_size} (width {self.width}, {self.layers} layers, "
                f"output {self.output_dim})")


EXPECT = {"": None, "vitb16": dict(patch_size=16, width=768, layers=12, heads=12, grid=14,
                                   output_dim=512),
          "vitl14": dict(patch_size=14, width=1024, layers=24, heads=16, grid=16,
                         output_dim=768)}


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class _Init(dinov2._Init):
    """dinov2's numpy-seeded draws; under `nnx.eval_shape` (weight loading) no draws at all,
    which for ViT-L's 300M weights would cost seconds for values that are overwritten."""

    def __init__(self, rngs: nnx.Rngs):
        super().__init__(rngs)
        self.abstract = isinstance(jax.random.key_data(rngs.params()), jax.core.Tracer)

    def normal(self, std: float):
        return self.zeros if self.abstract else super().normal(std)

    def uniform(self, bound: float):
        return self.zeros if self.abstract else super().uniform(bound)


class Mlp(nnx.Module):
    """c_fc -> activation -> c_proj."""

    def __init__(self, dim: int, hidden: int, act: str, *, rngs: nnx.Rngs, init: _Init,
                 dtype=None):
        self.act = act
        self.c_fc = Linear(dim, hidden, dtype=dtype, rngs=rngs, kernel_init=init.normal(
            (2 * dim) ** -0.5), bias_init=init.zeros)
        self.c_proj = Linear(hidden, dim, dtype=dtype, rngs=rngs, kernel_init=init.normal(
            dim ** -0.5), bias_init=init.zeros)

    def __call__(self, x):
        h = self.c_fc(x)
        h = h * jax.nn.sigmoid(1.702 * h) if self.act == "quick_gelu" else jax.nn.gelu(
            h, approximate=False)
        return self.c_proj(h)


class ResBlock(nnx.Module):
    """x += attn(ln_1(x)); x += mlp(ln_2(x)) (open_clip's ResidualAttentionBlock, no LayerScale)."""

    def __init__(self, cfg: ClipVisionConfig, *, rngs: nnx.Rngs, init: _Init, dtype=None):
        eps = cfg.layer_norm_eps
        self.ln_1 = nnx.LayerNorm(cfg.width, epsilon=eps, dtype=dtype, rngs=rngs)
        # dinov2.Attention: the same packed q/k/v + output projection as nn.MultiheadAttention.
        self.attn = Attention(cfg.width, cfg.heads, rngs=rngs, init=init, dtype=dtype)
        self.ln_2 = nnx.LayerNorm(cfg.width, epsilon=eps, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.act, rngs=rngs, init=init, dtype=dtype)

    def __call__(self, x):
        x = x + self.attn(self.ln_1(x))[0]
        return x + self.mlp(self.ln_2(x))


class ClipVision(nnx.Module):
    """open_clip ViT image tower (eval only; no patch dropout, no attentional pooling)."""

    def __init__(self, cfg: ClipVisionConfig = ClipVisionConfig(), *, rngs: nnx.Rngs,
                 dtype=None):
        self.config = cfg
        w, p = cfg.width, cfg.patch_size
        init = _Init(rngs)
        bound = 1.0 / math.sqrt(cfg.in_chans * p * p)
        # Stored in torch's conv layout [width, C, p, p]; applied as a patch matmul.
        self.conv1 = nnx.Param(init.uniform(bound)(None, (w, cfg.in_chans, p, p)))
        self.class_embedding = nnx.Param(init.normal(w ** -0.5)(None, (w,)))
        self.positional_embedding = nnx.Param(init.normal(w ** -0.5)(None, (cfg.grid ** 2 + 1,
                                                                            w)))
        eps = cfg.layer_norm_eps
        self.ln_pre = nnx.LayerNorm(w, epsilon=eps, dtype=dtype, rngs=rngs)
        self.resblocks = nnx.List([ResBlock(cfg, rngs=rngs, init=init, dtype=dtype)
                                   for _ in range(cfg.layers)])
        self.ln_post = nnx.LayerNorm(w, epsilon=eps, dtype=dtype, rngs=rngs)
        self.proj = nnx.Param(init.normal(w ** -0.5)(None, (w, cfg.output_dim)))

    def _block_index(self, block: int) -> int:
        n = self.config.layers
        if not -n <= block < n:
            raise ValueError(f"block {block} is out of range for a {n}-block model")
        return block % n

    def grid_of(self, h: int, w: int) -> tuple[int, int]:
        """Patch grid of an h x w input; it must be the position table's grid."""
        p, g = self.config.patch_size, self.config.grid
        if h % p or w % p or (h // p, w // p) != (g, g):
            raise ValueError(f"{self.config.describe()} takes {g * p}x{g * p} images (its "
                             f"position table is for a {g}x{g} grid of {p}-pixel patches), got "
                             f"{h}x{w}; resize the images to {g * p} (features.image_size)")
        return g, g

    def tokens(self, images):
        """images [B, C, H, W] -> tokens after ln_pre [B, 1 + g*g, width]."""
        b, c, h, w = images.shape
        gh, gw = self.grid_of(h, w)
        p = self.config.patch_size
        x = images.reshape(b, c, gh, p, gw, p)
        x = jnp.einsum("bcypxq,dcpq->byxd", x, self.conv1.value.astype(images.dtype))
        x = x.reshape(b, gh * gw, -1)
        cls = jnp.broadcast_to(self.class_embedding.value.astype(x.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding.value.astype(x.dtype)
        return self.ln_pre(x)

    def features(self, images, kind: str = "clip", block: int = -1):
        """Projected patch tokens of `block` as a grid [B, output_dim, gh, gw]."""
        if kind != "clip":
            raise ValueError(f"a CLIP backbone gives feature kind 'clip', not {kind!r}")
        b, _, h, w = images.shape
        gh, gw = self.grid_of(h, w)
        x = self.tokens(images)
        for blk in self.resblocks[:self._block_index(block) + 1]:
            x = blk(x)
        x = self.ln_post(x)[:, 1:] @ self.proj.value.astype(x.dtype)
        return x.reshape(b, gh, gw, -1).transpose(0, 3, 1, 2)

    def __call__(self, images):
        """(pooled [B, output_dim], tokens [B, g*g, width]): open_clip's output_tokens=True."""
        x = self.tokens(images)
        for blk in self.resblocks:
            x = blk(x)
        x = self.ln_post(x)
        return x[:, 0] @ self.proj.value.astype(x.dtype), x[:, 1:]


# --------------------------------------------------------------------------------------------
# open_clip state_dict <-> NNX
# --------------------------------------------------------------------------------------------


def _torch_name(path: tuple[str, ...]) -> str:
    if path == ("conv1",):  # a bare Param holding the conv weight
        return "conv1.weight"
    if path[0] == "resblocks":
        n, *rest = path[1:]
        if rest[:2] == ["attn", "qkv"]:
            return f"transformer.resblocks.{n}.attn.in_proj_" + (
                "weight" if rest[2] == "kernel" else "bias")
        if rest[:2] == ["attn", "proj"]:
            rest = ["attn", "out_proj", rest[2]]
        return f"transformer.resblocks.{n}." + _torch_name(tuple(rest))
    *mods, leaf = path
    if leaf in ("kernel", "scale"):
        leaf = "weight"
    return ".".join(list(mods) + [leaf])


def layout(model: ClipVision) -> torch_io.Layout:
    """Where each open_clip `visual.*` tensor (prefix removed) lives in `model`."""
    out: torch_io.Layout = {}
    for path in torch_io.flat_state(model, nnx.Param):
        if path[-1] == "kernel":  # Linear [in, out] <-> torch [out, in]
            slot = torch_io.Slot(path, torch_io.transpose, torch_io.transpose)
        else:
            slot = torch_io.Slot(path)
        out[_torch_name(path)] = [slot]
    return out


def to_state_dict(model: ClipVision, prefix: str = "") -> dict[str, np.ndarray]:
    """The tower's open_clip-layout float32 state_dict (`prefix="visual."` for a whole CLIP)."""
    return {prefix + k: v for k, v in torch_io.export_state_dict(model, layout(model)).items()}


def visual_part(sd: dict[str, Any], source: str) -> dict[str, Any]:
    """The image tower's tensors: `visual.*` with the prefix removed (text tower skipped)."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if not any(k.startswith("visual.") for k in sd):
        return sd
    out, other = {}, []
    for k, v in sd.items():
        if k.startswith("visual."):
            out[k[len("visual."):]] = v
        elif not k.startswith(_TEXT):
            other.append(k)
    if other:
        raise ConversionError(f"{source}: state_dict does not fit a CLIP model ({len(other)} "
                              f"unexpected: {', '.join(sorted(other)[:6])})")
    return out


def _need(sd, key, source, ndim):
    if key not in sd:
        raise ConversionError(f"{source}: not an open_clip ViT image tower: required tensor "
                              f"{key!r} is missing (keys start: {', '.join(sorted(sd)[:5])})")
    shape = tuple(np.shape(sd[key]))
    if len(shape) != ndim:
        raise ConversionError(f"{source}: {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def infer_config(sd: dict[str, Any], *, act: str = "quick_gelu", heads: int | None = None,
                 source: str = "state_dict") -> ClipVisionConfig:
    """The ClipVisionConfig a visual-tower state_dict was made for.

    The head count is not stored in a state_dict: `heads`, else open_clip's width // 64.
    """
    w = _need(sd, "conv1.weight", source, 4)
    if w[2] != w[3]:
        raise ConversionError(f"{source}: conv1.weight has shape {w}, expected square patches")
    _need(sd, "class_embedding", source, 1)
    n_pos = _need(sd, "positional_embedding", source, 2)[0] - 1
    grid = int(round(math.sqrt(n_pos)))
    if grid * grid != n_pos:
        raise ConversionError(f"{source}: positional_embedding has {n_pos} patch rows, not a "
                              "square grid")
    proj = _need(sd, "proj", source, 2)
    layers = 1 + max((int(m.group(1)) for k in sd
                      if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))), default=-1)
    if layers == 0:
        raise ConversionError(f"{source}: no residual blocks (transformer.resblocks.N.*)")
    hidden = _need(sd, "transformer.resblocks.0.mlp.c_fc.weight", source, 2)[0]
    width = int(w[0])
    try:
        return ClipVisionConfig(patch_size=int(w[2]), width=width, layers=int(layers),
                                heads=heads or max(1, width // HEAD_WIDTH), mlp_ratio=hidden / width,
                                grid=grid, output_dim=int(proj[1]), act=act, in_chans=int(w[1]))
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from None


def clip_from_state_dict(sd: dict[str, Any], *, expected: ClipVisionConfig | None = None,
                         act: str = "quick_gelu", heads: int | None = None,
                         source: str = "state_dict") -> ClipVision:
    """A ClipVision holding `sd` (a whole CLIP or a visual tower's state_dict), strictly."""
    sd = visual_part(sd, source)
    cfg = infer_config(sd, act=act, heads=heads, source=source)
    if expected is not None:
        size = ("patch_size", "width", "layers", "heads", "grid", "output_dim", "in_chans")
        if any(getattr(cfg, f) != getattr(expected, f) for f in size):
            raise ConversionError(f"{source}: checkpoint is a {cfg.describe()}, but a "
                                  f"{expected.describe()} was expected")
    model = nnx.eval_shape(lambda: ClipVision(cfg, rngs=nnx.Rngs(0)))
    n = torch_io.fill_state_dict(model, layout(model), sd, source=source,
                                 target=cfg.describe(), limit=8)
    logging.info("%s: loaded %s (%d tensors)", source, cfg.describe(), n)
    return model


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in z.namelist())


def load_clip(path: str | os.PathLike, *, expected: ClipVisionConfig | None = None,
              act: str = "quick_gelu", heads: int | None = None) -> ClipVision:
    """Loads an open_clip checkpoint's image tower (see the module docstring)."""
    path = os.fspath(path)
    if os.path.isfile(path) and _is_torchscript(path):
        raise ConversionError(
            f"{path}: a TorchScript archive (OpenAI's original CLIP .pt), which holds code, "
            "not a state_dict; pass open_clip's open_clip_pytorch_model.bin or "
            "open_clip_model.safetensors (Hugging Face timm/vit_large_patch14_clip_224.openai)")
    sd, _, resolved = torch_io.read_checkpoint(path)
    return clip_from_state_dict(sd, expected=expected, act=act, heads=heads, source=resolved)
