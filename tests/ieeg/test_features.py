"""The BrainBERT feature store: layout, exactness, atomic writes, reruns and the job."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from flax import nnx
from ml_collections import config_dict

from popt_jax.ieeg import brainbert as models
from popt_jax.ieeg import extract as features
from popt_jax.ieeg import feature_store
from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg.braintreebank import BrainTreebank, DataError, load_selection
from popt_jax.ieeg.synthetic import write_synthetic_braintreebank

REPO = Path(__file__).resolve().parents[2]
TINY = models.BrainBERTConfig(hidden_dim=32, n_heads=1, ff_dim=64, n_layers=1)


def _load_config(name: str) -> config_dict.ConfigDict:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_synthetic_braintreebank(tmp_path_factory.mktemp("tree") / "bt", n_subjects=1,
                                         duration_s=40, n_shafts=2, contacts=(4, 6), seed=1)


@pytest.fixture(scope="module")
def model() -> models.BrainBERT:
    return models.BrainBERT(TINY, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def store(tree, model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features")
    features.extract_features(tree, out, checkpoint_hash="tiny-0", brainbert=model,
                              selection=tree / "electrode_selections/clean_laplacian.json",
                              batch_windows=16)
    return out


def _selection(tree: Path) -> Path:
    return tree / "electrode_selections/clean_laplacian.json"


def test_layout_shapes_and_attrs(tree, store, model):
    files = sorted(p.name for p in store.iterdir())
    assert files == ["sub_1_trial000.h5"]
    path = store / files[0]
    cfg = pp.PreprocessConfig()
    bt = BrainTreebank(tree)
    trial = pp.preprocess_trial(bt, 1, 0, load_selection(_selection(tree))["sub_1"], cfg)
    n_samples = trial.data.shape[1]
    meta = feature_store.read_attrs(path)
    assert meta["format"] == feature_store.FORMAT
    assert meta["checkpoint_hash"] == "tiny-0"
    assert meta["preprocess_config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert meta["fs"] == 2048.0 and meta["hidden_dim"] == 32 and meta["n_samples"] == n_samples
    assert meta["popt_jax_version"] and meta["subject"] == "sub_1"
    assert meta["trial"] == "trial000"
    assert meta["electrode_names"] == trial.names
    np.testing.assert_array_equal(meta["coords"], bt.localization(1).select(trial.names).lip)
    assert meta["regions"] == bt.localization(1).select(trial.names).regions

    e = len(trial.names)
    words = bt.words(1, 0)
    with h5py.File(path, "r") as f:
        assert set(f) == {"electrode_names", "coords", "positions", "regions", "pretrain",
                          "windows", "volume", "pitch", "sentence_onset", "word_onset"}
        # The continuous position code's input: the L/I/P columns, untruncated.
        np.testing.assert_array_equal(f["positions"][:], f["coords"][:])
        assert f.attrs["coord_frame"] == "BrainTreebank-LIP"
        pre = f["pretrain/starts"][:]
        np.testing.assert_array_equal(pre, pp.pretraining_window_starts(n_samples, cfg))
        assert f["pretrain/embeddings"].shape == (len(pre), e, 32)
        assert f["pretrain/embeddings"].dtype == np.float32
        win = f["windows/starts"][:]
        assert np.all(np.diff(win) > 0)
        assert f["windows/embeddings"].shape == (len(win), e, 32)
        for task in feature_store.FINETUNE_TASKS:
            ex = pp.make_task(task, words, n_samples, cfg)
            g = f[task]
            np.testing.assert_array_equal(g["starts"][:], ex.starts)
            np.testing.assert_array_equal(g["labels"][:], ex.labels.astype(np.int8))
            np.testing.assert_array_equal(win[g["index"][:]], ex.starts)
            np.testing.assert_array_equal(g["word_rows"][:], ex.word_rows)
            emb, labels, starts = feature_store.task_arrays(f, task)
            assert emb.shape == (len(ex), e, 32) and np.isfinite(emb).all()
            np.testing.assert_array_equal(labels, ex.labels)
        # The stored numbers are BrainBERT's on those windows (batch padding changes nothing).
        picks = [0, 5, len(pre) - 1]
        wav = pp.extract_windows(trial.data, pre[picks], cfg.window_samples).astype(np.float32)
        want = np.asarray(models.brainbert_embed(model, wav, chunk=None))
        np.testing.assert_allclose(f["pretrain/embeddings"][picks], want, rtol=1e-4, atol=1e-5)
        row = int(f["word_onset/index"][0])
        wav = pp.extract_windows(trial.data, win[[row]], cfg.window_samples).astype(np.float32)
        np.testing.assert_allclose(f["windows/embeddings"][[row]],
                                   np.asarray(models.brainbert_embed(model, wav, chunk=None)),
                                   rtol=1e-4, atol=1e-5)


def test_caps_float16_and_task_subset(tree, model, store, tmp_path):
    paths = features.extract_features(
        tree, tmp_path, checkpoint_hash="tiny-0", brainbert=model, selection=_selection(tree),
        tasks=("pretrain", "volume", "word_onset"), max_windows=10, storage_dtype="float16",
        batch_windows=4)
    with h5py.File(paths[0], "r") as f, h5py.File(store / paths[0].name, "r") as full:
        assert set(f) >= {"pretrain", "windows", "volume", "word_onset"}
        assert "pitch" not in f and "sentence_onset" not in f
        assert f["pretrain/embeddings"].dtype == np.float16
        np.testing.assert_array_equal(f["pretrain/starts"][:], full["pretrain/starts"][:10])
        np.testing.assert_allclose(f["pretrain/embeddings"][:].astype(np.float32),
                                   full["pretrain/embeddings"][:10], rtol=1e-2, atol=1e-2)
        for task in ("volume", "word_onset"):
            labels = f[task]["labels"][:]
            assert len(labels) == 10 and labels.sum() == 5  # class-balanced subset
            assert np.all(np.isin(f[task]["starts"][:], full[task]["starts"][:]))


def test_crash_leaves_no_file_and_rerun_completes(tree, model, tmp_path, monkeypatch):
    real = models.brainbert_embed
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("simulated crash mid-extraction")
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "brainbert_embed", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        features.extract_features(tree, tmp_path, checkpoint_hash="tiny-0", brainbert=model,
                                  selection=_selection(tree), tasks=("pretrain",),
                                  max_windows=12, batch_windows=4)
    assert calls["n"] == 2
    assert list(tmp_path.iterdir()) == []  # neither a .h5 nor a .h5.tmp
    monkeypatch.setattr(models, "brainbert_embed", real)
    paths = features.extract_features(tree, tmp_path, checkpoint_hash="tiny-0", brainbert=model,
                                      selection=_selection(tree), tasks=("pretrain",),
                                      max_windows=12, batch_windows=4)
    assert [p.name for p in tmp_path.iterdir()] == ["sub_1_trial000.h5"]
    assert feature_store.read_attrs(paths[0])["groups"] == {"pretrain": 12}


def test_stale_tmp_is_replaced(tree, model, tmp_path):
    (tmp_path / "sub_1_trial000.h5.tmp").write_bytes(b"half a file")
    features.extract_features(tree, tmp_path, checkpoint_hash="tiny-0", brainbert=model,
                              selection=_selection(tree), tasks=("pretrain",), max_windows=4,
                              batch_windows=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub_1_trial000.h5"]


def test_rerun_skips_finished_files(tree, model, store, monkeypatch):
    path = store / "sub_1_trial000.h5"
    before = path.stat().st_mtime_ns

    def never(*args, **kwargs):
        raise AssertionError("a finished file must not be recomputed")

    monkeypatch.setattr(models, "brainbert_embed", never)
    monkeypatch.setattr(features.pp, "preprocess_trial", never)
    paths = features.extract_features(tree, store, checkpoint_hash="tiny-0", brainbert=model,
                                      selection=_selection(tree), batch_windows=16)
    assert paths == [path] and path.stat().st_mtime_ns == before


@pytest.mark.parametrize("change, words", [
    ({"preprocess_cfg": pp.PreprocessConfig(zscore=True)}, "zscore"),
    ({"checkpoint_hash": "other"}, "checkpoint hash"),
    ({"max_windows": 3}, "max_windows"),
])
def test_mismatch_is_a_one_line_data_error(tree, model, store, change, words):
    kwargs = {"checkpoint_hash": "tiny-0", "brainbert": model, "selection": _selection(tree),
              "batch_windows": 16, **change}
    with pytest.raises(DataError) as err:
        features.extract_features(tree, store, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and "sub_1_trial000.h5" in msg and words in msg


def _snapshot(folder):
    """(name, bytes, mtime) of every file under ``folder``."""
    return sorted((str(p.relative_to(folder)), p.read_bytes(), p.stat().st_mtime_ns)
                  for p in Path(folder).rglob("*") if p.is_file())


def test_only_memory_settings_may_differ(tree, model, store):
    before = _snapshot(store)
    paths = features.extract_features(tree, store, checkpoint_hash="tiny-0", brainbert=model,
                                      selection=_selection(tree), batch_windows=3,
                                      preprocess_cfg=pp.PreprocessConfig(chunk=2))
    # Accepted as the same extraction: nothing recomputed, the store byte-identical.
    assert paths == [store / "sub_1_trial000.h5"]
    assert _snapshot(store) == before


def test_random_features_writer(tmp_path):
    path = features.write_random_features(tmp_path, 2, 1, n_electrodes=12, n_windows=30,
                                          n_task=20, hidden_dim=8)
    meta = feature_store.read_attrs(path)
    assert path.name == "sub_2_trial001.h5" and len(meta["electrode_names"]) == 12
    assert meta["groups"]["pretrain"] == 30 and meta["groups"]["volume"] == 20
    with h5py.File(path) as f:
        emb, labels, starts = feature_store.task_arrays(f, "word_onset")
        assert emb.shape == (20, 12, 8) and set(labels.tolist()) == {0, 1}


def test_not_a_feature_file(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.attrs["format"] = "something else"
    with pytest.raises(DataError, match="x.h5"):
        feature_store.read_attrs(tmp_path / "x.h5")


def test_job_end_to_end(tmp_path):
    config = _load_config("tiny")
    assert config.job == "extract_features"
    summary = features.extract_features_job(config, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == json.loads(json.dumps(summary))
    assert [Path(p).name for p in results["files"]] == ["sub_1_trial000.h5"]
    assert results["checkpoint_hash"].startswith("random-seed-0/")
    assert results["windows"]["pretrain"] == config.max_windows
    assert set(results["windows"]) == {"pretrain", "windows", "volume", "pitch",
                                       "sentence_onset", "word_onset"}
    assert results["computed_windows"] > 0 and results["windows_per_s"] > 0
    assert results["config"]["brainbert"]["hidden_dim"] == 32
    assert (tmp_path / "synthetic_braintreebank" / "synthetic_truth.json").exists()
    h5 = tmp_path / "synthetic_braintreebank/all_subject_data/sub_1_trial000.h5"
    before = h5.stat().st_mtime_ns
    again = features.extract_features_job(config, tmp_path)  # reuses the tree, skips the file
    assert again["skipped_files"] == 1 and again["computed_windows"] == 0
    assert h5.stat().st_mtime_ns == before


def test_base_config_fields():
    config = _load_config("extract_features")
    assert set(config.preprocess) == {f.name for f in dataclasses.fields(pp.PreprocessConfig)}
    assert features.preprocess_config_from(config.preprocess) == pp.PreprocessConfig()
    assert config.data.root == "" and config.brainbert_checkpoint == ""
    assert config.brainbert.hidden_dim < 768  # the built-in run stays small on a CPU
