"""PopT's continuous position code end to end: BIDS -> store -> pretrain -> fine-tune -> apply.

A BIDS-iEEG copy of a tiny synthetic Brain Treebank trial (mne-bids, BrainVision) whose
``electrodes.tsv`` puts two electrodes 0.4 mm apart (both on the same integer table row) is
extracted with `extract_recordings`; the store must hold the real-valued positions and
millimetres beside the rounded rows; pretraining and fine-tuning run a few steps with
``position_code="continuous"`` (float coordinates in the batches); embed/predict apply those
checkpoints and equal a direct computation at the real-valued positions; a checkpoint is
refused with the other code (one ``error:`` line, exit 2 from the command line).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from flax import nnx
from recording_fixtures import bids_from_braintreebank, direct_window_embeddings

from popt_jax.core.checkpoints import read_meta
from popt_jax.errors import ConfigError, DataError
from popt_jax.ieeg import feature_store, train
from popt_jax.ieeg.coords import CoordMapping
from popt_jax.ieeg.datasets import FinetuneSource, PretrainConfig, PretrainSource
from popt_jax.ieeg.popt import SpatialEncoding
from popt_jax.ieeg.synthetic import write_synthetic_braintreebank
from popt_jax.main import run_job

REPO = Path(__file__).resolve().parents[2]
TASK = "sentence_events"
# Two electrodes 0.4 mm apart in x: L = 128 - x = 117.8 and 118.2, both table row 118.
CLOSE_MM = ((10.2, -20.0, 15.0), (9.8, -20.0, 15.0))


def _config(name: str, arg: str | None = "tiny"):
    from popt_jax.core.config_lib import load_sibling_config

    module = load_sibling_config(str(REPO / "configs" / "x.py"), name)
    return module.get_config(arg) if arg else module.get_config()


def _move_electrodes(bids: Path, names: list[str]) -> None:
    """Rewrite electrodes.tsv (metres) so ``names`` sit at `CLOSE_MM`."""
    [path] = list(bids.rglob("*_electrodes.tsv"))
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    head = rows[0]
    ix, iy, iz = (head.index(c) for c in ("x", "y", "z"))
    for r in rows[1:]:
        if r[0] in names:
            mm = CLOSE_MM[names.index(r[0])]
            r[ix], r[iy], r[iz] = (repr(v / 1000.0) for v in mm)
    with open(path, "w", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows(rows)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tmp, features dir, store file, the two close electrodes)."""
    tmp = tmp_path_factory.mktemp("continuous")
    root = write_synthetic_braintreebank(tmp / "bt", n_subjects=1, duration_s=30.0,
                                         n_shafts=2, contacts=(4, 5))
    bids_from_braintreebank(root, tmp / "bids", fmt="BrainVision")
    # Two contacts that survive the Laplacian (both shaft neighbours present).
    from popt_jax.ieeg.braintreebank import BrainTreebank

    labels = BrainTreebank(root).electrode_names(1)
    close = [labels[1], labels[2]]
    _move_electrodes(tmp / "bids", close)
    config = _config("extract_recordings")
    config.data.root, config.data.subject = str(tmp / "bids"), "01"
    config.max_windows = 24
    config.event_task.column, config.event_task.positive = "is_onset", ("True",)
    config.event_task.name = TASK
    [path] = run_job("extract_recordings", config, str(tmp / "ext"))["files"]
    return tmp, tmp / "ext" / "features", Path(path), close


def _train_config(kind: str, features: Path, **top):
    config = _config("tiny_train", kind)
    config.features_dir = str(features)
    config.position_code = "continuous"
    config.total_steps, config.eval_every, config.log_every = 2, 2, 1
    config.data.buckets = (8,)
    config.data.val_fraction = config.data.test_fraction = 0.2
    if kind == "finetune":
        config.task, config.data.subject = TASK, "sub_1"
        config.linear_baseline = False
    for k, v in top.items():
        setattr(config, k, v)
    return config


@pytest.fixture(scope="module")
def trained(store):
    """A continuous-code pretraining run and a fine-tuning run from it."""
    tmp, features, _, _ = store
    pre = train.pretrain_job(_train_config("pretrain", features), str(tmp / "pre"))
    ft = train.finetune_job(_train_config("finetune", features,
                                          init_checkpoint=str(tmp / "pre")), str(tmp / "ft"))
    return tmp / "pre", tmp / "ft", pre, ft


def test_store_holds_millimetres_and_real_positions(store):
    _, _, path, close = store
    meta = feature_store.read_attrs(path)
    assert meta["coord_frame"] == "fsaverage"
    names = meta["electrode_names"]
    mapping = CoordMapping.from_config("fsaverage", None)
    np.testing.assert_allclose(meta["positions"], mapping.positions(meta["coords_mm"]),
                               rtol=0, atol=1e-9)
    np.testing.assert_array_equal(np.rint(meta["positions"]), meta["coords"])
    rows = [names.index(n) for n in close]
    np.testing.assert_allclose(meta["coords_mm"][rows], CLOSE_MM, rtol=0, atol=1e-9)
    np.testing.assert_allclose(meta["positions"][rows, 0], [117.8, 118.2], rtol=0, atol=1e-9)
    assert (meta["coords"][rows, 0] == 118).all()


def test_sub_millimetre_difference_reaches_the_code(store):
    """Loader -> model: the continuous code separates electrodes 0.4 mm apart; the table
    path (the default) gives them identical codes."""
    _, features, path, close = store
    names = feature_store.read_attrs(path)["electrode_names"]
    a, b = (names.index(n) for n in close)
    enc = {code: SpatialEncoding(16, 5000, code == "continuous")
           for code in ("table", "continuous")}
    codes = {}
    for code in ("table", "continuous"):
        ex = FinetuneSource(features, TASK, 1, "train", split_mode="random",
                            position_code=code)[0]
        assert ex["coords"].dtype == (np.float32 if code == "continuous" else np.int32)
        c = np.asarray(enc[code](ex["coords"][None], ex["seq_id"][None]))[0, 1:]
        codes[code] = c
        pre = PretrainSource(features, "train", PretrainConfig(
            split_mode="random", val_frac=0.2, test_frac=0.2, position_code=code)).coords[0]
        np.testing.assert_array_equal(pre[[a, b]][:, 0].astype(ex["coords"].dtype),
                                      ex["coords"][[a, b], 0])
    assert np.abs(codes["continuous"][a] - codes["continuous"][b]).max() > 1e-3
    np.testing.assert_allclose(FinetuneSource(features, TASK, 1, "train", split_mode="random",
                                              position_code="continuous")[0]["coords"][
        [a, b], 0], [117.8, 118.2], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(codes["table"][a], codes["table"][b])
    # Default (no position_code): bit-identical to the table path.
    default = FinetuneSource(features, TASK, 1, "train", split_mode="random")[0]["coords"]
    assert default.dtype == np.int32
    np.testing.assert_array_equal(default, np.trunc(
        feature_store.read_attrs(path)["coords"]).astype(np.int32))


def test_old_recording_store_without_positions_is_refused(store, tmp_path):
    _, _, path, _ = store
    old = tmp_path / path.name
    old.write_bytes(path.read_bytes())
    with h5py.File(old, "a") as f:
        del f["positions"]
    with pytest.raises(DataError, match="no real-valued positions"):
        FinetuneSource(tmp_path, TASK, 1, "train", split_mode="random",
                       position_code="continuous")
    assert FinetuneSource(tmp_path, TASK, 1, "train", split_mode="random")[0]["coords"].dtype \
        == np.int32


def test_pretrain_and_finetune_with_continuous_code(store, trained):
    pre_dir, ft_dir, pre, ft = trained
    assert pre["steps"] == ft["steps"] == 2
    assert pre["model"]["position_code"] == ft["model"]["position_code"] == "continuous"
    for run in (pre_dir, ft_dir):
        meta = read_meta(run / "checkpoints" / "2")
        assert meta["model"]["position_code"] == "continuous"
    assert np.isfinite(ft["test"]["loss"]) and len(ft["predictions"]) > 0
    # The batches the runs trained on carry float positions.
    _, features, _, _ = store
    data = train.StoreData(_train_config("finetune", features), features, "finetune")
    batch = next(data.train_iterator())
    assert batch["coords"].dtype == np.float32
    real = batch["coords"][~batch["pad_mask"]]
    assert np.any(real != np.trunc(real))


def test_checkpoint_refused_with_the_other_code(store, trained):
    tmp, features, _, _ = store
    pre_dir, ft_dir, _, _ = trained
    config = _train_config("finetune", features, init_checkpoint=str(pre_dir),
                           position_code="table")
    with pytest.raises(ConfigError, match="position_code='continuous'"):
        train.finetune_job(config, str(tmp / "ft_table"))
    assert not (tmp / "ft_table").exists() or not any((tmp / "ft_table").iterdir())
    embed = _config("embed")
    embed.data.root, embed.data.subject = str(tmp / "bids"), "01"
    embed.popt_checkpoint = str(pre_dir)
    with pytest.raises(ConfigError, match="position_code"):
        run_job("embed", embed, str(tmp / "embed_table"))
    # From the command line: one error line, exit 2.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "popt_jax.main", f"--config={REPO}/configs/predict.py:tiny",
         f"--workdir={tmp / 'pred_table'}", f"--config.data.root={tmp / 'bids'}",
         "--config.data.subject=01", f"--config.model_checkpoint={ft_dir}"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "position_code='continuous'" in err[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp / "pred_table" / "results.json").exists()


def _direct_embeddings(tmp: Path, config):
    """Whole-recording front end + BrainBERT: (plan, window embeddings)."""
    plan, _, emb = direct_window_embeddings(tmp / "bids", config)
    return plan, emb


def test_embed_and_predict_apply_continuous_checkpoints(store, trained):
    from popt_jax.ieeg.apply import load_classifier

    tmp, _, _, _ = store
    pre_dir, ft_dir, _, _ = trained
    embed = _config("embed")
    embed.data.root, embed.data.subject = str(tmp / "bids"), "01"
    embed.popt_checkpoint, embed.position_code = str(pre_dir), "continuous"
    [path] = run_job("embed", embed, str(tmp / "embed"))["files"]
    plan, emb = _direct_embeddings(tmp, embed)
    assert not np.array_equal(plan.positions, plan.index)
    popt_cfg, params = train.load_init(pre_dir)
    from popt_jax.ieeg.popt import PopT

    popt = PopT(popt_cfg, rngs=nnx.Rngs(0))
    nnx.update(popt, params)
    pos = np.broadcast_to(plan.positions, (len(emb), *plan.positions.shape)).astype(np.float32)
    hidden = np.asarray(popt.encode(emb, None, pos)[0])
    with h5py.File(path) as f:
        assert f.attrs["position_code"] == "continuous"
        np.testing.assert_allclose(f["positions"][:], plan.positions, rtol=0, atol=0)
        np.testing.assert_allclose(f["popt_cls"][:], hidden[:, 0], rtol=0, atol=1e-4)
        # ... and it is not what the table would give.
        table = dataclasses.replace(popt_cfg, position_code="table")
        ptab = PopT(table, rngs=nnx.Rngs(0))
        nnx.update(ptab, params)
        idx = np.broadcast_to(plan.index, pos.shape)
        assert np.abs(np.asarray(ptab.encode(emb, None, idx)[0])[:, 0]
                      - f["popt_cls"][:]).max() > 1e-3

    pred = _config("predict")
    pred.data.root, pred.data.subject = str(tmp / "bids"), "01"
    pred.model_checkpoint, pred.position_code = str(ft_dir), "continuous"
    run = run_job("predict", pred, str(tmp / "pred"))["runs"]["sub-01_task-movie_run-1"]
    with open(run["csv"]) as f:
        probs = [float(r["probability"]) for r in csv.DictReader(f)]
    plan, emb = _direct_embeddings(tmp, pred)
    clf, _ = load_classifier(ft_dir)
    pos = np.broadcast_to(plan.positions, (len(emb), *plan.positions.shape)).astype(np.float32)
    logits = np.asarray(clf(emb, None, pos))[:, 0]
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=0, atol=1e-5)
    assert json.load(open(tmp / "pred" / "results.json"))["runs"]
