"""Training building blocks for PopT: schedule, optimisers, losses, metrics, sharding, steps.

`popt_jax.train` drives these; everything here is a pure function or a small value type so
it can be tested on its own with hand-made batches.

* `ramp_up_schedule`: upstream's "ramp_up" learning rate (linear warm-up, then step decay).
* `lamb`: LAMB with the semantics of `torch_optimizer.Lamb` (upstream's pretraining optimiser:
  no bias correction, weight norm clamped at 10 in the trust ratio); `make_optimizer` builds
  the pretraining (clip + LAMB) and fine-tuning (clip + AdamW, body at lr x 0.1) chains.
* Losses and clu metric collections for both tasks; ROC-AUC and F1 on the host.
* Sharding: a 1-D "data" mesh, replicated state, batches placed per process.
* `make_train_step` / `make_eval_step`: ONE jitted pure function of
  (params, opt_state, batch, rng) with the state donated; dropout keys come from `rng`, so
  the step depends on nothing but its arguments (resuming is bitwise on CPU).

Batches are dicts of numpy arrays: `x` [B, n, 768] float32, `pad_mask` [B, n] bool (True =
padding), `coords` [B, n, 3] int32, `seq_id` [B, n] int32 and, for pretraining, `cls_label`
[B] + `token_label` [B, n] (0 unused, 1 replaced, 2 kept), for fine-tuning `label` [B].
An optional `weight` [B] (1 real, 0 filler) marks rows added to fill the last eval batch.
"""

# No `from __future__ import annotations`: clu reads the metric annotations as classes.

import functools
import os
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from popt_jax import models
from popt_jax.data import braintreebank

PRETRAIN, FINETUNE = "pretrain", "finetune"


class TrainingError(braintreebank.DataError):
    """A run that cannot start or cannot go on (the message is one line).

    A `DataError` subclass so `popt_jax.main` reports it as one line with exit code 2.
    """

    def __init__(self, message: str):
        super().__init__(None, message)

    def __reduce__(self):
        return (type(self), (self.detail,))


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


def scale_by_clamped_trust_ratio(clamp_value: float = 10.0) -> optax.GradientTransformation:
    """Per tensor: update x min(||w||, clamp) / ||update|| (1 when either norm is 0)."""

    def update(updates, state, params):
        def ratio(u, p):
            w_norm = jnp.minimum(jnp.linalg.norm(p.astype(jnp.float32)), clamp_value)
            u_norm = jnp.linalg.norm(u)
            trust = jnp.where((w_norm > 0) & (u_norm > 0), w_norm / jnp.where(u_norm > 0,
                                                                               u_norm, 1.0), 1.0)
            return u * trust

        return jax.tree.map(ratio, updates, params), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def lamb(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-6, weight_decay: float = 0.0, clamp_value: float = 10.0,
         debias: bool = False) -> optax.GradientTransformation:
    """LAMB as `torch_optimizer.Lamb` (upstream's pretraining optimiser), defaults included.

    Differs from `optax.lamb` in two ways that change the steps: no bias correction by
    default and the weight norm in the trust ratio is clamped at `clamp_value` (most PopT
    matrices have norms above 10, so the clamp shrinks their steps).
    """
    parts = [scale_by_lamb_moments(b1, b2, eps, debias)]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts += [scale_by_clamped_trust_ratio(clamp_value), optax.scale_by_learning_rate(learning_rate)]
    return optax.chain(*parts)


def param_group(path) -> str:
    """'head' for the fine-tuning head (`linear_out`), 'body' for everything else."""
    first = path[0]
    name = getattr(first, "key", getattr(first, "name", first))
    return "head" if str(name) == "linear_out" else "body"


def make_optimizer(config) -> optax.GradientTransformation:
    """Gradient clipping + LAMB (pretraining) or AdamW with a 10x slower body (fine-tuning).

    Config fields: `task` ('pretrain'/'finetune'), `optimizer` ('lamb'/'adamw'), `lr`,
    `total_steps`, `warmup`, `gamma`, `grad_clip` (0 = off), `weight_decay`, `body_lr_scale`.
    """
    steps, warmup, gamma = int(config.total_steps), float(config.warmup), float(config.gamma)
    lr = float(config.lr)
    name = str(config.optimizer).lower()
    if name == "lamb":
        tx = lamb(ramp_up_schedule(lr, steps, warmup, gamma),
                  weight_decay=float(config.get("weight_decay", 0.0)),
                  clamp_value=float(config.get("lamb_clamp_value", 10.0)))
    elif name == "adamw":
        # torch.optim.AdamW defaults (eps 1e-8); decay is decoupled and scaled by each group's lr.
        def adamw(scale):
            return optax.adamw(ramp_up_schedule(lr * scale, steps, warmup, gamma), b1=0.9,
                               b2=0.999, eps=1e-8, weight_decay=float(config.weight_decay))

        tx = optax.multi_transform(
            {"head": adamw(1.0), "body": adamw(float(config.get("body_lr_scale", 0.1)))},
            lambda params: jax.tree_util.tree_map_with_path(lambda p, _: param_group(p), params))
    else:
        raise TrainingError(f"config.optimizer must be 'lamb' or 'adamw', got {config.optimizer!r}")
    clip = float(config.get("grad_clip", 0.0))
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx


# --------------------------------------------------------------------------------------------
# Losses and metrics
# --------------------------------------------------------------------------------------------


def _weight(batch) -> jax.Array:
    """Per-row weight: `weight`, else `valid` (the data layer's flag), else all ones."""
    for key in ("weight", "valid"):
        if key in batch:
            return batch[key].astype(jnp.float32)
    return jnp.ones(batch["x"].shape[:1], jnp.float32)


def masked_mean(values, mask):
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def loss_rows(task: str, batch, xp=jnp):
    """[B, 1 + n] bool: the rows whose final hidden state the loss reads (CLS first).

    Pretraining: CLS and the labelled tokens (replaced or kept, not padding); fine-tuning:
    CLS. The same formula runs on the host (`pack_spec`, xp=np) and in the step.
    """
    pad = xp.asarray(batch["pad_mask"]).astype(bool)
    cls = xp.ones((pad.shape[0], 1), bool)
    if task != PRETRAIN:
        return xp.concatenate([cls, xp.zeros_like(pad)], axis=1)
    lab = xp.asarray(batch["token_label"])
    return xp.concatenate([cls, ((lab == 1) | (lab == 2)) & ~pad], axis=1)


def pretrain_loss(cls_logits, token_logits, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """BCE(cls logit, pair label) + BCE(token logit, replaced=1 vs kept=0) on labelled tokens.

    Means run over the global batch (all examples; all labelled tokens), as upstream's
    flattened `BCEWithLogitsLoss`. Returns (loss, outputs for the metric collection).
    """
    w = _weight(batch)
    cls_logit = cls_logits[..., 0].astype(jnp.float32)
    cls_label = batch["cls_label"].astype(jnp.float32)
    cls_bce = optax.sigmoid_binary_cross_entropy(cls_logit, cls_label)
    tok_logit = token_logits[..., 0].astype(jnp.float32)
    tok_label = batch["token_label"]
    labelled = loss_rows(PRETRAIN, batch)[:, 1:] & (w[:, None] > 0)
    tok_target = (tok_label == 1).astype(jnp.float32)
    tok_bce = optax.sigmoid_binary_cross_entropy(tok_logit, tok_target)
    cls_loss = masked_mean(cls_bce, w)
    token_loss = masked_mean(tok_bce, labelled)
    loss = cls_loss + token_loss
    outputs = dict(
        loss=loss, cls_loss=cls_bce, token_loss=tok_bce, example_mask=w > 0,
        token_mask=labelled, logits=cls_logit,
        cls_accuracy=((cls_logit > 0) == (cls_label > 0.5)).astype(jnp.float32),
        token_accuracy=((tok_logit > 0) == (tok_target > 0.5)).astype(jnp.float32),
    )
    return loss, outputs


def finetune_loss(logits, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean BCE-with-logits of the CLS head against the binary `label`."""
    w = _weight(batch)
    logit = logits[..., 0].astype(jnp.float32)
    label = batch["label"].astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logit, label)
    loss = masked_mean(bce, w)
    outputs = dict(loss=loss, example_loss=bce, example_mask=w > 0, logits=logit,
                   accuracy=((logit > 0) == (label > 0.5)).astype(jnp.float32))
    return loss, outputs


def _avg(name: str, mask: str | None = None):
    """An `Average` over output `name`, optionally masked by output `mask`."""

    @flax.struct.dataclass
    class _Average(clu_metrics.Average):
        @classmethod
        def from_model_output(cls, **kwargs):
            return super().from_model_output(kwargs[name], kwargs[mask] if mask else None)

    _Average.__name__ = f"Average_{name}"
    return _Average


@flax.struct.dataclass
class PretrainMetrics(clu_metrics.Collection):
    """Running pretraining metrics: per-step loss, per-example/per-token BCE and accuracies."""

    loss: _avg("loss")
    cls_loss: _avg("cls_loss", "example_mask")
    token_loss: _avg("token_loss", "token_mask")
    cls_accuracy: _avg("cls_accuracy", "example_mask")
    token_accuracy: _avg("token_accuracy", "token_mask")


@flax.struct.dataclass
class FinetuneMetrics(clu_metrics.Collection):
    """Running fine-tuning metrics (training steps and evaluation)."""

    loss: _avg("loss")
    example_loss: _avg("example_loss", "example_mask")
    accuracy: _avg("accuracy", "example_mask")


@flax.struct.dataclass
class Predictions(clu_metrics.CollectingMetric.from_outputs(("logits", "labels", "mask",
                                                            "ids"))):
    """Collects logits, labels and example ids on the host; `compute` adds ROC-AUC and F1."""

    def compute(self) -> dict[str, Any]:
        if not self.values:
            return {}
        v = super().compute()
        keep = np.asarray(v["mask"], bool)
        logits = np.asarray(v["logits"], np.float64)[keep]
        labels = np.asarray(v["labels"])[keep].astype(np.int64)
        probs = 1.0 / (1.0 + np.exp(-logits))
        return dict(roc_auc=roc_auc(labels, probs), f1=f1_score(labels, probs >= 0.5),
                    predictions=probs, labels=labels, ids=np.asarray(v["ids"])[keep])


def compute_metrics(collection) -> dict[str, float]:
    """`Collection.compute()` as plain floats."""
    return {k: float(v) for k, v in collection.compute().items()}


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # Average ranks (1-based) over runs of equal scores.
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def f1_score(labels, predicted) -> float:
    """Binary F1 of boolean predictions (0 when there are no true or predicted positives)."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    tp = int(np.sum(labels & predicted))
    denom = int(labels.sum()) + int(predicted.sum())
    return float(2 * tp / denom) if denom else 0.0


# --------------------------------------------------------------------------------------------
# Devices, meshes and batches
# --------------------------------------------------------------------------------------------

_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize_distributed(config) -> bool:
    """`jax.distributed.initialize` when `config.distributed` or JAX_COORDINATOR_ADDRESS is set.

    Reads `config.coordinator_address`, `num_processes`, `process_id` or the JAX_* variables
    of the same names (SLURM/Open MPI clusters are detected by JAX itself). Must run before
    anything touches a JAX device. CPU collectives use gloo, so this also works across
    processes on one machine without accelerators.
    """
    wanted = bool(config.get("distributed", False)) or bool(os.environ.get(_DIST_ENV[0]))
    if not wanted:
        return False
    from jax._src import distributed as jax_distributed

    if jax_distributed.global_state.client is not None:
        return True  # already initialised (e.g. by the caller)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    addr = config.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    n = config.get("num_processes", -1)
    n = int(os.environ.get("JAX_NUM_PROCESSES", n if n is not None else -1))
    pid = config.get("process_id", -1)
    pid = int(os.environ.get("JAX_PROCESS_ID", pid if pid is not None else -1))
    if addr:
        kwargs["coordinator_address"] = addr
    if n >= 0:
        kwargs["num_processes"] = n
    if pid >= 0:
        kwargs["process_id"] = pid
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        raise TrainingError(
            f"jax.distributed.initialize failed ({' '.join(str(e).split())}); it must run "
            "before anything touches a JAX device") from None
    logging.info("distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True


def make_mesh(n_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D ("data",) mesh over all devices of all processes (or the first `n_devices`)."""
    n = n_devices or jax.device_count()
    devices = np.asarray(jax.devices()[:n])
    return jax.sharding.Mesh(devices, ("data",))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicate(tree, mesh):
    """Copies every array of `tree` onto all devices of `mesh` (from host or device values).

    Always a copy (`may_alias=False`): the result is donated to the train step, which must
    not delete the caller's arrays (e.g. the model's own state).
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding, may_alias=False)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


def local_batch_size(global_batch: int, mesh) -> int:
    """Rows each process feeds for a global batch; checks divisibility by the device count."""
    n_dev = mesh.devices.size
    if global_batch % n_dev:
        raise TrainingError(f"batch size {global_batch} is not divisible by the {n_dev} devices "
                            "of the data mesh; choose a multiple")
    return global_batch // jax.process_count()


# What the steps read; anything else in a batch (example ids, ...) stays on the host.
MODEL_KEYS = ("x", "pad_mask", "coords", "seq_id", "cls_label", "token_label", "label",
              "weight", "valid")


def to_global(batch: dict[str, np.ndarray], mesh,
              keys: tuple[str, ...] | None = MODEL_KEYS) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over "data" (leading axis).

    Keys outside `keys` are dropped (None keeps every key).
    """
    sharding = data_sharding(mesh)
    n_proc = jax.process_count()

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(
            sharding, a, (a.shape[0] * n_proc,) + a.shape[1:])

    return {k: put(v) for k, v in batch.items() if keys is None or k in keys}


def pad_rows(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Sets a float `weight` (from `valid` if present) and pads to `size` rows with weight 0.

    Filler rows repeat row 0; `valid` is dropped in favour of `weight`.
    """
    n = len(batch["x"])
    out = {k: v for k, v in batch.items() if k != "valid"}
    out["weight"] = np.asarray(batch.get("weight", batch.get("valid", np.ones(n))), np.float32)
    if n >= size:
        return out
    idx = np.concatenate([np.arange(n), np.zeros(size - n, np.int64)])
    out = {k: np.asarray(v)[idx] for k, v in out.items()}
    out["weight"][n:] = 0.0
    return out


def host_array(x) -> np.ndarray:
    """A (possibly multi-process sharded) global array as one numpy array on every host."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# --------------------------------------------------------------------------------------------
# Model state and steps
# --------------------------------------------------------------------------------------------


class ModelParts(NamedTuple):
    """A model split once for the hot loop: `nnx.merge(graphdef, params, rngs, consts)`."""

    graphdef: Any
    params: nnx.State  # nnx.Param: trained
    rngs: nnx.State  # dropout streams: a template; the keys are redrawn from `rng` every step
    consts: nnx.State  # buffers (sinusoid tables): never change


def split_model(model: nnx.Module) -> ModelParts:
    graphdef, params, rngs, consts = nnx.split(model, nnx.Param, nnx.RngState, ...)
    return ModelParts(graphdef, params, rngs, consts)


def _rng_spec(template: nnx.State):
    """The dropout-stream template as (treedef, host leaves with None where a key goes)."""
    leaves, treedef = jax.tree.flatten(template)
    spec = [None if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(x)
            for x in leaves]
    return treedef, spec


def _fresh_rngs(spec, rng: jax.Array) -> nnx.State:
    """Every dropout stream gets key fold_in(rng, i); counts keep their initial value."""
    treedef, leaves = spec
    out = [jax.random.fold_in(rng, i) if x is None else jnp.asarray(x)
           for i, x in enumerate(leaves)]
    return jax.tree.unflatten(treedef, out)


def _forward(task: str, model, batch, deterministic: bool, packed=None):
    if task == PRETRAIN:
        out_rows = loss_rows(task, batch) if packed is not None else None
        out = model(batch["x"], batch["pad_mask"], batch["coords"], batch["seq_id"],
                    deterministic=deterministic, packed=packed, out_rows=out_rows)
        return pretrain_loss(out.cls_logits, out.token_logits, batch)
    logits = model(batch["x"], batch["pad_mask"], batch["coords"], batch.get("seq_id"),
                   deterministic=deterministic, packed=packed)
    return finetune_loss(logits, batch)


def metrics_class(task: str):
    return PretrainMetrics if task == PRETRAIN else FinetuneMetrics


def make_train_step(task: str, parts: ModelParts, tx: optax.GradientTransformation,
                    mesh) -> Callable:
    """Jitted `step(params, opt_state, batch, rng) -> (params, opt_state, metrics)`.

    Params and optimiser state are donated and stay replicated; the batch is sharded over
    "data", so XLA inserts the gradient all-reduce. Buffers and the dropout-stream template
    are constants of the step. `rng` is this step's key (fold_in(base key, step)).
    """
    graphdef, _, rng_template, consts = parts
    rep = replicated(mesh)
    collection = metrics_class(task)
    spec = _rng_spec(rng_template)

    def step(params, opt_state, batch, rng, consts, packed):
        def loss_fn(p):
            model = nnx.merge(graphdef, p, _fresh_rngs(spec, rng), consts)
            return _forward(task, model, batch, deterministic=False, packed=packed)

        (loss, outputs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        m = collection.single_from_model_output(**outputs)
        return params, opt_state, m, optax.global_norm(grads)

    jitted = jax.jit(step, donate_argnums=(0, 1), out_shardings=(rep, rep, rep, rep),
                     static_argnums=(5,))
    consts = replicate(consts, mesh)

    def train_step(params, opt_state, batch, rng, packed=None):
        """`packed`: None, or the `models.PackSpec` of `pack_spec` on this batch."""
        return jitted(params, opt_state, batch, rng, consts, packed)

    train_step.jitted = jitted
    return train_step


def make_eval_step(task: str, parts: ModelParts, mesh) -> Callable:
    """Jitted `eval_step(params, batch) -> (metric collection, per-example logits or None)`."""
    graphdef, _, rng_template, consts = parts
    rep = replicated(mesh)
    collection = metrics_class(task)
    spec = _rng_spec(rng_template)

    def step(params, batch, consts):
        # Dropout is off; the streams only have to exist for `merge`.
        model = nnx.merge(graphdef, params, _fresh_rngs(spec, jax.random.key(0)), consts)
        _, outputs = _forward(task, model, batch, deterministic=True)
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


def pack_spec(task: str, batch: dict[str, np.ndarray], mesh, quantum: int = 16,
              out_quantum: int = 64) -> "models.PackSpec | None":
    """The static `packed` argument of a train step for this process's (host) `batch`.

    One packing group per device of the mesh (rows never leave their device). Slots: the
    fullest group's real tokens (CLS included) and loss rows (`loss_rows`), each rounded up
    by `models.packed_length` (to 1/`quantum`, 1/`out_quantum` of the group: few distinct
    shapes to compile, little waste) and agreed across processes (each compiles the same program);
    None where packing would not save work. None if neither saves anything. A pure function
    of the batch (no history), so a resumed run makes the same choices as an uninterrupted one.
    """
    pad_mask = np.asarray(batch["pad_mask"], bool)
    groups = len(mesh.local_devices)
    if pad_mask.shape[0] % groups:
        return None
    mask = np.concatenate([np.zeros((pad_mask.shape[0], 1), bool), pad_mask], axis=1)
    full = (pad_mask.shape[0] // groups) * mask.shape[1]
    slots = models.packed_length(mask, groups, quantum)
    out_slots = models.packed_length(~loss_rows(task, batch, np), groups, out_quantum)
    if jax.process_count() > 1:
        both = multihost_utils.process_allgather(np.asarray([slots, out_slots], np.int32))
        slots, out_slots = (int(v) for v in np.max(np.asarray(both), axis=0))
    spec = models.PackSpec(slots if slots < full else None, int(mesh.size),
                           out_slots if out_slots < full else None)
    return spec if (spec.slots, spec.out_slots) != (None, None) else None


def step_key(base_key: jax.Array, step: int) -> jax.Array:
    """The dropout key of training step `step`."""
    return _step_key_fn()(base_key, np.uint32(step))

