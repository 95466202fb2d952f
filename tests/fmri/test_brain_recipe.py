"""Upstream's reproduction recipe in the brain-encoder job: idxs.npy split files, upstream
output names, enc_output_layer, image size, init_decoder, and the test-split challenge score."""

from __future__ import annotations

import numpy as np
import pytest
from ml_collections import config_dict
from test_brain_encoder_train import tiny_config

from popt_jax.errors import ConversionError, DataError
from popt_jax.fmri import algonauts, inputs, recipe
from popt_jax.fmri import decoder as be
from popt_jax.fmri import train as BT


def _split_config(**data):
    c = config_dict.ConfigDict({"seed": 3, "data": {"split_file": "", "shuffle": True},
                                "train": {"val_fraction": 0.1}})
    c.data.update(data)
    return c


def test_make_split_writes_and_reads_upstream_idxs(tmp_path):
    tr, va = recipe.make_split(95, _split_config(), tmp_path / "a")
    idxs = np.load(tmp_path / "a" / "upstream" / "idxs.npy")
    assert len(tr) == 86 == int(np.round(95 / 100 * 90))  # upstream's count
    np.testing.assert_array_equal(np.concatenate([tr, va]), idxs)
    assert not np.array_equal(idxs, np.arange(95))
    # an upstream file is reused as is, order included
    tr2, va2 = recipe.make_split(95, _split_config(split_file=str(tmp_path / "a" / "upstream" /
                                                               "idxs.npy")), tmp_path / "b")
    np.testing.assert_array_equal(va2, va)
    np.testing.assert_array_equal(tr2, tr)
    tr3, va3 = recipe.make_split(95, _split_config(shuffle=False), tmp_path / "c")
    np.testing.assert_array_equal(np.concatenate([tr3, va3]), np.arange(95))
    bad = tmp_path / "short.npy"
    np.save(bad, np.arange(90))
    with pytest.raises(DataError, match="90 indices but the subject has 95"):
        recipe.make_split(95, _split_config(split_file=str(bad)), tmp_path / "d")
    np.save(bad, np.zeros(95, int))
    with pytest.raises(DataError, match="not a permutation"):
        recipe.make_split(95, _split_config(split_file=str(bad)), tmp_path / "d")


def test_enc_output_layer_and_image_size():
    assert recipe.block_index(1) == -1 and recipe.block_index(3) == -3
    with pytest.raises(ValueError):
        recipe.block_index(0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two epochs on the spatial subject with test fMRI, block 2 of 2, images resized to 42 px,
    the decoder started from an upstream-layout checkpoint."""
    torch = pytest.importorskip("torch")
    base = tmp_path_factory.mktemp("recipe")
    c = tiny_config(spatial=True, test_fmri=True)
    c.train.epochs = 2
    c.backbone.depth = 2
    c.features.enc_output_layer = 2
    c.features.image_size = 42
    subject = inputs.load_subject(c, base / "job")
    model, *_ = inputs.build_model(c, subject, 32)
    sd = be.to_torch_state_dict(model)
    sd = {k: v + 0.01 for k, v in sd.items()}  # differs from the seeded init
    ckpt = base / "checkpoint.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "epoch": 3}, ckpt)
    c.init_decoder = str(ckpt)
    started, *_ = inputs.build_model(c, subject, 32)
    for k, v in be.to_torch_state_dict(started).items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
    return base / "job", BT.brain_encoder_job(c, base / "job"), c


def test_job_writes_upstream_files_and_test_score(run):
    workdir, results, _ = run
    assert results["feature_shape"] == [32, 3, 3]  # 56 px resized to 42 -> 3 x 3 patches
    assert results["enc_output_layer"] == 2
    up = recipe.load_upstream_outputs(workdir / "upstream")
    idxs = up["idxs"]
    assert sorted(idxs.tolist()) == list(range(200))
    n_va = results["n_val"]
    subject = algonauts.AlgonautsSubject(results["data_root"], 1)
    for hemi in algonauts.HEMIS:
        n_v = subject.n_vertices(hemi)
        assert up[f"{hemi}_fmri_val_pred"].shape == (n_va, n_v)
        assert up[f"{hemi}_val_corr"].shape == (n_v,)
        assert up[f"{hemi}_pred_test"].shape == (8, n_v)
        # the validation rows are idxs[n_train:], in that order
        np.testing.assert_array_equal(np.load(workdir / "predictions" / "val_index.npy"),
                                      idxs[results["n_train"]:])
    score = results["test_challenge"]
    assert set(score) == {"lh", "rh", "overall", "mean_r"}
    assert 0 <= score["overall"] <= 100
    assert min(score["lh"], score["rh"]) <= score["overall"] <= max(score["lh"], score["rh"])
    assert isinstance(results["ridge_test_challenge"], dict)


def test_bad_init_decoder_is_one_clear_error(run, tmp_path):
    torch = pytest.importorskip("torch")
    workdir, _, c = run
    bad = tmp_path / "other.pth"
    torch.save({"model": {"query_embed.weight": torch.zeros(3, 3)}}, bad)
    c = c.copy_and_resolve_references()
    c.init_decoder = str(bad)
    subject = inputs.load_subject(c, workdir)
    with pytest.raises(ConversionError, match="state_dict does not fit"):
        inputs.build_model(c, subject, 32)


def test_unavailable_without_test_fmri(tmp_path):
    from popt_jax.fmri import evaluate
    from popt_jax.fmri import synthetic_algonauts as S

    S.write_synthetic_algonauts(tmp_path, S.SyntheticAlgonautsConfig(
        n_train=12, n_test=3, image_size=28, n_vertices=(20, 20)))
    s = algonauts.AlgonautsSubject(tmp_path, 1)
    pred = {"lh": np.zeros((3, 20)), "rh": np.zeros((3, 20))}
    assert evaluate.test_challenge(s, pred) == evaluate.UNAVAILABLE
