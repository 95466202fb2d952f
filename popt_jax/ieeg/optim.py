"""Upstream's learning-rate schedule and optimisers (PopT and BrainBERT pretraining).

* `ramp_up_schedule`: upstream's "ramp_up" learning rate (linear warm-up, then step decay).
* `lamb`: LAMB with the semantics of `torch_optimizer.Lamb` (upstream's pretraining optimiser:
  no bias correction, weight norm clamped at 10 in the trust ratio); `make_optimizer` builds
  the pretraining (clip + LAMB) and fine-tuning (clip + AdamW, body at lr x 0.1) chains.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from popt_jax.errors import TrainingError

# --------------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------------


def ramp_up_steps(total_steps: int, warmup: float) -> tuple[int, int]:
    """(warm-up steps, decay period) of upstream's ramp_up scheduler.

    Upstream: `warmup = int(warmup * total)`, `StepLR(step_size=int((total - warmup) / 100))`.
    A period of 0 (fewer than ~100 steps) would divide by zero upstream; it is 1 here.
    """
    n_warm = int(warmup * total_steps)
    period = max(1, int((total_steps - n_warm) / 100))
    return n_warm, period


def ramp_up_schedule(base_lr: float, total_steps: int, warmup: float = 0.025,
                     gamma: float = 0.99) -> optax.Schedule:
    """Upstream's "ramp_up" schedule as a function of the optimiser step t (0-based).

    Upstream wraps `StepLR` in `GradualWarmupScheduler(multiplier=1)` and steps the scheduler
    after every optimiser step, so the update made at step t uses

      lr(t) = base * t / W                               for t <= W (so lr(0) = 0),
      lr(t) = base * gamma ** floor((t - W - 1) / S)     for t > W,

    with W warm-up steps and decay period S from `ramp_up_steps` (W = 0: no warm-up).
    """
    n_warm, period = ramp_up_steps(total_steps, warmup)

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        warm = base_lr * t / max(n_warm, 1)
        decayed = base_lr * gamma ** jnp.floor(jnp.maximum(t - n_warm - 1, 0) / period)
        return jnp.where(t <= n_warm, warm if n_warm else base_lr, decayed)

    return schedule


# --------------------------------------------------------------------------------------------
# Optimisers
# --------------------------------------------------------------------------------------------


class LambMomentsState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_lamb_moments(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                          debias: bool = False) -> optax.GradientTransformation:
    """Adam direction m / (sqrt(v) + eps), bias-corrected only if `debias` (torch_optimizer)."""

    def init(params):
        def zeros():  # two separate trees: shared buffers could not both be donated
            return jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)

        return LambMomentsState(jnp.zeros([], jnp.int32), zeros(), zeros())

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        scale = 1.0
        if debias:
            c = count.astype(jnp.float32)
            scale = jnp.sqrt(1 - b2**c) / (1 - b1**c)
        out = jax.tree.map(lambda m, v: scale * m / (jnp.sqrt(v) + eps), mu, nu)
        return out, LambMomentsState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def torch_tensor_of(path) -> str:
    """The upstream (torch) tensor a parameter belongs to, as a '/'-joined path.

    torch's `nn.MultiheadAttention` keeps the query, key and value projections in one
    `in_proj_weight` / `in_proj_bias`; the JAX layers split them. Per-tensor optimiser
    quantities (LAMB's trust ratio) must be computed over the packed tensor to match.
    """
    # Tree keys and indices; attribute keys (an nnx Variable's `.value`) are not names.
    names = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path
             if not isinstance(k, jax.tree_util.GetAttrKey)]
    if len(names) >= 3 and names[-2] in ("query", "key", "value") and \
            names[-1] in ("kernel", "bias"):
        names = names[:-2] + [f"in_proj_{names[-1]}"]
    return "/".join(names)


def scale_by_clamped_trust_ratio(clamp_value: float = 10.0,
                                 tensor_of=torch_tensor_of) -> optax.GradientTransformation:
    """Per tensor: update x min(||w||, clamp) / ||update|| (1 when either norm is 0).

    `tensor_of(path)` names the tensor each leaf belongs to (default `torch_tensor_of`:
    upstream's packed attention projections); norms run over all leaves of one tensor.
    """

    def update(updates, state, params):
        paths = [tensor_of(p) for p, _ in jax.tree_util.tree_flatten_with_path(updates)[0]]
        u_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        w_sq: dict[str, jax.Array] = {}
        u_sq: dict[str, jax.Array] = {}
        for name, u, p in zip(paths, u_leaves, p_leaves, strict=True):
            w_sq[name] = w_sq.get(name, 0.0) + jnp.sum(jnp.square(p.astype(jnp.float32)))
            u_sq[name] = u_sq.get(name, 0.0) + jnp.sum(jnp.square(u))
        out = []
        for name, u in zip(paths, u_leaves, strict=True):
            w_norm = jnp.minimum(jnp.sqrt(w_sq[name]), clamp_value)
            u_norm = jnp.sqrt(u_sq[name])
            ok = (w_norm > 0) & (u_norm > 0)
            out.append(u * jnp.where(ok, w_norm / jnp.where(u_norm > 0, u_norm, 1.0), 1.0))
        return jax.tree.unflatten(treedef, out), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def lamb(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-6, weight_decay: float = 0.0, clamp_value: float = 10.0,
         debias: bool = False, tensor_of=torch_tensor_of) -> optax.GradientTransformation:
    """LAMB as `torch_optimizer.Lamb` (upstream's pretraining optimiser), defaults included.

    Differs from `optax.lamb` in two ways that change the steps: no bias correction by
    default and the weight norm in the trust ratio is clamped at `clamp_value` (most PopT
    matrices have norms above 10, so the clamp shrinks their steps). Trust ratios are per
    torch tensor (`torch_tensor_of`: the attention's packed q/k/v projection is one).
    """
    parts = [scale_by_lamb_moments(b1, b2, eps, debias)]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts += [scale_by_clamped_trust_ratio(clamp_value, tensor_of),
              optax.scale_by_learning_rate(learning_rate)]
    return optax.chain(*parts)


def param_group(path) -> str:
    """'head' for the fine-tuning head (`linear_out`), 'unused' for a head no loss reads
    (`recipe.receives_gradient`), 'body' for everything else."""
    from popt_jax.ieeg.recipe import receives_gradient

    first = path[0]
    name = getattr(first, "key", getattr(first, "name", first))
    if str(name) == "linear_out":
        return "head"
    return "body" if receives_gradient(path) else "unused"


def _groups(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: param_group(p), params)


def make_optimizer(config) -> optax.GradientTransformation:
    """Gradient clipping + LAMB (pretraining) or AdamW with a 10x slower body (fine-tuning).

    Config fields: `task` ('pretrain'/'finetune'), `optimizer` ('lamb'/'adamw'), `lr`,
    `total_steps`, `warmup`, `gamma`, `grad_clip` (0 = off), `weight_decay`, `body_lr_scale`.

    Heads that no loss reads (`recipe.receives_gradient`) are left alone: upstream's torch
    optimisers skip parameters without a gradient, so they get no step and no weight decay.
    """
    steps, warmup, gamma = int(config.total_steps), float(config.warmup), float(config.gamma)
    lr = float(config.lr)
    name = str(config.optimizer).lower()
    if name == "lamb":
        body = lamb(ramp_up_schedule(lr, steps, warmup, gamma),
                    weight_decay=float(config.get("weight_decay", 0.0)),
                    clamp_value=float(config.get("lamb_clamp_value", 10.0)))
        tx = optax.multi_transform({"head": body, "body": body,
                                    "unused": optax.set_to_zero()}, _groups)
    elif name == "adamw":
        # torch.optim.AdamW defaults (eps 1e-8); decay is decoupled and scaled by each group's lr.
        def adamw(scale):
            return optax.adamw(ramp_up_schedule(lr * scale, steps, warmup, gamma), b1=0.9,
                               b2=0.999, eps=1e-8, weight_decay=float(config.weight_decay))

        tx = optax.multi_transform(
            {"head": adamw(1.0), "body": adamw(float(config.get("body_lr_scale", 0.1))),
             "unused": optax.set_to_zero()}, _groups)
    else:
        raise TrainingError(f"config.optimizer must be 'lamb' or 'adamw', got {config.optimizer!r}")
    clip = float(config.get("grad_clip", 0.0))
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx
