"""predict_images: a trained encoder on a folder of images -> predictions, PNGs, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_brain_encoder_train import tiny_config

from popt_jax.errors import DataError
from popt_jax.fmri import predict as P
from popt_jax.fmri import train as BT


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    c = tiny_config(spatial=True)
    c.train.epochs = 1
    return workdir, BT.brain_encoder_job(c, workdir)


def test_predict_test_split_writes_submission_and_figures(run, tmp_path):
    workdir, results = run
    folder = workdir / "synthetic_algonauts" / "subj01" / "test_split" / "test_images"
    out = P.predict_images(workdir, folder, tmp_path, rois="V1v,FFA-1", top_k=3,
                           n_attention_images=2)
    lh = np.load(tmp_path / "predictions" / "lh_pred.npy")
    assert lh.shape == (8, 100) and lh.dtype == np.float32
    sub = np.load(tmp_path / "submission" / "subj01" / "lh_pred_test.npy")
    # the same weights as the training run's best checkpoint: its test predictions
    np.testing.assert_allclose(sub, np.load(workdir / "submission" / "subj01" /
                                            "lh_pred_test.npy"), rtol=1e-5, atol=1e-5)
    assert len(out["attention"]) == 2 and set(out["top_images"]) == {"lh V1v", "lh FFA-1"}
    for f in out["attention"] + [out["top_images_png"]]:
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_predict_any_folder_and_bad_input(run, tmp_path):
    workdir, _ = run
    src = workdir / "synthetic_algonauts" / "subj01" / "training_split" / "training_images"
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(src.iterdir())[:3]:
        shutil.copy(p, folder / p.name)
    out = P.predict_images(workdir, folder, tmp_path / "out", rois="V1v", top_k=2,
                           n_attention_images=0)
    assert "submission" not in out and out["images"] == 3
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="notes.txt: is not an image"):
        P.predict_images(workdir, folder, tmp_path / "out2")
    with pytest.raises(DataError, match="not a finished brain-encoder run"):
        P.predict_images(tmp_path, src, tmp_path / "out3")
