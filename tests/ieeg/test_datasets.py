"""Task datasets over the feature store: example semantics, splits, batching, grain."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from popt_jax.ieeg import datasets as ds
from popt_jax.ieeg import extract as features
from popt_jax.ieeg import feature_store
from popt_jax.ieeg.braintreebank import DataError

WINDOW = 10240
# sklearn 1.5.2: train_test_split(range(n), test_size=v + t, random_state=42), then
# train_test_split(rest, test_size=t / (v + t), random_state=42) -> (train, val, test).
SKLEARN_REFERENCE = {
    (15, 0.1, 0.1): ([13, 5, 8, 2, 1, 14, 4, 7, 10, 12, 3, 6], [0], [9, 11]),
    (23, 0.1, 0.1): ([12, 1, 13, 5, 2, 11, 20, 3, 4, 18, 16, 21, 22, 7, 10, 14, 19, 6],
                     [15, 8], [9, 17, 0]),
    (40, 0.1, 0.1): ([39, 6, 25, 9, 13, 31, 34, 8, 17, 24, 0, 33, 5, 11, 1, 29, 21, 2, 30, 36,
                      3, 35, 23, 32, 10, 22, 18, 20, 7, 14, 28, 38], [15, 4, 26, 37],
                     [16, 12, 19, 27]),
    (7, 0.1, 0.1): ([5, 2, 4, 3, 6], [0], [1]),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two subjects of random features (D=8): sub_1 two trials, sub_2 one."""
    out = tmp_path_factory.mktemp("store")
    features.write_random_features(out, 1, 0, n_electrodes=30, n_windows=1500, n_task=200,
                                   hidden_dim=8, seed=0)
    features.write_random_features(out, 1, 1, n_electrodes=30, n_windows=1000, n_task=150,
                                   hidden_dim=8, seed=1)
    features.write_random_features(out, 2, 0, n_electrodes=130, n_windows=250, n_task=40,
                                   hidden_dim=8, seed=2)
    return out


def _fresh(store: Path, tmp_path: Path) -> Path:
    """A copy of the store without splits.json (split tests must not share one)."""
    import shutil

    dst = tmp_path / "store"
    shutil.copytree(store, dst, ignore=shutil.ignore_patterns("splits.json"))
    return dst


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("key", sorted(SKLEARN_REFERENCE))
def test_random_split_matches_sklearn(key):
    n, v, t = key
    got = ds.random_split(n, v, t, seed=42)
    assert (got["train"], got["val"], got["test"]) == SKLEARN_REFERENCE[key]


def test_random_split_is_80_10_10_and_reproducible():
    a, b = ds.random_split(1000, 0.1, 0.1), ds.random_split(1000, 0.1, 0.1)
    assert a == b
    assert [len(a[k]) for k in ("train", "val", "test")] == [800, 100, 100]
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(1000))
    assert ds.random_split(1000, 0.1, 0.1, seed=0) != a


def _assert_no_overlap(groups, starts, split, window=WINDOW):
    order = ("train", "val", "test")
    for i, lo in enumerate(order):
        for hi in order[i + 1:]:
            a, b = np.asarray(split[lo], int), np.asarray(split[hi], int)
            if len(a) and len(b):
                same = groups[a][:, None] == groups[b][None, :]
                gap = np.abs(starts[a][:, None] - starts[b][None, :])
                assert not np.any(same & (gap < window)), (lo, hi)


def test_time_blocked_split_has_no_leakage():
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2], [3000, 500, 40])
    starts = np.concatenate([np.arange(3000) * 409, np.sort(rng.integers(0, 3_000_000, 500)),
                             np.arange(40) * 409])
    split = ds.time_blocked_split(groups, starts, WINDOW, 0.1, 0.1, n_blocks=5)
    _assert_no_overlap(groups, starts, split)
    n = {k: len(v) for k, v in split.items()}
    total = len(starts)
    assert n["train"] > 0.6 * total and n["val"] > 0.05 * total and n["test"] > 0.08 * total
    assert len(set(split["train"]) | set(split["val"]) | set(split["test"])) == sum(n.values())
    # 600 s get 5 blocks: test windows are spread over the recording, not at one end.
    test0 = starts[[i for i in split["test"] if groups[i] == 0]]
    assert len(np.unique(test0 // (3000 * 409 // 5))) == 5


def test_finetune_splits_saved_reused_and_checked(store, tmp_path):
    d = _fresh(store, tmp_path)
    sf = tmp_path / "run" / "splits.json"  # a run product: the store is only read
    before = sorted(p.name for p in d.iterdir())
    sizes = {sp: len(ds.FinetuneSource(d, "volume", 1, sp, split_mode="random", split_file=sf))
             for sp in ("train", "val", "test")}
    assert sizes == {"train": 280, "val": 35, "test": 35}  # 350 examples: 80/10/10
    saved = json.loads(sf.read_text())
    entry = saved["volume/sub_1:random"]
    assert entry["train"] == ds.random_split(350, 0.1, 0.1)["train"]
    # A hand-edited saved split is what a later run uses (reuse, not recompute).
    entry["test"], entry["train"] = entry["train"][:3], entry["train"][3:] + entry["test"]
    sf.write_text(json.dumps(saved))
    assert len(ds.FinetuneSource(d, "volume", 1, "test", split_mode="random",
                                 split_file=sf)) == 3
    with pytest.raises(DataError, match="splits.json"):
        ds.FinetuneSource(d, "volume", 1, "test", split_mode="random", test_frac=0.2,
                          split_file=sf)
    tb = {sp: ds.FinetuneSource(d, "word_onset", 1, sp, split_file=sf)
          for sp in ("train", "val", "test")}
    assert all(len(s) for s in tb.values())
    groups = np.concatenate([np.zeros(200, int), np.ones(150, int)])
    starts = np.full(350, -10**9)
    for s in tb.values():
        starts[s.example_ids] = s.starts
    _assert_no_overlap(groups, starts, {k: v.example_ids for k, v in tb.items()})
    assert "word_onset/sub_1:time_blocked" in json.loads(sf.read_text())
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written into the store


def test_pretrain_splits(store, tmp_path):
    d = _fresh(store, tmp_path)
    rnd = {sp: ds.PretrainSource(d, sp, ds.PretrainConfig(split_mode="random"))
           for sp in ("train", "val", "test")}
    n = 1499 + 999 + 249  # one example per window but the last of each recording
    assert sum(len(s) for s in rnd.values()) == n
    n_rest = math.ceil(0.11 * n)  # sklearn: ceil(test_size * n), twice
    assert len(rnd["test"]) == math.ceil(0.1 / 0.11 * n_rest)
    assert len(rnd["val"]) == n_rest - len(rnd["test"])
    tb = {sp: ds.PretrainSource(d, sp) for sp in ("train", "val", "test")}
    assert ds.PretrainConfig().split_mode == "time_blocked"
    assert len(tb["train"]) > 0.6 * n and len(tb["test"]) > 0.05 * n and len(tb["val"])
    touched = {}  # every window an example reads (A, B and R), as (file, start)
    for sp, src in tb.items():
        rows = []
        for i in range(len(src)):
            f, a = int(src._file[i]), int(src._win[i])
            b, r, _ = src.pair(i)
            rows += [(f, a * 409), (f, b * 409), (f, r * 409)]
        touched[sp] = np.asarray(rows)
    for lo, hi in (("train", "val"), ("train", "test"), ("val", "test")):
        x, y = touched[lo], touched[hi]
        same = x[:, None, 0] == y[None, :, 0]
        assert not np.any(same & (np.abs(x[:, None, 1] - y[None, :, 1]) < WINDOW)), (lo, hi)


# --------------------------------------------------------------------------- pretraining


def _marked(e: int, d: int = 4):
    """Segments whose rows say which segment (0 A, 1 B, 2 R) and electrode they hold."""
    seg = [np.zeros((e, d), np.float32) for _ in range(3)]
    for k, x in enumerate(seg):
        x[:, 0], x[:, 1] = k, np.arange(e)
    coords = np.stack([np.arange(e) + 0.7, -np.arange(e) - 0.7, np.full(e, 3.2)], 1)
    return seg, coords


def test_pretrain_example_semantics():
    e, p = 60, 0.1
    (a, b, r), coords = _marked(e)
    cfg = ds.PretrainConfig(replace_p=p)
    rng = np.random.default_rng(0)
    counts = np.zeros(3)
    ks, self_swaps = [], 0
    for _ in range(3000):
        ex = ds.make_pretrain_example(a, b, r, coords, 1, rng, cfg)
        x, lab, seq, rows = ex["x"], ex["token_label"], ex["seq_id"], ex["electrodes"]
        k = len(x)
        ks.append(k)
        half = k // 2
        assert np.all(seq == np.r_[np.zeros(half), np.ones(k - half)])
        assert np.all(np.diff(rows[:half]) > 0) and np.all(np.diff(rows[half:]) > 0)
        assert len(set(rows.tolist())) == k  # halves are disjoint
        assert int(ex["cls_label"]) == 1
        source = x[:, 0].astype(int)
        assert np.all(source[lab == 1] == 2)  # replaced tokens come from R ...
        assert np.all(source[lab != 1] == seq[lab != 1])  # ... the others from A / B
        assert np.all(x[lab != 1, 1] == rows[lab != 1])  # unreplaced rows: own electrode
        self_swaps += int(np.sum(x[lab == 1, 1] == rows[lab == 1]))
        # Coordinates are the original electrode's, truncated toward zero, even if replaced.
        np.testing.assert_array_equal(ex["coords"], np.trunc(coords[rows]).astype(np.int32))
        counts += np.bincount(lab, minlength=3)
    frac = counts / counts.sum()
    assert frac[1] == pytest.approx(p / 2, abs=0.006)
    assert frac[2] == pytest.approx(p / 2 * (1 - p / 2), abs=0.006)
    assert set(ks) == {10, 20, 30, 40, 50, 60}  # k capped at the electrode count
    assert ks.count(60) == pytest.approx(3000 * 5 / 10, rel=0.1)  # 60..100 all cap to 60
    assert self_swaps < 0.05 * counts[1]  # R is permuted: mostly another electrode
    ex = ds.make_pretrain_example(a, b, r, coords, 0, np.random.default_rng(1), cfg)
    assert ex["coords"].dtype == np.int32 and ex["coords"][:, 1].max() <= 0


def test_coordinate_jitter():
    (a, b, r), coords = _marked(40)
    coords = coords * 0 + 100.0
    cfg = ds.PretrainConfig(coord_jitter=5.0)
    got = np.concatenate([ds.make_pretrain_example(a, b, r, coords, 0,
                                                   np.random.default_rng(i), cfg)["coords"]
                          for i in range(300)])
    assert got.std() == pytest.approx(5.0, rel=0.1) and abs(got.mean() - 100) < 0.5


def test_pretrain_source_pairs_and_determinism(store):
    src = ds.PretrainSource(store, "train", ds.PretrainConfig(split_mode="random"))
    labels = []
    for i in range(len(src)):
        b, r, label = src.pair(i)
        labels.append(label)
        if label == 0:
            assert b == src._win[i] + 1
        assert src.pair(i) == (b, r, label)  # fixed per example
    assert np.mean(labels) == pytest.approx(0.5, abs=0.06)
    rec = src[3]
    assert rec["a"].shape == (30, 8) and rec["pair_label"] == labels[3]

    for split in ("val", "test"):
        ev = ds.PretrainSource(store, split, ds.PretrainConfig(split_mode="random"))
        one = [ev.deterministic_example(ev[i]) for i in range(len(ev))]
        two = [ev.deterministic_example(ev[i]) for i in reversed(range(len(ev)))][::-1]
        for x, y in zip(one, two, strict=True):
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
        assert len({len(x["x"]) for x in one}) > 1  # but examples differ from each other
        passes = [list(ds.make_dataset(ev, batch_size=8, train=False)) for _ in range(2)]
        assert len(passes[0]) == -(-len(ev) // 8)
        for p, q in zip(*passes, strict=True):
            for key in p:
                np.testing.assert_array_equal(p[key], q[key])
        last = passes[0][-1]
        assert last["valid"].sum() == len(ev) - 8 * (len(passes[0]) - 1)


def test_train_stream_reproducible_and_sharded(store):
    src = ds.PretrainSource(store, "train", ds.PretrainConfig(split_mode="random"))
    pickle.loads(pickle.dumps(src))  # grain workers receive the source pickled

    def first(n, **kw):
        it = iter(ds.make_dataset(src, batch_size=4, train=True, **kw))
        return [next(it) for _ in range(n)]

    a, b, c = first(3, seed=7), first(3, seed=7), first(3, seed=8)
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c, strict=True))
    for batch in a:
        assert batch["x"].shape[1] in ds.DEFAULT_BUCKETS and batch["valid"].all()
        assert set(np.unique(batch["token_label"][batch["pad_mask"]])) <= {0}
    whole = np.concatenate([x["index"] for x in first(4, seed=3)])  # 16 examples
    shards = [np.concatenate([x["index"] for x in first(2, seed=3, shard_index=k,
                                                         shard_count=2)]) for k in (0, 1)]
    np.testing.assert_array_equal(shards[0], whole[0::2][:8])
    np.testing.assert_array_equal(shards[1], whole[1::2][:8])


def test_iterator_state_resumes_the_stream(store):
    src = ds.PretrainSource(store, "train", ds.PretrainConfig(split_mode="random"))
    it = iter(ds.make_dataset(src, batch_size=4, train=True, seed=1))
    for _ in range(3):
        next(it)
    state = it.get_state()  # what a checkpoint stores beside the model
    want = next(it)
    resumed = iter(ds.make_dataset(src, batch_size=4, train=True, seed=1))
    resumed.set_state(state)
    got = next(resumed)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


# --------------------------------------------------------------------------- fine-tuning


def test_finetune_examples_and_selection(store):
    src = ds.FinetuneSource(store, "sentence_onset", 2, "train", split_mode="random")
    ex = src[0]
    assert ex["x"].shape == (130, 8) and ex["coords"].dtype == np.int32
    assert ex["label"] in (0, 1) and not ex["seq_id"].any()
    meta = feature_store.read_attrs(Path(store) / "sub_2_trial000.h5")
    names = meta["electrode_names"]
    wanted = [names[7], names[2], names[40]]  # given out of order
    sel = ds.FinetuneSource(store, "sentence_onset", 2, "train", split_mode="random",
                            selection={"sub_2": wanted})
    sub = sel[0]
    np.testing.assert_array_equal(sub["x"], ex["x"][[2, 7, 40]])  # stored order kept
    np.testing.assert_array_equal(sub["coords"], np.trunc(meta["coords"][[2, 7, 40]]))
    with pytest.raises(DataError, match="NOPE1"):
        ds.FinetuneSource(store, "sentence_onset", 2, "train", selection={"sub_2": ["NOPE1"]})
    batches = list(ds.make_dataset(sel, batch_size=16, train=False))
    assert batches[0]["x"].shape == (16, 16, 8) and batches[0]["label"].shape == (16,)
    big = next(iter(ds.make_dataset(src, batch_size=4, train=True)))
    assert big["x"].shape == (4, 256, 8)  # 130 tokens -> next multiple of the top bucket
    assert big["pad_mask"][:, 130:].all() and not big["pad_mask"][:, :130].any()


# --------------------------------------------------------------------------- batching


def test_bucket_padding_and_masks():
    assert [ds.bucket_length(n) for n in (1, 16, 17, 64, 65, 128, 129, 300)] == \
        [16, 16, 32, 64, 128, 128, 256, 384]
    assert ds.bucket_length(9, (8, 24)) == 24
    rng = np.random.default_rng(0)
    exs = [{"x": rng.standard_normal((n, 3)).astype(np.float32),
            "coords": np.full((n, 3), 7, np.int32), "seq_id": np.ones(n, np.int32),
            "token_label": np.full(n, 2, np.int32), "cls_label": np.int32(1),
            "index": np.int64(i)} for i, n in enumerate((5, 17))]
    batch = ds.collate(exs, batch_size=3)
    assert batch["x"].shape == (3, 32, 3) and batch["coords"].shape == (3, 32, 3)
    assert batch["pad_mask"].dtype == bool
    np.testing.assert_array_equal(batch["pad_mask"].sum(1), [27, 15, 32])
    np.testing.assert_array_equal(batch["valid"], [True, True, False])
    np.testing.assert_array_equal(batch["x"][1, :17], exs[1]["x"])
    assert not batch["x"][0, 5:].any() and not batch["token_label"][batch["pad_mask"]].any()
    assert not batch["coords"][batch["pad_mask"]].any()
    np.testing.assert_array_equal(batch["cls_label"], [1, 1, 0])


def test_feature_norm_file(tmp_path):
    """feature_norm="file": every dimension of a file's pretraining embeddings has mean 0 and
    std 1; fine-tuning examples of the file use the same statistics; "none" reads as stored."""
    path = features.write_random_features(tmp_path, 1, 0, n_electrodes=6, n_windows=40,
                                          n_task=20, hidden_dim=5)
    import h5py

    with h5py.File(path, "r") as f:
        stored = f["pretrain/embeddings"][:].astype(np.float64) * 3.0 + 7.0
        task = f["windows/embeddings"][:].astype(np.float64) * 3.0 + 7.0
    with h5py.File(path, "r+") as f:  # an offset and a scale the normalisation must undo
        f["pretrain/embeddings"][:] = stored
        f["windows/embeddings"][:] = task
    mean, inv = ds.feature_norm_stats(path, "file")
    np.testing.assert_allclose(mean, stored.reshape(-1, 5).mean(0), rtol=1e-5)
    np.testing.assert_allclose(inv, 1.0 / stored.reshape(-1, 5).std(0), rtol=1e-5)
    assert ds.feature_norm_stats(path, "none") is None
    with pytest.raises(ValueError, match="feature_norm"):
        ds.feature_norm_stats(path, "zscore")
    cfg = ds.PretrainConfig(split_mode="random", val_frac=0.1, test_frac=0.1,
                            feature_norm="file")
    src = ds.PretrainSource(tmp_path, "train", cfg)
    rec = src[0]
    w = int(src._win[0])
    np.testing.assert_allclose(rec["a"], (stored[w] - mean) * inv, rtol=1e-5, atol=1e-5)
    raw = ds.PretrainSource(tmp_path, "train", ds.PretrainConfig(
        split_mode="random", val_frac=0.1, test_frac=0.1))[0]
    np.testing.assert_allclose(raw["a"], stored[w], rtol=1e-6)
    ft = ds.FinetuneSource(tmp_path, "volume", 1, "train", split_mode="random",
                           feature_norm="file")
    row = int(ft._row[0])
    np.testing.assert_allclose(ft[0]["x"], (task[row] - mean) * inv, rtol=1e-5, atol=1e-5)
