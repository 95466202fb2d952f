"""Feature-store files from any `Recording` (BIDS-iEEG, MNE, NWB): the reader-agnostic path.

    python -m popt_jax.main --config configs/extract_recordings.py --workdir runs/mine \
        --config.data.root=/data/bids --config.data.subject=01

Each run becomes one ``sub_{S}_trial{TTT}.h5`` in exactly the format of
`popt_jax.ieeg.feature_store` (``S`` = ``store_subject``, default the BIDS label when it is
a number; ``TTT`` = the run's position), so pretraining, fine-tuning and evaluation read it
unchanged. Differences from a Brain Treebank file, all additive: ``coords`` hold the
integer table rows of `coords.CoordMapping` (rounded), ``positions`` the real-valued
index-space positions before rounding (what ``position_code="continuous"`` feeds PopT),
``coords_mm`` the millimetres in the frame named by the attribute ``coord_frame``; the
attribute ``coord_mapping`` (JSON) records the frame, units, offset, scale and axes,
``source`` names the recording, and ``regions`` come from the source where known.

Labels: the Brain Treebank tasks (volume, pitch, sentence_onset, word_onset) need an events
table with word columns (``rms``, ``pitch``, ``is_onset``); any recording can instead name an
event column and its positive (and optionally negative) values, stored as task
``event_task.name``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from popt_jax.core.jsonio import atomic_json
from popt_jax.errors import DataError, UserError
from popt_jax.ieeg import brainbert, feature_store, frontend
from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg.feature_store import FINETUNE_TASKS, FORMAT, feature_path
from popt_jax.ieeg.recording import Recording

__all__ = ["extract_recording", "extract_recordings_job", "Rate", "frontend_config_from",
           "check_length", "store_subject"]


class Rate:
    """Logs items done, items/s and ETA at most every ``every_s`` seconds."""

    def __init__(self, label: str, total: int, unit: str = "windows", every_s: float = 5.0):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.t0 = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last < self.every_s and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        logging.info("%s: %d/%d %s, %.1f %s/s, ETA %.0f s", self.label, self.done, self.total,
                     self.unit, rate, self.unit, eta)

    @property
    def per_s(self) -> float:
        return self.done / max(time.perf_counter() - self.t0, 1e-9)


def frontend_config_from(config) -> frontend.FrontEndConfig:
    """`FrontEndConfig` from ``config.preprocess`` and ``config.frontend``."""
    from popt_jax.ieeg.extract import preprocess_config_from

    fe = dict(config.get("frontend") or {})
    fe.pop("coords", None)
    pre = dict(config.preprocess)
    pre["rereference"] = fe.get("rereference", "laplacian")  # so stored settings tell it
    return frontend.FrontEndConfig(preprocess=preprocess_config_from(pre), **fe)


def check_length(rec: Recording, cfg: frontend.FrontEndConfig) -> int:
    """Model-rate length of ``rec``; DataError naming it when shorter than one window."""
    n = frontend.model_samples(rec, cfg.preprocess.fs)
    if n < cfg.preprocess.window_samples:
        raise DataError(rec.path, f"recording is {rec.n_samples / rec.fs:.2f} s long, shorter "
                        f"than one {cfg.preprocess.window_s:g} s window")
    return n


def store_subject(rec: Recording, override) -> int:
    """Integer subject id of the store file names (``override``, else a numeric label)."""
    if override not in (None, "", 0):
        return int(override)
    label = str(rec.subject).removeprefix("sub-").removeprefix("sub_")
    if not label.isdigit():
        raise UserError(f"subject label {rec.subject!r} is not a number; set "
                        "config.store_subject to the number used in feature file names")
    return int(label)


def _tasks(rec: Recording, n: int, cfg: pp.PreprocessConfig, tasks: Sequence[str],
           event_task: dict | None) -> dict[str, pp.TaskExamples]:
    out: dict[str, pp.TaskExamples] = {}
    word_tasks = [t for t in tasks if t != "pretrain"]
    events = rec.events() if (word_tasks or event_task) else None
    if word_tasks:
        words = rec.words()
        if words is None:
            if events is None:
                raise DataError(rec.path, f"tasks {word_tasks} need events (none found)")
            words = frontend.words_from_events(events, cfg.fs)
        for t in word_tasks:
            if t not in FINETUNE_TASKS:
                raise UserError(f"task {t!r} is not pretrain or one of {FINETUNE_TASKS}")
            out[t] = pp.make_task(t, words, n, cfg)
    if event_task:
        if events is None:
            raise DataError(rec.path, "config.event_task needs events (none found)")
        name = str(event_task.get("name") or "events")
        neg = event_task.get("negative")
        out[name] = frontend.event_task(events, str(event_task["column"]),
                                        list(event_task["positive"]),
                                        list(neg) if neg else None, n, cfg, name=name)
    return out


def extract_recording(rec: Recording, path: Path, model: brainbert.BrainBERT, *,
                      checkpoint_hash: str, cfg: frontend.FrontEndConfig,
                      mapping_cfg: dict | None = None, tasks: Sequence[str] = ("pretrain",),
                      event_task: dict | None = None, subject: int = 1, trial: int = 0,
                      names: Sequence[str] | None = None, batch_windows: int = 16,
                      max_windows: int | None = None, storage_dtype: str = "float32",
                      compute_dtype=jnp.float32) -> Path:
    """Preprocess ``rec``, embed its windows with BrainBERT and write one store file.

    The file is written as ``path.tmp`` and renamed when complete. Returns ``path``.
    """
    p = cfg.preprocess
    n = check_length(rec, cfg)
    plan = frontend.plan_channels(rec, cfg, mapping_cfg, names)
    logging.info("%s", rec.describe())
    t0 = time.perf_counter()
    data = frontend.preprocess_recording(rec, plan, cfg).data
    logging.info("%s: %d electrodes x %d samples at %g Hz preprocessed in %.1f s", rec.name,
                 len(plan.names), data.shape[1], p.fs, time.perf_counter() - t0)
    w = p.window_samples
    pre = pp.pretraining_window_starts(n, p)[:max_windows] if "pretrain" in tasks else None
    examples = _tasks(rec, n, p, tasks, event_task)
    tables = {}
    from popt_jax.ieeg.extract import _cap_task  # the Brain Treebank path's capping

    for t, ex in examples.items():
        keep = _cap_task(ex, max_windows, p.seed)
        tables[t] = {"labels": ex.labels[keep].astype(np.int8),
                     "starts": ex.starts[keep].astype(np.int64),
                     "word_rows": ex.word_rows[keep].astype(np.int64),
                     "times": ex.times[keep].astype(np.float64), "upstream_task": ex.task}
    total = (0 if pre is None else len(pre)) + len(np.unique(np.concatenate(
        [np.zeros(0, np.int64)] + [t["starts"] for t in tables.values()])))
    rate = Rate(rec.name, total)

    def fill(starts: np.ndarray, sink) -> None:
        for a in range(0, len(starts), batch_windows):
            part = starts[a:a + batch_windows]
            wav = np.empty((batch_windows, data.shape[0], w), np.float32)
            for i in range(batch_windows):  # short batches repeat the last window
                s = int(part[min(i, len(part) - 1)])
                wav[i] = data[:, s:s + w]
            out = brainbert.brainbert_embed(model, wav, compute_dtype=compute_dtype)
            sink[a:a + len(part)] = np.asarray(out)[:len(part)].astype(sink.dtype)
            rate.update(len(part))

    extraction = {"tasks": list(tasks), "event_task": event_task, "max_windows": max_windows,
                  "storage_dtype": storage_dtype, "rereference": cfg.rereference,
                  "source_fs": rec.fs, "line_freq": cfg.line_freq or rec.line_freq}
    attrs = {"format": FORMAT, "fs": float(p.fs), "checkpoint_hash": checkpoint_hash,
             "popt_jax_version": feature_store._version(),
             "preprocess_config": json.dumps(feature_store.preprocess_json(
                 frontend._notched(rec, cfg)), sort_keys=True),
             "extraction": json.dumps(extraction, sort_keys=True, default=str),
             "subject": f"sub_{subject}", "trial": f"trial{trial:03d}", "n_samples": n,
             "window_samples": w, "hidden_dim": model.config.hidden_dim,
             "coord_mapping": plan.mapping, "source": rec.path,
             "coord_frame": json.loads(plan.mapping)["frame"]}
    regions = [rec.regions.get(x.split("-")[0], "") for x in plan.names]
    path.parent.mkdir(parents=True, exist_ok=True)
    feature_store.write_file(path, attrs, plan.names, plan.index.astype(np.float64), regions,
                             pre, tables, fill, storage_dtype, positions=plan.positions,
                             coords_mm=plan.mm)
    logging.info("%s: wrote %s (%d windows, %.1f windows/s)", rec.name, path, total,
                 rate.per_s)
    return path


def extract_recordings_job(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """The ``extract_recordings`` job: every run named by ``config.data`` into
    ``{workdir}/features`` (one store file per run) and ``{workdir}/results.json``."""
    from popt_jax.ieeg.extract import brainbert_from_config
    from popt_jax.ieeg.readers import open_recordings

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = frontend_config_from(config)
    recs = open_recordings(config.data)
    model, ckpt = brainbert_from_config(config)
    mapping_cfg = dict(config.frontend.get("coords") or {}) if config.get("frontend") else {}
    event_task = dict(config.event_task) if config.get("event_task") and \
        config.event_task.get("column") else None
    out, t0 = [], time.perf_counter()
    for k, rec in enumerate(recs):
        s = store_subject(rec, config.get("store_subject"))
        path = feature_path(workdir / "features", s, k)
        if path.exists():
            raise DataError(path, "exists; choose another --workdir or delete it")
        out.append(str(extract_recording(
            rec, path, model, checkpoint_hash=ckpt, cfg=cfg, mapping_cfg=mapping_cfg,
            tasks=tuple(config.tasks), event_task=event_task, subject=s, trial=k,
            batch_windows=int(config.batch_windows),
            max_windows=None if config.max_windows < 0 else int(config.max_windows),
            storage_dtype=config.storage_dtype,
            compute_dtype=jnp.dtype(config.compute_dtype))))
    summary = {"files": out, "recordings": [r.path for r in recs], "checkpoint_hash": ckpt,
               "seconds": round(time.perf_counter() - t0, 3),
               "config": config.to_dict() if hasattr(config, "to_dict") else dict(config)}
    atomic_json(workdir / "results.json", summary)
    return summary
