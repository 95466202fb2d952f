"""BrainBERT in Flax NNX, and the jitted feature function `brainbert_embed`.

Spectrogram [B, T, 40] -> Linear(40 -> 768) + sinusoidal table -> LayerNorm -> 6 post-norm
layers (12 heads, FFN 3072, GELU) -> hidden [B, T, 768]; a spectrogram head (Linear -> GELU
-> LayerNorm -> Linear) for masked-spectrogram pretraining. The layout follows the PyTorch
original, so published checkpoints map onto it tensor for tensor (`popt_jax.ieeg.convert`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from popt_jax.core.nn import Buffer, cast_floats, layer_norm, torch_linear
from popt_jax.ieeg import signal as signal_lib
from popt_jax.ieeg.layers import (
    Dropout,
    Encoder,
    EncoderLayer,
    SpecPredictionHead,
    default_attention,
    set_attention,
    sinusoid_table,
)


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



# --------------------------------------------------------------------------------------------
# BrainBERT
# --------------------------------------------------------------------------------------------


class BrainBERTInput(nnx.Module):
    """in_proj -> + sinusoidal table -> LayerNorm -> dropout."""

    def __init__(self, cfg: BrainBERTConfig, *, rngs: nnx.Rngs, dtype=None):
        self.in_proj = torch_linear(cfg.input_dim, cfg.hidden_dim, rngs, dtype)
        self.pe = Buffer(jnp.asarray(sinusoid_table(cfg.max_len, cfg.hidden_dim)))
        self.layer_norm = layer_norm(cfg.hidden_dim, rngs, dtype)
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



def _pooled_last_layer(layer: EncoderLayer, x: jax.Array, half_width: int) -> jax.Array:
    """`center_pool(layer(x))` (eval mode, no padding) computing only what the pool reads.

    Only the 2 * half_width centre queries are needed, but they attend to every frame, whose
    keys and values (2 T d^2 multiply-adds) would cost more than the rest of the layer. The
    same sums are regrouped per head h instead (exact in real arithmetic):
      logits = q_h . (x Wk_h + bk_h) = (q_h Wk_h^T) . x + q_h . bk_h, and the last term is
        the same for every key of a query, which the softmax cancels;
      attn_h = p_h (x Wv_h + bv_h) = (p_h x) Wv_h + bv_h, as each row of p_h sums to 1;
    so the layer costs O(P d^2 + P T d) for P pooled rows instead of O(T d^2).
    """
    mha = layer.self_attn
    b, length, d = x.shape
    heads = mha.n_heads
    hd = d // heads
    mid = length // 2
    centre = x[:, mid - half_width: mid + half_width]  # [B, P, d]
    q = (mha.query(centre) * (1.0 / math.sqrt(hd))).reshape(b, -1, heads, hd)
    qk = jnp.einsum("bphe,dhe->bhpd", q, mha.key.kernel.value.reshape(d, heads, hd))
    logits = jnp.einsum("bhpd,btd->bhpt", qk, x).astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    px = jnp.einsum("bhpt,btd->bhpd", weights, x)
    attn = jnp.einsum("bhpd,dhe->bphe", px, mha.value.kernel.value.reshape(d, heads, hd))
    attn = attn.reshape(b, -1, d) + mha.value.bias.value
    out = layer.finish(centre, mha.out(attn), deterministic=True)
    return jnp.mean(out, axis=-2)


def pooled_embedding(model: BrainBERT, spec: jax.Array, half_width: int = 5) -> jax.Array:
    """`center_pool(model(spec))` (eval mode) with the last layer reduced to the pooled frames.

    Every layer but the last needs all frames (they are the last layer's keys and values);
    the last one computes only its 2 * half_width centre queries (`_pooled_last_layer`): for
    186 frames it costs ~4% of a full layer instead of 100%.
    """
    x = model.input_encoding(spec, deterministic=True)
    layers = model.transformer.layers
    for layer in layers[:-1]:
        x, _ = layer(x, None, deterministic=True)
    return _pooled_last_layer(layers[-1], x, half_width)


@functools.partial(jax.jit, static_argnames=("graphdef", "compute_dtype", "chunk", "stft_kw",
                                             "attention"))
def _embed(graphdef, state, wav, compute_dtype, chunk, stft_kw, attention="einsum"):
    lead = wav.shape[:-1]
    # Electrodes of one window stay together so the upstream all-flat guard sees them.
    spec = signal_lib.brainbert_spectrogram(wav.astype(jnp.float32), **dict(stft_kw))
    spec = spec.reshape(-1, *spec.shape[-2:])
    if compute_dtype != jnp.float32:
        state = cast_floats(state, compute_dtype)
    model = set_attention(nnx.merge(graphdef, state), attention)

    def one(s):
        return pooled_embedding(model, s.astype(compute_dtype)).astype(jnp.float32)

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


def default_chunk() -> int:
    """`brainbert_embed`'s electrode-windows per inner step on JAX's default backend.

    CPU: 4. Each step's activations (4 x 186 frames: the FFN's [744, 3072] is 9 MB) then stay
    in the caches between the GEMMs and the elementwise passes (bias, GELU, LayerNorm, the
    softmax), which on a 2-core machine made extraction 1.2-1.5x faster than one step over
    64 electrode-windows (scripts/benchmark_features.py). Accelerators: 256 (bounds memory;
    larger GEMMs keep the device busy).
    """
    return 4 if jax.default_backend() == "cpu" else 256


def brainbert_embed(model: BrainBERT, wav, *, compute_dtype=jnp.float32,
                    chunk: int | str | None = "auto",
                    nperseg: int = 400, noverlap: int = 350, n_freqs: int = 40,
                    trim: int = 10, attention: str | None = None) -> jax.Array:
    """Raw sEEG windows [..., n_samples] -> BrainBERT embeddings [..., hidden] (one jit).

    STFT features (`signal.brainbert_spectrogram`), BrainBERT in eval mode, then the mean of
    the 10 centre frames (the last layer computes only those after its attention, see
    `pooled_embedding`). Batched over any leading axes (e.g. [windows, electrodes, samples]);
    a trailing electrodes axis is treated as one upstream call for the all-flat guard.

    Args:
      model: a `BrainBERT`.
      wav: float array [..., n_samples] (10240 for 5 s at 2048 Hz).
      compute_dtype: float32 (default, parity) or bfloat16 (faster on accelerators; the STFT
        and softmax stay float32).
      chunk: electrode-windows per inner step (bounds activation memory, and on CPUs keeps
        it in cache); "auto" = `default_chunk()`; None = all at once.
      nperseg, noverlap, n_freqs, trim: STFT parameters (upstream defaults).
      attention: "einsum", "xla" or "cudnn" (`layers.set_attention`); None = cuDNN's fused
        attention on GPUs (bfloat16; float32 uses XLA's), einsum elsewhere.

    Returns:
      float32 [..., hidden].
    """
    if chunk == "auto":
        chunk = default_chunk()
    graphdef, state = nnx.split(model)
    stft_kw = (("nperseg", nperseg), ("noverlap", noverlap), ("n_freqs", n_freqs), ("trim", trim))
    return _embed(graphdef, state, jnp.asarray(wav), jnp.dtype(compute_dtype), chunk, stft_kw,
                  attention or default_attention())
