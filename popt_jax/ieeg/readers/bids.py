"""BIDS-iEEG through mne-bids: data, channel status/types, electrodes.tsv, events.tsv.

    recs = bids_recordings("/data/bids", "01", task="movie")   # every run of sub-01

Per run: ``mne_bids.read_raw_bids`` opens the data (EDF, BrainVision, EEGLAB, FIF ...) and
applies ``channels.tsv`` (``type``; ``status=bad`` -> ``info['bads']``) and the sidecar's
``PowerLineFrequency``. Coordinates come from the subject's ``*_electrodes.tsv`` with the
frame and units of the ``*_coordsystem.json`` beside it (``iEEGCoordinateSystem``,
``iEEGCoordinateUnits``); ``n/a`` rows are electrodes without coordinates. Events come from
the run's ``*_events.tsv`` with every column (``onset``/``duration`` in seconds).

Refused with one line naming the file: a subject without ``electrodes.tsv`` or its
``coordsystem.json``, several coordinate spaces and no ``space`` chosen, and runs of one
subject at different sampling rates (the feature store keeps one rate per subject: convert
them, or read the runs one at a time).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from popt_jax.errors import DataError
from popt_jax.ieeg.readers import MneRecording, require
from popt_jax.ieeg.recording import Events

__all__ = ["bids_recordings", "BidsRecording", "read_tsv"]

_EXTENSIONS = [".vhdr", ".edf", ".bdf", ".set", ".fif", ".nwb"]


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a BIDS TSV file, or DataError naming it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f, delimiter="\t") if r]
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(path, f"cannot read TSV ({err})") from None
    if not rows:
        raise DataError(path, "empty TSV file")
    for i, r in enumerate(rows[1:]):
        if len(r) != len(rows[0]):
            raise DataError(path, f"row {i + 1} has {len(r)} fields, header has {len(rows[0])}")
    return rows[0], rows[1:]


def _column(values: list[str]) -> np.ndarray:
    try:
        return np.asarray([np.nan if v == "n/a" else float(v) for v in values], np.float64)
    except ValueError:
        return np.asarray(values, dtype=str)


def _electrodes_file(ieeg_dir: Path, subject: str, session: str | None,
                     space: str | None) -> Path:
    stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    found = sorted(ieeg_dir.glob(f"{stem}*_electrodes.tsv"))
    if space:
        found = [p for p in found if f"_space-{space}_" in p.name]
    if not found:
        want = ieeg_dir / (f"{stem}_space-{space}_electrodes.tsv" if space
                           else f"{stem}_electrodes.tsv")
        raise DataError(want, "not found: BIDS-iEEG input needs the subject's electrodes.tsv "
                        "(electrode coordinates) and coordsystem.json")
    if len(found) > 1:
        spaces = [p.name.split("_space-")[-1].split("_")[0] for p in found]
        raise DataError(ieeg_dir, f"electrodes.tsv in several spaces ({', '.join(spaces)}); "
                        "choose one with config.data.space")
    return found[0]


def read_electrodes(path: Path) -> tuple[dict[str, np.ndarray], str, str, Path]:
    """(name -> xyz for rows with coordinates, frame, units, coordsystem path)."""
    header, rows = read_tsv(path)
    for c in ("name", "x", "y", "z"):
        if c not in header:
            raise DataError(path, f"missing column '{c}' (have {', '.join(header)})")
    i_n, ix, iy, iz = (header.index(c) for c in ("name", "x", "y", "z"))
    coords = {}
    for r in rows:
        if "n/a" in (r[ix], r[iy], r[iz]):
            continue
        try:
            coords[r[i_n]] = np.asarray([float(r[ix]), float(r[iy]), float(r[iz])])
        except ValueError:
            raise DataError(path, f"electrode {r[i_n]}: non-numeric x/y/z") from None
    cs = path.with_name(path.name.replace("_electrodes.tsv", "_coordsystem.json"))
    try:
        meta = json.loads(cs.read_text())
    except FileNotFoundError:
        raise DataError(cs, "not found: electrodes.tsv needs its coordsystem.json (frame and "
                        "units of the coordinates)") from None
    except (OSError, ValueError) as err:
        raise DataError(cs, f"cannot read coordsystem JSON ({err})") from None
    return coords, str(meta.get("iEEGCoordinateSystem") or ""), str(
        meta.get("iEEGCoordinateUnits") or ""), cs


class BidsRecording(MneRecording):
    """One BIDS-iEEG run (see module docstring); ``bids_path`` is an ``mne_bids.BIDSPath``."""

    def __init__(self, bids_path, electrodes: Path):
        mne_bids = require("mne_bids", "bids")
        raw = mne_bids.read_raw_bids(bids_path, verbose="error")
        super().__init__(raw, path=str(bids_path.fpath), subject=bids_path.subject,
                         name=bids_path.basename.rsplit("_", 1)[0])
        self.status_path = str(bids_path.copy().update(suffix="channels", extension=".tsv")
                               .fpath)
        self.coords, self.coord_frame, self.coord_units, cs = read_electrodes(electrodes)
        self.coord_path = str(cs)
        self._events_path = bids_path.copy().update(suffix="events", extension=".tsv").fpath

    def events(self) -> Events | None:
        path = Path(self._events_path)
        if not path.exists():
            return None
        header, rows = read_tsv(path)
        if "onset" not in header:
            raise DataError(path, "missing column 'onset'")
        cols = {h: _column([r[i] for r in rows]) for i, h in enumerate(header)}
        onset = cols.pop("onset")
        if onset.dtype.kind != "f" or not np.all(np.isfinite(onset)):
            raise DataError(path, "column 'onset' must be numeric seconds (no n/a)")
        dur = cols.pop("duration", np.zeros(len(onset)))
        dur = np.nan_to_num(dur.astype(np.float64)) if dur.dtype.kind == "f" else np.zeros(
            len(onset))
        return Events(onset=onset, duration=dur, columns=cols, path=str(path))


def bids_recordings(root, subject: str, *, session: str | None = None,
                    task: str | None = None, run: str | None = None,
                    space: str | None = None) -> list[BidsRecording]:
    """Every iEEG run of ``subject`` under ``root`` matching session/task/run, in name order."""
    mne_bids = require("mne_bids", "bids")
    root = Path(root)
    subject = str(subject).removeprefix("sub-")
    if not root.is_dir():
        raise DataError(root, "BIDS root folder not found")
    paths = mne_bids.find_matching_paths(
        root, subjects=subject, sessions=session, tasks=task, runs=run, datatypes="ieeg",
        suffixes="ieeg", extensions=_EXTENSIONS)
    paths = sorted(paths, key=lambda p: str(p.fpath))
    if not paths:
        raise DataError(root, f"no iEEG recording of sub-{subject} (session {session}, task "
                        f"{task}, run {run})")
    out: list[BidsRecording] = []
    for bp in paths:
        ieeg_dir = Path(bp.fpath).parent
        electrodes = _electrodes_file(ieeg_dir, subject, bp.session, space)
        rec = BidsRecording(bp, electrodes)
        if out and rec.fs != out[0].fs:
            raise DataError(rec.path, f"sampling rate {rec.fs:g} Hz differs from "
                            f"{out[0].fs:g} Hz of {Path(out[0].path).name}; runs of one "
                            "subject must share a rate (select one run with config.data.run)")
        out.append(rec)
    return out
