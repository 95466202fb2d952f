"""Coordinates: declared millimetre frames -> PopT index space, and the continuous code."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from popt_jax.errors import DataError
from popt_jax.ieeg.coords import CoordMapping, canonical_frame, to_millimetres
from popt_jax.ieeg.layers import sinusoid_table
from popt_jax.ieeg.popt import PopT, PopTConfig, continuous_sinusoids


def test_lip_axes_offset_and_rounding():
    m = CoordMapping("MNI152NLin2009cAsym")
    mm = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0],
                   [-20.4, 30.6, -0.5]])
    # L grows to the left (-x), I downwards (-z), P backwards (-y).
    np.testing.assert_array_equal(m.positions(mm)[:4], [[128, 128, 128], [118, 128, 128],
                                                        [128, 128, 118], [128, 118, 128]])
    np.testing.assert_allclose(m.positions(mm)[4], [148.4, 128.5, 97.4])
    # rint: 148.4 -> 148, 128.5 -> 128 (half to even), 97.4 -> 97.
    np.testing.assert_array_equal(m.index(mm, list("abcde"), "f")[4], [148, 128, 97])
    ras = CoordMapping("ACPC", offset=(100.0, 110.0, 120.0), scale=2.0, axes="ras")
    np.testing.assert_array_equal(ras.positions([[1.0, 2.0, 3.0]]), [[102.0, 114.0, 126.0]])


def test_units_are_converted_to_millimetres():
    np.testing.assert_allclose(to_millimetres([[0.01, -0.02, 0.003]], "m", "x"),
                               [[10.0, -20.0, 3.0]])
    np.testing.assert_allclose(to_millimetres([[1.5, 0, 0]], "cm", "x"), [[15.0, 0, 0]])
    with pytest.raises(DataError, match=r"^cs.json: coordinate units 'pixels' are not"):
        to_millimetres([[1, 2, 3]], "pixels", "cs.json")


def test_frames_declared_and_refused():
    assert canonical_frame("MNI152NLin2009cAsym", "x") == "MNI152NLin2009cAsym"
    assert canonical_frame("mni_tal", "x") == "MNI305"
    assert canonical_frame("fsaverage", "x") == "fsaverage"
    assert canonical_frame("Talairach", "x") == "Talairach"
    for bad in ("Other", "Pixels", "", None, "head", "ScanRAS"):
        with pytest.raises(DataError) as err:
            canonical_frame(bad, "/d/sub-01_coordsystem.json")
        msg = str(err.value)
        assert msg.startswith("/d/sub-01_coordsystem.json: electrode coordinates in an "
                              "undeclared or unknown frame") and "\n" not in msg
    assert canonical_frame("ScanRAS", "x", allow_scanner=True) == "ScanRAS"


def test_index_outside_table_names_electrode():
    m = CoordMapping("MNI305", max_len=256)
    with pytest.raises(DataError, match=r"^e.tsv: electrode LB7 at \[-140.0, 0.0, 0.0\] mm "
                       r"maps to index \[268.0, 128.0, 128.0\], outside \[0, 256\)"):
        m.index(np.array([[0.0, 0, 0], [-140.0, 0, 0]]), ["LA1", "LB7"], "e.tsv")
    with pytest.raises(DataError, match="LA1"):
        m.index(np.array([[np.nan, 0, 0]]), ["LA1"], "e.tsv")


def test_mapping_json_records_the_choice():
    m = CoordMapping.from_config("ACPC", {"offset": 100, "scale": 1.5, "axes": "ras"})
    d = json.loads(m.to_json({"units_in": "m"}))
    assert d["frame"] == "ACPC" and d["offset"] == [100.0, 100.0, 100.0]
    assert d["scale"] == 1.5 and d["axes"] == "ras" and d["units_in"] == "m"
    assert d["max_len"] == 5000 and "formula" in d


def test_continuous_code_equals_table_at_integers():
    dim = 16
    pos = jnp.asarray([0.0, 1.0, 17.0, 128.0, 4999.0])
    got = np.asarray(continuous_sinusoids(pos, dim))
    want = sinusoid_table(5000, dim)[[0, 1, 17, 128, 4999]]
    # Same float32 arguments; sin/cos of the two libraries may differ in the last bits.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_popt_position_code_option():
    assert PopTConfig().position_code == "table"
    assert "position_code" not in PopTConfig().to_upstream()
    base = dict(input_dim=8, hidden_dim=16, n_heads=2, ff_dim=32, n_layers=1)
    table = PopT(PopTConfig(**base), rngs=nnx.Rngs(0))
    cont = PopT(PopTConfig(**base, position_code="continuous"), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8)), jnp.float32)
    coords = jnp.asarray([[[120, 130, 90], [121, 130, 90], [4, 5, 6]]] * 2, jnp.float32)
    a = np.asarray(table.encode(x, None, coords)[0])
    b = np.asarray(cont.encode(x, None, coords)[0])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    # Off the integers the continuous code moves, the table truncates.
    c = np.asarray(cont.encode(x, None, coords + 0.5)[0])
    d = np.asarray(table.encode(x, None, coords + 0.5)[0])
    np.testing.assert_array_equal(d, a)
    assert np.abs(c - a).max() > 1e-2
    with pytest.raises(ValueError, match="continuous"):
        PopTConfig(position_code="continuous").to_upstream()
    with pytest.raises(ValueError, match="position_code"):
        PopT(PopTConfig(**base, position_code="mm"), rngs=nnx.Rngs(0))
