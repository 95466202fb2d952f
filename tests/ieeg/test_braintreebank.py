"""Tests of the Brain Treebank reader on a synthetic tree and on hand-made bad input."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from popt_jax.ieeg.braintreebank import (
    BrainTreebank,
    DataError,
    Localization,
    Triggers,
    clean_electrode_name,
    estimate_sample_index,
    laplacian_neighbours,
    load_selection,
    split_electrode_name,
    subject_id,
    trial_id,
)
from popt_jax.ieeg.preprocess import PreprocessConfig, preprocess_trial
from popt_jax.ieeg.synthetic import write_synthetic_braintreebank

FS = 2048.0


@pytest.fixture(scope="module")
def tree(braintreebank_tree) -> Path:
    """The session's synthetic tree (conftest: 2 subjects, 60 s, seed 3); read-only."""
    return braintreebank_tree


@pytest.fixture
def small(tmp_path) -> Path:
    """A fresh one-subject tree that a test may damage."""
    return write_synthetic_braintreebank(tmp_path / "btb", n_subjects=1, duration_s=40, seed=5)


def _selection(root: Path, subject: str = "sub_1") -> list[str]:
    return json.loads((root / "electrode_selections" / "clean_laplacian.json").read_text())[subject]


def _raw_labels(root: Path, subject: str = "sub_1") -> list[str]:
    return json.loads((root / "electrode_labels" / subject / "electrode_labels.json").read_text())


def _assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(err.value)
    assert "\n" not in text
    for n in needles:
        assert n in text, (n, text)


# --------------------------------------------------------------------------- names


def test_ids_and_cleaning():
    assert subject_id(3) == subject_id("3") == subject_id("sub_3") == "sub_3"
    assert trial_id(1) == trial_id("trial001") == trial_id("1") == "trial001"
    assert clean_electrode_name("LT1a3*") == "LT1a3"
    assert clean_electrode_name("#EKG_1") == "EKG1"


@pytest.mark.parametrize("name, expected", [
    ("T1b2", ("T1b", 2)), ("LT10a3", ("LT10a", 3)), ("O1aIb14", ("O1aIb", 14)),
    ("DC1", ("DC", 1)), ("EKG", None), ("F3c-", None),
])
def test_split_electrode_name(name, expected):
    assert split_electrode_name(name) == expected


def test_laplacian_neighbours():
    names = ["T1b1", "T1b2", "T1b3", "LT10a2", "LT10a3", "LT10a4", "LT1a3", "LT10a13"]
    assert laplacian_neighbours("T1b2", names) == ("T1b1", "T1b3")
    assert laplacian_neighbours("LT10a3", names) == ("LT10a2", "LT10a4")
    assert laplacian_neighbours("T1b1", names) is None  # no T1b0
    assert laplacian_neighbours("T1b3", names) is None  # no T1b4
    assert laplacian_neighbours("LT10a4", names) is None  # LT10a5 absent, LT10a13 is no match
    assert laplacian_neighbours("EKG", names + ["EKG"]) is None


# --------------------------------------------------------------------------- reading


def test_listing_labels_and_read(tree):
    bt = BrainTreebank(tree)
    assert bt.subjects() == ["sub_1", "sub_2"]
    assert bt.trials(1) == ["trial000"]
    raw = _raw_labels(tree)
    names = bt.electrode_names("sub_1")
    assert names == [clean_electrode_name(n) for n in raw]
    assert not any(c in "".join(names) for c in "*#_")
    assert {"EKG1", "DC1", "DC2"} <= set(names)
    pick = [names[5], names[0], names[12]]
    x = bt.read_electrodes(1, 0, pick, start=100, stop=2148)
    assert x.shape == (3, 2048) and x.dtype == np.float64
    with h5py.File(tree / "all_subject_data" / "sub_1_trial000.h5", "r") as f:
        for row, n in enumerate(pick):
            np.testing.assert_array_equal(x[row], f[f"data/electrode_{names.index(n)}"][100:2148])
    assert bt.n_samples(1, 0) == int(60 * FS)
    full = bt.read_electrodes(1, 0, pick[:1])
    assert full.shape == (1, int(60 * FS))


def test_selection_order_and_localization(tree):
    bt = BrainTreebank(tree)
    sel = load_selection(tree / "electrode_selections" / "clean_laplacian.json")
    assert set(sel) == {"sub_1", "sub_2"}
    ordered = bt.order_electrodes(1, sel["sub_1"])
    labels = bt.electrode_names(1)
    assert sorted(ordered) == sorted(sel["sub_1"])
    assert [labels.index(n) for n in ordered] == sorted(labels.index(n) for n in ordered)
    loc = bt.localization(1)
    assert "EKG1" not in loc.names and "DC1" not in loc.names
    assert loc.lip.shape == (len(loc), 3) and loc.lip.dtype == np.float64
    assert np.all((loc.lip > 0) & (loc.lip < 250))
    sub = loc.select(ordered)
    assert sub.names == ordered and sub.lip.shape == (len(ordered), 3)
    assert all(r.startswith(("ctx-", "Left-", "Right-")) for r in sub.regions)
    assert "Destrieux" in sub.columns
    bt.check_subject(1, ordered)  # labels and localization agree on the synthetic tree


def test_lip_int_truncates_toward_zero():
    loc = Localization(["a", "b"], np.array([[1.9, -1.7, 0.5], [250.99, -0.2, 3.0]]),
                       ["x", "y"], {}, "mem")
    np.testing.assert_array_equal(loc.lip_int(), [[1, -1, 0], [250, 0, 3]])


# --------------------------------------------------------------------------- word alignment


def _brute_nearest(ref, t):
    # pandas idxmin of |ref - t|: the first minimum.
    return min(range(len(ref)), key=lambda k: (abs(ref[k] - t), k))


@pytest.mark.parametrize("shuffle", [False, True])
def test_estimate_sample_index_matches_brute_force(shuffle):
    rng = np.random.default_rng(0)
    mt = np.round(np.sort(rng.uniform(0, 100, 60)), 2)
    mt[10] = mt[11]  # duplicate trigger time: first one wins
    idx = np.round(5000 + mt * FS * 1.0003)
    if shuffle:
        p = rng.permutation(len(mt))
        mt, idx = mt[p], idx[p]
    times = np.concatenate([rng.uniform(-2, 105, 200), mt[:5], (mt[:-1] + mt[1:])[:5] / 2])
    trig = Triggers(mt, idx, "mem")
    got = estimate_sample_index(times, trig, FS)
    for t, g in zip(times, got, strict=True):
        k = _brute_nearest(list(mt), t)
        assert g == round(idx[k] + (t - mt[k]) * FS)  # Python round: half to even


def test_rounding_is_half_to_even():
    trig = Triggers(np.array([0.0]), np.array([10.0]), "mem")
    # 0.5 / 2048 s and 1.5 / 2048 s past the trigger land exactly on .5 samples.
    got = estimate_sample_index(np.array([0.5 / FS, 1.5 / FS]), trig, FS)
    np.testing.assert_array_equal(got, [10.0, 12.0])


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_words_match_direct_computation(tree):
    bt = BrainTreebank(tree)
    words = bt.words(2, 0)
    meta = json.loads((tree / "subject_metadata" / "sub_2_trial000_metadata.json").read_text())
    header, rows = _read_rows(tree / "transcripts" / meta["filename"] / "features.csv")
    th, trows = _read_rows(tree / "subject_timings" / "sub_2_trial000_timings.csv")
    mt = [float(r[th.index("movie_time")]) for r in trows]
    ix = [float(r[th.index("index")]) for r in trows]
    assert len(words) == len(rows)
    for i, r in enumerate(rows):
        t = float(r[header.index("start")])
        k = _brute_nearest(mt, t)
        assert words.est_idx[i] == round(ix[k] + (t - mt[k]) * FS)
        assert words.text[i] == r[header.index("text")]
        assert words.is_onset[i] == (r[header.index("is_onset")] == "True")
    assert math.isnan(words["word_diff"][0])
    np.testing.assert_allclose(words["word_diff"][1:], words.start[1:] - words.end[:-1])
    assert words.is_onset.dtype == bool and words["rms"].dtype == np.float64


def test_words_after_last_trigger_get_no_sample(small):
    bt = BrainTreebank(small)
    path = small / "subject_timings" / "sub_1_trial000_timings.csv"
    header, rows = _read_rows(path)
    with open(path, "w", newline="") as f:  # keep the first 10 triggers only
        csv.writer(f).writerows([header] + rows[:10])
    last_t = float(rows[9][0])
    words = bt.words(1, 0)
    late = words.start > last_t
    assert late.any() and (~late).any()
    first = int(np.argmax(late))
    assert np.isfinite(words.est_idx[:first]).all()
    assert np.isnan(words.est_idx[first:]).all() and np.isnan(words.est_end_idx[first:]).all()
    assert len(words.aligned()) == first


def test_transcript_dropna_and_inf(small):
    bt = BrainTreebank(small)
    movie = bt.movie(1, 0)
    path = small / "transcripts" / movie / "features.csv"
    header, rows = _read_rows(path)
    n = len(rows)
    rows[1][header.index("text")] = "null"  # a pandas missing-value spelling
    rows[2][header.index("speaker")] = ""  # missing in a column nobody uses: still dropped
    rows[3][header.index("rms")] = "inf"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    words = bt.transcript(movie)
    assert len(words) == n - 2
    assert words["rms"][1] == pytest.approx(-math.log(1e-9))
    assert len(bt.transcript(movie, dropna="required")) == n - 1


# --------------------------------------------------------------------------- bad input


def test_missing_h5(small):
    path = small / "all_subject_data" / "sub_1_trial000.h5"
    path.unlink()
    with pytest.raises(DataError) as err:
        BrainTreebank(small).read_electrodes(1, 0, ["DC1"])
    _assert_one_line(err, "sub_1_trial000.h5", "not found")


def test_missing_electrode_dataset(small):
    bt = BrainTreebank(small)
    name = _selection(small)[0]
    i = bt.electrode_names(1).index(name)
    with h5py.File(small / "all_subject_data" / "sub_1_trial000.h5", "r+") as f:
        del f[f"data/electrode_{i}"]
    with pytest.raises(DataError) as err:
        bt.read_electrodes(1, 0, [name])
    _assert_one_line(err, "sub_1_trial000.h5", name, f"electrode_{i}", "missing")


def test_unknown_electrode_name(small):
    with pytest.raises(DataError) as err:
        BrainTreebank(small).read_electrodes(1, 0, ["ZZ9"])
    _assert_one_line(err, "electrode_labels.json", "ZZ9")


def test_missing_laplacian_neighbour(small):
    bt = BrainTreebank(small)
    end = next(n for n in bt.localization(1).names if split_electrode_name(n)[1] == 1)
    keep = _selection(small)[:3]
    with pytest.raises(DataError) as err:
        preprocess_trial(bt, 1, 0, keep + [end], PreprocessConfig(), stop=4096)
    stem = split_electrode_name(end)[0]
    _assert_one_line(err, "electrode_labels.json", end, f"{stem}0")
    out = preprocess_trial(bt, 1, 0, keep + [end],
                           PreprocessConfig(on_missing_neighbours="skip"), stop=4096)
    assert end not in out.names and sorted(out.names) == sorted(keep)


def test_labels_localization_disagree(small):
    bt = BrainTreebank(small)
    path = small / "localization" / "sub_1" / "depth-wm.csv"
    header, rows = _read_rows(path)
    dropped = rows[3][header.index("Electrode")].rstrip("*")
    extra = list(rows[0])
    extra[header.index("Electrode")] = "ZZ1"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows[:3] + rows[4:] + [extra])
    with pytest.raises(DataError) as err:
        bt.check_subject(1)
    _assert_one_line(err, "depth-wm.csv", "ZZ1")
    with pytest.raises(DataError) as err:
        BrainTreebank(small).localization(1).select([dropped])
    _assert_one_line(err, "depth-wm.csv", dropped)


@pytest.mark.parametrize("kind", ["nan", "flat"])
def test_nan_or_flat_channel(small, kind):
    bt = BrainTreebank(small)
    name = _selection(small)[1]
    i = bt.electrode_names(1).index(name)
    with h5py.File(small / "all_subject_data" / "sub_1_trial000.h5", "r+") as f:
        d = f[f"data/electrode_{i}"]
        if kind == "nan":
            d[500:510] = np.nan
        else:
            d[...] = 3.0
    with pytest.raises(DataError) as err:
        bt.read_electrodes(1, 0, [name])
    _assert_one_line(err, "sub_1_trial000.h5", name, "NaN" if kind == "nan" else "flat")
    with pytest.raises(DataError):
        preprocess_trial(bt, 1, 0, _selection(small)[:4] + [name])


def test_words_past_end_of_recording(small):
    bt = BrainTreebank(small)
    path = small / "subject_timings" / "sub_1_trial000_timings.csv"
    header, rows = _read_rows(path)
    for r in rows:  # a recording that is 30 s shorter than its triggers claim
        r[header.index("index")] = str(int(r[header.index("index")]) + 30 * 2048)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    with pytest.raises(DataError) as err:
        bt.words(1, 0)
    _assert_one_line(err, "features.csv", "sub_1_trial000.h5", "outside the recording")
    kept = bt.words(1, 0, on_past_end="drop")
    assert np.all(kept.est_idx[np.isfinite(kept.est_idx)] < bt.n_samples(1, 0))


def test_truncated_h5(small):
    path = small / "all_subject_data" / "sub_1_trial000.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    bt = BrainTreebank(small)
    with pytest.raises(DataError) as err:
        bt.read_electrodes(1, 0, _selection(small)[:2])
    _assert_one_line(err, "sub_1_trial000.h5")
    with pytest.raises(DataError):
        bt.n_samples(1, 0)


def test_electrode_lengths_disagree(small):
    with h5py.File(small / "all_subject_data" / "sub_1_trial000.h5", "r+") as f:
        x = f["data/electrode_2"][:1000]
        del f["data/electrode_2"]
        f["data/electrode_2"] = x
    with pytest.raises(DataError) as err:
        BrainTreebank(small).n_samples(1, 0)
    _assert_one_line(err, "sub_1_trial000.h5", "electrode_2", "differ")


def test_bad_json_files(small, tmp_path):
    bad = tmp_path / "sel.json"
    bad.write_text("{not json")
    with pytest.raises(DataError) as err:
        load_selection(bad)
    _assert_one_line(err, "sel.json")
    (small / "electrode_labels" / "sub_1" / "electrode_labels.json").write_text('{"a": 1}')
    with pytest.raises(DataError) as err:
        BrainTreebank(small).electrode_names(1)
    _assert_one_line(err, "electrode_labels.json")
    shutil.rmtree(small / "subject_metadata")
    with pytest.raises(DataError) as err:
        BrainTreebank(small).movie(1, 0)
    _assert_one_line(err, "sub_1_trial000_metadata.json")


def test_data_error_pickles_and_numeric_text(small):
    import pickle

    err = pickle.loads(pickle.dumps(DataError("/x/y.h5", "bad\nthing")))
    assert isinstance(err, DataError) and str(err) == "/x/y.h5: bad thing"
    assert err.path == "/x/y.h5"
    bt = BrainTreebank(small)
    movie = bt.movie(1, 0)
    path = small / "transcripts" / movie / "features.csv"
    header, rows = _read_rows(path)
    for r in rows:
        r[header.index("text")] = "42"  # a transcript of numbers stays text
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    assert set(bt.transcript(movie).text) == {"42"}
