"""The feature-store format: one HDF5 file of window embeddings per subject-trial.

PopT never sees raw sEEG: it reads per-electrode BrainBERT embeddings of 5 s windows. Upstream
writes one ``.npy`` per window (hundreds of thousands of small files, three ``np.load`` per
pretraining example). Here every subject-trial becomes ONE file, written by
`popt_jax.ieeg.extract`, read by `popt_jax.ieeg.datasets`::

    {out_dir}/sub_{S}_trial{TTT}.h5
      attrs   format, subject, trial, fs, n_samples, window_samples, hidden_dim,
              preprocess_config (JSON of PreprocessConfig), checkpoint_hash,
              extraction (JSON: tasks, max_windows, dtypes, requested electrodes),
              popt_jax_version
      electrode_names   [E] str, the token order (label order of the data layer)
      coords            [E, 3] float64 (L, I, P) as localized (PopT truncates them)
      positions         [E, 3] float64 real-valued index-space positions, what PopT's
                        continuous position code reads (Brain Treebank: the L/I/P columns
                        untruncated; other recordings: `coords.CoordMapping.positions` of
                        their millimetres); attr ``coord_frame`` names their frame
      coords_mm         [E, 3] float64 RAS millimetres in ``coord_frame`` (recordings whose
                        reader gives millimetres only)
      regions           [E] str, Desikan-Killiany
      pretrain/embeddings  [W, E, D] float32|float16   (5 s windows every 0.2 s)
      pretrain/starts      [W] int64 first sample of each window
      windows/embeddings   [N, E, D]  every task window once (word-aligned and non-speech)
      windows/starts       [N] int64, sorted and unique
      <task>/index    [n] int64 row of `windows` of each example (task order kept)
      <task>/labels   [n] int8 (0/1); float32 raw values for rms_reg
      <task>/starts   [n] int64 (= windows/starts[index])
      <task>/word_rows [n] int64 transcript row of the centring word, -1 for non-speech
      <task>/times    [n] float64 what upstream stores beside the label

with ``<task>`` in volume, pitch, sentence_onset, word_onset (and, on request, pos and
rms_reg). Word-aligned and non-speech
windows are shared by several tasks, so they are embedded and stored once under ``windows/``;
`task_arrays` returns a task's (embeddings, labels, starts) as if stored per task.

This module is the format (paths, attributes, readers, the atomic writer); the extraction job
that fills it lives in `popt_jax.ieeg.extract`.

Files are written as ``*.h5.tmp`` and renamed when complete, so a crash never leaves a file
that looks finished. A rerun skips finished files whose preprocessing config, checkpoint hash
and extraction settings match, and raises a one-line `DataError` naming the file otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from absl import logging

from popt_jax.errors import DataError
from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg.braintreebank import subject_id, trial_id

FORMAT = "popt_jax.features/1"
FINETUNE_TASKS = ("volume", "pitch", "sentence_onset", "word_onset")
DEFAULT_TASKS = ("pretrain",) + FINETUNE_TASKS
# Written on request (config.tasks): noun vs verb, and word volume as a regression target
# (float32 labels, z-scored per subject by the data layer).
EXTRA_TASKS = ("pos", "rms_reg")
REGRESSION_TASKS = ("rms_reg",)
ALL_TASKS = DEFAULT_TASKS + EXTRA_TASKS
# PreprocessConfig fields that change memory use only, never the numbers written.
_NOT_FINGERPRINTED = ("chunk",)


def _version() -> str:
    try:
        return metadata.version("popt_jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def feature_path(out_dir: str | os.PathLike, subject: int | str, trial: int | str) -> Path:
    """``{out_dir}/sub_{S}_trial{TTT}.h5``."""
    return Path(out_dir) / f"{subject_id(subject)}_{trial_id(trial)}.h5"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, or of every file of a directory (sorted by name)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a feature file (attrs with JSON decoded, names, coords, regions, sizes).

    Cheap: no embedding is read. DataError naming the file if it is not a feature file.
    """
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise DataError(path, f"not a {FORMAT} feature file "
                                f"(format attr {f.attrs.get('format')!r})")
            out: dict[str, Any] = {k: (v.item() if isinstance(v, np.generic) else v)
                                   for k, v in f.attrs.items()}
            for k in ("preprocess_config", "extraction"):
                out[k] = json.loads(out[k])
            out["electrode_names"] = list(f["electrode_names"].asstr()[:])
            out["coords"] = f["coords"][:]
            for k in ("positions", "coords_mm"):
                out[k] = f[k][:] if k in f else None
            out["regions"] = list(f["regions"].asstr()[:])
            out["groups"] = {k: int(f[k]["labels"].shape[0] if "labels" in f[k]
                                    else f[k]["starts"].shape[0])
                             for k in f if isinstance(f[k], h5py.Group)}
    except OSError as err:
        raise DataError(path, f"cannot read feature file: {err}") from None
    return out


def real_positions(meta: Mapping[str, Any], path: str | os.PathLike) -> np.ndarray:
    """float64 [E, 3] real-valued positions of a file's electrodes (`read_attrs` output).

    The ``positions`` dataset; a Brain Treebank file written before it existed stores the
    untruncated L/I/P columns as ``coords``, which are those positions. A recording's file
    without it holds rounded table rows only: DataError (re-extract it).
    """
    if meta.get("positions") is not None:
        return np.asarray(meta["positions"], np.float64)
    if "coord_mapping" not in meta:  # Brain Treebank layout: coords are the L/I/P columns
        return np.asarray(meta["coords"], np.float64)
    raise DataError(path, "holds rounded table rows but no real-valued positions (written "
                    "before they were stored); re-extract it for position_code='continuous'")


def task_arrays(f: h5py.File, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings [n, E, D] float32, labels [n] int8, starts [n]) of a task in an open file.

    ``task='pretrain'`` gives the pretraining windows with labels of -1.
    """
    if task == "pretrain":
        g = f["pretrain"]
        return (g["embeddings"][:].astype(np.float32), np.full(g["starts"].shape, -1, np.int8),
                g["starts"][:])
    if task not in f:
        raise DataError(f.filename, f"no task group '{task}' (have {', '.join(f)})")
    g = f[task]
    index = g["index"][:]
    emb = f["windows/embeddings"]
    # h5py fancy indexing needs increasing indices: read sorted unique rows, then expand.
    uniq, inverse = np.unique(index, return_inverse=True)
    rows = emb[uniq] if len(uniq) else np.zeros((0, *emb.shape[1:]), emb.dtype)
    return rows[inverse].astype(np.float32), g["labels"][:], g["starts"][:]


# --------------------------------------------------------------------------- fingerprints


def preprocess_json(cfg: pp.PreprocessConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), sort_keys=True))


def check_existing(path: Path, want: dict[str, Any]) -> None:
    """DataError unless the finished file at ``path`` was made with the settings ``want``."""
    have = read_attrs(path)
    stored_pre = {k: v for k, v in have["preprocess_config"].items()
                  if k not in _NOT_FINGERPRINTED}
    want_pre = {k: v for k, v in want["preprocess_config"].items()
                if k not in _NOT_FINGERPRINTED}
    diffs = []
    if stored_pre != want_pre:
        keys = sorted(k for k in set(stored_pre) | set(want_pre)
                      if stored_pre.get(k) != want_pre.get(k))
        diffs.append("preprocessing config differs (" + ", ".join(
            f"{k}: stored {stored_pre.get(k)!r}, requested {want_pre.get(k)!r}"
            for k in keys) + ")")
    if have["checkpoint_hash"] != want["checkpoint_hash"]:
        diffs.append(f"checkpoint hash differs (stored {have['checkpoint_hash']!r}, "
                     f"requested {want['checkpoint_hash']!r})")
    if have["extraction"] != want["extraction"]:
        keys = sorted(k for k in set(have["extraction"]) | set(want["extraction"])
                      if have["extraction"].get(k) != want["extraction"].get(k))
        diffs.append("extraction settings differ (" + ", ".join(keys) + ")")
    if diffs:
        raise DataError(path, "existing features were made differently: " + "; ".join(diffs)
                        + "; delete the file or choose another output folder")


# --------------------------------------------------------------------------- planning


def write_file(path: Path, attrs: Mapping[str, Any], names: Sequence[str], coords: np.ndarray,
                regions: Sequence[str], pretrain_starts: np.ndarray | None,
                tasks: Mapping[str, Mapping[str, Any]], fill, storage_dtype: str, *,
                positions: np.ndarray | None = None,
                coords_mm: np.ndarray | None = None) -> None:
    """Write one feature file atomically (``path.tmp`` renamed when complete).

    ``tasks[t]`` holds labels/starts/word_rows/times (and ``upstream_task``); their windows are
    gathered, de-duplicated by start, into ``windows/``. ``fill(starts, sink)`` writes the
    embeddings of ``starts`` into the [len(starts), E, D] dataset ``sink``. ``positions``
    (real-valued index-space positions) and ``coords_mm`` (millimetres) are written when
    given. Any exception removes the temporary file and propagates.
    """
    hidden = int(attrs["hidden_dim"])
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        logging.warning("%s: removing a stale temporary file from an interrupted run", tmp)
        tmp.unlink()
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            text = h5py.string_dtype()
            f.create_dataset("electrode_names", data=np.asarray(names, dtype=object), dtype=text)
            f.create_dataset("coords", data=np.asarray(coords, dtype=np.float64))
            for key, value in (("positions", positions), ("coords_mm", coords_mm)):
                if value is not None:
                    f.create_dataset(key, data=np.asarray(value, np.float64).reshape(-1, 3))
            f.create_dataset("regions", data=np.asarray(regions, dtype=object), dtype=text)
            groups = []
            if pretrain_starts is not None:
                groups.append(("pretrain", np.asarray(pretrain_starts, np.int64)))
            if tasks:
                win_starts = np.unique(np.concatenate(
                    [np.zeros(0, np.int64)] + [np.asarray(t["starts"]) for t in tasks.values()]))
                groups.append(("windows", win_starts))
                for task, table in tasks.items():
                    g = f.create_group(task)
                    g.create_dataset("index", data=np.searchsorted(win_starts, table["starts"]))
                    for key in ("labels", "starts", "word_rows", "times"):
                        g.create_dataset(key, data=table[key])
                    g.attrs["upstream_task"] = table.get("upstream_task", task)
            for name, starts in groups:
                g = f.create_group(name)
                g.create_dataset("starts", data=starts)
                # One chunk per window: the datasets read single windows at random.
                sink = g.create_dataset("embeddings", shape=(len(starts), len(names), hidden),
                                        dtype=storage_dtype,
                                        chunks=(1, len(names), hidden) if len(starts) else None)
                fill(starts, sink)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


