"""Brain-encoder evaluation: per-vertex Pearson r, ROI summaries, the challenge metric, a ridge
baseline, submission files and figures.

* `pearson_r`: per-vertex correlation over images (a constant column gives NaN, which the
  summaries count as 0, as upstream's `nan_to_num` does).
* `summarize`: mean r per hemisphere over all vertices, per named ROI (all six families) and
  per family; `mean_r` = (left mean + right mean) / 2 is upstream's `val_perf`, the model
  selection criterion.
* `challenge_score`: the Algonauts 2023 noise-normalised squared correlation, in percent:
  100 * mean_v(max(r_v, 0)^2 / nc_v) over vertices with a positive noise ceiling nc_v
  (a fraction of explainable variance).
* `ridge_baseline`: closed-form ridge regression in JAX from pooled or flattened features,
  with an intercept and the penalty chosen on validation (one for all vertices). Uses the
  primal (features x features) or dual (images x images) eigendecomposition, whichever is
  smaller, so every penalty of the grid costs one matrix product.
* Submission: `{lh,rh}_pred_test.npy`, float32 [n_test_images, n_vertices].
* Figures (matplotlib Agg): per-ROI mean r bars; ROI queries' cross-attention over the patch
  grid drawn on the image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["pearson_r", "summarize", "challenge_score", "ridge_baseline", "pool_features",
           "save_submission", "plot_roi_scores", "plot_attention"]

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


def challenge_score(r: np.ndarray, noise_ceiling: np.ndarray) -> float:
    """Noise-normalised squared correlation (percent), negatives set to 0; see module doc."""
    r = np.nan_to_num(np.asarray(r, np.float64), nan=0.0)
    nc = np.asarray(noise_ceiling, np.float64)
    keep = nc > 0
    if not keep.any():
        return float("nan")
    return float(100.0 * np.mean(np.maximum(r[keep], 0.0) ** 2 / nc[keep]))


def summarize(r: dict[str, np.ndarray], rois: dict[str, list[tuple[str, str, np.ndarray]]],
              noise_ceiling: dict[str, np.ndarray | None] | None = None) -> dict[str, Any]:
    """Scores from per-vertex r of both hemispheres.

    Args:
      r: {'lh': [V_lh], 'rh': [V_rh]}.
      rois: per hemisphere, (family, ROI name, vertex indices) as `AlgonautsSubject.roi_vertices`.
      noise_ceiling: per hemisphere fractions, or None.

    Returns:
      {'mean_r', 'mean_r_lh', 'mean_r_rh', 'roi': {name: {'lh', 'rh'}},
       'family': {family: {'lh', 'rh'}}, 'challenge' (percent or None), ...}
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
        lh = challenge_score(r["lh"], noise_ceiling["lh"])
        rh = challenge_score(r["rh"], noise_ceiling["rh"])
        out["challenge_lh"], out["challenge_rh"] = lh, rh
        out["challenge"] = (lh + rh) / 2
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
# Files and figures
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roi_scores(summary: dict[str, Any], path: str | os.PathLike, title: str = "",
                    baseline: dict[str, Any] | None = None) -> Path:
    """Bar chart of mean r per ROI (lh and rh, optionally a baseline's) plus all vertices."""
    plt = _pyplot()
    names = list(summary["roi"]) + ["All vertices"]

    def values(s, hemi):
        return [s["roi"].get(n, {}).get(hemi, np.nan) for n in names[:-1]] + [
            s[f"mean_r_{hemi}"]]

    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(names)), 4.2))
    bars = [("lh", summary, 0.0, "tab:blue"), ("rh", summary, 1.0, "tab:orange")]
    if baseline is not None:
        bars += [("lh", baseline, 2.0, "lightsteelblue"), ("rh", baseline, 3.0, "navajowhite")]
    width = 0.8 / len(bars)
    for hemi, s, k, colour in bars:
        label = f"{hemi} {'ridge' if s is baseline else 'transformer'}"
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, values(s, hemi), width, label=label,
               color=colour)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("mean Pearson r")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(title or f"validation mean r = {summary['mean_r']:.3f}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_attention(image: np.ndarray, attention: np.ndarray, names: Sequence[str],
                   grid: tuple[int, int], patch: int, path: str | os.PathLike,
                   title: str = "") -> Path:
    """One panel per ROI query: its cross-attention [gh*gw] over the patch grid on the image.

    The grid covers the zero-padded image (gh*patch x gw*patch); the image is drawn at its
    own size in the top-left corner, as the padding was added on the right and bottom.
    """
    plt = _pyplot()
    gh, gw = grid
    n = len(names)
    fig, axes = plt.subplots(1, n + 1, figsize=(2.4 * (n + 1), 2.6))
    extent = (0, gw * patch, gh * patch, 0)
    axes[0].imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
    axes[0].set_xlim(0, gw * patch)
    axes[0].set_ylim(gh * patch, 0)
    axes[0].set_title("image", fontsize=9)
    for ax, name, att in zip(axes[1:], names, attention, strict=True):
        ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
        a = np.asarray(att, np.float64).reshape(gh, gw)
        ax.imshow(a / max(a.max(), 1e-12), extent=extent, cmap="inferno", alpha=0.6,
                  interpolation="bilinear")
        ax.set_xlim(0, gw * patch)
        ax.set_ylim(gh * patch, 0)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
