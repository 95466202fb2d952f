"""PopT fine-tuned on every Neuroprobe fold (``config.model = "popt_finetune"``).

For each task / split / fold, a PopT classifier (PopT body -> CLS -> Linear(hidden -> 1)) is
initialised from ``config.popt_checkpoint`` (a popt_jax pretraining workdir, a converted
PopT or an upstream ``.pth``: `train.load_init`; empty = seeded random weights, plumbing
only) and fine-tuned on the fold's training windows, then scored on its test windows with
the fields the submission needs (train/test accuracy and ROC-AUC).

The tokens are the per-electrode BrainBERT embeddings of each 1 s window, computed once per
session by `neuroprobe.SessionFeatures` and shared by every fold, task and split type; the
electrode coordinates are the subject's (L, I, P) localization, as in PopT pretraining.
Cross-Subject folds train on the training subject's electrodes and test on the evaluated
subject's: PopT takes any electrode set, so no region averaging is needed.

The machinery is the fine-tuning job's (`popt_jax.ieeg.train` / `objectives`): the same
model (`train.build_model`), optimiser (`variants.make_optimizer`: AdamW, body at
``body_lr_scale`` x lr, ramp_up schedule, clipping), jitted train / eval steps
(`objectives.make_train_step` / `make_eval_step`) and evaluation (`train.evaluate`). They
are built ONCE per job: every fold restarts from the same initial parameters, and batches are
padded to a multiple of ``finetune.pad_to`` electrodes so a few compiled shapes serve the
whole run. A fold holds out ``finetune.val_fraction`` of its training windows (class-
stratified) to pick the best step by ROC-AUC, as the fine-tuning job does; the fold's other
training windows are the only ones the optimiser sees. Nothing is checkpointed per fold:
the results go into the submission.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from popt_jax.core import mesh as mesh_lib
from popt_jax.core import steps
from popt_jax.errors import TrainingError
from popt_jax.ieeg import objectives, variants
from popt_jax.ieeg.objectives import FINETUNE
from popt_jax.ieeg.popt import PopTConfig

__all__ = ["FoldFinetuner"]


def _init(config, input_dim: int) -> tuple[PopTConfig, nnx.State | None]:
    """(architecture, PopT body params or None for random) from `config.popt_checkpoint`."""
    from popt_jax.ieeg import train

    path = str(config.get("popt_checkpoint") or "")
    if path:
        popt_cfg, params = train.load_init(path)
        if popt_cfg.input_dim != input_dim:
            raise TrainingError(f"config.popt_checkpoint {path} takes {popt_cfg.input_dim}-d "
                                f"embeddings but the BrainBERT gives {input_dim}-d ones")
        return popt_cfg, params
    logging.warning("popt_finetune without config.popt_checkpoint: a PopT with seeded random "
                    "weights (config.random_popt) is fine-tuned; plumbing only")
    arch = {k: v for k, v in dict(config.get("random_popt") or {}).items()}
    return PopTConfig(input_dim=int(input_dim), **arch), None


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): `fraction` of each class held out (at least one row of
    each when a class has two or more), seeded."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(rows)))
        k = min(max(k, 1 if fraction > 0 and len(rows) >= 2 else 0), len(rows) - 1)
        val.append(rows[:k])
        fit.append(rows[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


class FoldFinetuner:
    """Fine-tunes a PopT on one fold's windows per call; the steps are built once."""

    def __init__(self, config, input_dim: int):
        self.config = config
        self.ft = config.finetune
        self.seed = int(config.seed)
        self.popt_cfg, init = _init(config, input_dim)
        from popt_jax.ieeg import train

        # `train` reads optimiser fields from the top level of a config: the finetune block.
        model = train.build_model(FINETUNE, self.popt_cfg, seed=self.seed,
                                  dtype=train.compute_dtype(self.ft))
        if init is not None:
            nnx.update(model.upstream, init)
        self.parts = steps.split_model(model)
        self.mesh = mesh_lib.make_mesh(1)  # one device: folds are small
        self.tx = variants.make_optimizer(self.ft)
        self.train_step = objectives.make_train_step(
            FINETUNE, self.parts, self.tx, self.mesh,
            loss_scaled_grad=bool(self.ft.get("loss_scaled_grad", True)))
        self.eval_step = objectives.make_eval_step(FINETUNE, self.parts, self.mesh)
        self.base_key = jax.random.key(self.seed)

    # ---------------------------------------------------------------------------- batches

    def _pad_tokens(self, n: int) -> int:
        q = max(1, int(self.ft.get("pad_to", 16)))
        return int(math.ceil(n / q) * q)

    def _rows(self, x, coords, labels, rows, n_tok) -> dict[str, np.ndarray]:
        b, e = len(rows), x.shape[1]
        xb = np.zeros((b, n_tok, x.shape[2]), np.float32)
        xb[:, :e] = x[rows]
        cb = np.zeros((b, n_tok, 3), np.int32)
        cb[:, :e] = coords[None]
        pad = np.ones((b, n_tok), bool)
        pad[:, :e] = False
        return {"x": xb, "pad_mask": pad, "coords": cb, "seq_id": np.zeros((b, n_tok), np.int32),
                "label": labels[rows].astype(np.int32), "index": np.asarray(rows, np.int64)}

    def _eval_batches(self, x, coords, labels, rows, n_tok):
        bs = int(self.ft.eval_batch_size)
        for a in range(0, len(rows), bs):
            yield self._rows(x, coords, labels, rows[a:a + bs], n_tok)

    def _evaluate(self, params, x, coords, labels, rows, n_tok) -> dict[str, float]:
        from popt_jax.ieeg import train

        values, _ = train.evaluate(FINETUNE, self.eval_step, params,
                                   self._eval_batches(x, coords, labels, rows, n_tok),
                                   int(self.ft.eval_batch_size), self.mesh)
        return values

    # ---------------------------------------------------------------------------- a fold

    def __call__(self, x_tr: np.ndarray, y_tr: np.ndarray, c_tr: np.ndarray,
                 x_te: np.ndarray, y_te: np.ndarray, c_te: np.ndarray,
                 name: str = "") -> dict[str, float]:
        """Fine-tunes on (x_tr [N, E, D], y_tr [N], coords c_tr [E, 3]) and scores.

        `name` identifies the fold: its hold-out, batch order and dropout keys are seeded from
        `config.seed` and the name, so a fold's result does not depend on which other
        evaluations run with it.

        Returns the submission's fold fields: train_accuracy, train_roc_auc (all of the
        fold's training windows), test_accuracy, test_roc_auc.
        """
        if len(np.unique(y_tr)) < 2 or len(np.unique(y_te)) < 2:
            raise TrainingError("a Neuroprobe fold has a single class; ROC-AUC is undefined")
        n_tok = self._pad_tokens(max(x_tr.shape[1], x_te.shape[1]))
        fold_seed = (self.seed + zlib.crc32(name.encode())) % 2**31
        fit, val = stratified_holdout(np.asarray(y_tr), float(self.ft.val_fraction), fold_seed)
        params = mesh_lib.replicate(self.parts.params, self.mesh)
        opt_state = mesh_lib.replicate(self.tx.init(self.parts.params), self.mesh)
        total, bs = int(self.ft.total_steps), int(self.ft.batch_size)
        eval_every = int(self.ft.eval_every) or total
        rng = np.random.default_rng(fold_seed)
        order, pos = rng.permutation(fit), 0
        best = (-np.inf, None)
        key = jax.random.fold_in(self.base_key, fold_seed)
        for step in range(total):
            if pos + bs > len(order):  # a new epoch; a fold smaller than a batch repeats rows
                order = np.concatenate([order[pos:], rng.permutation(fit)])
                while len(order) < bs:
                    order = np.concatenate([order, rng.permutation(fit)])
                pos = 0
            rows, pos = order[pos:pos + bs], pos + bs
            batch = mesh_lib.to_global(self._rows(x_tr, c_tr, y_tr, rows, n_tok), self.mesh)
            params, opt_state, _, _ = self.train_step(params, opt_state, batch,
                                                      steps.step_key(key, step))
            if len(val) and ((step + 1) % eval_every == 0 or step + 1 == total):
                auc = self._evaluate(params, x_tr, c_tr, y_tr, val, n_tok)["roc_auc"]
                if np.isfinite(auc) and auc > best[0]:  # ties: the earliest
                    best = (auc, jax.device_get(params))
        if best[1] is not None:
            params = best[1]
        train = self._evaluate(params, x_tr, c_tr, y_tr, np.arange(len(y_tr)), n_tok)
        test = self._evaluate(params, x_te, c_te, y_te, np.arange(len(y_te)), n_tok)
        return {"train_accuracy": float(train["accuracy"]),
                "train_roc_auc": float(train["roc_auc"]),
                "test_accuracy": float(test["accuracy"]), "test_roc_auc": float(test["roc_auc"])}


def fold_readout(config, bt) -> Any:
    """The `popt_finetune` read-out for `neuroprobe.evaluate_fold`: (x_tr, y_tr, x_te, y_te,
    fold) -> fold fields, with each session's electrode coordinates."""
    tuner: list[FoldFinetuner] = []

    def readout(x_tr, y_tr, x_te, y_te, fold) -> dict[str, float]:
        if not tuner:
            tuner.append(FoldFinetuner(config, int(x_tr.shape[-1])))
        c_tr = bt.localization(fold["train_session"][0]).select(
            fold["train_electrodes"]).lip_int()
        c_te = bt.localization(fold["test_session"][0]).select(
            fold["test_electrodes"]).lip_int()
        return tuner[0](x_tr, y_tr, c_tr, x_te, y_te, c_te, str(fold.get("name", "")))

    return readout
