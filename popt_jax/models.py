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
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x, pad_mask=None, *, deterministic: bool = True):
        """x [B, L, d], pad_mask [B, L] (True = padding) -> (out [B, L, d], weights [B, H, L, L])."""
        b, length, d = x.shape
        hd = d // self.n_heads

        def heads(t):
            return t.reshape(b, length, self.n_heads, hd)

        q = heads(self.query(x)) * (1.0 / math.sqrt(hd))
        k, v = heads(self.key(x)), heads(self.value(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if pad_mask is not None:
            logits = jnp.where(pad_mask[:, None, None, :], -jnp.inf, logits)
        weights = jax.nn.softmax(logits, axis=-1)
        dropped = self.dropout(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", dropped.astype(v.dtype), v).reshape(b, length, d)
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
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.dropout1 = nnx.Dropout(dropout, rngs=rngs)
        self.dropout2 = nnx.Dropout(dropout, rngs=rngs)
        self.activation = activation

    def __call__(self, x, pad_mask=None, *, deterministic: bool = True):
        attn, weights = self.self_attn(x, pad_mask, deterministic=deterministic)
        x = self.norm1(x + self.dropout1(attn, deterministic=deterministic))
        h = self.dropout(_activation(self.activation)(self.linear1(x)),
                         deterministic=deterministic)
        x = self.norm2(x + self.dropout2(self.linear2(h), deterministic=deterministic))
        return x, weights


class Encoder(nnx.Module):
    """A stack of post-norm layers (no final norm)."""

    def __init__(self, n_layers: int, dim: int, n_heads: int, ff_dim: int, dropout: float,
                 activation: str, *, rngs: nnx.Rngs, dtype=None):
        self.layers = nnx.List([
            EncoderLayer(dim, n_heads, ff_dim, dropout, activation, rngs=rngs, dtype=dtype)
            for _ in range(n_layers)
        ])

    def __call__(self, x, pad_mask=None, *, deterministic: bool = True):
        weights = []
        for layer in self.layers:
            x, w = layer(x, pad_mask, deterministic=deterministic)
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
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

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
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, tokens, coords, seq_id, *, deterministic: bool = True):
        x = self.in_proj(tokens)
        x = x + self.positional_encoding(coords, seq_id).astype(x.dtype)
        return self.dropout(self.layer_norm(x), deterministic=deterministic)


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

    def encode(self, x, pad_mask, coords, seq_id=None, *, deterministic: bool = True):
        """Hidden states [B, 1 + n, hidden] and per-layer attention weights."""
        b, n, _ = x.shape
        if seq_id is None:
            seq_id = jnp.zeros((b, n), jnp.int32)
        if pad_mask is None:
            pad_mask = jnp.zeros((b, n), bool)
        cls = jnp.ones((b, 1, x.shape[-1]), x.dtype)
        tokens = jnp.concatenate([cls, x], axis=1)
        mask = jnp.concatenate([jnp.zeros((b, 1), bool), pad_mask.astype(bool)], axis=1)
        h = self.input_encoding(tokens, coords, seq_id, deterministic=deterministic)
        return self.transformer_encoder(h, mask, deterministic=deterministic)

    def __call__(self, x, pad_mask, coords, seq_id=None, *, deterministic: bool = True,
                 return_attention: bool = False) -> PopTOutput:
        """Runs PopT.

        Args:
          x: electrode embeddings [B, n, input_dim] (the CLS row of ones is added here).
          pad_mask: [B, n] bool, True = padding (or None).
          coords: [B, n, 3] integer (L, I, P) coordinates (floats are truncated).
          seq_id: [B, n] 0/1 pair-half id (None = zeros, as in fine-tuning).
          deterministic: disables dropout.
          return_attention: also return every layer's weights [B, heads, 1 + n, 1 + n].

        Returns:
          `PopTOutput`.
        """
        hidden, weights = self.encode(x, pad_mask, coords, seq_id, deterministic=deterministic)
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

    def __call__(self, x, pad_mask, coords, seq_id=None, *, deterministic: bool = True):
        """Logits [B, n_out] (arguments as `PopT.__call__`)."""
        hidden, _ = self.upstream.encode(x, pad_mask, coords, seq_id,
                                         deterministic=deterministic)
        return self.linear_out(hidden[:, 0])
