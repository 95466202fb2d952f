"""The Algonauts 2023 challenge score against hand-computed values, and test-split reading."""

import shutil

import numpy as np
import pytest

from popt_jax.errors import DataError
from popt_jax.fmri import algonauts
from popt_jax.fmri import metrics as E
from popt_jax.fmri import synthetic_algonauts as S


@pytest.fixture(scope="module")
def synthetic_algonauts_root(tmp_path_factory):
    path = tmp_path_factory.mktemp("algonauts")
    S.write_synthetic_algonauts(path, S.SyntheticAlgonautsConfig(
        n_train=20, n_test=5, image_size=28, n_vertices=(40, 30)))
    return path


def test_vertex_scores_devkit_rules():
    r = np.array([0.6, -0.4, 0.2, 0.9, np.nan, 0.0])
    nc = np.array([0.72, 0.5, 0.0, 0.5, 0.3, 0.0])
    # 0.36/0.72 = 50 %; r < 0 -> 0; nc == 0 -> 1e-14 so 0.04/1e-14 caps at 100 %;
    # r^2 = 0.81 > nc = 0.5 caps at 100 %; NaN r -> 0; r = 0 with nc = 0 -> 0/1e-14 = 0
    np.testing.assert_allclose(E.vertex_scores(r, nc), [50.0, 0.0, 100.0, 100.0, 0.0, 0.0])
    assert E.challenge_score(r, nc) == pytest.approx(250.0 / 6)


def test_challenge_scores_per_hemisphere_and_overall():
    r = {"lh": np.array([0.5, 0.1]), "rh": np.array([0.3, -0.3, 0.2])}
    nc = {"lh": np.array([0.5, 0.04]), "rh": np.array([0.09, 0.2, 0.08])}
    s = E.challenge_scores(r, nc)
    assert s["lh"] == pytest.approx((50 + 25) / 2)
    assert s["rh"] == pytest.approx((100 + 0 + 50) / 3)
    assert s["overall"] == pytest.approx((50 + 25 + 100 + 0 + 50) / 5)
    with pytest.raises(ValueError, match="noise-ceiling"):
        E.vertex_scores(np.zeros(3), np.zeros(2))


def test_noise_ceiling_formats():
    frac = np.array([0.2, 0.5, 1.0])
    np.testing.assert_allclose(algonauts.noise_ceiling_fraction(frac, "x"), frac)
    np.testing.assert_allclose(algonauts.noise_ceiling_fraction(frac * 100, "x"), frac)
    with pytest.raises(DataError, match="NaN"):
        algonauts.noise_ceiling_fraction(np.array([0.1, np.nan]), "x")
    with pytest.raises(DataError, match="negative"):
        algonauts.noise_ceiling_fraction(np.array([0.1, -2.0]), "x")


def _copy(tree, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tree, dst)
    return dst


def test_test_split_fmri_and_noise_ceiling(synthetic_algonauts_root, tmp_path):
    root = _copy(synthetic_algonauts_root, tmp_path)
    s = algonauts.AlgonautsSubject(root, 1)
    assert s.test_fmri("lh") is None and s.test_noise_ceiling("lh") is None
    n_test, n_v = len(s.test_images), s.n_vertices("lh")
    fmri_dir = s.dir / "test_split" / "test_fmri"
    fmri_dir.mkdir()
    for hemi in algonauts.HEMIS:
        np.save(fmri_dir / f"{hemi}_test_fmri.npy",
                np.ones((n_test, s.n_vertices(hemi)), np.float32))
    with pytest.raises(DataError, match="no noise ceiling"):
        algonauts.AlgonautsSubject(root, 1)
    nc_dir = s.dir / "test_split" / "noise_ceiling"
    nc_dir.mkdir()
    for hemi in algonauts.HEMIS:
        np.save(nc_dir / f"{hemi}_noise_ceiling.npy",
                np.full(s.n_vertices(hemi), 40.0, np.float32))  # percent
    s = algonauts.AlgonautsSubject(root, 1)
    assert s.test_fmri("rh").shape == (n_test, s.n_vertices("rh"))
    np.testing.assert_allclose(s.test_noise_ceiling("lh"), 0.4)
    np.save(fmri_dir / "lh_test_fmri.npy", np.ones((n_test, n_v + 1), np.float32))
    with pytest.raises(DataError, match="vertices"):
        algonauts.AlgonautsSubject(root, 1)
