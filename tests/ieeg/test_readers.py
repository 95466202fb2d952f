"""Readers for other recordings: BIDS-iEEG (EDF, BrainVision), MNE Raw and NWB against the
Brain Treebank path on the same synthetic signals, and their bad-input errors.

The files are written by the field's own tools (mne-bids, pynwb) from one synthetic Brain
Treebank trial (`recording_fixtures`). Tolerances, from the storage formats:

* BrainVision stores float32 microvolts and NWB float32 counts: the data equal the tree's
  float32 samples up to float32 rounding of the volt/microvolt scaling (rtol 1e-6);
* EDF stores 16-bit integers: every sample is within one quantisation step of the widest
  channel's range (range / 65535);
* the 1024 Hz copy (the tree resampled by `resample_poly`, then brought back to 2048 Hz by
  the front end) keeps everything BrainBERT reads (0-200 Hz): its BrainBERT spectrograms
  equal the Brain Treebank ones within 0.02 (z-scored units; the polyphase FIR's passband
  ripple), and its labels exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from recording_fixtures import _raw, bids_from_braintreebank, nwb_from_braintreebank

from popt_jax.errors import DataError
from popt_jax.ieeg import frontend as fe
from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg.braintreebank import BrainTreebank
from popt_jax.ieeg.readers import MneRecording
from popt_jax.ieeg.readers import bids as bids_reader
from popt_jax.ieeg.readers.nwb import NwbRecording
from popt_jax.ieeg.recording import ArrayRecording, BrainTreebankRecording
from popt_jax.ieeg.synthetic import write_synthetic_braintreebank

TASKS = ("volume", "pitch", "sentence_onset", "word_onset")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readers")
    # No latent state: the readers' fidelity bounds (0.02 z-scored units after resampling) are
    # stated for the planted tree. With the state's rhythms the 1024 Hz BrainVision copy
    # measured 0.026 at the edges of the planted 70-150 Hz band (0.008 without).
    root = write_synthetic_braintreebank(tmp / "bt", n_subjects=1, duration_s=30.0,
                                         n_shafts=2, contacts=(4, 5), latent_state=False)
    bt = BrainTreebank(root)
    out = {"tmp": tmp, "root": root, "bt": bt, "btr": BrainTreebankRecording(bt, 1, 0)}
    for name, fmt, fs in (("bv", "BrainVision", None), ("edf", "EDF", None),
                          ("lo", "BrainVision", 1024.0)):
        bids_from_braintreebank(root, tmp / name, fmt=fmt, fs_out=fs)
    nwb_from_braintreebank(root, tmp / "rec.nwb")
    return out


@pytest.fixture(scope="module")
def reference(data):
    cfg = fe.FrontEndConfig()
    btr = data["btr"]
    plan = fe.plan_channels(btr, cfg)
    return cfg, plan, fe.preprocess_recording(btr, plan, cfg).data


def _one(root) -> bids_reader.BidsRecording:
    [rec] = bids_reader.bids_recordings(root, "01")
    return rec


def test_braintreebank_adapter_equals_preprocess_trial(data):
    btr, bt = data["btr"], data["bt"]
    for nf in ("upstream", "time"):
        for rr in ("laplacian", "car", "none"):
            p = pp.PreprocessConfig(neighbour_filtering=nf, on_missing_neighbours="skip",
                                    rereference=rr)
            cfg = fe.FrontEndConfig(preprocess=p, rereference=rr, line_freq=-1)
            plan = fe.plan_channels(btr, cfg)
            got = fe.preprocess_recording(btr, plan, cfg)
            want = pp.preprocess_trial(bt, 1, 0, plan.names, p)
            assert got.names == want.names
            np.testing.assert_array_equal(got.data, want.data)
    # The sidecar notch of a 60 Hz recording with 6 harmonics is upstream's list.
    assert fe.notch_frequencies(60, 2048, 2048, 6) == pp.PreprocessConfig().notch_freqs


@pytest.mark.parametrize("name", ["bv", "edf"])
def test_bids_equals_braintreebank(data, reference, name):
    cfg, plan_bt, ref = reference
    btr = data["btr"]
    rec = _one(data["tmp"] / name)
    assert rec.fs == 2048.0 and rec.line_freq == 60.0 and rec.coord_frame == "fsaverage"
    assert rec.channel_types == [t if t == "seeg" else ("ecg" if n.startswith("EKG") else "misc")
                                 for n, t in zip(btr.channel_names, btr.channel_types,
                                                 strict=True)]
    names = rec.neural_channels()
    x, y = rec.read(names), btr.read(names)
    if name == "bv":
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * np.abs(y).max())
    else:
        assert np.abs(x - y).max() <= np.ptp(y, axis=1).max() / 65535
    plan = fe.plan_channels(rec, cfg)
    assert plan.names == plan_bt.names
    np.testing.assert_array_equal(plan.index, plan_bt.index)  # mm -> index round trip
    got = fe.preprocess_recording(rec, plan, cfg).data
    # Filters have gain <= ~2 on these signals: the storage error bounds the difference.
    tol = 1e-5 if name == "bv" else 4 * np.ptp(y, axis=1).max() / 65535
    assert np.abs(got - ref).max() <= tol * (np.abs(ref).max() if name == "bv" else 1)
    words = fe.words_from_events(rec.events(), cfg.preprocess.fs)
    for task in TASKS:
        a = pp.make_task(task, words, got.shape[1], cfg.preprocess)
        b = pp.make_task(task, btr.words(), ref.shape[1], cfg.preprocess)
        assert len(a) > 0
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.starts, b.starts)


def test_resampled_bids_keeps_what_brainbert_reads(data, reference):
    from popt_jax.ieeg.signal import brainbert_spectrogram

    cfg, plan_bt, ref = reference
    rec = _one(data["tmp"] / "lo")
    assert rec.fs == 1024.0
    assert fe.resample_ratio(rec.fs, 2048.0) == (2, 1)
    plan = fe.plan_channels(rec, cfg)
    got = fe.preprocess_recording(rec, plan, cfg).data
    assert got.shape == ref.shape
    starts = pp.pretraining_window_starts(ref.shape[1], cfg.preprocess)[::20]
    w = cfg.preprocess.window_samples
    sa = np.asarray(brainbert_spectrogram(np.stack([ref[:, s:s + w] for s in starts])
                                          .astype(np.float32)))
    sb = np.asarray(brainbert_spectrogram(np.stack([got[:, s:s + w] for s in starts])
                                          .astype(np.float32)))
    assert np.abs(sa - sb).max() < 0.02
    assert np.abs(got - ref).max() > 1.0  # the full band does differ: the test can fail
    words = fe.words_from_events(rec.events(), 2048.0)
    for task in TASKS:
        a = pp.make_task(task, words, got.shape[1], cfg.preprocess)
        b = pp.make_task(task, data["btr"].words(), ref.shape[1], cfg.preprocess)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_streamed_blocks_equal_whole_recording(data, reference):
    cfg, plan, ref = reference
    w = cfg.preprocess.window_samples
    starts = pp.pretraining_window_starts(ref.shape[1], cfg.preprocess)[::9]
    got = np.concatenate([win for _, win in fe.iter_blocks(data["btr"], plan, cfg, starts, w,
                                                           3)])
    want = np.stack([ref[:, s:s + w] for s in starts]).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_nwb_equals_braintreebank(data, reference):
    cfg, plan_bt, ref = reference
    rec = NwbRecording(data["tmp"] / "rec.nwb", coord_frame="MNI152NLin2009cAsym",
                       coord_units="mm", line_freq=60.0)
    plan = fe.plan_channels(rec, cfg)
    assert plan.names == plan_bt.names
    np.testing.assert_array_equal(plan.index, plan_bt.index)
    got = fe.preprocess_recording(rec, plan, cfg).data
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    words = fe.words_from_events(rec.events(), 2048.0)
    a = pp.make_task("volume", words, got.shape[1], cfg.preprocess)
    b = pp.make_task("volume", data["btr"].words(), ref.shape[1], cfg.preprocess)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.starts, b.starts)
    rec.close()


def test_mne_raw_bads_bipolar_and_event_task(data):
    _, raw = _raw(data["root"])
    raw.info["bads"] = [raw.ch_names[1]]
    raw.info["line_freq"] = 50.0
    import mne

    raw.set_annotations(mne.Annotations([6.0, 9.0, 12.0, 15.0], [0.5] * 4,
                                        ["go", "stop", "go", "stop"]))
    rec = MneRecording(raw)
    assert rec.coord_frame == "mni_tal" and raw.ch_names[1] not in rec.neural_channels()
    cfg = fe.FrontEndConfig(rereference="bipolar")
    plan = fe.plan_channels(rec, cfg)
    assert all("-" in n for n in plan.names)
    assert not any(raw.ch_names[1] in pair for pair in plan.pairs)
    p = fe._notched(rec, cfg)
    assert p.notch_freqs == (50.0, 100.0, 150.0, 200.0, 250.0, 300.0)
    out = fe.preprocess_recording(rec, plan, cfg)
    a, b = plan.pairs[0]
    filt = pp.filter_channels(rec.read([a, b]), p)
    np.testing.assert_allclose(out.data[0], filt[0] - filt[1], rtol=1e-12, atol=1e-9)
    ex = fe.event_task(rec.events(), "trial_type", ["go"], None, out.data.shape[1], p)
    np.testing.assert_array_equal(ex.labels, [True, False, True, False])
    np.testing.assert_array_equal(ex.starts, np.rint(np.array([6.0, 9, 12, 15]) * 2048)
                                  .astype(int) + int(-2.5 * 2048))


def test_missing_coordinates_reported_and_dropped(data, caplog):
    rec = ArrayRecording(np.random.default_rng(0).standard_normal((4, 12000)), 2048.0,
                         ["LA1", "LA2", "LA3", "LA4"], line_freq=50.0,
                         coords={"LA1": [1, 2, 3], "LA2": [2, 2, 3], "LA3": [3, 2, 3]},
                         coord_frame="MNI152NLin6Asym", coord_units="mm")
    plan = fe.plan_channels(rec, fe.FrontEndConfig(rereference="car"))
    assert plan.names == ["LA1", "LA2", "LA3"]
    assert "LA4" in caplog.text
    with pytest.raises(DataError, match="no coordinates for electrode.*LA4"):
        fe.plan_channels(rec, fe.FrontEndConfig(rereference="car", on_missing_coords="error"))


# --------------------------------------------------------------------------- bad input


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_bids_without_electrodes_tsv(data):
    root = _copy(data["tmp"] / "bv", data["tmp"] / "no_electrodes")
    for p in root.rglob("*_electrodes.tsv"):
        p.unlink()
    with pytest.raises(DataError) as err:
        bids_reader.bids_recordings(root, "01")
    assert "electrodes.tsv" in _one_line(err) and str(root) in str(err.value)


def test_bids_unknown_frame(data):
    root = _copy(data["tmp"] / "bv", data["tmp"] / "bad_frame")
    [cs] = list(root.rglob("*_coordsystem.json"))
    meta = json.loads(cs.read_text())
    meta["iEEGCoordinateSystem"] = "Other"
    cs.write_text(json.dumps(meta))
    rec = _one(root)
    with pytest.raises(DataError) as err:
        fe.plan_channels(rec, fe.FrontEndConfig())
    assert str(cs) in _one_line(err) and "'Other'" in str(err.value)


def test_bids_mixed_sampling_rates(data):
    root = _copy(data["tmp"] / "bv", data["tmp"] / "mixed")
    bids_from_braintreebank(data["root"], root, fmt="BrainVision", fs_out=1024.0, run=2)
    with pytest.raises(DataError) as err:
        bids_reader.bids_recordings(root, "01")
    assert "run-2" in _one_line(err) and "1024 Hz differs from 2048 Hz" in str(err.value)


def test_bids_all_channels_bad(data):
    root = _copy(data["tmp"] / "bv", data["tmp"] / "all_bad")
    [ch] = list(root.rglob("*_channels.tsv"))
    header, rows = bids_reader.read_tsv(ch)
    k = header.index("status")
    ch.write_text("\t".join(header) + "\n" + "".join(
        "\t".join(r[:k] + ["bad"] + r[k + 1:]) + "\n" for r in rows))
    rec = _one(root)
    with pytest.raises(DataError) as err:
        fe.plan_channels(rec, fe.FrontEndConfig())
    assert str(ch) in _one_line(err) and "bad" in str(err.value)


def test_nwb_without_electrodes_table(data):
    path = nwb_from_braintreebank(data["root"], data["tmp"] / "no_electrodes.nwb",
                                  electrodes=False)
    with pytest.raises(DataError) as err:
        NwbRecording(path)
    assert str(path) in _one_line(err) and "no electrodes table" in str(err.value)


def test_recording_shorter_than_one_window(data):
    from popt_jax.ieeg.recording_store import check_length

    rec = ArrayRecording(np.zeros((2, 4000)), 1000.0, ["A1", "A2"], path="/x/short.edf")
    with pytest.raises(DataError, match=r"^/x/short.edf: recording is 4.00 s long, shorter "
                       r"than one 5 s window"):
        check_length(rec, fe.FrontEndConfig())


def test_missing_optional_package_is_one_line(monkeypatch):
    import importlib

    from popt_jax.errors import UserError
    from popt_jax.ieeg.readers import require

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "mne_bids":
            raise ImportError("No module named 'mne_bids'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(UserError, match=r"^reading this format needs the 'mne_bids' package: "
                       r"pip install 'popt_jax\[bids\]'$"):
        require("mne_bids", "bids")


class _CountingRecording(ArrayRecording):
    """Remembers the longest read, to check that streaming reads bounded blocks."""

    longest = 0

    def _read(self, rows, start, stop):
        self.longest = max(self.longest, stop - start)
        return super()._read(rows, start, stop)


def test_streaming_reads_bounded_blocks_at_another_rate():
    fs, seconds = 512.0, 240.0
    rng = np.random.default_rng(1)
    names = ["LA1", "LA2", "LA3", "LA4"]
    rec = _CountingRecording(rng.standard_normal((4, int(fs * seconds))), fs, names,
                             line_freq=50.0, coords={n: [i, 0.0, 0.0] for i, n in
                                                     enumerate(names)},
                             coord_frame="MNI152NLin2009cAsym", coord_units="mm")
    cfg = fe.FrontEndConfig(margin_s=2.0)
    plan = fe.plan_channels(rec, cfg)
    assert plan.names == ["LA2", "LA3"]
    n = fe.model_samples(rec, 2048.0)
    assert n == int(seconds * 2048)
    w = cfg.preprocess.window_samples
    starts = np.arange(0, n - w + 1, 2048 * 10)
    blocks = list(fe.iter_blocks(rec, plan, cfg, starts, w, 2))
    assert sum(len(s) for s, _ in blocks) == len(starts)
    # Two windows 10 s apart (15 s of signal) + 2 s warm-up + resampler context, at 512 Hz:
    # far less than the 240 s recording.
    assert rec.longest <= (15.0 + 2.0 + 2.0) * fs + 16
    whole = fe.preprocess_recording(rec, plan, cfg).data
    got = np.concatenate([b for _, b in blocks])
    want = np.stack([whole[:, s:s + w] for s in starts]).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_plan_positions_are_unrounded_mapping():
    rec = ArrayRecording(np.zeros((3, 12000)), 2048.0, ["LA1", "LA2", "LA3"],
                         coords={"LA1": [0.0101, 0, 0], "LA2": [0.0204, 0, 0],
                                 "LA3": [0.0307, 0.0, 0.0]},
                         coord_frame="MNI152NLin2009cAsym", coord_units="m", line_freq=60.0)
    plan = fe.plan_channels(rec, fe.FrontEndConfig(rereference="none"))
    np.testing.assert_allclose(plan.positions[:, 0], [117.9, 107.6, 97.3])
    np.testing.assert_array_equal(plan.index[:, 0], [118, 108, 97])
    np.testing.assert_allclose(plan.mm[:, 0], [10.1, 20.4, 30.7])
    assert json.loads(plan.mapping)["units_in"] == "m"


def test_rate_too_low_for_brainbert_is_refused():
    rec = ArrayRecording(np.zeros((3, 250 * 20)), 250.0, ["LA1", "LA2", "LA3"],
                         coords={n: [0.0, 0, 0] for n in ("LA1", "LA2", "LA3")},
                         coord_frame="MNI305", coord_units="mm", line_freq=50.0,
                         path="/x/slow.edf")
    cfg = fe.FrontEndConfig()
    plan = fe.plan_channels(rec, cfg)
    with pytest.raises(DataError, match=r"^/x/slow.edf: sampling rate 250 Hz is below 410 Hz"):
        fe.preprocess_recording(rec, plan, cfg)
