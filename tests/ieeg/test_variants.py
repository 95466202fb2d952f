"""Fine-tuning variants: frozen body, few-shot, index position code, pos / rms_reg tasks,
regression metrics, several subjects at once (one tiny end-to-end run on random features)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from popt_jax.ieeg import datasets as ds
from popt_jax.ieeg import extract, objectives, optim, train, variants
from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg.braintreebank import Words
from popt_jax.ieeg.popt import INDEX, SPATIAL, PopT, PopTClassifier, PopTConfig

ROOT = Path(__file__).resolve().parents[2]


def _finetune_config():
    spec = importlib.util.spec_from_file_location("cfg_finetune", ROOT / "configs/finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# ------------------------------------------------------------------------------- few-shot


def test_few_shot_rows_are_deterministic_and_stratified():
    labels = np.array([0] * 60 + [1] * 20)
    rows = variants.few_shot_rows(labels, 20, seed=3)
    assert len(rows) == 20 and len(set(rows.tolist())) == 20
    assert np.all(np.diff(rows) > 0)
    assert (labels[rows] == 1).sum() == 5  # the 3:1 class ratio kept
    np.testing.assert_array_equal(rows, variants.few_shot_rows(labels, 20, seed=3))
    assert not np.array_equal(rows, variants.few_shot_rows(labels, 20, seed=4))
    # Tiny caps keep one example of each class; a cap above the size keeps everything.
    assert set(labels[variants.few_shot_rows(labels, 2, 0)].tolist()) == {0, 1}
    np.testing.assert_array_equal(variants.few_shot_rows(labels, 500, 0), np.arange(80))
    reg = variants.few_shot_rows(np.linspace(0, 1, 30), 7, 0)
    assert len(reg) == 7 and len(set(reg.tolist())) == 7


# ------------------------------------------------------------------------------- frozen body


def _classifier_params():
    cfg = PopTConfig(input_dim=8, hidden_dim=8, n_heads=2, ff_dim=16, n_layers=1)
    model = PopTClassifier(cfg, rngs=nnx.Rngs(0))
    return nnx.state(model, nnx.Param)


def _opt_config(frozen: bool):
    cfg = _finetune_config()
    cfg.frozen_upstream = frozen
    cfg.grad_clip = 0.5
    return cfg


def test_frozen_body_does_not_move_and_is_left_out_of_clipping():
    params = _classifier_params()
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    grads = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in
                                         zip(keys, leaves, strict=True)])
    is_head = jax.tree_util.tree_map_with_path(lambda p, _: optim.param_group(p) == "head",
                                               params)
    def second_update(tx, g):  # the ramp-up schedule's first step has lr 0
        state = tx.init(params)
        _, state = tx.update(g, state, params)
        return tx.update(g, state, params)[0]

    updates = jax.jit(second_update, static_argnums=0)(
        variants.make_optimizer(_opt_config(True)), grads)
    # Reference: upstream's requires_grad=False body has no gradient at all, so the clipping
    # norm is the head's alone and AdamW (weight decay included) never touches the body.
    head_only = jax.tree.map(lambda g, h: g if h else jnp.zeros_like(g), grads, is_head)
    ref = jax.jit(second_update, static_argnums=0)(optim.make_optimizer(_opt_config(False)),
                                                   head_only)
    n_body = 0
    for u, r, h in zip(jax.tree.leaves(updates), jax.tree.leaves(ref), jax.tree.leaves(is_head),
                       strict=True):
        if h:
            np.testing.assert_allclose(u, r, rtol=1e-6, atol=1e-9)
            assert np.abs(u).max() > 0
        else:
            n_body += 1
            assert np.all(np.asarray(u) == 0)
    assert n_body > 10
    # Zeroing the body's gradients alone would not do: AdamW's weight decay still moves it.
    assert any(np.abs(r).max() > 0 for r, h in zip(jax.tree.leaves(ref),
                                                   jax.tree.leaves(is_head), strict=True)
               if not h)


# ------------------------------------------------------------------------------- position code


def _torch_style_index_table(max_len: int, d: int) -> np.ndarray:
    """Upstream `PositionalEncoding`'s table, written out (float32 as torch)."""
    pos = np.arange(max_len, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, d, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / d))
    pe = np.zeros((max_len, d), np.float32)
    pe[:, 0::2] = np.sin(pos * div)
    pe[:, 1::2] = np.cos(pos * div)
    return pe


def test_index_code_is_the_token_index_and_ignores_coordinates():
    cfg = PopTConfig(input_dim=8, hidden_dim=8, n_heads=2, ff_dim=16, n_layers=1, max_len=64,
                     position_encoding=INDEX)
    model = PopT(cfg, rngs=nnx.Rngs(0))
    coords = jnp.asarray(np.random.default_rng(0).integers(0, 60, (2, 5, 3)), jnp.int32)
    codes = model.input_encoding.positional_encoding(coords, jnp.zeros((2, 5), jnp.int32))
    want = _torch_style_index_table(64, 8)[:6]
    np.testing.assert_allclose(codes[0], want, atol=1e-6)
    np.testing.assert_allclose(codes[1], want, atol=1e-6)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 8)), jnp.float32)
    out = model(x, None, coords).hidden
    np.testing.assert_allclose(out, model(x, None, coords[:, ::-1] + 1).hidden, atol=1e-6)
    spatial = PopT(PopTConfig(input_dim=8, hidden_dim=8, n_heads=2, ff_dim=16, n_layers=1,
                              max_len=64), rngs=nnx.Rngs(0))
    assert not np.allclose(spatial(x, None, coords).hidden,
                           spatial(x, None, coords[:, ::-1] + 1).hidden, atol=1e-4)


def test_upstream_config_names_of_the_position_code():
    assert PopTConfig.from_upstream({}).position_encoding == SPATIAL
    assert PopTConfig.from_upstream({"position_encoding": "default"}).position_encoding == INDEX
    cfg = PopTConfig(position_encoding=INDEX)
    assert PopTConfig.from_upstream(cfg.to_upstream()) == cfg
    with pytest.raises(ValueError, match="position_encoding"):
        PopT(PopTConfig(input_dim=8, hidden_dim=8, n_heads=2, ff_dim=16, n_layers=1,
                        position_encoding="xyz"), rngs=nnx.Rngs(0))


# ------------------------------------------------------------------------------- tasks


def _words():
    fs = 2048.0
    n = 8
    cols = {
        "text": np.array([f"w{i}" for i in range(n)]),
        "start": np.arange(n, dtype=np.float64),
        "end": np.arange(n, dtype=np.float64) + 0.5,
        "is_onset": np.zeros(n, bool),
        "est_idx": (np.arange(n) * 2.0 + 10.0) * fs,
        "est_end_idx": (np.arange(n) * 2.0 + 10.5) * fs,
        "pos": np.array(["NOUN", "VERB", "DET", "NOUN", "VERB", "PRON", "NOUN", "VERB"]),
        "rms": np.array([0.3, 0.1, 0.9, np.nan, 0.5, 0.2, 0.7, 0.4]),
    }
    return Words(cols), int(60 * fs)


def test_pos_task_is_nouns_then_verbs():
    words, n_samples = _words()
    ex = pp.make_task("pos", words, n_samples)
    np.testing.assert_array_equal(ex.word_rows, [0, 3, 6, 1, 4, 7])
    np.testing.assert_array_equal(ex.labels, [False, False, False, True, True, True])
    np.testing.assert_array_equal(ex.starts, pp.word_window_starts(words.est_idx[ex.word_rows]))


def test_rms_reg_task_keeps_raw_values_of_every_word():
    words, n_samples = _words()
    ex = pp.make_task("rms_reg", words, n_samples)
    np.testing.assert_array_equal(ex.word_rows, [0, 1, 2, 4, 5, 6, 7])  # NaN volume dropped
    np.testing.assert_allclose(ex.labels, [0.3, 0.1, 0.9, 0.5, 0.2, 0.7, 0.4])
    table = extract._task_table(ex, np.arange(len(ex)))
    assert table["labels"].dtype == np.float32
    assert extract._task_table(pp.make_task("pos", words, n_samples),
                               np.arange(6))["labels"].dtype == np.int8


def test_regression_loss_and_metrics_by_hand():
    out = jnp.asarray([[1.0], [2.0], [4.0], [0.0]])
    batch = {"label": jnp.asarray([1.5, 2.0, 3.0, 9.0]), "weight": jnp.asarray([1, 1, 1, 0.0])}
    loss, outs = objectives.regression_loss(out, batch)
    assert float(loss) == pytest.approx((0.25 + 0 + 1) / 3)
    m = variants.regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0])
    assert m["mse"] == pytest.approx(0.25)
    assert m["r2"] == pytest.approx(1 - 1 / 5)
    assert m["pearson_r"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 2, 3, 5])[0, 1])
    preds = variants.RegressionPredictions.from_model_output(
        logits=np.array([1.0, 2.0, 3.0, 7.0]), labels=np.array([1.0, 2.0, 3.5, 0.0]),
        mask=np.array([True, True, True, False]), ids=np.arange(4)).compute()
    assert preds["r2"] == pytest.approx(
        variants.regression_metrics([1.0, 2.0, 3.5], [1.0, 2.0, 3.0])["r2"])
    np.testing.assert_array_equal(preds["ids"], [0, 1, 2])


# ------------------------------------------------------------------------------- several subjects


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Random features of two subjects, with an rms_reg group (float labels) added."""
    out = tmp_path_factory.mktemp("variants") / "features"
    for s, n_e in ((1, 6), (2, 5)):
        path = extract.write_random_features(out, s, 0, n_electrodes=n_e, n_windows=0,
                                             n_task=60, hidden_dim=16, seed=s)
        with h5py.File(path, "a") as f:
            g = f.create_group("rms_reg")
            for key in ("index", "starts", "word_rows", "times"):
                g.create_dataset(key, data=f["volume"][key][:])
            g.create_dataset("labels", data=np.random.default_rng(s).normal(
                5.0, 2.0, 60).astype(np.float32))
    return out


def test_several_subjects_and_few_shot_sources(store):
    cfg = _finetune_config()
    cfg.task = "volume"
    cfg.data.split = "random"
    cfg.data.subject = "sub_1, sub_2"
    both = variants.finetune_sources(cfg, store)
    singles = {}
    for s in ("sub_1", "sub_2"):
        cfg.data.subject = s
        singles[s] = variants.finetune_sources(cfg, store)
    for name in ("train", "val", "test"):
        a, b = singles["sub_1"][name], singles["sub_2"][name]
        assert len(both[name]) == len(a) + len(b)
        np.testing.assert_array_equal(
            both[name].example_ids,
            np.concatenate([a.example_ids, b.example_ids + variants.SUBJECT_ID_STRIDE]))
        last = both[name][len(both[name]) - 1]
        np.testing.assert_array_equal(last["x"], b[len(b) - 1]["x"])
        assert last["x"].shape[0] == 5 and both[name][0]["x"].shape[0] == 6
    cfg.data.subject = "sub_1,sub_2"
    cfg.data.max_train_examples = 10
    few = variants.finetune_sources(cfg, store)
    assert len(few["train"]) == 10 and len(few["test"]) == len(both["test"])
    assert set(few["train"].example_ids) <= set(both["train"].example_ids)


def test_rms_reg_labels_are_zscored_per_subject(store):
    parts = [ds.FinetuneSource(store, "rms_reg", "sub_1", split, split_mode="random")
             for split in ("train", "val", "test")]
    labels = np.concatenate([p.labels for p in parts])
    assert labels.dtype == np.float32 and len(labels) == 60
    assert abs(labels.mean()) < 1e-5 and labels.std() == pytest.approx(1.0, abs=1e-5)


def test_regression_run_on_two_subjects_from_random_init(store, tmp_path):
    cfg = _finetune_config()
    cfg.features_dir = str(store)
    cfg.task = "rms_reg"
    cfg.random_init = True
    cfg.position_encoding = INDEX
    cfg.data.subject = "sub_1,sub_2"
    cfg.data.split = "random"
    cfg.data.max_train_examples = 40
    cfg.data.buckets = (16,)
    cfg.model.hidden_dim, cfg.model.n_heads, cfg.model.ff_dim, cfg.model.n_layers = 8, 1, 16, 1
    cfg.total_steps, cfg.batch_size, cfg.eval_batch_size = 2, 8, 32
    cfg.log_every = cfg.eval_every = 2
    res = train.finetune_job(cfg, tmp_path / "run")
    assert res["task"] == objectives.REGRESSION
    assert res["model"]["position_encoding"] == INDEX
    assert res["n_examples"]["train"] == 40
    assert {"pearson_r", "r2", "loss"} <= set(res["test"]) and "roc_auc" not in res["test"]
    ids = np.asarray(res["example_ids"])
    assert (ids >= variants.SUBJECT_ID_STRIDE).any() and (ids < variants.SUBJECT_ID_STRIDE).any()
    labels, preds = np.asarray(res["labels"]), np.asarray(res["predictions"])
    assert labels.dtype.kind == "f" and len(labels) == res["n_examples"]["test"]
    want = variants.regression_metrics(labels, preds)
    assert res["test"]["r2"] == pytest.approx(want["r2"])
    assert res["test"]["loss"] == pytest.approx(want["mse"], rel=1e-5)
