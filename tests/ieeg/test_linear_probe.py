"""The key learning test: stored BrainBERT features carry the synthetic data's task structure.

A small BrainBERT with seeded random weights embeds the task windows of a 400 s synthetic
subject; an L2 logistic-regression probe (numpy, Newton steps) is trained on the
``time_blocked`` train split and scored by ROC-AUC on its test split (30 %, separated from
training windows by at least one window length, so overlapping 5 s windows cannot leak; a
random split would let neighbouring words' windows share most of their samples). With the
generator's planted structure every task decodes clearly (AUC >= 0.7); with ``plant=False``
(same random numbers, no planted components) every task is at chance.

This exercises the whole path: synthetic tree -> preprocessing -> windows and labels ->
jitted BrainBERT in fixed-shape batches -> HDF5 feature store -> `FinetuneSource` splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from popt_jax import ieeg as models
from popt_jax.ieeg import datasets as ds
from popt_jax.ieeg import extract as features
from popt_jax.ieeg import feature_store
from popt_jax.ieeg.synthetic import write_synthetic_braintreebank

SMALL = models.BrainBERTConfig(hidden_dim=32, n_heads=1, ff_dim=64, n_layers=1)
TEST_FRAC = 0.3


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average rank over each run of tied scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = y.sum(), (~y).sum()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 30,
                 tol: float = 1e-8) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (mean log-loss + l2/2 |w|^2) by Newton's method.

    The bias rides along as a constant feature with no penalty; the loss is strongly convex
    in w, so Newton converges in a few steps and the loop stops once a step is below ``tol``.
    """
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    penalty = np.full(xb.shape[1], l2)
    penalty[-1] = 0.0
    theta = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(xb @ theta)))
        grad = xb.T @ (p - y) / len(y) + penalty * theta
        hess = (xb.T * (p * (1 - p))) @ xb / len(y) + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < tol:
            break
    return theta[:-1], float(theta[-1])


def probe_auc(features_dir: Path, task: str) -> tuple[float, int, int]:
    """Test ROC-AUC of the probe on flattened [electrodes x hidden] embeddings."""

    def arrays(split):
        src = ds.FinetuneSource(features_dir, task, "sub_1", split, split_mode="time_blocked",
                                val_frac=0.0, test_frac=TEST_FRAC)
        ex = [src[i] for i in range(len(src))]
        return np.stack([e["x"].reshape(-1) for e in ex]), np.array([e["label"] for e in ex])

    x_tr, y_tr = arrays("train")
    x_te, y_te = arrays("test")
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    w, b = fit_logistic((x_tr - mean) / std, y_tr.astype(np.float64))
    return roc_auc(y_te, ((x_te - mean) / std) @ w + b), len(y_tr), len(y_te)


def test_roc_auc_by_hand():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([1, 0, 1, 0], [1, 1, 2, 0]) == pytest.approx(0.875)  # one tie: 1/2
    assert roc_auc([0, 1], [2.0, 1.0]) == 0.0


def test_logistic_probe_separates_separable_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5))
    y = (x[:, 0] - x[:, 3] > 0).astype(np.float64)
    w, b = fit_logistic(x, y, l2=1e-3)
    assert roc_auc(y, x @ w + b) > 0.99 and abs(w[1]) < abs(w[0]) / 5


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[bool, Path]:
    base = tmp_path_factory.mktemp("probe")
    model = models.BrainBERT(SMALL, rngs=nnx.Rngs(0))
    out = {}
    for plant in (True, False):
        # No latent state in either tree: they differ only by the plant. (The state is slow,
        # and with it the time-blocked test block's windows are correlated, which widens the
        # probe's spread without a plant: 0.68 measured on sentence/word onset.)
        root = write_synthetic_braintreebank(base / f"tree_{plant}", n_subjects=1,
                                             duration_s=400, seed=1, plant=plant,
                                             latent_state=False)
        out[plant] = base / f"features_{plant}"
        features.extract_features(
            root, out[plant], checkpoint_hash="random-seed-0/small", brainbert=model,
            selection=root / "electrode_selections/clean_laplacian.json",
            tasks=feature_store.FINETUNE_TASKS, batch_windows=32)
    return out


@pytest.mark.parametrize("task", feature_store.FINETUNE_TASKS)
def test_probe_decodes_planted_structure(stores, task):
    auc, n_train, n_test = probe_auc(stores[True], task)
    assert n_train >= 50 and n_test >= 25
    assert auc >= 0.7, f"{task}: test ROC-AUC {auc:.3f} with the planted structure"


@pytest.mark.parametrize("task", feature_store.FINETUNE_TASKS)
def test_probe_is_at_chance_without_plant(stores, task):
    auc, _, _ = probe_auc(stores[False], task)
    assert abs(auc - 0.5) < 0.15, f"{task}: test ROC-AUC {auc:.3f} without planted structure"
