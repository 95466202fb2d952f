"""NWB through pynwb: one ElectricalSeries and the electrodes table as a `Recording`.

    rec = NwbRecording("rec.nwb", coord_frame="MNI152NLin2009cAsym", coord_units="mm")

The series (the only one in ``acquisition``, or ``series=`` by name) gives the samples
(``data[start:stop, rows]`` read lazily from the HDF5 file, times ``conversion`` and
``offset`` to volts, then to microvolts) and its rate (``rate``, or regular ``timestamps``).
Its ``electrodes`` region names the table rows: names from a ``label``/``channel_name``/
``name`` column (else ``e<id>``), coordinates from ``x, y, z``, bad channels from a boolean
``bad`` column, regions from ``location``. NWB does not declare the frame or units of
``x, y, z``, so pass them (``coord_frame``/``coord_units``); the front end refuses
undeclared ones. Events: the file's ``trials`` table (``start_time``/``stop_time`` relative to
the series' first sample, every other column kept). No power-line frequency is stored in
NWB: pass ``line_freq``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from popt_jax.errors import DataError
from popt_jax.ieeg.readers import require
from popt_jax.ieeg.recording import Events, Recording

__all__ = ["NwbRecording"]

_NAME_COLUMNS = ("label", "channel_name", "name")


class NwbRecording(Recording):
    """Adapter over one ElectricalSeries of an NWB file (see module docstring)."""

    def __init__(self, path, *, series: str | None = None, coord_frame: str | None = None,
                 coord_units: str | None = None, line_freq: float | None = None,
                 channel_type: str = "seeg"):
        pynwb = require("pynwb", "nwb")
        self.path = str(path)
        if not Path(path).is_file():
            raise DataError(path, "NWB file not found")
        try:
            self._io = pynwb.NWBHDF5IO(str(path), "r")
            nwb = self._io.read()
        except Exception as err:  # pynwb/hdmf raise many types for a broken file
            raise DataError(path, f"cannot read NWB file ({type(err).__name__}: {err})") \
                from None
        self._nwb = nwb
        table = nwb.electrodes
        if table is None or len(table) == 0:
            raise DataError(path, "no electrodes table: NWB input needs one (channel names "
                            "and x, y, z coordinates)")
        found = {k: v for k, v in nwb.acquisition.items()
                 if isinstance(v, pynwb.ecephys.ElectricalSeries)}
        if series is not None:
            if series not in found:
                raise DataError(path, f"no ElectricalSeries '{series}' in acquisition "
                                f"(have {', '.join(found) or 'none'})")
            es = found[series]
        elif len(found) == 1:
            es = next(iter(found.values()))
        else:
            raise DataError(path, f"{len(found)} ElectricalSeries in acquisition "
                            f"({', '.join(found) or 'none'}); name one with series=")
        if es.electrodes is None:
            raise DataError(path, f"series {es.name} references no electrodes")
        self._es = es
        rows = list(es.electrodes.data[:])
        cols = set(table.colnames)
        name_col = next((c for c in _NAME_COLUMNS if c in cols), None)
        ids = list(table.id[:])
        self.channel_names = [str(table[name_col][r]) if name_col else f"e{ids[r]}"
                              for r in rows]
        n_ch = es.data.shape[1] if len(es.data.shape) > 1 else 1
        if n_ch != len(rows):
            raise DataError(path, f"series {es.name} has {n_ch} channels but references "
                            f"{len(rows)} electrodes")
        self.channel_types = [channel_type] * len(rows)
        if es.rate is not None:
            self.fs = float(es.rate)
            self._t0 = float(es.starting_time or 0.0)
        else:
            t = np.asarray(es.timestamps[:])
            dt = np.diff(t)
            if len(t) < 2 or np.ptp(dt) > 1e-6 * np.mean(dt):
                raise DataError(path, f"series {es.name} has irregular timestamps; resample "
                                "to a fixed rate first")
            self.fs, self._t0 = float(1.0 / np.mean(dt)), float(t[0])
        self.n_samples = int(es.data.shape[0])
        self._scale = float(es.conversion) * 1e6
        self._offset = float(getattr(es, "offset", 0.0) or 0.0) * 1e6
        self.name = Path(path).stem
        self.subject = str(getattr(nwb.subject, "subject_id", None) or "1")
        self.line_freq = line_freq
        self.bad_channels = ([self.channel_names[k] for k, r in enumerate(rows)
                              if bool(table["bad"][r])] if "bad" in cols else [])
        self.coords = {}
        if {"x", "y", "z"} <= cols:
            for k, r in enumerate(rows):
                p = np.asarray([table["x"][r], table["y"][r], table["z"][r]], np.float64)
                if np.all(np.isfinite(p)):
                    self.coords[self.channel_names[k]] = p
        self.coord_frame, self.coord_units, self.coord_path = coord_frame, coord_units, self.path
        self.regions = ({self.channel_names[k]: str(table["location"][r])
                         for k, r in enumerate(rows)} if "location" in cols else {})

    def _read(self, rows, start, stop):
        block = np.asarray(self._es.data[start:stop], dtype=np.float64)
        block = block.reshape(stop - start, -1)
        return block[:, rows].T * self._scale + self._offset

    def events(self) -> Events | None:
        trials = self._nwb.trials
        if trials is None or len(trials) == 0:
            return None
        start = np.asarray(trials["start_time"][:], np.float64)
        stop = np.asarray(trials["stop_time"][:], np.float64)
        cols = {}
        for c in trials.colnames:
            if c in ("start_time", "stop_time"):
                continue
            v = np.asarray(trials[c][:])
            cols[c] = v.astype(np.float64) if v.dtype.kind in "iufb" else v.astype(str)
        return Events(onset=start - self._t0, duration=stop - start, columns=cols,
                      path=self.path)

    def close(self) -> None:
        self._io.close()
