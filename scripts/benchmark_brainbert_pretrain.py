"""BrainBERT pretraining-step throughput: popt_jax beside the PyTorch reference; data feed.

    python scripts/benchmark_brainbert_pretrain.py              # default config model, batch 32
    python scripts/benchmark_brainbert_pretrain.py --model paper --batch 8   # published size
    python scripts/benchmark_brainbert_pretrain.py --feed       # HDF5 store vs on-the-fly STFT
    python scripts/benchmark_brainbert_pretrain.py --tiny       # seconds (run by the tests)

One step = fixed-type masking + BrainBERT and its spectrogram head (dropout 0.1, upstream's
training mode, in both) + the masked L1 loss + backward with upstream's loss x dloss scaling
+ global-norm clip 1.0 + LAMB, on the same batch of [B, 186, 40] spectrograms in both frameworks:
  * popt_jax: `brainbert_pretrain.make_pretrain_step` (one jitted function; the masks are
    drawn and applied INSIDE it);
  * PyTorch: tests/torch_reference_brainbert_pretrain.py (`RefBrainBERT`, `RefLamb`,
    upstream's train_step); its masks are made beforehand and not timed (upstream masks in
    the DataLoader workers), so the comparison favours the reference.
Reported as examples/s (median of `--repeats` timed steps after warm-up, the two frameworks
taking turns step by step) and the ratio.

`--feed` times what feeds one step of `--batch` spectrograms: reading random rows of an HDF5
spectrogram store (the layout `brainbert_data` writes, chunks of 16 rows, read row by row as
the grain source does) against computing them from raw 5 s windows with the jitted STFT
front end (compute only: reading the raw windows, 10240 samples each, would come on top).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # this checkout's package and references

import torch_reference as R  # noqa: E402
import torch_reference_brainbert_pretrain as RB  # noqa: E402

from popt_jax.core import mesh as mesh_lib  # noqa: E402
from popt_jax.core import steps  # noqa: E402
from popt_jax.ieeg import brainbert_data as bd  # noqa: E402
from popt_jax.ieeg import brainbert_pretrain as bp  # noqa: E402
from popt_jax.ieeg import convert, masking  # noqa: E402

SIZES = {"tiny": (32, 2, 64, 1), "default": (64, 2, 128, 2), "paper": (768, 12, 3072, 6)}
T, F = 186, 40


class _Conf(dict):
    __getattr__ = dict.get


def _time_in_turns(fns, repeats: int) -> list[float]:
    """Median seconds of each callable, the callables taking turns within each repeat (a
    change in a shared machine's load then reaches all of them alike)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def bench_step(size: str, batch: int, repeats: int) -> None:
    hidden, heads, ff, layers = SIZES[size]
    torch.manual_seed(0)
    ref = R.randomize(R.RefBrainBERT(F, hidden, heads, ff, layers), 0)
    model = convert.brainbert_from_state_dict(
        {k: v.detach().numpy() for k, v in ref.state_dict().items()},
        {"hidden_dim": hidden, "nhead": heads, "layer_dim_feedforward": ff,
         "encoder_num_layers": layers, "input_dim": F})
    spec = np.random.default_rng(0).standard_normal((batch, T, F)).astype(np.float32)
    cfg = masking.MaskConfig()
    conf = _Conf(optimizer="lamb", lr=1e-4, total_steps=1000, warmup=0.025, gamma=0.99,
                 grad_clip=1.0)
    tx = bp.make_optimizer(conf)
    mesh = mesh_lib.make_mesh(1)
    parts = steps.split_model(model)
    step = bp.make_pretrain_step(parts, tx, cfg, mesh)
    state = {"p": mesh_lib.replicate(parts.params, mesh),
             "o": mesh_lib.replicate(tx.init(parts.params), mesh)}
    x = jnp.asarray(spec)
    key = jax.random.key(0)

    def jax_step():
        state["p"], state["o"], m = step(state["p"], state["o"], x, key)
        jax.block_until_ready(m)

    res = masking.fixed_mask(jax.random.key(1), x, cfg)
    masked = torch.from_numpy(np.array(res.masked))
    target, mask = torch.from_numpy(spec), torch.from_numpy(np.array(res.loss_mask))
    ref.train()
    opt = RB.RefLamb(ref.parameters(), lr=1e-4)

    def torch_step():
        RB.ref_train_step(ref, opt, masked, target, mask)

    for fn in (jax_step, torch_step):  # compile / warm up
        fn()
        fn()
    t_jax, t_ref = _time_in_turns((jax_step, torch_step), repeats)
    print(f"model {size} (hidden {hidden}, {layers} layers), batch {batch}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"jax {jax.devices()[0].platform}")
    print(f"popt_jax step: {batch / t_jax:.1f} examples/s ({t_jax * 1e3:.1f} ms)")
    print(f"torch reference step: {batch / t_ref:.1f} examples/s ({t_ref * 1e3:.1f} ms)")
    print(f"ratio vs reference: {t_ref / t_jax:.2f}x")


def bench_feed(batch: int, repeats: int, rows: int) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "store.h5")
        with h5py.File(path, "w") as f:
            f.attrs["format"] = bd.STORE_FORMAT
            f.attrs["n_rows"] = rows
            d = f.create_dataset("spec", (rows, T, F), "float32", chunks=(16, T, F))
            for a in range(0, rows, 1024):
                n = min(1024, rows - a)
                d[a:a + n] = rng.standard_normal((n, T, F)).astype(np.float32)
        src = bd.SpectrogramSource(path)

        def read():
            for i in rng.integers(0, rows, batch):
                src[int(i)]

        wav = rng.standard_normal((batch, 10240)).astype(np.float32)

        def stft():
            jax.block_until_ready(bd.signal_lib.brainbert_spectrogram(
                jnp.asarray(wav)[:, None, :]))

        for fn in (read, stft):
            fn()
        t_read, t_stft = _time_in_turns((read, stft), repeats)
    print(f"feed {batch} spectrograms: HDF5 store {batch / t_read:.0f}/s "
          f"({t_read * 1e3:.1f} ms), on-the-fly jitted STFT {batch / t_stft:.0f}/s "
          f"({t_stft * 1e3:.1f} ms, compute only)")
    print(f"ratio HDF5 store vs on-the-fly STFT: {t_stft / t_read:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(SIZES), default="default")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--feed", action="store_true", help="time the data feed instead")
    ap.add_argument("--rows", type=int, default=4096, help="rows of the --feed store")
    ap.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    args = ap.parse_args()
    if args.tiny:
        bench_step("tiny", 4, 2)
        bench_feed(8, 2, 64)
        return
    if args.feed:
        bench_feed(args.batch, args.repeats, args.rows)
    else:
        bench_step(args.model, args.batch, args.repeats)


if __name__ == "__main__":
    main()
