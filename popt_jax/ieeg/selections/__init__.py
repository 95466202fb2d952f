"""Trial and electrode selections: upstream's, packaged, and the rules that apply them.

Upstream PopT pretrains on `pretrain_split_trials.json`, fine-tunes on the held-out trials of
`test_trials.json` and uses the electrodes of `clean_laplacian.json`; those files ship here
(sources and the derivation of `clean_laplacian` in `SOURCES.md`). Config fields take either a
packaged name (``"clean_laplacian"``) or a path to a JSON file of the same form:

* trials: ``{"sub_1": ["trial000", "trial002"], ...}`` (`load_trials`);
* electrodes: ``{"sub_1": ["T2bHa10", ...], ...}`` (`braintreebank.load_selection`).

`pretraining_trials` applies the rule that pretraining never reads a fine-tuning test trial
unless asked (`config.data.allow_held_out`). `derive_clean_laplacian` is BrainBERT's
electrode rule (corrupted list + Laplacian neighbours), used by
`scripts/derive_electrode_selection.py`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from absl import logging

from popt_jax.errors import DataError
from popt_jax.ieeg.braintreebank import (
    clean_electrode_name,
    split_electrode_name,
    subject_id,
    trial_id,
)

__all__ = ["PACKAGED", "resolve", "load_trials", "union_trials", "trials_of_files",
           "pretraining_trials", "feature_file_trial", "derive_clean_laplacian",
           "load_corrupted"]

DATA_DIR = Path(__file__).resolve().parent
PACKAGED = {
    "pretrain_split_trials": DATA_DIR / "pretrain_split_trials.json",
    "test_trials": DATA_DIR / "test_trials.json",
    "clean_laplacian": DATA_DIR / "clean_laplacian.json",
    "brainbert_corrupted_elec": DATA_DIR / "brainbert_corrupted_elec.json",
    # Neuroprobe (SUBMIT.md): the sessions pretraining may use, and its 12 evaluation sessions
    "neuroprobe_allowed_pretraining": DATA_DIR / "neuroprobe_allowed_pretraining.json",
    "neuroprobe_lite_sessions": DATA_DIR / "neuroprobe_lite_sessions.json",
}

Trials = dict[str, list[str]]


def resolve(spec: str | os.PathLike) -> Path:
    """A packaged selection's path for its name (`PACKAGED`), else `spec` as a path."""
    if isinstance(spec, str) and spec in PACKAGED:
        return PACKAGED[spec]
    return Path(spec)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "selection file not found") from None
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot read selection JSON ({err})") from None


def load_trials(spec: str | os.PathLike) -> Trials:
    """A trial selection ``{subject: [trials]}`` (packaged name or path), ids canonical."""
    path = resolve(spec)
    raw = _read_json(path)
    ok = isinstance(raw, dict) and all(isinstance(v, list) for v in raw.values())
    if not ok:
        raise DataError(path, "expected a JSON object {subject: [trial ids]}")
    try:
        return {subject_id(k): sorted({trial_id(t) for t in v}) for k, v in raw.items()}
    except ValueError as err:
        raise DataError(path, f"bad subject or trial id ({err})") from None


def union_trials(specs: str | os.PathLike | Sequence[str | os.PathLike] | None
                 ) -> Trials | None:
    """The union of one or more trial selections (a comma-separated string works too);
    None for an empty spec (meaning: every trial)."""
    if not specs:
        return None
    if isinstance(specs, str):
        specs = [s.strip() for s in specs.split(",") if s.strip()]
    elif isinstance(specs, os.PathLike):
        specs = [specs]
    out: dict[str, set[str]] = {}
    for spec in specs:
        for s, ts in load_trials(spec).items():
            out.setdefault(s, set()).update(ts)
    return {s: sorted(ts) for s, ts in out.items()} or None


_FEATURE_FILE = re.compile(r"^(sub_\d+)_(trial\d+)\.h5$")


def feature_file_trial(path: str | os.PathLike) -> tuple[str, str] | None:
    """(subject, trial) of a feature-store file name ``sub_1_trial000.h5``, else None."""
    m = _FEATURE_FILE.match(Path(path).name)
    return (m.group(1), trial_id(m.group(2))) if m else None


def trials_of_files(paths: Iterable[str | os.PathLike]) -> Trials:
    """{subject: [trials]} of feature-store files."""
    out: dict[str, set[str]] = {}
    for p in paths:
        st = feature_file_trial(p)
        if st:
            out.setdefault(st[0], set()).add(st[1])
    return {s: sorted(ts) for s, ts in out.items()}


def pretraining_trials(available: Mapping[str, Sequence[str]],
                       wanted: Mapping[str, Sequence[str]] | None,
                       held_out: Mapping[str, Sequence[str]] | None,
                       allow_held_out: bool = False, *, held_out_name: str = "") -> Trials:
    """The trials pretraining may read, with ONE log line saying what the rule did.

    Args:
      available: {subject: [trials]} in the feature store.
      wanted: the pretraining trial selection (None = every available trial).
      held_out: the fine-tuning test trials (None = none).
      allow_held_out: keep held-out trials anyway (the user asked for it).
      held_out_name: the held-out selection's name, for the log line.

    Returns:
      {subject: [trials]}; subjects with no trial left are dropped.
    """
    out: Trials = {}
    for s, ts in available.items():
        keep = set(ts) if wanted is None else set(ts) & set(wanted.get(s, ()))
        out[s] = sorted(keep)
    held = {(s, t) for s, ts in (held_out or {}).items() for t in ts}
    touched = sorted((s, t) for s, ts in out.items() for t in ts if (s, t) in held)
    listing = ", ".join(f"{s}/{t}" for s, t in touched) or "none in this store"
    if allow_held_out:
        logging.warning("pretraining MAY READ fine-tuning test trials (config.data."
                        "allow_held_out=True): %s", listing)
    else:
        out = {s: [t for t in ts if (s, t) not in held] for s, ts in out.items()}
        logging.info("pretraining never reads the fine-tuning test trials of %s (excluded: "
                     "%s; config.data.allow_held_out=True to include them)",
                     held_out_name or "the held-out selection", listing)
    return {s: ts for s, ts in out.items() if ts}


# --------------------------------------------------------------------------- electrodes


def load_corrupted(spec: str | os.PathLike = "brainbert_corrupted_elec") -> dict[str, list[str]]:
    """BrainBERT's corrupted-channel list {``sub_N``: [names as written]} (keys ``subjectN``
    or ``sub_N``); the names are NOT cleaned (see `derive_clean_laplacian`)."""
    path = resolve(spec)
    raw = _read_json(path)
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise DataError(path, "expected a JSON object {subject: [channel names]}")
    out = {}
    for k, v in raw.items():
        key = str(k)
        key = key[len("subject"):] if key.startswith("subject") else key
        out[subject_id(key)] = [str(n) for n in v]
    return out


def derive_clean_laplacian(labels: Sequence[str], corrupted: Sequence[str]) -> list[str]:
    """BrainBERT's `get_clean_laplacian_electrodes` for one subject (see SOURCES.md).

    Args:
      labels: the subject's raw electrode labels (as in electrode_labels.json).
      corrupted: its corrupted-channel names, as written in the list.

    Returns:
      The selected electrodes (cleaned names) in label order. Corrupted entries are compared
      as written with the cleaned labels, so a marked entry (``X*``) removes nothing, as
      upstream; a label without a trailing contact number has no neighbours and is dropped
      (upstream would fail on it).
    """
    names = [clean_electrode_name(n) for n in labels]
    bad = set(corrupted)
    clean = [n for n in dict.fromkeys(names) if n not in bad]
    keys = {split_electrode_name(n) for n in clean} - {None}
    out = []
    for n in clean:
        k = split_electrode_name(n)
        if k and (k[0], k[1] - 1) in keys and (k[0], k[1] + 1) in keys:
            out.append(n)
    return out
