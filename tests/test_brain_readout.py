"""The grouped `rois_all` readout equals upstream's dense Linear-then-mask form, both ways."""

import jax
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
    plan = m.lh_plan
    assert max(lh_m.sum(0)) >= 3  # some vertices read three queries
    assert sum(b - a for a, b in plan.segments) == LH_V
    cols = lh_m.T[plan.perm]
    for i, (a, b) in enumerate(plan.segments):
        np.testing.assert_array_equal(cols[a:b], np.broadcast_to(plan.combos[i], (b - a,
                                                                                   len(lh_m))))
    assert not hasattr(models[0][False], "lh_plan")


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
    flat_g = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(gg))
    flat_d = dict(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(gd)))
    assert len(flat_g) == len(flat_d) > 10
    for path, a in flat_g:
        np.testing.assert_allclose(a, flat_d[path], rtol=1e-5, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    # the readout kernels really receive gradient (not all zero)
    assert float(jnp.abs(gg["lh_embed"]["kernel"]).sum()) > 0
