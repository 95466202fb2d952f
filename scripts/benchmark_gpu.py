"""Accelerator benchmark: BrainBERT extraction and the PopT training step at paper sizes, with MFU.

    python scripts/benchmark_gpu.py --budget-s 480      # on a GPU (falls back to CPU: reports it)
    python scripts/benchmark_gpu.py --tiny              # seconds, any device (tests run it)

Workloads (each skipped once `--budget-s` is spent; a failure is reported, not fatal):
  * extraction: `brainbert_embed` ("stft large") on [windows, electrodes, 10240] samples, in
    float32 and bfloat16; attention through `jax.nn.dot_product_attention` (cuDNN for
    bfloat16 on GPUs, XLA's for float32), checked against the einsum path (max |diff|);
  * PopT pretraining step (published size: hidden 512, 6 layers, 8 heads, FFN 2048, input
    768; batch 256 as the paper) on full-length batches (100 electrodes + CLS) and on a mixed
    batch (k ~ U{10..100}, token packing), float32 and bfloat16 (bf16 compute, fp32 params).
Prints examples/s (electrode-windows/s for extraction) and model FLOP utilisation: analytic
matmul FLOPs (forward; x3 for a training step) over time, divided by the dense peak of the
device kind (`PEAK_TFLOPS`; float32 against the TF32 peak, which XLA's default precision uses). A summary table ends the output.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Dense peak TFLOP/s by device-kind substring. "float32" is the TF32 tensor-core peak: JAX's
# default matmul precision runs float32 dots as TF32 on Ampere and newer GPUs (the H200's
# float32 peak without tensor cores, ~67 TFLOP/s, is exceeded by these programs).
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float32": 494.7},
    "H100": {"bfloat16": 989.0, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "L4": {"bfloat16": 121.0, "float32": 60.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
}


def peak_flops(device, dtype: str) -> float | None:
    """Dense peak FLOP/s of `device` for `dtype`, or None when the kind is not in the table."""
    kind = getattr(device, "device_kind", "")
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peaks[dtype] * 1e12
    return None


def brainbert_flops(frames: int, d: int, ff: int, layers: int, n_freqs: int = 40,
                    pooled: int = 10, nperseg: int = 400) -> float:
    """Forward matmul FLOPs of one electrode-window in `brainbert_embed` (as implemented:
    the last layer's post-attention part on the `pooled` frames only)."""
    stft = 2 * (frames + 20) * nperseg * 2 * n_freqs  # DFT matmul, cos and sin rows
    proj = 2 * frames * n_freqs * d
    full = 2 * frames * (4 * d * d + 2 * d * ff) + 4 * frames * frames * d
    last = 2 * frames * 3 * d * d + 4 * frames * frames * d + 2 * pooled * (d * d + 2 * d * ff)
    return stft + proj + (layers - 1) * full + last


def popt_step_flops(tokens: np.ndarray, input_dim: int, d: int, ff: int, layers: int) -> float:
    """Training-step matmul FLOPs (3x forward) of a batch whose examples hold `tokens` real
    tokens (CLS included); padding excluded, so packed and padded runs share one count."""
    t = np.asarray(tokens, np.float64)
    per_token = 2 * (input_dim * d + layers * (4 * d * d + 2 * d * ff))
    attention = layers * 4 * t * t * d
    return float(3 * np.sum(t * per_token + attention))


def _timed(fn, min_iters: int, max_s: float) -> tuple[float, int]:
    """(seconds per call, calls): one warm-up (compile), then calls until both limits met."""
    jax.block_until_ready(fn())
    n, t0 = 0, time.perf_counter()
    while n < min_iters or (time.perf_counter() - t0 < max_s and n < 50 * min_iters):
        out = fn()
        n += 1
        if n >= min_iters and time.perf_counter() - t0 >= max_s:
            break
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n, n


def run_extraction(args, rows, dtype):
    from popt_jax import ieeg

    cfg = ieeg.BrainBERTConfig(hidden_dim=args.bb_hidden, n_layers=args.bb_layers,
                               n_heads=args.bb_heads, ff_dim=args.bb_ff)
    model = ieeg.BrainBERT(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    wav = jnp.asarray(rng.standard_normal((args.windows, args.electrodes, 10240)), jnp.float32)
    dt = jnp.dtype(dtype)
    if dt == jnp.float32:  # the fused path must agree with the einsum path
        a = ieeg.brainbert_embed(model, wav[:1], compute_dtype=dt, chunk=None)
        b = ieeg.brainbert_embed(model, wav[:1], compute_dtype=dt, chunk=None, attention="einsum")
        print(f"  fused vs einsum attention (float32): max |diff| "
              f"{float(jnp.max(jnp.abs(a - b))):.2e}")
    sec, n = _timed(lambda: ieeg.brainbert_embed(model, wav, compute_dtype=dt,
                                                 chunk=args.chunk or None), 2, args.time_s)
    ew = args.windows * args.electrodes
    flops = ew * brainbert_flops(186, args.bb_hidden, args.bb_ff, args.bb_layers)
    _record(rows, f"extraction {dt.name}", ew / sec, "electrode-windows/s", flops / sec, dt.name,
            n)


def run_popt(args, rows, dtype, mixed: bool):
    import ml_collections

    from popt_jax import ieeg
    from popt_jax.core import mesh as mesh_lib
    from popt_jax.core import steps
    from popt_jax.ieeg import objectives, optim

    cfg = ieeg.PopTConfig(input_dim=args.input_dim, hidden_dim=args.hidden, n_heads=args.heads,
                          ff_dim=args.ff, n_layers=args.layers)
    model = ieeg.PopT(cfg, rngs=nnx.Rngs(0), dtype=dtype)
    parts = steps.split_model(model)
    mesh = mesh_lib.make_mesh(len(jax.devices()))
    tx = optim.make_optimizer(ml_collections.ConfigDict(dict(
        optimizer="lamb", lr=5e-4, total_steps=1000, warmup=0.025, gamma=0.99, grad_clip=1.0)))
    params = mesh_lib.replicate(parts.params, mesh)
    opt_state = mesh_lib.replicate(tx.init(parts.params), mesh)
    step = objectives.make_train_step(objectives.PRETRAIN, parts, tx, mesh)
    rng = np.random.default_rng(0)
    b, n_tok = args.batch, args.tokens
    k = (rng.choice(np.arange(10, n_tok + 1, 10), b) if mixed else np.full(b, n_tok))
    pad = np.arange(n_tok)[None] >= k[:, None]
    batch = dict(
        x=np.where(pad[..., None], 0, rng.standard_normal((b, n_tok, args.input_dim))
                   ).astype(np.float32),
        pad_mask=pad, coords=rng.integers(0, 200, (b, n_tok, 3)).astype(np.int32),
        seq_id=(np.arange(n_tok)[None] >= (k[:, None] // 2)).astype(np.int32),
        cls_label=rng.integers(0, 2, b).astype(np.int32),
        token_label=np.where(pad, 0, rng.choice([0, 1, 2], p=[0.9, 0.05, 0.05],
                                                size=(b, n_tok))).astype(np.int32))
    g = mesh_lib.to_global(batch, mesh)
    spec = objectives.pack_spec(objectives.PRETRAIN, batch, mesh)
    key = jax.random.key(0, impl="rbg")
    state = {"p": params, "o": opt_state, "i": 0}

    def one():
        state["i"] += 1
        state["p"], state["o"], m, _ = step(state["p"], state["o"], g,
                                            steps.step_key(key, state["i"]), spec)
        return m

    sec, n = _timed(one, 3, args.time_s)
    flops = popt_step_flops(k + 1, args.input_dim, args.hidden, args.ff, args.layers)
    name = f"PopT step {jnp.dtype(dtype).name} {'mixed k, packed' if mixed else 'full 101'}"
    _record(rows, name, b / sec, "examples/s", flops / sec, jnp.dtype(dtype).name, n)


def _record(rows, name, rate, unit, flops_per_s, dtype, n):
    peak = peak_flops(jax.devices()[0], dtype)
    mfu = f"{100 * flops_per_s / peak:.1f}%" if peak else "n/a"
    rows.append((name, f"{rate:.1f} {unit}", f"{flops_per_s / 1e9:.1f}", mfu, str(n)))
    print(f"  {name}: {rate:.1f} {unit}, {flops_per_s / 1e9:.1f} GFLOP/s, MFU {mfu} "
          f"({n} timed calls)", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="wall-clock budget: workloads not started by then are skipped")
    p.add_argument("--time-s", type=float, default=10.0, help="timed seconds per workload")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--electrodes", type=int, default=128)
    p.add_argument("--chunk", type=int, default=0, help="brainbert_embed chunk (0 = none)")
    p.add_argument("--bb-hidden", type=int, default=768)
    p.add_argument("--bb-layers", type=int, default=6)
    p.add_argument("--bb-heads", type=int, default=12)
    p.add_argument("--bb-ff", type=int, default=3072)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--tokens", type=int, default=100, help="electrode tokens (CLS extra)")
    p.add_argument("--input-dim", type=int, default=768)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ff", type=int, default=2048)
    p.add_argument("--skip", default="", help="comma list of: extraction,popt,bf16,fp32,mixed")
    p.add_argument("--tiny", action="store_true",
                   help="tiny sizes, 0.2 s per workload, float32 full-batch only (2 compiles)")
    args = p.parse_args(argv)
    if args.tiny:
        args.windows, args.electrodes, args.bb_hidden, args.bb_layers = 2, 2, 32, 1
        args.bb_heads, args.bb_ff, args.batch, args.tokens = 4, 64, 4, 20
        args.input_dim, args.hidden, args.layers, args.heads, args.ff = 16, 32, 1, 4, 64
        args.time_s = 0.2
        args.skip = ",".join(filter(None, [args.skip, "bf16", "mixed"]))
    t_start = time.perf_counter()
    dev = jax.devices()[0]
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, {len(jax.devices())} x "
          f"{getattr(dev, 'device_kind', dev.platform)}"
          + ("" if jax.default_backend() == "gpu" else "  (no GPU: CPU figures, MFU n/a)"))
    skip = set(filter(None, args.skip.split(",")))
    dtypes = [d for d in (jnp.float32, jnp.bfloat16)
              if not ({"fp32"} if d == jnp.float32 else {"bf16"}) & skip]
    work = []
    if "extraction" not in skip:
        work += [(f"extraction {jnp.dtype(d).name}", run_extraction, (d,)) for d in dtypes]
    if "popt" not in skip:
        for mixed in [m for m in (False, True) if not (m and "mixed" in skip)]:
            work += [(f"PopT {jnp.dtype(d).name} {'mixed' if mixed else 'full'}", run_popt,
                      (d, mixed)) for d in dtypes]
    rows: list[tuple[str, ...]] = []
    for name, fn, extra in work:
        left = args.budget_s - (time.perf_counter() - t_start)
        if left <= 0:
            rows.append((name, "skipped (budget)", "", "", ""))
            continue
        print(f"{name} ({left:.0f} s of budget left)", flush=True)
        try:
            fn(args, rows, *extra)
        except Exception as err:  # report and go on: one broken workload must not hide others
            rows.append((name, f"failed: {type(err).__name__}", "", "", ""))
            print(f"  failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
    print(f"\nsummary ({time.perf_counter() - t_start:.0f} s, device "
          f"{getattr(dev, 'device_kind', dev.platform)})")
    head = ("workload", "throughput", "GFLOP/s", "MFU", "calls")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
