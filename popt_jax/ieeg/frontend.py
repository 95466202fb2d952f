"""Front end for any `Recording`: resampling, sidecar notch, re-reference, positions, labels.

The Brain Treebank path (`preprocess.preprocess_trial`) assumes 2048 Hz US recordings. Other
labs record at 500-30000 Hz on 50 or 60 Hz mains, name contacts ``LA1, LA2 ...`` and keep
coordinates in a declared frame. `preprocess_recording` brings any `Recording` to what the
models were trained on, in this order:

1. **channels**: neural types (sEEG/ECoG/DBS) not marked bad; without coordinates an
   electrode cannot be placed for PopT, so it is reported (one warning listing them) and
   dropped, or refused with ``on_missing_coords="error"``;
2. **resampling** to the model rate (``preprocess.fs``, 2048 Hz for the published weights)
   with `scipy.signal.resample_poly` (polyphase FIR, Kaiser window: anti-aliased when going
   down). Upstream's data were recorded at 2048 Hz, so a 2048 Hz file passes untouched and
   reproduces the Brain Treebank path bit for bit. A lower rate (e.g. 1000 Hz) is upsampled:
   the content BrainBERT reads (its STFT keeps the lowest 40 rows, 0-200 Hz at 2048 Hz) is
   kept up to the FIR's passband ripple, and nothing above the file's Nyquist frequency is
   invented; files below ~410 Hz cannot fill those rows and are refused (unless the model
   rate is set to the file's own). A higher rate is
   low-passed at 1024 Hz before decimation;
3. **notch** at the recording's power-line frequency (BIDS ``PowerLineFrequency``, MNE
   ``info['line_freq']``; 50 or 60 Hz) and its harmonics below both Nyquist frequencies,
   ``notch_harmonics`` of them (6, as upstream's 60..360 Hz), with upstream's causal IIR
   notches (Q = 30);
4. **re-reference**: ``laplacian`` (contact minus the mean of its shaft neighbours n-1/n+1,
   found from the names as in the Brain Treebank; a contact without both is skipped and
   logged), ``bipolar`` (``LA1-LA2``: each contact minus the next one on its shaft, placed at
   the midpoint), ``car`` or ``none``; all `PreprocessConfig` options apply as in the Brain
   Treebank path.

`iter_blocks` runs the same steps on overlapping blocks (warm-up margins discarded), so
`embed`/`predict` stream recordings of any length with bounded memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from fractions import Fraction

import numpy as np
from absl import logging
from scipy import signal

from popt_jax.errors import DataError, UserError
from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg.braintreebank import Words, laplacian_neighbours, split_electrode_name
from popt_jax.ieeg.coords import BRAINTREEBANK_FRAME, CoordMapping, canonical_frame, to_millimetres
from popt_jax.ieeg.recording import Events, Recording

__all__ = ["FrontEndConfig", "Plan", "notch_frequencies", "resample_ratio", "plan_channels",
           "preprocess_recording", "iter_blocks", "words_from_events", "event_task",
           "electrode_index", "model_samples", "MIN_SOURCE_FS"]

MIN_SOURCE_FS = 410.0  # BrainBERT's 40 STFT rows reach ~200 Hz at 2048 Hz


@dataclasses.dataclass(frozen=True)
class FrontEndConfig:
    """Settings of the front end for non-Brain-Treebank recordings.

    Attributes:
        preprocess: model-rate settings (``fs`` = model rate, windows, filters, Laplacian
            options); its ``notch_freqs`` is replaced by the sidecar line frequency unless
            ``line_freq < 0``.
        rereference: "laplacian", "bipolar", "car" or "none".
        line_freq: power-line frequency in Hz; 0 = the recording's own (DataError when it
            declares none); < 0 = keep ``preprocess.notch_freqs`` as given.
        notch_harmonics: notches at k * line_freq for k = 1..n (below Nyquist); -1 = all.
        on_missing_coords: "drop" (report and leave out) or "error".
        margin_s: warm-up discarded at each side of a streamed block.
    """

    preprocess: pp.PreprocessConfig = pp.PreprocessConfig(on_missing_neighbours="skip")
    rereference: str = "laplacian"
    line_freq: float = 0.0
    notch_harmonics: int = 6
    on_missing_coords: str = "drop"
    margin_s: float = 4.0

    def __post_init__(self):
        if self.rereference not in ("laplacian", "bipolar", "car", "none"):
            raise UserError(f"rereference must be laplacian, bipolar, car or none, not "
                            f"{self.rereference!r}")
        if self.on_missing_coords not in ("drop", "error"):
            raise UserError("on_missing_coords must be drop or error")


def notch_frequencies(line_freq: float, fs_model: float, fs_source: float,
                      harmonics: int = 6) -> tuple[float, ...]:
    """k * line_freq for k = 1..harmonics (-1: unbounded) strictly below both Nyquists."""
    nyq = min(fs_model, fs_source) / 2.0
    out, k = [], 1
    while k * line_freq < nyq and (harmonics < 0 or k <= harmonics):
        out.append(float(k * line_freq))
        k += 1
    return tuple(out)


def resample_ratio(fs_source: float, fs_model: float) -> tuple[int, int]:
    """(up, down) with up / down = fs_model / fs_source (exact for rational rates)."""
    r = Fraction(fs_model / fs_source).limit_denominator(1000)
    if abs(float(r) - fs_model / fs_source) > 1e-9 * fs_model / fs_source:
        raise UserError(f"cannot resample {fs_source} Hz to {fs_model} Hz with a small ratio")
    return r.numerator, r.denominator


@dataclasses.dataclass
class Plan:
    """Which channels become which tokens.

    Attributes:
        names: token names (contacts, or ``A-B`` bipolar pairs), the row order of the data.
        pairs: Laplacian (lower, upper) neighbours or bipolar (contact, next) per token;
            empty for car/none.
        read: every channel that must be read, file order.
        mm: RAS millimetres [n, 3] per token (None when the frame is index space already).
        index: int64 [n, 3] PopT table rows per token.
        mapping: the coordinate mapping JSON stored with features.
        positions: float64 [n, 3] real-valued index-space positions (before rounding), what
            the continuous position code reads.
    """

    names: list[str]
    pairs: list[tuple[str, str]]
    read: list[str]
    mm: np.ndarray | None
    index: np.ndarray
    mapping: str
    positions: np.ndarray | None = None


def _usable(rec: Recording, cfg: FrontEndConfig) -> list[str]:
    usable = rec.neural_channels()
    if not usable:
        raise DataError(rec.status_path or rec.path, "no usable neural channel (every sEEG/ECoG channel is marked "
                        "bad, or none has a neural type)")
    missing = [n for n in usable if n not in rec.coords]
    if missing:
        if cfg.on_missing_coords == "error":
            raise DataError(rec.coord_path or rec.path, f"no coordinates for electrode(s) "
                            f"{', '.join(missing)}")
        logging.warning("%s: %d electrode(s) without coordinates left out: %s",
                        rec.coord_path or rec.path, len(missing), ", ".join(missing))
    return usable


def plan_channels(rec: Recording, cfg: FrontEndConfig, mapping_cfg=None,
                  names: Sequence[str] | None = None) -> Plan:
    """Tokens, re-reference partners and positions of a recording (see module docstring).

    Args:
        rec: the recording.
        cfg: front-end settings.
        mapping_cfg: offset/scale/axes/max_len of the `CoordMapping` (dict or None).
        names: optional electrode selection (else every usable electrode with coordinates).
    """
    usable = _usable(rec, cfg)
    placed = [n for n in usable if n in rec.coords]
    if names is not None:
        unknown = [n for n in names if n not in set(placed)]
        if unknown:
            raise DataError(rec.path, f"selected electrode(s) {', '.join(unknown)} are not "
                            "usable (unknown, bad, non-neural or without coordinates)")
        wanted = set(names)
        placed = [n for n in placed if n in wanted]
    good = [n for n in rec.channel_names if n not in set(rec.bad_channels)]
    pairs: list[tuple[str, str]] = []
    tokens = placed
    if cfg.rereference == "laplacian":
        tokens = []
        for n in placed:
            pair = laplacian_neighbours(n, good)
            if pair is None:
                if cfg.preprocess.on_missing_neighbours != "skip":
                    raise DataError(rec.path, f"electrode {n} lacks a shaft neighbour, so it "
                                    "cannot be Laplacian re-referenced")
                logging.info("%s: electrode %s lacks a shaft neighbour; skipped", rec.path, n)
                continue
            tokens.append(n)
            pairs.append(pair)
    elif cfg.rereference == "bipolar":
        by_key = {split_electrode_name(n): n for n in placed if split_electrode_name(n)}
        tokens = []
        for n in placed:
            key = split_electrode_name(n)
            nxt = by_key.get((key[0], key[1] + 1)) if key else None
            if nxt is not None:
                tokens.append(f"{n}-{nxt}")
                pairs.append((n, nxt))
    if not tokens:
        raise DataError(rec.path, f"no electrode left after {cfg.rereference} re-referencing "
                        f"({len(placed)} usable with coordinates)")
    read = set(tokens if cfg.rereference != "bipolar" else []) | {p for q in pairs for p in q}
    read_list = [n for n in rec.channel_names if n in read]
    points = ([rec.coords[n] for n in tokens] if cfg.rereference != "bipolar"
              else [(rec.coords[a] + rec.coords[b]) / 2 for a, b in pairs])
    mm, index, mapping = electrode_index(rec, tokens, np.asarray(points), mapping_cfg)
    positions = (np.asarray(points, np.float64) if mm is None
                 else np.asarray(json.loads(mapping)["positions"], np.float64))
    return Plan(tokens, pairs, read_list, mm, index, mapping, positions)


def electrode_index(rec: Recording, names: Sequence[str], points: np.ndarray, mapping_cfg=None
                    ) -> tuple[np.ndarray | None, np.ndarray, str]:
    """(millimetres or None, int64 table rows, mapping JSON) of ``points`` in ``rec``'s frame."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if rec.coord_frame == BRAINTREEBANK_FRAME and rec.coord_units == "index":
        return None, np.trunc(points).astype(np.int64), json.dumps(
            {"frame": BRAINTREEBANK_FRAME, "formula": "index = trunc(L, I, P)"})
    path = rec.coord_path or rec.path
    frame = canonical_frame(rec.coord_frame, path)
    mm = to_millimetres(points, rec.coord_units, path)
    mapping = CoordMapping.from_config(frame, mapping_cfg)
    index = mapping.index(mm, list(names), path)
    return mm, index, mapping.to_json({"units_in": rec.coord_units,
                                       "positions": mapping.positions(mm).tolist(),
                                       "mm": mm.tolist()})


def _notched(rec: Recording, cfg: FrontEndConfig) -> pp.PreprocessConfig:
    p = cfg.preprocess
    if cfg.line_freq < 0:
        return p
    line = cfg.line_freq or rec.line_freq
    if not line:
        raise DataError(rec.path, "the recording declares no power-line frequency; set "
                        "config.frontend.line_freq to 50 or 60")
    freqs = notch_frequencies(float(line), p.fs, rec.fs, cfg.notch_harmonics)
    return dataclasses.replace(p, notch_freqs=freqs)


def _read_model_rate(rec: Recording, names: list[str], start: int, stop: int,
                     fs_model: float) -> np.ndarray:
    """[len(names), stop - start] at the model rate.

    Only the source samples the resampler needs are read: the block plus the half length
    of `resample_poly`'s FIR (10 * max(up, down) taps at the upsampled rate) on each side,
    so a block equals the same samples of the whole recording resampled at once.
    """
    if rec.fs == fs_model:
        return rec.read(names, start, stop)
    up, down = resample_ratio(rec.fs, fs_model)
    pad = 10 * max(up, down) // up + down + 2  # source samples of filter context per side
    # Output sample j of a block read from source sample a lies at model sample a * up / down
    # + j: start blocks on multiples of `down` so that offset is an integer.
    a = max(0, (start * down // up - pad) // down * down)
    b = min(rec.n_samples, -(-stop * down // up) + pad)
    x = rec.read(names, a, b)
    y = signal.resample_poly(x, up, down, axis=-1)
    off = a * up // down
    if off > start or off + y.shape[1] < stop:
        raise DataError(rec.path, f"model samples [{start}, {stop}) lie outside the recording")
    return y[:, start - off: stop - off]


def model_samples(rec: Recording, fs_model: float) -> int:
    """Length of the recording at the model rate (``resample_poly``'s output length)."""
    if rec.fs == fs_model:
        return rec.n_samples
    up, down = resample_ratio(rec.fs, fs_model)
    return int(math.ceil(rec.n_samples * up / down))


def preprocess_recording(rec: Recording, plan: Plan, cfg: FrontEndConfig, *,
                         start: int | None = None, stop: int | None = None,
                         context: int = 0) -> pp.FilteredTrial:
    """Model-rate, notched, re-referenced signals of ``plan.names`` over ``[start, stop)``.

    With ``start``/``stop`` (model-rate samples) the causal filters start at rest at
    ``start - context`` (``context`` samples are filtered and then dropped). Channels are read
    and filtered ``preprocess.chunk`` at a time (no whole-recording raw copy; upstream's
    Laplacian reads each chunk's raw neighbours beside it and holds only the output). This
    is the one signal path: `preprocess.preprocess_trial` (the Brain Treebank extraction)
    runs it on a `BrainTreebankRecording` with the config's own notch frequencies.
    """
    if rec.fs < MIN_SOURCE_FS and rec.fs != cfg.preprocess.fs:  # upsampled from too low
        raise DataError(rec.path, f"sampling rate {rec.fs:g} Hz is below {MIN_SOURCE_FS:g} Hz:"
                        " BrainBERT's 0-200 Hz spectrogram cannot be filled")
    p = _notched(rec, cfg)
    total = model_samples(rec, p.fs)
    a = 0 if start is None else int(start)
    b = total if stop is None else int(stop)
    a0 = max(0, a - int(context))
    step = max(1, p.chunk)

    def read(names: Sequence[str]) -> np.ndarray:
        return _read_model_rate(rec, list(names), a0, b, p.fs)

    if cfg.rereference == "laplacian" and p.neighbour_filtering != "time":
        # Upstream's Laplacian: the filtered contact minus a fixed mix of its raw neighbours.
        data = np.empty((len(plan.names), b - a0), dtype=np.float64)
        for i in range(0, len(plan.names), step):
            rows = slice(i, i + step)
            part = plan.pairs[rows]
            data[rows] = pp.filter_channels(read(plan.names[rows]), p)
            data[rows] -= pp.upstream_neighbour_reference(read([q[0] for q in part]),
                                                          read([q[1] for q in part]), p)
    else:
        # Every channel read is filtered once; the reference combines filtered channels.
        filt = np.empty((len(plan.read), b - a0), dtype=np.float64)
        for i in range(0, len(plan.read), step):
            filt[i:i + step] = pp.filter_channels(read(plan.read[i:i + step]), p)
        row = {n: i for i, n in enumerate(plan.read)}
        if cfg.rereference == "bipolar":
            data = np.stack([filt[row[x]] - filt[row[y]] for x, y in plan.pairs]) \
                if plan.pairs else filt[:0]
        else:
            rows = [row[n] for n in plan.names]
            if cfg.rereference == "laplacian":
                data = np.empty((len(rows), filt.shape[1]), dtype=np.float64)
                for i in range(0, len(rows), step):
                    part = plan.pairs[i:i + step]
                    data[i:i + step] = pp.laplacian_rereference(
                        filt[rows[i:i + step]], filt[[row[q[0]] for q in part]],
                        filt[[row[q[1]] for q in part]])
            elif cfg.rereference == "car":
                data = pp.car_rereference(filt[rows])
            else:
                data = filt if rows == list(range(len(filt))) else filt[rows]
        del filt
    data = data[:, a - a0:]
    if p.zscore or p.despike:
        flat = np.nonzero(np.std(data, axis=-1) == 0)[0]
        if flat.size:
            raise DataError(rec.path, f"electrode {plan.names[flat[0]]} is flat after "
                            "re-referencing; cannot z-score")
        if p.zscore:
            data = pp.zscore_channels(data)
        if p.despike:
            data = pp.despike(data)
    return pp.FilteredTrial(subject=str(rec.subject), trial=rec.name, names=list(plan.names),
                            data=data, fs=p.fs, start=a)


def iter_blocks(rec: Recording, plan: Plan, cfg: FrontEndConfig, window_starts: np.ndarray,
                window: int, block_windows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (starts, windows float32 [k, E, window]) for ``block_windows`` windows at a time.

    Each block is preprocessed separately with ``margin_s`` of warm-up before it (and the
    resampler's context after it): memory is bounded by the block, whatever the length of
    the recording. z-scoring and de-spiking need the whole recording and are refused here.
    """
    p = cfg.preprocess
    if p.zscore or p.despike:
        raise UserError("zscore/despike need the whole recording; turn them off to stream")
    margin = int(round(cfg.margin_s * p.fs))
    for i in range(0, len(window_starts), block_windows):
        starts = np.asarray(window_starts[i:i + block_windows], dtype=np.int64)
        a, b = int(starts[0]), int(starts[-1]) + window
        data = preprocess_recording(rec, plan, cfg, start=a, stop=b, context=margin).data
        out = np.empty((len(starts), data.shape[0], window), np.float32)
        for k, s in enumerate(starts):
            out[k] = data[:, s - a: s - a + window]
        yield starts, out


# --------------------------------------------------------------------------- labels


def words_from_events(events: Events, fs: float) -> Words:
    """Events as a `Words` table at rate ``fs``, so the Brain Treebank tasks apply.

    ``est_idx = rint(onset * fs)``, ``est_end_idx = rint((onset + duration) * fs)``; ``text``
    from a ``text`` column (else ``trial_type``, else "event"); ``is_onset`` from a column of
    that name when present. Every column is kept (``rms``/``pitch`` make volume/pitch tasks).
    """
    n = len(events)
    cols = dict(events.columns)
    text = cols.get("text", cols.get("trial_type", np.full(n, "event")))
    cols["text"] = np.asarray([str(t) for t in text], dtype=str)
    cols["start"] = events.onset.astype(np.float64)
    cols["end"] = (events.onset + events.duration).astype(np.float64)
    if "is_onset" in cols:
        v = cols["is_onset"]
        cols["is_onset"] = (v != 0) if v.dtype.kind in "fb" else np.isin(
            np.char.lower(v.astype(str)), ("true", "1", "1.0"))
    else:
        cols["is_onset"] = np.zeros(n, bool)
    cols["est_idx"] = np.rint(events.onset * fs)
    cols["est_end_idx"] = np.rint((events.onset + events.duration) * fs)
    return Words(cols, events.path)


def event_task(events: Events, column: str, positive: Sequence[str],
               negative: Sequence[str] | None, n_samples: int, cfg: pp.PreprocessConfig,
               name: str = "events") -> pp.TaskExamples:
    """Binary task from one event column: windows centred on event onsets.

    Args:
        events: the recording's events.
        column: the column naming the condition (e.g. ``trial_type``).
        positive: values labelled 1.
        negative: values labelled 0 (None: every other value).
        n_samples: recording length at the model rate.
        cfg: model-rate settings (window length, ``delta_s``).
        name: the task name stored.
    """
    values = np.asarray([str(v) for v in events.column(column)])
    pos = np.isin(values, [str(v) for v in positive])
    neg = ~pos if negative is None else np.isin(values, [str(v) for v in negative])
    keep = np.nonzero(pos | neg)[0]
    w = cfg.window_samples
    starts = np.rint(events.onset[keep] * cfg.fs).astype(np.int64) + int(cfg.delta_s * cfg.fs)
    fits = (starts >= 0) & (starts + w <= n_samples)
    if not fits.all():
        logging.info("%s: %d event window(s) do not fit in the recording; dropped",
                     events.path, int((~fits).sum()))
    keep, starts = keep[fits], starts[fits]
    if not len(keep) or pos[keep].all() or (~pos[keep]).all():
        raise DataError(events.path or None, f"event column '{column}' gives no examples of "
                        f"both classes (positive values {list(positive)})")
    return pp.TaskExamples(task=name, starts=starts, labels=pos[keep],
                           times=events.onset[keep].astype(np.float64), word_rows=keep,
                           window_samples=w)
