"""Feature cache: content equals direct extraction, resumes part-way, rebuilds on mismatch."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from flax import nnx

from popt_jax.fmri import algonauts as A
from popt_jax.fmri import dinov2
from popt_jax.fmri import feature_cache as BF
from popt_jax.fmri import synthetic_algonauts as S


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    S.write_synthetic_algonauts(root, S.SyntheticAlgonautsConfig(
        n_train=11, n_test=0, image_size=28, n_vertices=(20, 20)))
    subject = A.AlgonautsSubject(root, 1)
    cfg = dinov2.DinoV2Config(embed_dim=32, depth=1, num_heads=2, pretrain_grid=3)
    model = dinov2.DinoV2(cfg, rngs=nnx.Rngs(0))
    return subject, model


def test_cache_equals_direct_extraction(setup, tmp_path):
    subject, model = setup
    path = BF.cache_features(model, subject.train_images, tmp_path / "f.h5", batch_size=4)
    got = BF.load_features(path)
    want = np.asarray(dinov2.extract_features(model, subject.load_images("train")))
    assert got.dtype == np.float16 and got.shape == (11, 32, 2, 2)
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)
    with h5py.File(path) as f:
        assert int(f.attrs["completed"]) == 11 and f.attrs["kind"] == "dinov2_q"


def test_resume_extracts_only_the_rest(setup, tmp_path, monkeypatch):
    subject, model = setup
    path = BF.cache_features(model, subject.train_images, tmp_path / "f.h5", batch_size=4)
    full = BF.load_features(path)
    with h5py.File(path, "a") as f:  # as if the run had stopped after two batches
        f.attrs["completed"] = 8
        f["features"][8:] = 0
    with pytest.raises(Exception, match="incomplete"):
        BF.load_features(path)
    seen = []
    real = dinov2.extract_features

    def counting(m, images, *a, **k):
        seen.append(len(images))
        return real(m, images, *a, **k)

    monkeypatch.setattr(dinov2, "extract_features", counting)
    BF.cache_features(model, subject.train_images, path, batch_size=4)
    assert seen == [4]  # one (padded) batch for images 8..10
    np.testing.assert_array_equal(BF.load_features(path), full)


def test_mismatched_store_is_rebuilt(setup, tmp_path):
    subject, model = setup
    path = BF.cache_features(model, subject.train_images, tmp_path / "f.h5", batch_size=8)
    BF.cache_features(model, subject.train_images, path, batch_size=8, kind="dinov2")
    with h5py.File(path) as f:
        assert f.attrs["kind"] == "dinov2" and int(f.attrs["completed"]) == 11
    a = BF.cache_key("x", "dinov2_q", -1, subject.train_images)
    assert a != BF.cache_key("x", "dinov2_q", 0, subject.train_images)
    assert a != BF.cache_key("y", "dinov2_q", -1, subject.train_images)
    assert a != BF.cache_key("x", "dinov2_q", -1, subject.train_images[:5])


def test_reader_memory_and_disk_agree(setup, tmp_path):
    subject, model = setup
    path = BF.cache_features(model, subject.train_images, tmp_path / "f.h5", batch_size=8)
    mem, disk = BF.FeatureReader(path), BF.FeatureReader(path, max_bytes=0)
    idx = np.array([7, 2, 2, 10, 0])  # unsorted, with a repeat (a padded last batch)
    np.testing.assert_array_equal(mem[idx], disk[idx])
    assert mem[idx].dtype == np.float32 and len(disk) == 11
    disk.close()
