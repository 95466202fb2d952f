"""Atomic JSON output: results, summaries and configs are never left half-written."""

from __future__ import annotations

import json
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


def atomic_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    """Writes `obj` as JSON to a process-private temporary name, then renames it onto `path`.

    numpy scalars and arrays become plain numbers and lists; anything else unknown, a string.
    """
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=indent, default=_json_default))
    os.replace(tmp, path)
