"""The experiment harness: a grid of fine-tuning runs, linear baselines, one table, plots.

    python -m popt_jax.main --config configs/harness.py --workdir runs/grid

The grid is subjects x tasks x variants x seeds x splits; every cell is one `finetune_job`
(`configs/finetune.py` fields, from `config.finetune`) in its own folder

    {workdir}/cells/{subject}/{task}/{variant}/seed{seed}/{split}/

and a cell whose `results.json` exists is read, not re-run, so a partly finished grid resumes
where it stopped (an interrupted cell resumes from its own checkpoints). The linear baselines
(`baselines`: logistic regression on the stored BrainBERT embeddings and on the Laplacian STFT
of the same windows) run once per subject x task x split on the same train/test split and are
cached in `{workdir}/baselines/`. Outputs:

* `table.csv`, `table.json`: one row per cell and baseline (subject, task, variant, seed,
  split, roc_auc, f1, pearson_r, r2, n_train, n_val, n_test, best_step, workdir; a metric
  that is not defined, e.g. ROC-AUC on a one-class test split, is empty / null); the JSON
  also holds the per (task, variant, split) means over subjects and seeds (`summary`);
* `plots/{task}.png`: per variant, the mean test ROC-AUC (Pearson r for regression tasks)
  of the random split and of the time-blocked split side by side, each subject a point;
* `results.json`: the summary, the cells run and the cells skipped by this invocation.

Variants (`VARIANTS`; overrides of the fine-tuning config): `popt` (pretrained body, all
trained), `frozen` (upstream `frozen_upstream`: only the head trains), `random_init` (upstream
`random_init`), `random_frozen` (both: a random-feature head), `no_spatial` (the index code
instead of the (L, I, P) code, from a PopT pretrained with the index code), `few_shot` (a
training split of `few_shot_examples`). Pretrained variants start from `init_checkpoint`
(`init_checkpoint_index` for `no_spatial`); when empty, ONE pretraining run of
`config.pretrain` is made (and reused) in `{workdir}/pretrain` (`pretrain_index`).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from popt_jax.core.jsonio import atomic_json
from popt_jax.errors import UserError
from popt_jax.ieeg import baselines as bl
from popt_jax.ieeg.popt import INDEX

# name -> (overrides of the fine-tuning config (dotted keys), pretrained weights needed:
# None, "spatial" or "index").
VARIANTS: dict[str, tuple[dict[str, Any], str | None]] = {
    "popt": ({}, "spatial"),
    "frozen": ({"frozen_upstream": True}, "spatial"),
    "random_init": ({"random_init": True}, None),
    "random_frozen": ({"random_init": True, "frozen_upstream": True}, None),
    "no_spatial": ({"position_encoding": INDEX}, "index"),
    "few_shot": ({}, "spatial"),  # data.max_train_examples = config.few_shot_examples
}
COLUMNS = ("subject", "task", "variant", "seed", "split", "roc_auc", "f1", "pearson_r", "r2",
           "n_train", "n_val", "n_test", "best_step", "workdir")
METRICS = ("roc_auc", "f1", "pearson_r", "r2")


def _set(cfg, dotted: str, value) -> None:
    *path, leaf = dotted.split(".")
    node = cfg
    for key in path:
        node = node[key]
    node[leaf] = value


def cell_dir(workdir: Path, subject: str, task: str, variant: str, seed: int, split: str
             ) -> Path:
    return workdir / "cells" / subject / task / variant / f"seed{seed}" / split


def cell_config(config, *, store: Path, subject: str, task: str, variant: str, seed: int,
                split: str, init: dict[str, str]):
    """The fine-tuning config of one cell: `config.finetune` with the cell's fields set."""
    overrides, needs = VARIANTS[variant]
    cfg = copy.deepcopy(config.finetune)
    with cfg.unlocked():
        cfg.features_dir = str(store)
        cfg.task = task
        cfg.seed = int(seed)
        cfg.data.subject = subject
        cfg.data.split = split
        cfg.init_checkpoint = init.get(needs, "") if needs else ""
        for key, value in overrides.items():
            _set(cfg, key, value)
        if variant == "few_shot":
            cfg.data.max_train_examples = int(config.few_shot_examples)
    return cfg


def _pretrained(config, store: Path, workdir: Path, needs: set[str]) -> dict[str, str]:
    """{'spatial'|'index': checkpoint path} for the variants' pretrained inits (pretraining
    once per kind in the workdir where no checkpoint is given)."""
    from popt_jax.ieeg import train

    given = {"spatial": config.get("init_checkpoint", ""),
             "index": config.get("init_checkpoint_index", "")}
    out = {}
    for kind in sorted(needs):
        if given[kind]:
            out[kind] = str(given[kind])
            continue
        run = workdir / ("pretrain" if kind == "spatial" else "pretrain_index")
        if not (run / "results.json").exists():
            pre = copy.deepcopy(config.pretrain)
            with pre.unlocked():
                pre.features_dir = str(store)
                pre.distributed = False
                if kind == "index":
                    pre.model.position_encoding = INDEX
            logging.info("harness: no init checkpoint for the %s code; pretraining in %s",
                         kind, run)
            train.pretrain_job(pre, run)
        out[kind] = str(run)
    return out


def _row(results: dict[str, Any], **keys) -> dict[str, Any]:
    test = results.get("test", {})
    sizes = results.get("n_examples") or {}
    row = dict(keys)
    for m in METRICS:
        row[m] = _finite(test.get(m))
    row["n_train"] = sizes.get("train")
    row["n_val"] = sizes.get("val")
    row["n_test"] = sizes.get("test", len(results.get("labels", [])) or None)
    row["best_step"] = results.get("best_step")
    row["workdir"] = results.get("workdir")
    return row


def _sort_key(row):
    return (row["task"], row["subject"], row["split"], row["variant"],
            -1 if row["seed"] is None else row["seed"])


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, variant, split): mean and std over subjects and seeds, and the count."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["variant"], r["split"]), []).append(r)
    out = []
    for (task, variant, split), rs in sorted(groups.items()):
        entry: dict[str, Any] = {"task": task, "variant": variant, "split": split, "n": len(rs)}
        for m in METRICS:
            vals = [r[m] for r in rs if r[m] is not None and np.isfinite(r[m])]
            entry[m] = float(np.mean(vals)) if vals else None
            entry[f"{m}_std"] = float(np.std(vals)) if vals else None
        out.append(entry)
    return out


def write_table(workdir: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]]
                ) -> None:
    """`table.csv` and `table.json` (atomic)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
    tmp = workdir / "table.csv.tmp"
    tmp.write_text(buf.getvalue())
    os.replace(tmp, workdir / "table.csv")
    atomic_json(workdir / "table.json", {"columns": list(COLUMNS), "rows": rows,
                                         "summary": summary})


def plot_tables(workdir: Path, rows: list[dict[str, Any]], splits: tuple[str, ...],
                regression_tasks: tuple[str, ...]) -> list[Path]:
    """One PNG per task: per variant, bars of the mean metric for each split side by side,
    each subject's mean over seeds as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = workdir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    colours = {"random": "#d95f02", "time_blocked": "#1b9e77"}
    for task in sorted({r["task"] for r in rows}):
        metric = "pearson_r" if task in regression_tasks else "roc_auc"
        task_rows = [r for r in rows if r["task"] == task and r[metric] is not None]
        variants = list(dict.fromkeys(r["variant"] for r in task_rows))
        width = 0.8 / max(len(splits), 1)
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(variants), 3.6))
        for j, split in enumerate(splits):
            for i, variant in enumerate(variants):
                rs = [r for r in task_rows if r["variant"] == variant and r["split"] == split]
                if not rs:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                per_subject: dict[str, list[float]] = {}
                for r in rs:
                    per_subject.setdefault(r["subject"], []).append(r[metric])
                points = [float(np.mean(v)) for _, v in sorted(per_subject.items())]
                ax.bar(x, float(np.mean([r[metric] for r in rs])), width * 0.9,
                       color=colours.get(split, "#7570b3"), alpha=0.7,
                       label=split if i == 0 else None)
                ax.scatter(np.full(len(points), x) + np.linspace(-0.15, 0.15, len(points))
                           * width, points, s=12, color="black", zorder=3)
        if metric == "roc_auc":
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{task}: mean over subjects (points: subjects)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{task}.png"
        tmp = out_dir / f".{task}.png.tmp"
        fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _features(config, workdir: Path) -> Path:
    """`config.features_dir`, or the built-in default store made once in {workdir}/extract."""
    from popt_jax.ieeg import defaults

    if config.get("features_dir"):
        store = Path(config.features_dir)
        if not store.is_dir():
            raise FileNotFoundError(f"feature store not found: {store}")
        return store
    return defaults.default_features(config.features, workdir)


def _data_root(config, workdir: Path) -> str:
    """The Brain Treebank tree the STFT baseline re-reads: `data_root`, else the extraction's
    root (its synthetic tree when the harness extracted the features itself)."""
    if config.get("data_root"):
        return str(config.data_root)
    if config.get("features_dir"):
        return ""
    if config.features.data.root:
        return str(config.features.data.root)
    return str(workdir / "extract" / "synthetic_braintreebank")


@contextlib.contextmanager
def compilation_cache(path: Path | None):
    """JAX's persistent compilation cache in `path` while the grid runs (None: unchanged).

    Cells of a grid run the same programs (same model, optimiser and batch shapes), and a
    train step's jitted closure is new in every run, so without the cache every cell would
    compile it again; with it, a cell after the first of its kind only loads the executable.
    The previous settings are restored afterwards.
    """
    if path is None:
        yield
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    path.mkdir(parents=True, exist_ok=True)
    cc.reset_cache()
    for k, v in zip(keys, (str(path), 0.0, 0), strict=True):
        jax.config.update(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            jax.config.update(k, v)
        cc.reset_cache()


def harness_job(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """The `harness` job (see the module docstring). Returns the `results.json` content."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "jax_cache" if config.get("compilation_cache", True) else None
    with compilation_cache(cache):
        return _run_grid(config, workdir)


def _run_grid(config, workdir: Path) -> dict[str, Any]:
    from popt_jax.ieeg import train
    from popt_jax.ieeg.feature_store import REGRESSION_TASKS

    unknown = [v for v in config.variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"config.variants: unknown {unknown}; expected some of "
                        f"{', '.join(VARIANTS)}")
    unknown = [b for b in config.baselines if b not in bl.BASELINES]
    if unknown:
        raise UserError(f"config.baselines: unknown {unknown}; expected some of "
                        f"{', '.join(bl.BASELINES)}")
    store = _features(config, workdir)
    init = _pretrained(config, store, workdir,
                       {VARIANTS[v][1] for v in config.variants if VARIANTS[v][1]})
    cells = [(s, t, v, int(seed), sp) for t in config.tasks for s in config.subjects
             for sp in config.splits for v in config.variants for seed in config.seeds]
    logging.info("harness: %d fine-tuning cells, baselines %s", len(cells),
                 tuple(config.baselines))
    rows, ran, skipped = [], [], []
    for k, (subject, task, variant, seed, split) in enumerate(cells):
        out = cell_dir(workdir, subject, task, variant, seed, split)
        name = f"{subject}/{task}/{variant}/seed{seed}/{split}"
        if (out / "results.json").exists():
            skipped.append(name)
            logging.info("harness cell %d/%d %s: finished earlier, skipped", k + 1, len(cells),
                         name)
        else:
            logging.info("harness cell %d/%d %s: fine-tuning", k + 1, len(cells), name)
            train.finetune_job(cell_config(config, store=store, subject=subject, task=task,
                                           variant=variant, seed=seed, split=split, init=init),
                               out)
            ran.append(name)
        results = json.loads((out / "results.json").read_text())
        rows.append(_row(results, subject=subject, task=task, variant=variant, seed=seed,
                         split=split))

    root = _data_root(config, workdir)
    fdata = config.finetune.data
    for task in config.tasks:
        for subject in config.subjects:
            for split in config.splits:
                cache = workdir / "baselines" / f"{subject}_{task}_{split}.json"
                if cache.exists():
                    found = json.loads(cache.read_text())
                else:
                    found = bl.run_baselines(
                        store, task, subject,
                        dict(split_mode=split, val_frac=float(fdata.val_fraction),
                             test_frac=float(fdata.test_fraction),
                             time_blocks=int(fdata.time_blocks)),
                        root=root, cache_dir=workdir / "baselines",
                        which=tuple(config.baselines), regression=task in REGRESSION_TASKS)
                    atomic_json(cache, found)
                for name, m in found.items():
                    rows.append({"subject": subject, "task": task, "variant": name,
                                 "seed": None, "split": split,
                                 **{k: _finite(m.get(k)) for k in METRICS},
                                 "n_train": m["n_train"], "n_val": None, "n_test": m["n_test"],
                                 "best_step": None, "workdir": None})
    rows.sort(key=_sort_key)
    summary = summarize(rows)
    write_table(workdir, rows, summary)
    plots = plot_tables(workdir, rows, tuple(config.splits), tuple(REGRESSION_TASKS))
    for s in summary:
        logging.info("%-14s %-16s %-12s n=%d roc_auc %s pearson_r %s", s["task"], s["variant"],
                     s["split"], s["n"], _fmt(s["roc_auc"]), _fmt(s["pearson_r"]))
    results = {"cells": len(cells), "ran": ran, "skipped": skipped, "summary": summary,
               "table": str(workdir / "table.csv"), "plots": [str(p) for p in plots],
               "init": init, "features_dir": str(store),
               "config": config.to_dict() if hasattr(config, "to_dict") else dict(config)}
    atomic_json(workdir / "results.json", results)
    return results


def _finite(v) -> float | None:
    """A metric for the table: None when absent or undefined (NaN: e.g. ROC-AUC of a test
    split holding one class), so the JSON stays standard and the CSV cell empty."""
    return float(v) if v is not None and np.isfinite(v) else None


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"
