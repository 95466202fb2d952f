"""Training and evaluation of the transformer brain encoder: `brain_encoder_job(config, workdir)`.

    python -m popt_jax.main --config configs/brain_encoder.py --workdir runs/brain_encoder
    python -m popt_jax.main --config configs/brain_encoder.py --workdir runs/subj01 \\
        --config.data.root=/data/algonauts_2023_challenge_data --config.subject=1 \\
        --config.backbone_checkpoint=/ckpt/dinov2_vitb14_pretrain.pth

Steps: (1) data -- the Algonauts layout at `config.data.root`, or a synthetic subject written
under `{workdir}/synthetic_algonauts` on first use; (2) the frozen DINOv2 backbone (a
checkpoint, or a small random ViT for the CPU default) and its features cached once in HDF5
(`popt_jax.brain_features`); (3) a 90/10 split of the training images (seeded shuffle, as
upstream); (4) training of the decoder as upstream: the MSE of each hemisphere summed, AdamW
(lr 5e-4, weight decay 1e-4), batch 16, 15 epochs, gradient clipping at 0.1, StepLR (x gamma
every `lr_drop` epochs), the last short batch kept; validation every epoch, the best epoch by
mean r; (5) with the best epoch: per-ROI scores, the challenge metric when a noise ceiling is
given, test predictions in the submission layout, a ridge baseline from the same features,
per-ROI and attention figures, and `results.json`.

The loop uses `popt_jax.core`'s Orbax `Checkpoints` (under `{workdir}/checkpoints`, latest
+ best kept, resumed automatically) and `Logs` (progress lines with steps/s and ETA,
`metrics.jsonl`, TensorBoard events), and `train_lib`'s mesh helpers: the state is replicated
on a ("data",) mesh and batches are sharded over it. Checkpoints are written at epoch ends;
each epoch's order is a function of (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
import json
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
from popt_jax.fmri import algonauts, dinov2, plots, synthetic_algonauts
from popt_jax.fmri import feature_cache as brain_features
from popt_jax.fmri import metrics as brain_eval
from popt_jax.fmri.decoder import BrainEncoder, BrainEncoderConfig

__all__ = ["brain_encoder_job", "synthetic_root", "build_backbone", "split_indices",
           "make_optimizer", "make_steps"]

FORMAT = "popt_jax.brain_encoder/1"
_EXPECT = {"": None, "vits14": dict(embed_dim=384, num_heads=6),
           "vitb14": dict(embed_dim=768, num_heads=12),
           "vitl14": dict(embed_dim=1024, depth=24, num_heads=16)}


# --------------------------------------------------------------------------------------------
# Data, backbone, features
# --------------------------------------------------------------------------------------------


def synthetic_root(config, workdir: Path) -> Path:
    """Writes the synthetic subject under the workdir once (re-written if its config changed)."""
    s = config.data.synthetic
    cfg = synthetic_algonauts.SyntheticAlgonautsConfig(
        subject=int(config.subject), n_train=int(s.n_train), n_test=int(s.n_test),
        image_size=int(s.image_size), n_vertices=(int(s.lh_vertices), int(s.rh_vertices)),
        snr_range=(float(s.snr_min), float(s.snr_max)), plant=bool(s.plant), seed=int(s.seed))
    root = workdir / "synthetic_algonauts"
    truth = root / f"subj{cfg.subject:02d}" / "synthetic_truth.json"
    want = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if not truth.exists() or json.loads(truth.read_text()).get("config") != want:
        logging.info("writing a synthetic Algonauts subject to %s", root)
        synthetic_algonauts.write_synthetic_algonauts(root, cfg)
    return root


def build_backbone(config) -> tuple[dinov2.DinoV2, str]:
    """The frozen DINOv2 and a fingerprint of its weights (for the feature-cache key)."""
    b = config.backbone
    if config.backbone_checkpoint:
        expect = str(b.get("expect", "vitb14"))
        if expect not in _EXPECT:
            raise TrainingError(f"config.backbone.expect must be one of {sorted(_EXPECT)}, "
                                f"got {expect!r}")
        expected = None if not expect else dinov2.DinoV2Config(**_EXPECT[expect])
        from popt_jax.fmri.convert_dinov2 import load_dinov2

        model = load_dinov2(config.backbone_checkpoint, expected=expected)
    else:
        cfg = dinov2.DinoV2Config(patch_size=int(b.patch_size), embed_dim=int(b.embed_dim),
                                  depth=int(b.depth), num_heads=int(b.num_heads),
                                  mlp_ratio=float(b.mlp_ratio),
                                  pretrain_grid=int(b.pretrain_grid))
        logging.info("no backbone_checkpoint: a random %s backbone (plumbing runs only)",
                     cfg.describe())
        model = dinov2.DinoV2(cfg, rngs=nnx.Rngs(int(b.seed)))
    return model, brain_features.backbone_fingerprint(model)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's split: shuffle, the first round(90%) train, the rest validation (seeded)."""
    idx = np.random.default_rng(seed).permutation(n)
    n_train = int(np.round(n * (1.0 - val_fraction)))
    if not 0 < n_train < n:
        raise TrainingError(f"{n} images cannot be split with val_fraction={val_fraction}")
    return np.sort(idx[:n_train]), np.sort(idx[n_train:])


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
    """Predictions for the rows `index`: (lh, rh, attention of the first rows or None)."""
    lh, rh, att = [], [], []
    for idx, weight in _batches(np.asarray(index), batch):
        n = int(weight.sum())
        x = mesh_lib.to_global({"x": feats[idx]}, mesh, keys=None)["x"]
        a, b, w = predict_step(params, x)
        lh.append(np.asarray(a)[:n])
        rh.append(np.asarray(b)[:n])
        if sum(len(t) for t in att) < with_attention:
            att.append(np.asarray(w)[:n])
    return (np.concatenate(lh), np.concatenate(rh),
            np.concatenate(att)[:with_attention] if att else None)


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _model_config(subject: algonauts.AlgonautsSubject, config, dim: int):
    readout = str(config.model.readout)
    lh_m, lh_names = subject.query_masks("lh", readout)
    rh_m, rh_names = subject.query_masks("rh", readout)
    cfg = BrainEncoderConfig(hidden_dim=dim, n_heads=int(config.model.n_heads),
                             ff_dim=int(config.model.ff_dim), dropout=float(config.model.dropout),
                             readout=readout, lh_vertices=subject.n_vertices("lh"),
                             rh_vertices=subject.n_vertices("rh"), lh_queries=len(lh_names),
                             rh_queries=len(rh_names))
    return cfg, lh_m, rh_m, lh_names, rh_names


def brain_encoder_job(config, workdir) -> dict[str, Any]:
    """Runs the whole brain-encoder pipeline in `workdir` (see the module docstring).

    Returns:
      The `results.json` content.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    root = Path(config.data.root) if config.data.root else synthetic_root(config, workdir)
    subject = algonauts.AlgonautsSubject(root, config.subject)
    logging.info("%s: %d training / %d test images of %dx%d, %d + %d vertices", subject.dir,
                 len(subject.train_images), len(subject.test_images), *subject.image_size,
                 subject.n_vertices("lh"), subject.n_vertices("rh"))

    # Features of the frozen backbone, once.
    backbone, fingerprint = build_backbone(config)
    fc = config.features
    stores = {}
    for split, files in (("train", subject.train_images), ("test", subject.test_images)):
        if not files:
            continue
        key = brain_features.cache_key(fingerprint, fc.kind, int(fc.block), files,
                                       str(fc.compute_dtype))
        stores[split] = brain_features.cache_features(
            backbone, files, workdir / "features" / f"{split}_{key}.h5", kind=str(fc.kind),
            block=int(fc.block), batch_size=int(fc.batch_size),
            compute_dtype=str(fc.compute_dtype), backbone=fingerprint, label=split)
    feature_seconds = time.perf_counter() - t0
    max_bytes = float(fc.max_memory_gb) * 1e9
    train_feats = brain_features.FeatureReader(stores["train"], max_bytes)
    test_feats = (brain_features.FeatureReader(stores["test"], max_bytes)
                  if "test" in stores else None)
    _, dim, gh, gw = train_feats.shape
    patch = backbone.config.patch_size
    del backbone  # frees the ViT-B weights before training

    # Targets, split, model.
    t = config.train
    fmri = {h: np.asarray(subject.fmri(h), np.float32) for h in algonauts.HEMIS}
    tr_idx, va_idx = split_indices(len(subject.train_images), float(t.val_fraction),
                                   int(config.seed))
    mcfg, lh_m, rh_m, lh_names, rh_names = _model_config(subject, config, dim)
    model = BrainEncoder(mcfg, lh_m, rh_m, rngs=nnx.Rngs(int(config.seed)))
    logging.info("brain encoder, %d queries:\n%s", mcfg.n_queries,
                 parameter_overview(model))
    mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
    batch = int(t.batch_size)
    mesh_lib.local_batch_size(batch, mesh)
    steps_per_epoch = math.ceil(len(tr_idx) / batch)
    epochs = int(t.epochs)
    total = epochs * steps_per_epoch
    tx, schedule = make_optimizer(t, steps_per_epoch)
    parts = steps.split_model(model)
    params = mesh_lib.replicate(parts.params, mesh)
    opt_state = mesh_lib.replicate(tx.init(parts.params), mesh)
    train_step, predict_step = make_steps(parts, tx, mesh)

    meta = {"format": FORMAT, "task": "brain_encoder",
            "model": {**dataclasses.asdict(mcfg), "features": f"{fc.kind}:{int(fc.block)}",
                      "backbone": fingerprint, "subject": str(subject.dir.name)}}
    ckpts = Checkpoints(workdir / "checkpoints", meta, keep=int(t.keep_checkpoints),
                        best_metric="mean_r", best_mode="max")
    base_key = jax.random.key(int(config.seed), impl="rbg")
    epoch = step = 0
    latest = ckpts.latest_step()
    if latest is not None:
        restored = ckpts.restore(latest, params, opt_state)
        params, opt_state = restored["params"], restored["opt_state"]
        epoch, step = int(restored["progress"]["epoch"]), int(restored["progress"]["step"])
        logging.info("resumed from %s (epoch %d, step %d)", ckpts.directory / str(latest),
                     epoch, step)
    logs = Logs(workdir, total, step)
    eval_bs = int(config.eval.batch_size)
    log_every = max(1, int(t.log_every))
    t_train = time.perf_counter()
    try:
        while epoch < epochs:
            order = np.random.default_rng([int(config.seed), epoch]).permutation(tr_idx)
            losses = []
            t_epoch = time.perf_counter()
            for idx, weight in _batches(order, batch):
                b = mesh_lib.to_global({"x": train_feats[idx], "lh": fmri["lh"][idx],
                                  "rh": fmri["rh"][idx], "weight": weight}, mesh, keys=None)
                params, opt_state, loss, gnorm = train_step(params, opt_state, b,
                                                            steps.step_key(base_key, step))
                step += 1
                losses.append(loss)
                if step % log_every == 0 or step % steps_per_epoch == 0:
                    values = {"loss": float(loss), "grad_norm": float(gnorm),
                              "lr": float(schedule(step - 1))}
                    if not np.isfinite(values["loss"]):
                        raise TrainingError(f"non-finite loss at step {step}; stopped (last "
                                            f"checkpoint {ckpts.latest_step()})")
                    logs.progress(step, values)
                    logs.write(step, "train", values)
            epoch += 1
            images_s = len(tr_idx) / max(time.perf_counter() - t_epoch, 1e-9)
            lh, rh, _ = predict_all(predict_step, params, train_feats, va_idx, eval_bs, mesh)
            r = {"lh": brain_eval.pearson_r(lh, fmri["lh"][va_idx]),
                 "rh": brain_eval.pearson_r(rh, fmri["rh"][va_idx])}
            val_loss = float(np.mean((lh - fmri["lh"][va_idx]) ** 2)
                             + np.mean((rh - fmri["rh"][va_idx]) ** 2))
            values = {"mean_r": float(np.mean([np.mean(np.nan_to_num(v)) for v in r.values()])),
                      "loss": val_loss, "train_loss": float(np.mean(losses)),
                      "train_images_per_s": images_s, "epoch": epoch}
            logging.info("epoch %d/%d: train loss %.4f, valid loss %.4f, valid mean r %.4f "
                         "(%.1f images/s)", epoch, epochs, values["train_loss"], val_loss,
                         values["mean_r"], images_s)
            logs.write(step, "valid", values)
            ckpts.save(step, params, opt_state, {"epoch": epoch, "step": step},
                       metrics={"mean_r": values["mean_r"], "loss": val_loss})
        train_seconds = time.perf_counter() - t_train
        ckpts.wait()
        best = ckpts.best_step()
        best_params = ckpts.restore(best, params)["params"] if best != step else params
        best_epoch = best // steps_per_epoch  # checkpoints are written at epoch ends
        results = _finish(config, workdir, subject, predict_step, best_params, train_feats,
                          test_feats, fmri, tr_idx, va_idx, mesh, lh_names, rh_names,
                          (gh, gw), patch)
        results.update({
            "best_step": best, "best_epoch": best_epoch, "epochs": epochs, "steps": step,
            "train_seconds": round(train_seconds, 2),
            "feature_seconds": round(feature_seconds, 2),
            "total_seconds": round(time.perf_counter() - t0, 2),
            "model": dataclasses.asdict(mcfg), "feature_shape": [dim, gh, gw],
            "backbone": fingerprint, "workdir": str(workdir.absolute()),
            "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
        })
        if jax.process_index() == 0:
            atomic_json(workdir / "results.json", results)
        logging.info("best epoch %d: valid mean r %.4f (ridge %.4f); results in %s", best_epoch,
                     results["transformer"]["mean_r"], results["ridge"]["mean_r"],
                     workdir / "results.json")
        return results
    finally:
        ckpts.close()
        logs.close()
        train_feats.close()
        if test_feats is not None:
            test_feats.close()


def _finish(config, workdir: Path, subject, predict_step, params, train_feats, test_feats,
            fmri, tr_idx, va_idx, mesh, lh_names, rh_names, grid, patch) -> dict[str, Any]:
    """Best-epoch evaluation, ridge baseline, submission files and figures."""
    ev = config.eval
    eval_bs = int(ev.batch_size)
    rois = {h: subject.roi_vertices(h) for h in algonauts.HEMIS}
    nc = {h: subject.noise_ceiling(h) for h in algonauts.HEMIS}
    n_att = int(ev.n_attention_images)
    lh, rh, att = predict_all(predict_step, params, train_feats, va_idx, eval_bs, mesh,
                              with_attention=n_att)
    y_va = {"lh": fmri["lh"][va_idx], "rh": fmri["rh"][va_idx]}
    r = {"lh": brain_eval.pearson_r(lh, y_va["lh"]), "rh": brain_eval.pearson_r(rh, y_va["rh"])}
    transformer = brain_eval.summarize(r, rois, nc)
    # A null reference: the same predictions paired with shuffled images.
    perm = np.random.default_rng(1).permutation(len(va_idx))
    chance = brain_eval.summarize({"lh": brain_eval.pearson_r(lh[perm], y_va["lh"]),
                                   "rh": brain_eval.pearson_r(rh[perm], y_va["rh"])}, rois)
    out_dir = workdir / "predictions"
    out_dir.mkdir(exist_ok=True)
    for hemi in algonauts.HEMIS:
        np.save(out_dir / f"{hemi}_val_r.npy", r[hemi].astype(np.float32))
        fs = subject.fsaverage_mask(hemi)
        if fs is not None:
            full = np.full(fs.shape, np.nan, np.float32)
            full[fs] = r[hemi]
            np.save(out_dir / f"{hemi}_val_r_fsaverage.npy", full)
    np.save(out_dir / "val_index.npy", va_idx)
    files = {}
    sub_dir = workdir / "submission" / subject.dir.name
    if test_feats is not None:
        idx = np.arange(len(test_feats))
        t_lh, t_rh, _ = predict_all(predict_step, params, test_feats, idx, eval_bs, mesh)
        files["submission"] = [str(p) for p in brain_eval.save_submission(sub_dir, t_lh, t_rh)]

    # Ridge from the same cached features.
    how = str(ev.ridge_features)
    x_tr = _ridge_inputs(train_feats, tr_idx, how, config)
    x_va = _ridge_inputs(train_feats, va_idx, how, config)
    x_te = (_ridge_inputs(test_feats, np.arange(len(test_feats)), how, config)
            if test_feats is not None else None)
    n_lh = fmri["lh"].shape[1]
    y_tr = np.concatenate([fmri["lh"][tr_idx], fmri["rh"][tr_idx]], 1)
    rb = brain_eval.ridge_baseline(x_tr, y_tr, x_va, np.concatenate([y_va["lh"], y_va["rh"]], 1),
                                   x_te)
    r_ridge = {"lh": brain_eval.pearson_r(rb["val_pred"][:, :n_lh], y_va["lh"]),
               "rh": brain_eval.pearson_r(rb["val_pred"][:, n_lh:], y_va["rh"])}
    ridge = brain_eval.summarize(r_ridge, rois, nc)
    ridge.update({"features": how, "lambda": rb["lambda"],
                  "relative_lambda": rb["relative_lambda"],
                  "val_mean_r_per_lambda": rb["val_mean_r_per_lambda"]})
    if rb["test_pred"] is not None:
        files["ridge_submission"] = [str(p) for p in brain_eval.save_submission(
            workdir / "submission_ridge" / subject.dir.name, rb["test_pred"][:, :n_lh],
            rb["test_pred"][:, n_lh:])]

    # Figures.
    fig_dir = workdir / "figures"
    fig_dir.mkdir(exist_ok=True)
    files["roi_scores"] = str(plots.plot_roi_scores(
        transformer, fig_dir / "roi_scores.png", baseline=ridge,
        title=f"{subject.dir.name} validation: transformer mean r {transformer['mean_r']:.3f}, "
              f"ridge {ridge['mean_r']:.3f}"))
    files["attention"] = _attention_figures(config, subject, att, va_idx, lh_names, rh_names,
                                            grid, patch, fig_dir)
    return {"subject": subject.dir.name, "readout": str(config.model.readout),
            "features": f"{config.features.kind}:{int(config.features.block)}",
            "n_train": int(len(tr_idx)), "n_val": int(len(va_idx)),
            "n_test": int(len(test_feats)) if test_feats is not None else 0,
            "transformer": transformer, "ridge": ridge,
            "chance_mean_r": chance["mean_r"], "files": files}


def _ridge_inputs(feats: brain_features.FeatureReader, index: np.ndarray, how: str,
                  config) -> np.ndarray:
    """Pooled/flattened features of `index`, read in chunks (the store may not fit in RAM)."""
    if how == "flat":
        nbytes = len(index) * int(np.prod(feats.shape[1:])) * 4
        if nbytes > float(config.features.max_memory_gb) * 1e9:
            raise TrainingError(f"ridge on flattened features needs {nbytes / 1e9:.1f} GB "
                                "(over config.features.max_memory_gb); use "
                                "config.eval.ridge_features='pooled'")
    parts = [brain_eval.pool_features(feats[index[a:a + 256]], how)
             for a in range(0, len(index), 256)]
    return np.concatenate(parts)


def _attention_figures(config, subject, att, va_idx, lh_names, rh_names, grid, patch,
                       fig_dir: Path) -> list[str]:
    if att is None or not len(att):
        return []
    names = [f"lh {n}" for n in lh_names] + [f"rh {n}" for n in rh_names]
    if len(names) > 200:  # the voxels readout: one query per vertex, nothing to show per ROI
        logging.info("attention figures skipped for the %s readout", config.model.readout)
        return []
    hemi = str(config.eval.attention_hemi)
    wanted = [s.strip() for s in str(config.eval.attention_rois).split(",") if s.strip()]
    chosen = [names.index(f"{hemi} {w}") for w in wanted if f"{hemi} {w}" in names]
    if not chosen:
        chosen = list(range(min(len(names), 5)))
    out = []
    images = subject.load_images("train", va_idx[:len(att)])
    for i, (img, a) in enumerate(zip(images, att, strict=True)):
        path = fig_dir / f"attention_val{i}.png"
        plots.plot_attention(img, a[chosen], [names[q] for q in chosen], grid, patch, path,
                                  title=f"validation image {int(va_idx[i])}: cross-attention")
        out.append(str(path))
    return out
