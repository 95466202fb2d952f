"""Fine-tuning variants upstream offers, as functions of the fine-tuning config.

Upstream's `pt_downstream_model` has two switches, reproduced here by the config fields of
`configs/finetune.py` with the same names:

* `random_init`: the PopT body keeps its (seeded) random initialisation; no checkpoint is read
  and no pretraining run is made. The architecture comes from `config.model`.
* `frozen_upstream`: the body gets no update (upstream sets `requires_grad=False`, so its
  parameters have no gradient: they are left out of the gradient-norm clipping and out of
  AdamW's weight decay); only the linear head trains. `make_optimizer` zeroes the body's
  gradients before clipping and its updates after AdamW, which is exactly that.

and the experiments of the paper add:

* few-shot: `data.max_train_examples` caps the training split at a deterministic, class-
  stratified subset (seeded by `data.few_shot_seed`; validation and test are untouched);
* the no-spatial-code ablation: `position_encoding='index'` (`popt.IndexEncoding`: upstream's
  fallback code of the token's index instead of the (L, I, P) code);
* `pos` (noun vs verb) and `rms_reg` (word volume as a regression target, MSE loss, Pearson r
  and R^2; `objectives.REGRESSION`);
* several subjects at once: `data.subject='sub_1,sub_2'` trains one model on the union of
  the subjects' training splits (each subject split on its own, so its test examples are the
  same as in a single-subject run) and tests on the union of their test splits. Example ids
  of the k-th listed subject are offset by k * `SUBJECT_ID_STRIDE`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import numpy as np
import optax
from clu import metrics as clu_metrics

from popt_jax.ieeg import optim
from popt_jax.ieeg.objectives import FINETUNE, REGRESSION

SUBJECT_ID_STRIDE = 1_000_000_000


def finetune_kind(task: str) -> str:
    """`objectives.REGRESSION` for a continuous target (rms_reg), else `FINETUNE`."""
    from popt_jax.ieeg.feature_store import REGRESSION_TASKS

    return REGRESSION if task in REGRESSION_TASKS else FINETUNE


def subjects_of(value: str | Sequence[str]) -> list[str]:
    """'sub_1,sub_2' (or a sequence) -> ['sub_1', 'sub_2'] in the given order."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = [str(s).strip() for s in items if str(s).strip()]
    if not out:
        raise ValueError("config.data.subject names no subject")
    return out


# --------------------------------------------------------------------------- sources


class ConcatSource:
    """Examples of several `FinetuneSource`s, one after the other (ids offset per source)."""

    def __init__(self, sources: Sequence[Any]):
        self.sources = list(sources)
        self._ends = np.cumsum([len(s) for s in self.sources])
        self.labels = np.concatenate([np.asarray(s.labels) for s in self.sources])
        self.example_ids = np.concatenate([np.asarray(s.example_ids) + k * SUBJECT_ID_STRIDE
                                           for k, s in enumerate(self.sources)])

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        k = int(np.searchsorted(self._ends, i, side="right"))
        item = dict(self.sources[k][i - (int(self._ends[k - 1]) if k else 0)])
        item["index"] = np.int64(self.example_ids[i])
        return item


class SubsetSource:
    """The rows `keep` (sorted) of a source; labels and ids follow."""

    def __init__(self, source: Any, keep: np.ndarray):
        self.source = source
        self.keep = np.sort(np.asarray(keep, np.int64))
        self.labels = np.asarray(source.labels)[self.keep]
        self.example_ids = np.asarray(source.example_ids)[self.keep]

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.source[int(self.keep[int(i)])]


def few_shot_rows(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` rows of `labels`, deterministic: classes in proportion (binary labels; each class
    keeps at least one row when n allows), a seeded permutation within each class; for
    continuous labels a seeded subset. All rows when n >= len(labels)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    if labels.dtype.kind == "f":
        return np.sort(rng.permutation(len(labels))[:n])
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
    take = np.floor(counts / counts.sum() * n).astype(int)
    take = np.maximum(take, np.minimum(1, counts))
    while take.sum() > n:
        take[np.argmax(take)] -= 1
    for j in np.argsort(-(counts / counts.sum() * n - take)):  # largest remainders first
        if take.sum() >= n:
            break
        take[j] += take[j] < counts[j]
    rows = [rng.permutation(np.nonzero(labels == c)[0])[:t] for c, t in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(rows))


def finetune_sources(config, store: str | os.PathLike, *,
                     selection: Mapping[str, Sequence[str]] | str | None = None,
                     split_file: str | os.PathLike | None = None,
                     trials: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """{'train', 'val', 'test'}: the fine-tuning sources of `config` over `store`.

    One `datasets.FinetuneSource` per subject of `config.data.subject` (concatenated when
    several), the training split capped by `data.max_train_examples` (0 = all).
    """
    from popt_jax.ieeg import datasets as ds
    from popt_jax.ieeg.coords import position_code_of

    d = config.data
    split = dict(split_mode=str(d.split), val_frac=float(d.val_fraction),
                 test_frac=float(d.test_fraction), time_blocks=int(d.time_blocks))
    subjects = subjects_of(d.subject)
    out = {}
    for name in ("train", "val", "test"):
        parts = [ds.FinetuneSource(store, str(config.task), s, name, selection=selection,
                                   split_file=split_file, trials=trials,
                                   feature_norm=str(d.get("feature_norm", "none")),
                                   position_code=position_code_of(config), **split)
                 for s in subjects]
        out[name] = parts[0] if len(parts) == 1 else ConcatSource(parts)
    cap = int(d.get("max_train_examples", 0) or 0)
    if cap > 0:
        rows = few_shot_rows(out["train"].labels, cap, int(d.get("few_shot_seed", 0)))
        out["train"] = SubsetSource(out["train"], rows)
    return out


# --------------------------------------------------------------------------- optimiser


def _labels(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: optim.param_group(p), params)


def make_optimizer(config) -> optax.GradientTransformation:
    """`optim.make_optimizer(config)`; with `frozen_upstream` the body neither counts in the
    clipping norm nor moves (its gradients are zeroed before, its updates after)."""
    tx = optim.make_optimizer(config)
    if not config.get("frozen_upstream", False):
        return tx

    def zero_body():
        return optax.multi_transform({"head": optax.identity(), "body": optax.set_to_zero(),
                                      "unused": optax.set_to_zero()}, _labels)

    return optax.chain(zero_body(), tx, zero_body())


# --------------------------------------------------------------------------- regression


def regression_metrics(labels, predictions) -> dict[str, float]:
    """mse, Pearson r and R^2 (1 - SSE / SST, so a constant prediction of the mean is 0)."""
    y = np.asarray(labels, np.float64)
    p = np.asarray(predictions, np.float64)
    if len(y) < 2:
        return {"mse": float("nan"), "pearson_r": float("nan"), "r2": float("nan")}
    sse = float(np.sum((y - p) ** 2))
    sst = float(np.sum((y - y.mean()) ** 2))
    yc, pc = y - y.mean(), p - p.mean()
    denom = float(np.sqrt(np.sum(yc ** 2) * np.sum(pc ** 2)))
    return {"mse": sse / len(y), "pearson_r": float(np.sum(yc * pc) / denom) if denom else
            float("nan"), "r2": 1.0 - sse / sst if sst else float("nan")}


@flax.struct.dataclass
class RegressionPredictions(clu_metrics.CollectingMetric.from_outputs(("logits", "labels",
                                                                      "mask", "ids"))):
    """Collects outputs, targets and ids on the host; `compute` adds Pearson r and R^2."""

    def compute(self) -> dict[str, Any]:
        if not self.values:
            return {}
        v = super().compute()
        keep = np.asarray(v["mask"], bool)
        pred = np.asarray(v["logits"], np.float64)[keep]
        labels = np.asarray(v["labels"], np.float64)[keep]
        out = regression_metrics(labels, pred)
        return dict(pearson_r=out["pearson_r"], r2=out["r2"], predictions=pred, labels=labels,
                    ids=np.asarray(v["ids"])[keep])


def override_position_encoding(popt_cfg, value: str):
    """`popt_cfg` with `position_encoding` replaced (empty `value` keeps it)."""
    if not value or value == popt_cfg.position_encoding:
        return popt_cfg
    return dataclasses.replace(popt_cfg, position_encoding=str(value))
