"""Algonauts 2023 reader and the synthetic subject: layout, ROI masks, PNGs, bad input."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from popt_jax.fmri import algonauts as A
from popt_jax.fmri import synthetic_algonauts as S
from popt_jax.ieeg.braintreebank import DataError


@pytest.fixture(scope="module")
def root(algonauts_root):
    """The session's synthetic Algonauts tree (conftest: 40 + 6 images, 28 px); read-only."""
    return algonauts_root


@pytest.fixture
def copy(root, tmp_path):
    shutil.copytree(root, tmp_path / "data")
    return tmp_path / "data"


def test_layout_and_shapes(root):
    s = A.AlgonautsSubject(root, 1)
    assert s.dir.name == "subj01" and s.image_size == (28, 28)
    assert len(s.train_images) == 40 and len(s.test_images) == 6
    assert s.fmri("lh").shape == (40, 90) and s.fmri("rh").shape == (40, 80)
    assert s.mapping("floc-faces") == {0: "Unknown", 1: "OFA", 2: "FFA-1", 3: "FFA-2",
                                       4: "mTL-faces", 5: "aTL-faces"}
    imgs = s.load_images("test")
    assert imgs.shape == (6, 28, 28, 3) and imgs.dtype == np.uint8
    assert s.noise_ceiling("lh").shape == (90,)
    assert s.fsaverage_mask("rh").sum() == 80
    # a subject folder works as the root too
    assert A.AlgonautsSubject(root / "subj01").dir == s.dir


def test_rois_all_masks_follow_upstream(root):
    s = A.AlgonautsSubject(root, 1)
    masks, names = s.query_masks("lh", "rois_all")
    # 7 + 4 + 5 + 3 + 5 = 24 named ROIs of the five query families, then "Unknown"
    assert masks.shape == (25, 90) and len(names) == 25
    assert names[:2] == ["V1v", "V1d"] and names[-1] == "Unknown" and "early" not in names
    in_any = masks[:-1].max(0)
    np.testing.assert_array_equal(masks[-1], 1 - in_any)  # Unknown = in none of the 24
    assert (masks[:-1].sum(0) > 1).any(), "the synthetic ROIs should overlap somewhere"
    v1v = s.roi_map("lh", "prf-visualrois") == 1
    np.testing.assert_array_equal(masks[0].astype(bool), v1v)
    assert s.query_masks("rh", "hemis") == (None, ["rh"])
    m, vox = s.query_masks("lh", "voxels")
    assert m is None and len(vox) == 90


def test_roi_vertices_include_streams(root):
    s = A.AlgonautsSubject(root, 1)
    fams = {f for f, _, _ in s.roi_vertices("lh")}
    assert fams == set(A.FAMILIES)


def test_png_roundtrip_and_own_decoder(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    A.write_png(tmp_path / "a.png", img)
    np.testing.assert_array_equal(A.read_png(tmp_path / "a.png"), img)
    np.testing.assert_array_equal(A._decode_png(tmp_path / "a.png"), img)
    assert A.png_size(tmp_path / "a.png") == (9, 13)
    pil = pytest.importorskip("PIL.Image")
    # Pillow's encoder picks Sub/Up/Average/Paeth filters per row: the fallback must undo all
    smooth = np.cumsum(rng.integers(0, 4, (20, 30, 3)), axis=1).astype(np.uint8)
    pil.fromarray(smooth).save(tmp_path / "b.png", optimize=True)
    np.testing.assert_array_equal(A._decode_png(tmp_path / "b.png"), smooth)


def test_mapping_reader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "mapping_evil.npy"
    np.save(path, np.array(Evil(), dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a pickled dict.*refusing"):
        A.load_mapping(path)
    assert not (tmp_path / "pwned").exists()


def test_mapping_reader_errors(tmp_path):
    np.save(tmp_path / "numbers.npy", np.arange(3))
    with pytest.raises(DataError, match="not a pickled dict"):
        A.load_mapping(tmp_path / "numbers.npy")
    np.save(tmp_path / "list.npy", np.array([1, 2], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds a ndarray, not a pickled dict"):
        A.load_mapping(tmp_path / "list.npy")
    np.save(tmp_path / "bad.npy", {0: 1.5}, allow_pickle=True)
    with pytest.raises(DataError, match="not int id -> str name"):
        A.load_mapping(tmp_path / "bad.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a pickled dict"):
        A.load_mapping(tmp_path / "junk.npy")
    # numpy scalars as ids, as some releases store them
    np.save(tmp_path / "ok.npy", {np.int64(0): "Unknown", np.int64(1): "V1v"}, allow_pickle=True)
    assert A.load_mapping(tmp_path / "ok.npy") == {0: "Unknown", 1: "V1v"}


def test_vertex_count_mismatch(copy):
    roi = copy / "subj01" / "roi_masks" / "rh.floc-places_challenge_space.npy"
    np.save(roi, np.zeros(81, np.float32))
    with pytest.raises(DataError) as e:
        A.AlgonautsSubject(copy, 1)
    msg = str(e.value)
    assert "\n" not in msg and "rh.floc-places" in msg and "81" in msg and "80" in msg


def test_fmri_rows_mismatch(copy):
    f = copy / "subj01" / "training_split" / "training_fmri" / "lh_training_fmri.npy"
    np.save(f, np.zeros((39, 90), np.float32))
    with pytest.raises(DataError, match="expected \\[40 training images"):
        A.AlgonautsSubject(copy, 1)


def test_image_of_another_size(copy):
    odd = copy / "subj01" / "test_split" / "test_images" / "test-0003_nsd-00042.png"
    A.write_png(odd, np.zeros((30, 28, 3), np.uint8))
    with pytest.raises(DataError, match="is 30x28 but .* is 28x28; all images"):
        A.AlgonautsSubject(copy, 1)


def test_unknown_roi_id_and_missing_files(copy):
    roi = copy / "subj01" / "roi_masks" / "lh.floc-words_challenge_space.npy"
    bad = np.load(roi)
    bad[0] = 9
    np.save(roi, bad)
    with pytest.raises(DataError, match=r"ROI ids \[9\] are not in mapping_floc-words"):
        A.AlgonautsSubject(copy, 1)
    with pytest.raises(DataError, match="subject folder not found"):
        A.AlgonautsSubject(copy, 3)


def test_synthetic_plant_switch(tmp_path):
    cfg = S.SyntheticAlgonautsConfig(n_train=200, n_test=0, image_size=28, n_vertices=(60, 50))
    on = S.write_synthetic_algonauts(tmp_path / "on", cfg)
    off = S.write_synthetic_algonauts(tmp_path / "off", S.SyntheticAlgonautsConfig(
        **{**cfg.__dict__, "plant": False}))
    a = A.AlgonautsSubject(on.parent, 1)
    b = A.AlgonautsSubject(off.parent, 1)
    np.testing.assert_array_equal(a.load_images("train"), b.load_images("train"))
    assert b.noise_ceiling("lh") is None and a.noise_ceiling("lh").max() < 1
    # held-out linear prediction from the image statistics: planted responses follow them,
    # pure noise does not
    stats = S.image_statistics(a.load_images("train"))
    x = np.c_[stats, np.ones(len(stats))]

    def held_out_r(y):
        w = np.linalg.lstsq(x[:150], y[:150], rcond=None)[0]
        p, t = x[150:] @ w - (x[150:] @ w).mean(0), y[150:] - y[150:].mean(0)
        return ((p * t).sum(0) / np.sqrt((p * p).sum(0) * (t * t).sum(0))).mean()

    assert held_out_r(np.asarray(a.fmri("lh"))) > 0.4
    assert abs(held_out_r(np.asarray(b.fmri("lh")))) < 0.1
