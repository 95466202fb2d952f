"""Test data in the field's own formats, written from the synthetic Brain Treebank.

`bids_from_braintreebank` writes one subject-trial of a synthetic Brain Treebank as a
BIDS-iEEG run with mne-bids (EDF or BrainVision), `nwb_from_braintreebank` as an NWB file
with pynwb. Both carry the same signals (microvolts in the tree, volts in MNE/NWB), the
electrode positions (the tree's truncated L/I/P turned into fsaverage/RAS millimetres by the
inverse of the default `CoordMapping`, so the front end maps them back to the same table
rows) and the aligned words as events (onset = est_idx / fs, with the word columns).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import signal

from popt_jax.ieeg.braintreebank import BrainTreebank
from popt_jax.ieeg.recording import BrainTreebankRecording

EVENT_COLUMNS = ("text", "is_onset", "rms", "pitch", "pos")


def lip_to_mm(lip: np.ndarray) -> np.ndarray:
    """RAS millimetres whose default mapping (axes lip, offset 128, scale 1) is ``lip``."""
    lip = np.asarray(lip, np.float64)
    return np.stack([128.0 - lip[:, 0], 128.0 - lip[:, 2], 128.0 - lip[:, 1]], axis=1)


def _raw(bt_root, fs_out: float | None = None):
    import mne

    bt = BrainTreebank(bt_root)
    rec = BrainTreebankRecording(bt, 1, 0)
    x = rec.read(rec.channel_names)
    fs = rec.fs
    if fs_out is not None and fs_out != fs:
        up, down = int(fs_out), int(fs)
        g = np.gcd(up, down)
        x = signal.resample_poly(x, up // g, down // g, axis=-1)
        fs = fs_out
    types = ["seeg" if t == "seeg" else ("ecg" if n.startswith("EKG") else "misc")
             for n, t in zip(rec.channel_names, rec.channel_types, strict=True)]
    info = mne.create_info(rec.channel_names, fs, types)
    raw = mne.io.RawArray(x * 1e-6, info, verbose="error")
    raw.info["line_freq"] = 60.0
    names = [n for n in rec.channel_names if n in rec.coords]
    mm = lip_to_mm(np.trunc([rec.coords[n] for n in names]))
    montage = mne.channels.make_dig_montage(
        ch_pos={n: p / 1000.0 for n, p in zip(names, mm, strict=True)}, coord_frame="mni_tal")
    raw.set_montage(montage, on_missing="ignore", verbose="error")
    return rec, raw


def write_events(path: Path, rec: BrainTreebankRecording) -> None:
    """The aligned words as a BIDS events.tsv (full float precision)."""
    ev = rec.events()
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["onset", "duration", "trial_type", *EVENT_COLUMNS])
        for i in range(len(ev)):
            w.writerow([repr(float(ev.onset[i])), repr(float(ev.duration[i])), "word",
                        *(str(ev.columns[c][i]) for c in EVENT_COLUMNS)])


def bids_from_braintreebank(bt_root, bids_root, *, fmt: str = "BrainVision",
                            fs_out: float | None = None, run: int = 1, bads=()) -> Path:
    """Write sub-01 run ``run`` with mne-bids; returns the data file."""
    import mne_bids

    rec, raw = _raw(bt_root, fs_out)
    raw.info["bads"] = list(bads)
    bp = mne_bids.BIDSPath(subject="01", task="movie", run=run, root=bids_root,
                           datatype="ieeg")
    mne_bids.write_raw_bids(raw, bp, format=fmt, allow_preload=True, overwrite=True,
                            verbose="error")
    write_events(Path(bp.copy().update(suffix="events", extension=".tsv").fpath), rec)
    return Path(bp.fpath)


def nwb_from_braintreebank(bt_root, path, *, electrodes: bool = True) -> Path:
    """Write the trial as an NWB ElectricalSeries (float32 microvolt counts, conversion
    1e-6 to volts) with an electrodes table and the words as trials."""
    from datetime import datetime, timezone

    import pynwb
    from pynwb.ecephys import ElectricalSeries

    rec, raw = _raw(bt_root)
    nwb = pynwb.NWBFile(session_description="synthetic", identifier="r13",
                        session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
                        subject=pynwb.file.Subject(subject_id="1"))
    neural = [n for n in rec.channel_names if n in rec.coords]
    x = rec.read(neural).astype(np.float32)
    if electrodes:
        device = nwb.create_device("probe")
        group = nwb.create_electrode_group("shafts", description="sEEG", location="brain",
                                           device=device)
        nwb.add_electrode_column("label", "contact name")
        mm = lip_to_mm(np.trunc([rec.coords[n] for n in neural]))
        for n, p in zip(neural, mm, strict=True):
            nwb.add_electrode(x=float(p[0]), y=float(p[1]), z=float(p[2]), location="brain",
                              group=group, label=n)
        region = nwb.create_electrode_table_region(list(range(len(neural))), "all")
        nwb.add_acquisition(ElectricalSeries(name="seeg", data=x.T, electrodes=region,
                                             rate=rec.fs, conversion=1e-6))
    else:
        nwb.add_acquisition(pynwb.TimeSeries(name="seeg", data=x.T, unit="V", rate=rec.fs))
    ev = rec.events()
    for c in ("is_onset", "rms", "pitch"):
        nwb.add_trial_column(c, c)
    for i in range(len(ev)):
        nwb.add_trial(start_time=float(ev.onset[i]),
                      stop_time=float(ev.onset[i] + ev.duration[i]),
                      is_onset=bool(ev.columns["is_onset"][i]),
                      rms=float(ev.columns["rms"][i]), pitch=float(ev.columns["pitch"][i]))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return Path(path)


def direct_window_embeddings(bids_root, config):
    """Whole-recording front end + BrainBERT of subject 01's one BIDS run, with the windows
    an embed/predict config asks for: (plan, window starts, embeddings [W, E, D]). The
    streamed jobs are checked against it."""
    from flax import nnx

    from popt_jax.ieeg import brainbert
    from popt_jax.ieeg import frontend as fe
    from popt_jax.ieeg.readers.bids import bids_recordings
    from popt_jax.ieeg.recording_store import frontend_config_from

    cfg = frontend_config_from(config)
    [rec] = bids_recordings(Path(bids_root), "01")
    plan = fe.plan_channels(rec, cfg, dict(config.frontend.coords))
    data = fe.preprocess_recording(rec, plan, cfg).data
    w = cfg.preprocess.window_samples
    starts = np.arange(0, data.shape[1] - w + 1, int(config.hop_s * 2048))[:config.max_windows]
    model = brainbert.BrainBERT(brainbert.BrainBERTConfig(**dict(config.brainbert)),
                                rngs=nnx.Rngs(config.seed))
    wav = np.stack([data[:, s:s + w] for s in starts]).astype(np.float32)
    return plan, starts, np.asarray(brainbert.brainbert_embed(model, wav))
