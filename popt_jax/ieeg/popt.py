"""The Population Transformer (PopT) in Flax NNX.

Per-electrode embeddings [B, n, 768] with their integer (L, I, P) brain coordinates and a
pair-half id -> a CLS row of ones is prepended -> Linear(768 -> 512) + spatial code ->
LayerNorm -> 6 post-norm layers (8 heads, FFN 2048) -> CLS logit, per-token logits and, on
request, every layer's per-head attention weights. `PopTClassifier`: PopT body + Linear(512
-> n_out) on the CLS hidden state (fine-tuning).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from popt_jax.core.nn import Buffer, layer_norm, torch_linear
from popt_jax.ieeg.layers import (
    Dropout,
    Encoder,
    PackSpec,
    SpecPredictionHead,
    TokenPacking,
    make_packing,
    pack,
    sinusoid_table,
    unpack,
)

SPATIAL, INDEX = "multi_subj_position_encoding", "index"


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
    # "table" (upstream): integer (L, I, P) rows of the sinusoid table; "continuous": the
    # same sinusoids evaluated at real-valued positions (equal to the table at integers).
    position_code: str = "table"
    # "multi_subj_position_encoding": the (L, I, P) spatial code (published PopT); "index":
    # upstream's fallback `PositionalEncoding`, a code of the token's index (the paper's
    # no-spatial-code ablation).
    position_encoding: str = "multi_subj_position_encoding"

    @classmethod
    def from_upstream(cls, cfg: dict[str, Any]) -> "PopTConfig":
        """Builds the config from an upstream `model_cfg` (pt_custom_model yaml keys)."""
        # Upstream builds the index code for any other value (TransformerEncoderInput).
        pos = cfg.get("position_encoding", "multi_subj_position_encoding")
        return cls(
            position_encoding=SPATIAL if pos == SPATIAL else INDEX,
            input_dim=int(cfg.get("input_dim", 768)),
            hidden_dim=int(cfg.get("hidden_dim", 512)),
            n_heads=int(cfg.get("n_head", 8)),
            n_layers=int(cfg.get("n_layers", 6)),
            activation=str(cfg.get("layer_activation", "gelu")),
            cls_out_dim=int(cfg.get("cls_out_dim", 1)),
            use_token_cls_head=bool(cfg.get("use_token_cls_head", False)),
        )

    def to_upstream(self) -> dict[str, Any]:
        if self.position_code != "table":
            raise ValueError("upstream PopT has no continuous position code")
        if self.ff_dim != 2048:
            raise ValueError("upstream PopT fixes the feed-forward width at 2048")
        return {
            "name": "pt_model_custom",
            "position_encoding": self.position_encoding,
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
# PopT
# --------------------------------------------------------------------------------------------


class PopTOutput(NamedTuple):
    """What `PopT.__call__` returns."""

    hidden: jax.Array  # [B, 1 + n, hidden]; index 0 is the CLS token
    cls_logits: jax.Array  # [B, cls_out_dim]
    token_logits: jax.Array | None  # [B, n, cls_out_dim] (None without a token head)
    attention: tuple[jax.Array, ...] | None  # per layer [B, heads, 1 + n, 1 + n]


def continuous_sinusoids(pos, dim: int):
    """The sinusoid table's rows at real-valued positions: [...] -> [..., dim] float32.

    Same frequencies and sin/cos interleaving as `sinusoid_table`, computed in float32, so
    at an integer position the row equals the table's (up to the last bit of sin/cos).
    """
    div = np.exp(np.arange(0, dim, 2, dtype=np.float32)
                 * np.float32(-math.log(10000.0) / dim)).astype(np.float32)
    arg = pos.astype(jnp.float32)[..., None] * jnp.asarray(div)
    return jnp.stack([jnp.sin(arg), jnp.cos(arg)], axis=-1).reshape(*pos.shape, dim)


class SpatialEncoding(nnx.Module):
    """PopT's spatial code: concat(pe[L], pe[I], pe[P], pe[seq_id]); CLS gets pe[0] x 4.

    ``continuous=True`` evaluates the three coordinate sinusoids at the real-valued positions
    instead of looking integer rows up (`continuous_sinusoids`; same width, same table for
    ``seq_id`` and the CLS token), for coordinates in millimetres mapped by
    `popt_jax.ieeg.coords.CoordMapping.positions`.
    """

    def __init__(self, hidden_dim: int, max_len: int, continuous: bool = False):
        if hidden_dim % 4:
            raise ValueError("PopT hidden size must be divisible by 4")
        self.pe = Buffer(jnp.asarray(sinusoid_table(max_len, hidden_dim // 4)))
        self.continuous = continuous

    def __call__(self, coords, seq_id):
        """coords [B, n, 3], seq_id [B, n] int -> codes [B, 1 + n, hidden] (CLS first)."""
        pe = self.pe.value
        seq_id = seq_id.astype(jnp.int32)
        b, n, _ = coords.shape
        if self.continuous:
            xyz = continuous_sinusoids(coords, pe.shape[-1]).reshape(b, n, -1)
        else:
            # Integer indexing as in torch: floats truncate toward zero, negatives wrap.
            xyz = pe[coords.astype(jnp.int32)].reshape(b, n, -1)
        codes = jnp.concatenate([xyz, pe[seq_id]], axis=-1)
        cls = jnp.broadcast_to(jnp.tile(pe[0], 4), (b, 1, codes.shape[-1]))
        return jnp.concatenate([cls, codes], axis=1)


class IndexEncoding(nnx.Module):
    """The no-spatial-code ablation (upstream `PositionalEncoding`): row i of the sequence,
    CLS included, gets pe[i] of a full-width sinusoid table; coordinates are ignored."""

    def __init__(self, hidden_dim: int, max_len: int):
        self.pe = Buffer(jnp.asarray(sinusoid_table(max_len, hidden_dim)))

    def __call__(self, coords, seq_id):
        """coords [B, n, 3] (unused but for the shape) -> codes [B, 1 + n, hidden]."""
        b, n = coords.shape[:2]
        pe = self.pe.value[:n + 1]
        return jnp.broadcast_to(pe[None], (b, n + 1, pe.shape[-1]))


class PopTInput(nnx.Module):
    """in_proj (CLS row included) -> + spatial code -> LayerNorm -> dropout."""

    def __init__(self, cfg: PopTConfig, *, rngs: nnx.Rngs, dtype=None):
        self.in_proj = torch_linear(cfg.input_dim, cfg.hidden_dim, rngs, dtype)
        if cfg.position_code not in ("table", "continuous"):
            raise ValueError(f"position_code must be table or continuous, not "
                             f"{cfg.position_code!r}")
        if cfg.position_encoding not in (SPATIAL, INDEX):
            raise ValueError(f"position_encoding must be {SPATIAL!r} or {INDEX!r}, got "
                             f"{cfg.position_encoding!r}")
        if cfg.position_encoding == SPATIAL:
            self.positional_encoding = SpatialEncoding(cfg.hidden_dim, cfg.max_len,
                                                       cfg.position_code == "continuous")
        else:
            self.positional_encoding = IndexEncoding(cfg.hidden_dim, cfg.max_len)
        self.layer_norm = layer_norm(cfg.hidden_dim, rngs, dtype)
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
        self.cls_head = torch_linear(cfg.hidden_dim, cfg.cls_out_dim, rngs, dtype, zero_bias=False)
        self.token_cls_head = (
            torch_linear(cfg.hidden_dim, cfg.cls_out_dim, rngs, dtype, zero_bias=False)
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
          coords: [B, n, 3] integer (L, I, P) coordinates (floats are truncated), or
            real-valued positions with ``position_code="continuous"``.
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
        self.linear_out = torch_linear(cfg.hidden_dim, n_out, rngs, dtype, zero_bias=False)

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
