"""Throughput of the brain encoder on whatever device JAX sees (and PyTorch on the CPU).

    python scripts/benchmark_brain_encoder.py                    # upstream sizes (slow on CPU)
    python scripts/benchmark_brain_encoder.py --skip-extraction          # decoder step only
    python scripts/benchmark_brain_encoder.py --tiny                     # seconds (run by a test)

Prints images/s for
  * one decoder training step from cached features (forward, backward, clip + AdamW) in JAX,
    with the grouped readout (the default) and the dense one, beside the same step in
    PyTorch written as upstream's (`tests/torch_reference_brain_encoder.py`: `nn.MultiheadAttention`,
    Linear over every query, then the masks) on the CPU, with `ratio vs reference` lines;
  * frozen-backbone feature extraction (`dinov2.extract_features`, `dinov2_q` of the last
    block) in float32 and bfloat16, for a random DINOv2 of ViT-B/14 size or a small one.
Timings exclude compilation (one warm-up call) and wait for the device; best of `--repeats`,
the three decoder steps taking turns within each repeat (a shared machine's load hits all).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from popt_jax.core import mesh as mesh_lib  # noqa: E402
from popt_jax.core import steps  # noqa: E402
from popt_jax.fmri import dinov2  # noqa: E402
from popt_jax.fmri.decoder import BrainEncoder, BrainEncoderConfig  # noqa: E402
from popt_jax.fmri.train import make_steps  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _best(fn, repeats: int) -> float:
    return _best_of({"fn": fn}, repeats)["fn"]


def _best_of(fns: dict, repeats: int) -> dict[str, float]:
    """Best seconds of each callable, taking turns each repeat so that the load of a shared
    machine hits all of them alike (one warm-up call each first)."""
    for fn in fns.values():
        fn()  # compile / warm up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


FAMILY_SIZES = (7, 4, 5, 3, 5)  # named ROIs of the five query families (NSD: 24)


def _masks(n_v: int, rng) -> np.ndarray:
    """Masks shaped like the challenge's: in each family a vertex is in at most one ROI (the
    visual ROIs tile a contiguous early-visual stretch, category ROIs are patches that overlap
    it and each other), 'Unknown' takes the rest; each vertex reads 1-3 queries."""
    rows = []
    vis = np.zeros(n_v, np.int64)
    cut = np.linspace(0, int(0.3 * n_v), FAMILY_SIZES[0] + 1).astype(int)
    for i in range(FAMILY_SIZES[0]):
        vis[cut[i]:cut[i + 1]] = i + 1
    rows += [vis == r for r in range(1, FAMILY_SIZES[0] + 1)]
    for n_roi in FAMILY_SIZES[1:]:
        roi = np.zeros(n_v, np.int64)
        for r in range(1, n_roi + 1):  # one contiguous patch per ROI, 2-4% of the vertices
            start, size = rng.integers(0, n_v), int(rng.uniform(0.02, 0.04) * n_v)
            roi[np.arange(start, start + size) % n_v] = r
        rows += [roi == r for r in range(1, n_roi + 1)]
    m = np.stack(rows)
    return np.concatenate([m, ~m.any(0, keepdims=True)]).astype(np.float32)


def decoder_jax(a, lh_m, rh_m, grouped: bool = True):
    """One JAX decoder training step (a callable that waits for its result)."""
    cfg = BrainEncoderConfig(hidden_dim=a.dim, n_heads=a.heads, ff_dim=a.ff,
                             lh_vertices=a.vertices, rh_vertices=a.vertices,
                             lh_queries=len(lh_m), rh_queries=len(rh_m),
                             grouped_readout=grouped)
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
        "weight": np.ones(a.batch, np.float32)}, mesh, keys=None)
    key = jax.random.key(0)

    def step():
        state["params"], state["opt"], loss, _ = train_step(state["params"], state["opt"],
                                                             batch, key)
        jax.block_until_ready(loss)

    return step


def decoder_torch(a, lh_m, rh_m):
    """The same step in PyTorch, written like upstream's (a callable)."""
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

    return step


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


TINY = dict(batch=4, dim=32, grid=5, vertices=300, heads=4, ff=48, backbone="small",
            image_size=56, extract_batch=2, repeats=1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="decoder batch (upstream: 16)")
    p.add_argument("--dim", type=int, default=768, help="feature channels = decoder width")
    p.add_argument("--grid", type=int, default=31, help="feature grid side (434 px -> 31)")
    p.add_argument("--vertices", type=int, default=19004, help="vertices per hemisphere")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--ff", type=int, default=1024)
    p.add_argument("--backbone", choices=("vitb14", "small"), default="vitb14")
    p.add_argument("--image-size", type=int, default=425)
    p.add_argument("--extract-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--skip-extraction", action="store_true")
    p.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks the script runs")
    a = p.parse_args(argv)
    if a.tiny:
        for k, v in TINY.items():
            setattr(a, k, v)
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform} ({jax.devices()[0]}); "
          f"decoder batch {a.batch}, features [{a.dim}, {a.grid}, {a.grid}], "
          f"{a.vertices} vertices x 2 hemispheres")
    rng = np.random.default_rng(1)
    lh_m, rh_m = _masks(a.vertices, rng), _masks(a.vertices, rng)
    reads = np.concatenate([lh_m.sum(0), rh_m.sum(0)])
    print(f"{len(lh_m) + len(rh_m)} queries; a vertex reads {int(reads.min())}-{int(reads.max())} "
          f"(mean {reads.mean():.2f}) of them")
    steps_ = {"grouped": decoder_jax(a, lh_m, rh_m, grouped=True),
              "dense": decoder_jax(a, lh_m, rh_m, grouped=False)}
    if not a.skip_torch:
        import torch

        torch.set_num_threads(a.threads)
        steps_["torch"] = decoder_torch(a, lh_m, rh_m)
    rate = {k: a.batch / t for k, t in _best_of(steps_, a.repeats).items()}
    print(f"decoder train step, JAX grouped readout: {rate['grouped']:9.2f} images/s")
    print(f"decoder train step, JAX dense readout:   {rate['dense']:9.2f} images/s")
    if not a.skip_torch:
        th = rate["torch"]
        print(f"decoder train step, PyTorch reference:   {th:9.2f} images/s "
              f"(CPU, {torch.get_num_threads()} threads)")
        print(f"ratio vs reference: decoder step, grouped readout {rate['grouped'] / th:.2f}x")
        print(f"ratio vs reference: decoder step, dense readout {rate['dense'] / th:.2f}x")
    if a.skip_extraction:
        return
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        r = extraction(a, dtype)
        print(f"feature extraction {a.backbone} {a.image_size}px {name}: {r:8.2f} images/s")


if __name__ == "__main__":
    main()
