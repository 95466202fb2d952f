"""End-to-end brain-encoder job on a tiny synthetic subject (CPU, well under a minute).

Checks the outputs (results.json, figures, submission arrays, checkpoints, metrics), that the
transformer learns the planted image-response dependence (mean validation r far above the
shuffled-image chance level), that an interrupted run (4 of 10 epochs) and a finished one
resume instead of retraining, and that with the dependence switched off the mean validation r
is near 0.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from popt_jax.core import tb_writer
from popt_jax.fmri import train as BT

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "configs")


def tiny_config(**synthetic):
    spec = importlib.util.spec_from_file_location("brain_encoder_config",
                                                  os.path.join(CONFIGS, "brain_encoder.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    s = c.data.synthetic
    s.n_train, s.n_test, s.image_size = 200, 8, 56
    s.lh_vertices, s.rh_vertices = 100, 90
    s.spatial = False  # the global-statistics subject these assertions were written for
    for k, v in synthetic.items():
        setattr(s, k, v)
    c.backbone.embed_dim, c.backbone.depth, c.backbone.num_heads = 32, 1, 2
    c.backbone.pretrain_grid = 3
    c.model.ff_dim = 64
    c.train.epochs = 10
    c.train.log_every = 1000
    c.eval.n_attention_images = 2
    return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """4 epochs, then the same workdir asked for 10: the second run resumes at epoch 4."""
    workdir = tmp_path_factory.mktemp("brain_encoder")
    short = tiny_config()
    short.train.epochs = 4
    first = BT.brain_encoder_job(short, workdir)
    assert first["steps"] == 4 * 12
    results = BT.brain_encoder_job(tiny_config(), workdir)
    return workdir, results


def test_outputs(run):
    workdir, results = run
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["best_step"] == results["best_step"]
    assert results["n_train"] == 180 and results["n_val"] == 20 and results["n_test"] == 8
    assert results["feature_shape"] == [32, 4, 4]
    assert results["model"]["lh_queries"] == 25 and results["model"]["rh_queries"] == 25
    for hemi, n_v in (("lh", 100), ("rh", 90)):
        pred = np.load(workdir / "submission" / "subj01" / f"{hemi}_pred_test.npy")
        assert pred.shape == (8, n_v) and pred.dtype == np.float32 and np.isfinite(pred).all()
        assert np.load(workdir / "submission_ridge" / "subj01" / f"{hemi}_pred_test.npy").shape \
            == (8, n_v)
        assert np.load(workdir / "predictions" / f"{hemi}_val_r.npy").shape == (n_v,)
    figures = [results["files"]["roi_scores"]] + results["files"]["attention"]
    assert len(figures) == 3
    for f in figures:
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    # the resumed run continued the log: every epoch validated exactly once
    assert [x["epoch"] for x in lines if x["split"] == "valid"] == list(range(1, 11))
    scalars = tb_writer.read_scalars(str(workdir / "tensorboard"))
    assert "valid/mean_r" in scalars and "train/loss" in scalars
    assert (workdir / "checkpoints" / str(results["best_step"])).is_dir()


def test_learns_the_planted_dependence(run):
    _, results = run
    t, ridge = results["transformer"], results["ridge"]
    assert t["mean_r"] > 0.3, t["mean_r"]
    assert abs(results["chance_mean_r"]) < 0.1
    assert t["challenge"] is not None and t["challenge"] > 10
    assert ridge["mean_r"] > 0.2 and set(t["family"]) == set(ridge["family"])
    assert {"V1v", "FFA-1", "PPA", "early"} <= set(t["roi"])


def test_finished_run_resumes_without_training(run):
    workdir, first = run

    def trained():  # the checkpoints and every train/valid metrics line
        lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        return (sorted(p.name for p in (workdir / "checkpoints").iterdir()),
                [x for x in lines if x["split"] in ("train", "valid")])

    before = trained()
    again = BT.brain_encoder_job(tiny_config(), workdir)
    assert again["best_step"] == first["best_step"]
    assert again["transformer"]["mean_r"] == pytest.approx(first["transformer"]["mean_r"])
    # Nothing was trained again: no new checkpoint, no new train or valid line.
    assert trained() == before and len(before[1]) > 0


def test_no_dependence_means_no_correlation(tmp_path):
    results = BT.brain_encoder_job(tiny_config(plant=False), tmp_path)
    assert abs(results["transformer"]["mean_r"]) < 0.08
    assert results["transformer"]["challenge"] is None  # no noise ceiling without signal
