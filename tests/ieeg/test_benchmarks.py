"""The speed work of issue 15: benchmarks cannot rot, the fused attention path agrees with
the einsum path, and length-grouped batches hold the same examples as the plain stream.

Each `scripts/benchmark_*.py` owned here runs in its `--tiny` mode (in this process, so this
checkout's package is the one measured) and must print its `ratio vs reference` lines.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from popt_jax.ieeg import brainbert, datasets, extract, layers

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _run_script(name: str, capsys, *args: str) -> str:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--tiny", *args])
    return capsys.readouterr().out


def _ratios(out: str) -> dict[str, float]:
    found = re.findall(r"ratio vs reference: (.+?): ([0-9.]+)x", out)
    return {name: float(v) for name, v in found}


def test_benchmark_features_tiny(capsys):
    out = _run_script("benchmark_features", capsys)
    ratios = _ratios(out)
    assert set(ratios) == {"extraction float32", "STFT front end"}, out
    assert all(v > 0 for v in ratios.values())
    diff = float(re.search(r"max \|popt_jax - torch\| over the embeddings: (\S+)", out)[1])
    assert diff <= 1e-5  # same weights, same windows: the same embeddings


def test_benchmark_train_tiny(capsys):
    out = _run_script("benchmark_train", capsys)
    ratios = _ratios(out)
    assert set(ratios) == {"jax float32 default loader", "jax float32 grouped loader"}, out
    assert all(v > 0 for v in ratios.values())


def test_benchmark_data_tiny(capsys):
    out = _run_script("benchmark_data", capsys)
    assert len(_ratios(out)) == 1, out


def test_benchmark_gpu_tiny(capsys):
    out = _run_script("benchmark_gpu", capsys)
    summary = out[out.index("summary"):]
    for row in ("extraction float32", "PopT step float32 full 101"):
        line = next(s for s in summary.splitlines() if s.startswith(row))
        assert "failed" not in line and "skipped" not in line, line
    assert "fused vs einsum attention (float32): max |diff|" in out


def test_peak_table_and_flops():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPTS / "benchmark_gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)

    class Dev:
        device_kind = "NVIDIA H200"

    assert gpu.peak_flops(Dev(), "bfloat16") == 989e12
    assert gpu.peak_flops(jax.devices("cpu")[0], "float32") is None
    # One token, one layer, no attention partner: 3 x 2 x (in*d + 4 d^2 + 2 d ff).
    assert gpu.popt_step_flops(np.array([1]), 3, 2, 5, 1) == 3 * (2 * (6 + 16 + 20) + 4 * 2)


# ------------------------------------------------------------------------- attention paths


def test_fused_attention_matches_einsum():
    mha = layers.MultiHeadAttention(32, 4, 0.1, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 7, 32)), jnp.float32)
    pad = jnp.asarray(np.arange(7)[None] >= np.array([[7], [4], [1]]))
    want, weights = mha(x, pad, deterministic=True)
    assert weights is not None
    layers.set_attention(mha, "xla")
    got, none = mha(x, pad, deterministic=True)
    assert none is None
    np.testing.assert_allclose(got, want, atol=1e-5)
    # With dropout active the einsum path (which drops attention weights) is kept.
    _, dropped = mha(x, pad, deterministic=False)
    assert dropped is not None
    with pytest.raises(ValueError, match="attention"):
        layers.set_attention(mha, "flash")


def test_brainbert_embed_attention_paths_agree():
    cfg = brainbert.BrainBERTConfig(hidden_dim=32, n_heads=4, ff_dim=64, n_layers=2)
    model = brainbert.BrainBERT(cfg, rngs=nnx.Rngs(1))
    wav = np.random.default_rng(2).standard_normal((2, 3, 10240)).astype(np.float32)
    a = brainbert.brainbert_embed(model, wav, chunk=None, attention="einsum")
    b = brainbert.brainbert_embed(model, wav, chunk=None, attention="xla")
    np.testing.assert_allclose(a, b, atol=1e-5)
    # ... and both equal the plain full-sequence model, pooled (every frame computed).
    spec = jax.vmap(lambda w: brainbert.signal_lib.brainbert_spectrogram(w))(jnp.asarray(wav))
    full = brainbert.center_pool(model(spec.reshape(6, *spec.shape[-2:]), deterministic=True))
    np.testing.assert_allclose(np.asarray(a).reshape(6, -1), full, atol=1e-5)


def test_pooled_last_layer_regrouping_is_exact():
    """The pooled path regroups the last layer's key/value projections onto the 10 centre
    queries and drops the key bias (the softmax cancels it): with every parameter random
    (biases included) it equals the full model's centre pool, in float32."""
    cfg = brainbert.BrainBERTConfig(hidden_dim=48, n_heads=4, ff_dim=96, n_layers=2)
    model = brainbert.BrainBERT(cfg, rngs=nnx.Rngs(3))
    graphdef, state = nnx.split(model)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
              if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim <= 2 and x.shape[0] < 1000
              else x for x, k in zip(leaves, keys, strict=True)]
    model = nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))
    assert float(jnp.abs(model.transformer.layers[-1].self_attn.key.bias.value).min()) > 0
    spec = jax.random.normal(jax.random.key(5), (3, 186, 40))
    full = brainbert.center_pool(model(spec, deterministic=True))
    pooled = brainbert.pooled_embedding(model, spec)
    np.testing.assert_allclose(pooled, full, atol=1e-5, rtol=0)
    # chunk "auto" resolves per backend and gives the same embeddings as one step
    wav = np.random.default_rng(6).standard_normal((2, 3, 10240)).astype(np.float32)
    np.testing.assert_allclose(brainbert.brainbert_embed(model, wav, chunk="auto"),
                               brainbert.brainbert_embed(model, wav, chunk=None), atol=1e-5)


# ------------------------------------------------------------------------- length grouping


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("grouping")
    extract.write_random_features(root, n_electrodes=100, n_windows=120, hidden_dim=4,
                                  n_task=4)
    return datasets.PretrainSource(root, "train",
                                   datasets.PretrainConfig(split_mode="random", val_frac=0.1))


def _take(src, n, **kw):
    it = iter(datasets.make_dataset(src, batch_size=4, train=True, seed=5, **kw))
    return [next(it) for _ in range(n)]


def _examples(batches):
    out = {}
    for b in batches:
        for j, i in enumerate(b["index"]):
            n = int((~b["pad_mask"][j]).sum())
            out.setdefault(int(i), []).append((n, b["x"][j, :n].tobytes()))
    return out


def test_length_grouping_keeps_the_examples(source):
    plain = _take(source, 8)
    grouped = _take(source, 8, group_by_length=4, buckets=datasets.PRETRAIN_BUCKETS)
    for w in (0, 4):  # each window of 4 batches holds the very same examples
        assert _examples(plain[w:w + 4]) == _examples(grouped[w:w + 4])
    pad = np.mean([b["pad_mask"].mean() for b in grouped])
    assert pad < np.mean([b["pad_mask"].mean() for b in plain])
    for b in grouped:  # every batch pads to its own longest example's bucket
        longest = int((~b["pad_mask"]).sum(axis=1).max())
        assert b["x"].shape[1] == datasets.bucket_length(longest, datasets.PRETRAIN_BUCKETS)
    again = _take(source, 8, group_by_length=4, buckets=datasets.PRETRAIN_BUCKETS)
    for a, b in zip(grouped, again, strict=True):  # deterministic
        np.testing.assert_array_equal(a["x"], b["x"])


def test_length_grouping_shards_split_one_global_batch(source):
    one = _take(source, 4, group_by_length=2)
    kw = dict(group_by_length=2, shard_count=2)
    s0 = iter(datasets.make_dataset(source, batch_size=2, train=True, seed=5, shard_index=0,
                                    **kw))
    s1 = iter(datasets.make_dataset(source, batch_size=2, train=True, seed=5, shard_index=1,
                                    **kw))
    for b in one:
        a, c = next(s0), next(s1)
        assert a["x"].shape[1] == c["x"].shape[1]  # both shards pad to the same length
        assert sorted(np.concatenate([a["index"], c["index"]]).tolist()) == sorted(
            b["index"].tolist())


def test_length_grouping_resumes_from_iterator_state(source):
    ds = datasets.make_dataset(source, batch_size=4, train=True, seed=5, group_by_length=2)
    it = iter(ds)
    next(it)
    state = it.get_state()
    want = [next(it)["index"] for _ in range(3)]
    it2 = iter(ds)
    it2.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(it2)["index"], w)
