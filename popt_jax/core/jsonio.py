"""Atomic JSON output: results, summaries and configs are never left half-written.

Non-finite numbers are never written as if they were scores: NaN/inf become `null`, and a
dict gets an `undefined` entry saying which values were undefined and why (e.g. a ROC-AUC
on a split with a single class).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


_REASONS = {
    "roc_auc": "ROC-AUC is undefined: the split has a single class",
    "auc": "ROC-AUC is undefined: the split has a single class",
    "f1": "F1 is undefined: no positive example predicted or present",
    "mean_r": "correlation is undefined: constant predictions or targets",
}


def finite_or_null(obj: Any, undefined: dict[str, str] | None = None, path: str = "") -> Any:
    """`obj` with NaN/inf floats (numpy included) replaced by None; each replaced value's
    dotted path and a reason go into `undefined`."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v, undefined, f"{path}.{k}" if path else str(k))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v, undefined, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return finite_or_null(obj.tolist(), undefined, path)
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        if undefined is not None:
            leaf = path.rsplit(".", 1)[-1].split("[")[0]
            undefined[path] = _REASONS.get(leaf, f"not a finite number ({float(obj)})")
        return None
    return obj


def atomic_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    """Writes `obj` as JSON to a process-private temporary name, then renames it onto `path`.

    numpy scalars and arrays become plain numbers and lists; anything else unknown, a string;
    NaN/inf become null, listed with a reason under a dict's `undefined` key.
    """
    path = Path(path)
    undefined: dict[str, str] = {}
    obj = finite_or_null(obj, undefined)
    if undefined and isinstance(obj, dict):
        obj = {**obj, "undefined": {**(obj.get("undefined") or {}), **undefined}}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default, allow_nan=False))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a disk-full write leaves no partial temporary behind
        raise
