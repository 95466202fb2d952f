"""PopT pretraining-step throughput on the batches the data loader really yields, vs PyTorch.

    python scripts/benchmark_train.py            # published PopT size, batch 32, 16 batches
    python scripts/benchmark_train.py --tiny     # seconds: tiny model and store (tests run it)

A feature store of random embeddings (`extract.write_random_features`, `--electrodes` >= 100
so every subset size k in 10..100 occurs) feeds the grain pipeline of training
(`datasets.make_dataset`, train=True). The same `--batches` batches' examples are timed as:
  * "torch (upstream collate)": `tests/torch_reference.RefPopT` + LAMB (torch_optimizer's
    rule) + clip_grad_norm_, each batch padded to its longest example (upstream's
    pad_sequence collate), batches in the loader's (shuffled) order;
  * "jax default loader": popt_jax's jitted step (`objectives.make_train_step`, token packing
    from `objectives.pack_spec`) on the batches as the default loader builds them (padded to
    the 16/32/64/128 buckets);
  * "jax grouped loader": the same step on `make_dataset(group_by_length=W,
    buckets=PRETRAIN_BUCKETS)`: the same examples (windows of W batches), grouped by length.
`--batches` is rounded up to a multiple of W, so all three see exactly the same examples.
One pass = every batch once (examples/s = examples / pass time); each distinct shape is
compiled before timing; best of `--repeats` passes, the frameworks taking turns within each
repeat. The machine is shared: run it twice.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from popt_jax import ieeg as models  # noqa: E402
from popt_jax.core import mesh as mesh_lib  # noqa: E402
from popt_jax.core import steps  # noqa: E402
from popt_jax.ieeg import objectives, optim  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(total_steps: int = 1000):
    return ml_collections.ConfigDict(dict(optimizer="lamb", lr=5e-4, total_steps=total_steps,
                                          warmup=0.025, gamma=0.99, grad_clip=1.0))


def loader_batches(features: Path, batch: int, n: int, group: int) -> list[dict]:
    """The first `n` training batches of the real pipeline (grouped by length if `group`)."""
    from popt_jax.ieeg import datasets as ds

    src = ds.PretrainSource(features, "train", ds.PretrainConfig(split_mode="random", val_frac=0.1))
    kw = dict(group_by_length=group, buckets=ds.PRETRAIN_BUCKETS) if group else {}
    it = iter(ds.make_dataset(src, batch_size=batch, train=True, seed=0, **kw))
    return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]


def save_batches(path: str, plain: list[dict], grouped: list[dict]) -> None:
    arrays = {f"{which}{i}/{k}": v for which, bs in (("plain", plain), ("grouped", grouped))
              for i, b in enumerate(bs) for k, v in b.items() if k != "x"}
    arrays.update({f"{which}{i}/x_shape": np.asarray(b["x"].shape)
                   for which, bs in (("plain", plain), ("grouped", grouped))
                   for i, b in enumerate(bs)})
    np.savez_compressed(path, **arrays)


def load_batches(path: str) -> tuple[list[dict], list[dict]]:
    """Batches from `save_batches`; x is redrawn (standard normal, zero at padding)."""
    rng = np.random.default_rng(0)
    out: dict[str, dict[int, dict]] = {"plain": {}, "grouped": {}}
    with np.load(path) as f:
        for name in f.files:
            head, key = name.split("/")
            which = "grouped" if head.startswith("grouped") else "plain"
            out[which].setdefault(int(head[len(which):]), {})[key] = f[name]
    for bs in out.values():
        for b in bs.values():
            x = rng.standard_normal(tuple(b.pop("x_shape")), dtype=np.float32)
            b["x"] = np.where(b["pad_mask"][..., None], 0, x).astype(np.float32)
    return tuple([bs[i] for i in sorted(bs)] for bs in (out["plain"], out["grouped"]))


def trim_to_longest(b: dict) -> dict:
    """Upstream's collate: pad a batch only to its longest example."""
    n = int((~b["pad_mask"]).sum(axis=1).max())
    return {k: (v[:, :n] if v.ndim >= 2 and v.shape[1] == b["pad_mask"].shape[1] else v)
            for k, v in b.items()}


def prepare_jax(popt_cfg, batches: list[dict], dtype=jnp.float32):
    """A function running one pass over `batches` with the packed popt_jax training step
    (every distinct program compiled beforehand)."""
    model = models.PopT(popt_cfg, rngs=nnx.Rngs(0), dtype=dtype)
    parts = steps.split_model(model)
    mesh = mesh_lib.make_mesh(1)
    tx = optim.make_optimizer(_config())
    params = mesh_lib.replicate(parts.params, mesh)
    opt_state = mesh_lib.replicate(tx.init(parts.params), mesh)
    step = objectives.make_train_step(objectives.PRETRAIN, parts, tx, mesh)
    key = jax.random.key(0, impl="rbg")
    prepared = [(mesh_lib.to_global(b, mesh), objectives.pack_spec(objectives.PRETRAIN, b, mesh))
                for b in batches]
    seen = set()
    t0 = time.perf_counter()
    for i, (g, spec) in enumerate(prepared):  # compile every distinct program first
        sig = (g["x"].shape, spec)
        if sig not in seen:
            seen.add(sig)
            params, opt_state, m, _ = step(params, opt_state, g, steps.step_key(key, i), spec)
            jax.block_until_ready(m)
    print(f"    ({len(seen)} programs compiled in {time.perf_counter() - t0:.1f} s)", flush=True)
    state = [params, opt_state]

    def one_pass() -> None:
        m = None
        for i, (g, spec) in enumerate(prepared):
            state[0], state[1], m, _ = step(state[0], state[1], g, steps.step_key(key, i), spec)
        jax.block_until_ready((state[0], m))

    return one_pass


def one_step(model, opt, bce, x, mask, coords, seq, cls_label, sel, tok_target) -> float:
    """Forward, pretraining loss, backward, clip at 1.0, LAMB: one PyTorch step."""
    _, cls_logits, tok_logits, _ = model(x, mask, coords, seq)
    loss = bce(cls_logits.squeeze(-1), cls_label) + bce(tok_logits.flatten()[sel], tok_target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach().item()


def prepare_torch(popt_cfg, batches: list[dict]):
    """A function running one pass of the upstream-style PyTorch step over `batches`
    (each batch padded to its longest example, as upstream's collate does)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torch_reference import RefLamb, RefPopT  # noqa: E402

    torch.manual_seed(0)
    model = RefPopT(input_dim=popt_cfg.input_dim, hidden_dim=popt_cfg.hidden_dim,
                    n_head=popt_cfg.n_heads, n_layers=popt_cfg.n_layers).train()
    opt = RefLamb(model.parameters(), lr=5e-4)
    bce = torch.nn.BCEWithLogitsLoss()
    prepared = []
    for b in map(trim_to_longest, batches):
        bsz = b["x"].shape[0]
        x = torch.from_numpy(np.concatenate([np.ones((bsz, 1, b["x"].shape[-1]), np.float32),
                                             b["x"]], axis=1))
        mask = torch.from_numpy(np.concatenate([np.zeros((bsz, 1), bool), b["pad_mask"]], 1))
        tl_ = torch.from_numpy(b["token_label"].astype(np.int64)).flatten()
        sel = (tl_ == 1) | (tl_ == 2)
        prepared.append((x, mask, torch.from_numpy(b["coords"]).long(),
                         torch.from_numpy(b["seq_id"]).long(),
                         torch.from_numpy(b["cls_label"]).float(), sel, (tl_[sel] == 1).float()))
    one_step(model, opt, bce, *prepared[0])  # warm-up

    def one_pass() -> None:
        for args in prepared:
            one_step(model, opt, bce, *args)

    return one_pass


def time_in_turns(passes: dict, repeats: int) -> dict[str, float]:
    """Best seconds per pass of each runner; the runners take turns within every repeat, so
    a change in the machine's load reaches all of them alike."""
    best = {name: float("inf") for name in passes}
    for r in range(repeats):
        for name, run in passes.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
        print(f"  repeat {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()),
              flush=True)
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=16, help="batches per timed pass")
    p.add_argument("--group", type=int, default=8, help="length-grouping window (batches)")
    p.add_argument("--input-dim", type=int, default=768)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ff", type=int, default=2048)
    p.add_argument("--electrodes", type=int, default=120)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="also time the bfloat16 step")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--loaders", default="default,grouped",
                   help="which popt_jax loaders to time (comma list of default, grouped)")
    p.add_argument("--save-batches", default="",
                   help="write the loader batches (all but x: its values do not matter for "
                   "timing) to this .npz, e.g. to time them where grain is not installed")
    p.add_argument("--load-batches", default="", help="time batches saved by --save-batches")
    p.add_argument("--tiny", action="store_true",
                   help="seconds: hidden 32, 1 layer, input 16, batch 8, 10 electrodes (one "
                   "shape to compile per loader), 2 batches, 1 repeat")
    args = p.parse_args(argv)
    if args.tiny:
        args.hidden, args.ff, args.layers, args.heads, args.input_dim = 32, 64, 1, 4, 16
        args.batch, args.batches, args.group, args.repeats = 8, 2, 2, 1
        args.electrodes = 10
    torch.set_num_threads(args.threads)
    n = math.ceil(args.batches / args.group) * args.group
    popt_cfg = models.PopTConfig(input_dim=args.input_dim, hidden_dim=args.hidden,
                                 n_heads=args.heads, ff_dim=args.ff, n_layers=args.layers)
    print(f"popt_jax from {os.path.dirname(models.__file__)}")
    print(f"JAX {jax.__version__} on {jax.devices()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"PopT hidden {args.hidden}, {args.layers} layers, {args.heads} heads, ff {args.ff}, "
          f"input {args.input_dim}; batch {args.batch}; {n} loader batches per pass; "
          f"grouping window {args.group} batches")
    if args.load_batches:
        plain, grouped = load_batches(args.load_batches)
    else:
        from popt_jax.ieeg import extract

        with tempfile.TemporaryDirectory() as tmp:
            extract.write_random_features(Path(tmp), n_electrodes=args.electrodes,
                                          n_windows=max(64, 2 * n * args.batch),
                                          hidden_dim=args.input_dim, n_task=4)
            plain = loader_batches(Path(tmp), args.batch, n, 0)
            grouped = loader_batches(Path(tmp), args.batch, n, args.group)
    if args.save_batches:
        save_batches(args.save_batches, plain, grouped)
    same = sorted(np.concatenate([b["index"] for b in plain]).tolist())
    assert same == sorted(np.concatenate([b["index"] for b in grouped]).tolist()), \
        "grouping changed the examples"
    ex = n * args.batch

    def tokens(bs, trim=False):
        return sum((trim_to_longest(b) if trim else b)["x"].shape[1] for b in bs) / len(bs)

    real = np.mean([(~b["pad_mask"]).sum(1).mean() for b in plain])
    print(f"tokens per example: real {real:.1f}; padded: upstream collate "
          f"{tokens(plain, True):.1f}, default loader {tokens(plain):.1f}, grouped loader "
          f"{tokens(grouped):.1f}")
    passes = {"torch (upstream collate)": prepare_torch(popt_cfg, plain)}
    for dtype in [jnp.float32] + ([jnp.bfloat16] if args.bf16 else []):
        name = jnp.dtype(dtype).name
        for label, bs in (("default loader", plain), ("grouped loader", grouped)):
            if label.split()[0] not in args.loaders.split(","):
                continue
            passes[f"jax {name} {label}"] = prepare_jax(popt_cfg, bs, dtype)
    rows = time_in_turns(passes, args.repeats)
    ref = rows["torch (upstream collate)"]
    print(f"\n{'workload':34s}{'examples/s':>12s}")
    for name, t in rows.items():
        print(f"{name:34s}{ex / t:12.2f}")
    for name, t in rows.items():
        if not name.startswith("torch"):
            print(f"ratio vs reference: {name}: {ref / t:.2f}x")


if __name__ == "__main__":
    main()
