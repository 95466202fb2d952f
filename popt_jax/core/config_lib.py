"""Helpers for the Python config files in `configs/` (which is not a package)."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType


def load_sibling_config(anchor_file: str, name: str) -> ModuleType:
    """Imports `configs/<name>.py` from the folder holding `anchor_file` (a config's __file__).

    Variants build on a base config this way, so overrides and `get_config()` stay plain
    Python without turning `configs/` into an importable package.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(anchor_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"popt_jax_configs_{name}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"config module not found: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
