"""How long a full Neuroprobe Lite run takes: measured feature throughput -> an estimate.

    python scripts/benchmark_neuroprobe.py                 # this machine, full-size BrainBERT
    python scripts/benchmark_neuroprobe.py --tiny          # seconds; run by the test suite

Measures, on random 1 s windows of 2048 samples:
  * the Laplacian + |STFT| features of the linear baseline (electrode-windows/s), against
    the same computation with `torch.stft` (Neuroprobe's own example code path) as reference;
  * frozen BrainBERT on the 1 s window (notch + Laplacian + spectrogram + model + pooling),
    electrode-windows/s, in float32 and bfloat16;
and prints the expected feature time of Neuroprobe Lite (12 sessions x <= 3500 windows x
~120 electrodes; each window is featurised once and reused by the 15 tasks and 3 split types).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from popt_jax.ieeg import brainbert as bb_lib  # noqa: E402
from popt_jax.ieeg import neuroprobe as NP  # noqa: E402
from popt_jax.ieeg import preprocess as pp  # noqa: E402

LITE_ELECTRODE_WINDOWS = 12 * 3500 * 120


def _rate(fn, n_items: int, repeats: int) -> float:
    fn()  # warm-up / compile
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n_items * repeats / (time.perf_counter() - t0)


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--electrodes", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.tiny:
        args.windows, args.electrodes, args.repeats = 4, 6, 1
    rng = np.random.default_rng(0)
    wav = rng.normal(size=(args.windows, args.electrodes, NP.FS)).astype(np.float32)
    names = [f"A{i + 1}" for i in range(args.electrodes)]
    n = args.windows * args.electrodes
    out: dict[str, float] = {}
    out["stft_features"] = _rate(lambda: NP.stft_abs(NP.laplacian_within(wav, names)), n,
                                 args.repeats)
    try:
        import torch

        def torch_ref():
            x = torch.from_numpy(NP.laplacian_within(wav, names).reshape(n, -1))
            return torch.stft(x, n_fft=512, hop_length=128, window=torch.hann_window(512),
                              return_complex=True, center=True).abs()

        out["stft_features_torch"] = _rate(torch_ref, n, args.repeats)
    except ImportError:
        pass
    cfg = (bb_lib.BrainBERTConfig(hidden_dim=32, n_heads=2, ff_dim=64, n_layers=1) if args.tiny
           else bb_lib.BrainBERTConfig())
    from flax import nnx

    model = bb_lib.BrainBERT(cfg, rngs=nnx.Rngs(0))
    x = pp.notch_filter(NP.laplacian_within(wav, names), NP.FS).astype(np.float32)
    for name, dtype in (("brainbert_1s_fp32", jnp.float32), ("brainbert_1s_bf16", jnp.bfloat16)):
        out[name] = _rate(lambda d=dtype: np.asarray(bb_lib.brainbert_embed(
            model, x, compute_dtype=d, chunk=None)), n, args.repeats)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
    for k, v in out.items():
        print(f"{k:<24} {v:12.1f} electrode-windows/s")
    if "stft_features_torch" in out:
        print(f"ratio vs reference (stft features, popt_jax / torch.stft): "
              f"{out['stft_features'] / out['stft_features_torch']:.2f}x")
    for k in ("stft_features", "brainbert_1s_fp32", "brainbert_1s_bf16"):
        print(f"Neuroprobe Lite, {k}: about {LITE_ELECTRODE_WINDOWS / out[k] / 60:.1f} min of "
              "feature computation (each window once; linear fits excluded)")
    return out


if __name__ == "__main__":
    main()
