"""The synthetic Brain Treebank: layout, determinism, speed and the planted structure."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import signal

from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg.braintreebank import BrainTreebank, laplacian_neighbours, load_selection
from popt_jax.ieeg.synthetic import write_synthetic_braintreebank

FS = 2048.0
REPO = Path(__file__).resolve().parents[2]


def _h5_arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: d[:] for k, d in f["data"].items()}


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same seed written with and without planted structure (90 s, one subject)."""
    base = tmp_path_factory.mktemp("pair")
    return (write_synthetic_braintreebank(base / "plant", n_subjects=1, duration_s=90, seed=2),
            write_synthetic_braintreebank(base / "none", n_subjects=1, duration_s=90, seed=2,
                                          plant=False))


def test_layout_and_speed(tmp_path):
    t0 = time.perf_counter()
    root = write_synthetic_braintreebank(tmp_path / "a", n_subjects=2, duration_s=60, seed=0)
    assert time.perf_counter() - t0 < 5.0
    files = {str(p) for p in _files(root)}
    for s in ("sub_1", "sub_2"):
        for f in (f"all_subject_data/{s}_trial000.h5",
                  f"electrode_labels/{s}/electrode_labels.json",
                  f"localization/{s}/depth-wm.csv", f"subject_timings/{s}_trial000_timings.csv",
                  f"subject_metadata/{s}_trial000_metadata.json"):
            assert f in files
    assert "transcripts/synthetic-movie-0/features.csv" in files
    assert "electrode_selections/clean_laplacian.json" in files

    bt = BrainTreebank(root)
    for s in ("sub_1", "sub_2"):
        labels = bt.electrode_names(s)
        loc = bt.localization(s)
        assert set(labels) - set(loc.names) == {"EKG1", "DC1", "DC2"}  # non-localized channels
        sel = load_selection(root / "electrode_selections/clean_laplacian.json")[s]
        assert sel and all(laplacian_neighbours(n, labels) for n in sel)
        interior = [n for n in loc.names if laplacian_neighbours(n, labels)]
        assert sorted(sel) == sorted(interior)
        assert np.all((loc.lip > 0) & (loc.lip < 250))
        steps = np.linalg.norm(np.diff(loc.lip, axis=0), axis=1)
        assert np.median(steps) == pytest.approx(3.5, abs=0.5)  # smooth along each shaft
        assert len({r for r in loc.regions}) > 1
        bt.check_subject(s, sel)
        meta = bt.metadata(s, 0)
        assert meta["filename"] == "synthetic-movie-0" and "title" in meta
        trig = bt.triggers(s, 0)
        assert np.all(np.diff(trig.movie_time) > 0) and np.all(np.diff(trig.index) > 0)
        words = bt.words(s, 0)
        assert {"text", "pos", "rms", "pitch", "is_onset", "sentence_idx"} <= set(words.columns)
        assert np.isfinite(words.est_idx).all()
        assert words.is_onset.sum() >= 3
        n = bt.n_samples(s, 0)
        assert n == int(60 * FS)
        assert len(pp.nonspeech_window_starts(n, words.est_idx, words.est_end_idx)) >= 5
    # features.csv starts with the unnamed pandas index column the upstream reader expects
    with open(root / "transcripts/synthetic-movie-0/features.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[0] == "" and {"text", "start", "end", "is_onset"} <= set(header)


def test_deterministic(tmp_path):
    a = write_synthetic_braintreebank(tmp_path / "a", n_subjects=1, duration_s=40, seed=4)
    b = write_synthetic_braintreebank(tmp_path / "b", n_subjects=1, duration_s=40, seed=4)
    c = write_synthetic_braintreebank(tmp_path / "c", n_subjects=1, duration_s=40, seed=5)
    assert _files(a) == _files(b)
    for rel in _files(a):
        if rel.suffix == ".h5":
            xa, xb = _h5_arrays(a / rel), _h5_arrays(b / rel)
            assert xa.keys() == xb.keys()
            for k in xa:
                np.testing.assert_array_equal(xa[k], xb[k])
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    h5 = "all_subject_data/sub_1_trial000.h5"
    xa, xc = _h5_arrays(a / h5), _h5_arrays(c / h5)
    assert xa.keys() != xc.keys() or not np.array_equal(xa["electrode_0"], xc["electrode_0"])


def test_line_noise_present(pair):
    root = pair[1]
    bt = BrainTreebank(root)
    name = bt.localization(1).names[0]
    x = bt.read_electrodes(1, 0, [name])[0]
    f, p = signal.welch(x, FS, nperseg=4096)
    k60 = np.argmin(np.abs(f - 60))
    assert p[k60] > 50 * np.median(p[(f > 40) & (f < 80)])


def _hg_power(root: Path):
    bt = BrainTreebank(root)
    sel = load_selection(root / "electrode_selections/clean_laplacian.json")["sub_1"]
    ft = pp.preprocess_trial(bt, 1, 0, sel)
    words = bt.words(1, 0).aligned()
    sos = signal.butter(4, (70, 150), "band", fs=FS, output="sos")
    power = signal.sosfiltfilt(sos, ft.data, axis=-1) ** 2
    on = words.est_idx.astype(int)
    after = np.stack([power[:, o + 100:o + 900].mean(-1) for o in on], 1)  # [E, words]
    return ft.names, words, after, power.mean(-1)


def test_planted_structure_and_its_absence(pair):
    truth = json.loads((pair[0] / "synthetic_truth.json").read_text())
    groups = truth["subjects"]["sub_1"]
    assert truth["plant"] and set(groups) >= {"speech", "onset", "pitch"}
    ratios = {}
    for root, plant in zip(pair, (True, False), strict=True):
        names, words, after, mean_power = _hg_power(root)
        speech = [names.index(n) for n in groups["speech"]]
        onset = [names.index(n) for n in groups["onset"]]
        gain = after[speech].mean(-1) / mean_power[speech]
        onset_gain = after[onset][:, words.is_onset].mean(-1) / mean_power[onset]
        r = np.corrcoef(after[speech].mean(0), words["rms"])[0, 1]
        ratios[plant] = (gain.mean(), onset_gain.mean(), r)
    assert ratios[True][0] > 1.2 and ratios[True][1] > 1.3 and ratios[True][2] > 0.4
    assert abs(ratios[False][0] - 1) < 0.15 and abs(ratios[False][1] - 1) < 0.25
    assert abs(ratios[False][2]) < 0.3


def test_plant_false_only_removes_the_planted_components(pair):
    truth = json.loads((pair[0] / "synthetic_truth.json").read_text())["subjects"]["sub_1"]
    planted = {n for g in ("speech", "onset", "pitch") for n in truth[g]}
    bt = BrainTreebank(pair[0])
    names = bt.electrode_names(1)
    xa = _h5_arrays(pair[0] / "all_subject_data/sub_1_trial000.h5")
    xb = _h5_arrays(pair[1] / "all_subject_data/sub_1_trial000.h5")
    for i, n in enumerate(names):
        same = np.array_equal(xa[f"electrode_{i}"], xb[f"electrode_{i}"])
        assert same == (n not in planted), n
    for rel in ("transcripts/synthetic-movie-0/features.csv",
                "subject_timings/sub_1_trial000_timings.csv"):
        assert (pair[0] / rel).read_bytes() == (pair[1] / rel).read_bytes()


def test_script(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/make_synthetic_braintreebank.py"), "--root",
         str(tmp_path / "s"), "--seed", "1", "--n-subjects", "1", "--duration-s", "30",
         "--no-plant"], capture_output=True, text=True, check=True)
    assert "wrote" in out.stdout
    truth = json.loads((tmp_path / "s" / "synthetic_truth.json").read_text())
    assert truth["plant"] is False and truth["seed"] == 1
    assert BrainTreebank(tmp_path / "s").subjects() == ["sub_1"]
