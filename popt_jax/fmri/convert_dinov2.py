"""Import of published DINOv2 weights into `popt_jax.fmri.dinov2.DinoV2` (no torch needed).

Accepted inputs (a file, or a directory holding one; read by `core.torch_io.read_checkpoint`, which
never runs pickled code):

* the torch-hub state_dict, e.g. `dinov2_vitb14_pretrain.pth`: keys `cls_token`, `pos_embed`,
  `mask_token`, `patch_embed.proj.{weight,bias}`, `blocks.N.{norm1, attn.qkv, attn.proj,
  ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}.*`, `norm.*`;
* the Hugging Face `facebook/dinov2-*` `model.safetensors` (or `pytorch_model.bin`): keys
  `embeddings.{cls_token, mask_token, position_embeddings}`,
  `embeddings.patch_embeddings.projection.*`, `encoder.layer.N.{norm1, norm2,
  attention.attention.{query,key,value}, attention.output.dense, layer_scale1.lambda1,
  layer_scale2.lambda1, mlp.fc1, mlp.fc2}.*`, `layernorm.*` (an optional `dinov2.` prefix, as
  in task heads, is stripped). Hugging Face layouts are renamed to the torch-hub names first
  (query/key/value are packed into `qkv`), so both paths share one strict loader.

The architecture is read from the tensor shapes (width, depth, patch, MLP width, pretraining
grid); the head count from `config.json` when present, otherwise from the standard DINOv2
widths (384 -> 6, 768 -> 12, 1024 -> 16, 1536 -> 24). Loading is strict as in
`popt_jax.core.torch_io`: every tensor used once, every parameter filled, shapes equal; otherwise
`ConversionError` with one line. Passing `expected` (e.g. `DinoV2Config()` for ViT-B/14)
rejects a checkpoint of another size with one line naming both.

The position table is always resized with torch-hub's rule (see `popt_jax.fmri.dinov2`), whichever
file the weights came from, because that is what the brain encoder was trained with.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np
from absl import logging
from flax import nnx

from popt_jax.core import torch_io
from popt_jax.core.torch_io import read_checkpoint
from popt_jax.errors import ConversionError
from popt_jax.fmri.dinov2 import DinoV2, DinoV2Config

__all__ = ["load_dinov2", "dinov2_from_state_dict", "hf_to_hub", "hub_to_hf", "to_state_dict",
           "infer_config"]

STANDARD_HEADS = {384: 6, 768: 12, 1024: 16, 1536: 24}

_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_HF_RENAMES = {
    "norm1": "norm1", "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def is_hf_layout(sd: dict[str, Any]) -> bool:
    return any(k.startswith(("embeddings.", "encoder.layer.", "dinov2.embeddings."))
               for k in sd)


def hf_to_hub(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face Dinov2Model names -> torch-hub names (q, k, v packed into qkv).

    Keys it does not know are kept unchanged, so the strict check reports them.
    """
    sd = {(k[len("dinov2."):] if k.startswith("dinov2.") else k): v for k, v in sd.items()}
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key, value in sd.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        m = _HF_LAYER.fullmatch(key)
        if not m:
            out[key] = value
            continue
        n, rest = m.group(1), m.group(2)
        qm = re.fullmatch(r"attention\.attention\.(query|key|value)\.(weight|bias)", rest)
        if qm:
            qkv.setdefault((n, qm.group(2)), {})[qm.group(1)] = value
            continue
        lm = re.fullmatch(r"layer_scale([12])\.lambda1", rest)
        if lm:
            out[f"blocks.{n}.ls{lm.group(1)}.gamma"] = value
            continue
        for hf, hub in _HF_RENAMES.items():
            if rest.startswith(hf + "."):
                out[f"blocks.{n}.{hub}{rest[len(hf):]}"] = value
                break
        else:
            out[key] = value
    for (n, leaf), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ConversionError(f"block {n}: attention {leaf} has only "
                                  f"{sorted(parts)} of query/key/value")
        out[f"blocks.{n}.attn.qkv.{leaf}"] = np.concatenate(
            [parts["query"], parts["key"], parts["value"]], axis=0)
    return out


def hub_to_hf(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torch-hub names -> Hugging Face Dinov2Model names (the inverse of `hf_to_hub`)."""
    top = {v: k for k, v in _HF_TOP.items()}
    out: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if not m:
            out[key] = value
            continue
        n, rest = m.groups()
        p = f"encoder.layer.{n}."
        if rest.startswith("attn.qkv."):
            leaf = rest.split(".")[-1]
            parts = np.split(value, 3, axis=0)
            for name, part in zip(("query", "key", "value"), parts, strict=True):
                out[f"{p}attention.attention.{name}.{leaf}"] = part
        elif rest.startswith("attn.proj."):
            out[p + "attention.output.dense." + rest.split(".")[-1]] = value
        elif rest in ("ls1.gamma", "ls2.gamma"):
            out[f"{p}layer_scale{rest[2]}.lambda1"] = value
        else:
            out[p + rest] = value
    return out


def _shape(sd, key, source):
    if key not in sd:
        raise ConversionError(f"{source}: required tensor {key!r} is missing "
                              f"(keys start: {', '.join(sorted(sd)[:5])})")
    return tuple(sd[key].shape)


def infer_config(sd: dict[str, np.ndarray], cfg_json: dict[str, Any] | None = None, *,
                 num_heads: int | None = None, source: str = "state_dict") -> DinoV2Config:
    """The DinoV2Config a torch-hub-layout state_dict was made for."""
    if any(k.startswith("register_tokens") for k in sd):
        raise ConversionError(f"{source}: has register tokens (a dinov2_*_reg model); only "
                              "the register-free DINOv2 backbones are supported")
    dim = _shape(sd, "cls_token", source)[-1]
    w = _shape(sd, "patch_embed.proj.weight", source)
    if len(w) != 4 or w[2] != w[3]:
        raise ConversionError(f"{source}: patch_embed.proj.weight has shape {w}, expected "
                              "[dim, channels, p, p]")
    n_pos = _shape(sd, "pos_embed", source)[1] - 1
    grid = int(round(np.sqrt(n_pos)))
    if grid * grid != n_pos:
        raise ConversionError(f"{source}: pos_embed has {n_pos} patch rows, not a square grid")
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))),
                    default=-1)
    if depth == 0:
        raise ConversionError(f"{source}: no transformer blocks (blocks.N.*) found")
    hidden = _shape(sd, "blocks.0.mlp.fc1.weight", source)[0]
    if num_heads is None and cfg_json:
        num_heads = cfg_json.get("num_attention_heads")
    if num_heads is None:  # every released DINOv2 uses 64-wide heads
        if dim not in STANDARD_HEADS and dim % 64:
            raise ConversionError(f"{source}: width {dim} is not a standard DINOv2 size and "
                                  "no config.json says the head count; pass num_heads")
        num_heads = STANDARD_HEADS.get(dim, dim // 64)
    eps = float((cfg_json or {}).get("layer_norm_eps", 1e-6))
    try:
        return DinoV2Config(patch_size=int(w[2]), embed_dim=int(dim), depth=int(depth),
                            num_heads=int(num_heads), mlp_ratio=hidden / dim,
                            pretrain_grid=grid, layer_norm_eps=eps, in_chans=int(w[1]))
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from None


# --------------------------------------------------------------------------------------------
# NNX <-> torch-hub layout
# --------------------------------------------------------------------------------------------


def _hub_name(path: tuple[str, ...]) -> str:
    *mods, leaf = path
    if leaf in ("kernel", "scale"):
        leaf = "weight"
    return ".".join(mods + [leaf])


def _kernel_from_torch(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1).T  # conv [D, C, p, p] and linear [out, in] alike


def layout(model: DinoV2) -> torch_io.Layout:
    """Where each torch-hub tensor lives in `model` (one leaf per tensor)."""
    cfg = model.config
    p = cfg.patch_size

    def patch_to_torch(a):  # [C*p*p, D] -> conv weight [D, C, p, p]
        return a.T.reshape(cfg.embed_dim, cfg.in_chans, p, p)

    out: torch_io.Layout = {}
    for path in torch_io.flat_state(model, nnx.Param):
        if path[-1] != "kernel":
            slot = torch_io.Slot(path)
        else:
            to_torch = patch_to_torch if path[0] == "patch_embed" else torch_io.transpose
            slot = torch_io.Slot(path, to_torch, _kernel_from_torch)
        out[_hub_name(path)] = [slot]
    return out


def to_state_dict(model: DinoV2) -> dict[str, np.ndarray]:
    """torch-hub-layout float32 state_dict of `model` (loads into the upstream ViT)."""
    return torch_io.export_state_dict(model, layout(model))


def dinov2_from_state_dict(sd: dict[str, np.ndarray], cfg_json: dict[str, Any] | None = None,
                           *, expected: DinoV2Config | None = None,
                           num_heads: int | None = None, source: str = "state_dict") -> DinoV2:
    """A DinoV2 holding `sd` (torch-hub or Hugging Face layout), checked strictly."""
    if is_hf_layout(sd):
        sd = hf_to_hub(sd)
    cfg = infer_config(sd, cfg_json, num_heads=num_heads, source=source)
    if expected is not None:
        # Only the size matters here; eps/offset come from the expected config.
        size = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "in_chans")
        if any(getattr(cfg, f) != getattr(expected, f) for f in size):
            raise ConversionError(f"{source}: checkpoint is a {cfg.describe()}, "
                                  f"{cfg.num_heads} heads, but a {expected.describe()}, "
                                  f"{expected.num_heads} heads was expected")
        cfg = dataclasses.replace(expected, pretrain_grid=cfg.pretrain_grid)
    # Abstract init: no random numbers are drawn for weights that are overwritten anyway.
    model = nnx.eval_shape(lambda: DinoV2(cfg, rngs=nnx.Rngs(0)))
    n = torch_io.fill_state_dict(model, layout(model), sd, source=source,
                                 target=cfg.describe(), limit=8)
    logging.info("%s: loaded %s (%d tensors)", source, cfg.describe(), n)
    return model


def load_dinov2(path: str | os.PathLike, *, expected: DinoV2Config | None = None,
                num_heads: int | None = None) -> DinoV2:
    """Loads a torch-hub `.pth` or Hugging Face safetensors DINOv2 checkpoint (see above)."""
    sd, cfg_json, resolved = read_checkpoint(os.fspath(path))
    return dinov2_from_state_dict(sd, cfg_json, expected=expected, num_heads=num_heads,
                                  source=resolved)
