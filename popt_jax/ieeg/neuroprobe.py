"""Neuroprobe: the community sEEG benchmark, run with popt_jax models, written as a submission.

    python -m popt_jax.main --config configs/neuroprobe.py --config.root /data/braintreebank

Neuroprobe (Zahorodnii et al. 2025; pip package `neuroprobe`) evaluates 15 binary tasks on the
Brain Treebank from the 1 s after each word onset, in three split types: Within-Session (2
folds), Cross-Session and Cross-Subject; Lite (12 sessions, <= 3500 samples) or Nano (6
sessions, <= 1000). The splits and labels are the package's own: this module calls
`neuroprobe.train_test_splits.generate_splits_*` with `output_indices=True` and reads only the
window positions and labels from them; the neural data of each window is then read and
featurised here. (The package needs torch; it is the optional extra ``[neuroprobe]``.)

Models (``config.model``), each followed by Neuroprobe's linear read-out (standardise +
`sklearn` logistic regression, as the package's `examples/eval_population.py`):

* ``linear_stft``: Laplacian re-reference among the evaluated electrodes (an electrode with
  at least one neighbour in the subset minus their mean; others kept), |STFT| (Hann 512,
  75 % overlap, centred, 0-150 Hz) -- the leaderboard's "Laplacian + STFT" baseline;
* ``linear_raw``: the raw voltage of the window;
* ``brainbert_linear``: frozen BrainBERT per electrode, mean of the centre frames;
* ``popt_linear``: the CLS state of a PopT over those BrainBERT embeddings;
* ``popt_finetune``: instead of the linear read-out, a PopT (``popt_checkpoint``) fine-tuned
  on each fold's training windows over those embeddings (`neuroprobe_finetune`).

Windows shorter than BrainBERT's 5 s: by default (``context="none"``, the rule-compliant
choice: only the benchmark's 1 s window is used) BrainBERT sees the spectrogram of the 1 s
window itself (notch + Laplacian applied within the window; about 22 frames after trimming).
Cross-Subject electrode-level features are averaged per Desikan-Killiany region over the
regions both subjects share, as the package's example does; PopT features need no such step.

Features are computed once per session and reused across tasks and split types. Results go
to ``{workdir}/{MODEL}_{First}_{Last}_{D}_{M}_{YYYY}/{Within-Session,...}/population_<task>.json``
with ``metadata.json``, ``PUBLICATION.bib`` and an unsigned ``ATTESTATION.txt`` (SUBMIT.md),
plus ``summary.csv``/``summary.json`` and ``summary.png`` (tasks x splits, with published
leaderboard numbers beside yours).

Leak check: Neuroprobe forbids pretraining on its evaluation sessions. Every popt_jax training
job records the sessions its weights saw, transitively (``trained_on`` in ``results.json`` and
``provenance.json`` beside its export; `popt_jax.ieeg.provenance`), and the job reads that
record for ``brainbert_checkpoint`` and ``popt_checkpoint``. It refuses to write a submission
(one ``error:`` line naming the overlapping sessions, exit 2, nothing written) when any of them
is an evaluation session, and likewise when a checkpoint has no complete record: converted
upstream weights have none, and the published BrainBERT and PopT were pretrained on Brain
Treebank sessions that include Neuroprobe's evaluation sessions (e.g. PopT's
`pretrain_split_trials` holds 7 of the 12: btbank1_2, btbank2_0, btbank2_4, btbank3_1,
btbank4_1, btbank7_1, btbank10_1). ``config.leak_override`` (a reason) writes the submission anyway, with the
reason and the problems in ``metadata.json``'s description; the ATTESTATION stays unsigned.
Leak-free weights come from the ``:neuroprobe`` pretraining recipes.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import logging

from popt_jax.core.jsonio import atomic_json
from popt_jax.errors import DataError, TrainingError, UserError
from popt_jax.ieeg import provenance
from popt_jax.ieeg.braintreebank import BrainTreebank, split_electrode_name

TASKS = ("onset", "speech", "volume", "delta_volume", "pitch", "word_index", "word_gap",
         "gpt2_surprisal", "word_head_pos", "word_part_speech", "word_length", "global_flow",
         "local_flow", "frame_brightness", "face_num")
SPLITS = {"within_session": "Within-Session", "cross_session": "Cross-Session",
          "cross_subject": "Cross-Subject"}
MODELS = ("linear_stft", "linear_raw", "brainbert_linear", "popt_linear", "popt_finetune")
# SUBMIT.md, "Pretraining guidelines": the sessions pretraining may use.
ALLOWED_PRETRAINING = ("btbank1_0", "btbank2_1", "btbank2_2", "btbank2_3", "btbank2_5",
                       "btbank2_6", "btbank3_2", "btbank4_2", "btbank5_0", "btbank6_0",
                       "btbank6_1", "btbank6_4", "btbank8_0", "btbank9_0", "btbank7_100",
                       "btbank7_101", "btbank7_102", "btbank10_100", "btbank10_101")
# Leaderboard, within-session mean AUROC, as quoted in the project's Neuroprobe issue.
PUBLISHED_WITHIN_SESSION = {"MAPA": 0.695, "PopT (resubmitted)": 0.670,
                            "Laplacian+STFT linear": 0.660, "BrainBERT (best)": 0.626,
                            "PopT (original)": 0.545}
FS = 2048
_BIB = {
    "linear_stft": """@misc{neuroprobe,
  title={Neuroprobe: Evaluating Intracranial Brain Responses to Naturalistic Stimuli},
  author={Andrii Zahorodnii and Christopher Wang and Bennett Stankovits and Charikleia Moraitaki and Geeling Chau and Andrei Barbu and Boris Katz and Ila R Fiete},
  year={2025}, eprint={2509.21671}, archivePrefix={arXiv}, primaryClass={cs.LG}
}
""",
    "brainbert_linear": """@inproceedings{wang2023brainbert,
  title={BrainBERT: Self-supervised representation learning for intracranial recordings},
  author={Christopher Wang and Vighnesh Subramaniam and Adam Uri Yaari and Gabriel Kreiman and Boris Katz and Ignacio Cases and Andrei Barbu},
  booktitle={International Conference on Learning Representations}, year={2023}
}
""",
    "popt_linear": """@inproceedings{chau2025popt,
  title={Population Transformer: Learning Population-level Representations of Neural Activity},
  author={Geeling Chau and Christopher Wang and Sabera Talukder and Vighnesh Subramaniam and Saraswati Soedarmadji and Yisong Yue and Boris Katz and Andrei Barbu},
  booktitle={International Conference on Learning Representations}, year={2025}
}
""",
}
_BIB["linear_raw"] = _BIB["linear_stft"]
_BIB["popt_finetune"] = _BIB["popt_linear"]


# --------------------------------------------------------------------------------------------
# The neuroprobe package
# --------------------------------------------------------------------------------------------


class Neuroprobe:
    """The `neuroprobe` package pointed at a Brain Treebank root.

    A synthetic stand-in (`popt_jax.ieeg.neuroprobe_synthetic`) brings its own word/non-speech
    alignment tables under ``neuroprobe_alignment/``; the package is pointed at those too.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise DataError(self.root, "Brain Treebank root not found")
        os.environ["ROOT_DIR_BRAINTREEBANK"] = str(self.root)
        try:
            import neuroprobe.braintreebank_subject as subject_mod
            import neuroprobe.config as config
            import neuroprobe.datasets as datasets
            import neuroprobe.train_test_splits as splits
        except ImportError as e:
            raise UserError(f"the neuroprobe job needs the `neuroprobe` package ({e}); install "
                            "it with: pip install 'popt_jax[neuroprobe]'") from None
        for mod in (config, datasets, subject_mod, splits):
            if hasattr(mod, "ROOT_DIR"):
                mod.ROOT_DIR = str(self.root)
        align = self.root / "neuroprobe_alignment"
        if align.is_dir():
            logging.info("using the synthetic stand-in's alignment tables in %s", align)
            datasets.SAVE_SUBJECT_TRIAL_DF_DIR = str(align)
            datasets.PITCH_VOLUME_FEATURES_DIR = str(align / "pitch")
        self.config, self.splits, self.Subject = config, splits, subject_mod.BrainTreebankSubject
        self._subjects: dict[int, Any] = {}

    def sessions(self, nano: bool) -> list[tuple[int, int]]:
        c = self.config
        return list(c.NEUROPROBE_NANO_SUBJECT_TRIALS if nano else c.NEUROPROBE_LITE_SUBJECT_TRIALS)

    def subject(self, sid: int):
        if sid not in self._subjects:
            import torch

            try:
                self._subjects[sid] = self.Subject(sid, cache=False, dtype=torch.float32)
            except (OSError, KeyError, ValueError) as e:
                raise DataError(self.root, f"neuroprobe cannot read subject {sid}: {e}") from None
        return self._subjects[sid]

    def folds(self, split: str, sid: int, tid: int, task: str, nano: bool) -> list[dict]:
        """[{train: (starts, labels), test: (starts, labels), train_session, test_session,
        train_electrodes, test_electrodes}] with the package's windows and labels."""
        kw = dict(output_indices=True, output_dict=False, start_neural_data_before_word_onset=0,
                  end_neural_data_after_word_onset=FS, binary_tasks=True)
        subject = self.subject(sid)
        train_sid = sid
        try:
            if split == "within_session":
                folds = self.splits.generate_splits_within_session(subject, tid, task, lite=True,
                                                                   nano=nano, **kw)
            elif split == "cross_session":
                folds = self.splits.generate_splits_cross_session(subject, tid, task, lite=True,
                                                                  **kw)
            else:
                train_sid = int(self.config.DS_DM_TRAIN_SUBJECT_ID)
                train = self.subject(train_sid)
                folds = self.splits.generate_splits_cross_subject(
                    {sid: subject, train_sid: train}, sid, tid, task, lite=True, nano=nano, **kw)
        except (OSError, KeyError) as e:
            raise DataError(self.root, f"neuroprobe cannot build {split} splits of btbank{sid}_"
                            f"{tid} / {task}: {e}") from None
        out = []
        for fold in folds:
            tr, te = fold["train_dataset"], fold["test_dataset"]
            out.append({"train": _windows(tr), "test": _windows(te),
                        "train_session": (train_sid, _trial(tr)), "test_session": (sid, tid),
                        "train_electrodes": list(_base(tr).electrode_labels),
                        "test_electrodes": list(_base(te).electrode_labels)})
        return out


def _base(ds):
    while hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds


def _trial(ds) -> int:
    return int(_base(ds).trial_id)


def _windows(ds) -> tuple[np.ndarray, np.ndarray]:
    items = [ds[i] for i in range(len(ds))]
    starts = np.asarray([int(w[0]) for (w, _) in items], np.int64)
    labels = np.asarray([int(y) for (_, y) in items], np.int64)
    return starts, labels


# --------------------------------------------------------------------------------------------
# Features of one session's windows
# --------------------------------------------------------------------------------------------


def laplacian_within(x: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Neuroprobe's Laplacian on [..., E, T]: an electrode with at least one shaft neighbour
    among `names` minus the mean of those neighbours; the others unchanged."""
    parsed = [split_electrode_name(n) for n in names]
    index = {p: i for i, p in enumerate(parsed) if p is not None}
    out = np.array(x, dtype=np.float32, copy=True)
    for i, p in enumerate(parsed):
        if p is None:
            continue
        nb = [index[q] for q in ((p[0], p[1] - 1), (p[0], p[1] + 1)) if q in index]
        if nb:
            out[..., i, :] = x[..., i, :] - x[..., nb, :].mean(axis=-2)
    return out


def stft_abs(x: np.ndarray, nperseg: int = 512, overlap: float = 0.75,
             max_freq: float = 150.0, min_freq: float = 0.0) -> np.ndarray:
    """|STFT| as `torch.stft(center=True, reflect pad, periodic Hann)` -> [..., frames, freqs]."""
    hop = nperseg - int(nperseg * overlap)
    pad = nperseg // 2
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    n_frames = 1 + (xp.shape[-1] - nperseg) // hop
    idx = np.arange(nperseg)[None, :] + hop * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(nperseg) / nperseg)
    spec = np.abs(np.fft.rfft(xp[..., idx] * window, axis=-1))
    freqs = np.fft.rfftfreq(nperseg, 1.0 / FS)
    return spec[..., (freqs >= min_freq) & (freqs <= max_freq)].astype(np.float32)


class SessionFeatures:
    """Per-window features of one session, computed once and reused across tasks and splits."""

    def __init__(self, bt: BrainTreebank, session: tuple[int, int], electrodes: Sequence[str],
                 featurize, batch: int = 256):
        self.bt, self.session, self.electrodes = bt, session, list(electrodes)
        self.featurize, self.batch = featurize, batch
        self.cache: dict[int, np.ndarray] = {}

    def __call__(self, starts: np.ndarray) -> np.ndarray:
        missing = sorted(set(int(s) for s in starts) - set(self.cache))
        for a in range(0, len(missing), self.batch):
            chunk = missing[a:a + self.batch]
            wav = self._read(chunk)
            feats = self.featurize(wav, self.electrodes, self.session)
            self.cache.update(zip(chunk, feats, strict=True))
        return np.stack([self.cache[int(s)] for s in starts])

    def _read(self, starts: list[int]) -> np.ndarray:
        """[len(starts), E, FS] raw windows; one read per contiguous run of windows."""
        s, t = self.session
        out = np.empty((len(starts), len(self.electrodes), FS), np.float32)
        i = 0
        while i < len(starts):
            j = i
            while j + 1 < len(starts) and starts[j + 1] + FS - starts[i] <= 64 * FS:
                j += 1
            block = self.bt.read_electrodes(s, t, self.electrodes, starts[i], starts[j] + FS,
                                            dtype=np.float32, validate=False)
            if block.shape[-1] < starts[j] + FS - starts[i]:
                raise DataError(self.bt.h5_path(s, t), f"window at sample {starts[j]} runs past "
                                "the end of the recording")
            for k in range(i, j + 1):
                out[k] = block[:, starts[k] - starts[i]: starts[k] - starts[i] + FS]
            i = j + 1
        if not np.all(np.isfinite(out)):
            raise DataError(self.bt.h5_path(s, t), "non-finite samples inside evaluation windows")
        return out


def make_featurizer(config, bt: BrainTreebank):
    """(featurize(wav [N, E, T], names, session) -> [N, ...], per_electrode: bool)."""
    model = str(config.model)
    if model == "linear_stft":
        st = config.stft
        return (lambda w, names, _: stft_abs(laplacian_within(w, names), int(st.nperseg),
                                             float(st.overlap), float(st.max_freq),
                                             float(st.min_freq))), True
    if model == "linear_raw":
        return (lambda w, names, _: w.astype(np.float32)), True
    if model not in ("brainbert_linear", "popt_linear", "popt_finetune"):
        raise UserError(f"config.model: {model!r} is not one of {', '.join(MODELS)}")
    from popt_jax.ieeg import brainbert as bb_lib
    from popt_jax.ieeg import preprocess as pp

    bb = _load_brainbert(config)

    def embed(w, names, _):
        x = pp.notch_filter(laplacian_within(w, names), FS).astype(np.float32)
        return np.asarray(bb_lib.brainbert_embed(bb, x, chunk=int(config.chunk) or None))

    if model == "brainbert_linear":
        return embed, True
    if model == "popt_finetune":  # tokens for the per-fold fine-tuning (neuroprobe_finetune)
        return embed, False
    popt = _load_popt(config)

    def popt_cls(w, names, session):
        import jax.numpy as jnp

        tokens = embed(w, names, session)
        loc = bt.localization(session[0]).select(names)
        coords = np.broadcast_to(loc.lip_int()[None], (len(tokens), len(names), 3))
        pad = np.zeros(tokens.shape[:2], bool)
        out = popt(jnp.asarray(tokens), jnp.asarray(pad), jnp.asarray(coords))
        return np.asarray(out.hidden[:, 0])

    return popt_cls, False


def _load_brainbert(config):
    from popt_jax.ieeg import convert, extract
    from popt_jax.ieeg.brainbert import BrainBERTConfig

    path = str(config.get("brainbert_checkpoint") or "")
    if path:
        return convert.load_brainbert(path)
    arch = {k: int(v) for k, v in (config.get("random_brainbert") or {}).items()}
    return extract.random_brainbert(BrainBERTConfig(**arch), seed=int(config.seed))


def _load_popt(config):
    from popt_jax.ieeg import convert
    from popt_jax.ieeg.popt import PopTClassifier

    path = str(config.get("popt_checkpoint") or "")
    if not path:
        raise UserError("config.popt_checkpoint: popt_linear needs a PopT checkpoint")
    model = convert.load_popt(path)
    return model.upstream if isinstance(model, PopTClassifier) else model


# --------------------------------------------------------------------------------------------
# Leak check
# --------------------------------------------------------------------------------------------


def trained_sessions(path: str | os.PathLike) -> list[str] | None:
    """Sessions (``btbankS_T``) a checkpoint was (pre)trained on, or None without a complete
    record (`popt_jax.ieeg.provenance.read_provenance`)."""
    found = provenance.read_provenance(path)
    return found[0]["trained_on"] if found and found[0]["complete"] else None


def leak_check(config, eval_sessions: Sequence[str]) -> str:
    """'' when no model input saw an evaluation session; else the override text (or raise).

    Inputs are the checkpoints the model is built from (`brainbert_checkpoint`,
    `popt_checkpoint`); their record is the ``trained_on`` their training job wrote
    (`popt_jax.ieeg.provenance`). A checkpoint without a complete record -- converted
    upstream weights, or one built on such weights -- is refused like a leaking one: the
    published BrainBERT and PopT were pretrained on Brain Treebank sessions that include
    Neuroprobe's evaluation sessions. `config.leak_override` (a reason) writes the submission
    anyway, with the reason and the problems in metadata.json's description.
    """
    inputs = [("brainbert_checkpoint", config.get("brainbert_checkpoint")),
              ("popt_checkpoint", config.get("popt_checkpoint"))]
    problems = []
    for field, path in inputs:
        if not path:
            continue
        found = provenance.read_provenance(path)
        if found is None:
            problems.append(f"{field} {path} has no record of its training sessions (no "
                            "provenance.json or results.json with 'trained_on'; e.g. converted "
                            "upstream weights, which were pretrained on Brain Treebank sessions "
                            "Neuroprobe evaluates)")
            continue
        rec, source = found
        overlap = sorted(set(rec["trained_on"]) & set(eval_sessions))
        if overlap:
            problems.append(f"{field} {path} was trained on evaluation session(s) "
                            f"{', '.join(overlap)} (per {source})")
        elif not rec["complete"]:
            unknown = [k for k, v in rec["sources"].items() if v.get("trained_on") is None]
            problems.append(f"{field} {path}: incomplete record in {source} (built on "
                            f"{', '.join(unknown) or 'inputs'} without a record)")
    if not problems:
        return ""
    override = str(config.get("leak_override") or "")
    if not override:
        raise TrainingError("neuroprobe leak check: " + "; ".join(problems) + ". Neuroprobe "
                            "forbids pretraining on its evaluation sessions; nothing was "
                            "written. To submit anyway, pass --config.leak_override='<reason>' "
                            "(written into metadata.json's description)")
    logging.warning("leak check overridden (%s): %s", override, "; ".join(problems))
    return f" Leak check overridden: {override} ({'; '.join(problems)})."


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def region_average(x: np.ndarray, regions: Sequence[str], common: Sequence[str]) -> np.ndarray:
    """[N, E, ...] -> [N, len(common), ...]: mean over the electrodes of each region."""
    regions = np.asarray(regions)
    return np.stack([x[:, regions == r].mean(axis=1) for r in common], axis=1)


def linear_readout(x_tr, y_tr, x_te, y_te, seed: int) -> dict[str, float]:
    """Neuroprobe's read-out: standardise, logistic regression; accuracy and ROC-AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    x_tr = x_tr.reshape(len(x_tr), -1)
    x_te = x_te.reshape(len(x_te), -1)
    scaler = StandardScaler()
    x_tr, x_te = scaler.fit_transform(x_tr), scaler.transform(x_te)
    clf = LogisticRegression(random_state=seed, max_iter=10000, tol=1e-3)
    if len(np.unique(y_tr)) < 2 or len(np.unique(y_te)) < 2:
        raise TrainingError("a Neuroprobe fold has a single class; ROC-AUC is undefined")
    clf.fit(x_tr, y_tr)
    return {"train_accuracy": float(clf.score(x_tr, y_tr)),
            "train_roc_auc": float(roc_auc_score(y_tr, clf.predict_proba(x_tr)[:, 1])),
            "test_accuracy": float(clf.score(x_te, y_te)),
            "test_roc_auc": float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1]))}


class _Features:
    """Session feature caches (a few sessions kept in memory at a time)."""

    def __init__(self, bt, featurize, keep: int = 3):
        self.bt, self.featurize, self.keep = bt, featurize, keep
        self.sessions: OrderedDict = OrderedDict()
        self.seconds = 0.0

    def get(self, session, electrodes, starts) -> np.ndarray:
        key = (session, tuple(electrodes))
        if key not in self.sessions:
            self.sessions[key] = SessionFeatures(self.bt, session, electrodes, self.featurize)
            while len(self.sessions) > self.keep:
                self.sessions.popitem(last=False)
        self.sessions.move_to_end(key)
        t0 = time.perf_counter()
        out = self.sessions[key](starts)
        self.seconds += time.perf_counter() - t0
        return out


def evaluate_fold(fold: dict, feats: _Features, bt: BrainTreebank, per_electrode: bool,
                  split: str, seed: int, readout=None) -> dict[str, float]:
    """One fold's fields; `readout(x_tr, y_tr, x_te, y_te, fold)` replaces the linear
    read-out (PopT fine-tuning)."""
    x_tr = feats.get(fold["train_session"], fold["train_electrodes"], fold["train"][0])
    x_te = feats.get(fold["test_session"], fold["test_electrodes"], fold["test"][0])
    if per_electrode and split == "cross_subject":
        r_tr = bt.localization(fold["train_session"][0]).select(fold["train_electrodes"]).regions
        r_te = bt.localization(fold["test_session"][0]).select(fold["test_electrodes"]).regions
        common = sorted(set(r_tr) & set(r_te))
        if not common:
            raise DataError(bt.root, f"cross-subject: btbank{fold['train_session'][0]} and "
                            f"btbank{fold['test_session'][0]} share no brain region")
        x_tr, x_te = region_average(x_tr, r_tr, common), region_average(x_te, r_te, common)
    if readout is not None:
        return readout(x_tr, fold["train"][1], x_te, fold["test"][1], fold)
    return linear_readout(x_tr, fold["train"][1], x_te, fold["test"][1], seed)


def run_evaluations(config, nprobe: Neuroprobe, bt: BrainTreebank) -> dict[str, dict]:
    """{split: {task: {session: [fold results]}}} for every requested evaluation."""
    nano = str(config.subset) == "nano"
    featurize, per_electrode = make_featurizer(config, bt)
    feats = _Features(bt, featurize)
    readout = None
    if str(config.model) == "popt_finetune":
        from popt_jax.ieeg.neuroprobe_finetune import fold_readout

        readout = fold_readout(config, bt)
    plan = []
    for split in _splits(config, nano):
        for sid, tid in nprobe.sessions(nano):
            if config.get("sessions") and f"btbank{sid}_{tid}" not in config.sessions:
                continue
            if split == "cross_subject" and sid == int(nprobe.config.DS_DM_TRAIN_SUBJECT_ID):
                continue  # the Cross-Subject training subject is not evaluated (SUBMIT.md)
            plan += [(split, sid, tid, task) for task in config.tasks]
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for i, (split, sid, tid, task) in enumerate(plan):
        folds = nprobe.folds(split, sid, tid, task, nano)
        for k, fold in enumerate(folds):  # names the fold (seeds the per-fold fine-tuning)
            fold["name"] = f"{split}/btbank{sid}_{tid}/{task}/{k}"
        scores = [evaluate_fold(f, feats, bt, per_electrode, split, int(config.seed), readout)
                  for f in folds]
        results.setdefault(split, {}).setdefault(task, {})[f"btbank{sid}_{tid}"] = scores
        done = i + 1
        rate = done / max(time.perf_counter() - t0, 1e-9)
        logging.info("[%d/%d] %s btbank%d_%d %s: test AUROC %s | %.2f evals/s, ETA %.0fs "
                     "(features %.1fs so far)", done, len(plan), SPLITS[split], sid, tid, task,
                     " ".join(f"{s['test_roc_auc']:.3f}" for s in scores), rate,
                     (len(plan) - done) / rate, feats.seconds)
    return results


def _splits(config, nano: bool) -> list[str]:
    wanted = list(SPLITS) if str(config.split) == "all" else [str(config.split)]
    if nano and "cross_session" in wanted:
        logging.info("Cross-Session is not defined for Neuroprobe Nano (the package evaluates "
                     "it on Lite only): skipped")
        wanted.remove("cross_session")
    return wanted


# --------------------------------------------------------------------------------------------
# The submission folder, summary and figure
# --------------------------------------------------------------------------------------------


def submission_name(config, today: dt.date | None = None) -> str:
    """``MODEL_First_Last_D_M_YYYY`` (SUBMIT.md)."""
    first, _, last = str(config.author).strip().partition(" ")
    if not first or not last.strip():
        raise UserError(f"config.author: {config.author!r} must be 'First Last'")
    d = today or dt.date.today()
    model = "-".join(str(config.model_name).split())
    return f"{model}_{first}_{'-'.join(last.split())}_{d.day:02d}_{d.month:02d}_{d.year}"


def metadata(config, description_suffix: str = "") -> dict[str, Any]:
    meta = {"model_name": str(config.model_name),
            "description": str(config.description) + description_suffix,
            "author": str(config.author), "organization": str(config.organization),
            "organization_url": str(config.organization_url),
            "timestamp": int(config.get("timestamp") or time.time())}
    if config.get("logo_url"):
        meta["logo_url"] = str(config.logo_url)
    return meta


ATTESTATION = """I attest that the training and test splits of Neuroprobe were respected and taken from the `neuroprobe/train_test_splits.py` function.
SIGN **Full Name Of Submitting Author**

I attest that the submitted model was not pretrained on any data that intersects with any data of Neuroprobe.
SIGN **Full Name Of Submitting Author**
[If the data intersects, please explain here]
"""


def write_submission(out: Path, config, results: dict, meta: dict[str, Any]) -> Path:
    """Writes the leaderboard folder atomically (a ``.tmp`` folder renamed when complete)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split, tasks in results.items():
        folder = tmp / SPLITS[split]
        folder.mkdir()
        for task, sessions in tasks.items():
            body = {**{k: meta[k] for k in ("model_name", "description", "author",
                                             "organization", "organization_url", "timestamp")},
                    "evaluation_results": {
                        s: {"population": {"one_second_after_onset": {
                            "time_bin_start": 0.0, "time_bin_end": 1.0, "folds": folds}}}
                        for s, folds in sessions.items()}}
            (folder / f"population_{task}.json").write_text(json.dumps(body, indent=1))
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
    bib = str(config.get("publication_bib") or "")
    (tmp / "PUBLICATION.bib").write_text(Path(bib).read_text() if bib else
                                         _BIB[str(config.model)])
    (tmp / "ATTESTATION.txt").write_text(ATTESTATION)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def summarize(results: dict) -> list[dict[str, Any]]:
    rows = []
    for split, tasks in results.items():
        for task, sessions in tasks.items():
            aucs = [np.mean([f["test_roc_auc"] for f in folds]) for folds in sessions.values()]
            accs = [np.mean([f["test_accuracy"] for f in folds]) for folds in sessions.values()]
            rows.append({"split": SPLITS[split], "task": task, "n_sessions": len(aucs),
                         "test_roc_auc": float(np.mean(aucs)),
                         "test_roc_auc_sem": float(np.std(aucs) / np.sqrt(max(len(aucs), 1))),
                         "test_accuracy": float(np.mean(accs))})
    return rows


def plot_summary(rows: list[dict], path: Path, model_name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in SPLITS.values() if any(r["split"] == s for r in rows)]
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 0.35 * len(tasks) + 3),
                             squeeze=False, sharey=True)
    for ax, split in zip(axes[0], splits, strict=True):
        vals = {r["task"]: r for r in rows if r["split"] == split}
        y = np.arange(len(tasks))
        ax.barh(y, [vals[t]["test_roc_auc"] for t in tasks], xerr=[vals[t]["test_roc_auc_sem"]
                for t in tasks], color="tab:blue", label=model_name)
        mean = np.mean([vals[t]["test_roc_auc"] for t in tasks])
        ax.axvline(mean, color="tab:blue", ls="-", lw=1, label=f"{model_name} mean {mean:.3f}")
        if split == "Within-Session":
            for k, (name, v) in enumerate(PUBLISHED_WITHIN_SESSION.items()):
                ax.axvline(v, color=f"C{k + 1}", ls="--", lw=1, label=f"{name} {v:.3f}")
        ax.axvline(0.5, color="grey", lw=0.8)
        ax.set_yticks(y, tasks)
        ax.set_xlim(0.3, 1.0)
        ax.set_title(split)
        ax.set_xlabel("test AUROC")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def neuroprobe_job(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """The `neuroprobe` job (see the module docstring)."""
    bad = sorted(set(config.tasks) - set(TASKS))
    if bad:
        raise UserError(f"config.tasks: unknown task(s) {', '.join(bad)}; Neuroprobe has "
                        f"{', '.join(TASKS)}")
    if str(config.split) not in ("all", *SPLITS):
        raise UserError(f"config.split: {config.split!r} is not 'all' or one of {list(SPLITS)}")
    if str(config.subset) not in ("lite", "nano"):
        raise UserError(f"config.subset: {config.subset!r} is not 'lite' or 'nano'")
    workdir = Path(workdir)
    root = Path(config.root) if config.get("root") else _synthetic_root(config, workdir)
    nprobe = Neuroprobe(root)
    bt = BrainTreebank(root)
    eval_sessions = [f"btbank{s}_{t}" for s, t in nprobe.sessions(False)]
    suffix = leak_check(config, eval_sessions)  # before any work: nothing written on refusal
    results = run_evaluations(config, nprobe, bt)
    workdir.mkdir(parents=True, exist_ok=True)
    out = write_submission(workdir / submission_name(config), config, results,
                           metadata(config, suffix))
    rows = summarize(results)
    with open(workdir / "summary.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(workdir / "summary.csv.tmp", workdir / "summary.csv")
    png = plot_summary(rows, workdir / "summary.png", str(config.model_name))
    summary = {"submission": str(out), "rows": rows, "figure": str(png),
               "model": str(config.model), "subset": str(config.subset),
               "config": config.to_dict() if hasattr(config, "to_dict") else dict(config)}
    atomic_json(workdir / "summary.json", summary)
    for split in results:
        mean = np.mean([r["test_roc_auc"] for r in rows if r["split"] == SPLITS[split]])
        print(f"{SPLITS[split]}: mean test AUROC {mean:.3f} over {len(results[split])} tasks")
    logging.info("submission folder: %s", out)
    return summary


def _synthetic_root(config, workdir: Path) -> Path:
    """The built-in default: a synthetic Nano stand-in, written once under the workdir."""
    from popt_jax.ieeg.neuroprobe_synthetic import write_neuroprobe_synthetic

    root = workdir / "synthetic_neuroprobe"
    if not (root / "synthetic_truth.json").exists():
        logging.info("no config.root: writing the synthetic Neuroprobe stand-in to %s", root)
        tmp = workdir / "synthetic_neuroprobe.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write_neuroprobe_synthetic(tmp, seconds=float(config.synthetic_seconds),
                                   seed=int(config.seed))
        os.replace(tmp, root)
    return root
