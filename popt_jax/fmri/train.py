"""Training and evaluation of the transformer brain encoder: `brain_encoder_job(config, workdir)`.

    python -m popt_jax.main --config configs/brain_encoder.py --workdir runs/brain_encoder
    python -m popt_jax.main --config configs/brain_encoder.py --workdir runs/subj01 \\
        --config.data.root=/data/algonauts_2023_challenge_data --config.subject=1 \\
        --config.backbone_checkpoint=/ckpt/dinov2_vitb14_pretrain.pth

Steps, each one shared call: (1) data (`fmri.inputs.load_subject`) -- the Algonauts layout at
`config.data.root`, or a synthetic subject written under `{workdir}/synthetic_algonauts`;
(2) the frozen backbone and its features of block `features.enc_output_layer` (upstream's
numbering, 1 = last) on images resized to `features.image_size` when set, cached once in HDF5
(`fmri.inputs.cache_split_features`); (3) upstream's 90/10 split with its `idxs.npy`
(`fmri.recipe.make_split`: written to `{workdir}/upstream/`, or read from `data.split_file`);
(4) the decoder (`fmri.inputs.build_model`; `init_decoder` starts it from an upstream
checkpoint) trained as upstream: the MSE of each hemisphere summed, AdamW (lr 5e-4, weight
decay 1e-4), batch 16, 15 epochs, gradient clipping at 0.1, StepLR (x gamma every `lr_drop`
epochs), the last short batch kept; validation every epoch, the best epoch by mean r;
(5) with the best epoch (`fmri.evaluate.finish`): per-ROI scores, upstream's output files, test
predictions in the submission layout, the challenge score on the held-out test fMRI when the
data has it ("unavailable" otherwise), a ridge baseline, figures and `results.json`.

The loop uses `popt_jax.core`'s Orbax `Checkpoints` (under `{workdir}/checkpoints`, latest
+ best kept, resumed automatically), `Logs` (progress lines with steps/s and ETA,
`metrics.jsonl`, TensorBoard events), `core.mesh` (the state is replicated on a ("data",) mesh
and batches are sharded over it) and `core.steps` (model split, per-step keys). Checkpoints are
written at epoch ends; each epoch's order is a function of (seed, epoch), so a resumed run
sees the same batches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from popt_jax.core import mesh as mesh_lib
from popt_jax.core import steps
from popt_jax.core.checkpoints import Checkpoints
from popt_jax.core.jsonio import atomic_json
from popt_jax.core.logs import Logs
from popt_jax.core.overview import parameter_overview
from popt_jax.errors import TrainingError
from popt_jax.fmri import evaluate, inputs, recipe
from popt_jax.fmri import feature_cache as brain_features
from popt_jax.fmri import metrics as brain_eval

__all__ = ["brain_encoder_job", "split_indices", "make_optimizer", "make_steps", "predict_all"]

FORMAT = "popt_jax.brain_encoder/1"
# Kept importable here for callers of the previous layout.
synthetic_root, build_backbone = inputs.synthetic_root, inputs.build_backbone


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded 90/10 split in upstream's order (see `popt_jax.fmri.recipe.make_split`)."""
    idx = np.random.default_rng(seed).permutation(n)
    n_train = recipe.n_train_images(n, val_fraction)
    if not 0 < n_train < n:
        raise TrainingError(f"{n} images cannot be split with val_fraction={val_fraction}")
    return idx[:n_train], idx[n_train:]


# --------------------------------------------------------------------------------------------
# Optimiser and steps
# --------------------------------------------------------------------------------------------


def make_optimizer(t, steps_per_epoch: int) -> tuple[optax.GradientTransformation, Callable]:
    """Clip (global norm) + AdamW with torch's defaults; StepLR per epoch."""
    schedule = optax.exponential_decay(
        float(t.lr), transition_steps=int(t.lr_drop) * steps_per_epoch,
        decay_rate=float(t.lr_gamma), staircase=True)
    tx = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=float(t.weight_decay))
    if float(t.grad_clip) > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(t.grad_clip)), tx)
    return tx, schedule


def _mse(pred, target, weight):
    per_row = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=1)
    return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def make_steps(parts: steps.ModelParts, tx: optax.GradientTransformation, mesh):
    """(train_step, predict_step), both jitted pure functions of the parameters.

    train_step(params, opt_state, batch, rng) -> (params, opt_state, loss, grad_norm);
    predict_step(params, x) -> (lh, rh, attention). Every dropout stream's key is
    fold_in(rng, i), built inside the trace, so a step depends on its arguments only.
    """
    graphdef, _, rng_template, consts = parts
    rep = mesh_lib.replicated(mesh)
    leaves, treedef = jax.tree.flatten(rng_template)
    is_key = [jnp.issubdtype(x.dtype, jax.dtypes.prng_key) for x in leaves]
    counts = [None if k else np.asarray(x) for x, k in zip(leaves, is_key, strict=True)]

    def merged(params, consts, rng=None):
        rng = jax.random.key(0, impl="rbg") if rng is None else rng
        fresh = [jax.random.fold_in(rng, i) if k else jnp.asarray(c)
                 for i, (k, c) in enumerate(zip(is_key, counts, strict=True))]
        return nnx.merge(graphdef, params, jax.tree.unflatten(treedef, fresh), consts)

    def train(params, opt_state, batch, rng, consts):
        def loss_fn(p):
            out = merged(p, consts, rng)(batch["x"], deterministic=False)
            return (_mse(out["lh"], batch["lh"], batch["weight"])
                    + _mse(out["rh"], batch["rh"], batch["weight"]))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.global_norm(grads)

    def predict(params, x, consts):
        out = merged(params, consts)(x, deterministic=True)
        return out["lh"], out["rh"], out["attention"]

    train_jit = jax.jit(train, donate_argnums=(0, 1), out_shardings=(rep, rep, rep, rep))
    predict_jit = jax.jit(predict)
    consts = mesh_lib.replicate(consts, mesh)
    return (lambda p, o, b, r: train_jit(p, o, b, r, consts),
            lambda p, x: predict_jit(p, x, consts))


def _batches(order: np.ndarray, size: int):
    for a in range(0, len(order), size):
        idx = order[a:a + size]
        weight = np.ones(size, np.float32)
        if len(idx) < size:  # keep the short batch (upstream drops nothing) at one shape
            weight[len(idx):] = 0.0
            idx = np.concatenate([idx, np.repeat(idx[:1], size - len(idx))])
        yield idx, weight


def predict_all(predict_step, params, feats: brain_features.FeatureReader, index: np.ndarray,
                batch: int, mesh, with_attention: int = 0):
    """Predictions for the rows `index`: (lh, rh, attention [n, Q, K] of the first
    `with_attention` rows, or None; with_attention < 0: the mean over all rows [Q, K])."""
    lh, rh, att = [], [], []
    total = 0.0
    for idx, weight in _batches(np.asarray(index), batch):
        n = int(weight.sum())
        x = mesh_lib.to_global({"x": feats[idx]}, mesh, keys=None)["x"]
        a, b, w = predict_step(params, x)
        lh.append(np.asarray(a)[:n])
        rh.append(np.asarray(b)[:n])
        if with_attention < 0:
            total = total + np.asarray(w)[:n].astype(np.float64).sum(0)
        elif sum(len(t) for t in att) < with_attention:
            att.append(np.asarray(w)[:n])
    if with_attention < 0:
        return np.concatenate(lh), np.concatenate(rh), total / max(len(index), 1)
    return (np.concatenate(lh), np.concatenate(rh),
            np.concatenate(att)[:with_attention] if att else None)


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _open_features(config, subject, workdir: Path):
    """Backbone features of both splits (cached once); returns readers + grid facts."""
    backbone, fingerprint = inputs.build_backbone(config)
    stores = {split: inputs.cache_split_features(config, backbone, fingerprint, files, split,
                                                 workdir)
              for split, files in (("train", subject.train_images), ("test", subject.test_images))
              if files}
    max_bytes = float(config.features.max_memory_gb) * 1e9
    feats = {k: brain_features.FeatureReader(v, max_bytes) for k, v in stores.items()}
    feats.setdefault("test", None)
    return feats, fingerprint, inputs.feature_stride(config, backbone)


def _epoch(train_step, state, feats, fmri, order, batch, mesh, logs, ckpts, base_key, t,
           steps_per_epoch, schedule):
    """One pass over `order`; updates state['params', 'opt_state', 'step']; returns losses."""
    losses = []
    for idx, weight in _batches(order, batch):
        b = mesh_lib.to_global({"x": feats[idx], "lh": fmri["lh"][idx], "rh": fmri["rh"][idx],
                                "weight": weight}, mesh, keys=None)
        state["params"], state["opt_state"], loss, gnorm = train_step(
            state["params"], state["opt_state"], b, steps.step_key(base_key, state["step"]))
        state["step"] += 1
        step = state["step"]
        losses.append(loss)
        if step % max(1, int(t.log_every)) == 0 or step % steps_per_epoch == 0:
            values = {"loss": float(loss), "grad_norm": float(gnorm),
                      "lr": float(schedule(step - 1))}
            if not np.isfinite(values["loss"]):
                raise TrainingError(f"non-finite loss at step {step}; stopped (last "
                                    f"checkpoint {ckpts.latest_step()})")
            logs.progress(step, values)
            logs.write(step, "train", values)
    return losses


def _validate(predict, feats, fmri, va_idx) -> dict[str, float]:
    lh, rh, _ = predict(feats, va_idx, 0)
    r = [brain_eval.pearson_r(lh, fmri["lh"][va_idx]), brain_eval.pearson_r(rh, fmri["rh"][va_idx])]
    return {"mean_r": float(np.mean([np.mean(np.nan_to_num(v)) for v in r])),
            "loss": float(np.mean((lh - fmri["lh"][va_idx]) ** 2)
                          + np.mean((rh - fmri["rh"][va_idx]) ** 2))}


def brain_encoder_job(config, workdir) -> dict[str, Any]:
    """Runs the whole brain-encoder pipeline in `workdir` (see the module docstring).

    Returns:
      The `results.json` content.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subject = inputs.load_subject(config, workdir)
    feats, fingerprint, patch = _open_features(config, subject, workdir)
    feature_seconds = time.perf_counter() - t0
    _, dim, gh, gw = feats["train"].shape
    fmri = inputs.fmri_arrays(subject)
    tr_idx, va_idx = recipe.make_split(len(subject.train_images), config, workdir)
    model, mcfg, lh_names, rh_names = inputs.build_model(config, subject, dim)
    logging.info("brain encoder, %d queries:\n%s", mcfg.n_queries, parameter_overview(model))

    t, batch = config.train, int(config.train.batch_size)
    mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
    mesh_lib.local_batch_size(batch, mesh)
    steps_per_epoch, epochs = math.ceil(len(tr_idx) / batch), int(t.epochs)
    tx, schedule = make_optimizer(t, steps_per_epoch)
    parts = steps.split_model(model)
    state = {"params": mesh_lib.replicate(parts.params, mesh), "step": 0, "epoch": 0,
             "opt_state": mesh_lib.replicate(tx.init(parts.params), mesh)}
    train_step, predict_step = make_steps(parts, tx, mesh)

    def predict(f, index, with_attention=0):
        return predict_all(predict_step, state["params"], f, index,
                           int(config.eval.batch_size), mesh, with_attention)

    meta = {"format": FORMAT, "task": "brain_encoder",
            "model": {**dataclasses.asdict(mcfg), "features": f"{config.features.kind}:"
                      f"{int(config.features.enc_output_layer)}", "backbone": fingerprint,
                      "subject": str(subject.dir.name)}}
    ckpts = Checkpoints(workdir / "checkpoints", meta, keep=int(t.keep_checkpoints),
                        best_metric="mean_r", best_mode="max")
    _restore(ckpts, state)
    logs = Logs(workdir, epochs * steps_per_epoch, state["step"])
    base_key = jax.random.key(int(config.seed), impl="rbg")
    t_train = time.perf_counter()
    try:
        while state["epoch"] < epochs:
            order = np.random.default_rng([int(config.seed), state["epoch"]]).permutation(tr_idx)
            t_epoch = time.perf_counter()
            losses = _epoch(train_step, state, feats["train"], fmri, order, batch, mesh, logs,
                            ckpts, base_key, t, steps_per_epoch, schedule)
            state["epoch"] += 1
            values = {**_validate(predict, feats["train"], fmri, va_idx),
                      "train_loss": float(np.mean(losses)), "epoch": state["epoch"],
                      "train_images_per_s": len(tr_idx) / max(time.perf_counter() - t_epoch, 1e-9)}
            logging.info("epoch %d/%d: train loss %.4f, valid loss %.4f, valid mean r %.4f "
                         "(%.1f images/s)", state["epoch"], epochs, values["train_loss"],
                         values["loss"], values["mean_r"], values["train_images_per_s"])
            logs.write(state["step"], "valid", values)
            ckpts.save(state["step"], state["params"], state["opt_state"],
                       {"epoch": state["epoch"], "step": state["step"]},
                       metrics={"mean_r": values["mean_r"], "loss": values["loss"]})
        train_seconds = time.perf_counter() - t_train
        ckpts.wait()
        best = ckpts.best_step()
        if best != state["step"]:
            state["params"] = ckpts.restore(best, state["params"])["params"]
        results = evaluate.finish(config, workdir, subject, predict, feats["train"],
                                  feats["test"], fmri, tr_idx, va_idx, (lh_names, rh_names),
                                  (gh, gw), patch)
        results.update({
            "best_step": best, "best_epoch": best // steps_per_epoch, "epochs": epochs,
            "steps": state["step"], "train_seconds": round(train_seconds, 2),
            "feature_seconds": round(feature_seconds, 2),
            "total_seconds": round(time.perf_counter() - t0, 2),
            "model": dataclasses.asdict(mcfg), "feature_shape": [dim, gh, gw],
            "backbone": fingerprint, "workdir": str(workdir.absolute()),
            "config": config.to_dict() if hasattr(config, "to_dict") else dict(config)})
        if jax.process_index() == 0:
            atomic_json(workdir / "results.json", results)
        logging.info("best epoch %d: valid mean r %.4f (ridge %.4f); test challenge %s; "
                     "results in %s", results["best_epoch"], results["transformer"]["mean_r"],
                     results["ridge"]["mean_r"], results["test_challenge"],
                     workdir / "results.json")
        return results
    finally:
        ckpts.close()
        logs.close()
        for f in feats.values():
            if f is not None:
                f.close()


def _restore(ckpts: Checkpoints, state: dict) -> None:
    latest = ckpts.latest_step()
    if latest is None:
        return
    restored = ckpts.restore(latest, state["params"], state["opt_state"])
    state["params"], state["opt_state"] = restored["params"], restored["opt_state"]
    state["epoch"] = int(restored["progress"]["epoch"])
    state["step"] = int(restored["progress"]["step"])
    logging.info("resumed from %s (epoch %d, step %d)", ckpts.directory / str(latest),
                 state["epoch"], state["step"])
