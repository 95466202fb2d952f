"""PopT pretraining-step throughput: popt_jax (float32, bfloat16) beside the PyTorch reference.

    python scripts/benchmark_train.py                    # batch 32, the published PopT size
    python scripts/benchmark_train.py --quick            # hidden 128, 2 layers, 2 repeats

One step = forward (dropout on) + the pretraining loss (CLS BCE + token BCE) + backward +
global-norm clipping (1.0) + LAMB, on the same batch in both frameworks:
  * popt_jax: `train_lib.make_train_step` (one jitted function, donated state, LAMB with
    torch_optimizer semantics), run twice: on the padded batch as given ("padded"), and with
    token packing ("packed", what training uses: `train_lib.pack_spec` -> the per-token
    layers see only real tokens, and the last layer's post-attention part only the rows the
    loss reads (CLS + labelled tokens); same loss and gradients, see tests/test_train.py);
  * PyTorch: `tests/torch_reference.RefPopT` + `TorchLamb` below (torch_optimizer.Lamb's
    update rule, written out here) + `clip_grad_norm_`, on the padded batch (as upstream).
Reported as examples/s (best of `--repeats` timed steps after a warm-up/compile step) with
the JAX/torch ratio, for
  * padded-to-max batches: every batch holds `--max-electrodes` tokens, example i has
    k_i ~ U{10, 20, ..., max} real ones (the pretraining task's electrode subsets);
  * bucketed batches: the data layer pads a batch only to its bucket edge (`--buckets`,
    default the data layer's 16/32/64/128, assuming batches grouped by bucket); the figure is
    the examples/s of the whole mix (each bucket timed on its own, weighted by frequency).
The model FLOPs of a step (matmuls only, forward + backward = 3x forward, padded tokens
included) over the step time give the achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
from flax import nnx

from popt_jax import ieeg as models
from popt_jax.core import mesh as mesh_lib
from popt_jax.core import steps
from popt_jax.ieeg import objectives, optim
from popt_jax.ieeg.datasets import DEFAULT_BUCKETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TorchLamb(torch.optim.Optimizer):
    """LAMB with `torch_optimizer.Lamb`'s rule (upstream's optimiser), defaults included.

    m, v: Adam moments (no bias correction unless `debias`); step = m / (sqrt(v) + eps)
    (+ weight_decay * w); trust = min(||w||, clamp_value) / ||step|| (1 if either is 0);
    w -= lr * trust * step.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                 clamp_value=10.0, debias=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      clamp_value=clamp_value, debias=debias))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["m"], state["v"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                lr = group["lr"]
                if group["debias"]:
                    t = state["step"]
                    lr = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm = torch.norm(p).clamp(0, group["clamp_value"])
                u_norm = torch.norm(update)
                trust = 1.0 if (w_norm == 0 or u_norm == 0) else float(w_norm / u_norm)
                p.add_(update, alpha=-lr * trust)


def make_batch(rng: np.random.Generator, batch: int, n_tokens: int, k: np.ndarray,
               input_dim: int) -> dict[str, np.ndarray]:
    """A pretraining batch padded to `n_tokens`; example i has k[i] real tokens."""
    x = rng.standard_normal((batch, n_tokens, input_dim), dtype=np.float32)
    pad = np.arange(n_tokens)[None] >= k[:, None]
    seq = (np.arange(n_tokens)[None] >= (k[:, None] // 2)).astype(np.int32)
    token_label = rng.choice([0, 1, 2], p=[0.9, 0.05, 0.05], size=(batch, n_tokens))
    token_label = np.where(pad, 0, token_label).astype(np.int32)
    return dict(x=np.where(pad[..., None], 0, x).astype(np.float32), pad_mask=pad,
                coords=rng.integers(0, 200, (batch, n_tokens, 3)).astype(np.int32),
                seq_id=np.where(pad, 0, seq).astype(np.int32),
                cls_label=rng.integers(0, 2, batch).astype(np.int32), token_label=token_label)


def _config(steps: int = 1000):
    return ml_collections.ConfigDict(dict(optimizer="lamb", lr=5e-4, total_steps=steps,
                                          warmup=0.025, gamma=0.99, grad_clip=1.0))


def time_jax(popt_cfg, batches, dtype, repeats: int, pack: bool) -> dict[str, float]:
    """Best seconds per step of the jitted popt_jax step, per batch shape (dict)."""
    model = models.PopT(popt_cfg, rngs=nnx.Rngs(0), dtype=dtype)
    parts = steps.split_model(model)
    mesh = mesh_lib.make_mesh(1)
    tx = optim.make_optimizer(_config())
    params = mesh_lib.replicate(parts.params, mesh)
    opt_state = mesh_lib.replicate(tx.init(parts.params), mesh)
    step = objectives.make_train_step(objectives.PRETRAIN, parts, tx, mesh)
    key = jax.random.key(0, impl="rbg")
    out = {}
    for name, batch in batches.items():
        g = mesh_lib.to_global(batch, mesh)
        packed = objectives.pack_spec(objectives.PRETRAIN, batch, mesh) if pack else None
        t0 = time.perf_counter()
        params, opt_state, m, _ = step(params, opt_state, g, steps.step_key(key, 0), packed)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        best = float("inf")
        for i in range(repeats):
            t0 = time.perf_counter()
            params, opt_state, m, _ = step(params, opt_state, g, steps.step_key(key, i + 1), packed)
            jax.block_until_ready((params, m))
            best = min(best, time.perf_counter() - t0)
        out[name] = best
        rows = (f"packed: {packed.slots} token rows, {packed.out_slots} in the last layer"
                if packed else "padded")
        print(f"    jax {jnp.dtype(dtype).name:8s} {name:>10s}: {best * 1e3:8.1f} ms/step "
              f"({rows}; first call incl. compile {compile_s:.1f} s)", flush=True)
    return out


def step_flops(popt_cfg, batch: int, tokens: int) -> float:
    """Matmul FLOPs of one training step on [batch, tokens] (+ CLS), forward x 3."""
    h, f, d, L = popt_cfg.hidden_dim, popt_cfg.ff_dim, popt_cfg.input_dim, tokens + 1
    per_token = d * h + popt_cfg.n_layers * (4 * h * h + 2 * h * f)
    attention = popt_cfg.n_layers * 2 * L * h  # q.k and weights.v per query
    return 3 * 2 * batch * L * (per_token + attention)


def one_step(model, opt, bce, x, mask, coords, seq, cls_label, sel, tok_target) -> float:
    """Forward, pretraining loss, backward, clip at 1.0, LAMB: one PyTorch step."""
    _, cls_logits, tok_logits, _ = model(x, mask, coords, seq)
    loss = bce(cls_logits.squeeze(-1), cls_label) + bce(tok_logits.flatten()[sel], tok_target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach().item()


def time_torch(popt_cfg, batches, repeats: int) -> dict[str, float]:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torch_reference import RefPopT  # noqa: E402

    torch.manual_seed(0)
    model = RefPopT(input_dim=popt_cfg.input_dim, hidden_dim=popt_cfg.hidden_dim,
                    n_head=popt_cfg.n_heads, n_layers=popt_cfg.n_layers).train()
    opt = TorchLamb(model.parameters(), lr=5e-4)
    bce = torch.nn.BCEWithLogitsLoss()
    out = {}
    for name, b in batches.items():
        bsz = b["x"].shape[0]
        x = torch.from_numpy(np.concatenate([np.ones((bsz, 1, b["x"].shape[-1]), np.float32),
                                             b["x"]], axis=1))
        mask = torch.from_numpy(np.concatenate([np.zeros((bsz, 1), bool), b["pad_mask"]], 1))
        coords = torch.from_numpy(b["coords"]).long()
        seq = torch.from_numpy(b["seq_id"]).long()
        cls_label = torch.from_numpy(b["cls_label"]).float()
        tl_ = torch.from_numpy(b["token_label"]).flatten()
        sel = (tl_ == 1) | (tl_ == 2)
        tok_target = (tl_[sel] == 1).float()

        args = (x, mask, coords, seq, cls_label, sel, tok_target)
        one_step(model, opt, bce, *args)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            one_step(model, opt, bce, *args)
            best = min(best, time.perf_counter() - t0)
        out[name] = best
        print(f"    torch float32  {name:>10s}: {best * 1e3:8.1f} ms/step", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--input-dim", type=int, default=768)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ff", type=int, default=2048)
    p.add_argument("--max-electrodes", type=int, default=100)
    p.add_argument("--buckets", default=",".join(map(str, DEFAULT_BUCKETS)),
                   help="bucket edges in tokens (default: the data layer's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-bf16", action="store_true")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads (1 avoids OpenMP spinning on a busy machine)")
    p.add_argument("--quick", action="store_true", help="hidden 128, ff 256, 2 layers, 2 repeats")
    args = p.parse_args()
    if args.quick:
        args.hidden, args.ff, args.layers, args.heads, args.repeats = 128, 256, 2, 4, 2
    torch.set_num_threads(args.torch_threads)
    popt_cfg = models.PopTConfig(input_dim=args.input_dim, hidden_dim=args.hidden,
                                 n_heads=args.heads, ff_dim=args.ff, n_layers=args.layers)
    rng = np.random.default_rng(0)
    edges = sorted(int(e) for e in args.buckets.split(","))
    ks = np.arange(10, args.max_electrodes + 1, 10)
    # Frequency of each bucket under k ~ U{10, 20, ..., max}.
    bucket_of_k = {int(k): next(e for e in edges if e >= k) for k in ks}
    freq = {e: sum(1 for k in ks if bucket_of_k[int(k)] == e) / len(ks) for e in edges}
    freq = {e: f for e, f in freq.items() if f > 0}
    padded = {"padded": make_batch(rng, args.batch, args.max_electrodes,
                                   rng.choice(ks, args.batch), args.input_dim)}
    bucketed = {}
    for e in freq:
        in_bucket = np.asarray([k for k in ks if bucket_of_k[int(k)] == e])
        bucketed[f"bucket{e}"] = make_batch(rng, args.batch, e, rng.choice(in_bucket, args.batch),
                                            args.input_dim)
    print(f"JAX {jax.__version__} on {jax.devices()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"PopT hidden {args.hidden}, {args.layers} layers, {args.heads} heads, ff {args.ff}, "
          f"input {args.input_dim}; batch {args.batch}; k ~ U{{10..{args.max_electrodes}}}; "
          f"buckets {sorted(freq)}")
    both = {**padded, **bucketed}

    def mix(times):  # examples/s of the bucket mix
        return args.batch / sum(freq[e] * times[f"bucket{e}"] for e in freq)

    rows = {}
    print("timing (best of %d):" % args.repeats)
    for dtype in [jnp.float32] + ([] if args.skip_bf16 else [jnp.bfloat16]):
        for pack in (False, True):
            name = f"jax {jnp.dtype(dtype).name} {'packed' if pack else 'padded'}"
            rows[name] = time_jax(popt_cfg, both, dtype, args.repeats, pack)
    if not args.skip_torch:
        rows["torch float32"] = time_torch(popt_cfg, both, args.repeats)
    top = bucket_of_k[int(ks.max())]  # a random batch almost surely holds a k = max example

    def rates(times):
        return {"padded to max": args.batch / times["padded"],
                f"random batch ({top})": args.batch / times[f"bucket{top}"],
                "grouped buckets": mix(times)}

    print()
    cols = list(rates(rows["jax float32 padded"]))
    print(f"{'examples/s':26s}" + "".join(f"{c:>22s}" for c in cols))
    for name, times in rows.items():
        r = rates(times)
        print(f"{name:26s}" + "".join(f"{r[c]:22.2f}" for c in cols))
    if "torch float32" in rows:
        ref = rates(rows["torch float32"])
        for name in [n for n in rows if n != "torch float32"]:
            r = rates(rows[name])
            print(f"{name + ' / torch':26s}" + "".join(f"{r[c] / ref[c]:21.2f}x" for c in cols))
    flops = step_flops(popt_cfg, args.batch, args.max_electrodes)
    real = float(np.mean(padded["padded"]["pad_mask"] == 0))
    print(f"\npadded-to-max batch: {flops / 1e9:.1f} GFLOP per step (matmuls, padded tokens "
          f"included; {real:.0%} of the electrode tokens are real)")
    for name, times in rows.items():
        print(f"  {name:26s} {flops / times['padded'] / 1e9:7.1f} GFLOP/s")
    print(f"(grouped buckets assumes batches grouped by length; a shuffled batch is padded to "
          f"the bucket of its longest example, {top} tokens here)")


if __name__ == "__main__":
    main()
