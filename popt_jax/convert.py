"""Import and export of the published PyTorch weights (PopT, BrainBERT).

Reading never needs torch and never runs pickled code (`popt_jax.torch_pickle`). Loading is
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

import json
import os
import re
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from popt_jax import torch_pickle
from popt_jax.jsonio import atomic_json
from popt_jax.models import BrainBERT, BrainBERTConfig, Buffer, PopT, PopTClassifier, PopTConfig

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


class ConversionError(ValueError):
    """A checkpoint that cannot be turned into a popt_jax model; the message is one line."""


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def _find_in_dir(path: str) -> str:
    names = sorted(os.listdir(path))
    for preferred in ("model.safetensors", "pytorch_model.bin"):
        if preferred in names:
            return os.path.join(path, preferred)
    for ext in (".safetensors", ".pth", ".pt", ".bin"):
        hits = [n for n in names if n.endswith(ext)]
        if len(hits) == 1:
            return os.path.join(path, hits[0])
        if len(hits) > 1:
            raise ConversionError(f"{path}: several {ext} files ({', '.join(hits)}); pass one")
    raise ConversionError(f"{path}: no .safetensors/.pth/.pt/.bin checkpoint in this directory")


def _read_config_json(folder: str) -> dict[str, Any] | None:
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        return None
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConversionError(f"{cfg_path}: expected a JSON object")
    # popt_jax exports nest the upstream config; hub mixins may nest it under "cfg".
    for key in ("model_cfg", "cfg"):
        if isinstance(cfg.get(key), dict):
            return cfg[key]
    return cfg or None


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any] | None, str]:
    """Reads any accepted checkpoint form.

    Returns:
      (state_dict of numpy arrays, upstream model_cfg dict or None, resolved file path).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        path = _find_in_dir(path)
    if path.endswith(".safetensors"):
        sd = torch_pickle.load_safetensors(path)
        return sd, _read_config_json(os.path.dirname(path) or "."), path
    obj = torch_pickle.load_pth(path)
    if isinstance(obj, dict) and "model" in obj:
        sd, cfg = obj["model"], obj.get("model_cfg")
    else:
        sd, cfg = obj, None
    if not _is_tensor_dict(sd):
        raise ConversionError(
            f"{path}: no state_dict found (expected a dict of tensors, or a dict with a 'model' "
            f"entry holding one; top-level keys: {_short_keys(obj)})")
    if cfg is not None and not isinstance(cfg, dict):
        raise ConversionError(f"{path}: 'model_cfg' is a {type(cfg).__name__}, not a mapping")
    if cfg is None:
        cfg = _read_config_json(os.path.dirname(path) or ".")
    return sd, cfg, path


def _short_keys(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = [str(k) for k in list(obj)[:6]]
        return ", ".join(keys) + (", ..." if len(obj) > 6 else "")
    return type(obj).__name__


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
        f"cannot tell the model kind from config name {name!r} or keys ({_short_keys(state_dict)})")


# --------------------------------------------------------------------------------------------
# NNX <-> PyTorch layout
# --------------------------------------------------------------------------------------------


_WEIGHTS = nnx.Any(nnx.Param, Buffer)  # what checkpoints hold (not dropout RNG state)


def _flat_params(model: nnx.Module, what=_WEIGHTS) -> dict[tuple, np.ndarray]:
    pure = nnx.to_pure_dict(nnx.state(model, what))
    out: dict[tuple, np.ndarray] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, prefix + (k,))
        else:
            out[prefix] = node

    walk(pure, ())
    return out


def _torch_name(path: tuple) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """NNX leaf path -> (PyTorch key, transform NNX value -> PyTorch value)."""
    *mods, leaf = [str(p) for p in path]
    if leaf == "pe":  # sinusoidal tables: PyTorch buffers [1, max_len, d]
        if mods[-1] == "input_encoding":  # BrainBERT keeps its table one module deeper
            mods.append("positional_encoding")
        return ".".join(mods + ["pe"]), lambda a: a[None]
    mods = ["out_proj" if (m == "out" and i and mods[i - 1] == "self_attn") else m
            for i, m in enumerate(mods)]
    if leaf == "kernel":
        return ".".join(mods + ["weight"]), lambda a: a.T
    if leaf == "scale":
        return ".".join(mods + ["weight"]), lambda a: a
    return ".".join(mods + [leaf]), lambda a: a


def to_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """PyTorch-layout state_dict (float32 numpy) of a BrainBERT, PopT or PopTClassifier."""
    sd: dict[str, np.ndarray] = {}
    packed: dict[str, dict[str, np.ndarray]] = {}
    for path, value in _flat_params(model).items():
        value = np.asarray(value, dtype=np.float32)
        names = [str(p) for p in path]
        if len(names) >= 2 and names[-2] in _QKV:
            stem = ".".join(names[:-2])
            leaf = "in_proj_weight" if names[-1] == "kernel" else "in_proj_bias"
            packed.setdefault(f"{stem}.{leaf}", {})[names[-2]] = (
                value.T if names[-1] == "kernel" else value)
            continue
        key, fn = _torch_name(path)
        sd[key] = np.ascontiguousarray(fn(value))
    for key, parts in packed.items():
        sd[key] = np.concatenate([parts[n] for n in _QKV], axis=0)
    return dict(sorted(sd.items()))


popt_to_state_dict = to_state_dict
brainbert_to_state_dict = to_state_dict


def _fill(model: nnx.Module, sd: dict[str, np.ndarray], *, strict: bool, source: str) -> None:
    """Copies `sd` into `model` after checking keys and shapes against the model's layout."""
    expected = to_state_dict(model)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(f"{k} {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in set(expected) & set(sd) if tuple(sd[k].shape) != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes: {'; '.join(wrong)}")
    if wrong or (strict and problems):
        raise ConversionError(f"{source}: state_dict does not fit the model ("
                              + " | ".join(problems) + ")")
    if problems:
        logging.warning("%s: loading non-strictly (%s)", source, " | ".join(problems))

    state = nnx.state(model, _WEIGHTS)
    pure = nnx.to_pure_dict(state)
    used = 0

    def assign(node, prefix):
        nonlocal used
        for k, v in node.items():
            path = prefix + (k,)
            if isinstance(v, dict):
                assign(v, path)
                continue
            names = [str(p) for p in path]
            if len(names) >= 2 and names[-2] in _QKV:
                i = _QKV.index(names[-2])
                stem = ".".join(names[:-2])
                key = f"{stem}.in_proj_weight" if names[-1] == "kernel" else f"{stem}.in_proj_bias"
                if key not in sd:
                    continue
                full = sd[key]
                d = full.shape[0] // 3
                part = full[i * d:(i + 1) * d]
                value = part.T if names[-1] == "kernel" else part
            else:
                key, _ = _torch_name(path)
                if key not in sd:
                    continue
                value = sd[key]
                if names[-1] == "kernel":
                    value = value.T
                elif key.endswith(".pe"):
                    value = value[0]
            node[k] = jnp.asarray(np.asarray(value, dtype=np.float32))
            used += 1

    assign(pure, ())
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    logging.info("%s: loaded %d arrays from %d tensors", source, used, len(sd))


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
    n_heads = 8
    if cfg:
        try:
            base = PopTConfig.from_upstream(cfg)
        except ValueError as e:
            raise ConversionError(f"{source}: {e}") from None
        n_heads = base.n_heads
        _check_cfg(base, shapes, source)
    else:
        logging.warning("%s: no model_cfg; architecture inferred from shapes, %d heads assumed",
                        source, n_heads)
    return PopTConfig(n_heads=n_heads, **shapes)


def _brainbert_config(sd, cfg, source) -> BrainBERTConfig:
    w_in = _shape(sd, "input_encoding.in_proj.weight", source)
    pe = _shape(sd, "input_encoding.positional_encoding.pe", source)
    ff = _shape(sd, "transformer.layers.0.linear1.weight", source)[0]
    shapes = dict(input_dim=int(w_in[1]), hidden_dim=int(w_in[0]), ff_dim=int(ff),
                  n_layers=_count_layers(sd, "transformer.layers."), max_len=int(pe[1]))
    n_heads = 12
    if cfg:
        base = BrainBERTConfig.from_upstream(cfg)
        n_heads = base.n_heads
        _check_cfg(base, shapes, source)
    else:
        logging.warning("%s: no model_cfg; architecture inferred from shapes, %d heads assumed",
                        source, n_heads)
    return BrainBERTConfig(n_heads=n_heads, **shapes)


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


def parameter_overview(model: nnx.Module) -> str:
    """A table of trainable parameter paths, shapes and counts, with the total."""
    rows = []
    total = 0
    for path, value in sorted(_flat_params(model, nnx.Param).items(), key=lambda kv: str(kv[0])):
        name = "/".join(str(p) for p in path)
        n = int(np.prod(value.shape))
        total += n
        rows.append(f"{name:<64} {str(tuple(value.shape)):<18} {n:>12,}")
    rows.append(f"{'total':<64} {'':<18} {total:>12,}")
    return "\n".join(rows)
