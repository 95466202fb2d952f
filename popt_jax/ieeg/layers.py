"""Transformer building blocks shared by BrainBERT and PopT (post-norm, PyTorch layout).

Sinusoidal tables, a hashed-index dropout, token packing (per-token layers on real tokens
only) and the encoder stack.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from popt_jax.core.nn import Dropout, Linear, dense, hashed_bits, layer_norm, torch_linear  # noqa: F401

# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def sinusoid_table(max_len: int, dim: int) -> np.ndarray:
    """The sin/cos interleaved table of the PyTorch tutorial, computed in float32 as upstream.

    Float32 arithmetic matters: at positions in the thousands the argument's rounding moves
    the sine by ~1e-4, so a float64 table would not match the tables stored in checkpoints.
    """
    position = np.arange(max_len, dtype=np.float32)[:, None]
    div_term = np.exp(
        np.arange(0, dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / dim)
    ).astype(np.float32)
    arg = (position * div_term).astype(np.float32)
    table = np.zeros((max_len, dim), np.float32)
    table[:, 0::2] = np.sin(arg)
    table[:, 1::2] = np.cos(arg)
    return table


def activation(name: str):
    if name == "gelu":
        return functools.partial(jax.nn.gelu, approximate=False)  # torch's erf GELU
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"activation must be 'gelu' or 'relu', got {name!r}")




class TokenPacking(NamedTuple):
    """Where the real tokens of a padded batch [B, L] sit in a packed array [G, n, ...].

    The batch is cut into G equal groups of consecutive examples (one per data-parallel
    shard, so that packing never moves a token across devices); each group's real tokens
    are laid out first-to-last in n slots, and slots beyond the group's count are empty.
    Per-token layers (projections, FFN, LayerNorm) then run on G * n rows instead of B * L:
    a batch whose examples are on average half padding costs about half the FLOPs. Only
    attention goes back to the padded layout, where the key-padding mask applies as usual.
    """

    gather: jax.Array  # [G, n] int32: slot -> flat padded index in its group (Bg * L = empty)
    scatter: jax.Array  # [G, Bg * L] int32: flat padded index -> slot (n = padding)
    rows: jax.Array  # [G, n] int32: slot -> flat padded index in the whole batch (for dropout)
    length: int  # L


class PackSpec(NamedTuple):
    """Static packing plan of a batch (hashable: a jit static argument).

    slots: per-group slots for the real tokens (None = padded layout);
    groups: packing groups (one per data-parallel shard);
    out_slots: per-group slots for the rows whose final hidden state is read (`out_rows`);
      the last layer computes only those after its attention (None = every row).
    """

    slots: int | None
    groups: int = 1
    out_slots: int | None = None


def make_packing(pad_mask: jax.Array, n: int, groups: int = 1) -> TokenPacking:
    """Packing of `pad_mask` [B, L] (True = padding) into `groups` x `n` slots.

    `n` must be at least the largest number of real tokens in any group (the caller counts
    them on the host; see `packed_length`): extra real tokens would be dropped.
    """
    b, length = pad_mask.shape
    if b % groups:
        raise ValueError(f"batch {b} does not split into {groups} packing groups")
    real = jnp.logical_not(pad_mask.reshape(groups, (b // groups) * length))

    def one(r):
        slot = jnp.cumsum(r, dtype=jnp.int32) - 1
        scatter = jnp.where(r, slot, n).astype(jnp.int32)
        gather = jnp.full((n + 1,), r.shape[0], jnp.int32).at[scatter].set(
            jnp.arange(r.shape[0], dtype=jnp.int32), mode="drop")
        return gather[:n], scatter

    gather, scatter = jax.vmap(one)(real)
    rows = gather + (jnp.arange(groups, dtype=jnp.int32) * real.shape[1])[:, None]
    return TokenPacking(gather, scatter, rows, length)


def packed_length(pad_mask: np.ndarray, groups: int = 1, quantum: int = 16) -> int:
    """Host-side slot count for `make_packing`: the largest group's real-token count,
    rounded up to a multiple of (group size / `quantum`) so that few distinct shapes (and
    compilations) occur. Returns the group size itself when packing would not save work."""
    b, length = pad_mask.shape
    per_group = (b // groups) * length
    counts = np.logical_not(np.asarray(pad_mask)).reshape(groups, -1).sum(axis=1)
    step = max(1, -(-per_group // quantum))
    n = min(per_group, -(-int(counts.max()) // step) * step)
    return max(n, 1)


def pack(p: TokenPacking, x: jax.Array) -> jax.Array:
    """[B, L, ...] -> [G, n, ...] (empty slots are zero)."""
    g = p.gather.shape[0]
    flat = x.reshape(g, -1, *x.shape[2:])
    flat = jnp.concatenate([flat, jnp.zeros_like(flat[:, :1])], axis=1)
    return jax.vmap(lambda a, i: a[i])(flat, p.gather)


def unpack(p: TokenPacking, y: jax.Array) -> jax.Array:
    """[G, n, ...] -> [B, L, ...] (padded positions are zero)."""
    y = jnp.concatenate([y, jnp.zeros_like(y[:, :1])], axis=1)
    out = jax.vmap(lambda a, i: a[i])(y, p.scatter)
    return out.reshape(-1, p.length, *y.shape[2:])


ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")


def _softmax_weights(q, k, pad_mask):
    """float32 softmax(q k^T) over keys, q already scaled; [B, H, Lq, Lk]."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
    if pad_mask is not None:
        logits = jnp.where(pad_mask[:, None, None, :], -jnp.inf, logits)
    return jax.nn.softmax(logits, axis=-1)


@jax.custom_vjp
def attention_core(q, k, v, pad_mask, drop_scale):
    """softmax(q k^T) v for heads-major q (already scaled), k, v [B, H, L, hd]. `pad_mask`
    [B, L] (True = padding) masks keys, or None; `drop_scale` [B, H, Lq, Lk] (0 or
    1 / (1 - rate): the attention dropout) multiplies the weights, or None. The same values as
    the plain einsum path; the backward pass is written out (`_attention_core_bwd`)."""
    return _attention_core_fwd(q, k, v, pad_mask, drop_scale)[0]


def _attention_core_fwd(q, k, v, pad_mask, drop_scale):
    weights = _softmax_weights(q, k, pad_mask)
    dropped = weights if drop_scale is None else weights * drop_scale
    out = jnp.einsum("bhqk,bhkd->bhqd", dropped.astype(v.dtype), v)
    return out, (q, k, v, weights, drop_scale, out)


def _attention_core_bwd(res, d_out):
    """The softmax backward with FlashAttention's row term: d_logits = P * (dP - delta) with
    delta = rowsum(dO * O) (= rowsum(dP * P), dropout included), a reduction over the head
    dimension instead of over the keys. Autodiff of the softmax made several more passes over
    the [B, H, L, L] arrays, which dominate a small model's CPU step."""
    q, k, v, weights, drop_scale, out = res
    dropped = weights if drop_scale is None else weights * drop_scale
    d_v = jnp.einsum("bhqk,bhqd->bhkd", dropped.astype(v.dtype), d_out)
    d_p = jnp.einsum("bhqd,bhkd->bhqk", d_out, v).astype(jnp.float32)
    if drop_scale is not None:
        d_p = d_p * drop_scale
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1,
                    keepdims=True)
    d_logits = (weights * (d_p - delta)).astype(q.dtype)
    d_q = jnp.einsum("bhqk,bhkd->bhqd", d_logits, k)
    d_k = jnp.einsum("bhqk,bhqd->bhkd", d_logits, q)
    return d_q, d_k, d_v, None, None


attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def fused_attention(q, k, v, pad_mask, implementation: str) -> jax.Array:
    """softmax(q k^T / sqrt(hd)) v through `jax.nn.dot_product_attention`.

    q, k, v [B, L, H, hd]; pad_mask [B, L] (True = padding) masks keys. "cudnn" needs a GPU
    and float16/bfloat16 inputs; for float32 it falls back to "xla" (same maths, one fused
    program), so a float32 model gets the same results on any device.
    """
    if implementation == "cudnn" and q.dtype not in (jnp.float16, jnp.bfloat16):
        implementation = "xla"
    mask = None if pad_mask is None else jnp.logical_not(pad_mask)[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def default_attention() -> str:
    """"cudnn" when JAX's default backend is a GPU, else "einsum"."""
    return "cudnn" if jax.default_backend() == "gpu" else "einsum"


def set_attention(model: nnx.Module, implementation: str) -> nnx.Module:
    """Selects every `MultiHeadAttention`'s implementation (in place; returns `model`).

    "einsum": explicit logits and softmax (float32), attention weights returned, attention
    dropout in training. "xla" / "cudnn": `jax.nn.dot_product_attention` where no attention
    dropout applies (evaluation, feature extraction); training steps with dropout keep the
    einsum path. The fused paths return no attention weights (None in their place).
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, "
                         f"not {implementation!r}")
    for _, module in model.iter_modules():
        if isinstance(module, MultiHeadAttention):
            module.implementation = implementation
    return model


class MultiHeadAttention(nnx.Module):
    """Self-attention with PyTorch `nn.MultiheadAttention` numerics and per-head weights.

    q, k and v are separate Linear layers here; the converters split/pack PyTorch's
    `in_proj_weight` [3d, d]. Softmax runs in float32 whatever the compute dtype.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, *, rngs: nnx.Rngs, dtype=None):
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        xavier = nnx.initializers.xavier_uniform()
        zeros = nnx.initializers.zeros_init()
        self.query = Linear(dim, dim, dtype=dtype, kernel_init=xavier, bias_init=zeros,
                                rngs=rngs)
        self.key = Linear(dim, dim, dtype=dtype, kernel_init=xavier, bias_init=zeros,
                              rngs=rngs)
        self.value = Linear(dim, dim, dtype=dtype, kernel_init=xavier, bias_init=zeros,
                                rngs=rngs)
        self.out = torch_linear(dim, dim, rngs, dtype)
        self.dropout = Dropout(dropout, rngs=rngs)
        # "einsum" (default: returns the weights, applies attention dropout) or a
        # `jax.nn.dot_product_attention` implementation ("xla", "cudnn") used when no
        # attention dropout applies; see `set_attention`.
        self.implementation = "einsum"

    def __call__(self, x, pad_mask=None, *, deterministic: bool = True,
                 packing: TokenPacking | None = None, out_packing: TokenPacking | None = None):
        """x [B, L, d], pad_mask [B, L] (True = padding) -> (out [B, L, d], weights [B, H, L, L]).

        With `packing`, x and out are packed [G, n, d] (see `TokenPacking`); with
        `out_packing`, out is packed that way instead (only those queries' rows come out).
        The weights are always in the padded layout.
        """
        d = x.shape[-1]
        hd = d // self.n_heads
        # One GEMM for q, k and v (the parameters stay separate, as in the checkpoints).
        kernel = jnp.concatenate([self.query.kernel.value, self.key.kernel.value,
                                  self.value.kernel.value], axis=1)
        bias = jnp.concatenate([self.query.bias.value, self.key.bias.value,
                                self.value.bias.value])
        dtype = self.query.dtype or x.dtype
        qkv = dense(x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)
        if packing is not None:
            qkv = unpack(packing, qkv)
        b, length = qkv.shape[:2]
        no_dropout = deterministic or self.dropout.rate == 0.0
        if self.implementation != "einsum" and no_dropout:
            # Fused attention (cuDNN on GPUs): no weights come out and none are dropped.
            q, k, v = jnp.split(qkv.reshape(b, length, 3, self.n_heads, hd), 3, axis=2)
            q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
            out = fused_attention(q, k, v, pad_mask, self.implementation).reshape(b, length, d)
            dropped = None
        else:
            # Heads-major [B, H, L, hd] before the two batched matmuls: XLA CPU then runs
            # them as plain batched GEMMs; the [B, L, H, hd] einsums were about twice as slow
            # (same values: only the layout of the operands changes).
            q, k, v = qkv.reshape(b, length, 3, self.n_heads, hd).transpose(2, 0, 3, 1, 4)
            q = q * (1.0 / math.sqrt(hd))
            # The attention dropout as a 0 or 1 / (1 - rate) scale: the same hashed mask as
            # dropping the weights themselves (it depends on key, shape and rows only).
            scale = None if no_dropout else self.dropout(
                jnp.ones((b, self.n_heads, length, length), jnp.float32),
                deterministic=deterministic)
            # custom backward (`attention_core`); the returned weights are recomputed, and
            # dropped by the compiler when no caller reads them
            out = attention_core(q, k, v, pad_mask, scale)
            dropped = _softmax_weights(q, k, pad_mask)
            if scale is not None:
                dropped = dropped * scale
            out = out.transpose(0, 2, 1, 3).reshape(b, length, d)
        out_packing = out_packing if out_packing is not None else packing
        if out_packing is not None:
            out = pack(out_packing, out)
        return self.out(out), dropped


class EncoderLayer(nnx.Module):
    """Post-norm transformer layer: LN(x + MHA(x)) -> LN(x + FFN(x)), dropout as PyTorch."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, dropout: float, activation: str,
                 *, rngs: nnx.Rngs, dtype=None):
        self.self_attn = MultiHeadAttention(dim, n_heads, dropout, rngs=rngs, dtype=dtype)
        self.linear1 = torch_linear(dim, ff_dim, rngs, dtype)
        self.linear2 = torch_linear(ff_dim, dim, rngs, dtype)
        self.norm1 = layer_norm(dim, rngs, dtype)
        self.norm2 = layer_norm(dim, rngs, dtype)
        self.dropout = Dropout(dropout, rngs=rngs)
        self.dropout1 = Dropout(dropout, rngs=rngs)
        self.dropout2 = Dropout(dropout, rngs=rngs)
        self.activation = activation

    def __call__(self, x, pad_mask=None, *, deterministic: bool = True,
                 packing: TokenPacking | None = None, out_packing: TokenPacking | None = None):
        """x [B, L, d] or packed by `packing`; with `out_packing` only its rows are computed
        after the attention (the output comes out packed that way)."""
        attn, weights = self.self_attn(x, pad_mask, deterministic=deterministic,
                                       packing=packing, out_packing=out_packing)
        if out_packing is not None:
            x = pack(out_packing, unpack(packing, x) if packing is not None else x)
            packing = out_packing
        return self.finish(x, attn, deterministic=deterministic,
                           rows=None if packing is None else packing.rows), weights

    def finish(self, x, attn, *, deterministic: bool = True, rows: jax.Array | None = None):
        """The layer after its attention: LN(x + attn), then LN(x + FFN(x)) (dropout as torch).

        x and attn hold the same rows (any leading shape); `rows` as in `Dropout`.
        """
        drop = functools.partial(Dropout.__call__, deterministic=deterministic, rows=rows)
        x = self.norm1(x + drop(self.dropout1, attn))
        h = drop(self.dropout, activation(self.activation)(self.linear1(x)))
        return self.norm2(x + drop(self.dropout2, self.linear2(h)))


class Encoder(nnx.Module):
    """A stack of post-norm layers (no final norm)."""

    def __init__(self, n_layers: int, dim: int, n_heads: int, ff_dim: int, dropout: float,
                 activation: str, *, rngs: nnx.Rngs, dtype=None):
        self.layers = nnx.List([
            EncoderLayer(dim, n_heads, ff_dim, dropout, activation, rngs=rngs, dtype=dtype)
            for _ in range(n_layers)
        ])

    def __call__(self, x, pad_mask=None, *, deterministic: bool = True,
                 packing: TokenPacking | None = None, out_packing: TokenPacking | None = None):
        """`out_packing`: the rows the caller reads; the last layer computes only those after
        its attention (earlier layers need every row as keys and values)."""
        weights = []
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            x, w = layer(x, pad_mask, deterministic=deterministic, packing=packing,
                         out_packing=out_packing if last else None)
            weights.append(w)
        return x, weights


class SpecPredictionHead(nnx.Module):
    """Linear -> GELU -> LayerNorm -> Linear(hidden -> out_dim)."""

    def __init__(self, dim: int, out_dim: int, activation: str, *, rngs: nnx.Rngs, dtype=None):
        self.hidden_layer = torch_linear(dim, dim, rngs, dtype)
        self.layer_norm = layer_norm(dim, rngs, dtype)
        self.output = torch_linear(dim, out_dim, rngs, dtype)
        self.activation = activation

    def __call__(self, h):
        h = activation(self.activation)(self.hidden_layer(h))
        return self.output(self.layer_norm(h))
