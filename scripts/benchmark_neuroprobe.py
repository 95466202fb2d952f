"""How long a full Neuroprobe Lite run takes: measured feature throughput -> an estimate.

    python scripts/benchmark_neuroprobe.py                 # this machine, full-size BrainBERT
    python scripts/benchmark_neuroprobe.py --tiny          # seconds; run by the test suite

Measures, on random 1 s windows of 2048 samples:
  * the Laplacian + |STFT| features of the linear baseline (electrode-windows/s), against
    the same computation with `torch.stft` (Neuroprobe's own example code path) as reference;
  * the host-side Laplacian + notch filters of the BrainBERT models (numpy/scipy, CPU);
  * frozen BrainBERT on the 1 s window (spectrogram + model + pooling), electrode-windows/s,
    in float32 and bfloat16;
  * frozen BrainBERT on a 5 s window (float32), for the 1 s / 5 s cost ratio that scales a
    5 s throughput measured elsewhere (e.g. `scripts/benchmark_gpu.py`) to 1 s windows;
  * one PopT fine-tuning step (`model=popt_finetune`: the published PopT, Neuroprobe Lite's
    ~120 electrodes padded to 128 tokens), examples/s;
and prints the expected time of Neuroprobe Lite on this machine: features (12 sessions x 3500
windows x the package's Lite electrodes per subject = 4,949,000 electrode-windows; each window
is featurised once and reused by the 15 tasks and 3 split types) and PopT fine-tuning (690
folds x `--ft-steps` steps x `--ft-batch` windows).
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

# Neuroprobe Lite: sum over its 12 sessions of 3500 windows x the subject's Lite electrodes
# (neuroprobe.config.NEUROPROBE_LITE_ELECTRODES: 120, 120, 119, 119, 109, 109, 120, 120, 119,
# 119, 120, 120); `lite_electrode_windows()` recomputes it from the package when installed.
LITE_ELECTRODE_WINDOWS = 4_949_000
# Fine-tunings of a full Lite run: Within-Session 12 sessions x 15 tasks x 2 folds,
# Cross-Session 12 x 15, Cross-Subject 10 x 15 (subject 2 trains, is not evaluated).
LITE_FOLDS = 12 * 15 * 2 + 12 * 15 + 10 * 15


def lite_electrode_windows() -> int:
    """Electrode-windows of one Lite pass from the `neuroprobe` package (else the constant)."""
    import os

    os.environ.setdefault("ROOT_DIR_BRAINTREEBANK", "/nonexistent")
    try:
        import neuroprobe.config as c
    except ImportError:
        return LITE_ELECTRODE_WINDOWS
    return sum(c.NEUROPROBE_LITE_MAX_SAMPLES * len(c.NEUROPROBE_LITE_ELECTRODES[f"btbank{s}"])
               for s, _ in c.NEUROPROBE_LITE_SUBJECT_TRIALS)


def popt_step_rate(tiny: bool, batch: int, tokens: int, repeats: int) -> float:
    """Examples/s of the PopT fine-tuning train step (the one `popt_finetune` runs)."""
    from ml_collections import config_dict

    from popt_jax.core import mesh as mesh_lib
    from popt_jax.core import steps
    from popt_jax.ieeg import objectives, optim, train
    from popt_jax.ieeg.popt import PopTConfig

    cfg = (PopTConfig(input_dim=32, hidden_dim=32, n_heads=2, ff_dim=64, n_layers=1) if tiny
           else PopTConfig())
    parts = steps.split_model(train.build_model(objectives.FINETUNE, cfg, seed=0))
    mesh = mesh_lib.make_mesh(1)
    ft = {"optimizer": "adamw", "lr": 5e-4, "total_steps": 2000, "warmup": 0.025,
          "gamma": 0.95, "weight_decay": 0.01, "body_lr_scale": 0.1, "grad_clip": 1.0}
    tx = optim.make_optimizer(config_dict.ConfigDict(ft))
    step = objectives.make_train_step(objectives.FINETUNE, parts, tx, mesh,
                                      loss_scaled_grad=True)
    rng = np.random.default_rng(0)
    batch = mesh_lib.to_global({
        "x": rng.normal(size=(batch, tokens, cfg.input_dim)).astype(np.float32),
        "pad_mask": np.zeros((batch, tokens), bool),
        "coords": rng.integers(0, 200, (batch, tokens, 3)).astype(np.int32),
        "seq_id": np.zeros((batch, tokens), np.int32),
        "label": rng.integers(0, 2, batch).astype(np.int32)}, mesh)
    state = [mesh_lib.replicate(parts.params, mesh),
             mesh_lib.replicate(tx.init(parts.params), mesh)]
    key = jax.random.key(0)

    def run():
        state[0], state[1], _, g = step(state[0], state[1], batch, key)
        jax.block_until_ready(g)

    return _rate(run, batch["x"].shape[0], repeats)


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
    ap.add_argument("--ft-batch", type=int, default=128, help="popt_finetune batch (windows)")
    ap.add_argument("--ft-steps", type=int, default=2000, help="popt_finetune steps per fold")
    ap.add_argument("--bench-batch", type=int, default=8,
                    help="batch of the measured PopT step (examples/s scale to --ft-batch)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.windows, args.electrodes, args.repeats, args.bench_batch = 4, 6, 1, 4
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
    # The host-side front end of the BrainBERT models (Laplacian + line-noise notches, numpy /
    # scipy on the CPU) runs before the device call on every batch of windows.
    out["notch_laplacian_host"] = _rate(lambda: pp.notch_filter(
        NP.laplacian_within(wav, names), NP.FS), n, args.repeats)
    cfg = (bb_lib.BrainBERTConfig(hidden_dim=32, n_heads=2, ff_dim=64, n_layers=1) if args.tiny
           else bb_lib.BrainBERTConfig())
    from flax import nnx

    model = bb_lib.BrainBERT(cfg, rngs=nnx.Rngs(0))
    x = pp.notch_filter(NP.laplacian_within(wav, names), NP.FS).astype(np.float32)
    for name, dtype in (("brainbert_1s_fp32", jnp.float32), ("brainbert_1s_bf16", jnp.bfloat16)):
        out[name] = _rate(lambda d=dtype: np.asarray(bb_lib.brainbert_embed(
            model, x, compute_dtype=d, chunk=None)), n, args.repeats)
    x5 = np.tile(x, (1, 1, 5))  # a 5 s window (10240 samples): the pretraining length
    out["brainbert_5s_fp32"] = _rate(lambda: np.asarray(bb_lib.brainbert_embed(
        model, x5, chunk=None)), n, args.repeats)
    out["popt_finetune_step"] = popt_step_rate(args.tiny, args.bench_batch, 128, args.repeats)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
    for k, v in out.items():
        unit = "examples/s" if k == "popt_finetune_step" else "electrode-windows/s"
        print(f"{k:<24} {v:12.1f} {unit}")
    print(f"BrainBERT 1 s / 5 s throughput ratio (fp32): "
          f"{out['brainbert_1s_fp32'] / out['brainbert_5s_fp32']:.2f}x")
    if "stft_features_torch" in out:
        print(f"ratio vs reference (stft features, popt_jax / torch.stft): "
              f"{out['stft_features'] / out['stft_features_torch']:.2f}x")
    ew = lite_electrode_windows()
    print(f"Neuroprobe Lite: {ew:,} electrode-windows (12 sessions x 3500 windows x Lite "
          "electrodes)")
    for k in ("stft_features", "brainbert_1s_fp32", "brainbert_1s_bf16"):
        print(f"Neuroprobe Lite, {k}: about {ew / out[k] / 60:.1f} min of "
              "feature computation (each window once; linear fits excluded)")
    ft_examples = LITE_FOLDS * args.ft_steps * args.ft_batch
    print(f"Neuroprobe Lite, popt_finetune: {LITE_FOLDS} folds x {args.ft_steps} steps x "
          f"batch {args.ft_batch} = {ft_examples:,} examples: about "
          f"{ft_examples / out['popt_finetune_step'] / 3600:.1f} h of fine-tuning steps")
    return out


if __name__ == "__main__":
    main()
