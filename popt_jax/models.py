"""BrainBERT and the Population Transformer (PopT) in Flax NNX.

Both are post-norm transformer encoders in the layout of the PyTorch originals, so the
published checkpoints map onto them tensor for tensor (see `popt_jax.convert`):

* `BrainBERT`: spectrogram [B, T, 40] -> Linear(40 -> 768) + sinusoidal table -> LayerNorm ->
  6 post-norm layers (12 heads, FFN 3072, GELU) -> hidden [B, T, 768]; a spectrogram head
  (Linear -> GELU -> LayerNorm -> Linear) for masked-spectrogram pretraining.
* `PopT`: per-electrode embeddings [B, n, 768] with their integer (L, I, P) brain coordinates
  and a pair-half id -> a CLS row of ones is prepended -> Linear(768 -> 512) + spatial code ->
  LayerNorm -> 6 post-norm layers (8 heads, FFN 2048) -> CLS logit, per-token logits and,
  on request, every layer's per-head attention weights.
* `PopTClassifier`: PopT body + Linear(512 -> n_out) on the CLS hidden state (fine-tuning).

Model code holds no paths, devices or sampling rates: configs and data code do.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from popt_jax import signal as signal_lib

# PyTorch's LayerNorm default; flax's is 1e-6, which would break parity.
LN_EPS = 1e-5


class Buffer(nnx.Variable):
    """A non-trainable array stored with the model (PyTorch's registered buffer)."""


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BrainBERTConfig:
    """Architecture of BrainBERT; the defaults are the published "stft large" model."""

    input_dim: int = 40
    hidden_dim: int = 768
    n_heads: int = 12
    ff_dim: int = 3072
    n_layers: int = 6
    max_len: int = 5000
    dropout: float = 0.1
    activation: str = "gelu"

    @classmethod
    def from_upstream(cls, cfg: dict[str, Any]) -> "BrainBERTConfig":
        """Builds the config from an upstream `model_cfg` (masked_tf_model yaml keys)."""
        return cls(
            input_dim=int(cfg.get("input_dim", 40)),
            hidden_dim=int(cfg.get("hidden_dim", 768)),
            n_heads=int(cfg.get("nhead", 12)),
            ff_dim=int(cfg.get("layer_dim_feedforward", 3072)),
            n_layers=int(cfg.get("encoder_num_layers", 6)),
            activation=str(cfg.get("layer_activation", "gelu")),
        )

    def to_upstream(self) -> dict[str, Any]:
        return {
            "name": "masked_tf_model",
            "hidden_dim": self.hidden_dim,
            "layer_dim_feedforward": self.ff_dim,
            "layer_activation": self.activation,
            "nhead": self.n_heads,
            "encoder_num_layers": self.n_layers,
            "input_dim": self.input_dim,
        }


@dataclasses.dataclass(frozen=True)
class PopTConfig:
    """Architecture of PopT; the defaults are the published `pt_custom_model`."""

    input_dim: int = 768
    hidden_dim: int = 512
    n_heads: int = 8
    ff_dim: int = 2048
    n_layers: int = 6
    max_len: int = 5000
    dropout: float = 0.1
    activation: str = "gelu"
    cls_out_dim: int = 1
    use_token_cls_head: bool = True

    @classmethod
    def from_upstream(cls, cfg: dict[str, Any]) -> "PopTConfig":
        """Builds the config from an upstream `model_cfg` (pt_custom_model yaml keys)."""
        pos = cfg.get("position_encoding", "multi_subj_position_encoding")
        if pos != "multi_subj_position_encoding":
            raise ValueError(f"unsupported PopT position_encoding {pos!r}")
        return cls(
            input_dim=int(cfg.get("input_dim", 768)),
            hidden_dim=int(cfg.get("hidden_dim", 512)),
            n_heads=int(cfg.get("n_head", 8)),
            n_layers=int(cfg.get("n_layers", 6)),
            activation=str(cfg.get("layer_activation", "gelu")),
            cls_out_dim=int(cfg.get("cls_out_dim", 1)),
            use_token_cls_head=bool(cfg.get("use_token_cls_head", False)),
        )

    def to_upstream(self) -> dict[str, Any]:
        if self.ff_dim != 2048:
            raise ValueError("upstream PopT fixes the feed-forward width at 2048")
        return {
            "name": "pt_model_custom",
            "position_encoding": "multi_subj_position_encoding",
            "n_head": self.n_heads,
            "n_layers": self.n_layers,
            "hidden_dim": self.hidden_dim,
            "input_dim": self.input_dim,
            "layer_activation": self.activation,
            "attention_weights": False,
            "use_token_cls_head": self.use_token_cls_head,
            "cls_out_dim": self.cls_out_dim,
        }


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


def _activation(name: str):
    if name == "gelu":
        return functools.partial(jax.nn.gelu, approximate=False)  # torch's erf GELU
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"activation must be 'gelu' or 'relu', got {name!r}")


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs, dtype=None, zero_bias: bool = True):
    """Linear layer with PyTorch's default weight init (U(+-1/sqrt(fan_in)))."""
    bound = 1.0 / math.sqrt(d_in)
    bias_init = (nnx.initializers.zeros_init() if zero_bias
                 else nnx.initializers.uniform(2 * bound))
    layer = nnx.Linear(
        d_in, d_out, dtype=dtype, rngs=rngs,
        kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=bias_init,
    )
    if not zero_bias:  # uniform() draws in [0, 2b): centre it
        layer.bias.value = layer.bias.value - bound
    return layer


def _layer_norm(dim: int, rngs: nnx.Rngs, dtype=None) -> nnx.LayerNorm:
    # Upstream init quirk: LayerNorm biases are filled with 1.0 (the scales stay 1).
    return nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=dtype, rngs=rngs,
                         bias_init=nnx.initializers.ones_init())


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser with full avalanche (xor-shift / multiply rounds)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x21F0AAAD)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0xD35A2D97)
    return x ^ (x >> 15)


def hashed_bits(key: jax.Array, shape: tuple[int, ...], rows: jax.Array | None = None
                ) -> jax.Array:
    """uint32 pseudo-random bits of `shape`: a keyed hash of each element's logical index.

    The index is the element's flat position in `shape`, or, with `rows` (shape[:-1]), the
    position `rows * shape[-1] + last index` in the array the rows were taken from: a packed
    array (`TokenPacking.rows`) then gets exactly the bits of its padded original.

    Two rounds of `_mix32` keyed by 64 bits drawn from `key`. Unlike `jax.random.bits`
    (threefry: 20 rounds per pair of words; rbg: an unfused `rng_bit_generator` call), this is
    a handful of integer ops that XLA fuses into the consumer, so a dropout mask costs about
    as much as the multiply it feeds. The bits depend only on the key and the logical index,
    so they are the same however the array is sharded or packed. Good enough for dropout
    masks, not for anything needing statistical-test quality.
    """
    s = jax.random.bits(key, (2,), jnp.uint32)
    if rows is None:
        idx = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    else:
        last = jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1)
        idx = rows.astype(jnp.uint32)[..., None] * jnp.uint32(shape[-1]) + last
    return _mix32(_mix32(idx ^ s[0]) + s[1])


class Dropout(nnx.Dropout):
    """`nnx.Dropout` (same state, streams and semantics) with the mask from `hashed_bits`.

    An element is kept when its bits are >= round(rate * 2**32), so the drop probability is
    `rate` to within 2**-32; kept elements are scaled by 1 / (1 - rate) as in torch. `rows`
    (optional, inputs.shape[:-1]) names each row's position in the unpacked array.
    """

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None,
                 rows: jax.Array | None = None):
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        if self.broadcast_dims:
            raise NotImplementedError("hashed dropout has no broadcast_dims")
        stream = self.rngs if rngs is None else rngs
        if isinstance(stream, nnx.Rngs):
            stream = stream[self.rng_collection]
        key = stream() if callable(stream) else stream
        threshold = jnp.uint32(min(round(self.rate * 2.0**32), 2**32 - 1))
        keep = hashed_bits(key, inputs.shape, rows) >= threshold
        return jnp.where(keep, inputs / (1.0 - self.rate), jnp.zeros_like(inputs)).astype(
            inputs.dtype)


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
        self.query = nnx.Linear(dim, dim, dtype=dtype, kernel_init=xavier, bias_init=zeros,
                                rngs=rngs)
        self.key = nnx.Linear(dim, dim, dtype=dtype, kernel_init=xavier, bias_init=zeros,
                              rngs=rngs)
        self.value = nnx.Linear(dim, dim, dtype=dtype, kernel_init=xavier, bias_init=zeros,
                                rngs=rngs)
        self.out = _linear(dim, dim, rngs, dtype)
        self.dropout = Dropout(dropout, rngs=rngs)

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
        qkv = jnp.dot(x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)
        if packing is not None:
            qkv = unpack(packing, qkv)
        b, length = qkv.shape[:2]
        q, k, v = jnp.split(qkv.reshape(b, length, 3, self.n_heads, hd), 3, axis=2)
        q, k, v = q[:, :, 0] * (1.0 / math.sqrt(hd)), k[:, :, 0], v[:, :, 0]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if pad_mask is not None:
            logits = jnp.where(pad_mask[:, None, None, :], -jnp.inf, logits)
        weights = jax.nn.softmax(logits, axis=-1)
        dropped = self.dropout(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", dropped.astype(v.dtype), v).reshape(b, length, d)
        out_packing = out_packing if out_packing is not None else packing
        if out_packing is not None:
            out = pack(out_packing, out)
        return self.out(out), dropped


class EncoderLayer(nnx.Module):
    """Post-norm transformer layer: LN(x + MHA(x)) -> LN(x + FFN(x)), dropout as PyTorch."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, dropout: float, activation: str,
                 *, rngs: nnx.Rngs, dtype=None):
        self.self_attn = MultiHeadAttention(dim, n_heads, dropout, rngs=rngs, dtype=dtype)
        self.linear1 = _linear(dim, ff_dim, rngs, dtype)
        self.linear2 = _linear(ff_dim, dim, rngs, dtype)
        self.norm1 = _layer_norm(dim, rngs, dtype)
        self.norm2 = _layer_norm(dim, rngs, dtype)
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
        drop = functools.partial(Dropout.__call__, deterministic=deterministic,
                                 rows=None if packing is None else packing.rows)
        x = self.norm1(x + drop(self.dropout1, attn))
        h = drop(self.dropout, _activation(self.activation)(self.linear1(x)))
        x = self.norm2(x + drop(self.dropout2, self.linear2(h)))
        return x, weights


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
        self.hidden_layer = _linear(dim, dim, rngs, dtype)
        self.layer_norm = _layer_norm(dim, rngs, dtype)
        self.output = _linear(dim, out_dim, rngs, dtype)
        self.activation = activation

    def __call__(self, h):
        h = _activation(self.activation)(self.hidden_layer(h))
        return self.output(self.layer_norm(h))


# --------------------------------------------------------------------------------------------
# BrainBERT
# --------------------------------------------------------------------------------------------


class BrainBERTInput(nnx.Module):
    """in_proj -> + sinusoidal table -> LayerNorm -> dropout."""

    def __init__(self, cfg: BrainBERTConfig, *, rngs: nnx.Rngs, dtype=None):
        self.in_proj = _linear(cfg.input_dim, cfg.hidden_dim, rngs, dtype)
        self.pe = Buffer(jnp.asarray(sinusoid_table(cfg.max_len, cfg.hidden_dim)))
        self.layer_norm = _layer_norm(cfg.hidden_dim, rngs, dtype)
        self.dropout = Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, spec, *, deterministic: bool = True):
        x = self.in_proj(spec)
        x = x + self.pe.value[: x.shape[1]].astype(x.dtype)
        return self.dropout(self.layer_norm(x), deterministic=deterministic)


class BrainBERT(nnx.Module):
    """BrainBERT ("stft large" by default): spectrogram tokens -> contextual embeddings."""

    def __init__(self, cfg: BrainBERTConfig = BrainBERTConfig(), *, rngs: nnx.Rngs, dtype=None):
        self.config = cfg
        self.input_encoding = BrainBERTInput(cfg, rngs=rngs, dtype=dtype)
        self.transformer = Encoder(cfg.n_layers, cfg.hidden_dim, cfg.n_heads, cfg.ff_dim,
                                   cfg.dropout, cfg.activation, rngs=rngs, dtype=dtype)
        self.spec_prediction_head = SpecPredictionHead(cfg.hidden_dim, cfg.input_dim,
                                                       cfg.activation, rngs=rngs, dtype=dtype)

    def __call__(self, spec, pad_mask=None, *, deterministic: bool = True,
                 return_attention: bool = False):
        """spec [B, T, input_dim], pad_mask [B, T] (True = padding) -> hidden [B, T, hidden].

        With `return_attention`, returns (hidden, per-layer weights [B, heads, T, T]).
        """
        x = self.input_encoding(spec, deterministic=deterministic)
        hidden, weights = self.transformer(x, pad_mask, deterministic=deterministic)
        return (hidden, weights) if return_attention else hidden

    def predict_spectrogram(self, spec, pad_mask=None, *, deterministic: bool = True):
        """Masked-spectrogram pretraining output [B, T, input_dim]."""
        return self.spec_prediction_head(self(spec, pad_mask, deterministic=deterministic))


def center_pool(hidden: jax.Array, half_width: int = 5) -> jax.Array:
    """Mean of the frames [T//2 - half_width, T//2 + half_width) of [..., T, d]."""
    mid = hidden.shape[-2] // 2
    return jnp.mean(hidden[..., mid - half_width: mid + half_width, :], axis=-2)


def cast_floats(tree, dtype):
    """Casts every floating-point leaf of `tree` to `dtype` (e.g. weights for bf16 compute)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


@functools.partial(jax.jit, static_argnames=("graphdef", "compute_dtype", "chunk", "stft_kw"))
def _embed(graphdef, state, wav, compute_dtype, chunk, stft_kw):
    lead = wav.shape[:-1]
    # Electrodes of one window stay together so the upstream all-flat guard sees them.
    spec = signal_lib.brainbert_spectrogram(wav.astype(jnp.float32), **dict(stft_kw))
    spec = spec.reshape(-1, *spec.shape[-2:])
    if compute_dtype != jnp.float32:
        state = cast_floats(state, compute_dtype)
    model = nnx.merge(graphdef, state)

    def one(s):
        return center_pool(model(s.astype(compute_dtype), deterministic=True)).astype(jnp.float32)

    n = spec.shape[0]
    if chunk and n > chunk:
        # Sequential chunks bound the activation memory; the tail is zero-padded so every
        # chunk has one shape, and the padded rows are dropped afterwards.
        n_chunks = -(-n // chunk)
        spec = jnp.pad(spec, ((0, n_chunks * chunk - n), (0, 0), (0, 0)))
        out = jax.lax.map(one, spec.reshape(n_chunks, chunk, *spec.shape[1:]))
        out = out.reshape(n_chunks * chunk, -1)[:n]
    else:
        out = one(spec)
    return out.reshape(*lead, out.shape[-1])


def brainbert_embed(model: BrainBERT, wav, *, compute_dtype=jnp.float32, chunk: int | None = 256,
                    nperseg: int = 400, noverlap: int = 350, n_freqs: int = 40,
                    trim: int = 10) -> jax.Array:
    """Raw sEEG windows [..., n_samples] -> BrainBERT embeddings [..., hidden] (one jit).

    STFT features (`signal.brainbert_spectrogram`), BrainBERT in eval mode, then the mean of
    the 10 centre frames. Batched over any leading axes (e.g. [windows, electrodes, samples]);
    a trailing electrodes axis is treated as one upstream call for the all-flat guard.

    Args:
      model: a `BrainBERT`.
      wav: float array [..., n_samples] (10240 for 5 s at 2048 Hz).
      compute_dtype: float32 (default, parity) or bfloat16 (faster on accelerators; the STFT
        and softmax stay float32).
      chunk: electrode-windows per inner step (bounds activation memory); None = all at once.
      nperseg, noverlap, n_freqs, trim: STFT parameters (upstream defaults).

    Returns:
      float32 [..., hidden].
    """
    graphdef, state = nnx.split(model)
    stft_kw = (("nperseg", nperseg), ("noverlap", noverlap), ("n_freqs", n_freqs), ("trim", trim))
    return _embed(graphdef, state, jnp.asarray(wav), jnp.dtype(compute_dtype), chunk, stft_kw)


# --------------------------------------------------------------------------------------------
# PopT
# --------------------------------------------------------------------------------------------


class PopTOutput(NamedTuple):
    """What `PopT.__call__` returns."""

    hidden: jax.Array  # [B, 1 + n, hidden]; index 0 is the CLS token
    cls_logits: jax.Array  # [B, cls_out_dim]
    token_logits: jax.Array | None  # [B, n, cls_out_dim] (None without a token head)
    attention: tuple[jax.Array, ...] | None  # per layer [B, heads, 1 + n, 1 + n]


class SpatialEncoding(nnx.Module):
    """PopT's spatial code: concat(pe[L], pe[I], pe[P], pe[seq_id]); CLS gets pe[0] x 4."""

    def __init__(self, hidden_dim: int, max_len: int):
        if hidden_dim % 4:
            raise ValueError("PopT hidden size must be divisible by 4")
        self.pe = Buffer(jnp.asarray(sinusoid_table(max_len, hidden_dim // 4)))

    def __call__(self, coords, seq_id):
        """coords [B, n, 3] int, seq_id [B, n] int -> codes [B, 1 + n, hidden] (CLS first)."""
        pe = self.pe.value
        # Integer indexing as in torch: floats truncate toward zero, negatives wrap around.
        coords = coords.astype(jnp.int32)
        seq_id = seq_id.astype(jnp.int32)
        b, n, _ = coords.shape
        xyz = pe[coords].reshape(b, n, -1)
        codes = jnp.concatenate([xyz, pe[seq_id]], axis=-1)
        cls = jnp.broadcast_to(jnp.tile(pe[0], 4), (b, 1, codes.shape[-1]))
        return jnp.concatenate([cls, codes], axis=1)


class PopTInput(nnx.Module):
    """in_proj (CLS row included) -> + spatial code -> LayerNorm -> dropout."""

    def __init__(self, cfg: PopTConfig, *, rngs: nnx.Rngs, dtype=None):
        self.in_proj = _linear(cfg.input_dim, cfg.hidden_dim, rngs, dtype)
        self.positional_encoding = SpatialEncoding(cfg.hidden_dim, cfg.max_len)
        self.layer_norm = _layer_norm(cfg.hidden_dim, rngs, dtype)
        self.dropout = Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, tokens, coords, seq_id, *, deterministic: bool = True,
                 packing: TokenPacking | None = None):
        codes = self.positional_encoding(coords, seq_id)
        if packing is not None:
            tokens, codes = pack(packing, tokens), pack(packing, codes)
        x = self.in_proj(tokens)
        x = x + codes.astype(x.dtype)
        return self.dropout(self.layer_norm(x), deterministic=deterministic,
                            rows=None if packing is None else packing.rows)


class PopT(nnx.Module):
    """Population Transformer over per-electrode embeddings and their brain coordinates."""

    def __init__(self, cfg: PopTConfig = PopTConfig(), *, rngs: nnx.Rngs, dtype=None):
        self.config = cfg
        self.input_encoding = PopTInput(cfg, rngs=rngs, dtype=dtype)
        self.transformer_encoder = Encoder(cfg.n_layers, cfg.hidden_dim, cfg.n_heads,
                                           cfg.ff_dim, cfg.dropout, cfg.activation, rngs=rngs,
                                           dtype=dtype)
        self.spec_prediction_head = SpecPredictionHead(cfg.hidden_dim, cfg.input_dim,
                                                       cfg.activation, rngs=rngs, dtype=dtype)
        # The heads are made after upstream's init quirk, so they keep PyTorch's default init.
        self.cls_head = _linear(cfg.hidden_dim, cfg.cls_out_dim, rngs, dtype, zero_bias=False)
        self.token_cls_head = (
            _linear(cfg.hidden_dim, cfg.cls_out_dim, rngs, dtype, zero_bias=False)
            if cfg.use_token_cls_head else None)

    def encode(self, x, pad_mask, coords, seq_id=None, *, deterministic: bool = True,
               packed: PackSpec | None = None, out_rows: jax.Array | None = None):
        """Hidden states [B, 1 + n, hidden] and per-layer attention weights.

        `packed.slots` runs the per-token layers on the real tokens only (see `TokenPacking`;
        slots from `packed_length` on the mask with its CLS column); `packed.out_slots` with
        `out_rows` [B, 1 + n] bool (True = read by the caller) computes the last layer's
        post-attention part for those rows only. Rows computed come out the same as a padded
        run, up to float rounding; the others come out zero (padded positions, which nothing
        reads, and rows outside `out_rows`).
        """
        b, n, _ = x.shape
        if seq_id is None:
            seq_id = jnp.zeros((b, n), jnp.int32)
        if pad_mask is None:
            pad_mask = jnp.zeros((b, n), bool)
        cls = jnp.ones((b, 1, x.shape[-1]), x.dtype)
        tokens = jnp.concatenate([cls, x], axis=1)
        mask = jnp.concatenate([jnp.zeros((b, 1), bool), pad_mask.astype(bool)], axis=1)
        packing = out_packing = None
        if packed is not None and packed.slots is not None:
            packing = make_packing(mask, packed.slots, packed.groups)
        if packed is not None and packed.out_slots is not None:
            if out_rows is None:
                raise ValueError("PackSpec.out_slots needs out_rows")
            out_packing = make_packing(jnp.logical_not(out_rows) | mask, packed.out_slots,
                                       packed.groups)
        h = self.input_encoding(tokens, coords, seq_id, deterministic=deterministic,
                                packing=packing)
        h, weights = self.transformer_encoder(h, mask, deterministic=deterministic,
                                              packing=packing, out_packing=out_packing)
        last = out_packing if out_packing is not None else packing
        return (unpack(last, h) if last is not None else h), weights

    def __call__(self, x, pad_mask, coords, seq_id=None, *, deterministic: bool = True,
                 return_attention: bool = False, packed: PackSpec | None = None,
                 out_rows: jax.Array | None = None) -> PopTOutput:
        """Runs PopT.

        Args:
          x: electrode embeddings [B, n, input_dim] (the CLS row of ones is added here).
          pad_mask: [B, n] bool, True = padding (or None).
          coords: [B, n, 3] integer (L, I, P) coordinates (floats are truncated).
          seq_id: [B, n] 0/1 pair-half id (None = zeros, as in fine-tuning).
          deterministic: disables dropout.
          return_attention: also return every layer's weights [B, heads, 1 + n, 1 + n].
          packed, out_rows: skip padded tokens / unread rows (`encode`); the logits of
            skipped rows are those of a zero hidden state.

        Returns:
          `PopTOutput`.
        """
        hidden, weights = self.encode(x, pad_mask, coords, seq_id, deterministic=deterministic,
                                      packed=packed, out_rows=out_rows)
        cls_logits = self.cls_head(hidden[:, 0])
        token_logits = (self.token_cls_head(hidden[:, 1:])
                        if self.token_cls_head is not None else None)
        return PopTOutput(hidden, cls_logits, token_logits,
                          tuple(weights) if return_attention else None)


class PopTClassifier(nnx.Module):
    """Fine-tuning model: PopT body -> CLS hidden state -> Linear(hidden -> n_out)."""

    def __init__(self, cfg: PopTConfig = PopTConfig(), n_out: int = 1, *, rngs: nnx.Rngs,
                 dtype=None):
        self.upstream = PopT(cfg, rngs=rngs, dtype=dtype)
        self.linear_out = _linear(cfg.hidden_dim, n_out, rngs, dtype, zero_bias=False)

    def __call__(self, x, pad_mask, coords, seq_id=None, *, deterministic: bool = True,
                 packed: PackSpec | None = None):
        """Logits [B, n_out] (arguments as `PopT.__call__`; with `packed.out_slots` the last
        layer computes the CLS rows only, which is all this head reads)."""
        out_rows = None
        if packed is not None and packed.out_slots is not None:
            out_rows = jnp.zeros((x.shape[0], x.shape[1] + 1), bool).at[:, 0].set(True)
        hidden, _ = self.upstream.encode(x, pad_mask, coords, seq_id,
                                         deterministic=deterministic, packed=packed,
                                         out_rows=out_rows)
        return self.linear_out(hidden[:, 0])
