"""Brain-encoder metrics: per-vertex Pearson r, ROI summaries, the challenge metric, a ridge
baseline and submission files (figures: `popt_jax.fmri.plots`).

* `pearson_r`: per-vertex correlation over images (a constant column gives NaN, which the
  summaries count as 0, as upstream's `nan_to_num` does).
* `summarize`: mean r per hemisphere over all vertices, per named ROI (all six families) and
  per family; `mean_r` = (left mean + right mean) / 2 is upstream's `val_perf`, the model
  selection criterion.
* `challenge_score` / `challenge_scores`: the Algonauts 2023 score exactly as the devkit computes
  it: per vertex r (NaN, from a constant column, counts as 0); r < 0 set to 0; the noise
  ceiling nc as a fraction with nc == 0 replaced by 1e-14; 100 * min(r^2 / nc, 1) per vertex;
  the mean over vertices, per hemisphere and overall (all vertices of both hemispheres).
* `ridge_baseline`: closed-form ridge regression in JAX from pooled or flattened features,
  with an intercept and the penalty chosen on validation (one for all vertices). Uses the
  primal (features x features) or dual (images x images) eigendecomposition, whichever is
  smaller, so every penalty of the grid costs one matrix product.
* Submission: `{lh,rh}_pred_test.npy`, float32 [n_test_images, n_vertices].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["pearson_r", "summarize", "challenge_score", "challenge_scores", "vertex_scores", "ridge_baseline", "pool_features",
           "save_submission"]

_HI = jax.lax.Precision.HIGHEST


def pearson_r(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-column Pearson r of [n, V] arrays -> [V] float64 (NaN for a constant column)."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(target, np.float64)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ")
    p = p - p.mean(0)
    t = t - t.mean(0)
    denom = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (p * t).sum(0) / denom, np.nan)


def _mean0(r: np.ndarray) -> float:
    return float(np.mean(np.nan_to_num(r, nan=0.0))) if r.size else float("nan")


NC_ZERO = 1e-14  # the devkit's stand-in for a zero noise ceiling


def vertex_scores(r: np.ndarray, noise_ceiling: np.ndarray) -> np.ndarray:
    """Per-vertex devkit score in percent: 100 * min(max(r, 0)^2 / nc, 1), nc == 0 -> 1e-14."""
    r = np.nan_to_num(np.asarray(r, np.float64), nan=0.0)
    nc = np.asarray(noise_ceiling, np.float64)
    if r.shape != nc.shape:
        raise ValueError(f"{r.shape[0]} correlations but {nc.shape[0]} noise-ceiling values")
    nc = np.where(nc == 0, NC_ZERO, nc)
    return 100.0 * np.minimum(np.maximum(r, 0.0) ** 2 / nc, 1.0)


def challenge_score(r: np.ndarray, noise_ceiling: np.ndarray) -> float:
    """Mean devkit score over the vertices of `r` (percent); see `vertex_scores`."""
    return float(np.mean(vertex_scores(r, noise_ceiling)))


def challenge_scores(r: dict[str, np.ndarray], noise_ceiling: dict[str, np.ndarray]
                     ) -> dict[str, float]:
    """{'lh', 'rh', 'overall'}: per hemisphere and over all vertices of both (percent)."""
    per = {h: vertex_scores(r[h], noise_ceiling[h]) for h in ("lh", "rh")}
    return {"lh": float(per["lh"].mean()), "rh": float(per["rh"].mean()),
            "overall": float(np.concatenate([per["lh"], per["rh"]]).mean())}


def summarize(r: dict[str, np.ndarray], rois: dict[str, list[tuple[str, str, np.ndarray]]],
              noise_ceiling: dict[str, np.ndarray | None] | None = None) -> dict[str, Any]:
    """Scores from per-vertex r of both hemispheres.

    Args:
      r: {'lh': [V_lh], 'rh': [V_rh]}.
      rois: per hemisphere, (family, ROI name, vertex indices) as `AlgonautsSubject.roi_vertices`.
      noise_ceiling: per hemisphere fractions, or None.

    Returns:
      {'mean_r', 'mean_r_lh', 'mean_r_rh', 'roi': {name: {'lh', 'rh'}},
       'family': {family: {'lh', 'rh'}}, 'challenge' (percent over all vertices, or None),
       'challenge_lh', 'challenge_rh'}
    """
    out: dict[str, Any] = {"mean_r_lh": _mean0(r["lh"]), "mean_r_rh": _mean0(r["rh"])}
    out["mean_r"] = (out["mean_r_lh"] + out["mean_r_rh"]) / 2
    roi: dict[str, dict[str, float]] = {}
    fam: dict[str, dict[str, list]] = {}
    for hemi in ("lh", "rh"):
        for family, name, idx in rois[hemi]:
            roi.setdefault(name, {})[hemi] = _mean0(r[hemi][idx])
            fam.setdefault(family, {}).setdefault(hemi, []).append(idx)
    out["roi"] = roi
    out["family"] = {f: {h: _mean0(r[h][np.unique(np.concatenate(v))]) for h, v in d.items()}
                     for f, d in fam.items()}
    out["challenge"] = None
    if noise_ceiling and all(noise_ceiling.get(h) is not None for h in ("lh", "rh")):
        c = challenge_scores(r, noise_ceiling)
        out["challenge_lh"], out["challenge_rh"], out["challenge"] = c["lh"], c["rh"], c["overall"]
    return out


# --------------------------------------------------------------------------------------------
# Ridge baseline
# --------------------------------------------------------------------------------------------


def pool_features(features: np.ndarray, how: str = "pooled") -> np.ndarray:
    """[n, D, gh, gw] -> [n, D] (mean over the grid) or [n, D*gh*gw] ('flat')."""
    x = np.asarray(features, np.float32)
    if how == "pooled":
        return x.mean(axis=(2, 3))
    if how == "flat":
        return x.reshape(len(x), -1)
    raise ValueError(f"ridge features must be 'pooled' or 'flat', got {how!r}")


@jax.jit
def _ridge_path(x_tr, y_tr, x_ev, lambdas):
    """Predictions [L, n_ev, V] of ridge fits for every penalty (with an intercept)."""
    mx, my = x_tr.mean(0), y_tr.mean(0)
    xc, yc, xe = x_tr - mx, y_tr - my, x_ev - mx
    n, p = xc.shape
    if p <= n:  # primal: (X'X + l I)^-1 X'Y via the eigenvectors of X'X
        s, q = jnp.linalg.eigh(jnp.matmul(xc.T, xc, precision=_HI))
        left = jnp.matmul(xe, q, precision=_HI)                         # [n_ev, p]
        right = jnp.matmul(q.T, jnp.matmul(xc.T, yc, precision=_HI), precision=_HI)
    else:  # dual: X'(XX' + l I)^-1 Y via the eigenvectors of XX'
        s, q = jnp.linalg.eigh(jnp.matmul(xc, xc.T, precision=_HI))
        left = jnp.matmul(jnp.matmul(xe, xc.T, precision=_HI), q, precision=_HI)  # [n_ev, n]
        right = jnp.matmul(q.T, yc, precision=_HI)
    s = jnp.maximum(s, 0.0)

    def one(lam):
        return jnp.matmul(left / (s + lam), right, precision=_HI) + my

    return jax.lax.map(one, lambdas)


def ridge_baseline(x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray,
                   x_te: np.ndarray | None = None,
                   relative_lambdas: Sequence[float] = tuple(10.0 ** np.arange(-4, 3.5, 0.5)),
                   ) -> dict[str, Any]:
    """Ridge from features to all vertices; the penalty is picked by mean validation r.

    Penalties are `relative_lambdas` x the mean eigenvalue of the centred Gram matrix, so
    the grid suits any feature scale.

    Returns:
      {'lambda', 'relative_lambda', 'val_pred' [n_va, V], 'test_pred' [n_te, V] or None,
       'val_mean_r_per_lambda' list}.
    """
    x_tr = jnp.asarray(x_tr, jnp.float32)
    xc = x_tr - x_tr.mean(0)
    scale = float(jnp.sum(xc * xc)) / min(xc.shape)  # mean eigenvalue of the smaller Gram
    rel = np.asarray(relative_lambdas, np.float32)
    lams = jnp.asarray(rel * max(scale, 1e-12), jnp.float32)
    preds = np.asarray(_ridge_path(x_tr, jnp.asarray(y_tr, jnp.float32),
                                   jnp.asarray(x_va, jnp.float32), lams))
    scores = [_mean0(pearson_r(p, y_va)) for p in preds]
    best = int(np.argmax(scores))
    test_pred = None
    if x_te is not None and len(x_te):
        test_pred = np.asarray(_ridge_path(x_tr, jnp.asarray(y_tr, jnp.float32),
                                           jnp.asarray(x_te, jnp.float32), lams[best:best + 1]))[0]
    return {"lambda": float(lams[best]), "relative_lambda": float(rel[best]),
            "val_pred": preds[best], "test_pred": test_pred,
            "val_mean_r_per_lambda": [float(s) for s in scores]}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def save_submission(folder: str | os.PathLike, lh: np.ndarray, rh: np.ndarray) -> list[Path]:
    """Writes `{lh,rh}_pred_test.npy` (float32 [n_test, n_vertices]) in the challenge layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for hemi, pred in (("lh", lh), ("rh", rh)):
        path = folder / f"{hemi}_pred_test.npy"
        tmp = folder / f".{hemi}_pred_test.tmp.npy"
        np.save(tmp, np.asarray(pred, np.float32))
        os.replace(tmp, path)
        out.append(path)
    return out
