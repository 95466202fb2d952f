"""PyTorch checkpoint I/O shared by every converter.

* `read_checkpoint`: a `.pth` (through the restricted unpickler `torch_pickle`, never
  torch.load), a `.safetensors` file or a folder holding one, with its `config.json`.
* One strict state-dict mechanism: a converter describes, once, where each PyTorch tensor
  lives in its NNX model (a `Layout`: torch key -> `Slot`s, several for a packed q/k/v
  tensor); `export_state_dict` and `fill_state_dict` read and write through it. Missing,
  unexpected and mis-shaped tensors are all reported in one `ConversionError` line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from popt_jax.core import torch_pickle
from popt_jax.errors import ConversionError

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
            f"entry holding one; top-level keys: {short_keys(obj)})")
    if cfg is not None and not isinstance(cfg, dict):
        raise ConversionError(f"{path}: 'model_cfg' is a {type(cfg).__name__}, not a mapping")
    if cfg is None:
        cfg = _read_config_json(os.path.dirname(path) or ".")
    return sd, cfg, path


def short_keys(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = [str(k) for k in list(obj)[:6]]
        return ", ".join(keys) + (", ..." if len(obj) > 6 else "")
    return type(obj).__name__


# --------------------------------------------------------------------------------------------
# Layouts: where each PyTorch tensor lives in an NNX model
# --------------------------------------------------------------------------------------------


def identity(a: np.ndarray) -> np.ndarray:
    return a


def transpose(a: np.ndarray) -> np.ndarray:
    """Linear kernel [in, out] <-> PyTorch weight [out, in]."""
    return a.T


@dataclasses.dataclass(frozen=True)
class Slot:
    """One NNX leaf (`path`) and how its value maps to a PyTorch tensor.

    `to_torch`/`from_torch` convert one leaf's value; `part` is this leaf's slice along axis
    0 of a tensor packed from `parts` leaves (PyTorch's `in_proj_weight`: q, k, v).
    """

    path: tuple[str, ...]
    to_torch: Callable[[np.ndarray], np.ndarray] = identity
    from_torch: Callable[[np.ndarray], np.ndarray] = identity
    part: int | None = None
    parts: int = 1


Layout = dict[str, list[Slot]]


def flat_state(model: nnx.Module, what=nnx.Param) -> dict[tuple[str, ...], Any]:
    """{path of str: leaf value} of the `what` variables of `model`."""
    out: dict[tuple[str, ...], Any] = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, prefix + (str(k),))
            else:
                out[prefix + (str(k),)] = v

    walk(nnx.to_pure_dict(nnx.state(model, what)), ())
    return out


def _join(key: str, slots: list[Slot], values: dict) -> np.ndarray:
    pieces = [s.to_torch(values[s.path]) for s in sorted(slots, key=lambda s: s.part or 0)]
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)


def export_state_dict(model: nnx.Module, layout: Layout, what=nnx.Param) -> dict[str, np.ndarray]:
    """The PyTorch-layout float32 state_dict of `model`, keys sorted."""
    flat = {p: np.asarray(v, np.float32) for p, v in flat_state(model, what).items()}
    return {k: np.ascontiguousarray(_join(k, layout[k], flat)) for k in sorted(layout)}


def expected_shapes(model: nnx.Module, layout: Layout, what=nnx.Param) -> dict[str, tuple]:
    """PyTorch shape of every key of `layout` (works on an abstract `nnx.eval_shape` model)."""
    zeros = {p: np.zeros(tuple(getattr(v, "shape", np.shape(v))), np.float32) for p, v in flat_state(model, what).items()}
    return {k: tuple(_join(k, s, zeros).shape) for k, s in layout.items()}


def _listing(names: list[str], limit: int | None) -> str:
    if limit is None or len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + ", ..."


def fill_state_dict(model: nnx.Module, layout: Layout, sd: dict[str, Any], *, what=nnx.Param,
                    strict: bool = True, source: str = "state_dict",
                    target: str = "the model", ignore: tuple[str, ...] = (),
                    limit: int | None = None) -> int:
    """Copies the PyTorch-layout `sd` into `model` (in place) through `layout`.

    Keys starting with a prefix in `ignore` are dropped first. Mis-shaped tensors always
    raise; missing or unexpected keys raise when `strict`, else are logged and skipped.
    `limit` caps how many names each part of the message lists. Returns the leaves written.
    """
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore)} if ignore else sd
    want = expected_shapes(model, layout, what)
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    wrong = [f"{k} {tuple(np.shape(sd[k]))} vs model {want[k]}"
             for k in sorted(set(want) & set(sd)) if tuple(np.shape(sd[k])) != want[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing, limit)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected, limit)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes: {'; '.join(wrong[:limit] if limit else wrong)}")
    if wrong or (strict and problems):
        raise ConversionError(f"{source}: state_dict does not fit {target} ("
                              + " | ".join(problems) + ")")
    if problems:
        logging.warning("%s: loading non-strictly (%s)", source, " | ".join(problems))

    values: dict[tuple[str, ...], np.ndarray] = {}
    for key, slots in layout.items():
        if key not in sd:
            continue
        full = np.asarray(sd[key], np.float32)
        for s in slots:
            a = full
            if s.part is not None:
                n = full.shape[0] // s.parts
                a = full[s.part * n:(s.part + 1) * n]
            values[s.path] = s.from_torch(a)
    state = nnx.state(model, what)
    pure = nnx.to_pure_dict(state)

    def assign(node, prefix):
        for k, v in node.items():
            path = prefix + (str(k),)
            if isinstance(v, dict):
                assign(v, path)
            elif path in values:
                node[k] = jnp.asarray(values[path])

    assign(pure, ())
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    logging.info("%s: loaded %d arrays from %d tensors", source, len(values), len(sd))
    return len(values)
