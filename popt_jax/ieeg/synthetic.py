"""A small synthetic Brain Treebank, written in the real on-disk layout.

`write_synthetic_braintreebank` produces a tree that `popt_jax.data.braintreebank` and the
upstream PopT readers both accept: per-trial h5 files with ``data/electrode_{i}``, cleaned-name
JSON labels (with non-localized trigger/EKG channels, as in the real data), ``depth-wm.csv``
with L/I/P coordinates and Desikan-Killiany regions, trigger timings, movie metadata, a
``features.csv`` transcript per movie, a clean_laplacian-style electrode selection with the
BrainBERT-style ``corrupted_elec.json`` it derives from, and upstream-style trial selections
(``trial_selections/pretrain_split_trials.json``, ``test_trials.json``).

The signals are 1/f background (shared within a shaft, so re-referencing matters) plus 60 Hz
line noise and harmonics (so the notches matter). With ``plant=True`` three electrode groups
carry stimulus-locked structure that the four decoding tasks can find:

* ``speech``: a 70-150 Hz burst at every word onset, amplitude proportional to the word's
  ``rms`` (volume), stronger at sentence onsets;
* ``onset``: an extra 70-150 Hz burst at sentence onsets only;
* ``pitch``: a 20-30 Hz (beta) burst at every word onset, amplitude proportional to its
  ``pitch``.

Bursts ride on an independent carrier per electrode, so a Laplacian does not cancel them.
They start 0.1 s before the onset and peak about 0.1 s after it: BrainBERT z-scores each
5 s window and pools the frames within about 0.2 s of the window centre, so only a response
that differs from the rest of the window right there survives into the embeddings.
``plant=False`` draws exactly the same random numbers and simply does not add the planted
components. The groups and timing constants are written to ``synthetic_truth.json``.

With ``latent_state=True`` (the default) every recording also carries a slowly varying,
spatially coherent brain state, the structure PopT's pretraining objectives feed on: three
Gaussian-process log-envelopes (correlation time about half a second, so windows 0.2 s apart
share their state and windows seconds apart do not), each scaling a group of rhythms
(`STATE_RHYTHMS`: 5-15, 35-55 and 160-195 Hz, away from the planted bands and the line
harmonics) in every electrode of the subject: the same envelopes everywhere, a random phase
per electrode and rhythm (so a Laplacian does not cancel them) and a per-electrode gain.
What each step of the front end leaves of it:

* Laplacian re-referencing removes what shaft neighbours share in phase; the rhythms' phases
  differ per electrode, so their (envelope-scaled) amplitude survives;
* BrainBERT z-scores each frequency row over the 5 s window, which removes the state's level
  over the window but keeps its course within it; the embedding pools the ~0.25 s around the
  centre, so it sees whether the envelopes are up or down there relative to the window;
* sinusoids, unlike band-limited noise, have a short-time magnitude that is the envelope
  itself, the same in every electrode (noise adds an independent Rayleigh fluctuation per
  electrode and frame), and the rhythms span about half of BrainBERT's 40 rows, so the state
  is about half of the embeddings' variance over windows and electrodes.

Consecutive pretraining windows (0.2 s apart: upstream's "next" segment) therefore look alike
across electrodes, and a token taken from another time disagrees with the rest of its window.
The state has its own random stream: ``latent_state=False`` writes bit for bit the tree an
earlier version wrote.

The state's rhythms, envelope bandwidth and amplitude are arguments (`state_rhythms`,
`state_cutoff_hz`, `state_amplitude`; the defaults above write the same tree as before).
BrainBERT pretraining uses `BROADBAND_STATE` instead: one envelope shared by 17 rhythms from
5 to 195 Hz (every BrainBERT row but the line-noise notches), 150 units strong (5x the
default) with ~0.16 s correlation time (cutoff 1 Hz). That is structure at the time and
frequency scale of BrainBERT's masks (time spans of 1-5 frames, 24-120 ms; frequency spans of
1-2 rows): a masked frame sits on a curve that both of its sides pin down (interpolation
beats copying either side), and a masked row moves with every other row of its frame (the
shared envelope), which copying along time cannot see.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
from scipy import fft as sp_fft

__all__ = ["write_synthetic_braintreebank", "SPEECH_BAND", "PITCH_BAND", "STATE_RHYTHMS",
           "BROADBAND_STATE"]

SPEECH_BAND = (70.0, 150.0)
PITCH_BAND = (20.0, 30.0)
# Latent-state rhythms (Hz), one independent envelope per group: clear of the planted bands
# (20-30, 70-150 Hz) and of the line harmonics, >= 10 Hz apart so no two share a BrainBERT
# STFT row (5.12 Hz bins, Hann main lobe 10.24 Hz) and beat there.
STATE_RHYTHMS = ((5.0, 15.0), (35.0, 45.0, 55.0), (160.0, 170.0, 195.0))
STATE_CUTOFF_HZ = 0.3  # Gaussian spectral width of the log-envelopes (~0.5 s correlation)
STATE_LOG_STD = 1.0  # std of each log-envelope
STATE_AMPLITUDE = 30.0  # envelope scale (the background is 30 x unit-variance 1/f noise)
# BrainBERT pretraining's state (module docstring): one group, all rows but the notches (>= 5
# Hz from 60/120/180 so the notch filters leave them), faster and stronger than the default.
BROADBAND_STATE = {
    "state_rhythms": ((5.0, 15.0, 25.0, 35.0, 45.0, 55.0, 75.0, 85.0, 95.0, 105.0, 115.0,
                       135.0, 145.0, 155.0, 165.0, 175.0, 195.0),),
    "state_cutoff_hz": 1.0,
    "state_amplitude": 150.0,
}
SYNTHETIC_FS = 2048.0  # sampling rate of the written recordings (Hz)
_LINE = {60: 40.0, 120: 8.0, 180: 12.0, 240: 2.0, 300: 4.0, 360: 1.0}  # amplitude per harmonic
_TRIGGER_EVERY_S = 1.0
_VOCAB = [
    ("the", "DET"), ("a", "DET"), ("this", "DET"), ("man", "NOUN"), ("city", "NOUN"),
    ("car", "NOUN"), ("night", "NOUN"), ("friend", "NOUN"), ("money", "NOUN"), ("door", "NOUN"),
    ("run", "VERB"), ("know", "VERB"), ("take", "VERB"), ("said", "VERB"), ("look", "VERB"),
    ("go", "VERB"), ("we", "PRON"), ("you", "PRON"), ("he", "PRON"), ("it", "PRON"),
    ("in", "ADP"), ("on", "ADP"), ("with", "ADP"), ("now", "ADV"), ("never", "ADV"),
    ("big", "ADJ"), ("dark", "ADJ"), ("good", "ADJ"), ("and", "CCONJ"), ("but", "CCONJ"),
]
_CORTEX = {
    "T": ("superiortemporal", "middletemporal", "inferiortemporal"),
    "F": ("rostralmiddlefrontal", "superiorfrontal", "parsopercularis"),
    "O": ("lateraloccipital", "lingual", "cuneus"),
    "P": ("supramarginal", "inferiorparietal", "superiorparietal"),
}
_DEEP = {"T": ("Hippocampus", "Amygdala"), "F": ("Caudate",), "O": ("Cerebral-White-Matter",),
         "P": ("Putamen",)}


# --------------------------------------------------------------------------- random pieces


def _colored_noise(rng: np.random.Generator, n_ch: int, n_t: int, fs: float,
                   band: tuple[float, float] | None = None) -> np.ndarray:
    """Unit-variance Gaussian noise [n_ch, n_t] (float32): 1/f when ``band`` is None, else
    flat within ``band``. Drawn directly in the frequency domain (one inverse FFT) and scaled
    by its exact expected variance, which keeps writing a 3-minute trial to about a second.
    """
    f = np.fft.rfftfreq(n_t, 1.0 / fs)
    if band is None:
        gain = 1.0 / np.sqrt(np.maximum(f, 0.5))
    else:
        gain = ((f >= band[0]) & (f <= band[1])).astype(np.float64)
    gain[0] = 0.0  # no DC offset
    if n_t % 2 == 0:
        gain[-1] = 0.0  # a real-only Nyquist bin would need its own variance term
    var = 4.0 * np.sum(gain**2) / n_t**2  # of irfft(gain * (a + ib)), a, b ~ N(0, 1)
    spec = rng.standard_normal((n_ch, len(f)), dtype=np.float32) \
        + 1j * rng.standard_normal((n_ch, len(f)), dtype=np.float32)
    spec *= (gain / np.sqrt(var)).astype(np.float32)
    return sp_fft.irfft(spec, n=n_t, axis=-1, workers=-1).astype(np.float32, copy=False)


def _transcript(rng: np.random.Generator, movie_s: float) -> dict[str, list]:
    """Words in speech stretches (1-3 sentences) separated by 3-8 s silences."""
    cols: dict[str, list] = {k: [] for k in (
        "text", "start", "end", "pos", "sentence", "sentence_idx", "idx_in_sentence",
        "is_onset", "is_offset", "rms", "pitch", "speaker")}
    speakers = [(110.0, 0.05), (205.0, 0.12), (160.0, 0.08)]  # (pitch Hz, loudness)
    t, n_sent = rng.uniform(0.5, 2.0), 0
    while t < movie_s - 2.0:
        for _ in range(int(rng.integers(1, 4))):
            spk = int(rng.integers(len(speakers)))
            base_pitch, base_rms = speakers[spk]
            loud = base_rms * rng.lognormal(0.0, 0.35)
            words = [_VOCAB[i] for i in rng.integers(len(_VOCAB), size=int(rng.integers(3, 11)))]
            sentence = " ".join(w for w, _ in words)
            for j, (text, pos) in enumerate(words):
                dur = rng.uniform(0.15, 0.45)
                if t + dur > movie_s - 0.5:
                    break
                cols["text"].append(text)
                cols["start"].append(t)
                cols["end"].append(t + dur)
                cols["pos"].append(pos)
                cols["sentence"].append(sentence)
                cols["sentence_idx"].append(n_sent)
                cols["idx_in_sentence"].append(j)
                cols["is_onset"].append(j == 0)
                cols["is_offset"].append(j == len(words) - 1)
                cols["rms"].append(loud * rng.lognormal(0.0, 0.25))
                cols["pitch"].append(base_pitch * (1.0 + 0.1 * rng.standard_normal()))
                cols["speaker"].append(f"speaker_{spk}")
                t += dur + rng.uniform(0.03, 0.15)
            n_sent += 1
            t += rng.uniform(0.3, 1.2)
        t += rng.uniform(3.0, 8.0)
    return cols


def _shafts(rng: np.random.Generator, n_shafts: int, contacts: tuple[int, int]) -> list[dict]:
    """Shaft stems, contact counts, LIP coordinates and regions (contact 1 is the deepest)."""
    shafts, stems = [], set()
    while len(shafts) < n_shafts:
        hemi = "L" if rng.random() < 0.5 else "R"
        lobe = "TFOP"[int(rng.integers(4))]
        stem = f"{hemi}{lobe}{int(rng.integers(1, 4))}{'abcd'[int(rng.integers(4))]}"
        if rng.random() < 0.4:
            stem += "I" + "abc"[int(rng.integers(3))]
        if stem in stems:
            continue
        stems.add(stem)
        n = int(rng.integers(contacts[0], contacts[1] + 1))
        side = 1.0 if hemi == "L" else -1.0
        tip = np.array([128.0 + side * rng.uniform(10, 25), rng.uniform(90, 160),
                        rng.uniform(60, 190)])
        direction = np.array([side, rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)])
        direction /= np.linalg.norm(direction)
        lip = tip + np.arange(n)[:, None] * 3.5 * direction + rng.normal(0, 0.3, (n, 3))
        lip = np.clip(np.round(lip, 2), 1.0, 249.0)
        h = "lh" if hemi == "L" else "rh"
        hemi_word = "Left" if hemi == "L" else "Right"
        regions = []
        for k in range(n):
            depth = k / max(n - 1, 1)
            if depth < 0.3:
                deep = _DEEP[lobe]
                regions.append(f"{hemi_word}-{deep[int(rng.integers(len(deep)))]}")
            elif depth < 0.6:
                regions.append(f"{hemi_word}-Cerebral-White-Matter")
            else:
                ctx = _CORTEX[lobe]
                regions.append(f"ctx-{h}-{ctx[int(rng.integers(len(ctx)))]}")
        shafts.append({"stem": stem, "hemi": hemi, "n": n, "lip": lip, "regions": regions})
    return shafts


def _add_bursts(env: np.ndarray, centres_s: np.ndarray, amps: np.ndarray, fs: float,
                offset_s: float, length_s: float) -> None:
    """Add a Hann bump of height ``amps[i]`` at ``centres_s[i] + offset_s`` to ``env``."""
    n = max(int(length_s * fs), 2)
    bump = np.hanning(n)
    for t, a in zip(centres_s, amps, strict=True):
        s = int(round((t + offset_s) * fs))
        a0, b0 = max(s, 0), min(s + n, len(env))
        if b0 > a0:
            env[a0:b0] += a * bump[a0 - s:b0 - s]


def _to_sample(movie_time: np.ndarray, lead: float, drift: float, fs: float) -> np.ndarray:
    """True (continuous) recording sample of a movie time: a lead-in plus a slow clock drift."""
    return lead * fs + np.asarray(movie_time) * fs * (1.0 + drift)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _latent_state(rng: np.random.Generator, n_e: int, n_t: int, fs: float,
                  rhythms=STATE_RHYTHMS, cutoff_hz: float = STATE_CUTOFF_HZ,
                  amplitude: float = STATE_AMPLITUDE) -> np.ndarray:
    """The latent-state component [n_e, n_t] (float32) of one recording (module docstring).

    Per group of `rhythms`: a smooth Gaussian log-envelope shared by every electrode
    (drawn at 64 Hz and interpolated) scales sinusoids at the group's frequencies, each with
    a random phase per electrode, times a per-electrode gain in [0.7, 1.3]. Sinusoids rather
    than band-limited noise: their short-time magnitude is the envelope itself, so every
    electrode shows the same course (noise carriers add an independent Rayleigh fluctuation
    per electrode and frame); random phases keep a Laplacian from cancelling them.
    """
    out = np.zeros((n_e, n_t), np.float32)
    rate = 64.0
    n_slow = int(np.ceil(n_t / fs * rate)) + 2
    f = np.fft.rfftfreq(n_slow, 1.0 / rate)
    gain = np.exp(-0.5 * (f / cutoff_hz) ** 2)
    gain[0] = 0.0
    t_slow, t = np.arange(n_slow) / rate, np.arange(n_t) / fs
    for freqs in rhythms:
        spec = gain * (rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f)))
        z = np.fft.irfft(spec, n=n_slow)
        z *= STATE_LOG_STD / max(float(z.std()), 1e-12)
        env = amplitude * np.exp(np.interp(t, t_slow, z) - 0.5 * STATE_LOG_STD**2)
        phases = rng.uniform(0.0, 2.0 * np.pi, (n_e, len(freqs)))
        gains = rng.uniform(0.7, 1.3, n_e)
        # sin(wt + p) = cos(p) sin(wt) + sin(p) cos(wt): one matrix product per group; the
        # sqrt(2 / k) makes the sum of the group's k sinusoids unit-variance.
        w = 2 * np.pi * np.asarray(freqs)[:, None] * t[None, :]
        basis = np.concatenate([np.sin(w), np.cos(w)]).astype(np.float32)
        coef = np.sqrt(2.0 / len(freqs)) * np.concatenate([np.cos(phases), np.sin(phases)], 1)
        carrier = coef.astype(np.float32) @ basis
        carrier *= (gains[:, None] * env[None, :]).astype(np.float32)
        out += carrier
    return out


# --------------------------------------------------------------------------- the writer


def write_synthetic_braintreebank(
    root: str | Path, *, n_subjects: int = 2, trials_per_subject: int = 1,
    duration_s: float = 180.0, n_shafts: int = 3, contacts: tuple[int, int] = (6, 12),
    fs: float = SYNTHETIC_FS, seed: int = 0, plant: bool = True, latent_state: bool = True,
    state_rhythms=STATE_RHYTHMS, state_cutoff_hz: float = STATE_CUTOFF_HZ,
    state_amplitude: float = STATE_AMPLITUDE,
) -> Path:
    """Write a seeded synthetic Brain Treebank under ``root`` and return ``root``.

    Args:
        root: output folder (created; existing files of the same names are overwritten).
        n_subjects: subjects ``sub_1..sub_n``.
        trials_per_subject: recordings per subject; trial t of every subject shows movie t.
        duration_s: recording length; the movie covers all but 9-15 s of it.
        n_shafts: depth shafts per subject.
        contacts: inclusive (min, max) contacts per shaft.
        fs: sampling rate in Hz.
        seed: everything written is a function of the arguments.
        plant: add the stimulus-locked components (see module docstring).
        latent_state: add the slowly varying, spatially coherent state (module docstring).
        state_rhythms: the state's rhythm groups (Hz): one shared envelope per group.
        state_cutoff_hz: Gaussian spectral width of the envelopes (larger = faster).
        state_amplitude: envelope scale (the background is 30 x unit-variance 1/f noise).

    Returns:
        The root folder as a `Path`.
    """
    root = Path(root)
    if duration_s < 30:
        raise ValueError("duration_s must be at least 30 s (5 s windows need room)")
    if contacts[0] < 3 or contacts[1] < contacts[0]:
        raise ValueError("contacts must be (min, max) with 3 <= min <= max")
    if not 1 <= n_shafts <= 200:  # the stem generator has 384 distinct names
        raise ValueError("n_shafts must be in [1, 200]")
    state_rhythms = tuple(tuple(float(f) for f in g) for g in state_rhythms)
    if not state_rhythms or not all(g and all(0 < f < fs / 2 for f in g)
                                    for g in state_rhythms):
        raise ValueError(f"state_rhythms must be non-empty groups of frequencies in "
                         f"(0, {fs / 2:g}) Hz, got {state_rhythms}")
    if not (state_cutoff_hz > 0 and state_amplitude >= 0):
        raise ValueError("state_cutoff_hz must be > 0 and state_amplitude >= 0")
    state = (state_rhythms, float(state_cutoff_hz), float(state_amplitude))
    movie_s = duration_s - 15.0  # leaves a 4-7 s lead and a >= 8 s tail in every trial
    truth: dict = {"seed": seed, "plant": plant, "latent_state": latent_state,
                   "state_rhythms": state_rhythms, "state_cutoff_hz": state_cutoff_hz,
                   "state_amplitude": state_amplitude, "fs": fs, "duration_s": duration_s,
                   "speech_band": SPEECH_BAND, "pitch_band": PITCH_BAND,
                   "burst_offset_s": -0.1, "burst_length_s": 0.4, "subjects": {}}
    movies = [_write_movie(root, np.random.default_rng([seed, 1_000_003, m]),
                           f"synthetic-movie-{m}", movie_s) for m in range(trials_per_subject)]
    selection: dict[str, list[str]] = {}
    corrupted: dict[str, list[str]] = {}
    for s in range(1, n_subjects + 1):
        sid = f"sub_{s}"
        rng = np.random.default_rng([seed, s])  # the subject's draws, in this order:
        subject = _write_subject(root, rng, sid, n_shafts, contacts)
        selection[sid] = subject.selection
        corrupted[f"subject{s}"] = ["DC1", subject.starred + "*"]
        truth["subjects"][sid] = {**subject.groups, "trials": {}}
        for t in range(trials_per_subject):
            tid = f"trial{t:03d}"
            # The latent state has its own random stream: the other draws do not depend on it.
            state_rng = np.random.default_rng([seed, s, t, 7_919]) if latent_state else None
            truth["subjects"][sid]["trials"][tid] = _write_trial(
                root, rng, subject, sid, tid, movies[t], int(round(duration_s * fs)), movie_s,
                fs, plant, state_rng, state)
    _write_json(root / "electrode_selections" / "clean_laplacian.json", selection)
    # BrainBERT-style corrupted list (keys "subjectN"): a trigger channel and the starred
    # electrode written with its mark, which (as upstream compares) removes nothing, so
    # clean_laplacian above is what scripts/derive_electrode_selection.py derives.
    _write_json(root / "corrupted_elec.json", corrupted)
    all_trials = {f"sub_{s}": [f"trial{t:03d}" for t in range(trials_per_subject)]
                  for s in range(1, n_subjects + 1)}
    _write_json(root / "trial_selections" / "all_trials.json", all_trials)
    # Upstream-style analogues: the last trial of each subject is its held-out fine-tuning
    # test trial (none with one trial per subject), the others are pretrained on.
    held = trials_per_subject > 1
    _write_json(root / "trial_selections" / "test_trials.json",
                {s: ts[-1:] for s, ts in all_trials.items()} if held else {})
    _write_json(root / "trial_selections" / "pretrain_split_trials.json",
                {s: ts[:-1] if held else ts for s, ts in all_trials.items()})
    (root / "synthetic_truth.json").write_text(json.dumps(truth, indent=1, default=float))
    return root


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _write_movie(root: Path, rng: np.random.Generator, movie: str, movie_s: float
                 ) -> tuple[str, dict]:
    """A movie's transcript (`transcripts/<movie>/features.csv`); returns (movie, words)."""
    words = _transcript(rng, movie_s)
    header = ["", "text", "start", "end", "pos", "sentence", "sentence_idx",
              "idx_in_sentence", "is_onset", "is_offset", "rms", "pitch", "speaker"]
    rows = [[i, words["text"][i], f"{words['start'][i]:.4f}", f"{words['end'][i]:.4f}",
             words["pos"][i], words["sentence"][i], words["sentence_idx"][i],
             words["idx_in_sentence"][i], words["is_onset"][i], words["is_offset"][i],
             f"{words['rms'][i]:.6g}", f"{words['pitch'][i]:.3f}", words["speaker"][i]]
            for i in range(len(words["text"]))]
    _write_csv(root / "transcripts" / movie / "features.csv", header, rows)
    return movie, words


@dataclasses.dataclass
class _Subject:
    """A synthetic subject's electrodes (what its trials need)."""

    shafts: list[dict]
    neural: list[str]  # localized contacts, shaft by shaft
    labels: list[str]  # every channel in file order (neural + EKG + trigger channels)
    selection: list[str]  # the clean_laplacian selection (interior contacts, shuffled)
    groups: dict[str, list[str]]  # contacts carrying the speech / onset / pitch components
    starred: str  # the contact whose name carries a '*' in the label and localization files


def _write_subject(root: Path, rng: np.random.Generator, sid: str, n_shafts: int,
                   contacts: tuple[int, int]) -> _Subject:
    """Shafts, electrode labels and localization of one subject; draws the selection and the
    planted groups."""
    shafts = _shafts(rng, n_shafts, contacts)
    neural = [f"{sh['stem']}{k + 1}" for sh in shafts for k in range(sh["n"])]
    interior = [f"{sh['stem']}{k + 1}" for sh in shafts for k in range(1, sh["n"] - 1)]
    # One electrode carries a '*' mark in both files, as some published labels do.
    starred = interior[int(rng.integers(len(interior)))]
    labels = list(neural)
    labels.insert(shafts[0]["n"], "EKG_1")  # non-localized channels, as in the real data
    labels += ["DC1", "DC2"]
    _write_json(root / "electrode_labels" / sid / "electrode_labels.json",
                [n + "*" if n == starred else n for n in labels])
    loc_rows = []
    for sh in shafts:
        for k in range(sh["n"]):
            name = f"{sh['stem']}{k + 1}"
            region = sh["regions"][k]
            loc_rows.append([len(loc_rows), name + ("*" if name == starred else ""),
                             sh["hemi"], *(f"{v:.2f}" for v in sh["lip"][k]), region,
                             region.replace("ctx-", "ctx_").replace("-", "_")])
    _write_csv(root / "localization" / sid / "depth-wm.csv",
               ["ID", "Electrode", "Hemisphere", "L", "I", "P", "DesikanKilliany",
                "Destrieux"], loc_rows)
    order = rng.permutation(len(interior))
    groups = rng.permutation(len(interior))
    n_g = max(1, len(interior) // 5)
    return _Subject(shafts, neural, labels, [interior[i] for i in order], {
        "speech": sorted(interior[i] for i in groups[:n_g]),
        "onset": sorted(interior[i] for i in groups[n_g:2 * n_g]),
        "pitch": sorted(interior[i] for i in groups[2 * n_g:3 * n_g]),
    }, starred)


def _write_trial(root: Path, rng: np.random.Generator, subject: _Subject, sid: str, tid: str,
                 movie_words: tuple[str, dict], n_t: int, movie_s: float, fs: float,
                 plant: bool, state_rng: np.random.Generator | None, state: tuple) -> dict:
    """Triggers, metadata and the recording of one trial; returns its truth entry. The latent
    state (`_latent_state` arguments `state`) is added when `state_rng` is given."""
    movie, words = movie_words
    lead = rng.uniform(4.0, 7.0)
    drift = rng.uniform(-2e-4, 2e-4)
    trig_t = np.arange(0.0, movie_s, _TRIGGER_EVERY_S)
    trig_t = np.round(trig_t + rng.uniform(0, 0.01, len(trig_t)), 4)
    trig_idx = np.round(_to_sample(trig_t, lead, drift, fs)).astype(np.int64)
    _write_csv(root / "subject_timings" / f"{sid}_{tid}_timings.csv", ["movie_time", "index"],
               [[f"{a:.4f}", int(b)] for a, b in zip(trig_t, trig_idx, strict=True)])
    meta = {"title": movie.replace("-", " ").title(), "filename": movie,
            "subject": sid, "trial": tid, "sampling_rate": fs, "synthetic": True}
    (root / "subject_metadata").mkdir(parents=True, exist_ok=True)
    (root / "subject_metadata" / f"{sid}_{tid}_metadata.json").write_text(
        json.dumps(meta, indent=1))
    x = _background(rng, subject, n_t, fs)
    if state_rng is not None:
        x += _latent_state(state_rng, len(subject.neural), n_t, fs, *state)
    index = {n: i for i, n in enumerate(subject.neural)}
    envelopes = _envelopes(words, _to_sample(np.asarray(words["start"]), lead, drift, fs) / fs,
                           n_t, fs)
    for key, band in (("speech", SPEECH_BAND), ("onset", SPEECH_BAND), ("pitch", PITCH_BAND)):
        rows_g = [index[n] for n in subject.groups[key]]
        carrier = _colored_noise(rng, len(rows_g), n_t, fs, band)  # drawn either way
        if plant:
            x[rows_g] += carrier * envelopes[key][None, :].astype(np.float32)
    aux = {"EKG_1": 200.0 * (np.sin(2 * np.pi * 1.1 * np.arange(n_t) / fs) > 0.995),
           "DC1": np.zeros(n_t), "DC2": np.full(n_t, 1.0)}
    for i in trig_idx:  # trigger pulses of 20 samples
        aux["DC1"][i:i + 20] = 1.0
        aux["DC2"][i:i + 20] = 0.0
    path = root / "all_subject_data" / f"{sid}_{tid}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("data")
        for i, name in enumerate(subject.labels):
            if name in aux:  # mostly constant: compresses to almost nothing
                g.create_dataset(f"electrode_{i}", data=aux[name].astype(np.float32),
                                 compression="gzip", track_times=False)
            else:
                g.create_dataset(f"electrode_{i}", data=x[index[name]], track_times=False)
    return {"movie": movie, "lead_s": lead, "drift": drift, "n_samples": n_t}


def _background(rng: np.random.Generator, subject: _Subject, n_t: int, fs: float) -> np.ndarray:
    """Per-shaft shared 1/f plus per-contact 1/f, then line noise: float32 [E, n_t]."""
    shaft_of = np.concatenate([np.full(sh["n"], i) for i, sh in enumerate(subject.shafts)])
    n_e = len(subject.neural)
    x = 30.0 * (0.8 * _colored_noise(rng, n_e, n_t, fs)
                + 0.6 * _colored_noise(rng, len(subject.shafts), n_t, fs)[shaft_of])
    time = np.arange(n_t) / fs
    gains = rng.uniform(0.8, 1.2, (n_e, 1))
    line = sum(amp * np.sin(2 * np.pi * f0 * time + rng.uniform(0, 2 * np.pi))
               for f0, amp in _LINE.items())
    x += gains.astype(np.float32) * line.astype(np.float32)
    return x


def _envelopes(words: dict, on_rec: np.ndarray, n_t: int, fs: float) -> dict[str, np.ndarray]:
    """The speech, onset and pitch amplitude envelopes [n_t] (word onsets `on_rec` in
    recording seconds)."""
    is_on = np.asarray(words["is_onset"], dtype=bool)
    rms = np.asarray(words["rms"])
    pitch = np.asarray(words["pitch"])
    env = {key: np.zeros(n_t) for key in ("speech", "onset", "pitch")}
    _add_bursts(env["speech"], on_rec, 30.0 * rms / rms.mean() * (1 + 0.8 * is_on), fs,
                -0.1, 0.4)
    _add_bursts(env["onset"], on_rec[is_on], np.full(is_on.sum(), 30.0), fs, -0.05, 0.5)
    p01 = (pitch - pitch.min()) / max(np.ptp(pitch), 1e-9)
    _add_bursts(env["pitch"], on_rec, 30.0 * p01, fs, -0.1, 0.3)
    return env
