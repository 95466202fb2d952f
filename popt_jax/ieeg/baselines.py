"""Linear baselines on the same examples and splits as PopT fine-tuning (numpy, deterministic).

Two feature sets per example window, both flattened over the subject's electrodes:

* ``linear_brainbert``: the stored BrainBERT embeddings of the feature store ([E, D] -> E * D);
* ``linear_stft``: the Laplacian re-referenced signal of the same window (the store's own
  preprocessing settings, re-run on the Brain Treebank tree), as log mean power per STFT
  frequency row (BrainBERT's STFT: Hann 400 / overlap 350 at 2048 Hz, the 40 rows up to
  ~200 Hz) -> E * 40 features.

The model is an L2-regularised logistic regression with the objective of scikit-learn's
default ``LogisticRegression`` (C = 1: sum of log-losses + |w|^2 / 2, bias not penalised),
on features standardised with the training split's mean and std, solved by Newton's method
(`fit_logistic`). With more features than training examples (E * 768 BrainBERT features) the
weights lie in the span of the training rows, so the fit runs on the SVD coordinates of that
span: the same minimiser, in an n-dimensional problem. Regression tasks (``rms_reg``) use ridge
regression with the same penalty (sklearn ``Ridge`` alpha = 1). No randomness anywhere: the
same inputs give the same numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from popt_jax.core.metrics import f1_score, roc_auc
from popt_jax.ieeg import signal
from popt_jax.ieeg.variants import regression_metrics

BASELINES = ("linear_brainbert", "linear_stft")
STFT_ROWS = 40  # frequency rows kept (BrainBERT's spectrogram: 0 .. ~200 Hz)


# --------------------------------------------------------------------------- models


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0, steps: int = 50,
                 tol: float = 1e-9) -> tuple[np.ndarray, float]:
    """Weights and bias minimising C * sum(log-loss) + |w|^2 / 2 (Newton, from zero).

    The objective is strictly convex in w, so Newton's method converges in a few steps; the
    loop stops when the largest step is below `tol`.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    penalty = np.full(xb.shape[1], 1.0 / c)
    penalty[-1] = 0.0  # the bias is not penalised (sklearn's default)
    theta = np.zeros(xb.shape[1])
    for _ in range(steps):
        z = np.clip(xb @ theta, -50, 50)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = xb.T @ (p - y) + penalty * theta
        hess = (xb.T * (p * (1 - p))) @ xb + np.diag(penalty)
        hess[-1, -1] += 1e-12  # one class only: the bias alone is unbounded
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < tol:
            break
    return theta[:-1], float(theta[-1])


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, float]:
    """Weights and bias minimising |y - x w - b|^2 + alpha |w|^2 (bias not penalised)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xm, ym = x.mean(0), y.mean()
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, float(ym - xm @ w)


class LinearProbe:
    """Standardise -> (span of the training rows if wider than tall) -> linear model.

    Args:
        regression: ridge regression instead of logistic regression.
        c: inverse penalty (logistic) / 1 / alpha (ridge).
    """

    def __init__(self, regression: bool = False, c: float = 1.0):
        self.regression, self.c = regression, c

    def _project(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean) / self.std
        return z if self.basis is None else z @ self.basis

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LinearProbe":
        x = np.asarray(x, np.float64)
        self.mean = x.mean(0)
        std = x.std(0)
        self.std = np.where(std > 0, std, 1.0)
        z = (x - self.mean) / self.std
        self.basis = None
        if z.shape[1] > z.shape[0]:
            # w = V u with V the right singular vectors of z: |w| = |u|, z w = (U S) u.
            _, s, vt = np.linalg.svd(z, full_matrices=False)
            keep = s > s.max() * 1e-10 if len(s) else s > 0
            self.basis = vt[keep].T
            z = z @ self.basis
        if self.regression:
            self.w, self.b = fit_ridge(z, y, 1.0 / self.c)
        else:
            self.w, self.b = fit_logistic(z, y, self.c)
        return self

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Logits (logistic) or predictions (ridge)."""
        return self._project(x) @ self.w + self.b


def probe_metrics(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                  regression: bool = False) -> dict[str, Any]:
    """Fits a `LinearProbe` on `train` (x, y) and scores `test`: ROC-AUC and F1 (threshold
    0.5 on the sigmoid) or Pearson r and R^2, plus the sizes."""
    probe = LinearProbe(regression).fit(*train)
    score = probe.decision(test[0])
    out: dict[str, Any] = {"n_train": len(train[1]), "n_test": len(test[1])}
    if regression:
        m = regression_metrics(test[1], score)
        out.update(pearson_r=m["pearson_r"], r2=m["r2"])
    else:
        y = np.asarray(test[1]).astype(bool)
        out.update(roc_auc=roc_auc(y, score), f1=f1_score(y, score >= 0.0))
    return out


# --------------------------------------------------------------------------- features


def embedding_features(source) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [n, E * D], labels, example ids) of a single-subject `FinetuneSource`."""
    rows = [source[i] for i in range(len(source))]
    x = np.stack([np.asarray(r["x"], np.float32).reshape(-1) for r in rows])
    return x, np.asarray(source.labels), np.asarray(source.example_ids)


@jax.jit
def _log_power(windows: jax.Array) -> jax.Array:
    """[..., T] -> [..., STFT_ROWS] log mean power per frequency row."""
    z = signal.stft(windows, nperseg=400, noverlap=350, n_freqs=STFT_ROWS)
    return jnp.log(jnp.mean(jnp.abs(z) ** 2, axis=-1) + 1e-12)


def stft_features(root: str | os.PathLike, store: str | os.PathLike, task: str, subject: str,
                  cache: str | os.PathLike | None = None) -> np.ndarray:
    """[n, E * STFT_ROWS] features of every `task` example of `subject` (example-id order,
    i.e. the store's files then their stored order, as `FinetuneSource` numbers them).

    Each trial is preprocessed again with the feature file's own `preprocess_config` (the
    same electrodes, notch and Laplacian) and the windows at the stored starts are cut from
    it. `cache` (an .npy path) is written once and reused.
    """
    from popt_jax.ieeg import preprocess as pp
    from popt_jax.ieeg.braintreebank import BrainTreebank
    from popt_jax.ieeg.datasets import FeatureStore
    from popt_jax.ieeg.feature_store import read_attrs

    if cache is not None and Path(cache).exists():
        return np.load(cache)
    parts = []
    for fi in FeatureStore(store, [subject]).files:
        meta = read_attrs(fi.path)
        pcfg = pp.PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in meta["preprocess_config"].items()})
        bt = BrainTreebank(root, fs=pcfg.fs)
        trial = pp.preprocess_trial(bt, fi.subject, fi.trial, fi.names, pcfg)
        order = [trial.names.index(n) for n in fi.names]
        data = trial.data[order].astype(np.float32)
        starts = fi.tasks[task]["starts"]
        w = int(meta["window_samples"])
        feats = np.zeros((len(starts), len(fi.names) * STFT_ROWS), np.float32)
        for a in range(0, len(starts), 16):
            wins = pp.extract_windows(data, starts[a:a + 16], w)
            feats[a:a + len(wins)] = np.asarray(_log_power(wins)).reshape(len(wins), -1)
        parts.append(feats)
    out = np.concatenate(parts)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache) + ".tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, cache)
    logging.info("STFT features of %s %s: %s", subject, task, out.shape)
    return out


def run_baselines(store: str | os.PathLike, task: str, subject: str, split: dict[str, Any], *,
                  root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None
                  = None, which: tuple[str, ...] = BASELINES,
                  regression: bool = False) -> dict[str, dict[str, Any]]:
    """{baseline: metrics} for one subject, task and split.

    Trained on the `train` split, tested on the `test` split that fine-tuning uses
    (`split`: FinetuneSource keyword arguments: split_mode, val_frac, test_frac, time_blocks).
    `linear_stft` needs the Brain Treebank `root`; without one it is left out (logged).
    """
    from popt_jax.ieeg.datasets import FinetuneSource

    src = {name: FinetuneSource(store, task, subject, name, **split)
           for name in ("train", "test")}
    out: dict[str, dict[str, Any]] = {}
    if "linear_brainbert" in which:
        tr, te = embedding_features(src["train"]), embedding_features(src["test"])
        out["linear_brainbert"] = probe_metrics(tr[:2], te[:2], regression)
    if "linear_stft" in which:
        if not root:
            logging.info("linear_stft baseline skipped: no Brain Treebank root to read")
        else:
            cache = (Path(cache_dir) / f"stft_{subject}_{task}.npy") if cache_dir else None
            feats = stft_features(root, store, task, subject, cache)
            data = {k: (feats[s.example_ids], np.asarray(s.labels)) for k, s in src.items()}
            out["linear_stft"] = probe_metrics(data["train"], data["test"], regression)
    return out
