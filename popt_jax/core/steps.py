"""Jitted-step helpers: a model split once for the hot loop, per-step dropout keys.

`make_train_step` / `make_eval_step` build ONE jitted pure function of
(params, opt_state, batch, rng) with the state donated; dropout keys come from `rng`, so the
step depends on nothing but its arguments (resuming is bitwise on CPU). The family supplies
`forward(model, batch, deterministic, packed) -> (loss, outputs)` and a clu collection.
"""

# No `from __future__ import annotations`: keeps clu-facing code uniform.

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from popt_jax.core.mesh import data_sharding, replicate, replicated


class ModelParts(NamedTuple):
    """A model split once for the hot loop: `nnx.merge(graphdef, params, rngs, consts)`."""

    graphdef: Any
    params: nnx.State  # nnx.Param: trained
    rngs: nnx.State  # dropout streams: a template; the keys are redrawn from `rng` every step
    consts: nnx.State  # buffers (sinusoid tables): never change


def split_model(model: nnx.Module) -> ModelParts:
    graphdef, params, rngs, consts = nnx.split(model, nnx.Param, nnx.RngState, ...)
    return ModelParts(graphdef, params, rngs, consts)


def rng_spec(template: nnx.State):
    """The dropout-stream template as (treedef, host leaves with None where a key goes)."""
    leaves, treedef = jax.tree.flatten(template)
    spec = [None if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(x)
            for x in leaves]
    return treedef, spec


def fresh_rngs(spec, rng: jax.Array) -> nnx.State:
    """Every dropout stream gets key fold_in(rng, i); counts keep their initial value."""
    treedef, leaves = spec
    out = [jax.random.fold_in(rng, i) if x is None else jnp.asarray(x)
           for i, x in enumerate(leaves)]
    return jax.tree.unflatten(treedef, out)


def make_train_step(forward: Callable, collection, parts: ModelParts,
                    tx: optax.GradientTransformation, mesh, *,
                    loss_scaled_grad: bool = False) -> Callable:
    """Jitted `step(params, opt_state, batch, rng) -> (params, opt_state, metrics, grad norm)`.

    `forward(model, batch, deterministic, packed) -> (loss, outputs)`; `collection` is the
    clu metric collection filled from `outputs`. Params and optimiser state are donated and stay replicated; the batch is sharded over
    "data", so XLA inserts the gradient all-reduce. Buffers and the dropout-stream template
    are constants of the step. `rng` is this step's key (fold_in(base key, step)).

    `loss_scaled_grad`: the optimiser gets loss x d(loss)/d(params) instead of the gradient.
    Upstream PopT and BrainBERT call `loss.backward(loss)`, which seeds backpropagation with
    the loss value itself, so their optimisers (and gradient clipping, and the logged
    gradient norm) see the gradient scaled by the current loss; True reproduces that step
    for step (the `loss_scaled_grad` config field, default True in the paper recipes), False
    is the plain gradient. The returned norm is of what the optimiser received, pre-clipping.
    """
    graphdef, _, rng_template, consts = parts
    rep = replicated(mesh)
    spec = rng_spec(rng_template)

    def step(params, opt_state, batch, rng, consts, packed):
        def loss_fn(p):
            model = nnx.merge(graphdef, p, fresh_rngs(spec, rng), consts)
            return forward(model, batch, False, packed)

        (loss, outputs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if loss_scaled_grad:  # upstream's loss.backward(loss)
            scale = jax.lax.stop_gradient(loss).astype(jnp.float32)
            grads = jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        m = collection.single_from_model_output(**outputs)
        return params, opt_state, m, optax.global_norm(grads)

    jitted = jax.jit(step, donate_argnums=(0, 1), out_shardings=(rep, rep, rep, rep),
                     static_argnums=(5,))
    consts = replicate(consts, mesh)

    def train_step(params, opt_state, batch, rng, packed=None):
        """`packed`: a static (hashable) argument of `forward`, e.g. a packing spec, or None."""
        return jitted(params, opt_state, batch, rng, consts, packed)

    train_step.jitted = jitted
    return train_step


def make_eval_step(forward: Callable, collection, parts: ModelParts, mesh) -> Callable:
    """Jitted `eval_step(params, batch) -> (metric collection, per-example `outputs["logits"]`)`.
    """
    graphdef, _, rng_template, consts = parts
    rep = replicated(mesh)
    spec = rng_spec(rng_template)

    def step(params, batch, consts):
        # Dropout is off; the streams only have to exist for `merge`.
        model = nnx.merge(graphdef, params, fresh_rngs(spec, jax.random.key(0)), consts)
        _, outputs = forward(model, batch, True, None)
        m = collection.single_from_model_output(**outputs)
        return m, outputs["logits"]

    jitted = jax.jit(step, out_shardings=(rep, data_sharding(mesh)))
    consts = replicate(consts, mesh)

    def eval_step(params, batch):
        return jitted(params, batch, consts)

    return eval_step


@functools.lru_cache(maxsize=None)
def _step_key_fn():
    return jax.jit(jax.random.fold_in)


def step_key(base_key: jax.Array, step: int) -> jax.Array:
    """The dropout key of training step `step`."""
    return _step_key_fn()(base_key, np.uint32(step))

