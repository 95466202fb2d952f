"""BrainBERT feature extraction (STFT + BrainBERT + centre pooling): popt_jax vs upstream-style PyTorch.

    python scripts/benchmark_features.py              # "stft large", 4 windows x 16 electrodes
    python scripts/benchmark_features.py --tiny       # seconds: a 1-layer model (tests run it)

Reference ("torch, upstream style"): per window, scipy.signal.stft in float64 + z-score
(`tests/torch_reference.ref_brainbert_spectrogram`, upstream's front end), then
`RefBrainBERT` (torch.nn.TransformerEncoder, eval mode, no_grad) on all the window's
electrodes and the mean of the 10 centre frames. popt_jax: `brainbert_embed` on the same
windows, all of a call's windows in one jitted program (STFT as a DFT matmul; electrode-windows
in steps of `--chunk`, by default `brainbert.default_chunk()`: 4 on a CPU, small enough for
the activations to stay in cache; the last layer computing only the 10 pooled queries). Both use the same weights (converted with
`convert.brainbert_from_state_dict`), and the script checks the outputs agree (max |diff|).
Figures: electrode-windows/s, best of `--repeats` passes, the two frameworks alternating so
that load on a shared machine hits both; also the STFT front ends alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from popt_jax import ieeg as models  # noqa: E402
from popt_jax.ieeg import convert, signal  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _best(fns: dict, repeats: int) -> dict[str, float]:
    """Best seconds of each callable, alternating between them each repeat (one warm-up)."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--electrodes", type=int, default=16)
    p.add_argument("--samples", type=int, default=10240, help="5 s at 2048 Hz")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ff", type=int, default=3072)
    p.add_argument("--chunk", default="auto",
                   help="brainbert_embed chunk: auto (brainbert.default_chunk()), N, or 0 = none")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--tiny", action="store_true",
                   help="seconds: hidden 32, 1 layer, ff 64, 2 windows x 2 electrodes, 1 repeat")
    args = p.parse_args(argv)
    if args.tiny:
        args.hidden, args.layers, args.heads, args.ff = 32, 1, 4, 64
        args.windows, args.electrodes, args.repeats = 2, 2, 1
    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torch_reference import RefBrainBERT, randomize, ref_brainbert_spectrogram  # noqa: E402

    n = args.windows * args.electrodes
    wav = np.random.default_rng(0).standard_normal(
        (args.windows, args.electrodes, args.samples)).astype(np.float32)
    print(f"popt_jax from {os.path.dirname(models.__file__)}")
    print(f"JAX {jax.__version__} on {jax.devices()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"BrainBERT hidden {args.hidden}, {args.layers} layers, ff {args.ff}; {args.windows} "
          f"windows x {args.electrodes} electrodes x {args.samples} samples = {n} "
          f"electrode-windows; popt_jax chunk {args.chunk}")

    ref = randomize(RefBrainBERT(hidden_dim=args.hidden, nhead=args.heads, ff=args.ff,
                                 n_layers=args.layers), seed=0).eval()
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    model = convert.brainbert_from_state_dict(sd, {
        "hidden_dim": args.hidden, "nhead": args.heads, "layer_dim_feedforward": args.ff,
        "encoder_num_layers": args.layers, "input_dim": 40})

    @torch.no_grad()
    def torch_embed():
        out = []
        for w in wav:  # upstream: one window (all its electrodes) per call
            spec = torch.from_numpy(ref_brainbert_spectrogram(w))
            h = ref(spec, torch.zeros(spec.shape[:2], dtype=torch.bool))
            mid = h.shape[1] // 2
            out.append(h[:, mid - 5:mid + 5].mean(dim=1).numpy())
        return np.stack(out)

    wav_dev = jnp.asarray(wav)
    chunk = args.chunk if args.chunk == "auto" else (int(args.chunk) or None)

    def jax_embed():
        return np.asarray(jax.block_until_ready(
            models.brainbert_embed(model, wav_dev, chunk=chunk)))

    diff = float(np.max(np.abs(torch_embed() - jax_embed())))
    print(f"max |popt_jax - torch| over the embeddings: {diff:.2e}")
    t = _best({"torch": torch_embed, "jax": jax_embed}, args.repeats)
    print(f"extraction, torch upstream style (scipy STFT + nn.TransformerEncoder) "
          f"{n / t['torch']:10.2f} electrode-windows/s")
    print(f"extraction, popt_jax brainbert_embed float32                         "
          f"{n / t['jax']:10.2f} electrode-windows/s")
    print(f"ratio vs reference: extraction float32: {t['torch'] / t['jax']:.2f}x")

    rows = jax.jit(lambda x: signal.brainbert_spectrogram(x))
    front = _best({"scipy": lambda: scipy.signal.stft(wav, 2048, nperseg=400, noverlap=350),
                   "jax": lambda: jax.block_until_ready(rows(wav_dev))}, args.repeats)
    print(f"front end alone: scipy.signal.stft {n / front['scipy']:.1f}, jax "
          f"brainbert_spectrogram {n / front['jax']:.1f} electrode-windows/s")
    print(f"ratio vs reference: STFT front end: {front['scipy'] / front['jax']:.2f}x")


if __name__ == "__main__":
    main()
