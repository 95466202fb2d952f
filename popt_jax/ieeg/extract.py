"""The feature-extraction job: raw sEEG -> front end -> BrainBERT -> the feature store.

    python -m popt_jax.main --config configs/extract_features.py --workdir runs/features

PopT never sees raw sEEG: it reads per-electrode BrainBERT embeddings of 5 s windows, one HDF5
file per subject-trial in the format of `popt_jax.ieeg.feature_store` (its docstring lists the
datasets). Here each trial is preprocessed (`preprocess`), its pretraining windows and every
task window are embedded once with the jitted `brainbert_embed` in fixed-shape batches, and
the file is written through `feature_store.write_file`.

Files are written as ``*.h5.tmp`` and renamed when complete, so a crash never leaves a file
that looks finished. A rerun skips finished files whose preprocessing config, checkpoint hash
and extraction settings match, and raises a one-line `DataError` naming the file otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from popt_jax.core.jsonio import atomic_json
from popt_jax.core.logs import Progress
from popt_jax.errors import DataError
from popt_jax.ieeg import brainbert, feature_store, provenance, selections
from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg.braintreebank import (
    BrainTreebank,
    laplacian_neighbours,
    load_selection,
    subject_id,
    trial_id,
)
from popt_jax.ieeg.coords import BRAINTREEBANK_FRAME
from popt_jax.ieeg.feature_store import (
    DEFAULT_TASKS,
    FINETUNE_TASKS,
    FORMAT,
    _version,
    feature_path,
    file_sha256,
    read_attrs,
)

__all__ = ["extract_features", "extract_features_job", "random_brainbert",
           "write_random_features"]

def random_brainbert(cfg: brainbert.BrainBERTConfig | None = None,
                     seed: int = 0) -> brainbert.BrainBERT:
    """A BrainBERT with seeded random weights (default: full size); logged loudly."""
    cfg = cfg or brainbert.BrainBERTConfig()
    logging.warning("*" * 72)
    logging.warning("BrainBERT has RANDOM weights (seed %d, hidden %d, %d layers): no "
                    "checkpoint was given. Fine for tests and plumbing, not for results.",
                    seed, cfg.hidden_dim, cfg.n_layers)
    logging.warning("*" * 72)
    return brainbert.BrainBERT(cfg, rngs=nnx.Rngs(seed))


# --------------------------------------------------------------------------- reading


def _resolve_selection(bt: BrainTreebank, subjects: Sequence[str],
                       selection: str | os.PathLike | Mapping[str, Sequence[str]] | None,
                       cfg: pp.PreprocessConfig) -> dict[str, list[str]]:
    """Electrodes per subject: the selection's, or every localized electrode usable as is."""
    if selection is not None:
        chosen = (load_selection(selection) if isinstance(selection, (str, os.PathLike))
                  else {subject_id(k): list(v) for k, v in selection.items()})
        missing = [s for s in subjects if s not in chosen]
        if missing:
            where = selection if isinstance(selection, (str, os.PathLike)) else None
            raise DataError(where, f"electrode selection has no entry for {', '.join(missing)}")
        return {s: chosen[s] for s in subjects}
    out = {}
    for s in subjects:
        labels = bt.electrode_names(s)
        localized = set(bt.localization(s).names)
        names = [n for n in labels if n in localized]
        if cfg.rereference == "laplacian":
            names = [n for n in names if laplacian_neighbours(n, labels) is not None]
        logging.info("%s: no selection given; using %d localized electrodes%s", s, len(names),
                     " with both Laplacian neighbours" if cfg.rereference == "laplacian" else "")
        out[s] = names
    return out


def _cap_task(ex: pp.TaskExamples, max_windows: int | None, seed: int) -> np.ndarray:
    """Rows of ``ex`` kept under ``max_windows``: a seeded class-balanced subset, order kept."""
    n = len(ex)
    if max_windows is None or n <= max_windows:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if ex.labels.dtype != bool:  # regression: a seeded subset
        return np.sort(rng.choice(n, max_windows, replace=False))
    pos, neg = np.nonzero(ex.labels)[0], np.nonzero(~ex.labels)[0]
    n_pos = min(len(pos), max(max_windows // 2, max_windows - len(neg)))
    keep = np.concatenate([rng.choice(pos, n_pos, replace=False),
                           rng.choice(neg, min(len(neg), max_windows - n_pos), replace=False)])
    return np.sort(keep)


# --------------------------------------------------------------------------- extraction


def _window_batch(data: np.ndarray, starts: np.ndarray, length: int, size: int) -> np.ndarray:
    """float32 [size, E, length] windows; short batches repeat the last window (fixed shape)."""
    out = np.empty((size, data.shape[0], length), dtype=np.float32)
    for i in range(size):
        s = int(starts[min(i, len(starts) - 1)])
        out[i] = data[:, s:s + length]
    return out


def _embed_all(model: brainbert.BrainBERT, data: np.ndarray, starts: np.ndarray, length: int,
               sink: h5py.Dataset, *, batch_windows: int, compute_dtype,
               chunk: int | str | None,
               progress: Progress) -> None:
    """Embed the windows at ``starts`` into ``sink`` rows 0..len-1, one jitted shape.

    JAX dispatch is asynchronous: the next batch is cut on the host while the device runs the
    current one, and a result is only pulled back (and written) one batch later.
    """
    pending = None
    for a in range(0, len(starts), batch_windows):
        part = starts[a:a + batch_windows]
        wav = _window_batch(data, part, length, batch_windows)
        out = brainbert.brainbert_embed(model, wav, compute_dtype=compute_dtype, chunk=chunk)
        if pending is not None:
            _flush(sink, *pending, progress)
        pending = (out, a, len(part))
    if pending is not None:
        _flush(sink, *pending, progress)


def _flush(sink: h5py.Dataset, out, a: int, n: int, progress: Progress) -> None:
    sink[a:a + n] = np.asarray(out)[:n].astype(sink.dtype)
    progress.update(n)


def _write_trial(bt: BrainTreebank, model: brainbert.BrainBERT, subject: str, trial: str,
                 names: list[str], path: Path, attrs: dict[str, Any], *,
                 cfg: pp.PreprocessConfig, tasks: Sequence[str], batch_windows: int,
                 compute_dtype, storage_dtype: str, max_windows: int | None,
                 chunk: int | str | None, progress_every_s: float,
                 max_pretrain_windows: int | None = None) -> int:
    """Preprocess one trial, embed its windows and write ``path`` atomically; returns windows."""
    label = f"{subject} {trial}"
    t0 = time.perf_counter()
    trial_data = pp.preprocess_trial(bt, subject, trial, names, cfg)
    n_samples = trial_data.data.shape[1]
    names = trial_data.names  # label order; Laplacian "skip" may have dropped some
    loc = bt.localization(subject).select(names)
    w = cfg.window_samples
    logging.info("%s: preprocessed %d electrodes x %d samples in %.1f s", label, len(names),
                 n_samples, time.perf_counter() - t0)

    pre_starts = np.zeros(0, np.int64)
    if "pretrain" in tasks:
        pre_cap = max_windows if max_pretrain_windows is None else max_pretrain_windows
        pre_starts = pp.pretraining_window_starts(n_samples, cfg)[:pre_cap]
    examples: dict[str, tuple[pp.TaskExamples, np.ndarray]] = {}
    finetune = [t for t in tasks if t != "pretrain"]
    if finetune:
        words = bt.words(subject, trial)
        for task in finetune:
            ex = pp.make_task(task, words, n_samples, cfg)
            examples[task] = (ex, _cap_task(ex, max_windows, cfg.seed))
    win_starts = np.unique(np.concatenate(
        [np.zeros(0, np.int64)] + [ex.starts[keep] for ex, keep in examples.values()]))

    total = len(pre_starts) + (len(win_starts) if finetune else 0)
    progress = Progress("windows", total, every_s=progress_every_s, label=f"{label}:",
                        per_item=("electrode-windows", len(names)))

    def fill(starts: np.ndarray, sink: h5py.Dataset) -> None:
        _embed_all(model, trial_data.data, starts, w, sink, batch_windows=batch_windows,
                   compute_dtype=compute_dtype, chunk=chunk, progress=progress)

    t1 = time.perf_counter()
    feature_store.write_file(
        path, {**attrs, "subject": subject, "trial": trial, "n_samples": n_samples,
               "window_samples": w, "hidden_dim": model.config.hidden_dim,
               "coord_frame": BRAINTREEBANK_FRAME},
        names, loc.lip, loc.regions, pre_starts if "pretrain" in tasks else None,
        {t: _task_table(ex, keep) for t, (ex, keep) in examples.items()}, fill, storage_dtype,
        positions=loc.lip)  # the L/I/P columns, untruncated: the continuous code's input
    rate = total / max(time.perf_counter() - t1, 1e-9)
    logging.info("%s: wrote %s (%d windows, %.1f windows/s, %.0f electrode-windows/s)",
                 label, path.name, total, rate, rate * len(names))
    return total


def _task_table(ex: pp.TaskExamples, keep: np.ndarray) -> dict[str, np.ndarray]:
    labels = ex.labels[keep]
    labels = labels.astype(np.int8) if labels.dtype == bool else labels.astype(np.float32)
    return {"labels": labels, "starts": ex.starts[keep].astype(np.int64),
            "word_rows": ex.word_rows[keep].astype(np.int64),
            "times": ex.times[keep].astype(np.float64), "upstream_task": ex.task}


def write_random_features(out_dir: str | os.PathLike, subject: int | str = 1,
                          trial: int | str = 0, *, n_electrodes: int = 60,
                          n_windows: int = 500, n_task: int = 100, hidden_dim: int = 768,
                          fs: float = 2048.0, seed: int = 0,
                          storage_dtype: str = "float32") -> Path:
    """A feature file of random embeddings in the real layout (tests and benchmarks).

    Electrodes ``A1..`` on shafts of 10 with random coordinates in [0, 200); ``n_windows``
    pretraining windows 0.2 s apart; each task gets ``n_task`` examples (half positive) on
    word windows spread over the recording, the onset tasks sharing non-speech windows.
    """
    rng = np.random.default_rng(seed)
    cfg = pp.PreprocessConfig(fs=fs)
    w, hop = cfg.window_samples, int(cfg.separation_s * fs)
    pre = np.arange(n_windows, dtype=np.int64) * hop
    n_samples = int(pre[-1] + w + 1) if n_windows else w + 1
    names = [f"{'ABCDEFGHIJKLMNOPQRSTUVWXYZ'[i // 10 % 26]}{i // 260 or ''}{i % 10 + 1}"
             for i in range(n_electrodes)]
    speech = np.sort(rng.choice(np.arange(0, max(n_samples - w, 1), hop // 2),
                                size=n_task, replace=n_samples - w < n_task * hop // 2))
    silence = np.sort(rng.integers(0, max(n_samples - w, 1), n_task))
    half = n_task // 2
    tasks = {}
    for t in FINETUNE_TASKS:
        if t in ("volume", "pitch"):
            starts = speech
            rows = np.arange(n_task)
        else:
            starts = np.concatenate([speech[:half], silence[:n_task - half]])
            rows = np.concatenate([np.arange(half), np.full(n_task - half, -1)])
        labels = np.zeros(n_task, np.int8)
        labels[rng.permutation(n_task)[:half]] = 1
        if t not in ("volume", "pitch"):
            labels = (rows >= 0).astype(np.int8)
        tasks[t] = {"labels": labels, "starts": starts.astype(np.int64),
                    "word_rows": rows.astype(np.int64), "times": starts / fs}

    def fill(starts: np.ndarray, sink: h5py.Dataset) -> None:
        for a in range(0, len(starts), 256):
            n = min(256, len(starts) - a)
            sink[a:a + n] = rng.standard_normal((n, n_electrodes, hidden_dim)).astype(sink.dtype)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = feature_path(out_dir, subject, trial)
    attrs = {"format": FORMAT, "fs": float(fs), "checkpoint_hash": f"random-features-{seed}",
             "popt_jax_version": _version(),
             "preprocess_config": json.dumps(feature_store.preprocess_json(cfg), sort_keys=True),
             "extraction": json.dumps({"random_features": True}), "subject": subject_id(subject),
             "trial": trial_id(trial), "n_samples": n_samples, "window_samples": w,
             "hidden_dim": hidden_dim}
    coords = rng.uniform(0, 200, (n_electrodes, 3))
    feature_store.write_file(path, attrs, names, coords, ["synthetic"] * n_electrodes, pre, tasks, fill,
                storage_dtype)
    return path


def _extract(root, out_dir, *, checkpoint_hash: str, subjects=None, trials=None,
             selection=None, brainbert=None, preprocess_cfg=None,
             tasks=DEFAULT_TASKS, batch_windows: int = 32, compute_dtype=jnp.float32,
             storage_dtype: str = "float32", max_windows: int | None = None, seed: int = 0,
             chunk: int | str | None = "auto", progress_every_s: float = 5.0,
             max_pretrain_windows: int | None = None) -> tuple[list[Path], dict[str, int]]:
    """`extract_features`, also returning counts of the work done (for the job summary)."""
    unknown = [t for t in tasks if t not in feature_store.ALL_TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {feature_store.ALL_TASKS}, "
                         f"got {tasks}")
    if storage_dtype not in ("float32", "float16"):
        raise ValueError(f"storage_dtype must be float32 or float16, not {storage_dtype!r}")
    if batch_windows < 1:
        raise ValueError("batch_windows must be >= 1")
    cfg = preprocess_cfg or pp.PreprocessConfig()
    bt = BrainTreebank(root, fs=cfg.fs)
    subjects = ([subject_id(s) for s in subjects] if subjects else bt.subjects())
    chosen = _resolve_selection(bt, subjects, selection, cfg)
    model = brainbert if brainbert is not None else random_brainbert(seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = {
        "format": FORMAT, "fs": float(cfg.fs), "checkpoint_hash": checkpoint_hash,
        "popt_jax_version": _version(),
        "preprocess_config": json.dumps(feature_store.preprocess_json(cfg), sort_keys=True),
    }
    written: list[Path] = []
    counts = {"computed_windows": 0, "computed_electrode_windows": 0, "skipped_files": 0}
    for s in subjects:
        trial_list = ([trial_id(t) for t in trials[s]] if trials and s in trials
                      else bt.trials(s))
        for t in trial_list:
            path = feature_path(out_dir, s, t)
            extraction = {
                "tasks": list(tasks), "max_windows": max_windows,
                "storage_dtype": storage_dtype, "compute_dtype": str(jnp.dtype(compute_dtype)),
                "requested_electrodes": list(chosen[s]),
            }
            if max_pretrain_windows is not None:  # absent = max_windows (older stores)
                extraction["max_pretrain_windows"] = max_pretrain_windows
            want = {**base, "preprocess_config": feature_store.preprocess_json(cfg),
                    "extraction": extraction}
            if path.exists():
                feature_store.check_existing(path, want)
                logging.info("%s: already extracted with the same settings; skipped", path)
                counts["skipped_files"] += 1
                written.append(path)
                continue
            attrs = {**base, "extraction": json.dumps(extraction, sort_keys=True)}
            n = _write_trial(bt, model, s, t, chosen[s], path, attrs, cfg=cfg, tasks=tasks,
                             batch_windows=batch_windows, compute_dtype=compute_dtype,
                             storage_dtype=storage_dtype, max_windows=max_windows,
                             chunk=chunk, progress_every_s=progress_every_s,
                             max_pretrain_windows=max_pretrain_windows)
            n_e = len(read_attrs(path)["electrode_names"])
            counts["computed_windows"] += n
            counts["computed_electrode_windows"] += n * n_e
            written.append(path)
    return written, counts


def extract_features(root: str | os.PathLike, out_dir: str | os.PathLike, *,
                     checkpoint_hash: str, subjects: Sequence[int | str] | None = None,
                     trials: Mapping[str, Sequence[int | str]] | None = None,
                     selection: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
                     brainbert: brainbert.BrainBERT | None = None,
                     preprocess_cfg: pp.PreprocessConfig | None = None,
                     tasks: Sequence[str] = DEFAULT_TASKS, batch_windows: int = 32,
                     compute_dtype=jnp.float32, storage_dtype: str = "float32",
                     max_windows: int | None = None, seed: int = 0, chunk: int | str | None = "auto",
                     progress_every_s: float = 5.0) -> list[Path]:
    """Embed every subject-trial's windows with BrainBERT into one HDF5 file each.

    Args:
        root: Brain Treebank root folder.
        out_dir: where ``sub_{S}_trial{TTT}.h5`` files go (created).
        checkpoint_hash: identifies the BrainBERT weights (sha256 of the checkpoint file, or
            ``random-seed-...``); stored and compared on reruns.
        subjects: subject ids (default: every subject with a recording).
        trials: optional {subject: [trials]} (default: every trial of each subject).
        selection: electrode selection: a JSON path or {subject: [names]}; default every
            localized electrode (with both shaft neighbours under a Laplacian).
        brainbert: the model; None builds a full-size one with seeded random weights (logged).
        preprocess_cfg: front-end settings (data layer `PreprocessConfig`; None = defaults).
        tasks: groups to write: "pretrain" and/or the four decoding tasks.
        batch_windows: windows per device call (all electrodes of a window go together); the
            last batch is padded so one compiled shape serves a whole subject.
        compute_dtype: BrainBERT compute dtype (float32 for parity, bfloat16 on GPUs/TPUs).
        storage_dtype: "float32" or "float16" embeddings on disk.
        max_windows: cap per group and trial (None = all): the first pretraining windows,
            and a seeded class-balanced subset of each task's examples.
        seed: random-weights seed when ``brainbert`` is None.
        chunk: passed to `brainbert.brainbert_embed` ("auto" = `brainbert.default_chunk()`,
          None = the whole batch at once).
        progress_every_s: seconds between progress lines.

    Returns:
        Paths of the finished files (new and skipped), subject then trial order.

    Raises:
        DataError: bad input files, or an existing file made with other settings.
    """
    paths, _ = _extract(
        root, out_dir, checkpoint_hash=checkpoint_hash, subjects=subjects, trials=trials,
        selection=selection, brainbert=brainbert, preprocess_cfg=preprocess_cfg, tasks=tasks,
        batch_windows=batch_windows, compute_dtype=compute_dtype, storage_dtype=storage_dtype,
        max_windows=max_windows, seed=seed, chunk=chunk, progress_every_s=progress_every_s)
    return paths


# --------------------------------------------------------------------------- the job


def preprocess_config_from(config) -> pp.PreprocessConfig:
    """`PreprocessConfig` from a ConfigDict/dict section (lists become tuples)."""
    fields = {f.name for f in dataclasses.fields(pp.PreprocessConfig)}
    values = dict(config)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown preprocess field(s): {', '.join(unknown)}")
    return pp.PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in values.items()})


def brainbert_from_config(config) -> tuple[brainbert.BrainBERT, str]:
    """(model, checkpoint hash) from ``config.brainbert_checkpoint`` or the random fallback."""
    from popt_jax.ieeg import convert  # only this path needs the checkpoint readers

    path = config.get("brainbert_checkpoint") or ""
    if path:
        return convert.load_brainbert(path), file_sha256(path)
    arch = dict(config.get("brainbert") or {})
    cfg = brainbert.BrainBERTConfig(**arch)
    tag = "-".join(f"{k}{getattr(cfg, k)}" for k in ("hidden_dim", "n_layers", "n_heads",
                                                       "ff_dim"))
    return random_brainbert(cfg, seed=config.seed), f"random-seed-{config.seed}/{tag}"


def synthetic_root(config, workdir: str | os.PathLike) -> Path:
    """``{workdir}/synthetic_braintreebank``, written on first use (atomically) and reused."""
    from popt_jax.ieeg.synthetic import write_synthetic_braintreebank

    root = Path(workdir) / "synthetic_braintreebank"
    if (root / "synthetic_truth.json").exists():
        logging.info("reusing the synthetic Brain Treebank at %s", root)
        return root
    syn = dict(config.data.synthetic)
    if "contacts" in syn:
        syn["contacts"] = tuple(syn["contacts"])
    tmp = root.with_name(root.name + ".tmp")
    logging.info("writing a synthetic Brain Treebank to %s (%s)", root, syn)
    write_synthetic_braintreebank(tmp, **syn)
    os.replace(tmp, root)
    return root


def _pretrain_cap(config) -> int | None:
    """`config.max_pretrain_windows`: None/0 = as max_windows, -1 = all (None to `_extract`
    means "as max_windows", so "all" becomes a cap no trial reaches)."""
    cap = config.get("max_pretrain_windows")
    if not cap:
        return None
    return int(cap) if int(cap) > 0 else 2**62


def store_provenance(config, paths: Sequence[Path]) -> dict[str, Any]:
    """The store's record: the sessions its files hold (``sessions``) and the ``trained_on``
    of the BrainBERT that embedded them (random weights: none; a checkpoint without a
    record: incomplete, see `popt_jax.ieeg.provenance`)."""
    path = config.get("brainbert_checkpoint") or ""
    inherited = provenance.NONE
    if path:
        found = provenance.read_provenance(path)
        inherited = found[0] if found else None
        if found is None:
            logging.warning("%s has no record of its training sessions (provenance.json); the "
                            "feature store's record is marked incomplete", path)
    rec = provenance.merge([], inherited, path or "random weights", "brainbert_checkpoint")
    held = selections.trials_of_files(paths)
    rec["sessions"] = provenance.sessions_of_trials(held)
    return rec


def extract_features_job(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """The ``extract_features`` job: features of ``config.data`` into ``{workdir}/features``.

    Empty ``config.data.root`` uses (and on first use writes) a synthetic Brain Treebank under
    the workdir. Writes ``{workdir}/results.json`` and returns the same summary.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    if config.data.root:
        root = Path(config.data.root)
        selection = selections.resolve(config.data.selection) if config.data.selection else None
    else:
        root = synthetic_root(config, workdir)
        selection = (selections.resolve(config.data.selection) if config.data.selection
                     else root / "electrode_selections" / "clean_laplacian.json")
    trials = selections.union_trials(config.data.get("trials") or None)
    subjects = [subject_id(s) for s in config.data.subjects] or None
    if trials is not None:  # only the selected subjects and trials
        in_tree = set(BrainTreebank(root, fs=float(config.preprocess.fs)).subjects())
        absent = sorted(set(trials) - in_tree)
        if absent:
            logging.warning("trial selection %s names subjects not in %s: %s (skipped)",
                            config.data.trials, root, ", ".join(absent))
        subjects = [s for s in (subjects or sorted(trials, key=lambda k: int(k[4:])))
                    if s in trials and s in in_tree]
        logging.info("extracting the trials of %s: %s", config.data.trials,
                     {s: trials[s] for s in subjects})
    model, ckpt_hash = brainbert_from_config(config)
    out_dir = workdir / "features"
    paths, counts = _extract(
        root, out_dir, checkpoint_hash=ckpt_hash, subjects=subjects,
        selection=selection, brainbert=model, preprocess_cfg=preprocess_config_from(
            config.preprocess), tasks=tuple(config.tasks), batch_windows=config.batch_windows,
        compute_dtype=jnp.dtype(config.compute_dtype), storage_dtype=config.storage_dtype,
        max_windows=None if config.max_windows is None or config.max_windows < 0
        else config.max_windows, seed=config.seed, chunk=config.get("chunk") or "auto",
        progress_every_s=config.get("progress_every_s", 5.0),
        max_pretrain_windows=_pretrain_cap(config), trials=trials)
    seconds = time.perf_counter() - t0
    prov = store_provenance(config, paths)
    provenance.write_provenance(out_dir, prov)
    windows: dict[str, int] = {}
    electrodes: dict[str, int] = {}
    for p in paths:
        meta = read_attrs(p)
        electrodes[p.name] = len(meta["electrode_names"])
        for g, n in meta["groups"].items():
            windows[g] = windows.get(g, 0) + n
    summary = {
        "files": [str(p) for p in paths], "root": str(root), "checkpoint_hash": ckpt_hash,
        "windows": windows, "electrodes": electrodes, "seconds": round(seconds, 3),
        "computed_windows": counts["computed_windows"],
        "skipped_files": counts["skipped_files"],
        # which sessions the store holds, and what its BrainBERT was trained on
        "sessions": prov["sessions"], "trained_on": prov["trained_on"],
        "complete": prov["complete"],
        "windows_per_s": round(counts["computed_windows"] / seconds, 3),
        "electrode_windows_per_s": round(counts["computed_electrode_windows"] / seconds, 3),
        "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
    }
    atomic_json(workdir / "results.json", summary)
    logging.info("extracted %d windows (%d files, %d skipped) in %.1f s: %.1f windows/s",
                 counts["computed_windows"], len(paths), counts["skipped_files"], seconds,
                 summary["windows_per_s"])
    return summary
