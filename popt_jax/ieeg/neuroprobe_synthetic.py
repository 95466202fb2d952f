"""A synthetic stand-in for the Neuroprobe sessions of the Brain Treebank.

`write_neuroprobe_synthetic(root)` writes short recordings for the Neuroprobe sessions
(default: the six Nano sessions btbank1_1, btbank2_4, btbank3_1, btbank4_0, btbank7_1,
btbank10_1) in the real Brain Treebank layout, with everything the 15 Neuroprobe tasks read:

* ``sub_{S}_trial{TTT}.h5`` (``data/electrode_{i}``), ``electrode_labels/``, ``localization/
  sub_{S}/depth-wm.csv`` (L/I/P + Desikan-Killiany regions), ``localization/
  elec_coords_full.csv`` (cortical X/Y/Z), ``corrupted_elec.json``, ``subject_metadata/``;
  the electrode names are Neuroprobe's own Nano (or Lite) electrodes of each subject, so the
  package's electrode subsets apply unchanged;
* ``transcripts/<movie>/features.csv`` with the word columns the tasks use (sentence,
  is_onset, idx_in_sentence, bin_head, pos, word_length, gpt2_surprisal, rms, delta_rms) and
  per-frame movie features (face_num, mean_pixel_brightness, max_global_magnitude,
  max_vector_magnitude); movies are named as Neuroprobe maps the sessions;
* ``neuroprobe_alignment/``: the per-session ``subject{S}_trial{T}_words_df.csv`` and
  ``..._nonverbal_df.csv`` (sample index of each word onset and of each non-speech window)
  and ``pitch/<movie>_pitch_volume_features.json`` -- the tables the `neuroprobe` package
  ships for the real sessions. `popt_jax.ieeg.neuroprobe` points the package at these when
  they exist, so the package's own splits and labels run on the stand-in.

Planted structure (``plant=True``), on a third of the electrodes each, 0-0.5 s after onsets:
a 70-150 Hz burst at every word onset scaled by the word's volume (``speech``, ``volume``), an
extra one at sentence onsets (``onset``), and a 8-12 Hz burst scaled by the frame brightness
(``frame_brightness``). The other tasks carry no planted signal and should score near 0.5.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import h5py
import numpy as np

from popt_jax.ieeg.braintreebank import split_electrode_name

__all__ = ["write_neuroprobe_synthetic", "NANO_SESSIONS", "ALIGNMENT_DIR"]

NANO_SESSIONS = ((1, 1), (2, 4), (3, 1), (4, 0), (7, 1), (10, 1))
ALIGNMENT_DIR = "neuroprobe_alignment"
_POS = ("NOUN", "VERB", "DET", "PRON", "ADJ", "ADV", "ADP")
_REGIONS = ("ctx-lh-superiortemporal", "ctx-lh-middletemporal", "ctx-lh-insula",
            "ctx-lh-parsopercularis", "Left-Hippocampus")


def _neuroprobe_config():
    os.environ.setdefault("ROOT_DIR_BRAINTREEBANK", "/nonexistent")
    import neuroprobe.config as config  # the electrode lists and movie names are the package's

    return config


def _write_csv(path: Path, header: list[str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _burst(n: int, fs: float, band: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """A 0.5 s Hann-windowed band-limited burst (unit peak envelope)."""
    length = int(0.5 * fs)
    t = np.arange(length) / fs
    f = rng.uniform(*band, size=4)
    wave = np.sum(np.sin(2 * np.pi * f[:, None] * t + rng.uniform(0, 2 * np.pi, (4, 1))), 0)
    return (np.hanning(length) * wave / 2.0)[:n]


def _words(rng: np.random.Generator, seconds: float) -> list[dict]:
    """Sentences of 2-9 words separated by pauses, within [2 s, seconds - 3 s)."""
    words, t, sentence = [], 2.0, 0
    while True:
        n = int(rng.integers(2, 10))
        if t + n * 0.45 > seconds - 3.0:
            break
        for i in range(n):
            dur = float(rng.uniform(0.15, 0.35))
            words.append(dict(start=t, end=t + dur, sentence=sentence, idx_in_sentence=i,
                              is_onset=int(i == 0), pos=_POS[int(rng.integers(len(_POS)))],
                              bin_head=int(rng.integers(2)), word_length=float(rng.integers(1, 12)),
                              gpt2_surprisal=float(rng.gamma(2.0, 2.0)),
                              rms=float(rng.lognormal(-3.0, 0.6))))
            t += dur + float(rng.uniform(0.05, 0.25))
        sentence += 1
        t += float(rng.uniform(1.5, 6.0))
    for i, w in enumerate(words):
        w["delta_rms"] = w["rms"] - (words[i - 1]["rms"] if i else 0.0)
    return words


def write_neuroprobe_synthetic(root: str | os.PathLike, *, sessions=NANO_SESSIONS,
                               seconds: float = 150.0, fs: float = 2048.0, seed: int = 0,
                               plant: bool = True, electrodes: str = "nano") -> Path:
    """Writes the stand-in tree under `root` (see the module docstring); returns `root`."""
    cfg = _neuroprobe_config()
    table = cfg.NEUROPROBE_NANO_ELECTRODES if electrodes == "nano" else \
        cfg.NEUROPROBE_LITE_ELECTRODES
    root = Path(root)
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    coords_rows, corrupted = [], {}
    subjects = sorted({s for s, _ in sessions})
    names_of = {}
    for s in subjects:
        names = list(table[f"btbank{s}"])
        names_of[s] = names
        sid = f"sub_{s}"
        corrupted[sid] = []
        (root / "electrode_labels" / sid).mkdir(parents=True, exist_ok=True)
        (root / "electrode_labels" / sid / "electrode_labels.json").write_text(json.dumps(names))
        loc_rows, shafts = [], {}
        for name in names:
            stem, _ = split_electrode_name(name) or (name, 0)
            # One region per shaft, cycling, so every subject covers the same regions.
            region = _REGIONS[shafts.setdefault(stem, len(shafts)) % len(_REGIONS)]
            lip = [int(rng.integers(1, 200)), int(rng.integers(1, 200)), int(rng.integers(1, 200))]
            loc_rows.append([name, *lip, region])
            coords_rows.append([sid, name, *rng.normal(0, 30, 3).round(3)])
        _write_csv(root / "localization" / sid / "depth-wm.csv",
                   ["Electrode", "L", "I", "P", "DesikanKilliany"], loc_rows)
    _write_csv(root / "localization" / "elec_coords_full.csv",
               ["Subject", "Electrode", "X", "Y", "Z"], coords_rows)
    (root / "corrupted_elec.json").write_text(json.dumps(corrupted))
    align = root / ALIGNMENT_DIR
    (align / "pitch").mkdir(parents=True, exist_ok=True)
    truth = {}
    for s, t in sessions:
        movie = cfg.BRAINTREEBANK_SUBJECT_TRIAL_MOVIE_NAME_MAPPING[f"btbank{s}_{t}"]
        words = _words(rng, seconds)
        frames_s = np.arange(0.0, seconds, 1.0 / 24)  # per-frame movie features at 24 fps
        brightness = np.convolve(rng.normal(0, 1, len(frames_s)), np.ones(48) / 48, "same")
        faces = (np.convolve(rng.normal(0, 1, len(frames_s)), np.ones(96) / 96, "same") > 0.05)
        gflow, lflow = rng.gamma(2, 1, len(frames_s)), rng.gamma(2, 1, len(frames_s))
        for w in words:
            k = min(int(w["start"] * 24), len(frames_s) - 1)
            w.update(face_num=int(faces[k] * rng.integers(1, 3)),
                     mean_pixel_brightness=float(brightness[k]),
                     max_global_magnitude=float(gflow[k]), max_vector_magnitude=float(lflow[k]))
        cols = ["text", "start", "end", "sentence", "is_onset", "idx_in_sentence", "pos",
                "bin_head", "word_length", "gpt2_surprisal", "rms", "delta_rms", "face_num",
                "mean_pixel_brightness", "max_global_magnitude", "max_vector_magnitude"]
        _write_csv(root / "transcripts" / movie / "features.csv", [""] + cols,
                   [[i, "w", *[w[c] for c in cols[1:]]] for i, w in enumerate(words)])
        onset = np.array([int(round(w["start"] * fs)) for w in words])
        _write_csv(align / f"subject{s}_trial{t}_words_df.csv",
                   ["original_index", "est_idx", "est_end_idx", "start", "end", "context",
                    "char_in_sentence", "full_word"],
                   [[i, float(onset[i]), float(int(round(w["end"] * fs))), w["start"], w["end"],
                     "", 0, "w"] for i, w in enumerate(words)])
        # Non-speech windows: 1 s windows every 0.5 s in gaps >= 2 s after the last word end.
        nonverbal, ends = [], [w["end"] for w in words]
        starts = [w["start"] for w in words] + [seconds]
        for a, b in zip([0.0] + ends, starts, strict=True):
            t0 = a + 2.0
            while t0 + 1.0 <= b and t0 + 1.0 < seconds:
                nonverbal.append([t0, t0 + 1.0, int(t0 * fs), int((t0 + 1.0) * fs)])
                t0 += 0.5
        _write_csv(align / f"subject{s}_trial{t}_nonverbal_df.csv",
                   ["start", "end", "est_idx", "est_end_idx"], nonverbal)
        pitch = {str(w["start"]): {"word": "w", "start": w["start"], "end": w["end"],
                                   **{k: float(rng.lognormal(5, 0.3)) for k in (
                                       "enhanced_pitch", "enhanced_volume", "raw_pitch",
                                       "raw_volume", "delta_enhanced_pitch",
                                       "delta_enhanced_volume", "delta_raw_pitch",
                                       "delta_raw_volume")}} for w in words}
        (align / "pitch" / f"{movie}_pitch_volume_features.json").write_text(json.dumps(pitch))

        names = names_of[s]
        e = len(names)
        # Background: a detrended random walk (slow drift) plus white noise.
        data = np.cumsum(rng.normal(0, 1, (e, n)).astype(np.float32), axis=1)
        data = (data - np.linspace(0, 1, n, dtype=np.float32) * data[:, -1:]) * 0.05
        data += rng.normal(0, 1.0, (e, n)).astype(np.float32)
        groups = np.arange(e) % 3
        if plant:
            rms = np.array([w["rms"] for w in words])
            rms_z = (rms - rms.mean()) / (rms.std() + 1e-9)
            for i, w in enumerate(words):
                a = onset[i]
                m = min(int(0.5 * fs), n - a)
                for ch in np.where(groups == 0)[0]:  # speech + volume
                    data[ch, a:a + m] += 3.0 * (1.0 + 0.8 * rms_z[i]) * _burst(m, fs, (70, 150), rng)
                if w["is_onset"]:
                    for ch in np.where(groups == 1)[0]:  # sentence onset
                        data[ch, a:a + m] += 4.0 * _burst(m, fs, (70, 150), rng)
                for ch in np.where(groups == 2)[0]:  # frame brightness
                    data[ch, a:a + m] += 3.0 * (1.5 + w["mean_pixel_brightness"] * 8) \
                        * _burst(m, fs, (8, 12), rng)
        sid, tid = f"sub_{s}", f"trial{t:03d}"
        with h5py.File(root / f"{sid}_{tid}.h5", "w") as f:  # at the root, as Neuroprobe reads
            g = f.create_group("data")
            for i in range(e):
                g.create_dataset(f"electrode_{i}", data=data[i])
        meta = root / "subject_metadata" / f"{sid}_{tid}_metadata.json"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"filename": movie, "title": movie}))
        truth[f"btbank{s}_{t}"] = {"movie": movie, "n_words": len(words),
                                   "n_nonverbal": len(nonverbal)}
    (root / "synthetic_truth.json").write_text(json.dumps(
        {"neuroprobe_sessions": truth, "planted_tasks": ["onset", "speech", "volume",
                                                         "frame_brightness"] if plant else []},
        indent=1))
    return root
