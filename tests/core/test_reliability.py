"""Every bad value, mismatched input and busy workdir ends in one clear line (issue 16).

Each case runs `python -m popt_jax.main` and asserts exit code 2, exactly one `error:` line,
no traceback, and that the prepared tiny workdir is byte-identical afterwards. Classes:
config values (1), OS failures that need no mount (2; the rest in test_faults.py), silent
mixing of inputs (3), undefined metrics (4), memory amplification by a checkpoint (5) and
two runs on one workdir (6).
"""

from __future__ import annotations

import json
import logging
import shutil
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from reliability_util import ROOT, assert_one_error, run_main, snapshot, tiny_pretrain_args

from popt_jax.core import jsonio, run_identity
from popt_jax.core.config_lib import load_sibling_config
from popt_jax.core.workdir import WorkdirBusy, WorkdirLock
from popt_jax.errors import ConfigError, DataError


def _config(name: str, arg=None):
    module = load_sibling_config(str(ROOT / "configs" / "x.py"), name)
    return module.get_config(arg) if arg is not None else module.get_config()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A random-feature store (sub_1, 8 electrodes, width 32) in the real layout."""
    from popt_jax.ieeg.extract import write_random_features

    out = tmp_path_factory.mktemp("store") / "features"
    write_random_features(out, 1, 0, n_electrodes=8, n_windows=60, n_task=40, hidden_dim=32)
    return out


@pytest.fixture(scope="module")
def pre(store, tmp_path_factory) -> Path:
    """A finished tiny pretraining workdir (checkpoints at steps 3 and 6) on `store`."""
    workdir = tmp_path_factory.mktemp("pre") / "run"
    res = run_main(*tiny_pretrain_args(store, workdir))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (workdir / "run_identity.json").exists()
    return workdir


# --------------------------------------------------------------------------- 1. config


@pytest.mark.parametrize("args, needles", [
    (["--config", "configs/tiny_train.py:pretrain", "--config.batch_size=0",
      "--config.data.split=bogus", "--config.model.hidden_dim=31"],
     ["config.batch_size: must be >= 1, got 0", "config.data.split: 'bogus'",
      "config.model.hidden_dim: 31 is not divisible"]),
    (["--config", "configs/brain_encoder.py", "--config.subject=9",
      "--config.train.epochs=-1"], ["config.subject", "config.train.epochs"]),
    (["--config", "{syntax}"], ["syntax.py:1", "SyntaxError"]),
    (["--config", "{raises}"], ["raises.py:2", "RuntimeError: boom"]),
    (["--config", "configs/tiny.py", "--config.job=nope"], ["config.job: 'nope'"]),
], ids=["pretrain-values", "brain-encoder-values", "syntax-error", "config-raises",
        "unknown-job"])
def test_bad_config_is_one_line_and_touches_nothing(args, needles, tmp_path, pre):
    (tmp_path / "syntax.py").write_text("x = (\n")
    (tmp_path / "raises.py").write_text("def get_config():\n    raise RuntimeError('boom')\n")
    args = [a.format(syntax=tmp_path / "syntax.py", raises=tmp_path / "raises.py")
            for a in args]
    before = snapshot(pre)
    assert_one_error(run_main(*args, "--workdir", str(pre)), *needles)
    assert snapshot(pre) == before


@pytest.mark.parametrize("name, arg, overrides, field", [
    ("tiny_train", "pretrain", {"total_steps": -1}, "config.total_steps"),
    ("tiny_train", "pretrain", {"eval_every": -5}, "config.eval_every"),
    ("tiny_train", "pretrain", {"data.val_fraction": 1.5}, "config.data.val_fraction"),
    ("tiny_train", "pretrain", {"data.val_fraction": 0.6, "data.test_fraction": 0.5},
     "config.data.test_fraction"),
    ("tiny_train", "pretrain", {"optimizer": "sgd"}, "config.optimizer"),
    ("tiny_train", "pretrain", {"default_inputs.extract.preprocess.rereference": "bipolar"},
     "config.default_inputs.extract.preprocess.rereference"),
    ("tiny_train", "pretrain", {"features_dir": "/no/such/store"}, "config.features_dir"),
    ("tiny_train", "pretrain", {"data.buckets": (32, 16)}, "config.data.buckets"),
    ("tiny_train", "pretrain", {"eval_schedule": "sometimes"}, "config.eval_schedule"),
    ("tiny_train", "finetune", {"data.order": "sorted"}, "config.data.order"),
    ("tiny_train", "finetune", {"task": "loudness"}, "config.task"),
    ("tiny_train", "finetune", {"default_inputs.pretrain.batch_size": 0},
     "config.default_inputs.pretrain.batch_size"),
    ("tiny_train", "finetune", {"init_checkpoint": "/no/such.pth"}, "config.init_checkpoint"),
    ("tiny", None, {"batch_windows": 0}, "config.batch_windows"),
    ("tiny", None, {"max_windows": 0}, "config.max_windows"),
    ("tiny", None, {"storage_dtype": "int8"}, "config.storage_dtype"),
    ("tiny", None, {"tasks": ("pretrain", "nope")}, "config.tasks"),
    ("tiny", None, {"data.synthetic.n_subjects": 0}, "config.data.synthetic.n_subjects"),
    ("tiny", None, {"preprocess.band": (250.0, 70.0)}, "config.preprocess.band"),
    ("brain_encoder", None, {"train.batch_size": 0}, "config.train.batch_size"),
    ("brain_encoder", None, {"model.readout": "rois"}, "config.model.readout"),
    ("brain_encoder", None, {"train.val_fraction": 1.0}, "config.train.val_fraction"),
    ("brain_encoder", None, {"data.root": "/no/such/root"}, "config.data.root"),
    ("brain_encoder", None, {"features.enc_output_layer": 0}, "config.features.enc_output_layer"),
    ("pretrain_brainbert", "tiny", {"batch_size": 0}, "config.batch_size"),
    ("pretrain_brainbert", "tiny", {"mask.loss_mask": "fixed"}, "config.mask.loss_mask"),
    ("pretrain_brainbert", "tiny", {"data.synthetic.state_rhythms": ((2000.0,),)},
     "config.data.synthetic.state_rhythms"),
    ("pretrain_brainbert", "tiny", {"data.synthetic.duration_s": 10.0},
     "config.data.synthetic.duration_s"),
    ("pretrain_brainbert", "tiny", {"data.synthetic.contacts": (2, 4)},
     "config.data.synthetic.contacts"),
    ("pretrain_brainbert", "tiny", {"mask.time_min": 6}, "config.mask.time_max"),
    ("pretrain_brainbert", "tiny", {"mask.keep_p": 0.6, "mask.replace_p": 0.6},
     "config.mask.replace_p"),
    ("pretrain_brainbert", None, {"data.trials": "/no/such/trials.json"}, "config.data.trials"),
    ("pretrain_brainbert", None, {"model.hidden_dim": 63}, "config.model.hidden_dim"),
    ("neuroprobe", "tiny", {"subset": "full"}, "config.subset"),
    ("neuroprobe", "tiny", {"split": "cross_time"}, "config.split"),
    ("neuroprobe", "tiny", {"tasks": ("onset", "loudness")}, "config.tasks"),
    ("neuroprobe", None, {"model": "svm"}, "config.model"),
    ("neuroprobe", None, {"author": "Anonymous"}, "config.author"),
    ("neuroprobe", None, {"stft.min_freq": 200.0}, "config.stft.max_freq"),
    ("harness", "tiny", {"variants": ("popt", "bogus")}, "config.variants"),
    ("harness", "tiny", {"seeds": ()}, "config.seeds"),
    ("harness", "tiny", {"finetune.batch_size": 0}, "config.finetune.batch_size"),
    ("harness", "tiny", {"features.batch_windows": -1}, "config.features.batch_windows"),
    ("embed", "tiny", {"data.root": ""}, "config.data.root"),
    ("embed", "tiny", {"frontend.rereference": "average"}, "config.frontend.rereference"),
    ("embed", "tiny", {"popt.position_code": "mni"}, "config.popt.position_code"),
    ("predict", "tiny", {"model_checkpoint": ""}, "config.model_checkpoint"),
    ("extract_recordings", "tiny", {"data.format": "edf"}, "config.data.format"),
    ("extract_recordings", "tiny", {"tasks": ("pretrain", "nope")}, "config.tasks"),
    ("brain_encoder_ensemble", None, {"runs": ""}, "config.runs"),
    ("brain_encoder_ensemble", None, {"runs": "/no/run/a,/no/run/b"}, "config.runs"),
    ("predict_images", None, {"images": ""}, "config.images"),
    ("predict_images", None, {"hemi": "both"}, "config.hemi"),
])
def test_validators_name_the_field(name, arg, overrides, field, tmp_path):
    config = _config(name, arg)
    _give_recording_inputs(config, tmp_path)
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(ConfigError) as info:
        _validate(config)
    assert str(info.value).startswith(field + ":") or f"; {field}:" in str(info.value), \
        str(info.value)


def _give_recording_inputs(config, tmp_path) -> None:
    """Fills the paths that configs of the own-recording and image jobs need (empty when
    shipped: the user passes them)."""
    if config.job in ("embed", "predict", "extract_recordings"):
        config.data.root = str(tmp_path)
        if config.job == "predict":
            config.model_checkpoint = str(tmp_path)
    elif config.job == "predict_images":
        config.run = config.images = str(tmp_path)
    elif config.job == "brain_encoder_ensemble":
        config.runs = f"{tmp_path},{tmp_path}"


def _validate(config) -> None:
    from popt_jax.main import FMRI_JOBS

    if config.job in FMRI_JOBS:
        from popt_jax.fmri.validate import validate
    else:
        from popt_jax.ieeg.validate import validate
    validate(config.job, config)


@pytest.mark.parametrize("name, arg", [
    ("tiny_train", "pretrain"), ("tiny_train", "finetune"), ("tiny", None),
    ("brain_encoder", None), ("brain_encoder", "clip"), ("brain_encoder", "resnet50"),
    ("pretrain", "paper"), ("finetune", "paper"),
    ("extract_features", None), ("pretrain_brainbert", None), ("pretrain_brainbert", "paper"),
    ("pretrain_brainbert", "tiny"), ("neuroprobe", None), ("neuroprobe", "tiny"),
    ("harness", None), ("harness", "paper"), ("harness", "tiny"), ("embed", None),
    ("predict", None), ("extract_recordings", None), ("brain_encoder_ensemble", None),
    ("predict_images", None), ("pretrain", "neuroprobe"), ("pretrain_brainbert", "neuroprobe"),
    ("extract_features", "neuroprobe")])
def test_shipped_configs_validate(name, arg, tmp_path):
    config = _config(name, arg)
    _give_recording_inputs(config, tmp_path)
    _validate(config)


def test_every_job_has_its_checks():
    """A job added to `main.JOB_NAMES` without an entry in its family's validator would run
    unchecked: `preflight` refuses it, and this test names it."""
    from popt_jax.fmri import validate as fmri_validate
    from popt_jax.ieeg import validate as ieeg_validate
    from popt_jax.main import FMRI_JOBS, JOB_NAMES

    assert set(FMRI_JOBS) == set(fmri_validate.JOBS)
    assert set(JOB_NAMES) == set(fmri_validate.JOBS) | set(ieeg_validate.JOBS)
    assert not set(fmri_validate.JOBS) & set(ieeg_validate.JOBS)


@pytest.mark.parametrize("args, field", [
    (["--config", "configs/pretrain_brainbert.py:tiny", "--config.total_steps=0"],
     "config.total_steps"),
    (["--config", "configs/neuroprobe.py:tiny", "--config.subset=full"], "config.subset"),
    (["--config", "configs/predict_images.py", "--config.images=/no/such/folder"],
     "config.images"),
], ids=["pretrain_brainbert", "neuroprobe", "predict_images"])
def test_later_jobs_are_checked_before_any_work(args, field, tmp_path):
    workdir = tmp_path / "run"
    assert_one_error(run_main(*args, "--workdir", str(workdir)), field)
    assert not workdir.exists()  # refused before the workdir was made


# --------------------------------------------------------------------------- 2. OS (no mount)


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_workdir_that_is_a_file(store, tmp_path, where):
    target = tmp_path / "afile"
    target.write_text("keep me")
    workdir = target if where == "file" else target / "run"
    assert_one_error(run_main(*tiny_pretrain_args(store, workdir)), str(workdir),
                     "Not a directory")
    assert target.read_text() == "keep me"


# --------------------------------------------------------------------------- 3. mixing


def _other_store(store: Path, dst: Path, **attrs) -> Path:
    shutil.copytree(store, dst)
    for path in dst.glob("*.h5"):
        with h5py.File(path, "r+") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
    (dst / "splits.json").unlink(missing_ok=True)
    return dst


def test_resume_on_a_store_of_other_weights_is_refused(pre, store, tmp_path):
    other = _other_store(store, tmp_path / "other", checkpoint_hash="sha256-of-other-weights")
    before = snapshot(pre)
    assert_one_error(run_main(*tiny_pretrain_args(other, pre)), "features.checkpoint_hash",
                     "random-features-0", "sha256-of-other-weights")
    assert snapshot(pre) == before


def test_brainbert_pretraining_resume_on_other_inputs_is_refused(tmp_path):
    """BrainBERT pretraining records its inputs; a resume on another data root or another
    electrode selection is refused naming them (no training needed to show it)."""
    from popt_jax.core import run_identity
    from popt_jax.ieeg.validate import run_inputs

    (tmp_path / "root_a").mkdir()
    (tmp_path / "root_b").mkdir()
    workdir = tmp_path / "bb"
    config = _config("pretrain_brainbert", "tiny")
    config.data.root = str(tmp_path / "root_a")
    identity, resuming = run_inputs("pretrain_brainbert", config, workdir)
    assert not resuming
    workdir.mkdir()
    run_identity.check_or_record(workdir, identity, resuming=resuming)
    (workdir / "checkpoints" / "6").mkdir(parents=True)  # a finished step: now a resume
    assert run_inputs("pretrain_brainbert", config, workdir) == (identity, True)
    config.data.root = str(tmp_path / "root_b")
    config.data.selection = "clean_laplacian"
    other, resuming = run_inputs("pretrain_brainbert", config, workdir)
    with pytest.raises(run_identity.InputMismatch) as info:
        run_identity.check_or_record(workdir, other, resuming=resuming)
    assert "data_root" in str(info.value) and "selection" in str(info.value)
    assert "root_a" in str(info.value) and "root_b" in str(info.value)


def test_store_with_files_of_other_settings_is_refused(store, tmp_path):
    from popt_jax.ieeg.extract import write_random_features

    mixed = tmp_path / "mixed"
    shutil.copytree(store, mixed)
    (mixed / "splits.json").unlink(missing_ok=True)
    write_random_features(mixed, 2, 0, n_electrodes=8, n_windows=60, n_task=40, hidden_dim=16)
    workdir = tmp_path / "run"
    assert_one_error(run_main(*tiny_pretrain_args(mixed, workdir)), "sub_2_trial000.h5",
                     "hidden_dim: 16 vs 32")
    assert not (workdir / "checkpoints").exists()


def test_store_whose_embeddings_disagree_with_its_attrs(store, tmp_path):
    from popt_jax.ieeg.validate import store_fingerprint

    bad = _other_store(store, tmp_path / "bad", hidden_dim=64)
    with pytest.raises(DataError, match="embeddings has shape .* width 64"):
        store_fingerprint(bad)
    assert store_fingerprint(store)["hidden_dim"] == 32


def test_brain_encoder_resume_on_another_data_root(tmp_path):
    from popt_jax.fmri.validate import run_inputs

    root_a, root_b, workdir = tmp_path / "a", tmp_path / "b", tmp_path / "run"
    for d in (root_a, root_b, workdir / "checkpoints" / "12"):
        d.mkdir(parents=True)
    config = _config("brain_encoder")
    config.data.root = str(root_a)
    identity, resuming = run_inputs("brain_encoder", config, workdir)
    assert resuming
    run_identity.check_or_record(workdir, identity, resuming=False)
    before = snapshot(workdir)
    res = run_main("--config", "configs/brain_encoder.py", "--workdir", str(workdir),
                   f"--config.data.root={root_b}")
    assert_one_error(res, "data_root", str(root_a), str(root_b))
    assert snapshot(workdir) == before


def test_identity_names_every_difference(tmp_path):
    from popt_jax.ieeg.validate import run_inputs

    config = _config("tiny_train", "finetune")
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    identity, resuming = run_inputs("finetune", config, tmp_path)
    assert resuming
    run_identity.check_or_record(tmp_path, identity, resuming=False)
    run_identity.check_or_record(tmp_path, identity, resuming=True)  # same inputs: fine
    config.task, config.data.val_fraction = "pitch", 0.2
    changed, _ = run_inputs("finetune", config, tmp_path)
    with pytest.raises(run_identity.InputMismatch) as info:
        run_identity.check_or_record(tmp_path, changed, resuming=True)
    assert "task: recorded 'word_onset', now 'pitch'" in str(info.value)
    assert "split.val_fraction: recorded 0.1, now 0.2" in str(info.value)
    assert "\n" not in str(info.value)


def test_extraction_resume_on_another_data_root(tmp_path):
    from popt_jax.ieeg.validate import run_inputs

    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "sub_1_trial000.h5").write_bytes(b"")
    config = _config("tiny")
    identity, resuming = run_inputs("extract_features", config, tmp_path)
    assert resuming
    run_identity.check_or_record(tmp_path, identity, resuming=False)
    config.data.root = str(tmp_path / "real_braintreebank")
    with pytest.raises(run_identity.InputMismatch, match="data_root"):
        run_identity.check_or_record(tmp_path, run_inputs("extract_features", config,
                                                          tmp_path)[0], resuming=True)


# --------------------------------------------------------------------------- 4. undefined


def test_nan_is_written_as_null_with_a_reason(tmp_path):
    path = tmp_path / "results.json"
    jsonio.atomic_json(path, {"test": {"roc_auc": float("nan"), "loss": 0.5},
                              "curve": np.array([1.0, np.inf])})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    out = json.loads(text)
    assert out["test"] == {"roc_auc": None, "loss": 0.5}
    assert "single class" in out["undefined"]["test.roc_auc"]
    assert "curve[1]" in out["undefined"]


def test_best_step_never_chosen_by_nan(tmp_path):
    import jax.numpy as jnp

    from popt_jax.core.checkpoints import Checkpoints

    meta = {"format": "test/1", "task": "finetune", "model": {}}
    ck = Checkpoints(tmp_path / "ck", meta, keep=5, best_metric="roc_auc", best_mode="max")
    params, opt = {"w": jnp.zeros(2)}, {"m": jnp.zeros(2)}
    for step, loss in ((1, 0.9), (2, 0.4), (3, 0.7)):
        ck.save(step, params, opt, {"step": step}, metrics={"roc_auc": float("nan"),
                                                           "loss": loss})
    ck.wait()
    assert ck.best_step() == 2 and "lowest valid loss" in ck.best_reason
    ck.save(4, params, opt, {"step": 4}, metrics={"roc_auc": 0.6, "loss": 0.8})
    ck.wait()
    assert ck.best_step() == 4 and ck.best_reason == "best valid roc_auc"
    ck.close()


def test_single_class_split_is_warned_by_name(caplog):
    from popt_jax.ieeg.validate import warn_single_class

    class Src:
        def __init__(self, labels):
            self.labels = np.asarray(labels)

    with caplog.at_level(logging.WARNING):
        bad = warn_single_class({"train": Src([0, 1, 1]), "val": Src([1, 1]),
                                 "test": Src([0, 0, 0])}, "volume")
    assert bad == ["val", "test"]
    text = caplog.text
    assert "the val split of 'volume' has a single class" in text
    assert "the test split of 'volume' has a single class" in text


def test_finetune_on_single_class_splits_reports_null(pre, store, tmp_path):
    one_class = tmp_path / "one_class"
    shutil.copytree(store, one_class)
    (one_class / "splits.json").unlink(missing_ok=True)
    with h5py.File(next(one_class.glob("*.h5")), "r+") as f:
        f["volume/labels"][...] = 1
    workdir = tmp_path / "ft"
    res = run_main("--config", "configs/tiny_train.py:finetune", "--workdir", str(workdir),
                   f"--config.features_dir={one_class}", f"--config.init_checkpoint={pre}",
                   "--config.task=volume", "--config.data.split=random")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "the val split of 'volume' has a single class" in res.stderr
    results = json.loads((workdir / "results.json").read_text())
    assert results["test"]["roc_auc"] is None
    assert "single class" in results["undefined"]["test.roc_auc"]
    assert "lowest valid loss" in results["best_rule"]
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        assert "NaN" not in line


# --------------------------------------------------------------------------- 5. memory


def _expanded_pth(path: Path, legacy: bool) -> None:
    torch = pytest.importorskip("torch")
    big = torch.zeros(1, dtype=torch.float32).expand(1 << 28)  # 1 GiB if materialised
    torch.save({"weight": torch.ones(3), "position_ids": big}, path,
               _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_expanded_tensor_is_refused_before_allocating(tmp_path, legacy):
    from popt_jax.core.torch_pickle import CheckpointError, load_pth

    path = tmp_path / "expanded.pth"
    _expanded_pth(path, legacy)
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="over the .*-byte limit") as info:
            load_pth(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_compressed_storage_bomb_is_refused(tmp_path):
    import zipfile

    from popt_jax.core.torch_pickle import CheckpointError, load_pth

    torch = pytest.importorskip("torch")
    src, dst = tmp_path / "small.pth", tmp_path / "bomb.pth"
    torch.save({"w": torch.zeros(1 << 26)}, src)  # 256 MiB of zeros
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), zipfile.ZIP_DEFLATED)
    src.unlink()
    assert dst.stat().st_size < 2 << 20
    with pytest.raises(CheckpointError, match="limit"):
        load_pth(dst)


def test_tied_and_viewed_tensors_still_load(tmp_path):
    from popt_jax.core.torch_pickle import load_pth

    torch = pytest.importorskip("torch")
    emb = torch.randn(50, 16)
    state = {"embed.weight": emb, "lm_head.weight": emb, "rows": emb[10:20],
             "t": emb.t(), "pos": torch.arange(8).expand(1, 8)}
    torch.save(state, tmp_path / "tied.pth")
    out = load_pth(tmp_path / "tied.pth")
    for k, v in state.items():
        np.testing.assert_array_equal(out[k], v.numpy())


# --------------------------------------------------------------------------- 6. one workdir


def test_second_run_on_a_busy_workdir_is_refused(pre, store):
    before = snapshot(pre)
    with WorkdirLock(pre):
        res = run_main(*tiny_pretrain_args(store, pre))
    assert_one_error(res, str(pre), "in use by another popt_jax run", "pid")
    assert snapshot(pre) == before
    with WorkdirLock(pre):  # released by the refused run
        pass


def test_lock_is_exclusive_and_stale_files_do_not_block(tmp_path):
    (tmp_path / ".popt_jax.lock").write_text("pid 999999 on gone since long ago\n")
    with WorkdirLock(tmp_path):  # a lock file without a live holder does not block
        with pytest.raises(WorkdirBusy, match="pid"):
            WorkdirLock(tmp_path).acquire()
    with WorkdirLock(tmp_path):
        pass
