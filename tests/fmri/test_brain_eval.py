"""Brain-encoder metrics against hand-computed values; ridge against numpy; files and figures."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from popt_jax.fmri import metrics as E
from popt_jax.fmri import plots as P


def test_pearson_hand_computed():
    pred = np.array([[1, 2, 7], [2, 4, 7], [3, 5, 7]], float)
    target = np.array([[1, 0, 1], [2, 1, 2], [3, 1, 4]], float)
    r = E.pearson_r(pred, target)
    # column 1: deviations (-5/3, 1/3, 4/3) and (-2/3, 1/3, 1/3) -> 15 / sqrt(42 * 6)
    np.testing.assert_allclose(r[:2], [1.0, 15 / math.sqrt(252)], rtol=1e-12)
    assert np.isnan(r[2])  # a constant prediction has no correlation
    with pytest.raises(ValueError, match="differ"):
        E.pearson_r(pred, target[:2])


def test_challenge_score_hand_computed():
    r = np.array([0.5, -0.2, 0.3, np.nan])
    nc = np.array([0.5, 0.4, 0.0, 0.25])
    # devkit: 0.5^2/0.5 = 50 %, negative r -> 0, nc == 0 -> 1e-14 (capped at 100 %), NaN r -> 0
    assert E.challenge_score(r, nc) == pytest.approx((50 + 0 + 100 + 0) / 4)
    assert E.challenge_score(r, np.zeros(4)) == pytest.approx(50)
    # a perfect model at the noise ceiling scores 100
    assert E.challenge_score(np.sqrt([0.3, 0.6]), np.array([0.3, 0.6])) == pytest.approx(100)


def test_summarize_hand_computed():
    r = {"lh": np.array([0.1, 0.2, 0.3, np.nan]), "rh": np.array([0.4, 0.6])}
    rois = {"lh": [("A", "R1", np.array([0, 1])), ("A", "R2", np.array([2, 3])),
                   ("B", "S1", np.array([1, 2]))],
            "rh": [("A", "R1", np.array([0])), ("A", "R2", np.array([1])),
                   ("B", "S1", np.array([], int))]}
    s = E.summarize(r, rois, {"lh": np.full(4, 0.5), "rh": np.full(2, 0.5)})
    assert s["mean_r_lh"] == pytest.approx(0.15)   # NaN counts as 0, as upstream
    assert s["mean_r_rh"] == pytest.approx(0.5)
    assert s["mean_r"] == pytest.approx(0.325)
    assert s["roi"]["R1"] == pytest.approx({"lh": 0.15, "rh": 0.4})
    assert s["roi"]["R2"] == pytest.approx({"lh": 0.15, "rh": 0.6})
    assert s["roi"]["S1"]["lh"] == pytest.approx(0.25) and math.isnan(s["roi"]["S1"]["rh"])
    assert s["family"]["A"]["lh"] == pytest.approx(0.15)
    assert s["family"]["B"]["lh"] == pytest.approx(0.25)
    lh = 100 * np.mean(np.array([0.01, 0.04, 0.09, 0.0]) / 0.5)
    rh = 100 * np.mean(np.array([0.16, 0.36]) / 0.5)
    assert s["challenge_lh"] == pytest.approx(lh) and s["challenge_rh"] == pytest.approx(rh)
    assert s["challenge"] == pytest.approx((4 * lh + 2 * rh) / 6)  # over all vertices
    assert E.summarize(r, rois)["challenge"] is None


@pytest.mark.parametrize("n,p", [(50, 5), (20, 60)])  # primal and dual paths
def test_ridge_path_matches_numpy(n, p):
    rng = np.random.default_rng(n)
    x, y, xe = rng.normal(size=(n, p)), rng.normal(size=(n, 3)), rng.normal(size=(7, p))
    lam = 2.5
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(p), xc.T @ (y - my))
    want = (xe - mx) @ w + my
    got = np.asarray(E._ridge_path(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                                   jnp.asarray(xe, jnp.float32), jnp.asarray([lam, 1e9])))
    np.testing.assert_allclose(got[0], want, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(got[1], np.broadcast_to(my, got[1].shape), atol=1e-3)


def test_ridge_baseline_selects_on_validation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 10))
    w = rng.normal(size=(10, 4))
    y = x @ w + 0.3 * rng.normal(size=(120, 4))
    out = E.ridge_baseline(x[:100], y[:100], x[100:], y[100:], x[:5])
    scores = out["val_mean_r_per_lambda"]
    assert out["relative_lambda"] == pytest.approx(
        (10.0 ** np.arange(-4, 3.5, 0.5))[int(np.argmax(scores))], rel=1e-5)
    assert max(scores) > 0.9 and out["test_pred"].shape == (5, 4)
    r = E.pearson_r(out["val_pred"], y[100:])
    assert np.mean(r) == pytest.approx(max(scores))


def test_pool_features():
    f = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(E.pool_features(f)[0], [1.5, 5.5, 9.5])
    assert E.pool_features(f, "flat").shape == (2, 12)
    with pytest.raises(ValueError):
        E.pool_features(f, "cls")


def test_submission_and_figures(tmp_path):
    paths = E.save_submission(tmp_path / "subj01", np.ones((4, 6), np.float64), np.zeros((4, 5)))
    lh = np.load(paths[0])
    assert [p.name for p in paths] == ["lh_pred_test.npy", "rh_pred_test.npy"]
    assert lh.dtype == np.float32 and lh.shape == (4, 6) and np.load(paths[1]).shape == (4, 5)
    s = E.summarize({"lh": np.array([0.2, 0.4]), "rh": np.array([0.1, 0.3])},
                    {h: [("A", "R1", np.array([0])), ("A", "R2", np.array([1]))]
                     for h in ("lh", "rh")})
    png = P.plot_roi_scores(s, tmp_path / "roi.png", baseline=s)
    att = P.plot_attention(np.zeros((25, 25, 3), np.uint8), np.random.default_rng(0).random(
        (2, 4)), ["lh V1v", "lh FFA-1"], (2, 2), 14, tmp_path / "att.png")
    for p in (png, att):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
