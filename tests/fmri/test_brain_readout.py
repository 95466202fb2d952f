"""The grouped `rois_all` readout equals upstream's dense Linear-then-mask form, both ways."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from popt_jax.fmri import decoder as be

D, LH_V, RH_V = 32, 90, 70


def _family_masks(n_v, rng):
    """Real-data-like masks: at most one ROI per family, 'Unknown' for vertices in none."""
    rows = []
    for n_roi in (3, 2, 2):
        roi = rng.integers(0, n_roi + 1, n_v) * (rng.random(n_v) < 0.6)
        rows += [roi == r for r in range(1, n_roi + 1)]
    rows.append(np.zeros(n_v, bool))  # an empty ROI (happens in real subjects)
    m = np.stack(rows)
    return np.concatenate([m, ~m.any(0, keepdims=True)]).astype(np.float32)


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    lh_m, rh_m = _family_masks(LH_V, rng), _family_masks(RH_V, rng)
    out = {}
    for grouped in (True, False):
        cfg = be.BrainEncoderConfig(hidden_dim=D, n_heads=4, ff_dim=48, lh_vertices=LH_V,
                                    rh_vertices=RH_V, lh_queries=len(lh_m),
                                    rh_queries=len(rh_m), grouped_readout=grouped)
        out[grouped] = be.BrainEncoder(cfg, lh_m, rh_m, rngs=nnx.Rngs(0))
    return out, lh_m


def test_plan_groups_vertices_by_their_queries(models):
    (m, lh_m) = models[0][True], models[1]
    plan = m.lh_embed.plan
    assert max(lh_m.sum(0)) >= 3  # some vertices read three queries
    assert len(np.unique(plan.position)) == LH_V
    group_of_vertex = plan.chunk_group[plan.position // plan.chunk]
    np.testing.assert_array_equal(plan.combos[group_of_vertex], lh_m.T)
    # storage round trip, padding rows zero
    k = np.random.default_rng(0).standard_normal((D, LH_V)).astype(np.float32)
    blocks = plan.to_blocks(k)
    np.testing.assert_array_equal(plan.from_blocks(blocks), k)
    assert np.count_nonzero(np.abs(blocks).sum(-1)) == LH_V
    assert isinstance(models[0][False].lh_embed, nnx.Linear)


def _export(model, grads=None):
    """Parameters (or gradients) in the PyTorch layout, whatever the storage."""
    if grads is not None:
        model = nnx.clone(model)
        nnx.update(model, grads)
    return be.to_torch_state_dict(model)


def test_grouped_readout_matches_dense_forward_and_backward(models):
    grouped, dense = models[0][True], models[0][False]
    # the same weights in both (built from the same seed)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, D, 4, 5)), jnp.float32)
    y = {"lh": jnp.asarray(np.random.default_rng(2).standard_normal((3, LH_V)), jnp.float32),
         "rh": jnp.asarray(np.random.default_rng(3).standard_normal((3, RH_V)), jnp.float32)}

    def loss(model):
        out = model(x)
        return jnp.mean((out["lh"] - y["lh"]) ** 2) + jnp.mean((out["rh"] - y["rh"]) ** 2), out

    (lg, og), gg = nnx.value_and_grad(loss, has_aux=True)(grouped)
    (ld, od), gd = nnx.value_and_grad(loss, has_aux=True)(dense)
    for h in ("lh", "rh"):
        np.testing.assert_allclose(og[h], od[h], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lg, ld, rtol=1e-5)
    # the same initial weights in both storages
    for k, v in _export(dense).items():
        np.testing.assert_array_equal(_export(grouped)[k], v, err_msg=k)
    sd_g, sd_d = _export(grouped, gg), _export(dense, gd)
    assert set(sd_g) == set(sd_d) and len(sd_g) > 10
    for k, v in sd_d.items():
        np.testing.assert_allclose(sd_g[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    # the readout kernels really receive gradient (not all zero); padding rows none
    assert float(np.abs(sd_g["lh_embed.0.weight"]).sum()) > 0
    blocks = np.asarray(gg["lh_embed"]["weight"].value).reshape(-1, D)
    pad = np.setdiff1d(np.arange(len(blocks)), grouped.lh_embed.plan.position)
    assert len(pad) > 0 and not np.abs(blocks[pad]).any()
