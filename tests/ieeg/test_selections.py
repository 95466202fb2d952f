"""Trial and electrode selections: the packaged upstream files, the held-out-trial rule (on the
files the pretraining loader opens) and the re-derivation of clean_laplacian."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import pytest

from popt_jax.core.config_lib import load_sibling_config
from popt_jax.ieeg import selections
from popt_jax.ieeg.extract import write_random_features
from popt_jax.ieeg.objectives import PRETRAIN
from popt_jax.ieeg.synthetic import write_synthetic_braintreebank
from popt_jax.ieeg.train import StoreData

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "derive_electrode_selection", REPO / "scripts" / "derive_electrode_selection.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_packaged_selections():
    pre = selections.load_trials("pretrain_split_trials")
    test = selections.load_trials("test_trials")
    assert len(pre) == 10 and sum(map(len, pre.values())) == 19
    assert test["sub_1"] == ["trial001"] and len(test) == 7
    for s, ts in test.items():  # upstream never pretrains on a fine-tuning test trial
        assert not set(ts) & set(pre.get(s, []))
    lap = json.loads(selections.resolve("clean_laplacian").read_text())
    assert len(lap) == 10 and len(lap["sub_1"]) == 91 and "T2bHa10" in lap["sub_1"]
    corrupted = selections.load_corrupted()
    assert "RT3aHa2*" in corrupted["sub_2"]
    # The quirk the shipped file carries: a marked corrupted entry removes nothing.
    assert "RT3aHa2" in lap["sub_2"]
    assert selections.resolve("some/file.json") == Path("some/file.json")
    both = selections.union_trials("pretrain_split_trials, test_trials")
    assert both["sub_1"] == ["trial000", "trial001", "trial002"]


def test_derive_rule():
    labels = ["A1", "A2", "A3*", "A4", "A5", "A6", "B1", "B2", "B3", "DC1", "EKG"]
    # A3 listed with its mark: kept (upstream compares as written); B2 corrupted.
    got = selections.derive_clean_laplacian(labels, ["A3*", "B2", "DC1"])
    assert got == ["A2", "A3", "A4", "A5"]
    got = selections.derive_clean_laplacian(labels, ["A3"])
    assert got == ["A5", "B2"]


def test_script_reproduces_the_synthetic_selection(tmp_path, capsys):
    root = write_synthetic_braintreebank(tmp_path / "tree", n_subjects=2, duration_s=30,
                                         trials_per_subject=2, latent_state=False)
    shipped = root / "electrode_selections" / "clean_laplacian.json"
    script = _script()
    out = tmp_path / "derived.json"
    rc = script.main(["--root", str(root), "--corrupted", str(root / "corrupted_elec.json"),
                      "--out", str(out), "--check", str(shipped)])
    assert rc == 0, capsys.readouterr().out
    derived, want = json.loads(out.read_text()), json.loads(shipped.read_text())
    assert {s: sorted(v) for s, v in derived.items()} == {s: sorted(v) for s, v in want.items()}
    # A really corrupted interior contact drops out with both its neighbours.
    victim = sorted(want["sub_1"])[len(want["sub_1"]) // 2]
    bad = tmp_path / "corrupted.json"
    bad.write_text(json.dumps({"subject1": [victim], "subject2": []}))
    assert script.main(["--root", str(root), "--corrupted", str(bad), "--out", str(out),
                        "--check", str(shipped)]) == 1
    assert victim not in json.loads(out.read_text())["sub_1"]
    assert "DIFFERENT" in capsys.readouterr().out
    # Trial selections in upstream's form: the last trial of each subject is held out.
    assert selections.load_trials(root / "trial_selections" / "test_trials.json") == {
        "sub_1": ["trial001"], "sub_2": ["trial001"]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Random features for 2 subjects x 2 trials and shipped-style trial selections."""
    base = tmp_path_factory.mktemp("sel")
    for s in (1, 2):
        for t in (0, 1):
            write_random_features(base / "features", s, t, n_electrodes=12, n_windows=80,
                                  n_task=20, hidden_dim=8, seed=10 * s + t)
    (base / "pretrain.json").write_text(json.dumps({"sub_1": ["trial000", "trial001"],
                                                    "sub_2": ["trial000"]}))
    (base / "test.json").write_text(json.dumps({"sub_1": ["trial001"], "sub_2": ["trial001"]}))
    return base


def _opened(monkeypatch):
    seen = []
    real = h5py.File

    def spy(name, *args, **kwargs):
        seen.append(os.path.basename(os.fspath(name)))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy)
    return seen


def _read_everything(config, features):
    data = StoreData(config, features, PRETRAIN)
    it = data.train_iterator()
    for _ in range(3):
        next(it)
    for split in ("valid", "test"):
        list(data.eval_batches(split))


def _config(base, allow):
    config = load_sibling_config(str(REPO / "configs" / "x.py"), "tiny_train").get_config()
    config.data.trials = str(base / "pretrain.json")
    config.data.held_out_trials = str(base / "test.json")
    config.data.allow_held_out = allow
    return config


def test_pretraining_never_reads_a_held_out_trial(store, monkeypatch, caplog):
    seen = _opened(monkeypatch)
    with caplog.at_level(logging.INFO):
        _read_everything(_config(store, False), store / "features")
    assert seen and set(seen) == {"sub_1_trial000.h5", "sub_2_trial000.h5"}
    lines = [r.getMessage() for r in caplog.records if "fine-tuning test trials" in
             r.getMessage()]
    assert len(lines) == 1 and "sub_1/trial001" in lines[0]


def test_pretraining_reads_held_out_trials_only_when_asked(store, monkeypatch, caplog,
                                                           tmp_path):
    # Another trial set is another split: a copy of the store (splits.json is per store).
    features = tmp_path / "features"
    shutil.copytree(store / "features", features, ignore=shutil.ignore_patterns("splits.json"))
    seen = _opened(monkeypatch)
    with caplog.at_level(logging.INFO):
        _read_everything(_config(store, True), features)
    assert "sub_1_trial001.h5" in seen and "sub_2_trial001.h5" not in seen
    assert any("MAY READ" in r.getMessage() for r in caplog.records)
