"""A table of a model's trainable parameters (paths, shapes, counts) for the run log."""

from __future__ import annotations

import numpy as np
from flax import nnx

from popt_jax.core.torch_io import flat_state


def parameter_overview(model: nnx.Module) -> str:
    """A table of trainable parameter paths, shapes and counts, with the total."""
    rows = []
    total = 0
    for path, value in sorted(flat_state(model, nnx.Param).items(), key=lambda kv: str(kv[0])):
        name = "/".join(str(p) for p in path)
        n = int(np.prod(value.shape))
        total += n
        rows.append(f"{name:<64} {str(tuple(value.shape)):<18} {n:>12,}")
    rows.append(f"{'total':<64} {'':<18} {total:>12,}")
    return "\n".join(rows)
