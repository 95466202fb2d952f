"""Ensembles of finished brain-encoder runs, as upstream's `brain_encoder_wrapper.py` builds
them: `ensemble_job(config, workdir)`.

    python -m popt_jax.main --config configs/brain_encoder_ensemble.py --workdir runs/ens \\
        --config.runs=runs/l1_r1,runs/l1_r2,runs/l2_r1,runs/l2_r2

Upstream's recipe for the paper's numbers is several runs for each of several backbone blocks
(`enc_output_layer`), combined per vertex: the validation correlations of the runs of one block
are averaged, a softmax over blocks of beta x that mean r (beta = 40) gives each block a weight
per vertex, and every run's prediction is multiplied by its block's weight and summed. Note
upstream does not divide by the number of runs per block, so with R runs per block the
ensemble is R times a weighted mean; `config.mean_over_runs = True` divides (a correction:
scores based on correlation are unchanged, squared errors are not). NaN correlations (constant
predictions) count as 0 before the softmax.

Each run must be a finished workdir of the `brain_encoder` job (its `results.json` and the
upstream files in `upstream/`), all of the same subject and validation split (`idxs.npy`).
The weights are fitted on the same validation images they are scored on, as upstream does, so
the ensemble's validation score is optimistic; the test-split score (when the data has test
fMRI) is not. Outputs: `results.json`, `upstream/` (upstream's file names), `submission/`,
`weights/{lh,rh}_block_weights.npy` [blocks, vertices], `figures/*.png`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from popt_jax.core.jsonio import atomic_json
from popt_jax.errors import DataError
from popt_jax.fmri import algonauts, evaluate, plots, recipe
from popt_jax.fmri import metrics as brain_eval

__all__ = ["ensemble_job", "block_weights", "combine"]


def block_weights(val_r: dict[int, list[np.ndarray]], beta: float) -> dict[int, np.ndarray]:
    """{block: [runs' r [V]]} -> {block: softmax over blocks of beta x mean r, [V]}."""
    blocks = sorted(val_r)
    mean_r = np.stack([np.mean([np.nan_to_num(r) for r in val_r[b]], axis=0) for b in blocks])
    z = beta * mean_r
    z = np.exp(z - z.max(0, keepdims=True))
    w = z / z.sum(0, keepdims=True)
    return {b: w[i] for i, b in enumerate(blocks)}


def combine(preds: list[np.ndarray], blocks: list[int], weights: dict[int, np.ndarray],
            mean_over_runs: bool = False) -> np.ndarray:
    """sum over runs of weight[block of run] * prediction ([n, V] each)."""
    counts = {b: blocks.count(b) for b in set(blocks)}
    out = np.zeros(preds[0].shape, np.float64)
    for p, b in zip(preds, blocks, strict=True):
        out += weights[b][None] * p / (counts[b] if mean_over_runs else 1)
    return out.astype(np.float32)


def _read_run(path: Path) -> dict[str, Any]:
    res = path / "results.json"
    if not res.exists():
        raise DataError(res, "is missing: not a finished brain-encoder run")
    try:
        info = json.loads(res.read_text())
    except json.JSONDecodeError as e:
        raise DataError(res, f"is not valid JSON ({e})") from None
    return {"info": info, **recipe.load_upstream_outputs(path / "upstream")}


def ensemble_job(config, workdir) -> dict[str, Any]:
    """Combines the runs listed in `config.runs` (see the module docstring)."""
    workdir = Path(workdir)
    paths = [Path(p.strip()) for p in str(config.runs).split(",") if p.strip()]
    if len(paths) < 2:
        raise DataError(None, "config.runs: give at least two finished run workdirs, "
                        "comma-separated")
    runs = [_read_run(p) for p in paths]
    first = runs[0]
    for p, r in zip(paths[1:], runs[1:], strict=True):
        if r["info"]["subject"] != first["info"]["subject"]:
            raise DataError(p, f"is {r['info']['subject']}, the first run "
                            f"{first['info']['subject']}")
        if not np.array_equal(r["idxs"], first["idxs"]):
            raise DataError(p / "upstream" / "idxs.npy", f"differs from {paths[0]}'s: the runs "
                            "must share one validation split")
    blocks = [int(r["info"].get("enc_output_layer", 1)) for r in runs]
    subject = algonauts.AlgonautsSubject(first["info"]["data_root"], first["info"]["subject"])
    va_idx = first["idxs"][int(first["info"]["n_train"]):]
    beta, mean_runs = float(config.beta), bool(config.mean_over_runs)
    out: dict[str, Any] = {"runs": [str(p) for p in paths], "blocks": blocks, "beta": beta,
                           "mean_over_runs": mean_runs, "subject": subject.dir.name}
    val_pred, val_r, test_pred, weights = {}, {}, {}, {}
    for hemi in algonauts.HEMIS:
        per_block: dict[int, list] = {}
        for r, b in zip(runs, blocks, strict=True):
            per_block.setdefault(b, []).append(r[f"{hemi}_val_corr"])
        weights[hemi] = block_weights(per_block, beta)
        val_pred[hemi] = combine([r[f"{hemi}_fmri_val_pred"] for r in runs], blocks,
                                 weights[hemi], mean_runs)
        val_r[hemi] = brain_eval.pearson_r(val_pred[hemi],
                                           np.asarray(subject.fmri(hemi), np.float32)[va_idx])
        tests = [r[f"{hemi}_pred_test"] for r in runs]
        test_pred[hemi] = (None if any(t is None for t in tests)
                           else combine(tests, blocks, weights[hemi], mean_runs))
    test_pred = None if any(v is None for v in test_pred.values()) else test_pred
    rois = {h: subject.roi_vertices(h) for h in algonauts.HEMIS}
    nc = {h: subject.noise_ceiling(h) for h in algonauts.HEMIS}
    out["ensemble"] = brain_eval.summarize(val_r, rois, nc)
    out["runs_mean_r"] = [float(r["info"]["transformer"]["mean_r"]) for r in runs]
    out["test_challenge"] = evaluate.test_challenge(subject, test_pred)
    files = _write(workdir, subject, val_pred, val_r, test_pred, weights, out, first["idxs"])
    out["files"] = files
    atomic_json(workdir / "results.json", out)
    logging.info("ensemble of %d runs (blocks %s): valid mean r %.4f (runs %s); test "
                 "challenge %s", len(runs), sorted(set(blocks)), out["ensemble"]["mean_r"],
                 ", ".join(f"{x:.4f}" for x in out["runs_mean_r"]), out["test_challenge"])
    return out


def _write(workdir: Path, subject, val_pred, val_r, test_pred, weights, out,
           idxs) -> dict[str, Any]:
    files: dict[str, Any] = {"upstream": [str(p) for p in recipe.save_upstream_outputs(
        workdir / "upstream", val_pred, val_r, test_pred)]}
    np.save(workdir / "upstream" / "idxs.npy", idxs)
    if test_pred is not None:
        files["submission"] = [str(p) for p in brain_eval.save_submission(
            workdir / "submission" / subject.dir.name, test_pred["lh"], test_pred["rh"])]
    wdir = workdir / "weights"
    wdir.mkdir(parents=True, exist_ok=True)
    blocks = sorted(weights["lh"])
    for hemi in algonauts.HEMIS:
        np.save(wdir / f"{hemi}_block_weights.npy",
                np.stack([weights[hemi][b] for b in blocks]).astype(np.float32))
    fig_dir = workdir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    files["roi_scores"] = str(plots.plot_roi_scores(
        out["ensemble"], fig_dir / "roi_scores.png",
        title=f"{subject.dir.name} ensemble of {len(out['runs'])} runs: validation mean r "
              f"{out['ensemble']['mean_r']:.3f}"))
    files["block_weights"] = str(plots.plot_block_weights(
        {h: np.stack([weights[h][b] for b in blocks]) for h in algonauts.HEMIS}, blocks,
        fig_dir / "block_weights.png"))
    return files
