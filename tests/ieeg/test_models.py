"""Shapes and behaviour of `popt_jax.models` (no torch; parity lives in test_parity.py).

Small configs keep this file fast; the full sizes appear only where they are the point
(parameter counts, which are taken from abstract shapes without allocating weights).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from popt_jax.ieeg import (
    BrainBERT,
    BrainBERTConfig,
    PopT,
    PopTClassifier,
    PopTConfig,
    brainbert_embed,
)
from popt_jax.ieeg import signal as sig
from popt_jax.ieeg.brainbert import center_pool
from popt_jax.ieeg.layers import PackSpec, hashed_bits, make_packing, pack, packed_length, unpack

SMALL_BB = BrainBERTConfig(hidden_dim=64, n_heads=4, ff_dim=128, n_layers=2)
SMALL_POPT = PopTConfig(input_dim=48, hidden_dim=64, n_heads=4, ff_dim=128, n_layers=2)


def perturb(model, seed: int, scale: float = 0.1):
    """Adds noise to every parameter so no zero bias or unit LayerNorm hides a bug."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    noisy = jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a) + scale * rng.standard_normal(a.shape), a.dtype),
        state)
    nnx.update(model, noisy)
    return model


# Whole-model jit: one compilation per shape instead of op-by-op dispatch (keeps this fast).
@functools.partial(nnx.jit, static_argnames=("deterministic", "return_attention", "packed"))
def run_popt(model, x, pad, coords, seq_id=None, deterministic=True, return_attention=False,
             packed=None, out_rows=None):
    return model(x, pad, coords, seq_id, deterministic=deterministic,
                 return_attention=return_attention, packed=packed, out_rows=out_rows)


@functools.partial(nnx.jit, static_argnames=("deterministic", "return_attention"))
def run_bb(model, spec, pad=None, deterministic=True, return_attention=False):
    return model(spec, pad, deterministic=deterministic, return_attention=return_attention)


def n_params(factory) -> int:
    abstract = nnx.eval_shape(factory)
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def brainbert():
    return perturb(BrainBERT(SMALL_BB, rngs=nnx.Rngs(0)), 1)


@pytest.fixture(scope="module")
def popt():
    return perturb(PopT(SMALL_POPT, rngs=nnx.Rngs(0)), 2)


def popt_batch(rng, b=3, n=6, dim=SMALL_POPT.input_dim, n_real=(6, 4, 1)):
    x = jnp.asarray(rng.standard_normal((b, n, dim)), jnp.float32)
    coords = jnp.asarray(rng.integers(0, 200, (b, n, 3)), jnp.int32)
    seq_id = jnp.asarray(rng.integers(0, 2, (b, n)), jnp.int32)
    pad = jnp.asarray(np.arange(n)[None, :] >= np.asarray(n_real)[:, None])
    return x, pad, coords, seq_id


# ----------------------------------------------------------------------------------------------
# Shapes and sizes
# ----------------------------------------------------------------------------------------------


def test_brainbert_shapes(brainbert):
    spec = jnp.asarray(np.random.default_rng(0).standard_normal((2, 30, 40)), jnp.float32)
    hidden, weights = run_bb(brainbert, spec, return_attention=True)
    assert hidden.shape == (2, 30, 64) and hidden.dtype == jnp.float32
    assert len(weights) == SMALL_BB.n_layers
    assert all(w.shape == (2, 4, 30, 30) for w in weights)
    # Shape-only checks run abstractly (no compilation).
    assert nnx.eval_shape(lambda m: m(spec), brainbert).shape == (2, 30, 64)
    assert nnx.eval_shape(lambda m: m.predict_spectrogram(spec), brainbert).shape == (2, 30, 40)


def test_popt_shapes(popt):
    x, pad, coords, seq_id = popt_batch(np.random.default_rng(1))
    out = run_popt(popt, x, pad, coords, seq_id, return_attention=True)
    assert out.hidden.shape == (3, 7, 64)
    assert out.cls_logits.shape == (3, 1)
    assert out.token_logits.shape == (3, 6, 1)
    assert len(out.attention) == SMALL_POPT.n_layers
    assert all(w.shape == (3, 4, 7, 7) for w in out.attention)
    assert nnx.eval_shape(lambda m: m(x, pad, coords, seq_id), popt).attention is None
    # seq_id defaults to zeros (fine-tuning) and pad_mask to "no padding".
    zeros = run_popt(popt, x, pad, coords, jnp.zeros_like(seq_id))
    np.testing.assert_array_equal(run_popt(popt, x, pad, coords).hidden, zeros.hidden)
    np.testing.assert_array_equal(run_popt(popt, x, None, coords, seq_id).hidden,
                                  run_popt(popt, x, jnp.zeros_like(pad), coords, seq_id).hidden)


@pytest.mark.parametrize("cls_out_dim, token_head", [(3, False), (3, True), (1, False)])
def test_popt_head_options(cls_out_dim, token_head):
    cfg = PopTConfig(input_dim=16, hidden_dim=32, n_heads=2, ff_dim=64, n_layers=1,
                     cls_out_dim=cls_out_dim, use_token_cls_head=token_head)
    x, pad, coords, seq_id = popt_batch(np.random.default_rng(2), b=2, n=4, dim=16,
                                        n_real=(4, 2))
    out = nnx.eval_shape(lambda: PopT(cfg, rngs=nnx.Rngs(0))(x, pad, coords, seq_id))
    assert out.hidden.shape == (2, 5, 32)
    assert out.cls_logits.shape == (2, cls_out_dim)
    if token_head:
        assert out.token_logits.shape == (2, 4, cls_out_dim)
    else:
        assert out.token_logits is None


def test_popt_classifier(popt):
    clf = PopTClassifier(SMALL_POPT, n_out=2, rngs=nnx.Rngs(3))
    nnx.update(clf.upstream, nnx.state(popt))
    x, pad, coords, seq_id = popt_batch(np.random.default_rng(3))
    logits = nnx.jit(lambda m, *a: m(*a))(clf, x, pad, coords, seq_id)
    assert logits.shape == (3, 2)
    want = clf.linear_out(run_popt(popt, x, pad, coords, seq_id).hidden[:, 0])
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-6)


def test_parameter_counts_match_the_papers():
    assert n_params(lambda: PopT(PopTConfig(), rngs=nnx.Rngs(0))) == 19_967_746  # 19.97M
    assert n_params(lambda: BrainBERT(BrainBERTConfig(), rngs=nnx.Rngs(0))) == 43_183_144
    no_token = PopTConfig(use_token_cls_head=False)
    assert n_params(lambda: PopT(no_token, rngs=nnx.Rngs(0))) == 19_967_746 - 513
    assert n_params(lambda: PopTClassifier(PopTConfig(), rngs=nnx.Rngs(0))) == 19_967_746 + 513


def test_fixed_tables_are_buffers_not_params():
    model = nnx.eval_shape(lambda: PopT(PopTConfig(), rngs=nnx.Rngs(0)))
    assert model.input_encoding.positional_encoding.pe.shape == (5000, 128)
    names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert not any("pe" == n.split("/")[-1] for n in names)


# ----------------------------------------------------------------------------------------------
# Masking, attention and dropout
# ----------------------------------------------------------------------------------------------


def test_popt_padding_invariance(popt):
    rng = np.random.default_rng(4)
    x, pad, coords, seq_id = popt_batch(rng)
    ref = jax.tree.map(np.asarray, run_popt(popt, x, pad, coords, seq_id,
                                            return_attention=True))
    # Append 3 more padded tokens holding garbage: large values, far coordinates, any seq id.
    extra = 3
    x2 = jnp.concatenate([x, 100.0 * jnp.asarray(rng.standard_normal((3, extra, x.shape[-1])),
                                                 jnp.float32)], axis=1)
    pad2 = jnp.concatenate([pad, jnp.ones((3, extra), bool)], axis=1)
    coords2 = jnp.concatenate([coords, jnp.asarray(rng.integers(0, 5000, (3, extra, 3)),
                                                   jnp.int32)], axis=1)
    seq2 = jnp.concatenate([seq_id, jnp.asarray(rng.integers(0, 2, (3, extra)), jnp.int32)],
                           axis=1)
    out = jax.tree.map(np.asarray, run_popt(popt, x2, pad2, coords2, seq2,
                                            return_attention=True))
    n_real = np.asarray(~pad).sum(axis=1)
    assert max_abs(out.cls_logits, ref.cls_logits) <= 1e-5
    for b, k in enumerate(n_real):
        assert max_abs(out.hidden[b, : 1 + k], ref.hidden[b, : 1 + k]) <= 1e-5
        assert max_abs(out.token_logits[b, :k], ref.token_logits[b, :k]) <= 1e-5
        for w2, w1 in zip(out.attention, ref.attention, strict=True):
            assert max_abs(w2[b, :, : 1 + k, : 1 + k], w1[b, :, : 1 + k, : 1 + k]) <= 1e-6
            assert np.all(w2[b, :, :, 1 + k:] == 0.0)
    # An example's outputs do not depend on its batch mates either.
    alone = run_popt(popt, x[1:2, :4], pad[1:2, :4], coords[1:2, :4], seq_id[1:2, :4])
    assert max_abs(alone.hidden[0], ref.hidden[1, :5]) <= 1e-5


def test_brainbert_padding_invariance(brainbert):
    rng = np.random.default_rng(5)
    spec = jnp.asarray(rng.standard_normal((2, 20, 40)), jnp.float32)
    ref = run_bb(brainbert, spec)
    garbage = jnp.asarray(50.0 * rng.standard_normal((2, 6, 40)), jnp.float32)
    spec2 = jnp.concatenate([spec, garbage], axis=1)
    pad = jnp.asarray(np.arange(26)[None, :] >= 20).repeat(2, axis=0)
    out = run_bb(brainbert, spec2, pad)
    assert max_abs(out[:, :20], ref) <= 1e-5
    # Without the mask the garbage frames do leak in (so the check above is meaningful).
    assert max_abs(run_bb(brainbert, spec2)[:, :20], ref) > 1e-3


@pytest.mark.parametrize("which", ["popt", "brainbert"])
def test_attention_rows_are_distributions(which, popt, brainbert):
    rng = np.random.default_rng(6)
    if which == "popt":
        x, pad, coords, seq_id = popt_batch(rng)
        weights = run_popt(popt, x, pad, coords, seq_id, return_attention=True).attention
        key_pad = np.concatenate([np.zeros((3, 1), bool), np.asarray(pad)], axis=1)
    else:
        spec = jnp.asarray(rng.standard_normal((2, 12, 40)), jnp.float32)
        key_pad = np.arange(12)[None, :] >= np.array([[12], [7]])
        _, weights = run_bb(brainbert, spec, jnp.asarray(key_pad), return_attention=True)
    for w in weights:
        w = np.asarray(w)
        assert w.dtype == np.float32 and np.all(w >= 0)
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-6)
        # Padded keys get exactly zero weight, from every (also padded) query.
        assert np.all(np.where(key_pad[:, None, None, :], w, 0.0) == 0.0)


def test_dropout_only_when_not_deterministic():
    x, pad, coords, seq_id = popt_batch(np.random.default_rng(7))
    model = perturb(PopT(SMALL_POPT, rngs=nnx.Rngs(0)), 2)
    eval1 = run_popt(model, x, pad, coords, seq_id)
    eval2 = run_popt(model, x, pad, coords, seq_id)
    np.testing.assert_array_equal(eval1.hidden, eval2.hidden)
    train1 = run_popt(model, x, pad, coords, seq_id, deterministic=False)
    train2 = run_popt(model, x, pad, coords, seq_id, deterministic=False)
    assert max_abs(train1.hidden, eval1.hidden) > 1e-2
    assert max_abs(train1.hidden, train2.hidden) > 1e-2  # fresh masks every call
    # With rate 0 the training path is the eval path.
    no_drop = PopT(PopTConfig(**{**SMALL_POPT.__dict__, "dropout": 0.0}), rngs=nnx.Rngs(0))
    nnx.update(no_drop, nnx.state(model, nnx.Param))
    np.testing.assert_allclose(run_popt(no_drop, x, pad, coords, seq_id,
                                        deterministic=False).hidden,
                               eval1.hidden, rtol=0, atol=1e-6)


def test_attention_dropout_on_weights():
    # Attention dropout (as torch's MHA): some weights zeroed, survivors scaled by 1/(1-p),
    # and the returned weights are the dropped ones.
    rng = np.random.default_rng(17)
    attn = perturb(PopT(SMALL_POPT, rngs=nnx.Rngs(0)), 3).transformer_encoder.layers[0].self_attn
    h = jnp.asarray(rng.standard_normal((3, 7, 64)), jnp.float32)
    pad = jnp.asarray(np.arange(7)[None, :] >= np.array([[7], [5], [2]]))
    out_eval, w_eval = attn(h, pad)
    out_train, w_train = attn(h, pad, deterministic=False)
    w_eval, w_train = np.asarray(w_eval), np.asarray(w_train)
    live = np.broadcast_to(~np.asarray(pad)[:, None, None, :], w_eval.shape)
    dropped = (w_train == 0) & live
    assert 0.02 < dropped.sum() / live.sum() < 0.25  # rate 0.1
    np.testing.assert_allclose(w_train[live & ~dropped], w_eval[live & ~dropped] / 0.9,
                               rtol=1e-5, atol=0)
    assert np.all(w_train[~live] == 0.0)
    assert max_abs(out_train, out_eval) > 1e-3
    np.testing.assert_array_equal(attn(h, pad)[0], out_eval)


def test_brainbert_dropout_only_when_not_deterministic(brainbert):
    spec = jnp.asarray(np.random.default_rng(8).standard_normal((2, 30, 40)), jnp.float32)
    ev = run_bb(brainbert, spec)
    np.testing.assert_array_equal(ev, run_bb(brainbert, spec))
    assert max_abs(run_bb(brainbert, spec, deterministic=False), ev) > 1e-2


# ----------------------------------------------------------------------------------------------
# brainbert_embed
# ----------------------------------------------------------------------------------------------


def test_center_pool():
    h = jnp.arange(2 * 21 * 3, dtype=jnp.float32).reshape(2, 21, 3)
    np.testing.assert_array_equal(center_pool(h), h[:, 5:15].mean(axis=1))
    assert center_pool(jnp.zeros((186, 7))).shape == (7,)


@pytest.fixture(scope="module")
def windows():
    return np.random.default_rng(9).standard_normal((2, 3, 10240)).astype(np.float32)


def test_brainbert_embed_batching(brainbert, windows):
    emb = np.asarray(brainbert_embed(brainbert, windows))
    assert emb.shape == (2, 3, 64) and emb.dtype == np.float32
    for w in range(2):
        one = np.asarray(brainbert_embed(brainbert, windows[w]))
        assert max_abs(one, emb[w]) <= 1e-5
        # ... and equals the spelled-out pipeline.
        spec = sig.brainbert_spectrogram(jnp.asarray(windows[w]))
        assert spec.shape == (3, 186, 40)
        assert max_abs(center_pool(run_bb(brainbert, spec)), emb[w]) <= 1e-5
    single = np.asarray(brainbert_embed(brainbert, windows[0, 0]))
    assert single.shape == (64,)
    assert max_abs(single, emb[0, 0]) <= 1e-5


def test_brainbert_embed_chunked(brainbert, windows):
    # More electrode-windows than `chunk` (4 does not divide the 6 here) takes the lax.map
    # path, which must give the same embeddings as one batch.
    emb = np.asarray(brainbert_embed(brainbert, windows, chunk=None))
    chunked = np.asarray(brainbert_embed(brainbert, windows, chunk=4))
    assert chunked.shape == (2, 3, 64)
    assert max_abs(chunked, emb) <= 1e-5


# ----------------------------------------------------------------------------------------------
# bfloat16 compute
# ----------------------------------------------------------------------------------------------
# bf16 keeps 8 mantissa bits: each rounding is off by up to 2^-9 ~ 2e-3 relatively, and a few
# dozen of them per layer compound through the residual stream. LayerNorm keeps activations
# O(1), so the error stays a few 1e-2 absolute in the worst element after 2 layers; we check
# the relative L2 error (< 2e-2, i.e. ~5 bf16 ulps of drift) and that the output direction is
# kept (cosine > 0.999). A broken cast (e.g. softmax or the STFT in bf16, or a dtype mix-up)
# lands far outside both.


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def cosine_min(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(-1)
    return float((num / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def test_brainbert_embed_bf16_close_to_fp32(brainbert, windows):
    fp32 = brainbert_embed(brainbert, windows)
    bf16 = brainbert_embed(brainbert, windows, compute_dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.float32 and bf16.shape == fp32.shape
    assert rel_l2(bf16, fp32) < 2e-2
    assert cosine_min(bf16, fp32) > 0.999
    assert max_abs(bf16, fp32) > 0  # it really ran in bf16


def test_popt_bf16_close_to_fp32(popt):
    x, pad, coords, seq_id = popt_batch(np.random.default_rng(10))
    low = PopT(SMALL_POPT, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    nnx.update(low, nnx.state(popt, nnx.Param))
    ref = run_popt(popt, x, pad, coords, seq_id, return_attention=True)
    out = run_popt(low, x, pad, coords, seq_id, return_attention=True)
    assert out.hidden.dtype == jnp.bfloat16
    real = np.concatenate([np.ones((3, 1), bool), ~np.asarray(pad)], axis=1)
    h, h_ref = np.asarray(out.hidden, np.float32)[real], np.asarray(ref.hidden)[real]
    assert rel_l2(h, h_ref) < 2e-2
    assert cosine_min(h, h_ref) > 0.999
    # Softmax runs in float32: attention rows still sum to 1 to float32 accuracy.
    for w in out.attention:
        assert w.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Hashed dropout bits and token packing
# ----------------------------------------------------------------------------------------------


def test_hashed_bits_statistics():
    key = jax.random.key(0)
    bits = np.asarray(hashed_bits(key, (64, 1000)))
    # Uniform over uint32: each of the 32 bit planes is set half the time, and neighbouring
    # indices are uncorrelated.
    planes = (bits[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    assert np.abs(planes.mean(axis=(0, 1)) - 0.5).max() < 0.01  # 64k draws: sd 0.002
    u = bits.ravel().astype(np.float64) / 2**32
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
    keep = u >= 0.1
    assert abs(keep.mean() - 0.9) < 0.005
    # Another key, or another shape of the same index range: other bits; the same key: same.
    assert np.mean(np.asarray(hashed_bits(jax.random.key(1), (64, 1000))) == bits) < 0.001
    np.testing.assert_array_equal(hashed_bits(key, (64, 1000)), bits)
    # `rows` names each row's place in the original array: a row subset gets its own bits.
    rows = jnp.asarray([[5, 0], [63, 17]], jnp.int32)
    np.testing.assert_array_equal(hashed_bits(key, (2, 2, 1000), rows),
                                  bits[np.asarray(rows)])


def test_packing_round_trip_and_slot_count():
    pad = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]], bool)
    # Groups of 2 examples: 2 + 1 and 4 + 3 real tokens -> 7 slots needed, rounded up to
    # multiples of ceil(8 / quantum).
    assert packed_length(pad, groups=2, quantum=8) == 7
    assert packed_length(pad, groups=2, quantum=2) == 8
    assert packed_length(pad, groups=1, quantum=16) == 10
    p = make_packing(jnp.asarray(pad), 7, groups=2)
    x = jnp.arange(4 * 4 * 2, dtype=jnp.float32).reshape(4, 4, 2) + 1.0
    packed = np.asarray(pack(p, x))
    assert packed.shape == (2, 7, 2)
    real = ~pad
    # Real tokens in order, group by group; empty slots are zero.
    np.testing.assert_array_equal(packed[0, :3], np.asarray(x)[:2][real[:2]])
    np.testing.assert_array_equal(packed[1, :7], np.asarray(x)[2:][real[2:]])
    assert np.all(packed[0, 3:] == 0)
    back = np.asarray(unpack(p, jnp.asarray(packed)))
    np.testing.assert_array_equal(back[real], np.asarray(x)[real])
    assert np.all(back[pad] == 0)
    # rows: each slot's flat index in the whole batch.
    np.testing.assert_array_equal(np.asarray(p.rows)[1, :7], np.flatnonzero(real.ravel())[3:])


@pytest.mark.parametrize("deterministic", [True, False])
def test_packed_popt_equals_padded(popt, deterministic):
    """Packing runs the per-token layers on real tokens only; the real positions (and, in
    training, the dropout masks) are those of the padded run."""
    rng = np.random.default_rng(21)
    x, pad, coords, seq_id = popt_batch(rng, b=4, n=7, n_real=(6, 2, 5, 1))
    mask = np.concatenate([np.zeros((4, 1), bool), np.asarray(pad)], axis=1)
    real = ~mask

    def run(packed):
        model = perturb(PopT(SMALL_POPT, rngs=nnx.Rngs(5)), 2)  # same dropout streams each time
        rows = jnp.asarray(out_rows) if packed is not None and packed.out_slots else None
        return jax.tree.map(np.asarray, run_popt(model, x, pad, coords, seq_id,
                                                 deterministic=deterministic,
                                                 return_attention=True, packed=packed,
                                                 out_rows=rows))

    ref = run(None)
    # Rows the caller reads: CLS and a few tokens (as the pretraining loss).
    out_rows = np.zeros_like(mask)
    out_rows[:, 0] = True
    out_rows[[0, 2, 2, 3], [3, 1, 5, 1]] = True
    for groups in (1, 2, 4):
        n = packed_length(mask, groups, quantum=32)
        m = packed_length(~out_rows, groups, quantum=32)
        assert n < mask.size // groups and m < n  # packing is really on
        for spec in (PackSpec(n, groups), PackSpec(n, groups, m), PackSpec(None, groups, m)):
            out = run(spec)
            rows = out_rows if spec.out_slots else real
            assert max_abs(out.hidden[rows], ref.hidden[rows]) <= 1e-5, spec
            assert np.all(out.hidden[~rows] == 0)
            assert max_abs(out.cls_logits, ref.cls_logits) <= 1e-5
            tok = rows[:, 1:]
            assert max_abs(out.token_logits[tok], ref.token_logits[tok]) <= 1e-5
            for a, b in zip(out.attention, ref.attention, strict=True):  # real query rows
                assert max_abs(a.transpose(0, 2, 1, 3)[real],
                               b.transpose(0, 2, 1, 3)[real]) <= 1e-6
    if not deterministic:  # dropout really was on
        eval_ref = jax.tree.map(np.asarray, run_popt(perturb(PopT(SMALL_POPT, rngs=nnx.Rngs(5)), 2),
                                                      x, pad, coords, seq_id))
        assert max_abs(eval_ref.hidden[real], ref.hidden[real]) > 1e-2
    # Too few slots would drop tokens: the count helper never returns that.
    with pytest.raises(ValueError, match="packing groups"):
        make_packing(jnp.asarray(mask), 8, groups=3)
