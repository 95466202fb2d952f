"""Readers that turn lab recordings into `popt_jax.ieeg.recording.Recording` objects.

* `bids`: BIDS-iEEG folders through mne-bids (``pip install popt_jax[bids]``);
* `mne_raw`: any ``mne.io.Raw`` built in Python, with its montage;
* `nwb`: NWB files through pynwb (``pip install popt_jax[nwb]``).

Each optional package is imported only when its reader is used; a missing one ends the run
with one line naming the extra to install. `open_recordings` picks the reader from a config.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from popt_jax.errors import UserError

__all__ = ["require", "open_recordings"]


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
