"""The ensemble job: upstream's softmax(beta x validation r) per-vertex block weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ml_collections import config_dict

from popt_jax.errors import DataError
from popt_jax.fmri import algonauts, recipe
from popt_jax.fmri import ensemble as E
from popt_jax.fmri import synthetic_algonauts as S


def test_block_weights_and_combine_hand_computed():
    r = {1: [np.array([0.5, 0.1]), np.array([0.3, np.nan])], 2: [np.array([0.4, 0.2])]}
    w = E.block_weights(r, beta=10.0)
    # block 1 mean r: [0.4, 0.05] (NaN -> 0); block 2: [0.4, 0.2]
    np.testing.assert_allclose(w[1], [0.5, 1 / (1 + np.exp(1.5))])
    np.testing.assert_allclose(w[1] + w[2], 1.0)
    preds = [np.ones((1, 2)), 3 * np.ones((1, 2)), 10 * np.ones((1, 2))]
    out = E.combine(preds, [1, 1, 2], w)  # upstream: each run takes its block's full weight
    np.testing.assert_allclose(out[0], 4 * w[1] + 10 * w[2], rtol=1e-6)
    out = E.combine(preds, [1, 1, 2], w, mean_over_runs=True)
    np.testing.assert_allclose(out[0], 2 * w[1] + 10 * w[2], rtol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three fake finished runs (blocks 1, 1, 2) on one synthetic subject with test fMRI."""
    base = tmp_path_factory.mktemp("ens")
    S.write_synthetic_algonauts(base / "data", S.SyntheticAlgonautsConfig(
        n_train=30, n_test=6, image_size=28, n_vertices=(20, 16), test_fmri=True))
    s = algonauts.AlgonautsSubject(base / "data", 1)
    rng = np.random.default_rng(0)
    idxs = rng.permutation(30)
    out = []
    for i, block in enumerate((1, 1, 2)):
        d = base / f"run{i}"
        (d / "upstream").mkdir(parents=True)
        np.save(d / "upstream" / "idxs.npy", idxs)
        val, test = {}, {}
        for h in algonauts.HEMIS:
            y = np.asarray(s.fmri(h))[idxs[27:]]
            val[h] = y + rng.normal(0, 1 + i, y.shape)
            yt = np.asarray(s.test_fmri(h))
            test[h] = yt + rng.normal(0, 1 + i, yt.shape)
        from popt_jax.fmri import metrics

        r = {h: metrics.pearson_r(val[h], np.asarray(s.fmri(h))[idxs[27:]]) for h in val}
        recipe.save_upstream_outputs(d / "upstream", val, r, test)
        (d / "results.json").write_text(json.dumps({
            "subject": "subj01", "data_root": str(base / "data"), "n_train": 27,
            "enc_output_layer": block, "transformer": {"mean_r": 0.1 * i}}))
        out.append(d)
    return base, out


def test_ensemble_job_outputs(runs, tmp_path):
    base, dirs = runs
    cfg = config_dict.ConfigDict({"runs": ",".join(map(str, dirs)), "beta": 40.0,
                                  "mean_over_runs": False})
    res = E.ensemble_job(cfg, tmp_path)
    assert res["blocks"] == [1, 1, 2]
    w = np.load(tmp_path / "weights" / "lh_block_weights.npy")
    assert w.shape == (2, 20)
    np.testing.assert_allclose(w.sum(0), 1.0, rtol=1e-6)
    up = recipe.load_upstream_outputs(tmp_path / "upstream")
    assert up["lh_fmri_val_pred"].shape == (3, 20) and up["rh_pred_test"].shape == (6, 16)
    sub = np.load(tmp_path / "submission" / "subj01" / "lh_pred_test.npy")
    assert sub.shape == (6, 20) and sub.dtype == np.float32
    assert set(res["test_challenge"]) >= {"lh", "rh", "overall"}
    for f in (res["files"]["roi_scores"], res["files"]["block_weights"]):
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "results.json").read_text())["beta"] == 40.0


def test_ensemble_refuses_other_splits(runs, tmp_path):
    base, dirs = runs
    other = base / "other"
    import shutil

    shutil.copytree(dirs[0], other)
    np.save(other / "upstream" / "idxs.npy", np.arange(30))
    cfg = config_dict.ConfigDict({"runs": f"{dirs[0]},{other}", "beta": 40.0,
                                  "mean_over_runs": False})
    with pytest.raises(DataError, match="share one validation split"):
        E.ensemble_job(cfg, tmp_path)
    cfg.runs = str(dirs[0])
    with pytest.raises(DataError, match="at least two"):
        E.ensemble_job(cfg, tmp_path)
