"""The Neuroprobe job on the synthetic stand-in: the package's own splits and labels, the
submission folder as SUBMIT.md specifies it, the summary, the leak check and the baselines."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from popt_jax.core.config_lib import load_sibling_config
from popt_jax.errors import TrainingError
from popt_jax.ieeg import neuroprobe as NP
from popt_jax.ieeg.neuroprobe_synthetic import write_neuroprobe_synthetic

ROOT = Path(__file__).resolve().parents[2]
SESSION = "btbank1_1"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    return write_neuroprobe_synthetic(tmp_path_factory.mktemp("np") / "bt", seconds=90.0)


def _config(root, **overrides):
    config = load_sibling_config(str(ROOT / "configs" / "x.py"), "neuroprobe").get_config("tiny")
    config.root = str(root)
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


@pytest.fixture(scope="module")
def run(stand_in, tmp_path_factory):
    """All 15 tasks, Within-Session, one evaluation session."""
    work = tmp_path_factory.mktemp("np_run")
    config = _config(stand_in, tasks=NP.TASKS, sessions=(SESSION,), author="Ada Lovelace",
                     timestamp=1700000000, split="within_session")
    summary = NP.neuroprobe_job(config, work)
    return work, Path(summary["submission"]), summary


def test_submission_folder_follows_submit_md(run):
    work, sub, _ = run
    assert re.fullmatch(r".+_[^_]+_[^_]+_\d{1,2}_\d{1,2}_\d{4}", sub.name)
    assert sub.name.startswith("Laplacian-STFT-Linear-popt-jax_Ada_Lovelace_")
    meta = json.loads((sub / "metadata.json").read_text())
    for field, kind in (("model_name", str), ("description", str), ("author", str),
                        ("organization", str), ("organization_url", str),
                        ("timestamp", (int, float))):
        assert isinstance(meta[field], kind), field
    assert meta["timestamp"] == 1700000000 and meta["author"] == "Ada Lovelace"
    assert "@" in (sub / "PUBLICATION.bib").read_text()
    attestation = (sub / "ATTESTATION.txt").read_text()
    assert attestation.count("SIGN **Full Name Of Submitting Author**") == 2  # never signed
    assert sorted(p.name for p in sub.iterdir() if p.is_dir()) == ["Within-Session"]
    for split, n_folds in (("Within-Session", 2),):
        files = sorted(p.name for p in (sub / split).iterdir())
        assert files == sorted(f"population_{t}.json" for t in NP.TASKS)
        for task in NP.TASKS:
            body = json.loads((sub / split / f"population_{task}.json").read_text())
            assert body["model_name"] == meta["model_name"]
            assert list(body["evaluation_results"]) == [SESSION]
            res = body["evaluation_results"][SESSION]["population"]["one_second_after_onset"]
            assert (res["time_bin_start"], res["time_bin_end"]) == (0.0, 1.0)
            assert len(res["folds"]) == n_folds
            for fold in res["folds"]:
                assert set(fold) == {"train_accuracy", "train_roc_auc", "test_accuracy",
                                     "test_roc_auc"}
                assert all(0.0 <= v <= 1.0 for v in fold.values())
    assert not list(work.glob("*.tmp"))


def test_planted_tasks_decode_and_unplanted_do_not(run, stand_in, tmp_path):
    _, _, summary = run
    auc = {(r["split"], r["task"]): r["test_roc_auc"] for r in summary["rows"]}
    cross = NP.neuroprobe_job(_config(stand_in, tasks=("onset", "speech"), split="cross_subject",
                                      sessions=(SESSION, "btbank3_1")), tmp_path / "cs")
    assert {r["split"] for r in cross["rows"]} == {"Cross-Subject"}
    auc.update({(r["split"], r["task"]): r["test_roc_auc"] for r in cross["rows"]})
    for split in ("Within-Session", "Cross-Subject"):
        for task in ("onset", "speech"):  # planted in the stand-in
            assert auc[(split, task)] > 0.85, (split, task, auc[(split, task)])
    unplanted = [auc[("Within-Session", t)] for t in ("gpt2_surprisal", "word_length",
                                                     "global_flow", "local_flow", "pitch")]
    assert 0.3 < float(np.mean(unplanted)) < 0.7, unplanted


def test_summary_table_agrees_with_population_files(run):
    work, sub, summary = run
    import csv

    rows = list(csv.DictReader(open(work / "summary.csv")))
    assert len(rows) == len(NP.TASKS) == len(summary["rows"])
    for row in rows:
        body = json.loads((sub / row["split"] / f"population_{row['task']}.json").read_text())
        folds = body["evaluation_results"][SESSION]["population"]["one_second_after_onset"][
            "folds"]
        assert float(row["test_roc_auc"]) == pytest.approx(np.mean([f["test_roc_auc"]
                                                                    for f in folds]))
    assert (work / "summary.png").stat().st_size > 10_000


def test_windows_and_labels_are_the_packages(stand_in):
    """`Neuroprobe.folds` hands on exactly the package's windows and labels."""
    import neuroprobe.train_test_splits as splits

    nprobe = NP.Neuroprobe(stand_in)
    ours = nprobe.folds("within_session", 1, 1, "onset", nano=True)
    theirs = splits.generate_splits_within_session(
        nprobe.subject(1), 1, "onset", lite=True, nano=True, output_indices=True,
        output_dict=False, start_neural_data_before_word_onset=0,
        end_neural_data_after_word_onset=2048)
    assert len(ours) == len(theirs) == 2
    for mine, fold in zip(ours, theirs, strict=True):
        for key in ("train", "test"):
            ds = fold[f"{key}_dataset"]
            items = [ds[i] for i in range(len(ds))]
            assert mine[key][0].tolist() == [w[0] for w, _ in items]
            assert mine[key][1].tolist() == [y for _, y in items]
            assert all(w[1] - w[0] == 2048 for w, _ in items)
        # Positive onsets are sentence starts of the stand-in's alignment table.
        words = np.loadtxt(stand_in / "neuroprobe_alignment" / "subject1_trial1_words_df.csv",
                           delimiter=",", skiprows=1, usecols=1)
        pos = mine["train"][0][mine["train"][1] == 1]
        assert np.isin(pos, words.astype(np.int64)).all()


def test_stft_matches_torch_and_laplacian_rule():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(3, 5, 2048)).astype(np.float32)
    ref = torch.stft(torch.from_numpy(x.reshape(15, -1)), n_fft=512, hop_length=128,
                     win_length=512, window=torch.hann_window(512), return_complex=True,
                     center=True).abs()
    freqs = np.fft.rfftfreq(512, 1 / 2048)
    ref = ref[:, freqs <= 150].numpy().reshape(3, 5, -1, ref.shape[-1]).transpose(0, 1, 3, 2)
    np.testing.assert_allclose(NP.stft_abs(x), ref, rtol=1e-4, atol=1e-4)
    names = ["A1", "A2", "A3", "B7", "C1"]
    lap = NP.laplacian_within(x[0], names)
    np.testing.assert_allclose(lap[0], x[0, 0] - x[0, 1], atol=1e-6)  # one neighbour
    np.testing.assert_allclose(lap[1], x[0, 1] - (x[0, 0] + x[0, 2]) / 2, atol=1e-6)
    np.testing.assert_array_equal(lap[3], x[0, 3])  # no neighbour: kept


def test_leak_check_refuses_eval_sessions_and_accepts_allowed(tmp_path):
    bad, good = tmp_path / "bad", tmp_path / "good"
    for folder, sessions in ((bad, ["btbank1_0", "btbank1_1"]), (good, NP.ALLOWED_PRETRAINING)):
        folder.mkdir()
        (folder / "provenance.json").write_text(json.dumps({"trained_on": list(sessions)}))
    eval_sessions = [f"btbank{s}_{t}" for s, t in ((1, 1), (1, 2), (2, 0), (2, 4))]
    config = _config(tmp_path, brainbert_checkpoint=str(bad / "model.safetensors"))
    with pytest.raises(TrainingError, match="btbank1_1") as err:
        NP.leak_check(config, eval_sessions)
    assert "btbank1_0" not in str(err.value).split("evaluation session(s)")[1].split(".")[0]
    config.leak_override = "published weights; see the paper"
    assert "published weights" in NP.leak_check(config, eval_sessions)
    config = _config(tmp_path, brainbert_checkpoint=str(good / "model.safetensors"))
    assert NP.leak_check(config, eval_sessions) == ""
    (tmp_path / "none").mkdir()
    config = _config(tmp_path, brainbert_checkpoint=str(tmp_path / "none" / "m.pth"))
    with pytest.raises(TrainingError, match="no record"):
        NP.leak_check(config, eval_sessions)


def test_leaky_run_writes_nothing_and_says_one_line(stand_in, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "provenance.json").write_text(json.dumps({"trained_on": ["btbank1_1"]}))
    (ckpt / "m.safetensors").write_bytes(b"")  # refused by provenance before it is read
    work = tmp_path / "w"
    res = subprocess.run(
        [sys.executable, "-m", "popt_jax.main", "--config", "configs/neuroprobe.py:tiny",
         "--workdir", str(work), "--config.root", str(stand_in), "--config.model",
         "brainbert_linear", "--config.brainbert_checkpoint", str(ckpt / "m.safetensors")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "btbank1_1" in errors[0] and "Traceback" not in res.stderr
    # Only the workdir lock may be there: no submission, no summary, nothing that looks done.
    left = {p.name for p in work.iterdir()} if work.exists() else set()
    assert left <= {".popt_jax.lock", "run_identity.json"}, left


def test_brainbert_features_run_end_to_end(stand_in, tmp_path):
    config = _config(stand_in, model="brainbert_linear", tasks=("onset",),
                     sessions=(SESSION,), split="within_session")
    summary = NP.neuroprobe_job(config, tmp_path / "bb")
    aucs = [r["test_roc_auc"] for r in summary["rows"]]
    assert len(aucs) == 1 and all(np.isfinite(aucs))
    sub = Path(summary["submission"])
    assert (sub / "Within-Session" / "population_onset.json").exists()


def test_neuroprobes_own_format_test(run, tmp_path):
    """Runs Neuroprobe's tests/test_submission_format.py against the folder, when its source
    is available (NEUROPROBE_SOURCE: a checkout of insight-neuro/neuroprobe)."""
    source = os.environ.get("NEUROPROBE_SOURCE", "")
    test_file = Path(source) / "tests" / "test_submission_format.py"
    if not test_file.is_file():
        pytest.skip("set NEUROPROBE_SOURCE to a neuroprobe checkout to run its format test")
    _, sub, _ = run
    (tmp_path / "tests").mkdir()
    shutil.copy(test_file, tmp_path / "tests" / test_file.name)
    shutil.copytree(sub, tmp_path / "leaderboard" / sub.name)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path / "tests")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]


def test_benchmark_tiny_mode_runs(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_np", ROOT / "scripts" /
                                                  "benchmark_neuroprobe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--tiny"])
    text = capsys.readouterr().out
    assert all(v > 0 for v in out.values()) and "ratio vs reference" in text
    assert "Neuroprobe Lite" in text
