"""The jobs for your own recordings: extract_recordings (feature store), embed and predict.

A BIDS-iEEG BrainVision copy of one synthetic Brain Treebank trial goes through each job
with tiny models; the feature-store file must match the Brain Treebank extraction of the
same signals (float32 BrainVision storage: BrainBERT embeddings within 1e-4), the fine-tuning
data layer must read it, and embed/predict must equal a direct whole-recording computation.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from flax import nnx
from recording_fixtures import bids_from_braintreebank, direct_window_embeddings

from popt_jax.errors import DataError
from popt_jax.ieeg import brainbert, feature_store
from popt_jax.ieeg.popt import PopTClassifier, PopTConfig
from popt_jax.ieeg.synthetic import write_synthetic_braintreebank
from popt_jax.main import run_job

REPO = Path(__file__).resolve().parents[2]


def _config(name: str, tmp: Path, **data):
    from popt_jax.core.config_lib import load_sibling_config

    config = load_sibling_config(str(REPO / "configs" / "x.py"), name).get_config("tiny")
    config.data.root = str(tmp / "bids")
    config.data.subject = "01"
    for k, v in data.items():
        setattr(config.data, k, v)
    return config


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs")
    root = write_synthetic_braintreebank(tmp / "bt", n_subjects=1, duration_s=30.0,
                                         n_shafts=2, contacts=(4, 5))
    bids_from_braintreebank(root, tmp / "bids", fmt="BrainVision")
    return tmp


@pytest.fixture(scope="module")
def extracted(tmp):
    config = _config("extract_recordings", tmp)
    config.tasks = ("pretrain", "volume", "word_onset")
    config.event_task.column = "is_onset"
    config.event_task.positive = ("True",)
    config.event_task.name = "sentence_events"
    summary = run_job("extract_recordings", config, str(tmp / "ext"))
    return config, summary


def test_store_file_matches_braintreebank_path(tmp, extracted):
    from popt_jax.ieeg.extract import _extract, preprocess_config_from

    config, summary = extracted
    [path] = summary["files"]
    assert Path(path).name == "sub_1_trial000.h5"
    meta = feature_store.read_attrs(path)
    mapping = json.loads(meta["coord_mapping"])
    assert mapping["frame"] == "fsaverage" and mapping["units_in"] == "m"
    assert meta["groups"]["pretrain"] == 8 and meta["groups"]["sentence_events"] > 0
    # The same signals through the Brain Treebank extraction, same settings and model.
    pre = dict(config.preprocess)
    pre["notch_freqs"] = (60.0, 120.0, 180.0, 240.0, 300.0, 360.0)  # the sidecar's 60 Hz
    model = brainbert.BrainBERT(brainbert.BrainBERTConfig(**dict(config.brainbert)),
                                rngs=nnx.Rngs(config.seed))
    [bt_path], _ = _extract(tmp / "bt", tmp / "bt_features", checkpoint_hash="x",
                            selection={"sub_1": meta["electrode_names"]}, brainbert=model,
                            preprocess_cfg=preprocess_config_from(pre),
                            tasks=("pretrain", "volume", "word_onset"), batch_windows=4,
                            max_windows=8)
    bt_meta = feature_store.read_attrs(bt_path)
    assert bt_meta["electrode_names"] == meta["electrode_names"]
    np.testing.assert_array_equal(np.trunc(bt_meta["coords"]), meta["coords"])
    with h5py.File(path) as f, h5py.File(bt_path) as g:
        for task in ("pretrain", "volume", "word_onset"):
            e1, l1, s1 = feature_store.task_arrays(f, task)
            e2, l2, s2 = feature_store.task_arrays(g, task)
            np.testing.assert_array_equal(s1, s2)
            np.testing.assert_array_equal(l1, l2)
            np.testing.assert_allclose(e1, e2, rtol=0, atol=1e-4)


def test_finetune_data_layer_reads_event_task(tmp, extracted):
    from popt_jax.ieeg.datasets import FinetuneSource

    src = FinetuneSource(tmp / "ext" / "features", "sentence_events", 1, "train",
                         split_mode="random", val_frac=0.2, test_frac=0.2)
    ex = src[0]
    assert ex["x"].shape[-1] == 32 and ex["coords"].dtype == np.int32
    assert set(np.unique(src.labels)) <= {0, 1}


@pytest.fixture(scope="module")
def direct(tmp):
    """Whole-recording front end + BrainBERT windows, to check the streamed jobs against."""
    return direct_window_embeddings(tmp / "bids", _config("embed", tmp))


def test_embed_job_streams_what_a_whole_pass_gives(tmp, direct):
    from popt_jax.ieeg.popt import PopT

    plan, starts, emb = direct
    config = _config("embed", tmp)
    summary = run_job("embed", config, str(tmp / "embed"))
    [path] = summary["files"]
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["starts"][:], starts)
        assert list(f["electrode_names"].asstr()[:]) == plan.names
        np.testing.assert_array_equal(f["coords"][:], plan.index)
        np.testing.assert_allclose(f["brainbert"][:], emb, rtol=0, atol=1e-4)
        cls, tokens = f["popt_cls"][:], f["popt_tokens"][:]
    assert cls.shape == (len(starts), 16) and tokens.shape == (len(starts), len(plan.names), 16)
    popt = PopT(PopTConfig(input_dim=32, **dict(config.popt)), rngs=nnx.Rngs(config.seed))
    hidden, _ = popt.encode(emb, None, np.broadcast_to(plan.index, (len(emb), *plan.index.shape)))
    np.testing.assert_allclose(cls, np.asarray(hidden)[:, 0], rtol=0, atol=1e-4)
    assert not list((tmp / "embed" / "embeddings").glob("*.tmp"))


def test_predict_job_writes_probabilities_and_timeline(tmp, direct):
    from popt_jax.core.checkpoints import Checkpoints
    from popt_jax.core.steps import split_model

    plan, starts, emb = direct
    cfg = PopTConfig(input_dim=32, hidden_dim=16, n_heads=2, ff_dim=32, n_layers=1)
    clf = PopTClassifier(cfg, rngs=nnx.Rngs(3))
    params = split_model(clf).params
    meta = {"format": "popt_jax.train/1", "task": "finetune",
            "model": __import__("dataclasses").asdict(cfg)}
    ckpts = Checkpoints(tmp / "ft" / "checkpoints", meta, best_metric="roc_auc",
                        best_mode="max")
    ckpts.save(1, params, {"none": np.zeros(1)}, {"step": 1}, metrics={"roc_auc": 0.7})
    ckpts.close()
    config = _config("predict", tmp)
    config.model_checkpoint = str(tmp / "ft")
    summary = run_job("predict", config, str(tmp / "pred"))
    run = summary["runs"]["sub-01_task-movie_run-1"]
    with open(run["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(starts) and Path(run["png"]).stat().st_size > 1000
    np.testing.assert_allclose([float(r["start_s"]) for r in rows], starts / 2048, atol=1e-4)
    logits = np.asarray(clf(emb, None, np.broadcast_to(plan.index, (len(emb), 3 * 0 + len(
        plan.names), 3))))[:, 0]
    np.testing.assert_allclose([float(r["probability"]) for r in rows],
                               1 / (1 + np.exp(-logits)), rtol=0, atol=1e-5)


def test_bad_input_leaves_nothing_that_looks_complete(tmp):
    root = tmp / "bad_bids"
    shutil.copytree(tmp / "bids", root / "bids")
    for p in root.rglob("*_electrodes.tsv"):
        p.unlink()
    config = _config("extract_recordings", root)
    with pytest.raises(DataError, match="electrodes.tsv"):
        run_job("extract_recordings", config, str(root / "out"))
    assert not (root / "out" / "results.json").exists()
    assert not list((root / "out").rglob("*.h5"))


def test_main_prints_one_error_line(tmp):
    root = tmp / "short"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "popt_jax.main", f"--config={REPO}/configs/embed.py:tiny",
         f"--workdir={root}", f"--config.data.root={root / 'nothing'}",
         "--config.data.subject=01"], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=300)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    # Refused by the config checks before any work (the reader's own message for a missing
    # root, "BIDS root folder not found", is for API callers).
    assert err == [f"error: config.data.root: {root / 'nothing'}: No such file or directory"]
    assert "Traceback" not in proc.stderr
