"""One recording, whatever its file format: the interface the iEEG front end consumes.

A `Recording` is one continuous run of one subject: channel names and types, sampling rate,
power-line frequency, bad channels, electrode coordinates (with their frame and units),
events, and sample-range reads of any channels (so long files stream). Readers in
`popt_jax.ieeg.readers` (BIDS-iEEG, any ``mne.io.Raw``, NWB) and `BrainTreebankRecording`
(the Brain Treebank layout) implement it; `popt_jax.ieeg.frontend` turns any of them into
model-rate, notched, re-referenced signals and feature-store files.

Conventions: data are float64 in microvolts (the Brain Treebank's unit; readers of files in
volts scale by 1e6); times are seconds from the first sample; channel types are lower-case
MNE names (``seeg``, ``ecog``, ``eeg``, ``ecg``, ``misc``, ``stim`` ...).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from popt_jax.errors import DataError
from popt_jax.ieeg.braintreebank import BrainTreebank, Words, subject_id, trial_id
from popt_jax.ieeg.coords import BRAINTREEBANK_FRAME

__all__ = ["Events", "Recording", "ArrayRecording", "BrainTreebankRecording",
           "NEURAL_TYPES"]

NEURAL_TYPES = ("seeg", "ecog", "dbs")  # channel types the models are fed


@dataclasses.dataclass
class Events:
    """Events of a recording (BIDS ``events.tsv``, MNE annotations, NWB trials/intervals).

    Attributes:
        onset: float64 [n] seconds from the first sample.
        duration: float64 [n] seconds (0 where unknown).
        columns: every other column, one array per name (float64 when numeric, else str).
        path: the file they came from (for messages).
    """

    onset: np.ndarray
    duration: np.ndarray
    columns: dict[str, np.ndarray]
    path: str = ""

    def __len__(self) -> int:
        return len(self.onset)

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise DataError(self.path or None, f"no event column '{name}' "
                            f"(have {', '.join(self.columns) or 'none'})")
        return self.columns[name]


class Recording(abc.ABC):
    """A continuous multichannel recording; subclasses fill the attributes and `_read`.

    Attributes:
        path: the data file (named by every error about it).
        name: a short identifier (e.g. ``sub-01_task-movie_run-1``).
        subject: subject label as the source names it.
        fs: sampling rate in Hz.
        n_samples: samples per channel.
        channel_names: every channel, file order.
        channel_types: lower-case type per channel.
        line_freq: power-line frequency in Hz (50/60), None when the source does not say.
        bad_channels: channels marked bad by the source.
        coords: name -> float64 (3,) coordinate, for channels that have one.
        coord_frame: declared frame of ``coords`` (None: undeclared).
        coord_units: "m", "cm", "mm" or "index" (already PopT index space).
        coord_path: the file that declared frame and units (for messages).
        status_path: the file marking channels bad (for messages), "" = ``path``.
        regions: name -> anatomical label, where known.
    """

    path: str
    name: str
    subject: str
    fs: float
    n_samples: int
    channel_names: list[str]
    channel_types: list[str]
    line_freq: float | None = None
    bad_channels: list[str]
    coords: dict[str, np.ndarray]
    coord_frame: str | None = None
    coord_units: str | None = None
    coord_path: str = ""
    status_path: str = ""  # the file that marks channels bad (BIDS channels.tsv)
    regions: dict[str, str]

    @abc.abstractmethod
    def _read(self, rows: list[int], start: int, stop: int) -> np.ndarray:
        """float64 [len(rows), stop - start] in microvolts of the channels at ``rows``."""

    def events(self) -> Events | None:
        """The recording's events, or None when it has none."""
        return None

    def words(self) -> Words | None:
        """Word table with ``est_idx`` in this recording's samples (Brain Treebank only)."""
        return None

    def neural_channels(self) -> list[str]:
        """Channels of a neural type that are not marked bad, file order."""
        bad = set(self.bad_channels)
        return [n for n, t in zip(self.channel_names, self.channel_types, strict=True)
                if t in NEURAL_TYPES and n not in bad]

    def read(self, names: Sequence[str], start: int | None = None,
             stop: int | None = None) -> np.ndarray:
        """float64 [len(names), stop - start] microvolts of ``names`` over ``[start, stop)``."""
        index = {n: i for i, n in enumerate(self.channel_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(self.path, f"no channel(s) {', '.join(missing)} in this recording")
        a = 0 if start is None else int(start)
        b = self.n_samples if stop is None else int(stop)
        if not 0 <= a <= b <= self.n_samples:
            raise DataError(self.path, f"samples [{a}, {b}) requested, the recording has "
                            f"{self.n_samples}")
        if not names:
            return np.zeros((0, b - a))
        out = np.asarray(self._read([index[n] for n in names], a, b), dtype=np.float64)
        if not np.all(np.isfinite(out)):
            row = int(np.nonzero(~np.all(np.isfinite(out), axis=1))[0][0])
            raise DataError(self.path, f"channel {names[row]} has NaN/inf in samples "
                            f"[{a}, {b})")
        return out

    def describe(self) -> str:
        return (f"{self.name}: {len(self.channel_names)} channels "
                f"({len(self.neural_channels())} usable), {self.fs:g} Hz, "
                f"{self.n_samples / self.fs:.1f} s, line {self.line_freq or '?'} Hz, "
                f"{len(self.coords)} with coordinates ({self.coord_frame or 'no frame'})")


class ArrayRecording(Recording):
    """A recording held in memory (tests, or data already loaded by other code)."""

    def __init__(self, data: np.ndarray, fs: float, channel_names: Sequence[str], *,
                 channel_types: Sequence[str] | None = None, line_freq: float | None = None,
                 bad_channels: Sequence[str] = (), coords: dict | None = None,
                 coord_frame: str | None = None, coord_units: str | None = None,
                 events: Events | None = None, name: str = "array", subject: str = "1",
                 path: str = "<array>", regions: dict | None = None):
        self._data = np.asarray(data)
        if self._data.ndim != 2 or self._data.shape[0] != len(channel_names):
            raise ValueError("data must be [channels, samples] matching channel_names")
        self.path, self.name, self.subject = path, name, subject
        self.fs, self.n_samples = float(fs), int(self._data.shape[1])
        self.channel_names = list(channel_names)
        self.channel_types = list(channel_types or ["seeg"] * len(channel_names))
        self.line_freq = line_freq
        self.bad_channels = list(bad_channels)
        self.coords = {k: np.asarray(v, np.float64) for k, v in (coords or {}).items()}
        self.coord_frame, self.coord_units, self.coord_path = coord_frame, coord_units, path
        self.regions = dict(regions or {})
        self._events = events

    def _read(self, rows, start, stop):
        return self._data[rows, start:stop]

    def events(self):
        return self._events


class BrainTreebankRecording(Recording):
    """One Brain Treebank trial through the `Recording` interface (an adapter).

    Localized channels are ``seeg``, the others (EKG, trigger DC channels) ``misc``;
    coordinates are the L/I/P columns, already PopT index space (frame `BRAINTREEBANK_FRAME`).
    The line frequency is 60 Hz (recorded in the US). Events are the aligned transcript words.
    The localization (``depth-wm.csv``) is read on first use of ``channel_types``, ``coords``
    or ``regions``, so reading signals (`preprocess.preprocess_trial`) does not need it.
    """

    def __init__(self, bt: BrainTreebank, subject: int | str, trial: int | str):
        self.bt, self._subject, self._trial = bt, subject_id(subject), trial_id(trial)
        self.path = str(bt.h5_path(subject, trial))
        self.name = f"{self._subject}_{self._trial}"
        self.subject = self._subject
        self.fs = bt.fs
        self.n_samples = bt.n_samples(subject, trial)
        self.channel_names = bt.electrode_names(subject)
        self.line_freq = 60.0
        self.bad_channels = []
        self.coord_frame, self.coord_units = BRAINTREEBANK_FRAME, "index"

    @functools.cached_property
    def channel_types(self) -> list[str]:
        localized = set(self.bt.localization(self._subject).names)
        return ["seeg" if n in localized else "misc" for n in self.channel_names]

    @functools.cached_property
    def coords(self) -> dict[str, np.ndarray]:
        loc = self.bt.localization(self._subject)
        return {n: loc.lip[i] for i, n in enumerate(loc.names)}

    @property
    def coord_path(self) -> str:
        return self.bt.localization(self._subject).path

    @functools.cached_property
    def regions(self) -> dict[str, str]:
        loc = self.bt.localization(self._subject)
        return dict(zip(loc.names, loc.regions, strict=True))

    def _read(self, rows, start, stop):
        names = [self.channel_names[r] for r in rows]
        return self.bt.read_electrodes(self._subject, self._trial, names, start, stop)

    def words(self) -> Words:
        return self.bt.words(self._subject, self._trial)

    def events(self) -> Events:
        """Aligned words as events (onset = est_idx / fs) with every transcript column."""
        w = self.words().aligned()
        onset = w.est_idx / self.fs
        return Events(onset=onset, duration=(w.est_end_idx - w.est_idx) / self.fs,
                      columns=dict(w.columns), path=w.path)
