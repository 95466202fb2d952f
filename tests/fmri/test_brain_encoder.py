"""Brain-encoder decoder + readout: shapes, the position code, and parity with PyTorch.

The reference (`tests/torch_reference_brain_encoder.py`) uses `nn.MultiheadAttention` and
upstream's parameter names; its random weights are loaded with `from_torch_state_dict`, and
predictions, cross-attention weights and gradients must agree within 1e-5 (float32).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from popt_jax.fmri import decoder as be

D, HEADS, FF, H, W = 96, 16, 64, 5, 6
LH_V, RH_V = 40, 35
TOL = 1e-5


@nnx.jit(static_argnames="deterministic")
def _run(model, x, deterministic=True):
    """Jitted forward: op-by-op eager dispatch compiles every primitive, far slower on CPU."""
    return model(x, deterministic=deterministic)


def _masks(n_v, n_rois, seed):
    rng = np.random.default_rng(seed)
    m = (rng.random((n_rois, n_v)) < 0.15).astype(np.float32)
    return np.concatenate([m, (m.sum(0) == 0)[None].astype(np.float32)])


def _config(readout, lh_q, rh_q, dropout=0.1):
    return be.BrainEncoderConfig(hidden_dim=D, n_heads=HEADS, ff_dim=FF, dropout=dropout,
                                 readout=readout, lh_vertices=LH_V, rh_vertices=RH_V,
                                 lh_queries=lh_q, rh_queries=rh_q)


def _build(readout):
    lh_m = rh_m = None
    if readout == "rois_all":
        lh_m, rh_m = _masks(LH_V, 6, 1), _masks(RH_V, 6, 2)
        q = (7, 7)
    elif readout == "hemis":
        q = (1, 1)
    else:
        q = (LH_V, RH_V)
    model = be.BrainEncoder(_config(readout, *q), lh_m, rh_m, rngs=nnx.Rngs(0))
    return model, lh_m, rh_m


def test_sine_code_matches_definition():
    code = be.sine_position_code(3, 4, 8)
    assert code.shape == (12, 8)
    # pixel (row 1, col 2): y = 2/3 * 2pi, x = 3/4 * 2pi (up to eps); freqs T^(0), T^(0), T^(1/2)...
    y, x = 2 / (3 + 1e-6) * 2 * np.pi, 3 / (4 + 1e-6) * 2 * np.pi
    f = 10000.0 ** (np.array([0, 0, 2, 2]) / 4)
    want = np.concatenate([[np.sin(y / f[0]), np.cos(y / f[1]), np.sin(y / f[2]),
                            np.cos(y / f[3])],
                           [np.sin(x / f[0]), np.cos(x / f[1]), np.sin(x / f[2]),
                            np.cos(x / f[3])]])
    np.testing.assert_allclose(code[1 * 4 + 2], want, atol=1e-6)


@pytest.mark.parametrize("readout", be.READOUTS)
def test_shapes(readout):
    model, _, _ = _build(readout)
    out = _run(model, jnp.ones((2, D, H, W)))
    q = model.config.n_queries
    assert out["lh"].shape == (2, LH_V) and out["rh"].shape == (2, RH_V)
    assert out["attention"].shape == (2, q, H * W)
    np.testing.assert_allclose(np.asarray(out["attention"]).sum(-1), 1.0, atol=1e-5)


def _lh_kernel(model, grads=None) -> np.ndarray:
    """The left readout's [D, V] kernel (or its gradient), whichever storage the model uses."""
    emb = model.lh_embed
    if isinstance(emb, be.GroupedReadout):
        return np.asarray(emb.dense_kernel(None if grads is None else grads.lh_embed.weight.value))
    return np.asarray((emb if grads is None else grads.lh_embed).kernel.value)


def test_rois_all_sums_masked_queries():
    """A vertex in two ROIs gets the sum of both queries' readouts; one in none, 'Unknown'."""
    model, lh_m, _ = _build("rois_all")
    tokens = jax.random.normal(jax.random.key(0), (1, 14, D))
    lh, _ = nnx.jit(lambda m, t: m.readout(t))(model, tokens)
    k, b = _lh_kernel(model), np.asarray(model.lh_embed.bias.value)
    per_query = np.asarray(tokens[0, :7]) @ k + b  # [7, V]
    np.testing.assert_allclose(np.asarray(lh[0]), (lh_m * per_query).sum(0), rtol=1e-5,
                               atol=1e-5)


def test_config_errors():
    with pytest.raises(ValueError, match="readout"):
        be.BrainEncoderConfig(readout="streams")
    with pytest.raises(ValueError, match="masks of shape"):
        be.BrainEncoder(_config("rois_all", 7, 7), None, None, rngs=nnx.Rngs(0))
    model, _, _ = _build("hemis")
    with pytest.raises(ValueError, match="channels"):
        model(jnp.ones((1, D + 2, H, W)))


def test_dropout_is_training_only():
    model, _, _ = _build("rois_all")
    x = jax.random.normal(jax.random.key(1), (2, D, H, W))
    a = _run(model, x)["lh"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(_run(model, x)["lh"]))
    assert not np.allclose(np.asarray(_run(model, x, deterministic=False)["lh"]),
                           np.asarray(a))


# --------------------------------------------------------------------------------------------
# PyTorch parity
# --------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("readout", be.READOUTS)
def test_parity_with_torch(readout):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch_reference_brain_encoder as R

    model, lh_m, rh_m = _build(readout)
    ref = R.RefBrainEncoder(D, HEADS, FF, readout, LH_V, RH_V, lh_m, rh_m).randomize(3).eval()
    be.from_torch_state_dict(model, {k: v.numpy() for k, v in ref.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((3, D, H, W)).astype(np.float32)
    y_lh = np.random.default_rng(1).standard_normal((3, LH_V)).astype(np.float32)
    y_rh = np.random.default_rng(2).standard_normal((3, RH_V)).astype(np.float32)

    xt = torch.tensor(x)
    lh_t, rh_t, attn_t = ref(xt)
    loss_t = torch.nn.functional.mse_loss(lh_t, torch.tensor(y_lh)) + \
        torch.nn.functional.mse_loss(rh_t, torch.tensor(y_rh))
    loss_t.backward()

    out = _run(model, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out["lh"]), lh_t.detach().numpy(), atol=TOL)
    np.testing.assert_allclose(np.asarray(out["rh"]), rh_t.detach().numpy(), atol=TOL)
    np.testing.assert_allclose(np.asarray(out["attention"]), attn_t.detach().numpy(), atol=TOL)

    def loss_fn(m):
        o = m(jnp.asarray(x))
        return jnp.mean((o["lh"] - y_lh) ** 2) + jnp.mean((o["rh"] - y_rh) ** 2)

    loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
    np.testing.assert_allclose(float(loss), loss_t.item(), rtol=1e-6)
    g_query = np.asarray(grads.query_embed.value)
    np.testing.assert_allclose(g_query, ref.query_embed.weight.grad.numpy(), atol=TOL)
    g_in = ref.transformer.decoder.layers[0].multihead_attn.in_proj_weight.grad.numpy()
    np.testing.assert_allclose(np.asarray(grads.layer.cross_attn.key.kernel.value).T,
                               g_in[D:2 * D], atol=TOL)
    np.testing.assert_allclose(_lh_kernel(model, grads).T,
                               ref.lh_embed[0].weight.grad.numpy(), atol=TOL)


@pytest.mark.torch
def test_state_dict_roundtrip_and_strictness():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch_reference_brain_encoder as R

    model, lh_m, rh_m = _build("rois_all")
    ref = R.RefBrainEncoder(D, HEADS, FF, "rois_all", LH_V, RH_V, lh_m, rh_m)
    sd = be.to_torch_state_dict(model)
    ref_keys = {k for k in ref.state_dict() if "self_attn" not in k and "norm2" not in k
                and "memory_proj" not in k}
    assert set(sd) == ref_keys
    ref.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=False)
    bad = dict(sd)
    bad["lh_embed.0.weight"] = np.zeros((LH_V + 1, D), np.float32)
    with pytest.raises(ValueError, match="shapes"):
        be.from_torch_state_dict(model, bad)
