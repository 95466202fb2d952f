"""PopT pretraining and fine-tuning datasets over the feature store, on grain.

The feature store (`popt_jax.features`) holds one HDF5 file per subject-trial. Here:

* `FeatureStore`: the metadata of every file of a folder (names, coordinates, window starts,
  task labels), read once; embeddings are read lazily, one window at a time, through handles
  opened per process, so sources pickle into grain worker processes;
* `PretrainSource`: one example per pretraining window A (upstream's manifest has one row per
  window but the last), with the pair (B, R, pair label) fixed per example and the channel
  subset and replacement drawn per draw (`random_example`: grain's per-record RNG) or seeded by
  the example index (`deterministic_example`, validation/test);
* `FinetuneSource`: word-aligned / non-speech examples of one task and subject, with an
  optional electrode sub-selection;
* splits: ``random`` (upstream parity: sklearn ``train_test_split(random_state=42)`` twice,
  re-implemented with numpy) and ``time_blocked`` (contiguous blocks with a purge gap of one
  window, so overlapping windows cannot leak), made deterministically and, when a
  ``split_file`` is given (the jobs use ``{workdir}/splits.json`` or ``config.data.split_file``),
  saved there and reused: the feature store itself is only read, so any number of experiments
  with any split settings share one store;
* ``feature_norm``: "none" (upstream: embeddings as stored) or "file" (each embedding
  dimension standardised per feature file, `feature_norm_stats`), for PopT inputs whose
  common offset dwarfs their variation (a random BrainBERT's);
* `collate` pads examples to a few fixed token lengths (buckets) so jit sees few shapes
  (`Collator` writes worker batches into shared memory), and `make_dataset` builds the grain
  pipeline ``source -> seed -> shuffle -> repeat -> random_map -> shard -> batch ->
  (mp_prefetch)``.

Batches are dicts of numpy arrays: ``x`` [B, n, D] float32, ``pad_mask`` [B, n] (True =
padding), ``coords`` [B, n, 3] int32 (truncated toward zero; with
``position_code="continuous"``: float32 real-valued positions, the store's ``positions``),
``seq_id`` [B, n] int32, ``valid`` [B] (False for rows padding a short last eval batch),
``index`` [B] example ids, and
``cls_label`` [B] + ``token_label`` [B, n] (pretraining: 1 replaced, 2 kept, 0 unused) or
``label`` [B] (fine-tuning). The CLS row is not in ``x``: `models.PopT` prepends it.

Deliberate differences from upstream: padded tokens are always masked (upstream's fine-tuning
``length`` counts one token too many, which only matters when a batch mixes lengths, never in
upstream's single-subject batches); with the ``time_blocked`` split the random segments B and
R of a pretraining example come from the same split as A (upstream draws them anywhere).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import h5py
import numpy as np

from popt_jax.errors import DataError
from popt_jax.ieeg.braintreebank import clean_electrode_name, subject_id

__all__ = [
    "DEFAULT_BUCKETS", "PRETRAIN_KS", "FeatureStore", "PretrainConfig", "PretrainSource",
    "FinetuneSource", "sklearn_train_test_split", "random_split", "time_blocked_split",
    "make_pretrain_example", "bucket_length", "collate", "Collator", "make_dataset",
    "PRETRAIN_BUCKETS", "length_grouped_examples", "GroupedCollator", "FEATURE_NORMS",
    "feature_norm_stats",
]

DEFAULT_BUCKETS = (16, 32, 64, 128)
PRETRAIN_KS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
# Pretraining examples hold k in PRETRAIN_KS tokens (+ CLS in the model): with batches
# grouped by length these edges leave no padding at all (10 shapes to compile).
PRETRAIN_BUCKETS = PRETRAIN_KS
MIN_BLOCK_WINDOWS = 20  # time_blocked: shortest block, in window lengths (4 gaps each)
FEATURE_NORMS = ("none", "file")  # see `feature_norm_stats`
_NORM_WINDOWS = 1000  # windows (evenly spaced) a file's normalisation statistics are taken over


# --------------------------------------------------------------------------- splits


def sklearn_train_test_split(items: Sequence[int], test_size: float, random_state: int = 42
                             ) -> tuple[list[int], list[int]]:
    """``sklearn.model_selection.train_test_split(items, test_size=..., random_state=...)``.

    sklearn takes ``ceil(test_size * n)`` test items and the rest for training, from one
    ``RandomState(random_state).permutation(n)``: test = its head, train = its tail.
    """
    n = len(items)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    n_test = math.ceil(test_size * n)
    if n - n_test <= 0:
        raise ValueError(f"with n={n} and test_size={test_size} the train set is empty")
    perm = np.random.RandomState(random_state).permutation(n)
    arr = np.asarray(items)
    return arr[perm[n_test:]].tolist(), arr[perm[:n_test]].tolist()


def random_split(n: int, val_frac: float, test_frac: float, seed: int = 42
                 ) -> dict[str, list[int]]:
    """Upstream's split of ``range(n)``: train vs (val+test), then val vs test, both seed 42."""
    train, rest = sklearn_train_test_split(list(range(n)), val_frac + test_frac, seed)
    val, test = sklearn_train_test_split(rest, test_frac / (val_frac + test_frac), seed)
    return {"train": train, "val": val, "test": test}


def time_blocked_split(groups: np.ndarray, starts: np.ndarray, window: int, val_frac: float,
                       test_frac: float, n_blocks: int = 5) -> dict[str, list[int]]:
    """Contiguous time blocks per recording, purged so no two splits' windows overlap.

    Each recording's span of window starts is cut into ``n_blocks`` equal blocks (fewer if a
    block would span less than `MIN_BLOCK_WINDOWS` window lengths), each laid out as
    ``train | val | train | test`` with shares ``(1 - val - test) / 2, val, (1 - val - test) / 2,
    test`` (so every split samples the whole recording). Then an example is dropped when its
    window overlaps (starts closer than ``window``) a window of a split ranked above its own
    (test > val > train): the gap between splits is at least one window length, and it comes
    out of the training share.

    Args:
        groups: [N] recording id of each example (windows of different ids never overlap).
        starts: [N] first sample of each example's window.
        window: window length in samples.
        val_frac: fraction of each block for validation.
        test_frac: fraction of each block for test.
        n_blocks: blocks per recording.

    Returns:
        {"train", "val", "test"}: sorted example indices.
    """
    groups, starts = np.asarray(groups), np.asarray(starts, dtype=np.int64)
    which = np.zeros(len(starts), np.int8)  # 0 train, 1 val, 2 test, -1 dropped
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        s = starts[idx]
        lo, hi = float(s.min()), float(s.max()) + 1.0
        # Every split boundary costs one window of training data to the gap, so short
        # recordings get fewer blocks: each block spans at least MIN_BLOCK_WINDOWS windows.
        blocks = max(1, min(n_blocks, int((hi - lo) // (MIN_BLOCK_WINDOWS * window))))
        pos = (s - lo) / (hi - lo) * blocks
        frac = pos - np.floor(pos)  # position inside its block, [0, 1)
        # Block layout: train | val | train | test. Training data separates val from test,
        # so the purge gaps come out of train and a small val share is never swallowed.
        t_half = (1.0 - val_frac - test_frac) / 2
        w = np.where((frac >= t_half) & (frac < t_half + val_frac), 1,
                     np.where(frac >= 1.0 - test_frac, 2, 0))
        # Test windows first push out overlapping val/train ones, then val pushes out train.
        for higher_code, lower in ((2, (w == 0) | (w == 1)), (1, None)):
            lower = (w == 0) if lower is None else lower
            higher = np.sort(s[w == higher_code])
            if len(higher):
                k = np.searchsorted(higher, s)
                near = np.minimum(np.abs(s - higher[np.clip(k - 1, 0, len(higher) - 1)]),
                                  np.abs(s - higher[np.clip(k, 0, len(higher) - 1)]))
                w = np.where(lower & (near < window), -1, w)
        which[idx] = w
    return {name: np.nonzero(which == code)[0].tolist()
            for code, name in ((0, "train"), (1, "val"), (2, "test"))}


def _load_or_make_split(split_file: str | os.PathLike | None, key: str, params: dict[str, Any],
                        make) -> dict:
    """The split ``key`` of the JSON ``split_file`` (made with ``make()`` and saved there when
    absent; a stored entry made with other ``params`` is refused). No file: ``make()``."""
    if split_file is None:
        return {"params": params, **make()}
    path = Path(split_file)
    stored: dict[str, Any] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError as err:
            raise DataError(path, f"cannot read splits JSON ({err})") from None
    if key in stored:
        entry = stored[key]
        if entry.get("params") != params:
            raise DataError(path, f"split '{key}' was made for {entry.get('params')}, not "
                            f"{params}; delete the entry (or the file) to make a new one")
        return entry
    entry = {"params": params, **make()}
    stored[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    # Every host of a multi-host job may get here at once: private temporary names, then an
    # atomic rename of identical content.
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stored))
    os.replace(tmp, path)
    return entry


# --------------------------------------------------------------------------- the store


@dataclasses.dataclass
class FileInfo:
    """Metadata of one feature file (see `popt_jax.features`)."""

    path: str
    subject: str
    trial: str
    names: list[str]
    coords: np.ndarray  # [E, 3] float64
    window_samples: int
    pretrain_starts: np.ndarray
    tasks: dict[str, dict[str, np.ndarray]]  # task -> {"index", "labels", "starts"}
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def positions(self) -> np.ndarray:
        """float64 [E, 3] real-valued positions (`feature_store.real_positions`)."""
        from popt_jax.ieeg.feature_store import real_positions

        return real_positions(self.meta, self.path)

    def model_coords(self, rows: np.ndarray, position_code: str) -> np.ndarray:
        """What the model reads for ``rows``: "table" -> the stored coords (float64, the
        examples truncate them), "continuous" -> float64 real-valued positions."""
        if position_code == "table":
            return self.coords[rows]
        if position_code != "continuous":
            raise ValueError(f"position_code must be table or continuous, not "
                             f"{position_code!r}")
        return self.positions()[rows]


class FeatureStore:
    """Every ``sub_*_trial*.h5`` file of a feature folder, metadata read once.

    Args:
        features_dir: the folder written by `popt_jax.features.extract_features`.
        subjects: keep only these subjects (default all).
        trials: keep only these {subject: [trials]} (default all); the other files are
            never opened (`popt_jax.ieeg.selections`).
    """

    def __init__(self, features_dir: str | os.PathLike,
                 subjects: Sequence[int | str] | None = None,
                 trials: Mapping[str, Sequence[str]] | None = None):
        self.dir = Path(features_dir)
        paths = sorted(self.dir.glob("sub_*_trial*.h5"),
                       key=lambda p: tuple(int("".join(c for c in part if c.isdigit()) or 0)
                                           for part in p.stem.split("_trial")))
        if not paths:
            raise DataError(self.dir, "no feature files (sub_*_trial*.h5) in this folder")
        wanted = {subject_id(s) for s in subjects} if subjects else None
        if trials is not None:
            from popt_jax.ieeg.selections import feature_file_trial

            chosen = {(subject_id(s), t) for s, ts in trials.items() for t in ts}
            paths = [p for p in paths if feature_file_trial(p) in chosen]
        self.files: list[FileInfo] = []
        for p in paths:
            info = self._read(p)
            if wanted is None or info.subject in wanted:
                self.files.append(info)
        if not self.files:
            raise DataError(self.dir, f"no feature files for subjects {sorted(wanted or [])}"
                            + (f" and trials {dict(trials)}" if trials is not None else ""))

    @staticmethod
    def _read(path: Path) -> FileInfo:
        from popt_jax.ieeg.feature_store import read_attrs

        meta = read_attrs(path)
        tasks = {}
        with h5py.File(path, "r") as f:
            pre = f["pretrain/starts"][:] if "pretrain" in f else np.zeros(0, np.int64)
            for t in f:  # the four Brain Treebank tasks, or a recording's own event tasks
                if isinstance(f[t], h5py.Group) and "labels" in f[t] and "index" in f[t]:
                    tasks[t] = {k: f[t][k][:] for k in ("index", "labels", "starts")}
        return FileInfo(path=str(path), subject=meta["subject"], trial=meta["trial"],
                        names=meta["electrode_names"], coords=meta["coords"],
                        window_samples=int(meta["window_samples"]), pretrain_starts=pre,
                        tasks=tasks, meta={k: meta.get(k) for k in (
                            "positions", "coords", "coord_mapping", "coord_frame")
                            if k in meta})

    def selection_rows(self, selection: Mapping[str, Sequence[str]] | str | os.PathLike | None
                       ) -> list[np.ndarray]:
        """Per file, the stored rows of the selected electrodes (stored order), or all."""
        if selection is None:
            return [np.arange(len(fi.names)) for fi in self.files]
        where = None
        if isinstance(selection, (str, os.PathLike)):
            from popt_jax.ieeg.braintreebank import load_selection

            where, selection = selection, load_selection(selection)
        chosen = {subject_id(k): {clean_electrode_name(n) for n in v}
                  for k, v in selection.items()}
        rows = []
        for fi in self.files:
            if fi.subject not in chosen:
                raise DataError(where, f"electrode selection has no entry for {fi.subject}")
            missing = sorted(chosen[fi.subject] - set(fi.names))
            if missing:
                raise DataError(fi.path, f"selected electrode(s) {', '.join(missing)} are not "
                                "in this feature file")
            rows.append(np.asarray([i for i, n in enumerate(fi.names)
                                    if n in chosen[fi.subject]], dtype=np.int64))
        return rows


def feature_norm_stats(path: str | os.PathLike, norm: str = "none"
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-dimension (mean, 1 / std) [D] float32 of a feature file, or None for "none".

    "file": each embedding dimension's mean and standard deviation over the file's stored
    electrodes and pretraining windows (its first task's windows when it has none; at most
    `_NORM_WINDOWS` evenly spaced windows). Pretraining and fine-tuning examples of a file are
    then ``(x - mean) / std``: both jobs normalise a file alike, whatever they read from it.
    Unsupervised, and a function of the file alone (no split enters it).

    Why: a random BrainBERT (the built-in default) maps every window close to one point (its
    position code and LayerNorm biases), so the stored embeddings are a large common offset
    plus a small varying part; PopT's input projection drowns that part in its spatial code,
    and LAMB's relative steps take thousands of updates to undo the offset. Upstream feeds
    embeddings as stored ("none", the paper variant).
    """
    if norm not in FEATURE_NORMS:
        raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, not {norm!r}")
    if norm == "none":
        return None
    # Every split's source (and pretraining and fine-tuning in one process) asks for the same
    # files: read each once, keyed by the file's identity so a rewritten file is read again.
    st = os.stat(path)
    return _file_norm_stats(os.path.realpath(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _file_norm_stats(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    del mtime_ns, size  # cache key only
    with h5py.File(path, "r") as f:
        groups = ["pretrain"] + sorted(k for k in f if k != "pretrain")
        emb = next((f[g]["embeddings"] for g in groups if g in f and isinstance(
            f[g], h5py.Group) and "embeddings" in f[g] and len(f[g]["embeddings"])), None)
        if emb is None:
            raise DataError(path, "no embeddings to take feature_norm statistics over")
        n = len(emb)
        rows = np.unique(np.linspace(0, n - 1, min(n, _NORM_WINDOWS)).round().astype(np.int64))
        x = emb[rows].astype(np.float64).reshape(-1, emb.shape[-1])
    mean, std = x.mean(0), x.std(0)
    out = mean.astype(np.float32), (1.0 / np.maximum(std, 1e-6)).astype(np.float32)
    for a in out:  # shared by every caller: read-only
        a.flags.writeable = False
    return out


def _normalise(x: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    return x if stats is None else (x - stats[0]) * stats[1]


class _LazyH5:
    """h5 handles opened on first use in each process (never pickled, reopened after fork)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self._files: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def __getstate__(self):
        return {"paths": self.paths}

    def __setstate__(self, state):
        self.paths = state["paths"]
        self._files, self._pid = {}, os.getpid()

    def __call__(self, i: int) -> h5py.File:
        if self._pid != os.getpid():  # a forked child must not share its parent's handles
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(i)
        if f is None:
            f = self._files[i] = h5py.File(self.paths[i], "r")
        return f


# --------------------------------------------------------------------------- pretraining


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Settings of the PopT pretraining examples (defaults: upstream's).

    Attributes:
        replace_p: per-token probability budget: p/2 replaced, p/2 (of the rest) kept.
        ks: channel-subset sizes drawn uniformly (capped at the electrode count).
        coord_jitter: std of Gaussian noise added to coordinates (upstream ``gaussian_blur``
            uses 5; the pretraining config turns it off, so 0 = off by default).
        pair_seed: seed of the fixed (B, R, pair label) choice of every example.
        example_seed: seed mixed with the example index for deterministic (eval) examples.
        split_mode: "random" (paper parity) or "time_blocked".
        val_frac, test_frac: split fractions (upstream pretraining: 0.01 and 0.1).
        split_seed: random-split seed (upstream 42).
        time_blocks: blocks per recording for "time_blocked".
        keep_split_order: list a "random" split's examples in the order the split drew them
            (upstream's unshuffled epochs) rather than sorted.
        feature_norm: "none" (upstream) or "file" (`feature_norm_stats`).
        position_code: "table" (upstream: coordinates truncated to int32 table rows) or
            "continuous" (float32 real-valued positions for PopT's continuous code).
    """

    replace_p: float = 0.1
    ks: tuple[int, ...] = PRETRAIN_KS
    coord_jitter: float = 0.0
    pair_seed: int = 0
    example_seed: int = 0
    split_mode: str = "time_blocked"
    val_frac: float = 0.01
    test_frac: float = 0.1
    split_seed: int = 42
    time_blocks: int = 5
    keep_split_order: bool = False
    feature_norm: str = "none"
    position_code: str = "table"


def _replace(x: np.ndarray, alt: np.ndarray, p: float, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """Replace p/2 of the rows of ``x`` by ``alt``; mark p/2 of the others "kept"."""
    n = len(x)
    replaced = rng.random(n) < p / 2
    kept = (rng.random(n) < p / 2) & ~replaced
    out = np.where(replaced[:, None], alt, x)
    labels = np.where(replaced, 1, np.where(kept, 2, 0)).astype(np.int32)
    return out, labels


def _draw_subset(e: int, rng: np.random.Generator, cfg: PretrainConfig
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """The first draws of a pretraining example: R's row order, electrode order, subset size.

    Shared by `make_pretrain_example` and `PretrainSource.example_length`, so the length
    known before the example is built is the length it gets.
    """
    r_perm = rng.permutation(e)
    order = rng.permutation(e)
    return r_perm, order, min(int(rng.choice(np.asarray(cfg.ks))), e)


def make_pretrain_example(a: np.ndarray, b: np.ndarray, r: np.ndarray, coords: np.ndarray,
                          pair_label: int, rng: np.random.Generator,
                          cfg: PretrainConfig = PretrainConfig()) -> dict[str, np.ndarray]:
    """One pretraining example from segments A, B, R [E, D] of the same recording.

    R's rows are permuted, a k-subset of electrodes (k from ``cfg.ks``, capped at E) is split
    into two halves (each sorted): half 1 read from A (seq id 0), half 2 from B (seq id 1).
    In each half a token is replaced with probability p/2 by the permuted R row of its
    electrode (label 1), else marked kept with probability p/2 (label 2), else 0.
    Coordinates are the original electrode's (jittered if asked), truncated toward zero
    (``cfg.position_code="continuous"``: kept real-valued, float32).
    """
    e = a.shape[0]
    r_perm, order, k = _draw_subset(e, rng, cfg)
    r = r[r_perm]
    half = k // 2
    s1, s2 = np.sort(order[:half]), np.sort(order[half:k])
    x1, l1 = _replace(a[s1], r[s1], cfg.replace_p, rng)
    x2, l2 = _replace(b[s2], r[s2], cfg.replace_p, rng)
    c = np.asarray(coords, dtype=np.float64)
    if cfg.coord_jitter:
        c = c + rng.normal(0.0, cfg.coord_jitter, c.shape)
    rows = np.concatenate([s1, s2])
    return {
        "x": np.concatenate([x1, x2]).astype(np.float32, copy=False),
        "coords": (c[rows].astype(np.float32) if cfg.position_code == "continuous"
                   else np.trunc(c[rows]).astype(np.int32)),
        "seq_id": np.repeat(np.asarray([0, 1], np.int32), [len(s1), len(s2)]),
        "token_label": np.concatenate([l1, l2]),
        "cls_label": np.int32(pair_label),
        "electrodes": rows.astype(np.int32),
    }


class PretrainSource:
    """Random-access PopT pretraining examples of one split (grain data source).

    Example ``i`` of the split is pretraining window A of some recording; its partner B is the
    next window (pair label 0) or, with probability 1/2, a random window (label 1), and R is
    another random window; this choice is fixed per example (upstream fixes it in the
    manifest). ``__getitem__`` reads A, B and R; `random_example` / `deterministic_example`
    turn the record into a training / evaluation example.

    Args:
        features_dir: the feature folder (only read).
        split: "train", "val" or "test".
        cfg: `PretrainConfig`.
        subjects: restrict to these subjects (the split is made over the files kept).
        selection: optional electrode sub-selection {subject: [names]} or JSON path.
        split_file: JSON file the split is saved to / reused from (checked against the
            settings); None = made in memory (it is deterministic).
        trials: restrict to these {subject: [trials]} (other files are never opened).
    """

    def __init__(self, features_dir: str | os.PathLike, split: str = "train",
                 cfg: PretrainConfig = PretrainConfig(),
                 subjects: Sequence[int | str] | None = None,
                 selection: Mapping[str, Sequence[str]] | str | None = None,
                 split_file: str | os.PathLike | None = None,
                 trials: Mapping[str, Sequence[str]] | None = None):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, not {split!r}")
        if cfg.split_mode not in ("random", "time_blocked"):
            raise ValueError(f"split_mode must be random or time_blocked, not {cfg.split_mode!r}")
        store = FeatureStore(features_dir, subjects, trials)
        self.cfg, self.split = cfg, split
        self.paths = [fi.path for fi in store.files]
        self.rows = store.selection_rows(selection)
        self._all_rows = [len(r) == len(fi.names) for fi, r in zip(store.files, self.rows,
                                                                    strict=True)]
        self.coords = [fi.model_coords(r, cfg.position_code)
                       for fi, r in zip(store.files, self.rows, strict=True)]
        n_win = np.asarray([len(fi.pretrain_starts) for fi in store.files])
        # Upstream: one manifest row per window but the last of each recording.
        file_of = np.concatenate([np.full(max(n - 1, 0), i) for i, n in enumerate(n_win)])
        win_of = np.concatenate([np.arange(max(n - 1, 0)) for n in n_win])
        file_of, win_of = file_of.astype(np.int64), win_of.astype(np.int64)
        if not len(file_of):
            raise DataError(store.dir, "no pretraining windows in the feature files")
        params = {"files": [Path(p).name for p in self.paths], "n": int(len(file_of)),
                  "val_frac": cfg.val_frac, "test_frac": cfg.test_frac}
        if cfg.split_mode == "random":
            params["seed"] = cfg.split_seed
            entry = _load_or_make_split(
                split_file, "pretrain:random", params,
                lambda: random_split(len(file_of), cfg.val_frac, cfg.test_frac, cfg.split_seed))
            # B and R may come from anywhere in the recording (upstream).
            self._pool = [np.arange(n) for n in n_win]
            keep = np.asarray(entry[split] if cfg.keep_split_order else sorted(entry[split]),
                              dtype=np.int64)
        else:
            params["time_blocks"] = cfg.time_blocks
            all_starts = np.concatenate([fi.pretrain_starts for fi in store.files])
            all_file = np.concatenate([np.full(n, i) for i, n in enumerate(n_win)])
            entry = _load_or_make_split(
                split_file, "pretrain:time_blocked", {**params, "n": int(len(all_starts))},
                lambda: time_blocked_split(all_file, all_starts, store.files[0].window_samples,
                                           cfg.val_frac, cfg.test_frac, cfg.time_blocks))
            offsets = np.concatenate([[0], np.cumsum(n_win)])
            member = np.zeros(len(all_starts), bool)
            member[entry[split]] = True
            # A and its successor in this split; B and R drawn from this split's windows.
            self._pool = [np.nonzero(member[offsets[i]:offsets[i + 1]])[0]
                          for i in range(len(n_win))]
            glob = offsets[file_of] + win_of
            keep = np.nonzero(member[glob] & member[glob + 1])[0]
        self._file, self._win = file_of[keep], win_of[keep]
        self._norm = [feature_norm_stats(p, cfg.feature_norm) for p in self.paths]
        self._h5 = _LazyH5(self.paths)

    def __len__(self) -> int:
        return len(self._file)

    def pair(self, i: int) -> tuple[int, int, int]:
        """(B window, R window, pair label) of example ``i``: fixed, seeded by its window."""
        fi, a = int(self._file[i]), int(self._win[i])
        rng = np.random.default_rng([self.cfg.pair_seed, fi, a])
        pool = self._pool[fi]
        if rng.random() < 0.5:
            b, label = a + 1, 0
        else:
            b, label = int(pool[rng.integers(len(pool))]), 1
        return b, int(pool[rng.integers(len(pool))]), label

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        fi, a = int(self._file[i]), int(self._win[i])
        b, r, label = self.pair(i)
        emb = self._h5(fi)["pretrain/embeddings"]
        rows = None if self._all_rows[fi] else self.rows[fi]  # no copy without a selection
        norm = self._norm[fi]

        def read(w: int) -> np.ndarray:
            x = emb[w]
            return _normalise(x if rows is None else x[rows], norm)

        return {"a": read(a), "b": read(b), "r": read(r), "coords": self.coords[fi],
                "pair_label": label, "index": i}

    def example_length(self, i: int, rng: np.random.Generator) -> int:
        """Tokens of the training example `random_example` makes from record ``i`` with an
        rng in the same state, without reading any embedding (for length grouping)."""
        e = len(self.rows[int(self._file[int(i)])])
        return _draw_subset(e, rng, self.cfg)[2]

    def random_example(self, record: dict[str, Any], rng: np.random.Generator) -> dict:
        """Training example: subset/replacement drawn from grain's per-record RNG."""
        out = make_pretrain_example(record["a"], record["b"], record["r"], record["coords"],
                                    record["pair_label"], rng, self.cfg)
        out["index"] = np.int64(record["index"])
        return out

    def deterministic_example(self, record: dict[str, Any]) -> dict:
        """Evaluation example: the same for a given example index, whatever the order."""
        rng = np.random.default_rng([self.cfg.example_seed, int(record["index"])])
        return self.random_example(record, rng)


# --------------------------------------------------------------------------- fine-tuning


class FinetuneSource:
    """Examples of one decoding task for one subject (all its trials), one split.

    Args:
        features_dir: the feature folder.
        task: volume, pitch, sentence_onset or word_onset.
        subject: the subject.
        split: "train", "val" or "test".
        split_mode: "time_blocked" (default) or "random" (paper parity: 80/10/10, seed 42).
        selection: optional electrode sub-selection {subject: [names]} or JSON path; tokens
            keep the stored order.
        val_frac, test_frac: split fractions.
        split_seed: random-split seed.
        time_blocks: blocks per recording for "time_blocked".
        split_file: JSON file the split is saved to / reused from (checked against the
            settings); None = made in memory (it is deterministic).
        trials: restrict to these {subject: [trials]} (upstream: the held-out test trials).
        feature_norm: "none" (upstream) or "file" (`feature_norm_stats`).
        position_code: "table" (int32 truncated coordinates, upstream) or "continuous"
            (float32 real-valued positions).
    """

    def __init__(self, features_dir: str | os.PathLike, task: str, subject: int | str,
                 split: str = "train", *, split_mode: str = "time_blocked",
                 selection: Mapping[str, Sequence[str]] | str | None = None,
                 val_frac: float = 0.1, test_frac: float = 0.1, split_seed: int = 42,
                 time_blocks: int = 5, split_file: str | os.PathLike | None = None,
                 trials: Mapping[str, Sequence[str]] | None = None, feature_norm: str = "none",
                 position_code: str = "table"):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, not {split!r}")
        store = FeatureStore(features_dir, [subject], trials)
        missing = [fi.path for fi in store.files if task not in fi.tasks]
        if missing:
            raise DataError(missing[0], f"no task '{task}' in this feature file")
        self.task, self.split = task, split
        self.paths = [fi.path for fi in store.files]
        self.rows = store.selection_rows(selection)
        if position_code == "continuous":
            self.coords = [fi.model_coords(r, position_code).astype(np.float32)
                           for fi, r in zip(store.files, self.rows, strict=True)]
        else:
            self.coords = [np.trunc(fi.model_coords(r, position_code)).astype(np.int32)
                           for fi, r in zip(store.files, self.rows, strict=True)]
        file_of = np.concatenate([np.full(len(fi.tasks[task]["labels"]), i)
                                  for i, fi in enumerate(store.files)]).astype(np.int64)
        row_of = np.concatenate([fi.tasks[task]["index"] for fi in store.files])
        labels = np.concatenate([fi.tasks[task]["labels"] for fi in store.files])
        starts = np.concatenate([fi.tasks[task]["starts"] for fi in store.files])
        n = len(labels)
        if n == 0:
            raise DataError(store.dir, f"no '{task}' examples for {subject_id(subject)}")
        params = {"files": [Path(p).name for p in self.paths], "n": int(n),
                  "val_frac": val_frac, "test_frac": test_frac}
        key = f"{task}/{subject_id(subject)}:{split_mode}"
        if split_mode == "random":
            entry = _load_or_make_split(split_file, key, {**params, "seed": split_seed},
                                        lambda: random_split(n, val_frac, test_frac, split_seed))
        elif split_mode == "time_blocked":
            entry = _load_or_make_split(
                split_file, key, {**params, "time_blocks": time_blocks},
                lambda: time_blocked_split(file_of, starts, store.files[0].window_samples,
                                           val_frac, test_frac, time_blocks))
        else:
            raise ValueError(f"split_mode must be random or time_blocked, not {split_mode!r}")
        keep = np.asarray(entry[split], dtype=np.int64)
        self.example_ids = keep
        self._file, self._row = file_of[keep], row_of[keep]
        if labels.dtype.kind == "f":  # a regression target: z-scored over the subject (upstream)
            labels = ((labels - labels.mean()) / max(float(labels.std()), 1e-12)).astype(
                np.float32)
        else:
            labels = labels.astype(np.int32)
        self.labels, self.starts = labels[keep], starts[keep]
        self._norm = [feature_norm_stats(p, feature_norm) for p in self.paths]
        self._h5 = _LazyH5(self.paths)

    def __len__(self) -> int:
        return len(self._file)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        fi = int(self._file[i])
        x = self._h5(fi)["windows/embeddings"][int(self._row[i])][self.rows[fi]]
        x = _normalise(x.astype(np.float32), self._norm[fi])
        return {"x": x, "coords": self.coords[fi],
                "seq_id": np.zeros(len(x), np.int32), "label": self.labels[i],
                "index": np.int64(self.example_ids[i])}


# --------------------------------------------------------------------------- batching


def bucket_length(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket >= n; beyond the largest, the next multiple of the largest."""
    for b in sorted(buckets):
        if n <= b:
            return int(b)
    top = max(buckets)
    return int(math.ceil(n / top) * top)


_TOKEN_KEYS = ("x", "coords", "seq_id", "token_label")
_SCALAR_KEYS = ("cls_label", "label", "index")


def collate(examples: Sequence[dict[str, Any]], buckets: Sequence[int] = DEFAULT_BUCKETS,
            batch_size: int | None = None, alloc=np.zeros) -> dict[str, np.ndarray]:
    """Pad examples to one bucket length (and a short batch to ``batch_size`` rows).

    Padding tokens are zeros with ``pad_mask`` True; padding rows have ``valid`` False.
    ``alloc(shape, dtype)`` makes the zero-filled output arrays (shared memory in workers).
    """
    rows = batch_size or len(examples)
    length = bucket_length(max(len(e["x"]) for e in examples), buckets)
    first = examples[0]
    out: dict[str, np.ndarray] = {}
    for key in _TOKEN_KEYS:
        if key in first:
            shape = (rows, length, *np.shape(first[key])[1:])
            out[key] = alloc(shape, np.asarray(first[key]).dtype)
    for key in _SCALAR_KEYS:
        if key in first:
            out[key] = alloc((rows,), np.asarray(first[key]).dtype)
    out["pad_mask"] = alloc((rows, length), bool)
    out["pad_mask"][:] = True
    out["valid"] = alloc((rows,), bool)
    for j, e in enumerate(examples):
        n = len(e["x"])
        for key in _TOKEN_KEYS:
            if key in out:
                out[key][j, :n] = e[key]
        for key in _SCALAR_KEYS:
            if key in out:
                out[key][j] = e[key]
        out["pad_mask"][j, :n] = False
        out["valid"][j] = True
    return out


def _shared_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    arr = grain.multiprocessing.SharedMemoryArray(shape, dtype=dtype)
    arr.fill(0)
    return arr


class Collator:
    """`collate` as grain's batch function; in worker processes grain switches it to write
    batches straight into shared memory, so they reach the trainer without being pickled."""

    def __init__(self, buckets: Sequence[int] = DEFAULT_BUCKETS, batch_size: int | None = None):
        self.buckets, self.batch_size = tuple(buckets), batch_size
        self._alloc = np.zeros

    def enable_shared_memory_output(self) -> None:
        """Called by grain's ``mp_prefetch`` on the dataset it runs in each worker."""
        self._alloc = _shared_zeros

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        return collate(examples, self.buckets, self.batch_size, self._alloc)


def make_dataset(source: PretrainSource | FinetuneSource, *, batch_size: int, train: bool,
                 seed: int = 0, num_epochs: int | None = None,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, worker_count: int = 0,
                 worker_buffer_size: int = 2, read_threads: int = 4,
                 prefetch_batches: int = 8, shard_index: int = 0, shard_count: int = 1,
                 group_by_length: int = 0, order: str = "shuffle") -> grain.IterDataset:
    """The grain pipeline over a source: batches of padded numpy arrays.

    Training: ``source -> seed -> shuffle -> repeat(num_epochs; None = forever) ->
    random_map(example) -> [shard_index::shard_count] -> batch(drop_remainder)``. The global
    example stream does not depend on the shard count; each process takes every
    ``shard_count``-th example of it. Evaluation: one ordered pass, deterministic examples,
    the last batch padded to ``batch_size`` with ``valid`` False rows.

    With ``worker_count > 0`` grain spawns worker processes (the calling script needs an
    ``if __name__ == "__main__":`` guard); their batches arrive as shared-memory numpy arrays
    (an ndarray subclass) and equal the in-process ones element for element.

    Args:
        source: a `PretrainSource` or `FinetuneSource`.
        batch_size: examples per batch on this process.
        train: training stream (shuffled, repeated, random examples) or evaluation pass.
        seed: shuffle and per-record RNG seed.
        num_epochs: training epochs (None = repeat forever).
        buckets: token lengths batches are padded to.
        worker_count: grain worker processes (0 = in this process).
        worker_buffer_size: batches buffered per worker.
        read_threads: threads building batches in each process (grain's default of 16, with
            a 500-element buffer, would hold hundreds of whole batches in memory).
        prefetch_batches: batches read ahead per process.
        shard_index, shard_count: this process's shard (multi-host data parallelism).
        group_by_length: pretraining only: 0 = off; else batches are grouped by length within
            windows of this many global batches (`length_grouped_examples`): the same
            examples in the same windows, far less padding. Pair with buckets that fit the
            lengths (`PRETRAIN_BUCKETS`).
        order: training order: "shuffle" (a new permutation per epoch) or "fixed"
            (upstream's `shuffle: False`: every epoch in the source's order; pretraining drops
            each epoch's remainder, fine-tuning keeps a short last batch, padded with
            `valid` False rows that weigh nothing in the loss). "fixed" is single-process.

    Returns:
        A `grain.IterDataset`; iterate it, or checkpoint its iterator's state.
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    if len(source) == 0:
        raise ValueError("the source is empty (no example in this split)")
    ds = grain.MapDataset.source(source)
    if isinstance(source, PretrainSource):
        make_random, make_eval = source.random_example, source.deterministic_example
    else:
        make_random, make_eval = None, None
    if order not in ("shuffle", "fixed"):
        raise ValueError(f"order must be shuffle or fixed, not {order!r}")
    if train and order == "fixed":
        return _fixed_order_dataset(ds, make_random, batch_size, seed, num_epochs, buckets,
                                    read_threads, prefetch_batches, shard_count)
    grouped = bool(train and group_by_length and make_random is not None)
    if grouped:
        ds = length_grouped_examples(source, seed=seed, num_epochs=num_epochs,
                                     group_size=batch_size * shard_count,
                                     window_groups=group_by_length)
    elif train:
        ds = ds.seed(seed).shuffle().repeat(num_epochs)
        if make_random is not None:
            ds = ds.random_map(make_random)
    elif make_eval is not None:
        ds = ds.map(make_eval)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    collator = (GroupedCollator if grouped else Collator)(buckets, batch_size)
    ds = ds.batch(batch_size, drop_remainder=train, batch_fn=collator)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=prefetch_batches))
    if worker_count > 0:
        from absl import flags

        # grain's worker processes read absl flags; outside `app.run` use their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
    return it


# --------------------------------------------------------------------------- length grouping


class _LengthGrouped(grain.MapDataset):
    """Reorders ``examples`` inside windows of ``window`` positions so that each run of
    ``group_size`` consecutive positions (one global batch) holds examples of similar length.

    Position ``w * window + j`` shows ``examples[w * window + perm_w[j]]``, where ``perm_w``
    sorts the window by length (stable), cuts it into groups of ``group_size`` and orders the
    whole groups by a permutation seeded by (seed, w); a short final window keeps its partial
    group last. ``lengths[i]`` must be the length of ``examples[i]``. Every example also gets
    ``pad_to``: the longest length of its group, so every shard of a global batch pads to
    the same length (`GroupedCollator`).
    """

    def __init__(self, examples: grain.MapDataset, lengths: grain.MapDataset, group_size: int,
                 window: int, seed: int):
        super().__init__([examples, lengths])
        if group_size < 1 or window < group_size or window % group_size:
            raise ValueError(f"window {window} must be a positive multiple of the group size "
                             f"{group_size}")
        self._examples, self._lengths = examples, lengths
        self._group, self._window, self._seed = group_size, window, seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lock"], state["_cache"] = None, {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._examples)

    def __str__(self) -> str:
        return f"LengthGrouped(group_size={self._group}, window={self._window})"

    def _plan(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(source position, pad_to) of every position of window ``w``."""
        with self._lock:
            hit = self._cache.get(w)
        if hit is not None:
            return hit
        lo = w * self._window
        hi = min(lo + self._window, len(self._examples))
        lengths = np.asarray([self._lengths[i] for i in range(lo, hi)], np.int64)
        order = np.argsort(lengths, kind="stable")
        n_full = len(order) // self._group
        groups = order[:n_full * self._group].reshape(n_full, self._group)
        groups = groups[np.random.default_rng([self._seed, w]).permutation(n_full)]
        perm = np.concatenate([groups.reshape(-1), order[n_full * self._group:]])
        pad_to = lengths[perm]
        for a in range(0, len(perm), self._group):
            pad_to[a:a + self._group] = pad_to[a:a + self._group].max()
        plan = (lo + perm, pad_to)
        with self._lock:
            if len(self._cache) >= 4:  # windows are read in order; a few cover the threads
                self._cache.pop(min(self._cache))
            self._cache[w] = plan
        return plan

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        w, j = divmod(int(index), self._window)
        src, pad_to = self._plan(w)
        out = dict(self._examples[int(src[j])])
        out["pad_to"] = np.int64(pad_to[j])
        return out


def length_grouped_examples(source: PretrainSource, *, seed: int, num_epochs: int | None,
                            group_size: int, window_groups: int) -> grain.MapDataset:
    """The training example stream of `make_dataset`, grouped by length.

    The stream ``source -> seed -> shuffle -> repeat -> random_map(random_example)`` is the
    ungrouped one; it is cut into windows of ``window_groups * group_size`` consecutive
    examples, and each window is reordered so that each global batch (``group_size``
    examples: the batch of all shards together) holds examples of similar length. So:
    the same examples as without grouping (same draws, same records), each window's
    examples within that window (epochs and shuffling unchanged beyond a window); the order
    of the batches within a window is shuffled (seeded), so lengths do not drift
    monotonically through a window. The lengths come from `PretrainSource.example_length`
    with the very rng the example is built with, without reading embeddings. The result is
    a pure function of (source, seed, sizes): deterministic, resumable from grain's iterator
    state, and the same however many devices share a global batch.
    """
    index = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat(num_epochs)
    # Both random_maps hang off the same parent, so grain hands them the same per-position
    # rng (its default seed depends on the parent chain and the position only).
    examples = index.random_map(_ExampleOf(source))
    lengths = index.random_map(source.example_length)
    return _LengthGrouped(examples, lengths, group_size, group_size * window_groups, seed)


class _ExampleOf:
    """Record position -> training example (a picklable callable for grain's workers)."""

    def __init__(self, source: PretrainSource):
        self.source = source

    def __call__(self, i: int, rng: np.random.Generator) -> dict:
        return self.source.random_example(self.source[int(i)], rng)


class GroupedCollator(Collator):
    """`Collator` for length-grouped examples: pads to the bucket of the global batch's
    longest example (``pad_to``), so every shard of a batch gets the same length."""

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        longest = max(int(e.get("pad_to", len(e["x"]))) for e in examples)
        return collate(examples, (bucket_length(longest, self.buckets),), self.batch_size,
                       self._alloc)


def _fixed_order_dataset(ds: grain.MapDataset, make_random, batch_size: int, seed: int,
                         num_epochs: int | None, buckets: Sequence[int], read_threads: int,
                         prefetch_batches: int, shard_count: int) -> grain.IterDataset:
    """Upstream's unshuffled epochs (`make_dataset(order="fixed")`)."""
    if shard_count > 1:
        raise ValueError("order='fixed' (upstream's epochs) runs in a single process")
    collator = Collator(buckets, batch_size)
    if make_random is not None:  # pretraining: DataLoader(drop_last=True), fresh draws
        n = len(ds) // batch_size * batch_size
        if n == 0:
            raise ValueError(f"the split has {len(ds)} examples, fewer than one batch")
        ds = ds[:n].seed(seed).repeat(num_epochs).random_map(make_random)
        ds = ds.batch(batch_size, drop_remainder=True, batch_fn=collator)
    else:  # fine-tuning: DataLoader(drop_last=False), the short last batch padded
        ds = ds.batch(batch_size, drop_remainder=False, batch_fn=collator).repeat(num_epochs)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                prefetch_buffer_size=prefetch_batches))
