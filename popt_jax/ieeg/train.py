"""PopT pretraining and fine-tuning: `pretrain_job(config, workdir)`, `finetune_job(...)`.

    python -m popt_jax.main --config configs/pretrain.py --workdir runs/pretrain
    python -m popt_jax.main --config configs/finetune.py --workdir runs/finetune

A job reads its inputs from paths (`features_dir`, for fine-tuning `init_checkpoint`); empty
ones are filled by the one default-inputs step (`defaults.prepare_default_inputs`).
`train_and_evaluate` is the run both jobs share, built from `popt_jax.core.loop`: a replicated
model state on a ("data",) mesh, ONE jitted step (`objectives.make_train_step`), validation
every `eval_every` steps, Orbax checkpoints under `{workdir}/checkpoints` (the latest
`keep_checkpoints` plus the best by validation: loss for pretraining, ROC-AUC for fine-tuning,
ties to the earliest), automatic resume, and at the end the test split evaluated with the best
checkpoint.

Outputs in the workdir:
  * `checkpoints/<step>/`: params, opt_state, progress (step, base PRNG key), meta (task and
    architecture: a workdir of another model is refused, nothing overwritten), and the data
    position -- the grain iterator state, one JSON per process (`data/`);
  * `splits.json` (or `config.data.split_file`): the train/val/test split, made once and
    reused (the feature store is only read, so experiments can share it);
  * `metrics.jsonl`: one JSON object per train/valid/test line (lines after the resumed step
    are dropped on resume); `tensorboard/`: the same scalars (`tb_writer`);
  * `results.json` (atomic, at the end): test metrics, and for fine-tuning the predictions
    (sigmoid), labels and example ids, plus the config;
  * pretraining: `popt_best/model.safetensors` + `config.json` of the best weights
    (`convert.load_popt` and upstream load it; only for upstream-expressible sizes).

Resume is exact: the dropout key of step t is fold_in(seed key, t), the batches come from
the restored grain iterator, and the step is a jitted pure function, so on CPU a resumed run
repeats the uninterrupted one bit for bit. A non-finite training or validation loss stops
the run with a one-line `TrainingError` naming the step and the last good checkpoint.

Multi-process runs: `config.distributed` (or JAX_COORDINATOR_ADDRESS) calls
`jax.distributed.initialize`, which must happen before JAX touches a device; call the job
functions directly (as the multi-process test does) -- `popt_jax.main` logs the devices first.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from popt_jax.core import loop, steps
from popt_jax.core import mesh as mesh_lib
from popt_jax.core.checkpoints import (
    Checkpoints,
    quiet_orbax_logs,
    restore_best_params,
)
from popt_jax.core.logs import Logs
from popt_jax.core.metrics import compute_metrics
from popt_jax.core.overview import parameter_overview
from popt_jax.errors import TrainingError
from popt_jax.ieeg import (
    convert,
    defaults,
    objectives,
    optim,
    provenance,
    recipe,
    selections,
    variants,
)
from popt_jax.ieeg.coords import check_position_code, position_code_of
from popt_jax.ieeg.objectives import FINETUNE, PRETRAIN, REGRESSION
from popt_jax.ieeg.popt import PopT, PopTClassifier, PopTConfig

CHECKPOINT_FORMAT = "popt_jax.train/1"
BEST_BY = {PRETRAIN: ("loss", "min"), FINETUNE: ("roc_auc", "max"),  # best checkpoint by valid
           REGRESSION: ("loss", "min")}
NON_FINITE_HINT = ("Try a lower config.lr, compute_dtype=float32, or check the features for "
                   "NaN/inf")


class TaskData(Protocol):
    """What the loop needs from the data layer (`StoreData` over `popt_jax.data.datasets`)."""

    input_dim: int  # embedding width of the feature store

    def train_iterator(self) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of every global training batch, forever.

        The iterator has `get_state()` / `set_state(state)`: a grain `DatasetIterator` (its
        state is checkpointed by grain's Orbax handler, one file per process) or any
        iterator whose state is a JSON-able dict (stored with the step; single-process).
        """

    def eval_batches(self, split: str) -> Iterable[dict[str, np.ndarray]]:
        """This process's rows of the `split` ('valid'/'test') batches; every process must
        yield the same number of batches (short ones padded with `valid` False rows)."""


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def popt_config_from(cfg, input_dim: int) -> PopTConfig:
    """`PopTConfig` from `config.model` (input_dim from the feature store)."""
    fields = {f.name for f in dataclasses.fields(PopTConfig)}
    kw = {k: v for k, v in cfg.items() if k in fields and k != "input_dim"}
    return PopTConfig(input_dim=int(input_dim), **kw)


def compute_dtype(config):
    name = str(config.get("compute_dtype", "float32"))
    if name not in ("float32", "bfloat16"):
        raise TrainingError(f"config.compute_dtype must be float32 or bfloat16, got {name!r}")
    return jnp.dtype(name)


def build_model(task: str, popt_cfg: PopTConfig, *, seed: int, dtype=jnp.float32):
    """A fresh PopT (pretraining) or PopTClassifier (fine-tuning), float32 parameters."""
    rngs = nnx.Rngs(seed)
    if task == PRETRAIN:
        return PopT(popt_cfg, rngs=rngs, dtype=dtype)
    return PopTClassifier(popt_cfg, n_out=1, rngs=rngs, dtype=dtype)


def checked_popt_config(config, data: TaskData, popt_cfg: PopTConfig | None) -> PopTConfig:
    """`popt_cfg` (default: from `config.model`), checked against the store's width."""
    popt_cfg = popt_cfg or popt_config_from(config.model, data.input_dim)
    # The data layer feeds what config.position_code says: the model must read the same.
    check_position_code(popt_cfg.position_code, position_code_of(config), "config.model")
    if popt_cfg.input_dim != data.input_dim:
        raise TrainingError(f"the model takes {popt_cfg.input_dim}-d embeddings but the feature "
                            f"store holds {data.input_dim}-d ones (extract features with a "
                            "BrainBERT of that width, e.g. the published one for 768)")
    return popt_cfg


def build_parts(config, task: str, popt_cfg: PopTConfig, init_params: nnx.State | None = None
                ) -> tuple[steps.ModelParts, Any]:
    """(split model, optimizer) of a fresh model, its PopT body optionally from `init_params`."""
    dtype = compute_dtype(config)
    model = build_model(task, popt_cfg, seed=int(config.seed), dtype=dtype)
    if init_params is not None:
        nnx.update(model.upstream, init_params)
    logging.info("%s model (%s compute, float32 params):\n%s", type(model).__name__,
                 dtype.name, parameter_overview(model))
    return steps.split_model(model), variants.make_optimizer(config)


def popt_step_fn(config, task: str, parts: steps.ModelParts, tx, mesh):
    """The `loop.run_steps` step: checks the local batch, plans token packing, runs the
    jitted train step on the global batch; aux = the gradient norm."""
    train_step = objectives.make_train_step(
        task, parts, tx, mesh, loss_scaled_grad=bool(config.get("loss_scaled_grad", True)))
    local_bs = mesh_lib.local_batch_size(int(config.batch_size), mesh)
    pack_tokens = bool(config.get("pack_tokens", True))

    def step_fn(params, opt_state, batch, key):
        if len(batch["x"]) != local_bs:
            raise TrainingError(f"the data layer gave {len(batch['x'])} rows, expected "
                                f"{local_bs} (batch_size / processes)")
        packed = objectives.pack_spec(task, batch, mesh) if pack_tokens else None
        params, opt_state, m, gnorm = train_step(params, opt_state,
                                                 mesh_lib.to_global(batch, mesh), key, packed)
        return params, opt_state, m, {"grad_norm": gnorm}

    return step_fn


def model_meta(task: str, popt_cfg: PopTConfig) -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "task": task, "model": dataclasses.asdict(popt_cfg)}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(task: str, eval_step, params, batches: Iterable[dict[str, np.ndarray]],
             batch_size: int, mesh) -> tuple[dict[str, float], dict[str, Any]]:
    """Runs `eval_step` over `batches` (the last padded to `batch_size` global rows).

    Returns (scalar metrics, extras): pretraining -> loss (cls_loss + token_loss), cls_loss,
    token_loss, accuracies; fine-tuning -> loss, accuracy, roc_auc, f1, and the per-example
    predictions and labels in extras.
    """
    local = mesh_lib.local_batch_size(batch_size, mesh)
    collection = objectives.metrics_class(task).empty()
    preds = (variants.RegressionPredictions if task == REGRESSION else
             objectives.Predictions).empty()
    n_batches = 0
    for batch in batches:
        batch = mesh_lib.pad_rows(batch, local)
        gbatch = mesh_lib.to_global(batch, mesh)
        m, logits = eval_step(params, gbatch)
        collection = collection.merge(m)
        n_batches += 1
        if task != PRETRAIN:
            ids = batch.get("index", np.full(local, -1, np.int64)).astype(np.int64)
            preds = preds.merge(type(preds).from_model_output(
                logits=mesh_lib.host_array(logits), labels=mesh_lib.host_array(gbatch["label"]),
                mask=mesh_lib.host_array(gbatch["weight"]) > 0, ids=mesh_lib.allgather_host(ids)))
    if not n_batches:
        raise TrainingError("an evaluation split has no examples; check the data split")
    values = compute_metrics(collection)
    values.pop("loss", None)  # the per-batch mean; replaced by an exact mean below
    extras: dict[str, Any] = {}
    if task == PRETRAIN:
        values["loss"] = values["cls_loss"] + values["token_loss"]
    else:
        values["loss"] = values.pop("example_loss")
        out = preds.compute()
        for key in ("roc_auc", "f1", "pearson_r", "r2"):
            if key in out:
                values[key] = out[key]
        extras = {"predictions": out["predictions"], "labels": out["labels"],
                  "example_ids": out["ids"]}
    return values, extras


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str | os.PathLike, *, task: str, data: TaskData,
                       init_params: nnx.State | None = None,
                       popt_cfg: PopTConfig | None = None,
                       trained_on: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains `task` on `data` in `workdir` (resuming if it holds checkpoints) and tests.

    Args:
      config: the job config (`configs/pretrain.py` / `configs/finetune.py` fields).
      workdir: output folder.
      task: 'pretrain' or 'finetune'.
      data: a `TaskData`.
      init_params: fine-tuning only, the pretrained PopT body's params (nnx.Param state).
      popt_cfg: the PopT architecture; default from `config.model` and `data.input_dim`.
      trained_on: the sessions the weights saw (`popt_jax.ieeg.provenance` record), written
        into results.json and beside the export; None = not recorded.

    Returns:
      The `results.json` content.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    quiet_orbax_logs()
    mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
    popt_cfg = checked_popt_config(config, data, popt_cfg)
    parts, tx = build_parts(config, task, popt_cfg, init_params)
    eval_step = objectives.make_eval_step(task, parts, mesh)
    ckpts = Checkpoints(workdir / "checkpoints", model_meta(task, popt_cfg),
                        keep=int(config.get("keep_checkpoints", 2)),
                        best_metric=BEST_BY[task][0], best_mode=BEST_BY[task][1])
    train_iter = data.train_iterator()
    state = loop.restore_or_init(ckpts, mesh_lib.replicate(parts.params, mesh),
                                 mesh_lib.replicate(tx.init(parts.params), mesh), train_iter,
                                 seed=int(config.seed), rng_impl=str(config.get("rng_impl", "rbg")))
    schedule = loop.Schedule.from_config(config)
    logs = Logs(workdir, schedule.total, state.step)
    eval_bs = int(config.get("eval_batch_size") or config.batch_size)
    try:
        stopped = loop.run_steps(
            state, schedule, train_iter=train_iter, ckpts=ckpts, logs=logs,
            step_fn=popt_step_fn(config, task, parts, tx, mesh),
            validate=lambda params: evaluate(task, eval_step, params, data.eval_batches("valid"),
                                             eval_bs, mesh)[0],
            lr_fn=lambda step: _current_lr(config, step), hint=NON_FINITE_HINT)
        if stopped:
            return {"stopped_at": state.step}
        best, best_params = loop.best_params(ckpts, state)
        test, extras = evaluate(task, eval_step, best_params, data.eval_batches("test"), eval_bs,
                                mesh)
        logging.info("test (best step %s by valid %s): %s", best, BEST_BY[task][0],
                     " ".join(f"{k} {v:.4f}" for k, v in test.items()))
        logs.write(state.step, "test", test)
        results = {
            "task": task, "best_step": best, "best_valid": ckpts.manager.metrics(best),
            "test": test, "steps": state.step, "train_seconds": round(state.train_seconds, 3),
            "n_examples": dict(getattr(data, "sizes", {})),
            "model": dataclasses.asdict(popt_cfg), "workdir": str(workdir.absolute()),
            "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
            "best_rule": ckpts.best_reason,  # how best_step was chosen
            **(trained_on or {}),
            **{k: np.asarray(v).tolist() for k, v in extras.items()}}
        if task == PRETRAIN and jax.process_index() == 0:
            _export(nnx.merge(parts.graphdef, jax.device_get(best_params), parts.rngs,
                              parts.consts), workdir / "popt_best" / "model.safetensors")
            if trained_on is not None:
                provenance.write_provenance(workdir / "popt_best", trained_on)
        loop.write_results(workdir, results)
        return results
    finally:
        ckpts.close()
        logs.close()


def _export(model, path: Path) -> None:
    try:
        convert.export_safetensors(model, str(path))
        logging.info("best weights exported to %s", path)
    except ValueError as e:  # e.g. a feed-forward width upstream's config cannot express
        logging.warning("best weights not exported as safetensors: %s", e)


def _current_lr(config, step: int) -> float:
    return float(optim.ramp_up_schedule(float(config.lr), int(config.total_steps),
                                     float(config.warmup), float(config.gamma))(step))


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------


def load_init(path: str | os.PathLike) -> tuple[PopTConfig, nnx.State]:
    """(architecture, nnx.Param state) of a pretrained PopT to fine-tune from.

    Accepts a popt_jax pretraining workdir (its best checkpoint by validation loss), a
    converted checkpoint (safetensors + config.json, file or directory) or an upstream
    `.pth` (PopT, or a fine-tuned PopTClassifier whose body is taken).
    """
    path = Path(path)
    if (path / "checkpoints").is_dir():
        def abstract(meta):  # checks the task before anything is read
            if meta.get("task") != PRETRAIN:
                raise TrainingError(f"{path}: not a popt_jax pretraining workdir "
                                    f"(checkpoint task {meta.get('task')!r})")
            cfg = PopTConfig(**meta["model"])
            return nnx.state(nnx.eval_shape(lambda: PopT(cfg, rngs=nnx.Rngs(0))), nnx.Param)

        step, meta, params = restore_best_params(path, "loss", "min", abstract)
        popt_cfg = PopTConfig(**meta["model"])
        logging.info("initialising from %s step %d", path, step)
        return popt_cfg, params
    model = convert.load_popt(str(path))
    if isinstance(model, PopTClassifier):
        model = model.upstream
    logging.info("initialising from %s", path)
    return model.config, nnx.state(model, nnx.Param)


class StoreData:
    """`TaskData` over the feature store with the grain pipelines of `popt_jax.data.datasets`.

    Pretraining: `PretrainSource` (pairs A/B, replacement from R) over the store's subjects;
    fine-tuning: `FinetuneSource` of `config.task` for `config.data.subject`. Splits are
    made once and saved in `split_file` (the jobs: `config.data.split_file`, default
    `{workdir}/splits.json`; the store is only read). Each process reads every
    `process_count`-th example (grain sharding by process index) into its rows of the batch.
    """

    def __init__(self, config, store: Path, task: str, split_file: Path | None = None):
        from popt_jax.ieeg import datasets as ds

        self._ds, self.task = ds, task
        d = config.data
        self.buckets = tuple(int(b) for b in d.buckets)
        self.workers = int(d.get("num_workers", 0))
        self._group = int(d.get("group_by_length", 0)) if task == PRETRAIN else 0
        self.seed = int(config.seed)
        self.order = str(d.get("order", "shuffle"))  # recipe.DATA_ORDERS
        n_proc = jax.process_count()
        self.batch = int(config.batch_size) // n_proc
        self.eval_batch = int(config.get("eval_batch_size") or config.batch_size) // n_proc
        self.shard = dict(shard_index=jax.process_index(), shard_count=n_proc)
        split = dict(split_mode=str(d.split), val_frac=float(d.val_fraction),
                     test_frac=float(d.test_fraction), time_blocks=int(d.time_blocks))
        selection = d.get("selection") or None
        if selection:  # a packaged name ("clean_laplacian") or a path
            selection = str(selections.resolve(selection))
        shared = dict(selection=selection, split_file=split_file,
                      trials=job_trials(d, store, task))
        if task == PRETRAIN:
            pcfg = ds.PretrainConfig(replace_p=float(d.replace_p), coord_jitter=float(
                d.coord_jitter), pair_seed=self.seed, example_seed=self.seed,
                keep_split_order=self.order == "upstream",
                feature_norm=str(d.get("feature_norm", "none")),
                position_code=position_code_of(config), **split)

            def make(name):
                return ds.PretrainSource(store, name, pcfg, subjects=list(d.subjects) or None,
                                         **shared)
            self.sources = {name: make(name) for name in ("train", "val", "test")}
        else:  # one or several subjects, optionally a few-shot training split (variants)
            self.sources = variants.finetune_sources(config, store, **shared)
        for name, src in self.sources.items():
            if len(src) < n_proc:
                raise TrainingError(f"the {task} {name} split has {len(src)} examples, fewer "
                                    f"than the {n_proc} processes; use more data or other "
                                    "split fractions")
        if task == FINETUNE:  # ROC-AUC is undefined on a single-class split: say so now
            from popt_jax.ieeg.validate import warn_single_class

            warn_single_class(self.sources, str(config.task))
        first = self.sources["train"][0]
        self.input_dim = int(np.shape(first["a" if task == PRETRAIN else "x"])[-1])
        self.sizes = {k: len(v) for k, v in self.sources.items()}
        self.sessions = provenance.sessions_of_trials(selections.trials_of_files(
            {p for src in self.sources.values() for p in _paths(src)}))
        logging.info("%s data from %s: %s examples", task, store,
                     {k: len(v) for k, v in self.sources.items()})

    def train_iterator(self):
        dataset = self._ds.make_dataset(self.sources["train"], batch_size=self.batch,
                                        train=True, seed=self.seed, buckets=self.buckets,
                                        worker_count=self.workers, order=_order(self.order),
                                        **self.shard, group_by_length=int(self._group))
        return iter(dataset)

    def eval_batches(self, split: str):
        src = self.sources["val" if split == "valid" else split]
        dataset = self._ds.make_dataset(src, batch_size=self.eval_batch, train=False,
                                        buckets=self.buckets, **self.shard)
        # Every process must run the same number of steps: shards differ by at most one
        # example, so a short shard ends with an all-filler batch.
        per_process = math.ceil(len(src) / self.shard["shard_count"])
        n_batches = math.ceil(per_process / self.eval_batch)
        last = None
        for last in dataset:
            n_batches -= 1
            yield last
        for _ in range(n_batches):
            yield {**last, "valid": np.zeros_like(last["valid"])}


def _paths(src) -> list:
    """The feature files a source (or a concatenation / subset of sources) reads."""
    if hasattr(src, "paths"):
        return list(src.paths)
    if hasattr(src, "sources"):
        return [p for part in src.sources for p in _paths(part)]
    return _paths(src.source) if hasattr(src, "source") else []


def run_provenance(data: "StoreData", inherited_from: str | os.PathLike,
                   what: str) -> dict[str, Any]:
    """The provenance record of a run on `data` built on `inherited_from` (a feature store
    for pretraining, an initial checkpoint for fine-tuning): `popt_jax.ieeg.provenance`."""
    found = provenance.read_provenance(inherited_from)
    if found is None:
        logging.warning("%s %s has no record of its training sessions; this run's "
                        "provenance is marked incomplete", what, inherited_from)
    return provenance.merge(data.sessions, found[0] if found else None, str(inherited_from),
                            what)


def split_file(config, workdir: Path) -> Path:
    """Where the run's splits live: `config.data.split_file`, or `{workdir}/splits.json`."""
    return Path(config.data.get("split_file") or Path(workdir) / "splits.json")


def job_trials(d, store: Path, task: str) -> dict[str, list[str]] | None:
    """The trials a job reads (`config.data.trials`; for pretraining minus the held-out
    fine-tuning test trials `config.data.held_out_trials` unless `allow_held_out`)."""
    wanted = selections.union_trials(d.get("trials") or None)
    if task != PRETRAIN:
        return wanted
    held_name = d.get("held_out_trials") or ""
    return selections.pretraining_trials(
        selections.trials_of_files(sorted(Path(store).glob("sub_*_trial*.h5"))), wanted,
        selections.union_trials(held_name or None), bool(d.get("allow_held_out", False)),
        held_out_name=str(held_name))


def _order(name: str) -> str:
    if name not in recipe.DATA_ORDERS:
        raise TrainingError(f"config.data.order must be one of {recipe.DATA_ORDERS}, got "
                            f"{name!r}")
    return "fixed" if name == "upstream" else "shuffle"


def pretrain_job(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """The `pretrain` job: PopT pretraining on `config.features_dir` (empty: the built-in
    default inputs, `defaults.prepare_default_inputs`); see the module docstring."""
    mesh_lib.maybe_initialize_distributed(config)
    workdir = Path(workdir)
    inputs = defaults.prepare_default_inputs(config, workdir)
    data = StoreData(config, inputs.features_dir, PRETRAIN, split_file(config, workdir))
    popt_cfg = dataclasses.replace(popt_config_from(config.model, data.input_dim),
                                   position_code=position_code_of(config))
    results = train_and_evaluate(config, workdir, task=PRETRAIN, data=data, popt_cfg=popt_cfg,
                                 trained_on=run_provenance(data, inputs.features_dir,
                                                           "features"))
    report_pretraining(results)
    return results


def report_pretraining(results: dict[str, Any]) -> None:
    """The one line a pretraining run ends with: its test accuracies (chance: 0.5)."""
    test = results.get("test")
    if not test or jax.process_index() != 0:
        return
    line = (f"pretraining test: CLS accuracy {test['cls_accuracy']:.3f}, token accuracy "
            f"{test['token_accuracy']:.3f} (chance 0.5; best step {results['best_step']})")
    logging.info("%s", line)
    print(line, flush=True)


def finetune_job(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """The `finetune` job: PopT + linear head on one decoding task, from
    `config.init_checkpoint` (empty: a short pretraining made by
    `defaults.prepare_default_inputs`) on `config.features_dir` (empty: the default store)."""
    mesh_lib.maybe_initialize_distributed(config)
    workdir = Path(workdir)
    inputs = defaults.prepare_default_inputs(config, workdir,
                                             pretrained=not config.get("random_init", False))
    kind = variants.finetune_kind(str(config.task))
    random_init = bool(config.get("random_init", False))
    if not random_init:  # refuse a checkpoint of the other position code before any work
        popt_cfg, params = load_init(inputs.init_checkpoint)
        check_position_code(popt_cfg.position_code, position_code_of(config),
                            inputs.init_checkpoint)
    data = StoreData(config, inputs.features_dir, kind, split_file(config, workdir))
    position_encoding = str(config.get("position_encoding", "") or "")
    if random_init:  # upstream model.random_init: no weights loaded
        logging.info("random_init: the PopT body starts from its random initialisation")
        popt_cfg = variants.override_position_encoding(
            popt_config_from(config.model, data.input_dim), position_encoding)
        popt_cfg = dataclasses.replace(popt_cfg, position_code=position_code_of(config))
        return train_and_evaluate(config, workdir, task=kind, data=data, popt_cfg=popt_cfg,
                                  trained_on=run_provenance(data, inputs.features_dir, "features"))
    popt_cfg = variants.override_position_encoding(popt_cfg, position_encoding)
    results = train_and_evaluate(config, workdir, task=kind, data=data, init_params=params,
                                 popt_cfg=popt_cfg, trained_on=finetune_trained_on(
                                     data, inputs.features_dir, inputs.init_checkpoint))
    if kind == FINETUNE and "test" in results and config.get("linear_baseline", True):
        add_linear_baseline(results, data, workdir)
    return results


def finetune_trained_on(data: StoreData, features: Path, init: Path) -> dict[str, Any]:
    """Fine-tuning's record: its own sessions + the store's BrainBERT + the initialisation."""
    rec = run_provenance(data, features, "features")
    init_rec = run_provenance(data, init, "init_checkpoint")
    return provenance.record(rec["trained_on"] + init_rec["trained_on"],
                             complete=rec["complete"] and init_rec["complete"],
                             sources={**rec["sources"], **init_rec["sources"]})


def add_linear_baseline(results: dict[str, Any], data: StoreData, workdir: Path) -> None:
    """Logistic regression on the stored embeddings, same split, beside PopT's test metrics
    (`results["linear_baseline"]`, results.json rewritten, one log/print line)."""
    from popt_jax.ieeg.linear_baseline import linear_baseline

    base = linear_baseline(data.sources["train"], data.sources["test"])
    results["linear_baseline"] = base
    loop.write_results(workdir, results)
    if jax.process_index() == 0:
        test = results["test"]
        line = (f"fine-tuning test ROC-AUC: PopT {test['roc_auc']:.3f} | linear baseline "
                f"(logistic regression on the stored embeddings) {base['roc_auc']:.3f} "
                f"(n_test {base['n_test']})")
        logging.info("%s", line)
        print(line, flush=True)
