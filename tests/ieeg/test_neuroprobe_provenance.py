"""Training provenance (``trained_on``) from the real artefacts of the training jobs, the
Neuroprobe leak check reading it, PopT fine-tuned per Neuroprobe fold, and the leak-free
``:neuroprobe`` pretraining recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from popt_jax.core.config_lib import load_sibling_config
from popt_jax.errors import TrainingError
from popt_jax.ieeg import brainbert_pretrain as bp
from popt_jax.ieeg import extract, provenance, selections, train
from popt_jax.ieeg import neuroprobe as NP
from popt_jax.ieeg.neuroprobe_synthetic import write_neuroprobe_synthetic

ROOT = Path(__file__).resolve().parents[2]
LITE = [f"btbank{s}_{t}" for s, t in ((1, 1), (1, 2), (2, 0), (2, 4), (3, 0), (3, 1), (4, 0),
                                      (4, 1), (7, 0), (7, 1), (10, 0), (10, 1))]


def _cfg(name: str, arg: str | None = None):
    return load_sibling_config(str(ROOT / "configs" / "x.py"), name).get_config(arg)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    return write_neuroprobe_synthetic(tmp_path_factory.mktemp("npp") / "bt", seconds=90.0)


def _brainbert(work: Path, trial: str) -> Path:
    """A tiny BrainBERT pretraining on ONE synthetic session (sub_1 `trial`); its workdir."""
    config = _cfg("pretrain_brainbert", "tiny")
    config.data.synthetic.n_subjects = 1
    config.data.synthetic.trials_per_subject = 2  # trial000 = btbank1_0, trial001 = btbank1_1
    work.mkdir(parents=True)
    (work / "trials.json").write_text(json.dumps({"sub_1": [trial]}))
    config.data.trials = str(work / "trials.json")
    bp.pretrain_brainbert(config, work)
    return work


@pytest.fixture(scope="module")
def leaky_brainbert(tmp_path_factory):
    """A tiny BrainBERT pretrained on btbank1_1 only."""
    return _brainbert(tmp_path_factory.mktemp("bb") / "leaky", "trial001")


def _popt(work: Path, trial: int, hidden: int) -> Path:
    """A tiny PopT pretraining on random features of ONE session (sub_1 `trial`)."""
    store = work / "features"
    extract.write_random_features(store, 1, trial, n_electrodes=12, n_windows=120, n_task=20,
                                  hidden_dim=hidden)
    provenance.write_provenance(store, provenance.NONE)  # random features: no data behind them
    config = _cfg("tiny_train", "pretrain")
    config.features_dir = str(store)
    config.data.held_out_trials = ""
    train.pretrain_job(config, work / "run")
    return work / "run"


@pytest.fixture(scope="module")
def allowed_popt(tmp_path_factory):
    """A tiny PopT pretrained on features of btbank1_0 only (an allowed session), 64-d as the
    neuroprobe config's random BrainBERT."""
    return _popt(tmp_path_factory.mktemp("popt") / "allowed", 0, 64)


def test_brainbert_pretraining_records_its_sessions(leaky_brainbert):
    work = leaky_brainbert
    results = json.loads((work / "results.json").read_text())
    assert results["trained_on"] == ["btbank1_1"] and results["complete"] is True
    export = json.loads((work / "brainbert_best" / "provenance.json").read_text())
    assert export["trained_on"] == ["btbank1_1"]
    assert provenance.read_provenance(work / "brainbert_best" / "model.safetensors")[0][
        "trained_on"] == ["btbank1_1"]


def test_popt_pretraining_records_its_sessions(allowed_popt):
    results = json.loads((allowed_popt / "results.json").read_text())
    assert results["trained_on"] == ["btbank1_0"] and results["complete"] is True
    assert json.loads((allowed_popt / "popt_best" / "provenance.json").read_text())[
        "trained_on"] == ["btbank1_0"]


def test_records_are_transitive_and_incomplete_without_a_record(allowed_popt, leaky_brainbert,
                                                                tmp_path):
    """Fine-tuning inherits its initialisation's and its store's sessions; a store whose
    BrainBERT has no record makes the model incomplete, and the leak check refuses it."""
    data = type("D", (), {"sessions": ["btbank5_0"]})()
    store = tmp_path / "store"
    provenance.write_provenance(store, provenance.read_provenance(leaky_brainbert)[0])
    rec = train.finetune_trained_on(data, store, allowed_popt)
    assert rec["trained_on"] == ["btbank1_0", "btbank1_1", "btbank5_0"] and rec["complete"]
    bare = tmp_path / "bare"
    bare.mkdir()
    rec = train.finetune_trained_on(data, bare, allowed_popt)
    assert rec["complete"] is False and rec["sources"]["features"]["trained_on"] is None
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "results.json").write_text(json.dumps(rec))
    config = _cfg("neuroprobe", "tiny")
    config.popt_checkpoint = str(tmp_path / "ft")
    with pytest.raises(TrainingError, match="incomplete record"):
        NP.leak_check(config, LITE)
    config.leak_override = "testing"
    assert "incomplete record" in NP.leak_check(config, LITE)


def test_extraction_store_records_sessions_and_its_brainbert(leaky_brainbert, tmp_path):
    paths = [tmp_path / "sub_1_trial000.h5", tmp_path / "sub_2_trial004.h5"]
    config = _cfg("extract_features")
    config.brainbert_checkpoint = str(leaky_brainbert / "brainbert_best" / "model.safetensors")
    rec = extract.store_provenance(config, paths)
    assert rec["sessions"] == ["btbank1_0", "btbank2_4"]
    assert rec["trained_on"] == ["btbank1_1"] and rec["complete"]
    config.brainbert_checkpoint = ""
    assert extract.store_provenance(config, paths)["trained_on"] == []


def test_neuroprobe_job_refuses_a_brainbert_pretrained_on_btbank1_1(leaky_brainbert, stand_in,
                                                                   tmp_path):
    ckpt = leaky_brainbert / "brainbert_best" / "model.safetensors"
    work = tmp_path / "w"
    res = subprocess.run(
        [sys.executable, "-m", "popt_jax.main", "--config", "configs/neuroprobe.py:tiny",
         "--workdir", str(work), "--config.root", str(stand_in), "--config.model",
         "brainbert_linear", "--config.brainbert_checkpoint", str(ckpt)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "evaluation session(s) btbank1_1 " in errors[0] and "leak_override" in errors[0]
    left = {p.name for p in work.iterdir()} if work.exists() else set()
    assert left <= {".popt_jax.lock", "run_identity.json"}, left


def test_popt_finetune_per_fold_accepts_an_allowed_checkpoint(allowed_popt, leaky_brainbert,
                                                              stand_in, tmp_path):
    """The neuroprobe job with model=popt_finetune from a PopT pretraining workdir of an allowed
    session: accepted, each fold fine-tuned, the submission written; the same job with the
    BrainBERT pretrained on btbank1_1 is refused before any work."""
    config = _cfg("neuroprobe", "tiny")
    config.root = str(stand_in)
    config.model = "popt_finetune"
    config.popt_checkpoint = str(allowed_popt / "popt_best" / "model.safetensors")
    config.brainbert_checkpoint = str(leaky_brainbert / "brainbert_best" / "model.safetensors")
    with pytest.raises(TrainingError, match=r"evaluation session\(s\) btbank1_1 "):
        NP.neuroprobe_job(config, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    config.brainbert_checkpoint = ""  # the config's seeded random BrainBERT: saw no data
    config.popt_checkpoint = str(allowed_popt)
    config.tasks = ("onset",)
    config.sessions = ("btbank1_1",)
    config.split = "within_session"
    summary = NP.neuroprobe_job(config, tmp_path / "ft")
    sub = Path(summary["submission"])
    meta = json.loads((sub / "metadata.json").read_text())
    assert "overridden" not in meta["description"]
    body = json.loads((sub / "Within-Session" / "population_onset.json").read_text())
    folds = body["evaluation_results"]["btbank1_1"]["population"]["one_second_after_onset"][
        "folds"]
    assert len(folds) == 2
    for fold in folds:
        assert set(fold) == {"train_accuracy", "train_roc_auc", "test_accuracy", "test_roc_auc"}
        assert all(0.0 <= v <= 1.0 for v in fold.values()), fold
    assert "@inproceedings{chau2025popt" in (sub / "PUBLICATION.bib").read_text()


def test_fold_finetuner_learns_a_separable_fold():
    """A fold whose label is written into one electrode's embedding is learnt (test AUROC
    near 1), from a random PopT, within a few dozen steps; folds are reproducible."""
    from popt_jax.ieeg.neuroprobe_finetune import FoldFinetuner, stratified_holdout

    config = _cfg("neuroprobe", "tiny")
    ft = config.finetune
    ft.total_steps, ft.lr, ft.body_lr_scale, ft.gamma, ft.eval_every = 60, 3e-3, 1.0, 1.0, 20
    rng = np.random.default_rng(0)
    coords = rng.integers(0, 100, (7, 3))

    def fold(n, e):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, e, 16)).astype(np.float32)
        x[:, 0, :4] += 2.0 * (2 * y[:, None] - 1)
        return x, y, coords[:e]

    tuner = FoldFinetuner(config, 16)
    x_tr, y_tr, c_tr = fold(96, 5)
    x_te, y_te, c_te = fold(48, 7)  # two more electrodes (padding differs)
    out = tuner(x_tr, y_tr, c_tr, x_te, y_te, c_te, "within_session/btbank1_1/onset/0")
    assert out["test_roc_auc"] > 0.95 and out["train_roc_auc"] > 0.95, out
    assert out["test_accuracy"] > 0.8, out
    # Every fold restarts from the same weights, seeded by its name: the same fold again gives
    # the same result, whatever ran in between.
    tuner(x_te, y_te, c_te, x_tr, y_tr, c_tr, "another fold")
    assert tuner(x_tr, y_tr, c_tr, x_te, y_te, c_te, "within_session/btbank1_1/onset/0") == out
    fit, val = stratified_holdout(np.array([0] * 10 + [1] * 30), 0.1, 0)
    assert len(val) == 4 and not set(fit) & set(val) and len(fit) + len(val) == 40


@pytest.mark.parametrize("name", ["pretrain", "pretrain_brainbert", "extract_features"])
def test_neuroprobe_variants_pretrain_on_allowed_sessions_only(name):
    config = _cfg(name, "neuroprobe")
    trials = selections.union_trials(config.data.trials)
    sessions = set(provenance.sessions_of_trials(trials))
    assert sessions and sessions <= set(NP.ALLOWED_PRETRAINING)
    assert not sessions & set(LITE)
    if name == "pretrain":
        held = selections.union_trials(config.data.held_out_trials)
        assert set(provenance.sessions_of_trials(held)) == set(LITE)
        assert not config.data.allow_held_out
        extract_trials = selections.union_trials(config.default_inputs.extract.data.trials)
        assert set(provenance.sessions_of_trials(extract_trials)) == sessions


def test_packaged_session_lists_match_the_neuroprobe_package():
    os.environ.setdefault("ROOT_DIR_BRAINTREEBANK", "/nonexistent")
    import neuroprobe.config as npc

    lite = {f"btbank{s}_{t}" for s, t in npc.NEUROPROBE_LITE_SUBJECT_TRIALS}
    assert lite == set(LITE)
    held = selections.union_trials("neuroprobe_lite_sessions")
    assert set(provenance.sessions_of_trials(held)) == lite
    allowed = selections.union_trials("neuroprobe_allowed_pretraining")
    assert set(provenance.sessions_of_trials(allowed)) == set(NP.ALLOWED_PRETRAINING)
