"""The STFT front end (`popt_jax.signal`) against scipy and a numpy statement of upstream.

`stft` must reproduce `scipy.signal.stft` (float64) to float32 accuracy over the argument
space upstream touches and a bit beyond; the BrainBERT features must match upstream's numpy
pipeline (tests/torch_reference.ref_brainbert_spectrogram, no torch needed) to 1e-4 in
z-score units, including its flat-channel quirks.
"""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import scipy.stats

from popt_jax.ieeg import signal as sig

N_SAMPLES = 10240  # 5 s at 2048 Hz
FS = 2048


def _load_reference():
    # The reference module imports torch at the top; the spectrogram part needs only numpy and
    # scipy, so load it with a stub when torch is absent.
    path = pathlib.Path(__file__).parents[1] / "torch_reference.py"
    spec = importlib.util.spec_from_file_location("_signal_reference", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        return mod.ref_brainbert_spectrogram
    except ImportError:
        return _numpy_reference


def _numpy_reference(x, nperseg=400, noverlap=350, n_freqs=40, trim=10):
    x = np.asarray(x, dtype=np.float64)
    _, _, z = scipy.signal.stft(x, FS, nperseg=nperseg, noverlap=noverlap)
    mag = np.abs(z[:, :n_freqs])
    std = mag.std(axis=-1, keepdims=True)
    std[std == 0] = 1.0
    feat = (mag - mag.mean(axis=-1, keepdims=True)) / std
    if feat.std() == 0:
        feat = np.ones_like(feat)
    feat = np.nan_to_num(feat[:, :, trim:-trim], nan=0.0)
    return np.transpose(feat, (0, 2, 1)).astype(np.float32)


ref_spectrogram = _load_reference()

# Jitted once per static configuration (much faster here than op-by-op eager dispatch).
jstft = jax.jit(sig.stft, static_argnames=("nperseg", "noverlap", "nfft", "boundary", "padded",
                                           "return_onesided", "scaling", "fs", "n_freqs",
                                           "precision"))


def demo_reference(x, nperseg=400, noverlap=350, n_freqs=40, trim=5):
    """The BrainBERT demo notebook's order: trim first, then scipy.stats.zscore over time."""
    x = np.asarray(x, dtype=np.float64)
    _, _, z = scipy.signal.stft(x, FS, nperseg=nperseg, noverlap=noverlap)
    mag = np.abs(z[..., :n_freqs, :])[..., trim:-trim]
    with np.errstate(invalid="ignore", divide="ignore"):
        feat = scipy.stats.zscore(mag, axis=-1)
    return np.swapaxes(np.nan_to_num(feat, nan=0.0), -1, -2)


# ----------------------------------------------------------------------------------------------
# Test signals
# ----------------------------------------------------------------------------------------------


def white(rng, shape):
    return rng.standard_normal(shape)


def pink(rng, shape):
    """1/f power spectrum (amplitude ~ f^-1/2), with a DC offset for good measure."""
    n = shape[-1]
    spec = np.fft.rfft(rng.standard_normal(shape), axis=-1)
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    x = np.fft.irfft(spec / np.sqrt(f), n=n, axis=-1)
    return x / x.std(axis=-1, keepdims=True) + 0.5


def spiky(rng, shape, n_spikes=6, height=1e3):
    """Sparse large impulses on a faint noise floor (dynamic range ~1e6)."""
    x = 1e-3 * rng.standard_normal(shape)
    flat = x.reshape(-1, shape[-1])
    for row in flat:
        idx = rng.choice(shape[-1], n_spikes, replace=False)
        row[idx] += height * rng.choice([-1.0, 1.0], n_spikes)
    return flat.reshape(shape)


def max_abs(a, b):
    a, b = np.asarray(a), np.asarray(b)
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) else np.float64
    return float(np.max(np.abs(a.astype(wide) - b.astype(wide))))


# ----------------------------------------------------------------------------------------------
# stft vs scipy.signal.stft
# ----------------------------------------------------------------------------------------------

STFT_CASES = [
    # (n_samples, nperseg, noverlap, nfft, boundary, padded, onesided, scaling)
    (10240, 400, 350, None, True, True, True, "spectrum"),  # BrainBERT's setting
    (10240, 256, None, None, True, True, True, "spectrum"),  # default overlap, hop divides
    (1001, 100, 30, None, True, True, True, "spectrum"),  # hop 70 does not divide 100
    (777, 51, 17, None, True, True, True, "psd"),  # odd segment and signal, hop 34
    (777, 51, 17, None, False, True, True, "spectrum"),  # no boundary extension
    (1001, 100, 30, None, True, False, True, "spectrum"),  # no end padding (tail dropped)
    (1001, 100, 30, None, False, False, False, "psd"),  # neither, two-sided
    (999, 64, 48, None, True, True, False, "spectrum"),  # two-sided, odd length
    (2000, 64, 0, None, True, True, True, "psd"),  # no overlap
    (3000, 400, 350, 512, True, True, True, "spectrum"),  # zero-padded FFT
    (513, 33, 31, 40, False, True, False, "spectrum"),  # hop 2, odd nperseg, nfft > nperseg
]


@pytest.mark.parametrize("n, nperseg, noverlap, nfft, boundary, padded, onesided, scaling",
                         STFT_CASES)
def test_stft_matches_scipy(n, nperseg, noverlap, nfft, boundary, padded, onesided, scaling):
    rng = np.random.default_rng(n + nperseg)
    x = white(rng, (2, n))
    fs = FS
    f, t, want = scipy.signal.stft(
        x, fs, nperseg=nperseg, noverlap=noverlap, nfft=nfft,
        boundary="zeros" if boundary else None, padded=padded, return_onesided=onesided,
        scaling=scaling)
    got = np.asarray(jstft(jnp.asarray(x, jnp.float32), nperseg=nperseg, noverlap=noverlap,
                           nfft=nfft, boundary=boundary, padded=padded,
                           return_onesided=onesided, scaling=scaling, fs=fs))
    assert got.shape == want.shape
    # float32 against float64: errors ~1e-7 of the largest coefficient; a wrong window
    # (symmetric Hann), scale or frame offset shows up at 1e-3 or more.
    assert max_abs(got, want) <= 2e-6 * np.abs(want).max()

    noverlap_ = nperseg // 2 if noverlap is None else noverlap
    assert sig.stft_num_frames(n, nperseg, noverlap_, boundary, padded) == want.shape[-1]
    np.testing.assert_allclose(
        sig.stft_times(n, fs, nperseg, noverlap_, boundary, padded), t, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        sig.stft_frequencies(fs, nfft or nperseg, onesided), f, rtol=0, atol=1e-9)


def test_stft_psd_scaling_uses_sampling_rate():
    # scipy's 'psd' STFT scale is 1/sqrt(fs * sum(win**2)); `fs` defaults to 1 (the axis
    # labels are separate functions). At fs=2048 a missing fs would be off by ~45x.
    rng = np.random.default_rng(12)
    x = white(rng, (2, 1001))
    for fs in (1.0, FS):
        _, _, want = scipy.signal.stft(x, fs, nperseg=100, noverlap=30, scaling="psd")
        kw = {} if fs == 1.0 else {"fs": fs}
        got = np.asarray(sig.stft(jnp.asarray(x, jnp.float32), nperseg=100, noverlap=30,
                                  scaling="psd", **kw))
        assert max_abs(got, want) <= 2e-6 * np.abs(want).max()
    # 'spectrum' scaling does not depend on fs.
    a = sig.stft(jnp.asarray(x, jnp.float32), nperseg=100, noverlap=30)
    b = sig.stft(jnp.asarray(x, jnp.float32), nperseg=100, noverlap=30, fs=FS)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("onesided, n_freqs", [(True, 40), (True, 1), (True, 500),
                                               (False, 40), (False, 400)])
def test_stft_n_freqs_matmul_path(onesided, n_freqs):
    rng = np.random.default_rng(7)
    x = pink(rng, (3, N_SAMPLES))
    _, _, want = scipy.signal.stft(x, FS, nperseg=400, noverlap=350, return_onesided=onesided)
    want = want[:, :n_freqs]
    got = np.asarray(jstft(jnp.asarray(x, jnp.float32), nperseg=400, noverlap=350,
                           return_onesided=onesided, n_freqs=n_freqs))
    assert got.shape == want.shape
    assert max_abs(got, want) <= 2e-6 * np.abs(want).max()
    # The FFT path and the DFT-matmul path agree with each other as well.
    full = np.asarray(jstft(jnp.asarray(x, jnp.float32), nperseg=400, noverlap=350,
                            return_onesided=onesided))[:, :n_freqs]
    assert max_abs(got, full) <= 2e-6 * np.abs(want).max()


def test_stft_batched_leading_axes():
    rng = np.random.default_rng(3)
    x = white(rng, (2, 3, 4, 1001))
    _, _, want = scipy.signal.stft(x, FS, nperseg=100, noverlap=30)
    got = np.asarray(sig.stft(jnp.asarray(x, jnp.float32), nperseg=100, noverlap=30))
    assert got.shape == want.shape == (2, 3, 4, 51, want.shape[-1])
    assert max_abs(got, want) <= 2e-6 * np.abs(want).max()
    got_1d = np.asarray(sig.stft(jnp.asarray(x[1, 2, 3], jnp.float32), nperseg=100,
                                 noverlap=30))
    np.testing.assert_allclose(got_1d, got[1, 2, 3], rtol=0, atol=1e-6)


def test_stft_rejects_bad_arguments():
    x = jnp.zeros(100)
    with pytest.raises(ValueError):
        sig.stft(x, nperseg=32, noverlap=32)
    with pytest.raises(ValueError):
        sig.stft(x, nperseg=32, nfft=16)
    with pytest.raises(ValueError):
        sig.stft(x, nperseg=32, scaling="magnitude")


# ----------------------------------------------------------------------------------------------
# BrainBERT features vs upstream's numpy pipeline
# ----------------------------------------------------------------------------------------------


def _assert_features_match(x):
    """x: one window [E, samples] -> JAX features match the upstream reference to 1e-4."""
    want = ref_spectrogram(x)
    got = np.asarray(sig.brainbert_spectrogram(jnp.asarray(x, jnp.float32)))
    assert got.shape == want.shape == (x.shape[0], 186, 40)
    assert np.isfinite(got).all()
    assert max_abs(got, want) <= 1e-4
    return got, want


@pytest.mark.parametrize("kind", ["white", "pink", "spiky"])
def test_brainbert_spectrogram_matches_upstream(kind):
    rng = np.random.default_rng({"white": 0, "pink": 1, "spiky": 2}[kind])
    x = {"white": white, "pink": pink, "spiky": spiky}[kind](rng, (5, N_SAMPLES))
    got, _ = _assert_features_match(x * 37.0)  # an arbitrary gain: features are scale-free
    # z-scored over all 205 frames, then trimmed: the kept frames are roughly centred.
    assert np.abs(got.mean(axis=-2)).max() < 1.0


def test_brainbert_spectrogram_flat_channels_among_live_ones():
    rng = np.random.default_rng(4)
    x = pink(rng, (4, N_SAMPLES))
    x[1] = 0.0  # a dead channel: every row constant -> z-score 0 (std 0 -> 1)
    x[2] = 3.7  # a constant (DC) channel: rows are not flat, the boundary zeros make edges
    got, _ = _assert_features_match(x)
    assert np.all(got[1] == 0.0)
    assert not np.all(got[2] == 0.0)


def test_brainbert_spectrogram_all_channels_zero_gives_ones():
    x = np.zeros((3, N_SAMPLES))
    got, want = _assert_features_match(x)
    assert np.all(want == 1.0) and np.all(got == 1.0)


def test_brainbert_spectrogram_all_channels_constant():
    # Nonzero constants are not "flat" after the zero-extended STFT: no quirk, real features.
    x = np.broadcast_to(np.array([[1.0], [-2.5], [40.0]]), (3, N_SAMPLES)).copy()
    got, want = _assert_features_match(x)
    assert not np.all(want == 1.0)


def test_brainbert_spectrogram_nan_channel_becomes_zeros():
    rng = np.random.default_rng(5)
    x = white(rng, (3, N_SAMPLES))
    x[0, 5000] = np.nan
    got, want = _assert_features_match(x)
    assert np.all(got[0] == 0.0)


def test_brainbert_spectrogram_single_channel_and_batches():
    rng = np.random.default_rng(6)
    x = pink(rng, (3, 4, N_SAMPLES))  # [windows, electrodes, samples]
    x[1] = 0.0  # one window with every electrode dead: the quirk applies to it alone
    got = np.asarray(sig.brainbert_spectrogram(jnp.asarray(x, jnp.float32)))
    assert got.shape == (3, 4, 186, 40)
    for w in range(3):
        assert max_abs(got[w], ref_spectrogram(x[w])) <= 1e-4
    assert np.all(got[1] == 1.0)
    # A 1-D input is one electrode of one window.
    one = np.asarray(sig.brainbert_spectrogram(jnp.asarray(x[0, 2], jnp.float32)))
    assert one.shape == (186, 40)
    assert max_abs(one, ref_spectrogram(x[0, 2:3])[0]) <= 1e-4


def test_brainbert_spectrogram_jit_vmap_consistency():
    rng = np.random.default_rng(8)
    x = jnp.asarray(white(rng, (3, 2, N_SAMPLES)), jnp.float32)
    batched = np.asarray(sig.brainbert_spectrogram(x))
    mapped = np.asarray(jax.vmap(sig.brainbert_spectrogram)(x))
    looped = np.stack([np.asarray(sig.brainbert_spectrogram(x[i])) for i in range(3)])
    jitted = np.asarray(jax.jit(lambda a: sig.brainbert_spectrogram(a))(x))
    for other in (mapped, looped, jitted):
        assert max_abs(batched, other) <= 1e-6
    stft_mapped = jax.jit(jax.vmap(lambda a: sig.stft(a, nperseg=400, noverlap=350,
                                                      n_freqs=40)))(x)
    stft_batched = sig.stft(x, nperseg=400, noverlap=350, n_freqs=40)
    assert max_abs(stft_mapped, stft_batched) <= 1e-6 * float(jnp.abs(stft_batched).max())


# ----------------------------------------------------------------------------------------------
# Demo-notebook order
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["white", "pink", "spiky"])
def test_demo_order_matches_trim_then_zscore(kind):
    rng = np.random.default_rng(10)
    x = {"white": white, "pink": pink, "spiky": spiky}[kind](rng, (2, 3, N_SAMPLES))
    x[0, 1] = 0.0  # constant rows: scipy's zscore gives NaN, which becomes 0
    want = demo_reference(x)
    got = np.asarray(sig.brainbert_spectrogram_demo_order(jnp.asarray(x, jnp.float32)))
    assert got.shape == want.shape == (2, 3, 196, 40)
    assert max_abs(got, want) <= 1e-4
    assert np.all(got[0, 1] == 0.0)
    # Each kept row is exactly standardised (the default order is only roughly).
    live = got[1]
    np.testing.assert_allclose(live.mean(axis=-2), 0.0, atol=1e-4)
    np.testing.assert_allclose(live.std(axis=-2), 1.0, atol=1e-4)


def test_demo_order_differs_from_default_order():
    rng = np.random.default_rng(11)
    x = jnp.asarray(white(rng, (2, N_SAMPLES)), jnp.float32)
    default = np.asarray(sig.brainbert_spectrogram(x))
    demo = np.asarray(sig.brainbert_spectrogram_demo_order(x))
    assert default.shape[-2] == 186 and demo.shape[-2] == 196
    # Same frames (demo's 5..200 vs default's 10..195), different normalisation statistics.
    assert max_abs(default, demo[:, 5:-5]) > 1e-3
