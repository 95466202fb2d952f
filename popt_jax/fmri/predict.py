"""Inference with a trained brain encoder on any folder of images: `predict_images_job`
(`configs/predict_images.py`) and the `predict_images` API.

    python -m popt_jax.main --config configs/predict_images.py --workdir runs/pred \\
        --config.run=runs/subj01 --config.images=/data/my_images

`run` is a finished `brain_encoder` workdir: its `results.json` names the data root (for the
ROI masks), the backbone settings and the best checkpoint, which is restored. Every image of
the folder (PNG/JPEG, sorted by name; any other file is refused) is resized as in training,
passed through the frozen backbone and the decoder. Outputs under the workdir:

* `predictions/{lh,rh}_pred.npy`: float32 [images, vertices], rows in `images.txt` order; when
  the folder holds exactly the subject's test images, also `submission/subjXX/
  {lh,rh}_pred_test.npy` (the Algonauts submission layout);
* `figures/attention_<image>.png`: the chosen ROI queries' cross-attention over each of the
  first `n_attention_images` images;
* `figures/top_images.png`: per chosen ROI, the images with the highest mean predicted
  response over the ROI's vertices;
* `results.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optax
from absl import logging
from ml_collections import config_dict

from popt_jax.core import mesh as mesh_lib
from popt_jax.core import steps
from popt_jax.core.checkpoints import Checkpoints, read_meta
from popt_jax.core.jsonio import atomic_json
from popt_jax.errors import DataError, TrainingError
from popt_jax.fmri import algonauts, inputs, plots, recipe
from popt_jax.fmri import feature_cache as brain_features
from popt_jax.fmri import metrics as brain_eval

__all__ = ["predict_images", "predict_images_job", "list_images", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(folder: str | Path) -> list[Path]:
    """Image files of `folder`, sorted; a non-image file is a DataError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "image folder not found")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    for p in files:
        if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(p, f"is not an image ({'/'.join(IMAGE_SUFFIXES)} expected); "
                            "the folder must hold images only")
    if not files:
        raise DataError(folder, "holds no images")
    return files


def _load_run(run: Path):
    res = run / "results.json"
    if not res.exists():
        raise DataError(res, "is missing: not a finished brain-encoder run")
    info = json.loads(res.read_text())
    return info, config_dict.ConfigDict(info["config"])


def predict_images(run: str | Path, images: str | Path, out_dir: str | Path, *,
                   rois: str = "V1v,FFA-1,PPA,EBA", hemi: str = "lh", top_k: int = 8,
                   n_attention_images: int = 4, batch_size: int = 16) -> dict[str, Any]:
    """Predicted responses, attention PNGs and a top-images grid (see the module docstring)."""
    run, out_dir = Path(run), Path(out_dir)
    files = list_images(images)
    info, config = _load_run(run)
    subject = algonauts.AlgonautsSubject(info["data_root"], info["subject"])
    backbone, fingerprint = inputs.build_backbone(config)
    if fingerprint != info["backbone"]:
        raise TrainingError(f"{run}: the backbone built from its config ({fingerprint}) is not "
                            f"the one it was trained on ({info['backbone']})")
    store = inputs.cache_split_features(config, backbone, fingerprint, files, "predict", out_dir)
    patch = inputs.feature_stride(config, backbone)
    del backbone
    feats = brain_features.FeatureReader(store, float(config.features.max_memory_gb) * 1e9)
    try:
        _, dim, gh, gw = feats.shape
        model, _, lh_names, rh_names = inputs.build_model(config, subject, dim)
        mesh = mesh_lib.make_mesh(1)
        parts = steps.split_model(model)
        from popt_jax.fmri.train import make_steps, predict_all

        _, predict_step = make_steps(parts, optax.identity(), mesh)
        ck_dir = run / "checkpoints"
        best = int(info["best_step"])
        meta = read_meta(ck_dir / str(best))
        if meta is None:
            raise DataError(ck_dir / str(best), "best checkpoint not found")
        ckpts = Checkpoints(ck_dir, meta, best_metric="mean_r", best_mode="max")
        try:
            params = ckpts.restore(best, mesh_lib.replicate(parts.params, mesh))["params"]
        finally:
            ckpts.close()
        lh, rh, att = predict_all(predict_step, params, feats, np.arange(len(files)),
                                  batch_size, mesh, n_attention_images)
    finally:
        feats.close()
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for h, p in (("lh", lh), ("rh", rh)):
        np.save(pred_dir / f"{h}_pred.npy", p.astype(np.float32))
    (out_dir / "images.txt").write_text("".join(f"{p}\n" for p in files))
    out: dict[str, Any] = {"run": str(run), "images": len(files),
                           "predictions": [str(pred_dir / f"{h}_pred.npy") for h in ("lh", "rh")]}
    if [p.name for p in files] == [p.name for p in subject.test_images]:
        out["submission"] = [str(p) for p in brain_eval.save_submission(
            out_dir / "submission" / subject.dir.name, lh, rh)]
    names = [f"lh {n}" for n in lh_names] + [f"rh {n}" for n in rh_names]
    wanted = [f"{hemi} {r.strip()}" for r in rois.split(",") if r.strip()]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise DataError(None, f"ROIs {', '.join(missing)} are not queries of this model")
    chosen = [names.index(w) for w in wanted]
    size = inputs.image_size(config)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    out["attention"] = []
    for i, a in enumerate(att if att is not None else []):
        path = fig_dir / f"attention_{files[i].stem}.png"
        plots.plot_attention(recipe.load_image(files[i], size), a[chosen], wanted, (gh, gw),
                             patch, path, title=f"{files[i].name}: cross-attention")
        out["attention"].append(str(path))
    roi_index = {f"{h} {name}": (h, idx) for h in algonauts.HEMIS
                 for _, name, idx in subject.roi_vertices(h)}
    pred = {"lh": lh, "rh": rh}
    scores = {w: pred[roi_index[w][0]][:, roi_index[w][1]].mean(1) for w in wanted
              if w in roi_index and len(roi_index[w][1])}
    k = min(int(top_k), len(files))
    tops = {w: np.argsort(-s, kind="stable")[:k] for w, s in scores.items()}
    out["top_images"] = {w: [files[i].name for i in t] for w, t in tops.items()}
    if tops:
        out["top_images_png"] = str(plots.plot_top_images(
            {w: [recipe.load_image(files[i], size) for i in t] for w, t in tops.items()},
            {w: scores[w][t] for w, t in tops.items()}, fig_dir / "top_images.png"))
    atomic_json(out_dir / "results.json", out)
    logging.info("predicted %d images with %s; outputs in %s", len(files), run, out_dir)
    return out


def predict_images_job(config, workdir) -> dict[str, Any]:
    """The job form of `predict_images` (fields of `configs/predict_images.py`)."""
    return predict_images(config.run, config.images, workdir, rois=str(config.rois),
                          hemi=str(config.hemi), top_k=int(config.top_k),
                          n_attention_images=int(config.n_attention_images),
                          batch_size=int(config.batch_size))
