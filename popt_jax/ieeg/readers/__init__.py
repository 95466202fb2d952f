"""Readers that turn lab recordings into `popt_jax.ieeg.recording.Recording` objects.

* `bids`: BIDS-iEEG folders through mne-bids (``pip install popt_jax[bids]``);
* `MneRecording` (here): any ``mne.io.Raw`` built in Python, with its montage;
* `nwb`: NWB files through pynwb (``pip install popt_jax[nwb]``).

Each optional package is imported only when its reader is used; a missing one ends the run
with one line naming the extra to install. `open_recordings` picks the reader from a config.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from popt_jax.errors import UserError
from popt_jax.ieeg.recording import Events, Recording

__all__ = ["require", "open_recordings", "MneRecording"]


def require(module: str, extra: str):
    """``import module``, or a one-line UserError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"reading this format needs the '{module}' package: "
                        f"pip install 'popt_jax[{extra}]'") from None


def open_recordings(data) -> list:
    """Recordings named by a config section ``data`` (``format``: bids | nwb).

    BIDS: ``root``, ``subject`` and optional ``session``/``task``/``run``/``space``; NWB:
    ``path`` plus optional ``series``/``coord_frame``/``coord_units``/``line_freq``.
    """
    fmt = str(data.get("format", "bids"))
    if fmt == "bids":
        from popt_jax.ieeg.readers import bids

        return bids.bids_recordings(
            data.root, data.subject, session=data.get("session") or None,
            task=data.get("task") or None, run=data.get("run") or None,
            space=data.get("space") or None)
    if fmt == "nwb":
        from popt_jax.ieeg.readers import nwb

        return [nwb.NwbRecording(
            Path(data.path), series=data.get("series") or None,
            coord_frame=data.get("coord_frame") or None,
            coord_units=data.get("coord_units") or None,
            line_freq=float(data.get("line_freq") or 0) or None)]
    raise UserError(f"config.data.format: {fmt!r} is not bids or nwb")


# --------------------------------------------------------------------------- MNE


class MneRecording(Recording):
    """Adapter over an ``mne.io.BaseRaw``.

    ``MneRecording(raw)`` takes the montage's frame (e.g. ``mni_tal``);
    ``MneRecording(raw, coord_frame="MNI152NLin2009cAsym")`` declares it. Data are read with
    ``raw.get_data(picks, start, stop)``, so a raw opened with ``preload=False`` streams from
    disk. MNE keeps volts and metres: data come out in microvolts, coordinates stay in metres
    (``coord_units="m"``) and are converted by the front end. MNE's ``head`` and ``unknown``
    frames are not brain coordinates and are refused unless ``coord_frame`` declares them.

    Args:
        raw: the recording.
        path: file named in messages (default: the raw's first file, else ``<mne.Raw>``).
        coord_frame: overrides the montage's frame (e.g. a BIDS template name).
        subject: subject label (default: ``raw.info['subject_info']['his_id']`` or "1").
        name: identifier (default: the file stem).
    """

    def __init__(self, raw, *, path: str | None = None, coord_frame: str | None = None,
                 subject: str | None = None, name: str | None = None):
        self.raw = raw
        files = [f for f in (getattr(raw, "filenames", None) or []) if f]
        self.path = str(path or (files[0] if files else "<mne.Raw>"))
        self.name = name or self.path.rsplit("/", 1)[-1].split(".")[0]
        info = raw.info
        self.subject = subject or str((info.get("subject_info") or {}).get("his_id") or "1")
        self.fs = float(info["sfreq"])
        self.n_samples = int(raw.n_times)
        self.channel_names = list(raw.ch_names)
        self.channel_types = [t.lower() for t in raw.get_channel_types()]
        lf = info.get("line_freq")
        self.line_freq = float(lf) if lf else None
        self.bad_channels = list(info["bads"])
        self.coords, self.coord_frame, self.coord_units = {}, None, None
        self.coord_path = self.path
        self.regions = {}
        montage = raw.get_montage()
        if montage is not None:
            pos = montage.get_positions()
            self.coords = {n: np.asarray(p, np.float64) for n, p in pos["ch_pos"].items()
                           if p is not None and np.all(np.isfinite(p))}
            self.coord_frame = pos.get("coord_frame")
            self.coord_units = "m"
        if coord_frame:
            self.coord_frame = coord_frame

    def _read(self, rows, start, stop):
        return self.raw.get_data(picks=rows, start=start, stop=stop) * 1e6

    def events(self) -> Events | None:
        ann = self.raw.annotations
        if ann is None or not len(ann):
            return None
        # With a measurement date, annotation onsets count from it, not from the first sample.
        shift = self.raw.first_time if ann.orig_time is not None else 0.0
        desc = np.asarray([str(d) for d in ann.description], dtype=str)
        return Events(onset=np.asarray(ann.onset, np.float64) - shift,
                      duration=np.asarray(ann.duration, np.float64),
                      columns={"trial_type": desc, "description": desc}, path=self.path)
