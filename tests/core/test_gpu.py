"""Accelerator checks, marked `gpu`: skipped (conftest) where JAX sees no GPU.

Run them on a GPU machine with `python -m pytest -m gpu` (without JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from popt_jax.core import mesh as mesh_lib


@pytest.mark.gpu
def test_default_mesh_spans_every_gpu():
    mesh = mesh_lib.make_mesh()
    devices = list(np.asarray(mesh.devices).flat)
    assert {d.platform for d in devices} == {"gpu"}
    assert len(devices) == len(jax.devices("gpu"))
