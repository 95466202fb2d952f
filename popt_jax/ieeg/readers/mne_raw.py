"""Any ``mne.io.Raw`` as a `Recording` (channels, bads, line frequency, montage, annotations).

    rec = MneRecording(raw)                       # montage frame from MNE (e.g. mni_tal)
    rec = MneRecording(raw, coord_frame="MNI152NLin2009cAsym")  # declare it yourself

Data are read with ``raw.get_data(picks, start, stop)``, so a raw opened with
``preload=False`` streams from disk. MNE keeps volts and metres: data come out in microvolts,
coordinates stay in metres (``coord_units="m"``) and are converted by the front end. MNE's
``head`` and ``unknown`` frames are not brain coordinates and are refused by the front end
unless ``coord_frame`` declares what they are.
"""

from __future__ import annotations

import numpy as np

from popt_jax.ieeg.recording import Events, Recording

__all__ = ["MneRecording"]


class MneRecording(Recording):
    """Adapter over an ``mne.io.BaseRaw``.

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
