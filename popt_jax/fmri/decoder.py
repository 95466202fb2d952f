"""The transformer brain encoder's decoder and readout (Adeli, Sun & Kriegeskorte) in NNX.

Input: a frozen backbone's feature grid [B, D, H, W] (DINOv2 `dinov2_q`: [B, 768, 31, 31]),
which is the decoder's memory as is (upstream runs 0 encoder layers). With `input_dim` set
(upstream's ResNet backbones: [B, 2048, h, w]) a 1x1 convolution `input_proj` (PyTorch's
default init) first maps the input channels to `hidden_dim`. Per SPEC section 4:

* position code: DETR's 2-D sine embedding, D/2 features per axis (384 for D = 768), with
  normalised cumulative coordinates (scale 2*pi, eps 1e-6), temperature 10000, y then x, and
  sin/cos interleaved within each axis;
* queries: one learned embedding per ROI query (`rois_all`: every named ROI of the five query
  families + one "Unknown" per hemisphere, left hemisphere first);
* ONE pre-norm decoder layer without self-attention, starting from t = 0:
  t += CrossAttn(LN1(t) + query_pos, memory + pos, memory); t += FFN(LN3(t)) (ReLU);
  then a final LayerNorm. Dropout on the attention weights and after each branch;
* readout per hemisphere: Linear(D -> n_vertices) applied to each of the hemisphere's query
  tokens, and vertex v's prediction = sum_q mask[q, v] * out[q, v].

The `rois_all` readout is computed grouped (`grouped_readout=True`, the default): a vertex
reads only the 1-3 queries whose ROIs contain it, so vertices are grouped by that set of
queries (their mask column); each group's tokens are summed once and multiply only the group's
Linear columns: sum_q m[q, v] (t_q . W_v + b_v) = (sum_q m[q, v] t_q) . W_v + b_v sum_q m[q, v],
the same sums regrouped, forward and backward, at about 1/Q of the dense readout's
multiply-adds. `grouped_readout=False` keeps the dense Linear-then-mask form (upstream's).

Readout modes as upstream offers them for this decoder (`readout_res`):

* `rois_all`: as above;
* `hemis`: two queries; the left Linear reads query 0, the right one query 1; no masks;
* `voxels`: one query per vertex (left vertices first); vertex v reads only its own query
  (upstream takes the diagonal of Linear(all queries)); no masks.

Initialisation follows upstream: Xavier-uniform for every matrix of the decoder (the q/k/v
bound computed on the packed [3D, D] matrix, as `nn.MultiheadAttention` holds it), zero
attention biases, PyTorch defaults for FFN biases, LayerNorms and the readout Linears, N(0, 1)
query embeddings. `from_torch_state_dict` loads an upstream `brain_encoder` state_dict (the
unused `self_attn`, `norm2` and `memory_proj` tensors are accepted and ignored).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from popt_jax.core import torch_io
from popt_jax.core.nn import Buffer, Dropout, Linear

__all__ = ["BrainEncoderConfig", "BrainEncoder", "ReadoutPlan", "GroupedReadout", "sine_position_code", "from_torch_state_dict",
           "to_torch_state_dict", "READOUTS"]

READOUTS = ("rois_all", "hemis", "voxels")
LN_EPS = 1e-5  # torch's LayerNorm default (upstream does not change it)


@dataclasses.dataclass(frozen=True)
class BrainEncoderConfig:
    """Decoder sizes; defaults are upstream's (d 768, 16 heads, FFN 1024, dropout 0.1).

    Attributes:
      hidden_dim: token width; equals the feature channels unless `input_dim` is set.
      n_heads: cross-attention heads.
      ff_dim: FFN hidden width.
      dropout: on attention weights and after each residual branch (training only).
      readout: 'rois_all', 'hemis' or 'voxels'.
      lh_vertices, rh_vertices: vertices per hemisphere.
      lh_queries, rh_queries: queries per hemisphere (rois_all: mask rows; hemis: 1 each;
        voxels: = the vertex counts).
      temperature: of the sine position code.
      grouped_readout: `rois_all` readout by query groups (see the module docstring);
        False = upstream's dense Linear over every query, then the masks.
      input_dim: feature channels projected to `hidden_dim` by `input_proj` (a 1x1
        convolution, upstream's for ResNet backbones); 0 = no projection.
    """

    hidden_dim: int = 768
    n_heads: int = 16
    ff_dim: int = 1024
    dropout: float = 0.1
    readout: str = "rois_all"
    lh_vertices: int = 0
    rh_vertices: int = 0
    lh_queries: int = 0
    rh_queries: int = 0
    temperature: float = 10000.0
    grouped_readout: bool = True
    input_dim: int = 0

    def __post_init__(self):
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.hidden_dim % self.n_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by "
                             f"{self.n_heads} heads")
        if self.hidden_dim % 2:
            raise ValueError("hidden_dim must be even (half per axis for the position code)")

    @property
    def n_queries(self) -> int:
        return self.lh_queries + self.rh_queries


def sine_position_code(h: int, w: int, dim: int, temperature: float = 10000.0,
                       scale: float = 2 * math.pi, eps: float = 1e-6) -> np.ndarray:
    """DETR sine position code of an unpadded h x w grid -> float32 [h*w, dim] (row-major).

    The first dim/2 channels encode y, the rest x; within an axis channel 2i is
    sin(c / T^(2i/(dim/2))) and 2i+1 is cos of the same argument, with c the 1-based cumulative
    coordinate normalised to (0, 2*pi].
    """
    npf = dim // 2
    y = np.arange(1, h + 1, dtype=np.float32)[:, None].repeat(w, 1)
    x = np.arange(1, w + 1, dtype=np.float32)[None, :].repeat(h, 0)
    y = y / (np.float32(h) + np.float32(eps)) * np.float32(scale)
    x = x / (np.float32(w) + np.float32(eps)) * np.float32(scale)
    i = np.arange(npf, dtype=np.float32)
    freq = np.float32(temperature) ** (2 * (i // 2) / np.float32(npf))

    def axis(c):
        a = c[..., None] / freq
        return np.where(np.arange(npf) % 2 == 0, np.sin(a), np.cos(a)).astype(np.float32)

    return np.concatenate([axis(y), axis(x)], -1).reshape(h * w, dim)


MAX_GROUPS = 1024  # more distinct query sets than this: the dense readout is cheaper to compile
CHUNK = 128  # rows per block of the grouped readout's weight (a group pads to a multiple)


class ReadoutPlan:
    """Static grouping of one hemisphere's vertices by the set of queries that read them.

    Vertices with equal mask columns form a group (`combos` [groups, Q] holds the columns).
    The grouped readout stores the Linear's rows group by group, each group padded with zero
    rows to a multiple of `chunk`, as blocks [n_chunks, chunk, D]; `chunk_group` is each
    block's group and `position` [V] each vertex's row in that storage. Padding rows are never
    read into a prediction, so they get no gradient and stay zero. Hashable by content, so it
    can live in a module as static structure.

    Args:
      masks: [Q, V] readout masks.
      chunk: rows per block.
    """

    def __init__(self, masks: np.ndarray, chunk: int = CHUNK):
        m = np.asarray(masks, np.float32)
        combos, group = np.unique(m.T, axis=0, return_inverse=True)
        group = group.reshape(-1)
        sizes = np.bincount(group, minlength=len(combos))
        n_chunks = -(-sizes // chunk)
        first_row = np.concatenate([[0], np.cumsum(n_chunks * chunk)[:-1]])
        order = np.argsort(group, kind="stable")
        rank = np.empty(len(group), np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank[order] = np.arange(len(group)) - starts[group[order]]
        self.chunk = int(chunk)
        self.n_vertices = len(group)
        self.position = (first_row[group] + rank).astype(np.int32)
        self.chunk_group = np.repeat(np.arange(len(combos)), n_chunks).astype(np.int32)
        self.combos = combos.astype(np.float32)
        self.weight_sum = m.sum(0)
        self._key = hashlib.sha1(m.tobytes() + str((m.shape, chunk)).encode()).hexdigest()

    @property
    def n_groups(self) -> int:
        return len(self.combos)

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_group)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, ReadoutPlan) and other._key == self._key

    def to_blocks(self, kernel: np.ndarray) -> np.ndarray:
        """Dense kernel [D, V] -> block storage [n_chunks, chunk, D] (zero padding rows)."""
        kernel = np.asarray(kernel)
        rows = np.zeros((self.n_chunks * self.chunk, kernel.shape[0]), kernel.dtype)
        rows[self.position] = kernel.T
        return rows.reshape(self.n_chunks, self.chunk, kernel.shape[0])

    def from_blocks(self, blocks) -> np.ndarray:
        """Block storage (or its gradient) -> the dense kernel [D, V]."""
        blocks = np.asarray(blocks)
        return blocks.reshape(-1, blocks.shape[-1])[self.position].T


class GroupedReadout(nnx.Module):
    """Linear(D -> V) read through the masks, computed per query group (module docstring).

    Holds `weight` [n_chunks, chunk, D] (see `ReadoutPlan`) and `bias` [V]; the PyTorch
    layout (`{hemi}_embed.0.weight` [V, D]) is converted on import and export.
    """

    def __init__(self, plan: ReadoutPlan, kernel: np.ndarray, bias: np.ndarray):
        self.plan = plan
        self.weight = nnx.Param(jnp.asarray(plan.to_blocks(kernel)))
        self.bias = nnx.Param(jnp.asarray(bias))

    def dense_kernel(self, blocks=None) -> np.ndarray:
        """[D, V] view of `weight` (or of `blocks`, e.g. its gradient)."""
        return self.plan.from_blocks(self.weight.value if blocks is None else blocks)

    def __call__(self, tokens):
        """tokens [B, Q, D] -> [B, V]."""
        p = self.plan
        # each group's tokens summed once (0/1 weights: exact sums of the same terms)
        summed = jnp.einsum("gq,bqd->gdb", jnp.asarray(p.combos, tokens.dtype), tokens,
                            precision=jax.lax.Precision.HIGHEST)
        per_block = summed[jnp.asarray(p.chunk_group)]                       # [K, D, B]
        out = jnp.einsum("kcd,kdb->kcb", self.weight.value.astype(tokens.dtype), per_block)
        out = out.reshape(-1, tokens.shape[0])[jnp.asarray(p.position)].T    # [B, V]
        bias = self.bias.value.astype(tokens.dtype)
        return out + bias * jnp.asarray(p.weight_sum, tokens.dtype)


class _Init:
    """Initial weights drawn with numpy from a seed taken from `rngs`.

    XLA compiles every distinct `jax.random` call (shape) on its own, about half a second each
    on a CPU, which dominated building the model; numpy draws cost nothing and stay seeded.
    """

    def __init__(self, rngs: nnx.Rngs):
        self.rng = np.random.default_rng(np.asarray(jax.random.key_data(rngs.params())))

    def uniform(self, bound: float):
        return lambda key, shape, dtype=jnp.float32: jnp.asarray(
            self.rng.uniform(-bound, bound, shape), dtype)

    def xavier(self, fan_in: int, fan_out: int):
        return self.uniform(math.sqrt(6.0 / (fan_in + fan_out)))

    def torch_default(self, fan_in: int):
        """nn.Linear's default for weights and biases: U(+-1/sqrt(fan_in))."""
        return self.uniform(1.0 / math.sqrt(fan_in))

    @staticmethod
    def zeros(key, shape, dtype=jnp.float32):
        return jnp.zeros(shape, dtype)


def _linear(d_in, d_out, rngs, *, kernel_init, bias_init, dtype=None) -> nnx.Linear:
    return Linear(d_in, d_out, rngs=rngs, dtype=dtype, kernel_init=kernel_init,
                      bias_init=bias_init)


class CrossAttention(nnx.Module):
    """`nn.MultiheadAttention` numerics for query != key != value; head-averaged weights."""

    def __init__(self, dim: int, n_heads: int, dropout: float, *, rngs: nnx.Rngs,
                 init: _Init, dtype=None):
        self.n_heads = n_heads
        packed = init.xavier(dim, 3 * dim)  # torch initialises the packed [3d, d] in_proj
        zeros = init.zeros
        self.query = _linear(dim, dim, rngs, kernel_init=packed, bias_init=zeros, dtype=dtype)
        self.key = _linear(dim, dim, rngs, kernel_init=packed, bias_init=zeros, dtype=dtype)
        self.value = _linear(dim, dim, rngs, kernel_init=packed, bias_init=zeros, dtype=dtype)
        self.out = _linear(dim, dim, rngs, kernel_init=init.xavier(dim, dim), bias_init=zeros,
                           dtype=dtype)
        # hashed-index masks: threefry bits for the [B, H, Q, H*W] weights (12M at batch 16)
        # took ~20% of a CPU training step
        self.dropout = Dropout(dropout, rngs=rngs)

    def __call__(self, q_in, k_in, v_in, *, deterministic: bool):
        """[B, Q, d], [B, K, d], [B, K, d] -> (out [B, Q, d], weights [B, Q, K])."""
        b, nq, d = q_in.shape
        nk = k_in.shape[1]
        hd = d // self.n_heads
        # heads-major [B, H, L, hd]: XLA CPU runs the batched matmuls faster in this layout
        q = self.query(q_in).reshape(b, nq, self.n_heads, hd).transpose(0, 2, 1, 3)
        q = q * (1.0 / math.sqrt(hd))
        k = self.key(k_in).reshape(b, nk, self.n_heads, hd).transpose(0, 2, 1, 3)
        v = self.value(v_in).reshape(b, nk, self.n_heads, hd).transpose(0, 2, 1, 3)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
        weights = jax.nn.softmax(logits, axis=-1)
        dropped = self.dropout(weights, deterministic=deterministic).astype(v.dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", dropped, v).transpose(0, 2, 1, 3).reshape(b, nq, d)
        return self.out(out), weights.mean(axis=1)


class DecoderLayer(nnx.Module):
    """Pre-norm cross-attention + FFN layer (upstream's decoder layer with self-attention off)."""

    def __init__(self, cfg: BrainEncoderConfig, *, rngs: nnx.Rngs, init: _Init, dtype=None):
        d, f = cfg.hidden_dim, cfg.ff_dim
        self.norm1 = nnx.LayerNorm(d, epsilon=LN_EPS, rngs=rngs, dtype=dtype)
        self.cross_attn = CrossAttention(d, cfg.n_heads, cfg.dropout, rngs=rngs, init=init,
                                         dtype=dtype)
        self.norm3 = nnx.LayerNorm(d, epsilon=LN_EPS, rngs=rngs, dtype=dtype)
        self.linear1 = _linear(d, f, rngs, kernel_init=init.xavier(d, f),
                               bias_init=init.torch_default(d), dtype=dtype)
        self.linear2 = _linear(f, d, rngs, kernel_init=init.xavier(f, d),
                               bias_init=init.torch_default(f), dtype=dtype)
        self.dropout = Dropout(cfg.dropout, rngs=rngs)   # inside the FFN
        self.dropout2 = Dropout(cfg.dropout, rngs=rngs)  # after cross-attention
        self.dropout3 = Dropout(cfg.dropout, rngs=rngs)  # after the FFN

    def __call__(self, t, memory, pos, query_pos, *, deterministic: bool):
        a, weights = self.cross_attn(self.norm1(t) + query_pos, memory + pos, memory,
                                     deterministic=deterministic)
        t = t + self.dropout2(a, deterministic=deterministic)
        h = jax.nn.relu(self.linear1(self.norm3(t)))
        h = self.linear2(self.dropout(h, deterministic=deterministic))
        return t + self.dropout3(h, deterministic=deterministic), weights


class BrainEncoder(nnx.Module):
    """Queries -> one decoder layer over the feature grid -> per-hemisphere vertex predictions.

    Args:
      cfg: sizes and readout mode.
      lh_masks, rh_masks: `rois_all` readout masks [queries, vertices] (0/1), stored with the
        model as non-trainable buffers; None for `hemis`/`voxels`.
    """

    def __init__(self, cfg: BrainEncoderConfig, lh_masks: np.ndarray | None = None,
                 rh_masks: np.ndarray | None = None, *, rngs: nnx.Rngs, dtype=None):
        self.config = cfg
        plans = None
        if cfg.readout == "rois_all":
            for name, m, q, v in (("lh", lh_masks, cfg.lh_queries, cfg.lh_vertices),
                                  ("rh", rh_masks, cfg.rh_queries, cfg.rh_vertices)):
                if m is None or tuple(m.shape) != (q, v):
                    got = None if m is None else tuple(m.shape)
                    raise ValueError(f"rois_all needs {name} masks of shape ({q}, {v}), "
                                     f"got {got}")
            self.lh_masks = Buffer(jnp.asarray(lh_masks, jnp.float32))
            self.rh_masks = Buffer(jnp.asarray(rh_masks, jnp.float32))
            if cfg.grouped_readout:
                grouped = {"lh": ReadoutPlan(lh_masks), "rh": ReadoutPlan(rh_masks)}
                if max(p.n_groups for p in grouped.values()) <= MAX_GROUPS:
                    plans = grouped
        elif cfg.readout == "hemis" and (cfg.lh_queries, cfg.rh_queries) != (1, 1):
            raise ValueError("the hemis readout has one query per hemisphere")
        elif cfg.readout == "voxels" and (cfg.lh_queries, cfg.rh_queries) != (
                cfg.lh_vertices, cfg.rh_vertices):
            raise ValueError("the voxels readout has one query per vertex")
        d = cfg.hidden_dim
        init = _Init(rngs)
        self.query_embed = nnx.Param(jnp.asarray(init.rng.standard_normal((cfg.n_queries, d)),
                                                 jnp.float32))
        self.layer = DecoderLayer(cfg, rngs=rngs, init=init, dtype=dtype)
        self.norm = nnx.LayerNorm(d, epsilon=LN_EPS, rngs=rngs, dtype=dtype)
        for hemi, n_v in (("lh", cfg.lh_vertices), ("rh", cfg.rh_vertices)):
            if plans is None:
                setattr(self, f"{hemi}_embed", _linear(d, n_v, rngs,
                                                       kernel_init=init.torch_default(d),
                                                       bias_init=init.torch_default(d),
                                                       dtype=dtype))
            else:  # the same draws as the Linear, stored by query group
                kernel = init.torch_default(d)(None, (d, n_v))
                bias = init.torch_default(d)(None, (n_v,))
                setattr(self, f"{hemi}_embed", GroupedReadout(
                    plans[hemi], np.asarray(kernel), np.asarray(bias)))
        if cfg.input_dim:  # drawn last, so the other weights match the projection-free model
            self.input_proj = _linear(cfg.input_dim, d, rngs,
                                      kernel_init=init.torch_default(cfg.input_dim),
                                      bias_init=init.torch_default(cfg.input_dim), dtype=dtype)

    def decode(self, features, *, deterministic: bool = True):
        """features [B, D, H, W] -> (query tokens [B, Q, D], attention [B, Q, H*W])."""
        b, d, h, w = features.shape
        want = self.config.input_dim or self.config.hidden_dim
        if d != want:
            raise ValueError(f"features have {d} channels, the decoder expects {want}")
        memory = features.reshape(b, d, h * w).transpose(0, 2, 1)
        if self.config.input_dim:
            memory = self.input_proj(memory)
            d = self.config.hidden_dim
        pos = jnp.asarray(sine_position_code(h, w, d, self.config.temperature), memory.dtype)
        query_pos = jnp.broadcast_to(self.query_embed.value.astype(memory.dtype),
                                     (b, self.config.n_queries, d))
        t = jnp.zeros_like(query_pos)
        t, weights = self.layer(t, memory, pos[None], query_pos, deterministic=deterministic)
        return self.norm(t), weights

    def readout(self, tokens):
        """Query tokens [B, Q, D] -> (lh [B, lh_vertices], rh [B, rh_vertices])."""
        cfg = self.config
        lh_t, rh_t = tokens[:, :cfg.lh_queries], tokens[:, cfg.lh_queries:]
        if cfg.readout == "hemis":
            return self.lh_embed(lh_t[:, 0]), self.rh_embed(rh_t[:, 0])

        def per_hemi(t, layer, masks):
            if isinstance(layer, GroupedReadout):
                return layer(t)
            kernel = layer.kernel.value.astype(t.dtype)
            bias = layer.bias.value.astype(t.dtype)
            if cfg.readout == "voxels":  # vertex v reads its own query only
                return jnp.einsum("bvd,dv->bv", t, kernel) + bias
            out = jnp.einsum("bqd,dv->bqv", t, kernel) + bias
            return jnp.einsum("bqv,qv->bv", out, masks.value.astype(t.dtype))

        lh = per_hemi(lh_t, self.lh_embed, getattr(self, "lh_masks", None))
        rh = per_hemi(rh_t, self.rh_embed, getattr(self, "rh_masks", None))
        return lh, rh

    def __call__(self, features, *, deterministic: bool = True) -> dict[str, jax.Array]:
        """features [B, D, H, W] -> {'lh', 'rh' (vertex predictions), 'attention' [B, Q, H*W]
        (cross-attention weights averaged over heads), 'tokens' [B, Q, D]}."""
        tokens, weights = self.decode(features, deterministic=deterministic)
        lh, rh = self.readout(tokens)
        return {"lh": lh, "rh": rh, "attention": weights, "tokens": tokens}


# --------------------------------------------------------------------------------------------
# Upstream (PyTorch) state_dict <-> NNX
# --------------------------------------------------------------------------------------------

_PREFIX = "transformer.decoder.layers.0."
_UNUSED = ("transformer.memory_proj.", _PREFIX + "self_attn.", _PREFIX + "norm2.")


def layout(model: BrainEncoder) -> torch_io.Layout:
    """Where each upstream `brain_encoder` tensor (decoder + readout) lives in `model`."""
    slot, T = torch_io.Slot, torch_io.transpose
    layer, attn = ("layer",), ("layer", "cross_attn")
    out: torch_io.Layout = {"query_embed.weight": [slot(("query_embed",))]}
    for tname, mod in (("norm1", layer + ("norm1",)), ("norm3", layer + ("norm3",))):
        out[f"{_PREFIX}{tname}.weight"] = [slot(mod + ("scale",))]
        out[f"{_PREFIX}{tname}.bias"] = [slot(mod + ("bias",))]
    for tname, mod in (("linear1", layer + ("linear1",)), ("linear2", layer + ("linear2",)),
                       ("multihead_attn.out_proj", attn + ("out",))):
        out[f"{_PREFIX}{tname}.weight"] = [slot(mod + ("kernel",), T, T)]
        out[f"{_PREFIX}{tname}.bias"] = [slot(mod + ("bias",))]
    qkv = [attn + (n,) for n in ("query", "key", "value")]
    out[f"{_PREFIX}multihead_attn.in_proj_weight"] = [slot(m + ("kernel",), T, T, i, 3)
                                                      for i, m in enumerate(qkv)]
    out[f"{_PREFIX}multihead_attn.in_proj_bias"] = [slot(m + ("bias",), part=i, parts=3)
                                                    for i, m in enumerate(qkv)]
    if model.config.input_dim:  # Conv2d 1x1 weight [D, C, 1, 1] <-> kernel [C, D]
        out["input_proj.weight"] = [slot(("input_proj", "kernel"), lambda a: a.T[:, :, None, None],
                                         lambda a: a.reshape(a.shape[0], -1).T)]
        out["input_proj.bias"] = [slot(("input_proj", "bias"))]
    out["transformer.decoder.norm.weight"] = [slot(("norm", "scale"))]
    out["transformer.decoder.norm.bias"] = [slot(("norm", "bias"))]
    for hemi in ("lh", "rh"):
        emb = getattr(model, f"{hemi}_embed")
        if isinstance(emb, GroupedReadout):
            plan = emb.plan
            out[f"{hemi}_embed.0.weight"] = [slot(
                (f"{hemi}_embed", "weight"), lambda w, p=plan: p.from_blocks(w).T,
                lambda a, p=plan: p.to_blocks(a.T))]
        else:
            out[f"{hemi}_embed.0.weight"] = [slot((f"{hemi}_embed", "kernel"), T, T)]
        out[f"{hemi}_embed.0.bias"] = [slot((f"{hemi}_embed", "bias"))]
    return out


def to_torch_state_dict(model: BrainEncoder) -> dict[str, np.ndarray]:
    """Upstream-layout state_dict (decoder + readout; no backbone, no unused tensors)."""
    return torch_io.export_state_dict(model, layout(model))


def from_torch_state_dict(model: BrainEncoder, sd: dict[str, Any]) -> BrainEncoder:
    """Copies an upstream `brain_encoder` state_dict into `model` (in place), strictly.

    `backbone_model.*` and the tensors upstream creates but never uses in this path are
    skipped; anything else missing, unexpected or mis-shaped raises `ConversionError`.
    """
    torch_io.fill_state_dict(model, layout(model), sd, source="brain encoder state_dict",
                             target="the brain encoder", ignore=("backbone_model.",) + _UNUSED,
                             limit=6)
    return model
