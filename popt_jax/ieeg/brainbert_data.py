"""BrainBERT pretraining data: the spectrogram store and its grain pipelines.

Upstream (czlwang/BrainBERT `data/write_pretrain_data_wavs.py` with `duration=5`) cuts every
selected electrode of every pretraining trial into NON-overlapping 5 s windows after the same
front end as the PopT data (notch filters, Laplacian re-reference; `preprocess.preprocess_trial`),
writes one `.npy` per window and computes the STFT spectrogram in the data loader, per window.
Here the spectrograms are computed once with the jitted front end (`signal.brainbert_spectrogram`,
per electrode, as upstream) and written to ONE HDF5 file:

    {store}.h5
      attrs   format, settings (JSON: preprocess config, STFT, selection, trials), n_rows
      spec    [N, T, F] float32 (or float16) z-scored spectrograms (T=186, F=40 for 5 s)
      index   [N, 4] int64: subject number, trial number, electrode row in `names`, start
      subjects, trials: [S] / [K] str, `names` [E] str "sub_1/LT1a" (the rows' vocabulary)

Feeding the step from this store is faster than computing the STFT on the fly (measured in
`scripts/benchmark_brainbert_pretrain.py --feed`; see notes/README_r11.md), and the store is
smaller than the raw windows it replaces (186 x 40 values per window instead of 10240).

Writing is resumable: the file is `{store}.h5.partial` until every trial is in, and after each
trial the finished trials and row count are recorded; a rerun truncates rows past that
record, skips finished trials, and renames the file when complete. A finished or partial
store written with other settings is refused with a one-line `DataError` (nothing is
overwritten). Windows shorter than 5 s at the end of a trial are dropped (as upstream) with
one log line per trial; electrodes missing from a recording and NaN stretches in the raw data
are `DataError`s from the reader.

Splits: upstream's random split (`datasets.random_split`, sklearn's seed-42 recipe) of the
store's rows into train / val / test, so the validation and test subsets are deterministic.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import jax.numpy as jnp
import numpy as np
from absl import logging

from popt_jax.errors import DataError
from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg import signal as signal_lib
from popt_jax.ieeg.braintreebank import BrainTreebank, subject_id, trial_id

STORE_FORMAT = "popt_jax.brainbert_spectrograms/1"
STFT_DEFAULTS = {"nperseg": 400, "noverlap": 350, "n_freqs": 40, "trim": 10}


# --------------------------------------------------------------------------- windows


def pretraining_windows(n_samples: int, window: int) -> tuple[np.ndarray, int]:
    """(starts of the non-overlapping windows, samples dropped at the end) of a trial."""
    n_win = int(n_samples) // int(window)
    return np.arange(n_win, dtype=np.int64) * int(window), int(n_samples) - n_win * int(window)


def spectrograms(windows: np.ndarray, stft: Mapping[str, int]) -> np.ndarray:
    """[N, samples] raw windows -> [N, T, F] float32 spectrograms, one upstream call each."""
    x = jnp.asarray(windows, jnp.float32)[:, None, :]  # [N, 1, S]: the all-flat guard per row
    return np.asarray(signal_lib.brainbert_spectrogram(x, **dict(stft)))[:, 0]


def store_settings(cfg: pp.PreprocessConfig, stft: Mapping[str, int],
                   selection: Mapping[str, Sequence[str]],
                   trials: Mapping[str, Sequence[str]], dtype: str) -> dict[str, Any]:
    """What the store's content depends on (compared on reuse and resume)."""
    import dataclasses

    return {"format": STORE_FORMAT, "preprocess": dataclasses.asdict(cfg), "stft": dict(stft),
            "selection": {k: list(v) for k, v in sorted(selection.items())},
            "trials": {k: list(v) for k, v in sorted(trials.items())}, "dtype": dtype}


def _jsonable(x):
    return json.loads(json.dumps(x))


def _check_settings(path: Path, found: dict[str, Any], want: dict[str, Any]) -> None:
    if found == want:
        return
    diff = [k for k in sorted(set(found) | set(want)) if found.get(k) != want.get(k)]
    first = diff[0]
    detail = ""
    if isinstance(found.get(first), dict) and isinstance(want.get(first), dict):
        sub = [k for k in sorted(set(found[first]) | set(want[first]))
               if found[first].get(k) != want[first].get(k)]
        if sub:
            detail = (f" ({first}.{sub[0]}: stored {found[first].get(sub[0])!r}, "
                      f"this run {want[first].get(sub[0])!r})")
    raise DataError(path, f"spectrogram store was written with other settings: "
                    f"{', '.join(diff)} differ{detail}; nothing was overwritten: use another "
                    "store path or delete this one")


def _read_settings(path: Path) -> dict[str, Any]:
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["settings"])
    except (OSError, KeyError, ValueError) as err:
        raise DataError(path, f"not a readable spectrogram store ({err})") from None


def write_spectrogram_store(root: str | os.PathLike, path: str | os.PathLike, *,
                            selection: Mapping[str, Sequence[str]],
                            trials: Mapping[str, Sequence[str]],
                            cfg: pp.PreprocessConfig | None = None,
                            stft: Mapping[str, int] | None = None, dtype: str = "float32",
                            batch_windows: int = 256, max_windows: int | None = None) -> Path:
    """Writes (or resumes, or reuses) the spectrogram store `path` of a Brain Treebank tree.

    Args:
      root: Brain Treebank root.
      path: the store file (`.h5`); written as `{path}.partial`, renamed when complete.
      selection: electrodes per subject (e.g. upstream's clean_laplacian.json content).
      trials: pretraining trials per subject (e.g. upstream's pretrain_split_trials.json).
      cfg: front end (notch, re-reference; window_s gives the window length).
      stft: `signal.brainbert_spectrogram` arguments (default upstream's).
      dtype: storage dtype, float32 or float16.
      batch_windows: electrode-windows per STFT call (memory only).
      max_windows: cap on windows per trial (tests and short runs); None = all.

    Returns:
      `path`.
    """
    path = Path(path)
    cfg = cfg or pp.PreprocessConfig()
    stft = dict(stft or STFT_DEFAULTS)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"store dtype must be float32 or float16, got {dtype!r}")
    selection = {subject_id(k): list(v) for k, v in selection.items()}
    trials = {subject_id(k): [trial_id(t) for t in v] for k, v in trials.items()}
    missing = [s for s in trials if s not in selection]
    if missing:
        raise DataError(None, f"electrode selection has no entry for {', '.join(missing)}")
    settings = _jsonable(store_settings(cfg, stft, {s: selection[s] for s in trials}, trials,
                                        dtype) | {"max_windows": max_windows})
    if path.exists():
        _check_settings(path, _read_settings(path), settings)
        logging.info("reusing the spectrogram store %s", path)
        return path
    partial = path.with_name(path.name + ".partial")
    bt = BrainTreebank(root, fs=cfg.fs)
    subjects = sorted(trials, key=lambda s: int(s.split("_")[1]))
    names_all = [f"{s}/{n}" for s in subjects for n in bt.order_electrodes(s, selection[s])]
    trial_keys = [f"{s}/{t}" for s in subjects for t in trials[s]]
    window = cfg.window_samples

    if partial.exists():
        _check_settings(partial, _read_settings(partial), settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(partial, "a") as f:
        if "spec" not in f:
            f.attrs["format"] = STORE_FORMAT
            f.attrs["settings"] = json.dumps(settings, sort_keys=True)
            f.attrs["done"] = "[]"
            f.attrs["n_rows"] = 0
            n_t = signal_lib.stft_num_frames(window, stft["nperseg"], stft["noverlap"]) \
                - 2 * stft["trim"]
            f.create_dataset("spec", (0, n_t, stft["n_freqs"]), dtype=dtype,
                             maxshape=(None, n_t, stft["n_freqs"]),
                             chunks=(16, n_t, stft["n_freqs"]))
            f.create_dataset("index", (0, 4), dtype=np.int64, maxshape=(None, 4),
                             chunks=(1024, 4))
            str_dt = h5py.string_dtype()
            f.create_dataset("subjects", data=np.asarray(subjects, dtype=object), dtype=str_dt)
            f.create_dataset("trials", data=np.asarray(trial_keys, dtype=object), dtype=str_dt)
            f.create_dataset("names", data=np.asarray(names_all, dtype=object), dtype=str_dt)
        done = json.loads(f.attrs["done"])
        n_rows = int(f.attrs["n_rows"])
        if done:
            logging.info("resuming %s: %d trial(s) done, %d rows", partial, len(done), n_rows)
        for ds in (f["spec"], f["index"]):  # drop rows of a trial that did not finish
            ds.resize(n_rows, axis=0)
        name_row = {n: i for i, n in enumerate(names_all)}
        for key in trial_keys:
            if key in done:
                continue
            s, t = key.split("/")
            t0 = time.perf_counter()
            trial = pp.preprocess_trial(bt, s, t, selection[s], cfg)
            starts, dropped = pretraining_windows(trial.data.shape[1], window)
            if dropped:
                logging.info("%s %s: last %.2f s shorter than a %.1f s window; dropped (as "
                             "upstream)", s, t, dropped / cfg.fs, cfg.window_s)
            if max_windows is not None:
                starts = starts[:max_windows]
            if not len(starts):
                raise DataError(bt.h5_path(s, t), f"recording shorter than one {cfg.window_s} s "
                                "pretraining window")
            rows = [name_row[f"{s}/{n}"] for n in trial.names]
            # window-major, then electrode: [n_win * E, window]
            wins = np.stack([trial.data[:, a:a + window] for a in starts]).reshape(-1, window)
            idx = np.stack([np.full(len(wins), subjects.index(s)),
                            np.full(len(wins), trial_keys.index(key)),
                            np.tile(rows, len(starts)), np.repeat(starts, len(rows))], 1)
            f["spec"].resize(n_rows + len(wins), axis=0)
            f["index"].resize(n_rows + len(wins), axis=0)
            for a in range(0, len(wins), batch_windows):
                spec = spectrograms(wins[a:a + batch_windows], stft)
                f["spec"][n_rows + a:n_rows + a + len(spec)] = spec.astype(dtype)
            f["index"][n_rows:n_rows + len(wins)] = idx
            n_rows += len(wins)
            done.append(key)
            f.attrs["done"] = json.dumps(done)
            f.attrs["n_rows"] = n_rows
            f.flush()
            logging.info("%s %s: %d windows x %d electrodes -> %d spectrograms in %.1f s", s, t,
                         len(starts), len(rows), len(wins), time.perf_counter() - t0)
    os.replace(partial, path)
    logging.info("spectrogram store complete: %s (%d rows)", path, n_rows)
    return path


# --------------------------------------------------------------------------- reading


class SpectrogramSource:
    """Random-access rows of a spectrogram store (a grain data source).

    Args:
      path: the store.
      rows: the store rows of this source (e.g. one split); None = all.
      in_memory: load those rows into RAM once (small stores); else read per item.
    """

    def __init__(self, path: str | os.PathLike, rows: Sequence[int] | None = None,
                 in_memory: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(self.path, "spectrogram store not found")
        with h5py.File(self.path, "r") as f:
            if f.attrs.get("format") != STORE_FORMAT:
                raise DataError(self.path, f"not a spectrogram store (format "
                                f"{f.attrs.get('format')!r}, expected {STORE_FORMAT})")
            n = int(f.attrs["n_rows"])
            self.shape = tuple(f["spec"].shape[1:])
            self.rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
            self._data = f["spec"][np.sort(self.rows)] if in_memory else None
        if self._data is not None:
            order = np.argsort(np.argsort(self.rows))
            self._data = self._data[order].astype(np.float32)
        self._file = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if self._data is not None:
            spec = self._data[i]
        else:
            if self._file is None:
                self._file = h5py.File(self.path, "r")
            spec = self._file["spec"][int(self.rows[i])].astype(np.float32)
        return {"spec": spec, "row": np.int64(self.rows[i])}

    def __getstate__(self):  # grain workers reopen the file
        return {**self.__dict__, "_file": None}


def split_rows(path: str | os.PathLike, val_fraction: float, test_fraction: float
               ) -> dict[str, np.ndarray]:
    """Upstream's deterministic random split of the store rows (seed 42)."""
    from popt_jax.ieeg.datasets import random_split

    with h5py.File(path, "r") as f:
        n = int(f.attrs["n_rows"])
    if n < 3:
        raise DataError(path, f"only {n} spectrograms; need at least 3 to split")
    split = random_split(n, val_fraction, test_fraction)
    out = {k: np.asarray(v, np.int64) for k, v in split.items()}
    for k, v in out.items():
        if not len(v):
            raise DataError(path, f"the {k} split is empty ({n} rows, val {val_fraction}, test "
                            f"{test_fraction}); use more data or larger fractions")
    return out


def train_dataset(source: SpectrogramSource, batch_size: int, seed: int,
                  read_threads: int = 2, prefetch: int = 4):
    """Shuffled, repeated batches {"spec": [B, T, F], "row": [B]} (checkpointable iterator)."""
    import grain

    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                prefetch_buffer_size=prefetch))


def eval_batches(source: SpectrogramSource, batch_size: int):
    """One ordered pass; the last batch is padded with `valid` False rows."""
    n = len(source)
    for a in range(0, n, batch_size):
        items = [source[i] for i in range(a, min(a + batch_size, n))]
        spec = np.stack([it["spec"] for it in items])
        valid = np.ones(batch_size, bool)
        if len(items) < batch_size:
            pad = batch_size - len(items)
            spec = np.concatenate([spec, np.zeros((pad, *spec.shape[1:]), spec.dtype)])
            valid[len(items):] = False
        yield {"spec": spec, "valid": valid}
