"""The Brain Treebank extraction reads through `BrainTreebankRecording` and the one front end.

`preprocess.preprocess_trial` (which the extraction job calls) plans the tree's channels and
then runs `frontend.preprocess_recording` on the trial's `Recording`. Checked here: every
sample the extraction reads comes through `BrainTreebankRecording`, and the signals and
stored embeddings are bit-identical to the direct computation the extraction did before
(read every electrode from the tree, filter, subtract the Laplacian reference), in each
re-reference mode; the store also holds the L/I/P columns as real-valued positions.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from flax import nnx

from popt_jax.ieeg import brainbert, feature_store
from popt_jax.ieeg import preprocess as pp
from popt_jax.ieeg.braintreebank import BrainTreebank, load_selection
from popt_jax.ieeg.coords import BRAINTREEBANK_FRAME
from popt_jax.ieeg.extract import _extract
from popt_jax.ieeg.recording import BrainTreebankRecording

TINY = brainbert.BrainBERTConfig(hidden_dim=32, n_heads=2, ff_dim=64, n_layers=1)


def _direct(bt: BrainTreebank, names: list[str], cfg: pp.PreprocessConfig) -> np.ndarray:
    """The pre-`Recording` extraction path: read the tree, filter, re-reference."""
    ordered = bt.order_electrodes(1, names)
    if cfg.rereference != "laplacian":
        x = pp.filter_channels(bt.read_electrodes(1, 0, ordered), cfg)
        return pp.car_rereference(x) if cfg.rereference == "car" else x
    ordered, pairs = bt.laplacian_plan(1, ordered, cfg.on_missing_neighbours)
    lower = bt.read_electrodes(1, 0, [p[0] for p in pairs])
    upper = bt.read_electrodes(1, 0, [p[1] for p in pairs])
    x = pp.filter_channels(bt.read_electrodes(1, 0, ordered), cfg)
    if cfg.neighbour_filtering == "time":
        return pp.laplacian_rereference(x, pp.filter_channels(lower, cfg),
                                        pp.filter_channels(upper, cfg))
    return x - pp.upstream_neighbour_reference(lower, upper, cfg)


@pytest.fixture(scope="module")
def names(braintreebank_tree):
    return load_selection(braintreebank_tree / "electrode_selections/clean_laplacian.json")[
        "sub_1"]


@pytest.mark.parametrize("cfg", [
    pp.PreprocessConfig(), pp.PreprocessConfig(neighbour_filtering="time", chunk=3),
    pp.PreprocessConfig(rereference="car"), pp.PreprocessConfig(high_gamma=True, chunk=2)],
    ids=["upstream", "time", "car", "high_gamma"])
def test_signals_bit_identical_to_the_direct_path(braintreebank_tree, names, cfg):
    bt = BrainTreebank(braintreebank_tree)
    got = pp.preprocess_trial(bt, 1, 0, names, cfg)
    np.testing.assert_array_equal(got.data, _direct(bt, names, cfg))
    assert got.subject == "1" and got.trial == "0" and got.start == 0


def test_extraction_reads_through_the_recording(braintreebank_tree, names, tmp_path,
                                                 monkeypatch):
    inside, outside = [], []
    direct_read = BrainTreebank.read_electrodes
    recording_read = BrainTreebankRecording._read

    def read(self, *args, **kwargs):
        (inside if via_recording else outside).append(args[:2])
        return direct_read(self, *args, **kwargs)

    via_recording = False

    def rec_read(self, rows, start, stop):
        nonlocal via_recording
        via_recording = True
        try:
            return recording_read(self, rows, start, stop)
        finally:
            via_recording = False

    monkeypatch.setattr(BrainTreebank, "read_electrodes", read)
    monkeypatch.setattr(BrainTreebankRecording, "_read", rec_read)
    model = brainbert.BrainBERT(TINY, rngs=nnx.Rngs(0))
    [path], _ = _extract(braintreebank_tree, tmp_path, checkpoint_hash="t", subjects=[1],
                         selection={"sub_1": names}, brainbert=model, batch_windows=4,
                         max_windows=6, tasks=("pretrain", "word_onset"))
    monkeypatch.undo()
    assert inside and not outside
    bt = BrainTreebank(braintreebank_tree)
    meta = feature_store.read_attrs(path)
    loc = bt.localization(1).select(meta["electrode_names"])
    assert meta["coord_frame"] == BRAINTREEBANK_FRAME
    np.testing.assert_array_equal(meta["positions"], loc.lip)
    np.testing.assert_array_equal(meta["coords"], loc.lip)
    # The stored embeddings are those of the direct path's windows, batch for batch.
    data = _direct(bt, names, pp.PreprocessConfig())
    with h5py.File(path) as f:
        starts, stored = f["pretrain/starts"][:], f["pretrain/embeddings"][:]
    w = pp.PreprocessConfig().window_samples
    for a in range(0, len(starts), 4):
        part = starts[a:a + 4]
        # The job's fixed batch shape: a short batch repeats its last window.
        wav = np.stack([data[:, int(part[min(i, len(part) - 1)]):][:, :w]
                        for i in range(4)]).astype(np.float32)
        emb = np.asarray(brainbert.brainbert_embed(model, wav))[:len(part)]
        np.testing.assert_array_equal(stored[a:a + len(part)], emb)
