"""Reader for the public Brain Treebank on-disk layout (sEEG recorded while watching movies).

Layout under the root folder (names as published at braintreebank.dev and as read by the
PopT/BrainBERT data code)::

    all_subject_data/sub_{S}_trial{TTT}.h5          data/electrode_{i}: 1-D float, fs Hz
    electrode_labels/sub_{S}/electrode_labels.json  list of names; i = position of the name
    localization/sub_{S}/depth-wm.csv               Electrode, L, I, P, DesikanKilliany, ...
    subject_timings/sub_{S}_trial{TTT}_timings.csv  movie_time, index (trigger -> sample)
    subject_metadata/sub_{S}_trial{TTT}_metadata.json   {"filename": <movie id>, "title": ...}
    transcripts/<movie id>/features.csv             one row per word (pandas index column first)

Semantics kept from upstream (PopulationTransformer ``data/h5_data.py``, ``trial_data.py``,
``trial_data_reader.py``, ``h5_data_reader.py``, ``utils.py``):

* label cleaning strips ``*``, ``#`` and ``_``; localization names are cleaned the same way
  (upstream strips only ``*``/``#`` there, which is identical for every published name);
* the transcript drops every row with a missing value in any column (pandas ``dropna``
  semantics, pandas' default missing-value spellings included), adds ``word_diff`` and maps
  +-inf to +-(-log 1e-9);
* a word's sample index is ``round(index_k + (t - movie_time_k) * fs)`` with ``k`` the nearest
  trigger (first one on ties, round half to even); from the first word starting after the
  last trigger on, words get no sample index (NaN);
* a selection of electrodes is re-ordered to the order of ``electrode_labels.json``.

Every problem with the files is a `DataError`: a `ValueError` whose message is one line naming
the file (and electrode) at fault. h5 files are opened per call; only requested slices are read.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np
from absl import logging

from popt_jax.errors import DataError

__all__ = [
    "DataError", "BrainTreebank", "Localization", "Triggers", "Words", "clean_electrode_name",
    "split_electrode_name", "laplacian_neighbours", "estimate_sample_index", "load_selection",
    "subject_id", "trial_id",
]

# pandas' default missing-value spellings: upstream reads features.csv with pandas and then
# drops every row holding one of them, so a word spelled "null" or "NA" disappears there too.
_NA_STRINGS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})
_INF_REPLACEMENT = -math.log(1e-9)  # upstream caps +-inf word features at +-20.72


# --------------------------------------------------------------------------- names and ids


def subject_id(subject: int | str) -> str:
    """Canonical subject id: ``1``, ``"1"`` and ``"sub_1"`` all give ``"sub_1"``."""
    s = str(subject)
    return s if s.startswith("sub_") else f"sub_{int(s)}"


def trial_id(trial: int | str) -> str:
    """Canonical trial id: ``0``, ``"0"`` and ``"trial000"`` all give ``"trial000"``."""
    s = str(trial)
    if s.startswith("trial"):
        s = s[len("trial"):]
    return f"trial{int(s):03d}"


def clean_electrode_name(name: str) -> str:
    """Strip the ``*``, ``#`` and ``_`` marks the published labels carry."""
    return name.replace("*", "").replace("#", "").replace("_", "")


def split_electrode_name(name: str) -> tuple[str, int] | None:
    """Split a contact name into shaft stem and contact number: ``"LT10a3" -> ("LT10a", 3)``.

    The number is the run of characters after the last letter (upstream `stem_electrode_name`).
    Returns None when that run is not a decimal integer (e.g. ``"EKG"``), where upstream would
    crash; such channels simply have no shaft neighbours.
    """
    k = len(name)
    while k > 0 and not name[k - 1].isalpha():
        k -= 1
    tail = name[k:]
    if not tail or not tail.isascii() or not tail.isdigit():
        return None
    return name[:k], int(tail)


def laplacian_neighbours(name: str, all_names: Sequence[str]) -> tuple[str, str] | None:
    """The two shaft neighbours (n-1, n+1) of ``name`` among ``all_names``, or None.

    Neighbours are looked up among all labels of the subject (trigger channels included), as
    upstream does; matching is on (stem, number) so ``"T1b02"`` would still find ``"T1b1"``.
    """
    key = split_electrode_name(name)
    if key is None:
        return None
    stem, num = key
    by_key: dict[tuple[str, int], str] = {}
    for other in all_names:
        k = split_electrode_name(other)
        if k is not None:
            by_key.setdefault(k, other)
    lower, upper = by_key.get((stem, num - 1)), by_key.get((stem, num + 1))
    return None if lower is None or upper is None else (lower, upper)


def _missing_neighbour_reason(name: str, all_names: Sequence[str]) -> str:
    """Why ``name`` has no Laplacian pair, for error messages."""
    key = split_electrode_name(name)
    if key is None:
        return "has no trailing contact number"
    keys = {split_electrode_name(m) for m in all_names}
    absent = [f"{key[0]}{key[1] + d}" for d in (-1, 1) if (key[0], key[1] + d) not in keys]
    return f"lacks neighbour(s) {', '.join(absent)}"


def _read_json(path: Path, missing: str, what: str):
    """The JSON at ``path``; a one-line `DataError` (``missing`` or unreadable) otherwise."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, missing) from None
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot read {what} JSON ({err})") from None


def load_selection(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read an electrode selection JSON ``{"sub_1": [names], ...}`` (upstream clean_laplacian form).

    Names are cleaned like labels; the stored order is kept (the reader re-orders to label order).
    """
    path = Path(path)
    raw = _read_json(path, "electrode selection file not found", "electrode selection")
    ok = isinstance(raw, dict) and all(isinstance(v, list) for v in raw.values())
    if not ok or not all(isinstance(n, str) for v in raw.values() for n in v):
        raise DataError(path, "expected a JSON object {subject: [electrode names]}")
    return {subject_id(k): [clean_electrode_name(n) for n in v] for k, v in raw.items()}


# --------------------------------------------------------------------------- csv helpers


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file, or DataError."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(path, f"cannot read CSV ({err})") from None
    if not rows:
        raise DataError(path, "empty CSV file")
    header, body = rows[0], [r for r in rows[1:] if r]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise DataError(path, f"row {i + 1} has {len(r)} fields, header has {len(header)}")
    return header, body


def _column_index(path: Path, header: list[str], name: str) -> int:
    if name not in header:
        raise DataError(path, f"missing column '{name}' (have {', '.join(header)})")
    return header.index(name)


def _parse_column(values: list[str]) -> np.ndarray:
    """float64 when every value is numeric, bool for True/False columns, else str."""
    try:
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except ValueError:
        pass
    if values and all(v.lower() in ("true", "false") for v in values):
        return np.asarray([v.lower() == "true" for v in values], dtype=bool)
    return np.asarray(values, dtype=str)


def _as_bool(col: np.ndarray) -> np.ndarray:
    if col.dtype.kind in "bf":  # bool, or pandas-style 1.0/0.0
        return col != 0
    return np.isin(np.char.lower(col.astype(str)), ("true", "1", "1.0"))


# --------------------------------------------------------------------------- containers


@dataclasses.dataclass(frozen=True)
class Localization:
    """Electrode positions of one subject (``depth-wm.csv``).

    Attributes:
        names: cleaned electrode names, file order.
        lip: float64 [n, 3] (L, I, P) coordinates as stored (PopT truncates them toward zero).
        regions: Desikan-Killiany region per electrode ('' when the column is absent).
        columns: every other column, as strings, keyed by header name.
        path: the CSV file, for messages.
    """

    names: list[str]
    lip: np.ndarray
    regions: list[str]
    columns: dict[str, list[str]]
    path: str

    def __len__(self) -> int:
        return len(self.names)

    def lip_int(self) -> np.ndarray:
        """int64 [n, 3] coordinates truncated toward zero (torch ``.long()`` semantics)."""
        return np.trunc(self.lip).astype(np.int64)

    def select(self, names: Sequence[str]) -> "Localization":
        """The rows of ``names``, in that order; DataError naming the CSV if one is absent."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(self.path, f"no localization for electrode(s) {', '.join(missing)} "
                            "(electrode_labels.json and depth-wm.csv disagree)")
        rows = [index[n] for n in names]
        return Localization(
            names=list(names), lip=self.lip[rows], regions=[self.regions[r] for r in rows],
            columns={k: [v[r] for r in rows] for k, v in self.columns.items()}, path=self.path)


@dataclasses.dataclass(frozen=True)
class Triggers:
    """Movie-time -> sample-index anchors of one trial (``*_timings.csv``)."""

    movie_time: np.ndarray  # float64 [k], seconds into the movie
    index: np.ndarray  # float64 [k], sample index in the recording
    path: str


@dataclasses.dataclass
class Words:
    """Column store of transcript words (one entry per word, all columns the same length).

    Columns always present after `BrainTreebank.words`: ``text`` (str), ``start``/``end``
    (movie seconds), ``is_onset`` (bool), ``word_diff`` (start minus previous end, NaN first),
    ``est_idx``/``est_end_idx`` (float64 sample indices, NaN past the last trigger), plus every
    other column of ``features.csv`` (``rms``, ``pitch``, ``pos``, ``sentence`` ...).
    """

    columns: dict[str, np.ndarray]
    path: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise DataError(self.path or None, f"no word column '{name}' "
                            f"(have {', '.join(self.columns)})")
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def take(self, rows: np.ndarray | Sequence[int]) -> "Words":
        """The words at integer positions or boolean mask ``rows``."""
        rows = np.asarray(rows)
        return Words({k: v[rows] for k, v in self.columns.items()}, self.path)

    def aligned(self) -> "Words":
        """Only the words that have a sample index (upstream drops the others)."""
        return self.take(np.isfinite(self["est_idx"]))

    # Shorthands for the columns every consumer needs.
    text = property(lambda self: self["text"])
    start = property(lambda self: self["start"])
    end = property(lambda self: self["end"])
    is_onset = property(lambda self: self["is_onset"])
    est_idx = property(lambda self: self["est_idx"])
    est_end_idx = property(lambda self: self["est_end_idx"])


# --------------------------------------------------------------------------- alignment


def _nearest(ref: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the nearest ``ref`` value for each ``t``, first index on ties (pandas idxmin)."""
    if len(ref) > 1 and np.all(np.diff(ref) >= 0):
        j = np.searchsorted(ref, t, side="left")
        lo, hi = np.clip(j - 1, 0, len(ref) - 1), np.clip(j, 0, len(ref) - 1)
        lo = np.searchsorted(ref, ref[lo], side="left")  # first of a run of equal times
        take_hi = np.abs(ref[hi] - t) < np.abs(t - ref[lo])
        return np.where(take_hi, hi, lo)
    # Unsorted triggers: exact argmin, in chunks to bound memory.
    out = np.empty(len(t), dtype=np.int64)
    for a in range(0, len(t), 1024):
        out[a:a + 1024] = np.argmin(np.abs(ref[None, :] - t[a:a + 1024, None]), axis=1)
    return out


def estimate_sample_index(times: np.ndarray, triggers: Triggers, fs: float) -> np.ndarray:
    """Sample index of movie times from the nearest trigger, by linear extrapolation at ``fs``.

    ``round(index_k + (t - movie_time_k) * fs)`` with round half to even, as upstream.
    No past-the-last-trigger handling here (see `BrainTreebank.words`).
    """
    times = np.asarray(times, dtype=np.float64)
    k = _nearest(triggers.movie_time, times)
    return np.rint(triggers.index[k] + (times - triggers.movie_time[k]) * fs)


# --------------------------------------------------------------------------- the reader


class BrainTreebank:
    """Lazy reader for a Brain Treebank root folder.

    Args:
        root: the dataset root (the folder holding ``all_subject_data`` etc.).
        fs: sampling rate of the recordings in Hz (2048 for the published data).
        transcripts_dir: folder of ``<movie>/features.csv``; default ``root/transcripts``.
    """

    def __init__(self, root: str | os.PathLike, fs: float = 2048.0,
                 transcripts_dir: str | os.PathLike | None = None):
        self.root = Path(root)
        self.fs = float(fs)
        self.transcripts_dir = Path(transcripts_dir or self.root / "transcripts")
        self._labels: dict[str, list[str]] = {}
        self._localization: dict[str, Localization] = {}

    # ---- paths
    def h5_path(self, subject: int | str, trial: int | str) -> Path:
        name = f"{subject_id(subject)}_{trial_id(trial)}.h5"
        path = self.root / "all_subject_data" / name
        flat = self.root / name  # Neuroprobe's download script puts the files at the root
        return flat if not path.exists() and flat.exists() else path

    def labels_path(self, subject: int | str) -> Path:
        return self.root / "electrode_labels" / subject_id(subject) / "electrode_labels.json"

    def localization_path(self, subject: int | str) -> Path:
        return self.root / "localization" / subject_id(subject) / "depth-wm.csv"

    def timings_path(self, subject: int | str, trial: int | str) -> Path:
        return (self.root / "subject_timings"
                / f"{subject_id(subject)}_{trial_id(trial)}_timings.csv")

    def metadata_path(self, subject: int | str, trial: int | str) -> Path:
        return (self.root / "subject_metadata"
                / f"{subject_id(subject)}_{trial_id(trial)}_metadata.json")

    def transcript_path(self, movie: str) -> Path:
        return self.transcripts_dir / movie / "features.csv"

    # ---- listing
    def _h5_index(self) -> list[tuple[str, str]]:
        pattern = re.compile(r"^(sub_\d+)_(trial\d+)\.h5$")
        folder = self.root / "all_subject_data"
        if not folder.is_dir():
            raise DataError(folder, "folder not found (is the Brain Treebank root right?)")
        found = [pattern.match(p.name) for p in folder.iterdir()]
        return [(m.group(1), m.group(2)) for m in found if m]

    def subjects(self) -> list[str]:
        """Subject ids with at least one recording, in numeric order (``["sub_1", ...]``)."""
        return sorted({s for s, _ in self._h5_index()}, key=lambda s: int(s[4:]))

    def trials(self, subject: int | str) -> list[str]:
        """Trial ids recorded for ``subject`` (``["trial000", ...]``), in numeric order."""
        sid = subject_id(subject)
        return sorted((t for s, t in self._h5_index() if s == sid), key=lambda t: int(t[5:]))

    # ---- electrodes
    def electrode_names(self, subject: int | str) -> list[str]:
        """Cleaned names; position i names h5 dataset ``data/electrode_{i}``."""
        sid = subject_id(subject)
        if sid not in self._labels:
            path = self.labels_path(sid)
            raw = _read_json(path, "electrode labels file not found", "electrode labels")
            if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
                raise DataError(path, "expected a JSON list of electrode names")
            names = [clean_electrode_name(n) for n in raw]
            seen: set[str] = set()
            for n in names:
                if n in seen:
                    raise DataError(path, f"electrode name '{n}' appears twice after cleaning")
                seen.add(n)
            self._labels[sid] = names
        return list(self._labels[sid])

    def order_electrodes(self, subject: int | str, names: Iterable[str]) -> list[str]:
        """``names`` re-ordered to label order (upstream `get_ordered_electrodes`)."""
        labels = self.electrode_names(subject)
        wanted = set(names)
        missing = sorted(wanted - set(labels))
        if missing:
            raise DataError(self.labels_path(subject),
                            f"selected electrode(s) {', '.join(missing)} not in the labels")
        return [n for n in labels if n in wanted]

    def localization(self, subject: int | str) -> Localization:
        """``depth-wm.csv`` of a subject (cached). Names not in the labels are logged."""
        sid = subject_id(subject)
        if sid in self._localization:
            return self._localization[sid]
        path = self.localization_path(sid)
        header, rows = _read_csv(path)
        ie = _column_index(path, header, "Electrode")
        icoord = [_column_index(path, header, c) for c in ("L", "I", "P")]
        ireg = header.index("DesikanKilliany") if "DesikanKilliany" in header else None
        names = [clean_electrode_name(r[ie]) for r in rows]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise DataError(path, f"electrode '{dup}' listed twice")
        lip = np.empty((len(rows), 3), dtype=np.float64)
        for i, r in enumerate(rows):
            try:
                lip[i] = [float(r[c]) for c in icoord]
            except ValueError:
                raise DataError(path, f"electrode {names[i]}: non-numeric L/I/P "
                                f"{[r[c] for c in icoord]}") from None
        if not np.all(np.isfinite(lip)):
            bad = names[int(np.where(~np.isfinite(lip).all(axis=1))[0][0])]
            raise DataError(path, f"electrode {bad}: non-finite L/I/P coordinate")
        keep = set(range(len(header))) - {ie, *icoord}
        loc = Localization(
            names=names, lip=lip,
            regions=[r[ireg] for r in rows] if ireg is not None else [""] * len(rows),
            columns={header[c]: [r[c] for r in rows] for c in sorted(keep) if header[c]},
            path=str(path))
        extra = sorted(set(names) - set(self.electrode_names(sid)))
        if extra:
            logging.warning("%s: %d localized electrode(s) absent from electrode_labels.json: %s",
                            path, len(extra), ", ".join(extra))
        self._localization[sid] = loc
        return loc

    def check_subject(self, subject: int | str, names: Sequence[str] | None = None) -> None:
        """DataError unless labels and localization agree (on ``names``, default all localized)."""
        loc = self.localization(subject)
        labels = set(self.electrode_names(subject))
        extra = [n for n in loc.names if n not in labels]
        if extra:
            raise DataError(loc.path, f"electrode(s) {', '.join(extra)} are localized but not "
                            f"in {self.labels_path(subject)}")
        if names is not None:
            self.order_electrodes(subject, names)
            loc.select(list(names))

    def laplacian_plan(self, subject: int | str, names: Sequence[str],
                       on_missing: str = "error") -> tuple[list[str], list[tuple[str, str]]]:
        """Neighbours (n-1, n+1) of each electrode, looked up among all labels of the subject.

        Args:
            subject: subject id.
            names: electrodes to re-reference.
            on_missing: "error" (DataError naming the labels file and electrode) or "skip"
                (drop that electrode, with a logged warning).

        Returns:
            (kept names, their (lower, upper) neighbour names), in the order given.
        """
        labels = self.electrode_names(subject)
        kept, pairs = [], []
        for n in names:
            pair = laplacian_neighbours(n, labels)
            if pair is None:
                why = _missing_neighbour_reason(n, labels)
                if on_missing == "skip":
                    logging.warning("%s: electrode %s %s; skipped for Laplacian re-reference",
                                    self.labels_path(subject), n, why)
                    continue
                raise DataError(self.labels_path(subject),
                                f"electrode {n} {why}, so it cannot be Laplacian re-referenced")
            kept.append(n)
            pairs.append(pair)
        return kept, pairs

    # ---- neural data
    def _open(self, subject: int | str, trial: int | str) -> h5py.File:
        path = self.h5_path(subject, trial)
        if not path.exists():
            raise DataError(path, "recording not found")
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise DataError(path, f"cannot open HDF5 (truncated or corrupt?): {err}") from None
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            f.close()
            raise DataError(path, "no 'data' group")
        return f

    def n_samples(self, subject: int | str, trial: int | str) -> int:
        """Length of the recording; DataError if the electrode datasets disagree."""
        path = self.h5_path(subject, trial)
        with self._open(subject, trial) as f:
            lengths = {k: d.shape for k, d in f["data"].items() if isinstance(d, h5py.Dataset)}
        if not lengths:
            raise DataError(path, "no electrode datasets under 'data'")
        bad = [k for k, s in lengths.items() if len(s) != 1]
        if bad:
            raise DataError(path, f"dataset data/{bad[0]} is not 1-D (shape {lengths[bad[0]]})")
        values, counts = np.unique([s[0] for s in lengths.values()], return_counts=True)
        n = int(values[np.argmax(counts)])  # the majority length; name the odd ones out
        odd = [k for k, s in lengths.items() if s[0] != n]
        if odd:
            raise DataError(path, f"electrode datasets differ in length: data/{odd[0]} has "
                            f"{lengths[odd[0]][0]} samples, most have {n} "
                            f"({len(odd)} dataset(s) differ)")
        return n

    def read_electrodes(self, subject: int | str, trial: int | str, names: Sequence[str],
                        start: int | None = None, stop: int | None = None, *,
                        dtype: np.dtype | type = np.float64, validate: bool = True) -> np.ndarray:
        """Raw samples of ``names`` (in the order given) over ``[start, stop)``.

        Args:
            subject: subject id.
            trial: trial id.
            names: cleaned electrode names (see `electrode_names`).
            start: first sample (default 0).
            stop: one past the last sample (default: end of recording).
            dtype: output dtype (float64 by default, as the upstream filters compute in it).
            validate: raise DataError on NaN/inf or flat (constant) channels.

        Returns:
            [len(names), stop - start] array.
        """
        labels = self.electrode_names(subject)
        index = {n: i for i, n in enumerate(labels)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(self.labels_path(subject),
                            f"electrode(s) {', '.join(missing)} not in the labels")
        path = self.h5_path(subject, trial)
        with self._open(subject, trial) as f:
            group = f["data"]
            out = None
            for row, name in enumerate(names):
                key = f"electrode_{index[name]}"
                if key not in group:
                    raise DataError(path, f"electrode {name}: dataset data/{key} is missing")
                ds = group[key]
                n_total = ds.shape[0]
                a = 0 if start is None else int(start)
                b = n_total if stop is None else int(stop)
                if not 0 <= a <= b <= n_total:
                    raise DataError(path, f"electrode {name}: samples [{a}, {b}) requested, "
                                    f"data/{key} has {n_total}")
                if out is None:
                    out = np.empty((len(names), b - a), dtype=dtype)
                elif out.shape[1] != b - a:
                    raise DataError(path, f"electrode {name}: data/{key} has {n_total} "
                                    "samples, unlike the electrodes before it")
                try:
                    out[row] = ds[a:b]
                except (OSError, RuntimeError) as err:
                    raise DataError(path, f"electrode {name}: cannot read data/{key} "
                                    f"(truncated file?): {err}") from None
                if validate:
                    self._check_channel(path, name, key, out[row])
        return np.empty((0, 0), dtype=dtype) if out is None else out

    @staticmethod
    def _check_channel(path: Path, name: str, key: str, x: np.ndarray) -> None:
        if not np.all(np.isfinite(x)):
            bad = int(np.argmin(np.isfinite(x)))
            raise DataError(path, f"electrode {name}: data/{key} has NaN/inf "
                            f"({int(np.sum(~np.isfinite(x)))} samples, first at {bad})")
        if x.size > 1 and np.ptp(x) == 0:
            raise DataError(path, f"electrode {name}: data/{key} is flat (constant {x[0]!r})")

    # ---- timing, metadata and words
    def triggers(self, subject: int | str, trial: int | str) -> Triggers:
        """The trigger table of a trial (``movie_time`` and ``index`` columns)."""
        path = self.timings_path(subject, trial)
        header, rows = _read_csv(path)
        it, ii = _column_index(path, header, "movie_time"), _column_index(path, header, "index")
        if not rows:
            raise DataError(path, "no triggers")
        try:
            mt = np.asarray([float(r[it]) for r in rows])
            idx = np.asarray([float(r[ii]) for r in rows])
        except ValueError:
            raise DataError(path, "non-numeric movie_time/index value") from None
        if not (np.all(np.isfinite(mt)) and np.all(np.isfinite(idx))):
            raise DataError(path, "NaN in movie_time/index")
        return Triggers(movie_time=mt, index=idx, path=str(path))

    def metadata(self, subject: int | str, trial: int | str) -> dict:
        """The trial's metadata JSON."""
        path = self.metadata_path(subject, trial)
        meta = _read_json(path, "trial metadata not found", "metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("filename"), str):
            raise DataError(path, "metadata has no string 'filename' (the movie id)")
        return meta

    def movie(self, subject: int | str, trial: int | str) -> str:
        """Movie id of a trial (metadata ``filename``), naming ``transcripts/<movie>``."""
        return self.metadata(subject, trial)["filename"]

    def transcript(self, movie: str, dropna: str = "all") -> Words:
        """Words of a movie's ``features.csv`` with upstream cleaning.

        Args:
            movie: movie id.
            dropna: "all" drops a row with a missing value in any column (upstream parity);
                "required" only looks at text/start/end.
        """
        if dropna not in ("all", "required"):
            raise ValueError(f"dropna must be 'all' or 'required', not {dropna!r}")
        path = self.transcript_path(movie)
        header, rows = _read_csv(path)
        body = list(range(1, len(header))) if header and header[0] in ("", "Unnamed: 0") \
            else list(range(len(header)))  # the pandas index column is not data
        for c in ("text", "start", "end", "is_onset"):
            _column_index(path, header, c)
        check = body if dropna == "all" else [header.index(c) for c in ("text", "start", "end")]
        kept = [r for r in rows if not any(r[c] in _NA_STRINGS for c in check)]
        if len(kept) < len(rows):
            logging.info("%s: dropped %d of %d rows with missing values", path,
                         len(rows) - len(kept), len(rows))
        cols = {header[c]: _parse_column([r[c] for r in kept]) for c in body}
        cols["text"] = np.asarray([r[header.index("text")] for r in kept], dtype=str)
        for c in ("start", "end"):
            if cols[c].dtype != np.float64:
                raise DataError(path, f"column '{c}' is not numeric")
        for k, v in cols.items():
            if v.dtype == np.float64:
                cols[k] = np.where(np.isposinf(v), _INF_REPLACEMENT,
                                   np.where(np.isneginf(v), -_INF_REPLACEMENT, v))
        for c in ("is_onset", "is_offset"):
            if c in cols:
                cols[c] = _as_bool(cols[c])
        diff = np.full(len(kept), np.nan)
        diff[1:] = cols["start"][1:] - cols["end"][:-1]
        cols["word_diff"] = diff
        return Words(cols, str(path))

    def words(self, subject: int | str, trial: int | str, *, on_past_end: str = "error",
              dropna: str = "all") -> Words:
        """Transcript words of a trial with estimated onset/offset samples.

        Args:
            subject: subject id.
            trial: trial id.
            on_past_end: what to do with a word whose onset sample lies at or past the end of
                the recording (the files disagree): "error" (DataError) or "drop" (logged).
            dropna: see `transcript`.

        Returns:
            `Words` with float64 ``est_idx``/``est_end_idx`` (NaN from the first word that
            starts after the last trigger on, as upstream).
        """
        trig = self.triggers(subject, trial)
        movie = self.movie(subject, trial)
        words = self.transcript(movie, dropna=dropna)
        est = estimate_sample_index(words.start, trig, self.fs)
        est_end = estimate_sample_index(words.end, trig, self.fs)
        late = np.nonzero(words.start > trig.movie_time[-1])[0]
        if late.size:  # upstream stops aligning at the first word after the last trigger
            est[late[0]:] = np.nan
            est_end[late[0]:] = np.nan
            logging.info("%s: %d words start after the last trigger and get no sample index",
                         trig.path, len(words) - late[0])
        words.columns["est_idx"] = est
        words.columns["est_end_idx"] = est_end
        n = self.n_samples(subject, trial)
        past = np.nonzero(np.isfinite(est) & ((est >= n) | (est < 0)))[0]
        if past.size:
            i = int(past[0])
            msg = (f"{past.size} word(s) map outside the recording "
                   f"{self.h5_path(subject, trial).name} ({n} samples), first "
                   f"'{words.text[i]}' at {words.start[i]:.3f} s -> sample {int(est[i])}")
            if on_past_end != "drop":
                raise DataError(words.path, msg)
            logging.warning("%s: %s; dropped", words.path, msg)
            words = words.take(np.setdiff1d(np.arange(len(words)), past))
        return words
