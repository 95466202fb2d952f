"""The linear baseline beside PopT: logistic regression on the stored BrainBERT embeddings.

Each fine-tuning example's embeddings [electrodes, D] are flattened (one subject: a fixed
electrode set) and an L2-regularised logistic regression is fitted on the training split by
Newton's method (numpy, float64), then scored on the test split with the same metrics as PopT
(ROC-AUC, F1 at 0.5, accuracy). This is the "linear on BrainBERT features" row of the paper's
tables, on exactly the examples and split PopT fine-tunes on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from popt_jax.core.metrics import f1_score, roc_auc

__all__ = ["fit_logistic", "predict_logistic", "linear_baseline"]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 30,
                 tol: float = 1e-8) -> tuple[np.ndarray, float]:
    """Minimises mean log-loss + l2/2 |w|^2 (bias unpenalised); returns (w, b).

    Features are used as given; the loss is strongly convex in w, so Newton's method
    converges in a few steps (stops when a step is below `tol`).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    penalty = np.full(xb.shape[1], float(l2))
    penalty[-1] = 0.0
    w = np.zeros(xb.shape[1])
    n = len(x)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) / n + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb / n + np.diag(penalty + 1e-10)
        delta = np.linalg.solve(hess, grad)
        w -= delta
        if np.max(np.abs(delta)) < tol:
            break
    return w[:-1], float(w[-1])


def predict_logistic(w: np.ndarray, b: float, x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, np.float64) @ w + b, -30, 30)))


def _matrix(source) -> tuple[np.ndarray, np.ndarray]:
    rows = [source[i] for i in range(len(source))]
    x = np.stack([np.asarray(r["x"], np.float64).reshape(-1) for r in rows])
    y = np.asarray([int(r["label"]) for r in rows])
    return x, y


def linear_baseline(train_source, test_source, l2: float = 1.0) -> dict[str, Any]:
    """Fits on `train_source`, scores on `test_source` (`datasets.FinetuneSource`s).

    Features are z-scored with the training split's mean and std (so one `l2` suits any
    embedding scale). Returns {roc_auc, f1, accuracy, n_train, n_test, l2}.
    """
    x_tr, y_tr = _matrix(train_source)
    x_te, y_te = _matrix(test_source)
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd[sd == 0] = 1.0
    w, b = fit_logistic((x_tr - mu) / sd, y_tr, l2=l2)
    p = predict_logistic(w, b, (x_te - mu) / sd)
    return {"roc_auc": roc_auc(y_te, p), "f1": f1_score(y_te, p >= 0.5),
            "accuracy": float(np.mean((p >= 0.5) == (y_te > 0))),
            "n_train": int(len(y_tr)), "n_test": int(len(y_te)), "l2": float(l2)}
