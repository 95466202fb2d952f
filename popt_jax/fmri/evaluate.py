"""The brain-encoder run's best-epoch evaluation and its files.

`finish` scores the validation split (per-vertex r, per-ROI means, the challenge score when a
noise ceiling is known), writes upstream's files (`popt_jax.fmri.recipe`), predicts the test
images (the submission layout) and, when the data root holds the held-out test fMRI and its
noise ceiling (the post-challenge release), computes the challenge score on them -- otherwise
the score is reported as unavailable. A ridge baseline from the same cached features and the
figures (per-ROI scores, attention maps) follow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
from absl import logging

from popt_jax.errors import TrainingError
from popt_jax.fmri import algonauts, plots, recipe, synthetic_algonauts
from popt_jax.fmri import feature_cache as brain_features
from popt_jax.fmri import metrics as brain_eval

__all__ = ["finish", "test_challenge", "ridge_inputs", "attention_figures", "UNAVAILABLE"]

UNAVAILABLE = "unavailable: the data root has no test fMRI with a noise ceiling"


def test_challenge(subject: algonauts.AlgonautsSubject, test_pred: dict | None
                   ) -> dict[str, Any] | str:
    """Challenge score of test predictions on the held-out test fMRI, or UNAVAILABLE."""
    if test_pred is None or not subject.has_test_fmri:
        return UNAVAILABLE
    r = {h: brain_eval.pearson_r(test_pred[h], np.asarray(subject.test_fmri(h), np.float32))
         for h in algonauts.HEMIS}
    nc = {h: subject.test_noise_ceiling(h) for h in algonauts.HEMIS}
    out: dict[str, Any] = brain_eval.challenge_scores(r, nc)
    out["mean_r"] = float(np.mean(np.nan_to_num(np.concatenate([r["lh"], r["rh"]]))))
    return out


def finish(config, workdir: Path, subject, predict: Callable, train_feats, test_feats, fmri,
           tr_idx, va_idx, names: tuple[list[str], list[str]], grid, patch) -> dict[str, Any]:
    """Best-epoch evaluation, upstream files, ridge baseline, submission files and figures.

    `predict(feats, index, with_attention)` -> (lh, rh, attention or None).
    """
    ev = config.eval
    rois = {h: subject.roi_vertices(h) for h in algonauts.HEMIS}
    nc = {h: subject.noise_ceiling(h) for h in algonauts.HEMIS}
    lh, rh, att = predict(train_feats, va_idx, int(ev.n_attention_images))
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
    # mean cross-attention of every query over the validation images [Q, gh*gw]
    mean_att = predict(train_feats, va_idx, -1)[2].astype(np.float32)
    np.save(out_dir / "val_mean_attention.npy", mean_att)
    places = _planted_places(subject)
    if places:  # the synthetic subject's spatial mode: does attention find the places?
        transformer["attention_on_places"] = synthetic_algonauts.attention_on_places(
            mean_att[:len(names[0])], names[0], places, grid)
    files: dict[str, Any] = {}
    test_pred = None
    if test_feats is not None:
        t_lh, t_rh, _ = predict(test_feats, np.arange(len(test_feats)), 0)
        test_pred = {"lh": t_lh, "rh": t_rh}
        files["submission"] = [str(p) for p in brain_eval.save_submission(
            workdir / "submission" / subject.dir.name, t_lh, t_rh)]
    files["upstream"] = [str(p) for p in recipe.save_upstream_outputs(
        workdir / "upstream", {"lh": lh, "rh": rh}, r, test_pred)]
    test_score = test_challenge(subject, test_pred)
    ridge, ridge_test = _ridge(config, workdir, subject, train_feats, test_feats, fmri, tr_idx,
                               va_idx, y_va, rois, nc, files)

    fig_dir = workdir / "figures"
    fig_dir.mkdir(exist_ok=True)
    files["roi_scores"] = str(plots.plot_roi_scores(
        transformer, fig_dir / "roi_scores.png", baseline=ridge,
        title=f"{subject.dir.name} validation: transformer mean r {transformer['mean_r']:.3f}, "
              f"ridge {ridge['mean_r']:.3f}"))
    files["attention"] = attention_figures(config, subject, att, va_idx, *names, grid, patch,
                                           fig_dir)
    return {"subject": subject.dir.name, "data_root": str(subject.dir.parent),
            "readout": str(config.model.readout),
            "features": f"{config.features.kind}:{int(config.features.enc_output_layer)}",
            "enc_output_layer": int(config.features.enc_output_layer),
            "n_train": int(len(tr_idx)), "n_val": int(len(va_idx)),
            "n_test": int(len(test_feats)) if test_feats is not None else 0,
            "transformer": transformer, "ridge": ridge, "test_challenge": test_score,
            "ridge_test_challenge": ridge_test, "chance_mean_r": chance["mean_r"],
            "files": files}


def _planted_places(subject) -> dict[str, list[int]]:
    truth = subject.dir / "synthetic_truth.json"
    if not truth.exists():
        return {}
    return json.loads(truth.read_text()).get("places", {})


def _ridge(config, workdir, subject, train_feats, test_feats, fmri, tr_idx, va_idx, y_va, rois,
           nc, files):
    how = str(config.eval.ridge_features)
    x_tr = ridge_inputs(train_feats, tr_idx, how, config)
    x_va = ridge_inputs(train_feats, va_idx, how, config)
    x_te = (ridge_inputs(test_feats, np.arange(len(test_feats)), how, config)
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
    test_pred = None
    if rb["test_pred"] is not None:
        test_pred = {"lh": rb["test_pred"][:, :n_lh], "rh": rb["test_pred"][:, n_lh:]}
        files["ridge_submission"] = [str(p) for p in brain_eval.save_submission(
            workdir / "submission_ridge" / subject.dir.name, test_pred["lh"], test_pred["rh"])]
    return ridge, test_challenge(subject, test_pred)


def ridge_inputs(feats: brain_features.FeatureReader, index: np.ndarray, how: str,
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


def attention_figures(config, subject, att, va_idx, lh_names, rh_names, grid, patch,
                      fig_dir: Path) -> list[str]:
    """Cross-attention of the chosen ROI queries drawn over the first validation images."""
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
    size = int(config.features.get("image_size", 0) or 0) or None
    out = []
    for i, a in enumerate(att):
        img = recipe.load_image(subject.train_images[int(va_idx[i])], size)
        path = fig_dir / f"attention_val{i}.png"
        plots.plot_attention(img, a[chosen], [names[q] for q in chosen], grid, patch, path,
                             title=f"validation image {int(va_idx[i])}: cross-attention")
        out.append(str(path))
    return out
