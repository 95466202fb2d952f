"""Jitted STFT front end with `scipy.signal.stft` semantics and the BrainBERT spectrogram.

BrainBERT reads a 5 s sEEG window as a magnitude spectrogram: a short-time Fourier transform
(periodic Hann window, zero boundary extension, end padding to a whole number of hops,
one-sided, ``1 / sum(window)`` scaling), the lowest 40 frequency rows, a z-score of every row
over time and a trim of the frames spoiled by the boundary extension.

Everything here is a pure function of arrays, batched over any leading axes and safe under
`jax.jit`/`jax.vmap`. Nothing here knows the sampling rate: it only matters for the frequency
and time labels (`stft_frequencies`, `stft_times`), which take it as an argument.

Two normalisation orders exist upstream and both are offered, named after where they come from:

* `brainbert_spectrogram` (default; the PopT/BrainBERT data pipelines): z-score over the full
  time axis, then drop `trim` (10) frames at each end; ``[..., 10240] -> [..., 186, 40]``.
* `brainbert_spectrogram_demo_order` (the BrainBERT demo notebook): drop 5 frames at each end,
  then z-score; ``[..., 10240] -> [..., 196, 40]``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "hann_window",
    "stft",
    "stft_num_frames",
    "stft_frequencies",
    "stft_times",
    "zscore_time",
    "brainbert_spectrogram",
    "brainbert_spectrogram_demo_order",
]


def hann_window(n: int, periodic: bool = True) -> np.ndarray:
    """Hann window as `scipy.signal.get_window('hann', n)` (periodic by default), float64."""
    if n == 1:
        return np.ones(1)
    denom = n if periodic else n - 1
    k = np.arange(n)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * k / denom)


def _padded_length(n: int, nperseg: int, noverlap: int, boundary: bool, padded: bool) -> int:
    nstep = nperseg - noverlap
    if boundary:
        n += 2 * (nperseg // 2)
    if padded:
        n += (-(n - nperseg) % nstep) % nperseg
    return n


def stft_num_frames(
    n_samples: int, nperseg: int, noverlap: int, boundary: bool = True, padded: bool = True
) -> int:
    """Number of STFT frames scipy produces for a signal of `n_samples`."""
    length = _padded_length(n_samples, nperseg, noverlap, boundary, padded)
    if length < nperseg:
        raise ValueError(f"signal of {n_samples} samples is shorter than one segment ({nperseg})")
    return (length - nperseg) // (nperseg - noverlap) + 1


def stft_frequencies(fs: float, nfft: int, return_onesided: bool = True) -> np.ndarray:
    """Frequency label of every STFT row, as scipy returns it."""
    return np.fft.rfftfreq(nfft, 1.0 / fs) if return_onesided else np.fft.fftfreq(nfft, 1.0 / fs)


def stft_times(
    n_samples: int, fs: float, nperseg: int, noverlap: int, boundary: bool = True,
    padded: bool = True,
) -> np.ndarray:
    """Time label (segment centre, seconds) of every STFT frame, as scipy returns it."""
    n = stft_num_frames(n_samples, nperseg, noverlap, boundary, padded)
    t = (nperseg / 2 + np.arange(n) * (nperseg - noverlap)) / fs
    return t - (nperseg / 2) / fs if boundary else t


def _frames(x: jax.Array, nperseg: int, nstep: int, n_frames: int) -> jax.Array:
    """[..., L] -> [..., n_frames, nperseg] overlapping segments, hop `nstep`."""
    if nperseg % nstep == 0:
        # Hop divides the segment: cut the stream into hop-sized blocks and stack shifted
        # copies. Contiguous slices only, which XLA fuses far better than a gather.
        r = nperseg // nstep
        n_blocks = n_frames + r - 1
        blocks = x[..., : n_blocks * nstep].reshape(*x.shape[:-1], n_blocks, nstep)
        parts = [blocks[..., k : k + n_frames, :] for k in range(r)]
        return jnp.concatenate(parts, axis=-1)
    idx = np.arange(n_frames)[:, None] * nstep + np.arange(nperseg)[None, :]
    return x[..., idx]


@functools.lru_cache(maxsize=32)
def _dft_basis(nperseg: int, nfft: int, n_rows: int, periodic: bool, scale: float):
    """Window-folded real/imag DFT matrices for the first `n_rows` bins, float64 on host."""
    win = hann_window(nperseg, periodic)
    n = np.arange(nperseg)[:, None]
    k = np.arange(n_rows)[None, :]
    angle = 2.0 * np.pi * ((n * k) % nfft) / nfft
    cos = np.cos(angle) * win[:, None] * scale
    sin = -np.sin(angle) * win[:, None] * scale
    return cos, sin


def stft(
    x: jax.Array,
    *,
    nperseg: int = 256,
    noverlap: int | None = None,
    nfft: int | None = None,
    boundary: bool = True,
    padded: bool = True,
    return_onesided: bool = True,
    scaling: str = "spectrum",
    fs: float = 1.0,
    n_freqs: int | None = None,
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST,
) -> jax.Array:
    """Short-time Fourier transform along the last axis, `scipy.signal.stft` semantics.

    Covers the arguments upstream uses: periodic Hann window, no detrending,
    `boundary='zeros'` (True) or None (False), `padded`, one- or two-sided, and
    'spectrum' (1/sum(win)) or 'psd' (1/sqrt(fs*sum(win**2))) scaling. Axis labels come from
    `stft_frequencies` and `stft_times`.

    Args:
      x: real signal [..., n_samples].
      nperseg: segment length.
      noverlap: overlap between segments (default nperseg // 2).
      nfft: FFT length (default nperseg).
      boundary: extend both ends with nperseg // 2 zeros.
      padded: zero-pad the end to a whole number of hops.
      return_onesided: keep the nfft // 2 + 1 non-negative frequencies.
      scaling: 'spectrum' or 'psd'.
      fs: sampling rate; only the 'psd' scaling (1 / sqrt(fs * sum(win**2))) depends on it.
      n_freqs: if set, only the first `n_freqs` rows are computed, as a matrix product with a
        window-folded DFT basis (what BrainBERT needs: 40 of 201 rows); that is much cheaper
        than a full FFT and runs on matrix units.
      precision: matmul precision of the `n_freqs` path (HIGHEST keeps float32 exact on TPU
        and GPU, where the default would drop to bf16/tf32 passes).

    Returns:
      complex array [..., n_rows, n_frames] (frequency axis before time, as scipy).
    """
    if noverlap is None:
        noverlap = nperseg // 2
    if noverlap >= nperseg:
        raise ValueError("noverlap must be less than nperseg")
    nfft = nperseg if nfft is None else nfft
    if nfft < nperseg:
        raise ValueError("nfft must be >= nperseg")
    if scaling not in ("spectrum", "psd"):
        raise ValueError(f"scaling must be 'spectrum' or 'psd', got {scaling!r}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    nstep = nperseg - noverlap
    n = x.shape[-1]
    length = _padded_length(n, nperseg, noverlap, boundary, padded)
    left = nperseg // 2 if boundary else 0
    pad = [(0, 0)] * (x.ndim - 1) + [(left, length - n - left)]
    x = jnp.pad(x, pad)
    n_frames = stft_num_frames(n, nperseg, noverlap, boundary, padded)
    frames = _frames(x, nperseg, nstep, n_frames)  # [..., T, nperseg]

    win = hann_window(nperseg)
    scale = 1.0 / win.sum() if scaling == "spectrum" else 1.0 / math.sqrt(fs * (win**2).sum())
    n_total = nfft // 2 + 1 if return_onesided else nfft
    if n_freqs is not None:
        n_rows = min(n_freqs, n_total)
        cos, sin = _dft_basis(nperseg, nfft, n_rows, True, scale)
        basis = jnp.asarray(np.concatenate([cos, sin], axis=1), dtype=x.dtype)
        out = jnp.matmul(frames, basis, precision=precision)  # [..., T, 2 * rows]
        spec = jax.lax.complex(out[..., :n_rows], out[..., n_rows:])
    else:
        windowed = frames * jnp.asarray(win * scale, dtype=x.dtype)
        if return_onesided:
            spec = jnp.fft.rfft(windowed, n=nfft, axis=-1)
        else:
            spec = jnp.fft.fft(windowed, n=nfft, axis=-1)
    return jnp.swapaxes(spec, -1, -2)


def zscore_time(spec: jax.Array, zero_std_to_one: bool = True) -> jax.Array:
    """Z-score every row of [..., F, T] over time (population std, ddof 0).

    With `zero_std_to_one`, a constant row keeps std 1 (upstream's guard), so it becomes zeros
    instead of NaN.
    """
    mean = jnp.mean(spec, axis=-1, keepdims=True)
    std = jnp.std(spec, axis=-1, keepdims=True)
    if zero_std_to_one:
        std = jnp.where(std == 0, jnp.ones_like(std), std)
    return (spec - mean) / std


def _all_flat_guard(z: jax.Array) -> jax.Array:
    """Upstream quirk: if a whole z-scored call is constant, it becomes all ones.

    Upstream computes the spectrogram of one window for all its electrodes at once and, when
    the std over that entire [electrodes, F, T] array is 0 (every channel flat), replaces it by
    ones. Here a "call" is the last three axes (electrodes, F, T) for inputs with an electrode
    axis, or the single channel for 1-D inputs.
    """
    axes = tuple(range(max(z.ndim - 3, 0), z.ndim))
    flat = jnp.std(z, axis=axes, keepdims=True) == 0
    return jnp.where(flat, jnp.ones_like(z), z)


def _spectrogram(
    x: jax.Array,
    *,
    nperseg: int,
    noverlap: int,
    n_freqs: int,
    trim_before: int,
    trim_after: int,
    upstream_flat_quirk: bool,
    precision: jax.lax.Precision,
) -> jax.Array:
    spec = stft(x, nperseg=nperseg, noverlap=noverlap, n_freqs=n_freqs, precision=precision)
    mag = jnp.abs(spec)  # [..., F, T]
    if trim_before:
        mag = mag[..., trim_before:-trim_before]
    z = zscore_time(mag)
    if upstream_flat_quirk:
        z = _all_flat_guard(z)
    if trim_after:
        z = z[..., trim_after:-trim_after]
    z = jnp.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)
    return jnp.swapaxes(z, -1, -2)  # [..., T, F]: time-major tokens for the transformer


@functools.partial(
    jax.jit, static_argnames=("nperseg", "noverlap", "n_freqs", "trim", "upstream_flat_quirk",
                              "precision"))
def brainbert_spectrogram(
    x: jax.Array,
    *,
    nperseg: int = 400,
    noverlap: int = 350,
    n_freqs: int = 40,
    trim: int = 10,
    upstream_flat_quirk: bool = True,
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST,
) -> jax.Array:
    """BrainBERT input features, the order of the PopT/BrainBERT data pipelines.

    STFT -> first `n_freqs` rows -> magnitude -> z-score each row over all frames (std 0 -> 1)
    -> drop `trim` frames at each end -> NaN -> 0.

    Args:
      x: raw signal [..., n_samples]; for [..., electrodes, n_samples] the upstream
        all-flat guard (see `_all_flat_guard`) sees one window's electrodes together.
      nperseg, noverlap: STFT segment and overlap (samples).
      n_freqs: frequency rows kept.
      trim: frames dropped at each end after the z-score.
      upstream_flat_quirk: reproduce upstream's "all channels flat -> ones" replacement.
      precision: matmul precision of the DFT.

    Returns:
      float array [..., n_frames - 2 * trim, n_freqs]; [..., 186, 40] for 10240 samples.
    """
    return _spectrogram(x, nperseg=nperseg, noverlap=noverlap, n_freqs=n_freqs, trim_before=0,
                        trim_after=trim, upstream_flat_quirk=upstream_flat_quirk,
                        precision=precision)


@functools.partial(
    jax.jit, static_argnames=("nperseg", "noverlap", "n_freqs", "trim", "precision"))
def brainbert_spectrogram_demo_order(
    x: jax.Array,
    *,
    nperseg: int = 400,
    noverlap: int = 350,
    n_freqs: int = 40,
    trim: int = 5,
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST,
) -> jax.Array:
    """BrainBERT features in the demo-notebook order: trim `trim` frames first, then z-score.

    The notebook used `scipy.stats.zscore`, which yields NaN for a constant row; those become 0
    here (as a constant row does in the default order). [..., 10240] -> [..., 196, 40].
    """
    return _spectrogram(x, nperseg=nperseg, noverlap=noverlap, n_freqs=n_freqs,
                        trim_before=trim, trim_after=0, upstream_flat_quirk=False,
                        precision=precision)
