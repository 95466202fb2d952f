"""Import and export of the published PyTorch weights (PopT, BrainBERT).

Reading never needs torch and never runs pickled code (`popt_jax.core.torch_pickle`). Loading is
strict by default: every checkpoint tensor is used exactly once, every parameter and buffer of
the model is filled, and shapes agree; otherwise `ConversionError` lists what is missing,
unexpected or mis-shaped. (A port that quietly loads none of the tensors and runs on its random
init is the classic failure this guards against.)

Accepted inputs:
  * an upstream training checkpoint `.pth`: a dict with `model` (state_dict), `model_cfg`
    (an OmegaConf DictConfig, read as a plain dict), `optim`, `scheduler`;
  * a bare state_dict `.pth`/`.pt`/`.bin`;
  * a `.safetensors` file, with the architecture from a `config.json` beside it (as re-hosted on
    the Hugging Face hub or written by `export_safetensors`) or inferred from shapes;
  * a directory holding one of the above.

The mapping between the NNX tree and PyTorch names is rule-based: `kernel` <-> `weight`
(transposed), LayerNorm `scale` <-> `weight`, attention `query/key/value` <-> the packed
`in_proj_weight`/`in_proj_bias`, `out` <-> `out_proj`, and the sinusoidal tables <-> the
`pe` buffers [1, max_len, d].
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
from absl import logging
from flax import nnx

from popt_jax.core import torch_io, torch_pickle
from popt_jax.core.jsonio import atomic_json
from popt_jax.core.nn import Buffer
from popt_jax.core.overview import parameter_overview
from popt_jax.core.torch_io import read_checkpoint
from popt_jax.errors import ConversionError
from popt_jax.ieeg.brainbert import BrainBERT, BrainBERTConfig
from popt_jax.ieeg.popt import PopT, PopTClassifier, PopTConfig

__all__ = [
    "ConversionError",
    "read_checkpoint",
    "detect_kind",
    "load_popt",
    "load_brainbert",
    "load_model",
    "popt_from_state_dict",
    "brainbert_from_state_dict",
    "to_state_dict",
    "popt_to_state_dict",
    "brainbert_to_state_dict",
    "export_safetensors",
    "parameter_overview",
]

_QKV = ("query", "key", "value")


def detect_kind(state_dict: dict[str, Any], model_cfg: dict[str, Any] | None = None) -> str:
    """'popt', 'popt_classifier' or 'brainbert', from the config name or the key layout."""
    name = (model_cfg or {}).get("name")
    if name == "pt_downstream_model" or any(k.startswith("upstream.transformer_encoder.")
                                            for k in state_dict):
        return "popt_classifier"
    if name == "pt_model_custom" or any(k.startswith("transformer_encoder.") for k in state_dict):
        return "popt"
    if name == "masked_tf_model" or any(k.startswith("transformer.layers.") for k in state_dict):
        return "brainbert"
    raise ConversionError(
        f"cannot tell the model kind from config name {name!r} or keys ({torch_io.short_keys(state_dict)})")


# --------------------------------------------------------------------------------------------
# NNX <-> PyTorch layout
# --------------------------------------------------------------------------------------------


_WEIGHTS = nnx.Any(nnx.Param, Buffer)  # what checkpoints hold (not dropout RNG state)


def _pe_to_torch(a: np.ndarray) -> np.ndarray:  # sinusoidal tables: buffers [1, max_len, d]
    return a[None]


def _pe_from_torch(a: np.ndarray) -> np.ndarray:
    return a[0]


def layout(model: nnx.Module) -> torch_io.Layout:
    """Where each PyTorch tensor of a BrainBERT, PopT or PopTClassifier lives in `model`."""
    out: torch_io.Layout = {}
    for path in torch_io.flat_state(model, _WEIGHTS):
        *mods, leaf = path
        if len(mods) >= 1 and mods[-1] in _QKV:  # packed in_proj_weight / in_proj_bias
            stem = ".".join(mods[:-1])
            key = f"{stem}.in_proj_weight" if leaf == "kernel" else f"{stem}.in_proj_bias"
            fn = torch_io.transpose if leaf == "kernel" else torch_io.identity
            out.setdefault(key, []).append(torch_io.Slot(path, fn, fn, _QKV.index(mods[-1]), 3))
            continue
        if leaf == "pe":
            if mods[-1] == "input_encoding":  # BrainBERT keeps its table one module deeper
                mods = mods + ["positional_encoding"]
            out[".".join(mods + ["pe"])] = [torch_io.Slot(path, _pe_to_torch, _pe_from_torch)]
            continue
        mods = ["out_proj" if (m == "out" and i and mods[i - 1] == "self_attn") else m
                for i, m in enumerate(mods)]
        if leaf == "kernel":
            out[".".join(mods + ["weight"])] = [torch_io.Slot(path, torch_io.transpose,
                                                              torch_io.transpose)]
        else:
            name = "weight" if leaf == "scale" else leaf
            out[".".join(mods + [name])] = [torch_io.Slot(path)]
    return out


def to_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """PyTorch-layout state_dict (float32 numpy) of a BrainBERT, PopT or PopTClassifier."""
    return torch_io.export_state_dict(model, layout(model), _WEIGHTS)


popt_to_state_dict = to_state_dict
brainbert_to_state_dict = to_state_dict


def _fill(model: nnx.Module, sd: dict[str, np.ndarray], *, strict: bool, source: str) -> None:
    """Copies `sd` into `model` after checking keys and shapes against the model's layout."""
    torch_io.fill_state_dict(model, layout(model), sd, what=_WEIGHTS, strict=strict,
                             source=source)


def _count_layers(sd: dict[str, np.ndarray], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def _shape(sd, key, source):
    if key not in sd:
        raise ConversionError(f"{source}: required tensor {key!r} is missing")
    return sd[key].shape


def _popt_config(sd, cfg, source, prefix="") -> PopTConfig:
    w_in = _shape(sd, f"{prefix}input_encoding.in_proj.weight", source)
    pe = _shape(sd, f"{prefix}input_encoding.positional_encoding.pe", source)
    ff = _shape(sd, f"{prefix}transformer_encoder.layers.0.linear1.weight", source)[0]
    cls = _shape(sd, f"{prefix}cls_head.weight", source)[0]
    shapes = dict(input_dim=int(w_in[1]), hidden_dim=int(w_in[0]), ff_dim=int(ff),
                  n_layers=_count_layers(sd, f"{prefix}transformer_encoder.layers."),
                  max_len=int(pe[1]), cls_out_dim=int(cls),
                  use_token_cls_head=f"{prefix}token_cls_head.weight" in sd)
    return _with_heads(PopTConfig, cfg, shapes, source, default_heads=8)


def _brainbert_config(sd, cfg, source) -> BrainBERTConfig:
    w_in = _shape(sd, "input_encoding.in_proj.weight", source)
    pe = _shape(sd, "input_encoding.positional_encoding.pe", source)
    ff = _shape(sd, "transformer.layers.0.linear1.weight", source)[0]
    shapes = dict(input_dim=int(w_in[1]), hidden_dim=int(w_in[0]), ff_dim=int(ff),
                  n_layers=_count_layers(sd, "transformer.layers."), max_len=int(pe[1]))
    return _with_heads(BrainBERTConfig, cfg, shapes, source, default_heads=12)


def _with_heads(config_cls, cfg, shapes: dict[str, Any], source: str, *, default_heads: int):
    """`config_cls(**shapes)` with the head count of upstream's model_cfg (checked against the
    tensor shapes), or `default_heads` (the published model's) when there is none."""
    if not cfg:
        logging.warning("%s: no model_cfg; architecture inferred from shapes, %d heads assumed",
                        source, default_heads)
        return config_cls(n_heads=default_heads, **shapes)
    try:
        base = config_cls.from_upstream(cfg)
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from None
    _check_cfg(base, shapes, source)
    return config_cls(n_heads=base.n_heads, **shapes)


def _check_cfg(base, shapes: dict[str, Any], source: str) -> None:
    for field, value in shapes.items():
        if field == "max_len":
            continue
        if getattr(base, field) != value:
            raise ConversionError(f"{source}: model_cfg says {field}={getattr(base, field)} but "
                                  f"the tensors say {value}")


def popt_from_state_dict(sd: dict[str, np.ndarray], cfg: dict[str, Any] | None = None, *,
                         strict: bool = True, source: str = "state_dict"):
    """PopT (or PopTClassifier for `upstream.*` + `linear_out.*` layouts) from a state_dict."""
    if detect_kind(sd, cfg) == "popt_classifier":
        up_cfg = (cfg or {}).get("upstream_cfg") if cfg else None
        pcfg = _popt_config(sd, up_cfg, source, prefix="upstream.")
        n_out = int(_shape(sd, "linear_out.weight", source)[0])
        model = PopTClassifier(pcfg, n_out=n_out, rngs=nnx.Rngs(0))
    else:
        model = PopT(_popt_config(sd, cfg, source), rngs=nnx.Rngs(0))
    _fill(model, sd, strict=strict, source=source)
    return model


def brainbert_from_state_dict(sd: dict[str, np.ndarray], cfg: dict[str, Any] | None = None, *,
                              strict: bool = True, source: str = "state_dict") -> BrainBERT:
    """BrainBERT from a state_dict (+ optional upstream model_cfg)."""
    model = BrainBERT(_brainbert_config(sd, cfg, source), rngs=nnx.Rngs(0))
    _fill(model, sd, strict=strict, source=source)
    return model


def load_model(path: str, *, strict: bool = True, kind: str | None = None):
    """Loads any supported checkpoint as the matching popt_jax model (kind auto-detected)."""
    sd, cfg, resolved = read_checkpoint(path)
    found = detect_kind(sd, cfg)
    if kind is not None and not found.startswith(kind):
        raise ConversionError(f"{resolved}: holds a {found} checkpoint, not {kind}")
    if found == "brainbert":
        return brainbert_from_state_dict(sd, cfg, strict=strict, source=resolved)
    return popt_from_state_dict(sd, cfg, strict=strict, source=resolved)


def load_popt(path: str, *, strict: bool = True):
    """Loads a PopT (or fine-tuned PopTClassifier) checkpoint; see the module docstring."""
    return load_model(path, strict=strict, kind="popt")


def load_brainbert(path: str, *, strict: bool = True) -> BrainBERT:
    """Loads a BrainBERT checkpoint (e.g. `stft_large_pretrained.pth`)."""
    return load_model(path, strict=strict, kind="brainbert")


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def model_kind(model: nnx.Module) -> str:
    if isinstance(model, PopTClassifier):
        return "popt_classifier"
    if isinstance(model, PopT):
        return "popt"
    if isinstance(model, BrainBERT):
        return "brainbert"
    raise TypeError(f"not a popt_jax model: {type(model).__name__}")


def upstream_config(model: nnx.Module) -> dict[str, Any]:
    """The upstream-style `model_cfg` describing `model`."""
    kind = model_kind(model)
    if kind == "popt_classifier":
        return {"name": "pt_downstream_model",
                "hidden_dim": model.upstream.config.hidden_dim,
                "upstream_cfg": model.upstream.config.to_upstream()}
    return model.config.to_upstream()


def export_safetensors(model: nnx.Module, path: str) -> dict[str, np.ndarray]:
    """Writes the PyTorch-layout weights to `path` (.safetensors) and `config.json` beside it.

    Upstream modules load the file with `load_state_dict(..., strict=True)`; `load_model`
    reads it back. Both files are written to temporary names and renamed when complete.
    """
    sd = to_state_dict(model)
    cfg = upstream_config(model)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    torch_pickle.save_safetensors(sd, path, metadata={"format": "pt", "popt_jax_kind":
                                                      model_kind(model)})
    atomic_json(os.path.join(folder, "config.json"),
                {"popt_jax_kind": model_kind(model), "model_cfg": cfg}, indent=2)
    return sd
