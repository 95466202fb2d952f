"""Throughput of the brain encoder on whatever device JAX sees (and PyTorch on the CPU).

    python scripts/benchmark_brain_encoder.py                    # upstream sizes (slow on CPU)
    python scripts/benchmark_brain_encoder.py --grid 16 --vertices 2000 --batch 8 \\
        --backbone small --image-size 224 --extract-batch 4 --repeats 3      # quick

Prints images/s for
  * one decoder training step from cached features (forward, backward, clip + AdamW) in JAX,
    beside the same step in PyTorch (`tests/torch_reference_brain_encoder.py`, upstream's
    module layout with `nn.MultiheadAttention`) on the CPU;
  * frozen-backbone feature extraction (`dinov2.extract_features`, `dinov2_q` of the last
    block) in float32 and bfloat16, for a random DINOv2 of ViT-B/14 size or a small one.
Timings exclude compilation (one warm-up call) and wait for the device; best of `--repeats`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from popt_jax.core import mesh as mesh_lib
from popt_jax.core import steps
from popt_jax.fmri import dinov2
from popt_jax.fmri.decoder import BrainEncoder, BrainEncoderConfig
from popt_jax.fmri.train import make_steps

HERE = os.path.dirname(os.path.abspath(__file__))


def _best(fn, repeats: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _masks(n_rois: int, n_v: int, rng) -> np.ndarray:
    m = (rng.random((n_rois, n_v)) < 0.05).astype(np.float32)
    return np.concatenate([m, (m.sum(0) == 0)[None].astype(np.float32)])


def decoder_jax(a, lh_m, rh_m) -> float:
    cfg = BrainEncoderConfig(hidden_dim=a.dim, n_heads=a.heads, ff_dim=a.ff,
                             lh_vertices=a.vertices, rh_vertices=a.vertices,
                             lh_queries=len(lh_m), rh_queries=len(rh_m))
    model = BrainEncoder(cfg, lh_m, rh_m, rngs=nnx.Rngs(0))
    mesh = mesh_lib.make_mesh(1)
    tx = optax.chain(optax.clip_by_global_norm(0.1), optax.adamw(5e-4, weight_decay=1e-4))
    parts = steps.split_model(model)
    state = {"params": mesh_lib.replicate(parts.params, mesh)}
    state["opt"] = mesh_lib.replicate(tx.init(parts.params), mesh)
    train_step, _ = make_steps(parts, tx, mesh)
    rng = np.random.default_rng(0)
    batch = mesh_lib.to_global({
        "x": rng.standard_normal((a.batch, a.dim, a.grid, a.grid), np.float32),
        "lh": rng.standard_normal((a.batch, a.vertices), np.float32),
        "rh": rng.standard_normal((a.batch, a.vertices), np.float32),
        "weight": np.ones(a.batch, np.float32)}, mesh)
    key = jax.random.key(0)

    def step():
        state["params"], state["opt"], loss, _ = train_step(state["params"], state["opt"],
                                                             batch, key)
        jax.block_until_ready(loss)

    return a.batch / _best(step, a.repeats)


def decoder_torch(a, lh_m, rh_m) -> float:
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    import torch_reference_brain_encoder as R

    model = R.RefBrainEncoder(a.dim, a.heads, a.ff, "rois_all", a.vertices, a.vertices,
                              lh_m, rh_m).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, a.dim, a.grid, a.grid, generator=g)
    y_lh, y_rh = torch.randn(a.batch, a.vertices, generator=g), torch.randn(a.batch, a.vertices,
                                                                           generator=g)

    def step():
        lh, rh, _ = model(x)
        loss = torch.nn.functional.mse_loss(lh, y_lh) + torch.nn.functional.mse_loss(rh, y_rh)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()

    return a.batch / _best(step, a.repeats)


def extraction(a, dtype) -> float:
    if a.backbone == "vitb14":
        cfg = dinov2.DinoV2Config()
    else:
        cfg = dinov2.DinoV2Config(embed_dim=192, depth=4, num_heads=3)
    model = dinov2.DinoV2(cfg, rngs=nnx.Rngs(0))
    imgs = np.random.default_rng(0).integers(0, 256, (a.extract_batch, a.image_size,
                                                      a.image_size, 3), dtype=np.uint8)

    def run():
        jax.block_until_ready(dinov2.extract_features(model, imgs, compute_dtype=dtype))

    return a.extract_batch / _best(run, a.repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="decoder batch (upstream: 16)")
    p.add_argument("--dim", type=int, default=768, help="feature channels = decoder width")
    p.add_argument("--grid", type=int, default=31, help="feature grid side (434 px -> 31)")
    p.add_argument("--vertices", type=int, default=19004, help="vertices per hemisphere")
    p.add_argument("--rois", type=int, default=24, help="named ROIs per hemisphere")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--ff", type=int, default=1024)
    p.add_argument("--backbone", choices=("vitb14", "small"), default="vitb14")
    p.add_argument("--image-size", type=int, default=425)
    p.add_argument("--extract-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-torch", action="store_true")
    a = p.parse_args()
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform} ({jax.devices()[0]}); "
          f"decoder batch {a.batch}, features [{a.dim}, {a.grid}, {a.grid}], "
          f"{a.vertices} vertices x 2 hemispheres, {2 * (a.rois + 1)} queries")
    rng = np.random.default_rng(1)
    lh_m, rh_m = _masks(a.rois, a.vertices, rng), _masks(a.rois, a.vertices, rng)
    jx = decoder_jax(a, lh_m, rh_m)
    print(f"decoder train step, JAX:     {jx:9.1f} images/s")
    if not a.skip_torch:
        import torch

        th = decoder_torch(a, lh_m, rh_m)
        print(f"decoder train step, PyTorch: {th:9.1f} images/s "
              f"(CPU, {torch.get_num_threads()} threads; JAX/PyTorch {jx / th:.2f}x)")
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        r = extraction(a, dtype)
        print(f"feature extraction {a.backbone} {a.image_size}px {name}: {r:8.2f} images/s")


if __name__ == "__main__":
    main()
