"""PopT's training objectives: losses, metric collections and the jitted steps.

Batches are dicts of numpy arrays: `x` [B, n, 768] float32, `pad_mask` [B, n] bool (True =
padding), `coords` [B, n, 3] int32, `seq_id` [B, n] int32 and, for pretraining, `cls_label`
[B] + `token_label` [B, n] (0 unused, 1 replaced, 2 kept), for fine-tuning `label` [B].
An optional `weight` [B] (1 real, 0 filler) marks rows added to fill the last eval batch.
"""

# No `from __future__ import annotations`: clu reads the metric annotations as classes.

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils

from popt_jax.core import steps
from popt_jax.core.metrics import avg, compute_metrics, f1_score, roc_auc  # noqa: F401
from popt_jax.ieeg.layers import PackSpec, packed_length

PRETRAIN, FINETUNE = "pretrain", "finetune"
# Fine-tuning on a continuous target (upstream criterion `loss_fn: mse`, e.g. `rms` as
# regression): MSE loss, Pearson r / R^2 metrics (`variants.RegressionPredictions`).
REGRESSION = "regression"


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


def regression_loss(outputs, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean squared error of the CLS head's output against the float `label` (torch MSELoss)."""
    w = _weight(batch)
    pred = outputs[..., 0].astype(jnp.float32)
    se = jnp.square(pred - batch["label"].astype(jnp.float32))
    loss = masked_mean(se, w)
    return loss, dict(loss=loss, example_loss=se, example_mask=w > 0, logits=pred)


@flax.struct.dataclass
class RegressionMetrics(clu_metrics.Collection):
    """Running regression metrics: per-step loss and the per-example squared error."""

    loss: avg("loss")
    example_loss: avg("example_loss", "example_mask")


@flax.struct.dataclass
class PretrainMetrics(clu_metrics.Collection):
    """Running pretraining metrics: per-step loss, per-example/per-token BCE and accuracies."""

    loss: avg("loss")
    cls_loss: avg("cls_loss", "example_mask")
    token_loss: avg("token_loss", "token_mask")
    cls_accuracy: avg("cls_accuracy", "example_mask")
    token_accuracy: avg("token_accuracy", "token_mask")


@flax.struct.dataclass
class FinetuneMetrics(clu_metrics.Collection):
    """Running fine-tuning metrics (training steps and evaluation)."""

    loss: avg("loss")
    example_loss: avg("example_loss", "example_mask")
    accuracy: avg("accuracy", "example_mask")


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


def forward(task: str, model, batch, deterministic: bool, packed=None):
    """(loss, outputs) of a PopT (pretraining) or PopTClassifier (fine-tuning) on `batch`."""
    if task == PRETRAIN:
        out_rows = loss_rows(task, batch) if packed is not None else None
        out = model(batch["x"], batch["pad_mask"], batch["coords"], batch["seq_id"],
                    deterministic=deterministic, packed=packed, out_rows=out_rows)
        return pretrain_loss(out.cls_logits, out.token_logits, batch)
    logits = model(batch["x"], batch["pad_mask"], batch["coords"], batch.get("seq_id"),
                   deterministic=deterministic, packed=packed)
    if task == REGRESSION:
        return regression_loss(logits, batch)
    return finetune_loss(logits, batch)


def metrics_class(task: str):
    return {PRETRAIN: PretrainMetrics, REGRESSION: RegressionMetrics}.get(task, FinetuneMetrics)


def make_train_step(task: str, parts: steps.ModelParts, tx: optax.GradientTransformation, mesh,
                    *, loss_scaled_grad: bool = False):
    """The jitted PopT train step (`core.steps.make_train_step` with this task's loss).

    `loss_scaled_grad`: upstream's `loss.backward(loss)` (see `core.steps.make_train_step`).
    """
    return steps.make_train_step(functools.partial(forward, task), metrics_class(task), parts,
                                 tx, mesh, loss_scaled_grad=loss_scaled_grad)


def make_eval_step(task: str, parts: steps.ModelParts, mesh):
    """The jitted PopT eval step: (metric collection, per-example CLS logits)."""
    return steps.make_eval_step(functools.partial(forward, task), metrics_class(task), parts,
                                mesh)


def pack_spec(task: str, batch: dict[str, np.ndarray], mesh, quantum: int = 16,
              out_quantum: int = 64) -> "PackSpec | None":
    """The static `packed` argument of a train step for this process's (host) `batch`.

    One packing group per device of the mesh (rows never leave their device). Slots: the
    fullest group's real tokens (CLS included) and loss rows (`loss_rows`), each rounded up
    by `packed_length` (to 1/`quantum`, 1/`out_quantum` of the group: few distinct
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
    slots = packed_length(mask, groups, quantum)
    out_slots = packed_length(~loss_rows(task, batch, np), groups, out_quantum)
    if jax.process_count() > 1:
        both = multihost_utils.process_allgather(np.asarray([slots, out_slots], np.int32))
        slots, out_slots = (int(v) for v in np.max(np.asarray(both), axis=0))
    spec = PackSpec(slots if slots < full else None, int(mesh.size),
                           out_slots if out_slots < full else None)
    return spec if (spec.slots, spec.out_slots) != (None, None) else None


