"""Which Brain Treebank sessions a model saw in training: ``trained_on`` records.

Benchmarks such as Neuroprobe forbid pretraining on their evaluation sessions, so every
artefact a training job writes names the sessions (``btbank<subject>_<trial>``) whose data
its weights have seen, directly or through what they were built on:

* extraction (`extract.extract_features_job`): ``{features}/provenance.json`` and the job's
  ``results.json`` list the sessions the store holds (``sessions``) and what the BrainBERT
  that embedded them was trained on (``trained_on``: a random BrainBERT saw nothing);
* BrainBERT pretraining: the sessions of its spectrogram store;
* PopT pretraining: the sessions it read from the store, plus the store's ``trained_on``;
* PopT fine-tuning: the sessions it read, plus its initialisation's ``trained_on``.

The record is ``{"trained_on": [...], "complete": bool, "sources": {...}}``, written as
``provenance.json`` beside each export (``popt_best/``, ``brainbert_best/``) and as fields of
the run's ``results.json``. ``complete`` is False when something the weights were built on
has no record (e.g. converted upstream weights): the known sessions are listed, but a reader
cannot rule out others. `read_provenance` finds the record for a checkpoint path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from popt_jax.core.jsonio import atomic_json

__all__ = ["session_name", "sessions_of_trials", "record", "merge", "read_provenance",
           "write_provenance", "NONE"]

FILE = "provenance.json"
# A model that saw no recorded data at all (seeded random weights).
NONE: dict[str, Any] = {"trained_on": [], "complete": True, "sources": {}}


def session_name(subject, trial) -> str:
    """``btbank<S>_<T>`` for ``("sub_1", "trial001")``, ``(1, 1)`` or ``("btbank1", 1)``."""
    s = str(subject).replace("sub_", "").replace("btbank", "").replace("subject", "")
    t = str(trial).replace("trial", "")
    return f"btbank{int(s)}_{int(t)}"


def sessions_of_trials(trials: Mapping[str, Sequence[str]] | None) -> list[str]:
    """Sorted session names of a ``{subject: [trials]}`` selection."""
    out = {session_name(s, t) for s, ts in (trials or {}).items() for t in ts}
    return sorted(out, key=_order)


def _order(name: str) -> tuple[int, int]:
    s, _, t = name[len("btbank"):].partition("_")
    return int(s), int(t)


def record(sessions: Iterable[str], *, complete: bool = True,
           sources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"trained_on": sorted(set(sessions), key=_order), "complete": bool(complete),
            "sources": dict(sources or {})}


def merge(own: Iterable[str], inherited: Mapping[str, Any] | None, source: str,
          what: str) -> dict[str, Any]:
    """This run's sessions plus those of what it was built on (`inherited`, None = no record).

    Args:
      own: sessions this run trained on.
      inherited: the record of the input (features' BrainBERT, initial checkpoint) or None.
      source: that input's path (kept in ``sources``).
      what: its role, e.g. "init_checkpoint", "features".
    """
    own = list(own)
    if inherited is None:
        return record(own, complete=False, sources={what: {"path": str(source),
                                                           "trained_on": None}})
    return record(own + list(inherited.get("trained_on") or []),
                  complete=bool(inherited.get("complete", True)),
                  sources={what: {"path": str(source),
                                  "trained_on": list(inherited.get("trained_on") or [])}})


def write_provenance(folder: str | os.PathLike, rec: Mapping[str, Any]) -> Path:
    """``{folder}/provenance.json`` (atomic)."""
    path = Path(folder) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(path, dict(rec))
    return path


def _candidates(path: Path) -> list[Path]:
    folder = path if path.is_dir() else path.parent
    return [folder / FILE, folder / "results.json", folder.parent / FILE,
            folder.parent / "results.json"]


def read_provenance(path: str | os.PathLike) -> tuple[dict[str, Any], Path] | None:
    """(record, file it came from) for a checkpoint file or folder, or None when none exists.

    Looks in the checkpoint's folder (or the folder itself), then its parent (a run's
    workdir holding ``results.json``), for ``provenance.json`` or a ``results.json`` with a
    ``trained_on`` list. A record without ``complete`` counts as complete.
    """
    for f in _candidates(Path(path)):
        if not f.is_file():
            continue
        try:
            body = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(body, dict) and isinstance(body.get("trained_on"), list):
            return ({"trained_on": [str(s) for s in body["trained_on"]],
                     "complete": bool(body.get("complete", True)),
                     "sources": dict(body.get("sources") or {})}, f)
    return None
