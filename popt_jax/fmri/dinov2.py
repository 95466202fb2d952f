"""DINOv2 vision transformer (the brain encoder's frozen backbone) in Flax NNX.

The layout follows the torch-hub `dinov2_vitb14` model so its state_dict maps one to one
(`popt_jax.convert_dinov2`): a 14x14 patch embedding, a class token, a learned position table
for the 37x37 pretraining grid (518 px), pre-norm blocks with LayerScale (LayerNorm eps 1e-6,
exact GELU MLP of width 4x), and a final LayerNorm. ViT-B/14 has no register tokens.

Features for the brain encoder (SPEC section 4):

* `dinov2_q`: the query projection (bias included) of one block's attention, computed on that
  block's normed input -- the first third of the packed `qkv` output -- for the patch tokens.
* `dinov2`: one block's output tokens after the final LayerNorm (torch-hub's
  `get_intermediate_layers(..., norm=True)`), patch tokens only.

Both come back as a channel-first grid [B, dim, gh, gw] ([B, 768, 31, 31] for 434x434 input).

Position table at other input sizes: torch-hub resizes it with `F.interpolate(mode="bicubic",
antialias=False, align_corners=False)` and a scale factor of (grid + 0.1) / 37, a historical
offset that makes the sampling positions differ slightly from a plain resize to `grid`. PyTorch's
cubic kernel uses a = -0.75 (JAX's `jax.image.resize` uses a = -0.5), so the resize here is two
separable interpolation matrices built from PyTorch's formulas (`torch_bicubic_matrix`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from popt_jax.core.nn import Linear, cast_floats

__all__ = [
    "DinoV2Config",
    "DinoV2",
    "FEATURE_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "torch_bicubic_matrix",
    "resize_position_table",
    "preprocess_images",
    "padded_size",
    "extract_features",
]

FEATURE_KINDS = ("dinov2_q", "dinov2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DinoV2Config:
    """Architecture of a DINOv2 ViT; the defaults are torch-hub's `dinov2_vitb14`.

    Attributes:
      patch_size: side of the square patches in pixels.
      embed_dim: token width.
      depth: number of blocks.
      num_heads: attention heads per block.
      mlp_ratio: MLP hidden width / embed_dim.
      pretrain_grid: side of the square patch grid the position table was trained for
        (518 px / 14 = 37).
      layer_norm_eps: epsilon of every LayerNorm.
      interpolate_offset: torch-hub's +0.1 added to the target grid when computing the resize
        scale factor; 0 resizes to the target grid exactly (newer Hugging Face behaviour).
      in_chans: image channels.
    """

    patch_size: int = 14
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    pretrain_grid: int = 37
    layer_norm_eps: float = 1e-6
    interpolate_offset: float = 0.1
    in_chans: int = 3

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by "
                             f"{self.num_heads} heads")

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def describe(self) -> str:
        """'ViT-B/14'-style name (by width), for messages."""
        names = {384: "S", 768: "B", 1024: "L", 1536: "g"}
        size = names.get(self.embed_dim, f"dim{self.embed_dim}")
        return f"ViT-{size}/{self.patch_size} (dim {self.embed_dim}, depth {self.depth})"


# --------------------------------------------------------------------------------------------
# PyTorch-compatible bicubic resize of the position table
# --------------------------------------------------------------------------------------------


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t in [0, 1)."""
    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


def torch_bicubic_matrix(in_size: int, out_size: int, scale_factor: float | None = None
                         ) -> np.ndarray:
    """[out_size, in_size] matrix M with `M @ x` == torch's 1-D bicubic resize of x.

    Mirrors `upsample_bicubic2d` with align_corners=False, antialias=False: the source position
    of output i is (i + 0.5) / scale - 0.5 (not clamped), where scale is `scale_factor` when
    given (torch uses the factor itself, not out/in, once one is passed) and out/in otherwise;
    the four taps around it are clamped to the border. Computed in float32 like torch's CPU
    kernel so the sampling positions agree to the last bit.
    """
    f32 = np.float32
    step = f32(1.0) / f32(scale_factor) if scale_factor else f32(in_size) / f32(out_size)
    dst = np.arange(out_size, dtype=f32)
    src = (step * (dst + f32(0.5)) - f32(0.5)).astype(f32)
    base = np.floor(src)
    t = (src - base).astype(f32)
    w = _cubic_weights(t.astype(np.float64)).astype(np.float64)
    mat = np.zeros((out_size, in_size), np.float64)
    for k in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
        np.add.at(mat, (np.arange(out_size), idx), w[:, k])
    return mat


def resize_position_table(table: jax.Array, grid_h: int, grid_w: int, *, image_square: bool,
                          offset: float = 0.1) -> jax.Array:
    """Position table [1 + M*M, D] for the pretraining grid -> [1 + grid_h*grid_w, D].

    Args:
      table: class-token row followed by the M x M patch rows (row-major).
      grid_h, grid_w: patch grid of the input.
      image_square: whether the input image is square; torch-hub returns the table untouched
        only when the patch count matches AND the image is square.
      offset: torch-hub's interpolate_offset (0 -> resize to the grid exactly).
    """
    n = table.shape[0] - 1
    m = int(round(math.sqrt(n)))
    if m * m != n:
        raise ValueError(f"position table has {n} patch rows, not a square grid")
    if grid_h * grid_w == n and image_square:
        return table
    if offset:
        rows = torch_bicubic_matrix(m, grid_h, (grid_h + offset) / m)
        cols = torch_bicubic_matrix(m, grid_w, (grid_w + offset) / m)
    else:
        rows, cols = torch_bicubic_matrix(m, grid_h), torch_bicubic_matrix(m, grid_w)
    patch = table[1:].astype(jnp.float32).reshape(m, m, -1)
    hi = jax.lax.Precision.HIGHEST  # the table is tiny; keep the resize exact in float32
    patch = jnp.einsum("ia,abd->ibd", jnp.asarray(rows, jnp.float32), patch, precision=hi)
    patch = jnp.einsum("jb,ibd->ijd", jnp.asarray(cols, jnp.float32), patch, precision=hi)
    out = jnp.concatenate([table[:1].astype(jnp.float32), patch.reshape(grid_h * grid_w, -1)])
    return out.astype(table.dtype)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class _Init:
    """Initial weights drawn with numpy, seeded from `rngs`.

    Every distinct `jax.random` call compiles on its own (about 0.5 s each on a CPU); numpy
    draws cost nothing. Only random-init backbones use these (pretrained weights overwrite
    them).
    """

    def __init__(self, rngs: nnx.Rngs):
        data = jax.random.key_data(rngs.params())
        # Under nnx.eval_shape (checkpoint loading) the key is abstract and values unused.
        seed = 0 if isinstance(data, jax.core.Tracer) else np.asarray(data)
        self.rng = np.random.default_rng(seed)

    def normal(self, std: float):
        # timm's trunc_normal_(std=0.02) truncates at +-2 absolute, i.e. +-100 std: a normal.
        return lambda key, shape, dtype=jnp.float32: jnp.asarray(
            std * self.rng.standard_normal(shape), dtype)

    def uniform(self, bound: float):
        return lambda key, shape, dtype=jnp.float32: jnp.asarray(
            self.rng.uniform(-bound, bound, shape), dtype)

    @staticmethod
    def zeros(key, shape, dtype=jnp.float32):
        return jnp.zeros(shape, dtype)


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs, init: _Init, dtype=None) -> nnx.Linear:
    # timm/DINOv2 init: trunc normal(0.02) weights, zero biases.
    return Linear(d_in, d_out, dtype=dtype, rngs=rngs, kernel_init=init.normal(0.02),
                      bias_init=init.zeros)


class LayerScale(nnx.Module):
    """Per-channel learned scale of a residual branch (`ls1.gamma`, init 1.0 in torch-hub)."""

    def __init__(self, dim: int, init: float = 1.0):
        self.gamma = nnx.Param(jnp.full((dim,), init, jnp.float32))

    def __call__(self, x):
        return x * self.gamma.value.astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head self-attention with one packed qkv projection (torch-hub layout)."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, init: _Init, dtype=None):
        self.dim, self.num_heads = dim, num_heads
        self.qkv = _linear(dim, 3 * dim, rngs, init, dtype)
        self.proj = _linear(dim, dim, rngs, init, dtype)

    def __call__(self, x):
        """x [B, N, D] -> (out [B, N, D], q [B, N, D] with bias, before the head split)."""
        b, n, d = x.shape
        hd = d // self.num_heads
        qkv = self.qkv(x)
        q, k, v = (qkv[..., i * d:(i + 1) * d] for i in range(3))

        def heads(t):
            return t.reshape(b, n, self.num_heads, hd)

        logits = jnp.einsum("bqhd,bkhd->bhqk", heads(q) * (hd ** -0.5), heads(k))
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, heads(v)).reshape(b, n, d)
        return self.proj(out), q


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, init: _Init, dtype=None):
        self.fc1 = _linear(dim, hidden, rngs, init, dtype)
        self.fc2 = _linear(hidden, dim, rngs, init, dtype)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))  # torch's erf GELU


class Block(nnx.Module):
    """Pre-norm block: x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))."""

    def __init__(self, cfg: DinoV2Config, *, rngs: nnx.Rngs, init: _Init, dtype=None):
        eps = cfg.layer_norm_eps
        self.norm1 = nnx.LayerNorm(cfg.embed_dim, epsilon=eps, dtype=dtype, rngs=rngs)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, rngs=rngs, init=init, dtype=dtype)
        self.ls1 = LayerScale(cfg.embed_dim)
        self.norm2 = nnx.LayerNorm(cfg.embed_dim, epsilon=eps, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_dim, rngs=rngs, init=init, dtype=dtype)
        self.ls2 = LayerScale(cfg.embed_dim)

    def __call__(self, x):
        """Returns (block output, query projection of this block's normed input)."""
        a, q = self.attn(self.norm1(x))
        x = x + self.ls1(a)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x, q


class PatchEmbed(nnx.Module):
    """Non-overlapping p x p patches -> tokens, as a reshape and one matmul.

    The kernel is the PyTorch conv weight [D, C, p, p] flattened to [C*p*p, D] in (c, y, x)
    order, so the conv and the matmul agree exactly.
    """

    def __init__(self, cfg: DinoV2Config, *, rngs: nnx.Rngs, init: _Init, dtype=None):
        self.patch = cfg.patch_size
        fan_in = cfg.in_chans * cfg.patch_size ** 2
        # torch Conv2d default init: U(+-1/sqrt(fan_in)) for weight and bias.
        bound = 1.0 / math.sqrt(fan_in)
        self.proj = Linear(fan_in, cfg.embed_dim, dtype=dtype, rngs=rngs,
                               kernel_init=init.uniform(bound), bias_init=init.uniform(bound))

    def __call__(self, images):
        """images [B, C, H, W] (H, W multiples of the patch) -> [B, gh*gw, D]."""
        b, c, h, w = images.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}; "
                             "pad it first (preprocess_images)")
        x = images.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
        return self.proj(x.reshape(b, (h // p) * (w // p), c * p * p))


class DinoV2(nnx.Module):
    """DINOv2 ViT (eval only: no dropout / drop-path, which torch-hub disables at inference)."""

    def __init__(self, cfg: DinoV2Config = DinoV2Config(), *, rngs: nnx.Rngs, dtype=None):
        self.config = cfg
        d = cfg.embed_dim
        init = _Init(rngs)
        self.patch_embed = PatchEmbed(cfg, rngs=rngs, init=init, dtype=dtype)
        self.cls_token = nnx.Param(init.normal(1e-6)(None, (1, 1, d)))
        self.pos_embed = nnx.Param(init.normal(0.02)(None, (1, cfg.pretrain_grid ** 2 + 1, d)))
        # Unused at inference (masked-image pretraining only); kept so checkpoints load strictly.
        self.mask_token = nnx.Param(jnp.zeros((1, d)))
        self.blocks = nnx.List([Block(cfg, rngs=rngs, init=init, dtype=dtype)
                                for _ in range(cfg.depth)])
        self.norm = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

    def tokens(self, images):
        """images [B, C, H, W] -> initial tokens [B, 1 + gh*gw, D] (class token first)."""
        b, _, h, w = images.shape
        p = self.config.patch_size
        x = self.patch_embed(images)
        cls = jnp.broadcast_to(self.cls_token.value.astype(x.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        pos = resize_position_table(self.pos_embed.value[0], h // p, w // p,
                                    image_square=(h == w),
                                    offset=self.config.interpolate_offset)
        return x + pos.astype(x.dtype)[None]

    def _block_index(self, block: int) -> int:
        depth = self.config.depth
        if not -depth <= block < depth:
            raise ValueError(f"block {block} is out of range for a {depth}-block model")
        return block % depth

    def features(self, images, kind: str = "dinov2_q", block: int = -1):
        """Brain-encoder features as a grid [B, D, gh, gw] (see the module docstring)."""
        if kind not in FEATURE_KINDS:
            raise ValueError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")
        b, _, h, w = images.shape
        p = self.config.patch_size
        stop = self._block_index(block)
        x = self.tokens(images)
        q = None
        for blk in self.blocks[:stop + 1]:  # later blocks cannot change these features
            x, q = blk(x)
        out = q if kind == "dinov2_q" else self.norm(x)
        out = out[:, 1:]  # patch tokens only
        return out.reshape(b, h // p, w // p, -1).transpose(0, 3, 1, 2)

    def __call__(self, images):
        """Final normed tokens [B, 1 + gh*gw, D] (torch-hub's `x_norm` before the split)."""
        x = self.tokens(images)
        for blk in self.blocks:
            x, _ = blk(x)
        return self.norm(x)


# --------------------------------------------------------------------------------------------
# Preprocessing and jitted extraction
# --------------------------------------------------------------------------------------------


def padded_size(size: int, patch: int = 14) -> int:
    """Smallest multiple of `patch` >= size (425 -> 434)."""
    return -(-int(size) // patch) * patch


def preprocess_images(images: np.ndarray | jax.Array, patch: int = 14,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H', W'] for DINOv2.

    ToTensor-like scaling to [0, 1], ImageNet mean/std, then zero padding on the right and
    bottom up to a multiple of the patch size (after normalisation, as upstream does, so the
    padding is 0 in normalised units).
    """
    x = jnp.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got shape {tuple(x.shape)}")
    x = x.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    h, w = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (0, padded_size(h, patch) - h), (0, padded_size(w, patch) - w),
                    (0, 0)))
    return x.transpose(0, 3, 1, 2)


@functools.partial(jax.jit, static_argnames=("graphdef", "kind", "block", "compute_dtype",
                                             "pad_to_patch"))
def _extract(graphdef, state, images, kind, block, compute_dtype, pad_to_patch):
    if pad_to_patch:  # uint8 input: preprocess inside the same program
        images = preprocess_images(images, pad_to_patch)
    if compute_dtype != jnp.float32:
        state = cast_floats(state, compute_dtype)
    model = nnx.merge(graphdef, state)
    out = model.features(images.astype(compute_dtype), kind=kind, block=block)
    return out.astype(jnp.float32)


def extract_features(model: DinoV2, images, kind: str = "dinov2_q", block: int = -1, *,
                     compute_dtype: Any = jnp.float32) -> jax.Array:
    """Jitted brain-encoder features of a batch.

    Args:
      model: a `DinoV2`.
      images: uint8 [B, H, W, 3] (preprocessed here: scaling, ImageNet normalisation, padding)
        or float [B, 3, H', W'] already preprocessed.
      kind: 'dinov2_q' (attention queries) or 'dinov2' (normed block output).
      block: which block (negative counts from the end; -1 = last).
      compute_dtype: float32 (parity) or bfloat16 (faster on accelerators; softmax stays
        float32).

    Returns:
      float32 [B, D, gh, gw].
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")
    model._block_index(block)  # range check outside jit, for a readable error
    graphdef, state = nnx.split(model)
    images = jnp.asarray(images)
    pad_to_patch = model.config.patch_size if images.dtype == jnp.uint8 else 0
    return _extract(graphdef, state, images, kind, int(block), jnp.dtype(compute_dtype),
                    pad_to_patch)
