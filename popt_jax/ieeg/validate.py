"""Checks of the sEEG jobs' configs and inputs, run by `popt_jax.main` before any work.

* `validate(job, config)`: every field of `extract_features`, `pretrain` and `finetune`
  configs (and their `default_inputs.extract` / `default_inputs.pretrain` sections) against its allowed values;
  one `ConfigError` line listing each `config.<field>: <problem>`.
* `run_inputs(job, config, workdir)`: the run's identity (feature store fingerprint,
  checkpoint hashes, data root, electrode selection, split settings) and whether the workdir
  already holds work to resume; `core.run_identity` records or compares it.
* `store_fingerprint(store)`: the files of a feature store must agree (BrainBERT weights,
  preprocessing, sampling, window and embedding sizes), or a `DataError` names the file.
* `warn_single_class(sources, task)`: a decoding split with one class makes ROC-AUC
  undefined; warned at split time, naming the split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from absl import logging

from popt_jax.core.run_identity import file_fingerprint, has_checkpoints
from popt_jax.core.validate import Checks
from popt_jax.errors import DataError

TASKS = ("volume", "pitch", "sentence_onset", "word_onset")
_STORE_KEYS = ("format", "checkpoint_hash", "fs", "window_samples", "hidden_dim")


# --------------------------------------------------------------------------- config checks


def _synthetic_tree(c: Checks, p: str) -> None:
    """The `write_synthetic_braintreebank` fields under prefix `p` (those present), with the
    writer's own bounds, so a bad value is one error line before any work."""
    from popt_jax.ieeg.synthetic import SYNTHETIC_FS

    for f in ("n_subjects", "trials_per_subject"):
        c.positive_int(p + f)
    c.integer(p + "n_shafts", min_value=1, max_value=200)
    c.number(p + "duration_s", min_value=30)  # 5 s windows need room
    contacts = c.get(p + "contacts", None)
    c.rule(contacts is None or (len(contacts) == 2 and all(
        isinstance(x, int) and x >= 3 for x in contacts) and contacts[0] <= contacts[1]),
        p + "contacts", f"must be (min, max) contacts with 3 <= min <= max, got {contacts!r}")
    c.positive(p + "state_cutoff_hz")
    c.non_negative(p + "state_amplitude")
    groups = c.get(p + "state_rhythms", None)
    nyquist = SYNTHETIC_FS / 2
    c.rule(groups is None or (len(groups) > 0 and all(
        len(g) > 0 and all(isinstance(f, (int, float)) and not isinstance(f, bool)
                           and 0 < f < nyquist for f in g) for g in groups)),
        p + "state_rhythms", f"must be non-empty groups of frequencies in (0, {nyquist:g}) "
        f"Hz, got {groups!r}")


def check_extract(c: Checks) -> None:
    """Fields of `configs/extract_features.py` (the section `c` points at)."""
    from popt_jax.ieeg.feature_store import DEFAULT_TASKS

    c.integer("seed", required=True)
    c.existing_path("data.root", "dir")
    _selection(c, "data.selection")
    c.existing_path("brainbert_checkpoint", "file")
    if not c.get("data.root", ""):  # the synthetic tree is written from these
        _synthetic_tree(c, "data.synthetic.")
    p = "preprocess."
    c.positive(p + "fs")
    c.positive(p + "notch_q")
    c.positive_int(p + "band_order")
    band = c.get(p + "band", None)
    fs = c.get(p + "fs", None)
    c.rule(band is None or (len(band) == 2 and 0 < band[0] < band[1]
                            and (not isinstance(fs, (int, float)) or band[1] < fs / 2)),
           p + "band", f"must be (low, high) with 0 < low < high < fs/2, got {band!r}")
    c.choice(p + "rereference", ("laplacian", "car", "none"))
    c.choice(p + "on_missing_neighbours", ("error", "skip"))
    c.choice(p + "neighbour_filtering", ("upstream", "time"))
    for f in ("window_s", "separation_s", "interval_s"):
        c.positive(p + f)
    c.positive_int(p + "chunk")
    for f in ("hidden_dim", "n_heads", "ff_dim", "n_layers"):
        c.positive_int(f"brainbert.{f}")
    c.divisible("brainbert.hidden_dim", "brainbert.n_heads")
    c.subset("tasks", DEFAULT_TASKS)
    c.choice("compute_dtype", ("float32", "bfloat16"))
    c.choice("storage_dtype", ("float32", "float16"))
    c.positive_int("batch_windows")
    c.positive_int("chunk", allow=(None,))
    c.integer("max_windows", min_value=1, allow=(None, -1))
    c.non_negative("progress_every_s")


def check_train(c: Checks, task: str, *, store_given: bool = False) -> None:
    """Fields of `configs/pretrain.py` / `configs/finetune.py` (task 'pretrain'/'finetune').

    `store_given`: the section's feature store comes from its parent run (the pretraining
    section of a fine-tuning config), so its own `features*` fields are not used.
    """
    c.integer("seed", required=True)
    for f in ("total_steps", "batch_size", "log_every", "keep_checkpoints"):
        c.positive_int(f, required=f in ("total_steps", "batch_size"))
    for f in ("eval_batch_size", "eval_every", "stop_after_steps", "num_devices"):
        c.non_negative_int(f)
    _optimiser(c)
    c.positive("body_lr_scale")
    from popt_jax.ieeg.recipe import DATA_ORDERS, EVAL_SCHEDULES

    c.choice("eval_schedule", EVAL_SCHEDULES)
    c.choice("position_code", ("table", "continuous"))  # coords.POSITION_CODES
    d = "data."
    c.choice(d + "order", DATA_ORDERS)
    c.non_negative_int(d + "max_train_examples")
    c.choice(d + "split", ("time_blocked", "random"))
    c.fraction(d + "val_fraction")
    c.fraction(d + "test_fraction")
    _fractions_below_one(c, d + "val_fraction", d + "test_fraction")
    c.positive_int(d + "time_blocks")
    c.fraction(d + "replace_p", open_low=False)
    c.non_negative(d + "coord_jitter")
    c.choice(d + "feature_norm", ("none", "file"))
    c.non_negative_int(d + "num_workers")
    buckets = c.get(d + "buckets", None)
    c.rule(buckets is None or (len(buckets) > 0 and all(
        isinstance(b, int) and b > 0 for b in buckets) and list(buckets) == sorted(set(buckets))),
        d + "buckets", f"must be increasing positive token lengths, got {buckets!r}")
    _selection(c, d + "selection")
    m = "model."
    for f in ("hidden_dim", "n_heads", "ff_dim", "n_layers", "max_len"):
        c.positive_int(m + f)
    c.divisible(m + "hidden_dim", m + "n_heads")
    c.fraction(m + "dropout", open_low=False)
    if store_given:
        return
    c.existing_path("features_dir", "dir")
    if task == "finetune":
        if c.get("features_dir", ""):
            # A store of one's own recordings names its tasks (extract_recordings'
            # event_task.name); the data layer refuses a task the store lacks, naming the file.
            task = c.get("task", "")
            c.rule(isinstance(task, str) and task not in ("", "pretrain"), "task",
                   f"must name a task group of the feature store, got {task!r}")
        else:
            c.choice("task", TASKS, required=True)
        subject = c.get(d + "subject", "")
        c.rule(isinstance(subject, (int, str)) and str(subject) != "", d + "subject",
               f"must name a subject such as 'sub_1', got {subject!r}")
        c.existing_path("init_checkpoint")
    if not c.get("features_dir", "") and c.get("default_inputs.extract", None) is not None:
        sub = Checks(c.get("default_inputs.extract"), f"{c.prefix}.default_inputs.extract")
        check_extract(sub)
        c.problems += sub.problems
    if (task == "finetune" and not c.get("init_checkpoint", "")
            and c.get("default_inputs.pretrain", None)):
        sub = Checks(c.get("default_inputs.pretrain"), f"{c.prefix}.default_inputs.pretrain")
        check_train(sub, "pretrain", store_given=True)
        c.problems += sub.problems


def check_brainbert_pretrain(c: Checks) -> None:
    """Fields of `configs/pretrain_brainbert.py`."""
    from popt_jax.ieeg.masking import LOSS_MASKS

    c.integer("seed", required=True)
    d = "data."
    c.existing_path(d + "root", "dir")
    if c.get(d + "selection", ""):
        _selection(c, d + "selection")
    if c.get(d + "trials", ""):
        _selection(c, d + "trials")
    c.existing_path(d + "store", "file")
    c.choice(d + "store_dtype", ("float32", "float16"))
    c.integer(d + "max_windows", min_value=1, allow=(-1,))
    c.fraction(d + "val_fraction")
    c.fraction(d + "test_fraction")
    _fractions_below_one(c, d + "val_fraction", d + "test_fraction")
    c.positive_int(d + "read_threads")
    if not c.get(d + "root", ""):
        _synthetic_tree(c, d + "synthetic.")
    m = "mask."
    for f in ("time_p", "freq_p"):
        c.fraction(m + f, open_low=False)
    for lo, hi in (("time_min", "time_max"), ("freq_min", "freq_max")):
        c.positive_int(m + lo)
        c.positive_int(m + hi)
        a, b = c.get(m + lo, 1), c.get(m + hi, 1)
        c.rule(not all(isinstance(x, int) for x in (a, b)) or a <= b, m + hi,
               f"must be >= {c.prefix}.{m}{lo} ({a}), got {b}")
    c.fraction(m + "keep_p", open_low=False, open_high=False)
    c.fraction(m + "replace_p", open_low=False, open_high=False)
    kp, rp = c.get(m + "keep_p", 0), c.get(m + "replace_p", 0)
    c.rule(not all(isinstance(x, (int, float)) for x in (kp, rp)) or kp + rp <= 1,
           m + "replace_p", f"keep_p + replace_p must be <= 1, got {kp} + {rp}")
    c.choice(m + "loss_mask", LOSS_MASKS)
    c.non_negative("alpha")
    for f in ("input_dim", "hidden_dim", "n_heads", "ff_dim", "n_layers"):
        c.positive_int("model." + f)
    c.divisible("model.hidden_dim", "model.n_heads")
    c.fraction("model.dropout", open_low=False)
    for f in ("total_steps", "batch_size", "eval_batch_size", "log_every", "eval_every",
              "keep_checkpoints"):
        c.positive_int(f, required=f in ("total_steps", "batch_size"))
    c.non_negative_int("num_devices")
    _optimiser(c)


def check_neuroprobe(c: Checks) -> None:
    """Fields of `configs/neuroprobe.py`."""
    from popt_jax.ieeg.neuroprobe import MODELS, SPLITS
    from popt_jax.ieeg.neuroprobe import TASKS as NP_TASKS

    c.integer("seed", required=True)
    c.existing_path("root", "dir")
    if not c.get("root", ""):
        c.positive("synthetic_seconds")
    c.choice("subset", ("lite", "nano"))
    c.choice("split", ("all", *SPLITS))
    c.subset("tasks", NP_TASKS)
    c.choice("model", MODELS)
    c.choice("context", ("none",))
    for f in ("brainbert_checkpoint", "popt_checkpoint", "publication_bib"):
        c.existing_path(f, "file" if f == "publication_bib" else "any")
    c.positive_int("chunk")
    c.positive_int("stft.nperseg")
    c.fraction("stft.overlap", open_low=False)
    c.non_negative("stft.min_freq")
    c.positive("stft.max_freq")
    lo, hi = c.get("stft.min_freq", 0), c.get("stft.max_freq", 1)
    c.rule(not all(isinstance(x, (int, float)) for x in (lo, hi)) or lo < hi,
           "stft.max_freq", f"must be > stft.min_freq ({lo}), got {hi}")
    for f in ("hidden_dim", "n_heads", "ff_dim", "n_layers"):
        c.positive_int("random_brainbert." + f)
    c.divisible("random_brainbert.hidden_dim", "random_brainbert.n_heads")
    author = c.get("author", "First Last")
    c.rule(isinstance(author, str) and len(author.split()) >= 2, "author",
           f"must be 'First Last', got {author!r}")
    c.non_negative_int("timestamp")


def check_recording_job(c: Checks, job: str) -> None:
    """Fields of `configs/{extract_recordings,embed,predict}.py` (own recordings)."""
    c.integer("seed", required=True)
    fmt = c.get("data.format", "bids")
    c.choice("data.format", ("bids", "nwb"))
    if fmt == "bids":
        c.rule(bool(c.get("data.root", "")), "data.root", "is required for BIDS input")
        c.existing_path("data.root", "dir")
    elif fmt == "nwb":
        c.rule(bool(c.get("data.path", "")), "data.path", "is required for NWB input")
        c.existing_path("data.path", "file")
        c.choice("data.coord_units", ("", "m", "cm", "mm"))
    p = "preprocess."
    c.positive(p + "fs")
    c.positive(p + "notch_q")
    c.positive(p + "window_s")
    c.positive(p + "separation_s")
    c.choice(p + "on_missing_neighbours", ("error", "skip"))
    c.choice(p + "neighbour_filtering", ("upstream", "time"))
    f = "frontend."
    c.choice(f + "rereference", ("laplacian", "bipolar", "car", "none"))
    c.integer(f + "notch_harmonics", min_value=1, allow=(-1,))
    c.choice(f + "on_missing_coords", ("drop", "error"))
    c.non_negative(f + "margin_s")
    c.positive(f + "coords.scale")
    c.choice(f + "coords.axes", ("lip", "ras"))
    c.positive_int(f + "coords.max_len")
    c.existing_path("brainbert_checkpoint", "any")
    for name in ("hidden_dim", "n_heads", "ff_dim", "n_layers"):
        c.positive_int("brainbert." + name)
    c.divisible("brainbert.hidden_dim", "brainbert.n_heads")
    c.choice("compute_dtype", ("float32", "bfloat16"))
    for name in ("batch_windows", "block_windows"):
        c.positive_int(name)
    c.positive("hop_s")
    c.integer("max_windows", min_value=1, allow=(-1,))
    c.non_negative("progress_every_s")
    if job == "embed":
        c.existing_path("popt_checkpoint", "any")
        for name in ("hidden_dim", "n_heads", "ff_dim", "n_layers"):
            c.positive_int("popt." + name)
        c.divisible("popt.hidden_dim", "popt.n_heads")
        c.choice("popt.position_code", ("table", "continuous"))
    elif job == "predict":
        ckpt = c.get("model_checkpoint", "")
        c.rule(bool(ckpt), "model_checkpoint",
               "is required: a fine-tuning workdir or a fine-tuned checkpoint")
        c.existing_path("model_checkpoint", "any")
        c.fraction("threshold")
    else:  # extract_recordings
        from popt_jax.ieeg.feature_store import DEFAULT_TASKS

        c.non_negative_int("store_subject")
        c.subset("tasks", DEFAULT_TASKS)
        c.choice("storage_dtype", ("float32", "float16"))


def check_harness(c: Checks) -> None:
    """Fields of `configs/harness.py`: the grid, and the three job sections it runs."""
    from popt_jax.ieeg import baselines
    from popt_jax.ieeg.harness import VARIANTS

    c.existing_path("features_dir", "dir")
    c.existing_path("data_root", "dir")
    c.existing_path("init_checkpoint", "any")
    c.existing_path("init_checkpoint_index", "any")
    subjects = c.get("subjects", ())
    c.rule(isinstance(subjects, (list, tuple)) and len(subjects) > 0 and all(
        isinstance(x, (str, int)) and str(x) for x in subjects), "subjects",
        f"must be a non-empty list of subjects such as 'sub_1', got {subjects!r}")
    c.subset("tasks", (*TASKS, "pos", "rms_reg"))
    c.subset("variants", VARIANTS)
    c.subset("splits", ("random", "time_blocked"))
    c.subset("baselines", baselines.BASELINES, non_empty=False)
    seeds = c.get("seeds", ())
    c.rule(isinstance(seeds, (list, tuple)) and len(seeds) > 0 and all(
        isinstance(x, int) and not isinstance(x, bool) for x in seeds), "seeds",
        f"must be a non-empty list of integers, got {seeds!r}")
    c.positive_int("few_shot_examples")
    for name, check in (("features", check_extract), ("pretrain", None),
                        ("finetune", None)):
        section = c.get(name, None)
        if section is None:
            continue
        sub = Checks(section, f"{c.prefix}.{name}")
        if check is not None:
            check(sub)
        else:
            check_train(sub, name, store_given=True)
        c.problems += sub.problems


def _optimiser(c: Checks) -> None:
    """Optimiser fields shared by the training jobs."""
    c.positive("lr")
    c.non_negative("weight_decay")
    c.non_negative("grad_clip")
    c.fraction("warmup", open_low=False)
    c.fraction("gamma", open_high=False)
    c.positive("lamb_clamp_value")
    c.choice("optimizer", ("lamb", "adamw"))
    c.choice("compute_dtype", ("float32", "bfloat16"))
    c.choice("rng_impl", ("rbg", "unsafe_rbg", "threefry2x32"))


def _fractions_below_one(c: Checks, a: str, b: str) -> None:
    va, vb = c.get(a, 0), c.get(b, 0)
    c.rule(not all(isinstance(x, (int, float)) for x in (va, vb)) or va + vb < 1, b,
           f"{a.rsplit('.', 1)[-1]} + {b.rsplit('.', 1)[-1]} must be < 1, got {va} + {vb}")


def _selection(c: Checks, field: str) -> None:
    """An electrode selection: a packaged name (`popt_jax.ieeg.selections`) or a JSON file."""
    from popt_jax.ieeg import selections

    if c.get(field, "") not in selections.PACKAGED:
        c.existing_path(field, "file")


def _selection_fingerprint(spec) -> Any:
    from popt_jax.ieeg import selections

    return file_fingerprint(selections.resolve(spec)) if spec else None


JOBS = ("extract_features", "pretrain", "finetune", "pretrain_brainbert", "neuroprobe",
        "extract_recordings", "embed", "predict", "harness")


def validate(job: str, config) -> None:
    """Raises one `ConfigError` naming every invalid field of an sEEG job's config."""
    c = Checks(config)
    if job == "extract_features":
        check_extract(c)
    elif job in ("pretrain", "finetune"):
        check_train(c, job)
    elif job == "pretrain_brainbert":
        check_brainbert_pretrain(c)
    elif job == "neuroprobe":
        check_neuroprobe(c)
    elif job == "harness":
        check_harness(c)
    else:
        check_recording_job(c, job)
    c.done()


# --------------------------------------------------------------------------- run inputs


def store_fingerprint(store: str | Path, subjects=None) -> dict[str, Any]:
    """What a feature store was made from, after checking that its files agree.

    Every file (of `subjects`, default all) must share the BrainBERT checkpoint hash, the
    preprocessing config, fs, window length and embedding width, and every embeddings
    dataset must be [*, n_electrodes, hidden_dim]; otherwise a `DataError` names the file
    and what differs from the first one.
    """
    from popt_jax.ieeg.braintreebank import subject_id
    from popt_jax.ieeg.feature_store import _NOT_FINGERPRINTED, read_attrs

    store = Path(store)
    wanted = {subject_id(s) for s in subjects} if subjects else None
    files: dict[str, Any] = {}
    first: tuple[Path, dict[str, Any]] | None = None
    for path in sorted(store.glob("sub_*_trial*.h5")):
        attrs = read_attrs(path)
        if wanted is not None and attrs.get("subject") not in wanted:
            continue
        shared = {k: attrs.get(k) for k in _STORE_KEYS}
        shared["preprocess_config"] = {k: v for k, v in attrs["preprocess_config"].items()
                                       if k not in _NOT_FINGERPRINTED}
        if first is None:
            first = (path, shared)
        else:
            diff = [k for k in shared if shared[k] != first[1][k]]
            if diff:
                raise DataError(path, "written with other settings than "
                                f"{first[0].name} in the same feature store ("
                                + ", ".join(f"{k}: {_short(shared[k])} vs {_short(first[1][k])}"
                                            for k in diff)
                                + "); re-extract the store with one config")
        n_e, dim = len(attrs["electrode_names"]), int(attrs["hidden_dim"])
        with h5py.File(path, "r") as f:
            for name in ("pretrain/embeddings", "windows/embeddings"):
                if name in f and tuple(f[name].shape[1:]) != (n_e, dim):
                    raise DataError(path, f"{name} has shape {f[name].shape}, but the file "
                                    f"lists {n_e} electrodes of width {dim}")
        files[path.name] = {"subject": attrs["subject"], "electrodes": n_e,
                            "n_samples": int(attrs["n_samples"]), "groups": attrs["groups"],
                            "extraction": attrs.get("extraction")}
    if first is None:
        raise DataError(store, "no feature files (sub_*_trial*.h5) for the requested subjects")
    return {**first[1], "files": files}


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _cfg(section) -> Any:
    if section is None:
        return None
    return json.loads(json.dumps(section.to_dict() if hasattr(section, "to_dict")
                                 else dict(section), default=list))


def extract_identity(config) -> dict[str, Any]:
    """Data root, electrode selection and BrainBERT of an extraction config."""
    d = config.data
    root = d.get("root") or ""
    ckpt = config.get("brainbert_checkpoint") or ""
    return {
        "data_root": str(Path(root).absolute()) if root else {"synthetic": _cfg(d.synthetic)},
        "selection": _selection_fingerprint(d.get("selection")) or "default",
        "subjects": list(d.get("subjects") or []),
        "brainbert": (file_fingerprint(ckpt) if ckpt else
                      {"random": _cfg(config.get("brainbert")), "seed": config.get("seed")}),
    }


IDENTITY_JOBS = ("extract_features", "pretrain", "finetune", "pretrain_brainbert")


def run_inputs(job: str, config, workdir: str | Path) -> tuple[dict[str, Any], bool]:
    """(identity, resuming) of an sEEG job in `workdir` (see the module docstring)."""
    workdir = Path(workdir)
    if job == "pretrain_brainbert":
        d = config.data
        root = d.get("root") or ""
        store = d.get("store") or ""
        identity = {
            "job": job, "seed": config.get("seed"),
            "data_root": str(Path(root).absolute()) if root else {"synthetic": _cfg(
                d.synthetic)},
            "selection": _selection_fingerprint(d.get("selection")) or "default",
            "trials": _selection_fingerprint(d.get("trials")) or "all",
            "store": file_fingerprint(store) if store else "built in {workdir}",
            "preprocess": _cfg(config.get("preprocess")),
            "model": _cfg(config.get("model")),
        }
        return identity, has_checkpoints(workdir / "checkpoints")
    if job == "extract_features":
        identity = {"job": job, **extract_identity(config)}
        return identity, any((workdir / "features").glob("*.h5"))
    d = config.data
    identity: dict[str, Any] = {"job": job, "seed": config.get("seed")}
    if config.get("features_dir"):
        subjects = [d.subject] if job == "finetune" else list(d.get("subjects") or [])
        identity["features"] = store_fingerprint(config.features_dir, subjects or None)
    else:
        identity["features"] = {"extracted_in_workdir": extract_identity(
            config.default_inputs.extract)}
    identity["selection"] = _selection_fingerprint(d.get("selection")) or "all"
    identity["split"] = {k: d.get(k) for k in ("split", "val_fraction", "test_fraction",
                                                "time_blocks")}
    if job == "pretrain":
        identity["subjects"] = list(d.get("subjects") or [])
    else:
        identity["task"], identity["subject"] = config.get("task"), d.get("subject")
        init = config.get("init_checkpoint") or ""
        identity["init_checkpoint"] = (file_fingerprint(init) if init
                                       else "pretrained in {workdir}/pretrain")
    resuming = (has_checkpoints(workdir / "checkpoints")
                or has_checkpoints(workdir / "pretrain" / "checkpoints"))
    return identity, resuming


# --------------------------------------------------------------------------- splits


def warn_single_class(sources: dict[str, Any], task: str) -> list[str]:
    """Warns about (and returns) the splits whose labels hold a single class."""
    bad = []
    for name, src in sources.items():
        labels = getattr(src, "labels", None)
        if labels is None or not len(labels):
            continue
        classes = np.unique(np.asarray(labels))
        if len(classes) < 2:
            bad.append(name)
            logging.warning(
                "the %s split of '%s' has a single class (all %s, %d examples): ROC-AUC is "
                "undefined there%s", name, task, classes[0], len(labels),
                "; the best checkpoint is chosen by validation loss instead" if name == "val"
                else " and is reported as null")
    return bad
