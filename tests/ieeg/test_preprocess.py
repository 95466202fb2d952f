"""Preprocessing, windows and task labels against independent numpy/scipy computations."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.stats
from scipy import signal

from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg.braintreebank import BrainTreebank, Words, load_selection

FS = 2048.0
W = 10240


@pytest.fixture(scope="module")
def tree(braintreebank_tree) -> Path:
    """The session's synthetic tree (conftest); these tests read sub_1 only."""
    return braintreebank_tree


def _reference_inputs(root: Path):
    """Raw arrays read straight from the files, with names parsed independently."""
    labels = [re.sub(r"[*#_]", "", n) for n in
              json.loads((root / "electrode_labels/sub_1/electrode_labels.json").read_text())]
    chosen = json.loads((root / "electrode_selections/clean_laplacian.json").read_text())["sub_1"]
    chosen = [n for n in labels if n in chosen]  # label order
    with h5py.File(root / "all_subject_data/sub_1_trial000.h5", "r") as f:
        raw = {n: f[f"data/electrode_{i}"][:].astype(np.float64) for i, n in enumerate(labels)}
    return labels, chosen, raw


def _ref_filter(x: np.ndarray, band: bool, axis: int = -1) -> np.ndarray:
    y = x
    for f0 in range(60, 361, 60):
        b, a = signal.iirnotch(f0, 30.0, fs=FS)
        y = signal.lfilter(b, a, y, axis=axis)
    if band:
        sos = signal.butter(5, (70, 250), btype="band", fs=FS, output="sos")
        y = signal.sosfilt(sos, y, axis=axis)
    return y


def _ref_neighbours(name: str) -> tuple[str, str]:
    stem, num = re.fullmatch(r"(.*[A-Za-z])(\d+)", name).groups()
    return f"{stem}{int(num) - 1}", f"{stem}{int(num) + 1}"


@pytest.mark.parametrize("high_gamma", [False, True])
@pytest.mark.parametrize("mode", ["upstream", "time"])
def test_laplacian_pipeline_matches_reference(tree, high_gamma, mode):
    _, chosen, raw = _reference_inputs(tree)
    bt = BrainTreebank(tree)
    sel = load_selection(tree / "electrode_selections/clean_laplacian.json")["sub_1"]
    cfg = pp.PreprocessConfig(high_gamma=high_gamma, neighbour_filtering=mode)
    out = pp.preprocess_trial(bt, 1, 0, sel, cfg)
    assert out.names == chosen
    assert out.data.shape == (len(chosen), int(60 * FS))
    x = _ref_filter(np.stack([raw[n] for n in chosen]), high_gamma)
    lo = np.stack([raw[_ref_neighbours(n)[0]] for n in chosen])
    hi = np.stack([raw[_ref_neighbours(n)[1]] for n in chosen])
    if mode == "time":  # SPEC section 1 as written: neighbours filtered in time
        ref = 0.5 * (_ref_filter(lo, high_gamma) + _ref_filter(hi, high_gamma))
    else:  # what the upstream code does: filter a [n, 2, T] stack (n+1 first) along axis 1
        ref = _ref_filter(np.stack([hi, lo], axis=1), high_gamma, axis=1).mean(axis=1)
    np.testing.assert_allclose(out.data, x - ref, rtol=1e-9, atol=1e-9)


def test_upstream_laplacian_leaks_neighbour_line_noise(tree):
    bt = BrainTreebank(tree)
    sel = load_selection(tree / "electrode_selections/clean_laplacian.json")["sub_1"]
    power = {}
    for mode in ("upstream", "time"):
        out = pp.preprocess_trial(bt, 1, 0, sel[:4], pp.PreprocessConfig(neighbour_filtering=mode))
        f, p = signal.welch(out.data[:, int(2 * FS):], FS, nperseg=4096)
        power[mode] = p[:, np.argmin(np.abs(f - 60))].mean()
    assert power["upstream"] > 100 * power["time"]


def test_car_none_zscore_and_slice(tree):
    labels, chosen, raw = _reference_inputs(tree)
    bt = BrainTreebank(tree)
    filt = np.stack([_ref_filter(raw[n], False) for n in chosen])
    car = pp.preprocess_trial(bt, 1, 0, chosen, pp.PreprocessConfig(rereference="car"))
    np.testing.assert_allclose(car.data, filt - filt.mean(axis=0), atol=1e-9)
    z = pp.preprocess_trial(bt, 1, 0, chosen[::-1],
                            pp.PreprocessConfig(rereference="none", zscore=True))
    assert z.names == chosen  # label order whatever the request order
    np.testing.assert_allclose(z.data, scipy.stats.zscore(filt, axis=1), atol=1e-9)
    zd = pp.preprocess_trial(bt, 1, 0, chosen[:3],
                             pp.PreprocessConfig(rereference="none", zscore=True, despike=True))
    np.testing.assert_allclose(zd.data, pp.despike(scipy.stats.zscore(filt[:3], axis=1)),
                               atol=1e-9)
    part = pp.preprocess_trial(bt, 1, 0, chosen[:2], pp.PreprocessConfig(rereference="none"),
                               start=4096, stop=8192)
    ref = np.stack([_ref_filter(raw[n][4096:8192], False) for n in chosen[:2]])
    np.testing.assert_allclose(part.data, ref, atol=1e-9)
    assert part.start == 4096


def test_notch_removes_line_noise(tree):
    _, chosen, raw = _reference_inputs(tree)
    x = raw[chosen[0]]
    y = pp.notch_filter(x[None], FS)[0]
    f, p_x = signal.welch(x, FS, nperseg=4096)
    _, p_y = signal.welch(y[int(2 * FS):], FS, nperseg=4096)  # skip the filter onset
    k = np.argmin(np.abs(f - 60))
    assert p_x[k] > 100 * p_y[k]


def test_despike_matches_convolution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5000))
    x[0, 1000] = 40.0
    x[2, [10, 4990, 2500]] = -35.0
    got = pp.despike(x)
    for row in range(3):
        y = x[row]
        mask = np.abs(scipy.stats.zscore(y)) > 4
        fuzzed = np.sign(np.convolve(mask, np.ones(125), mode="same"))
        np.testing.assert_allclose(got[row], y - fuzzed * y * 0.95)
    np.testing.assert_array_equal(got[1], x[1])


# --------------------------------------------------------------------------- windows


def _upstream_pretraining(n_samples: int) -> list[int]:
    cut = (n_samples // W) * W
    out, idx = [], 0
    while idx < cut - W:
        out.append(idx)
        idx += int(0.2 * 2048)
    return out


@pytest.mark.parametrize("n", [60 * 2048, 3 * W + 5000, 2 * W, 2 * W - 1, W, 100])
def test_pretraining_window_starts(n):
    got = pp.pretraining_window_starts(n)
    assert got.tolist() == _upstream_pretraining(n)
    if n == 2 * W:
        assert len(got) == 26 and got[1] == 409  # the hop is int(409.6)


def test_word_and_nonspeech_windows():
    cfg = pp.PreprocessConfig()
    np.testing.assert_array_equal(pp.word_window_starts(np.array([6000.0, 20000.0])),
                                  [880, 14880])
    n = 40 * 2048
    on = np.array([12 * 2048 + 100, 20 * 2048 - 10])
    off = np.array([14 * 2048 + 1, 20 * 2048 + 5])
    got = pp.nonspeech_window_starts(n, on, off, cfg)
    expect = []
    for i in range(n // 2048):  # written from the upstream description, one chunk at a time
        a, b = i * 2048, (i + 1) * 2048
        if any(a < e and b > s for s, e in zip(on, off, strict=True)):
            continue
        c = (a + b) // 2
        if c - W > 0 and c + W < n:
            expect.append(c - W // 2)
    assert got.tolist() == expect
    # chunks 12, 13, 14 (word 0) and 19, 20 (word 1) are excluded; centres need > 5 s margin
    centres = (got + W // 2) // 2048
    assert not set(centres) & {12, 13, 14, 19, 20}
    assert centres.min() == 5 and centres.max() == 34


def test_extract_windows():
    data = np.arange(30.0).reshape(3, 10)
    out = pp.extract_windows(data, np.array([0, 6]), 4)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out[1], data[:, 6:10])
    with pytest.raises(ValueError):
        pp.extract_windows(data, np.array([7]), 4)


# --------------------------------------------------------------------------- tasks


def _words(est: np.ndarray, **cols) -> Words:
    n = len(est)
    base = {"text": np.array(["w"] * n), "start": est / FS, "end": est / FS + 0.2,
            "est_idx": est.astype(float), "est_end_idx": est + 0.2 * FS,
            "is_onset": np.zeros(n, bool)}
    base.update(cols)
    return Words(base, "mem")


def test_feature_task_quartiles():
    est = np.arange(11) * 3000.0 + 6000
    rms = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.0, 10.0])
    words = _words(est, rms=rms)
    n_samples = int(est[-2]) + 5120 + 1  # the last word's window does not fit: dropped
    ex = pp.feature_task(words, "rms", n_samples)
    kept = rms[:10]  # 10 words -> int(10/4) = 2 low, from int(7.5) = 7 on: 3 high
    order = np.argsort(kept)
    assert ex.word_rows.tolist() == order[:2].tolist() + order[7:].tolist()
    assert ex.labels.tolist() == [False, False, True, True, True]
    np.testing.assert_array_equal(ex.starts, est[ex.word_rows].astype(int) - 5120)
    np.testing.assert_allclose(ex.times, words.start[ex.word_rows])
    assert ex.window_samples == W
    assert pp.make_task("volume", words, n_samples).word_rows.tolist() == ex.word_rows.tolist()


def test_speech_task_balancing_matches_python_random(tree):
    bt = BrainTreebank(tree)
    words = bt.words(1, 0)
    n = bt.n_samples(1, 0)
    for task, onsets in (("word_onset", False), ("sentence_onset", True)):
        ex = pp.make_task(task, words, n)
        rows = np.nonzero(np.isfinite(words.est_idx))[0]
        non = pp.nonspeech_window_starts(n, words.est_idx[rows], words.est_end_idx[rows])
        if onsets:
            rows = rows[words.is_onset[rows]]
        starts = words.est_idx[rows].astype(int) - W // 2
        ok = (starts >= 0) & (starts + W <= n)
        rows, starts = rows[ok], starts[ok]
        k = min(len(rows), len(non))
        random.seed(42)  # upstream: global seed, non-speech sampled first
        non_idx = random.sample(list(range(len(non))), k)
        word_idx = random.sample(list(range(len(rows))), k)
        assert len(ex) == 2 * k and k > 3
        assert ex.labels.tolist() == [True] * k + [False] * k
        assert ex.starts.tolist() == starts[word_idx].tolist() + non[non_idx].tolist()
        assert ex.word_rows[:k].tolist() == rows[word_idx].tolist()
        assert (ex.word_rows[k:] == -1).all()
        if onsets:
            assert words.is_onset[ex.word_rows[:k]].all()
        # non-speech centre chunks overlap no word at all
        for s in ex.starts[k:]:
            c = s + W // 2
            a, b = c - 1024, c + 1024
            assert not np.any((a < words.est_end_idx) & (b > words.est_idx))
        again = pp.make_task(task, words, n)
        np.testing.assert_array_equal(again.starts, ex.starts)
        other = pp.speech_task(words, n, pp.PreprocessConfig(seed=7), onsets_only=onsets)
        assert other.starts.tolist() != ex.starts.tolist()


def test_task_windows_on_synthetic(tree):
    bt = BrainTreebank(tree)
    sel = load_selection(tree / "electrode_selections/clean_laplacian.json")["sub_1"]
    ft = pp.preprocess_trial(bt, 1, 0, sel)
    words = bt.words(1, 0)
    for task in ("rms", "pitch", "sentence_onset", "word_onset"):
        ex = pp.make_task(task, words, ft.data.shape[1])
        x = pp.extract_windows(ft.data, ex.starts, ex.window_samples)
        assert x.shape == (len(ex), len(ft.names), W)
        assert ex.labels.any() and (~ex.labels).any()
    with pytest.raises(ValueError):
        pp.make_task("nope", words, ft.data.shape[1])
