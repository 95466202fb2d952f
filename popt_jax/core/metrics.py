"""Metrics computed on the host: ROC-AUC, F1, and clu helpers (masked averages)."""

# No `from __future__ import annotations`: clu reads the metric annotations as classes.

import flax
import numpy as np
from clu import metrics as clu_metrics


def avg(name: str, mask: str | None = None):
    """An `Average` over output `name`, optionally masked by output `mask`."""

    @flax.struct.dataclass
    class _Average(clu_metrics.Average):
        @classmethod
        def from_model_output(cls, **kwargs):
            return super().from_model_output(kwargs[name], kwargs[mask] if mask else None)

    _Average.__name__ = f"Average_{name}"
    return _Average



def compute_metrics(collection) -> dict[str, float]:
    """`Collection.compute()` as plain floats."""
    return {k: float(v) for k, v in collection.compute().items()}


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # Average ranks (1-based) over runs of equal scores.
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def f1_score(labels, predicted) -> float:
    """Binary F1 of boolean predictions (0 when there are no true or predicted positives)."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    tp = int(np.sum(labels & predicted))
    denom = int(labels.sum()) + int(predicted.sum())
    return float(2 * tp / denom) if denom else 0.0


