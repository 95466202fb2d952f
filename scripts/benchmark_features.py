"""Throughput of the BrainBERT feature path on whatever device JAX sees.

    python scripts/benchmark_features.py                      # defaults: 64 windows x 16 electrodes
    python scripts/benchmark_features.py --windows 8 --electrodes 8 --repeats 3   # quick

Prints electrode-windows/s for
  * `brainbert_embed` (STFT + BrainBERT "stft large" + centre pooling) in float32 and bfloat16,
  * the jitted STFT alone (full rfft path, and the 40-row matmul path used by BrainBERT) and the
    whole z-scored spectrogram,
  * `scipy.signal.stft` on the same input (the upstream front end), with the speed-up.
Timings exclude compilation (one warm-up call) and wait for the device (`block_until_ready`).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal
from flax import nnx

from popt_jax import ieeg as models
from popt_jax.ieeg import signal


def _time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--electrodes", type=int, default=16)
    p.add_argument("--samples", type=int, default=10240, help="5 s at 2048 Hz")
    p.add_argument("--chunk", type=int, default=256, help="electrode-windows per inner step")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-model", action="store_true", help="front end only")
    args = p.parse_args()

    n = args.windows * args.electrodes
    rng = np.random.default_rng(0)
    wav = rng.standard_normal((args.windows, args.electrodes, args.samples)).astype(np.float32)
    wav_dev = jnp.asarray(wav)
    print(f"devices: {jax.devices()}")
    print(f"input: {args.windows} windows x {args.electrodes} electrodes x {args.samples} samples "
          f"= {n} electrode-windows")

    t_scipy = min(_scipy_time(wav) for _ in range(args.repeats))
    print(f"scipy.signal.stft (float64, host)        {n / t_scipy:12.1f} electrode-windows/s")

    full = jax.jit(lambda x: jnp.abs(signal.stft(x, nperseg=400, noverlap=350)))
    t_full = _time(lambda: full(wav_dev), args.repeats)
    print(f"jax stft, all 201 rows (rfft)            {n / t_full:12.1f} electrode-windows/s"
          f"   x{t_scipy / t_full:.1f} vs scipy")
    rows = jax.jit(lambda x: jnp.abs(signal.stft(x, nperseg=400, noverlap=350, n_freqs=40)))
    t_rows = _time(lambda: rows(wav_dev), args.repeats)
    print(f"jax stft, 40 rows (DFT matmul)           {n / t_rows:12.1f} electrode-windows/s"
          f"   x{t_scipy / t_rows:.1f} vs scipy")
    t_spec = _time(lambda: signal.brainbert_spectrogram(wav_dev), args.repeats)
    print(f"jax brainbert_spectrogram (z-scored)     {n / t_spec:12.1f} electrode-windows/s"
          f"   x{t_scipy / t_spec:.1f} vs scipy stft alone")

    if args.skip_model:
        return
    model = models.BrainBERT(rngs=nnx.Rngs(0))
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        t = _time(lambda d=dtype: models.brainbert_embed(model, wav_dev, compute_dtype=d,
                                                         chunk=args.chunk), args.repeats)
        print(f"brainbert_embed {name:<9} (STFT+BrainBERT) {n / t:12.1f} electrode-windows/s")


def _scipy_time(wav: np.ndarray) -> float:
    t0 = time.perf_counter()
    scipy.signal.stft(wav, 2048, nperseg=400, noverlap=350)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
