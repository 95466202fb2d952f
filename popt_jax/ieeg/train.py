"""PopT pretraining and fine-tuning: `pretrain_job(config, workdir)`, `finetune_job(...)`.

    python -m popt_jax.main --config configs/pretrain.py --workdir runs/pretrain
    python -m popt_jax.main --config configs/finetune.py --workdir runs/finetune

`train_and_evaluate` is the loop both jobs share: a replicated model state on a ("data",)
mesh, ONE jitted step (`train_lib.make_train_step`), validation every `eval_every` steps,
Orbax checkpoints under `{workdir}/checkpoints` (the latest `keep_checkpoints` plus the best
by validation: loss for pretraining, ROC-AUC for fine-tuning, ties to the earliest), automatic
resume, and at the end the test split evaluated with the best checkpoint.

Outputs in the workdir:
  * `checkpoints/<step>/`: params, opt_state, progress (step, base PRNG key), meta (task and
    architecture: a workdir of another model is refused, nothing overwritten), and the data
    position -- the grain iterator state, one JSON per process (`data/`);
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
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from popt_jax.core import mesh as mesh_lib
from popt_jax.core import steps
from popt_jax.core.checkpoints import Checkpoints, quiet_orbax_logs, read_meta
from popt_jax.core.jsonio import atomic_json
from popt_jax.core.logs import Logs
from popt_jax.core.metrics import compute_metrics
from popt_jax.core.overview import parameter_overview
from popt_jax.errors import TrainingError
from popt_jax.ieeg import convert, objectives, optim, recipe, selections
from popt_jax.ieeg.objectives import FINETUNE, PRETRAIN
from popt_jax.ieeg.popt import PopT, PopTClassifier, PopTConfig

CHECKPOINT_FORMAT = "popt_jax.train/1"


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


def model_meta(task: str, popt_cfg: PopTConfig) -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "task": task, "model": dataclasses.asdict(popt_cfg)}


def _check_finite(values: dict[str, float], step: int, what: str, last_ckpt) -> None:
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        raise TrainingError(
            f"non-finite {what} at step {step} ({', '.join(f'{k}={v}' for k, v in bad.items())})"
            f"; stopped. Last good checkpoint: {last_ckpt}. Try a lower config.lr, "
            "compute_dtype=float32, or check the features for NaN/inf")


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
    preds = objectives.Predictions.empty()
    n_batches = 0
    for batch in batches:
        batch = mesh_lib.pad_rows(batch, local)
        gbatch = mesh_lib.to_global(batch, mesh)
        m, logits = eval_step(params, gbatch)
        collection = collection.merge(m)
        n_batches += 1
        if task == FINETUNE:
            ids = batch.get("index", np.full(local, -1, np.int64)).astype(np.int64)
            preds = preds.merge(objectives.Predictions.from_model_output(
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
        values["roc_auc"], values["f1"] = out["roc_auc"], out["f1"]
        extras = {"predictions": out["predictions"], "labels": out["labels"],
                  "example_ids": out["ids"]}
    return values, extras


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str | os.PathLike, *, task: str, data: TaskData,
                       init_params: nnx.State | None = None,
                       popt_cfg: PopTConfig | None = None) -> dict[str, Any]:
    """Trains `task` on `data` in `workdir` (resuming if it holds checkpoints) and tests.

    Args:
      config: the job config (`configs/pretrain.py` / `configs/finetune.py` fields).
      workdir: output folder.
      task: 'pretrain' or 'finetune'.
      data: a `TaskData`.
      init_params: fine-tuning only, the pretrained PopT body's params (nnx.Param state).
      popt_cfg: the PopT architecture; default from `config.model` and `data.input_dim`.

    Returns:
      The `results.json` content.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    quiet_orbax_logs()
    mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
    popt_cfg = popt_cfg or popt_config_from(config.model, data.input_dim)
    if popt_cfg.input_dim != data.input_dim:
        raise TrainingError(f"the model takes {popt_cfg.input_dim}-d embeddings but the feature "
                            f"store holds {data.input_dim}-d ones (extract features with a "
                            "BrainBERT of that width, e.g. the published one for 768)")
    dtype = compute_dtype(config)
    model = build_model(task, popt_cfg, seed=int(config.seed), dtype=dtype)
    if init_params is not None:
        nnx.update(model.upstream, init_params)
    logging.info("%s model (%s compute, float32 params):\n%s", type(model).__name__,
                 dtype.name, parameter_overview(model))
    parts = steps.split_model(model)
    tx = optim.make_optimizer(config)
    params = mesh_lib.replicate(parts.params, mesh)
    opt_state = mesh_lib.replicate(tx.init(parts.params), mesh)
    train_step = objectives.make_train_step(
        task, parts, tx, mesh, loss_scaled_grad=bool(config.get("loss_scaled_grad", True)))
    eval_step = objectives.make_eval_step(task, parts, mesh)

    best_metric, best_mode = ("roc_auc", "max") if task == FINETUNE else ("loss", "min")
    total = int(config.total_steps)
    ckpts = Checkpoints(workdir / "checkpoints", model_meta(task, popt_cfg),
                        keep=int(config.get("keep_checkpoints", 2)), best_metric=best_metric,
                        best_mode=best_mode)
    base_key = jax.random.key(int(config.seed), impl=str(config.get("rng_impl", "rbg")))
    step = 0
    train_iter = data.train_iterator()
    latest = ckpts.latest_step()
    if latest is not None:
        restored = ckpts.restore(latest, params, opt_state, train_iter)
        params, opt_state = restored["params"], restored["opt_state"]
        progress = restored["progress"]
        step = int(progress["step"])
        base_key = jax.random.wrap_key_data(np.asarray(progress["rng"], np.uint32),
                                            impl=progress["rng_impl"])
        logging.info("resumed from %s at step %d", ckpts.directory / str(latest), step)
    rng_impl = str(jax.random.key_impl(base_key))

    logs = Logs(workdir, total, step)
    eval_every = int(config.eval_every) or total
    log_every = max(1, int(config.log_every))
    batch_size, eval_bs = int(config.batch_size), int(config.get("eval_batch_size") or
                                                      config.batch_size)
    local_bs = mesh_lib.local_batch_size(batch_size, mesh)
    pack_tokens = bool(config.get("pack_tokens", True))
    train_metrics = None
    last_ckpt = latest
    t_start = time.perf_counter()
    try:
        while step < total:
            batch = next(train_iter)
            if len(batch["x"]) != local_bs:
                raise TrainingError(f"the data layer gave {len(batch['x'])} rows, expected "
                                    f"{local_bs} (batch_size / processes)")
            packed = objectives.pack_spec(task, batch, mesh) if pack_tokens else None
            params, opt_state, m, gnorm = train_step(
                params, opt_state, mesh_lib.to_global(batch, mesh), steps.step_key(base_key, step),
                packed)
            train_metrics = m if train_metrics is None else train_metrics.merge(m)
            step += 1
            if step % log_every == 0 or step == total:
                values = compute_metrics(train_metrics)
                values["grad_norm"] = float(gnorm)
                values["lr"] = _current_lr(config, step - 1)
                _check_finite(values, step, "training loss", last_ckpt)
                logs.progress(step, values)
                logs.write(step, "train", values)
                train_metrics = None
            stopping = step == int(config.get("stop_after_steps", 0) or -1)
            if recipe.eval_due(step, total, eval_every, str(config.get("eval_schedule", "every"))
                               ) or stopping:
                values, _ = evaluate(task, eval_step, params, data.eval_batches("valid"),
                                     eval_bs, mesh)
                _check_finite({"loss": values["loss"]}, step, "validation loss", last_ckpt)
                logging.info("step %d valid %s", step,
                             " ".join(f"{k} {v:.4f}" for k, v in values.items()))
                logs.write(step, "valid", values)
                progress = {"step": step, "rng": np.asarray(jax.random.key_data(base_key))
                            .tolist(), "rng_impl": rng_impl}
                ckpts.save(step, params, opt_state, progress, train_iter, metrics=values)
                last_ckpt = step
            if stopping:  # a simulated preemption (tests): checkpointed, no test evaluation
                logging.info("stopping after step %d (config.stop_after_steps)", step)
                return {"stopped_at": step}
        train_seconds = time.perf_counter() - t_start
        ckpts.wait()

        best = ckpts.best_step()
        best_params = ckpts.restore(best, params)["params"] if best != step else params
        test, extras = evaluate(task, eval_step, best_params, data.eval_batches("test"),
                                eval_bs, mesh)
        logging.info("test (best step %s by valid %s): %s", best, best_metric,
                     " ".join(f"{k} {v:.4f}" for k, v in test.items()))
        logs.write(step, "test", test)
        results = {
            "task": task, "best_step": best, "best_valid": ckpts.manager.metrics(best),
            "test": test, "steps": step, "train_seconds": round(train_seconds, 3),
            "model": dataclasses.asdict(popt_cfg), "workdir": str(workdir.absolute()),
            "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
        }
        results.update({k: np.asarray(v).tolist() for k, v in extras.items()})
        if jax.process_index() == 0:
            if task == PRETRAIN:
                best_model = nnx.merge(parts.graphdef, jax.device_get(best_params), parts.rngs,
                                       parts.consts)
                _export(best_model, workdir / "popt_best" / "model.safetensors")
            atomic_json(workdir / "results.json", results)
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


def ensure_features(config, workdir: Path) -> Path:
    """The feature store: `config.features_dir`, or one extracted under `{workdir}/extract`.

    An empty `features_dir` runs `features.extract_features_job(config.features, ...)` once
    (on the synthetic Brain Treebank unless `config.features.data.root` is set); a finished
    extraction (its results.json) is reused. Process 0 extracts, the others wait.
    """
    if config.get("features_dir"):
        store = Path(config.features_dir)
        if not store.is_dir():
            raise FileNotFoundError(f"feature store not found: {store}")
        return store
    job_dir = Path(workdir) / "extract"
    store = job_dir / "features"
    if not (job_dir / "results.json").exists():
        if jax.process_index() == 0:
            from popt_jax.ieeg import extract

            logging.info("no feature store given: extracting one into %s", store)
            extract.extract_features_job(config.features, job_dir)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("popt_jax feature extraction")
    return store


def load_init(path: str | os.PathLike) -> tuple[PopTConfig, nnx.State]:
    """(architecture, nnx.Param state) of a pretrained PopT to fine-tune from.

    Accepts a popt_jax pretraining workdir (its best checkpoint by validation loss), a
    converted checkpoint (safetensors + config.json, file or directory) or an upstream
    `.pth` (PopT, or a fine-tuned PopTClassifier whose body is taken).
    """
    path = Path(path)
    if (path / "checkpoints").is_dir():
        manager = ocp.CheckpointManager((path / "checkpoints").absolute(),
                                        options=ocp.CheckpointManagerOptions(read_only=True))
        try:
            steps = manager.all_steps()
            if not steps:
                raise TrainingError(f"{path}: a pretraining workdir without checkpoints")
            scored = [(float((manager.metrics(s) or {}).get("loss", np.inf)), s) for s in steps]
            step = min(scored)[1] if np.isfinite(min(scored)[0]) else max(steps)
            meta = read_meta(path / "checkpoints" / str(step))
            if not meta or meta.get("task") != PRETRAIN:
                raise TrainingError(f"{path}: not a popt_jax pretraining workdir "
                                    f"(checkpoint task {(meta or {}).get('task')!r})")
            popt_cfg = PopTConfig(**meta["model"])
            abstract = nnx.eval_shape(lambda: PopT(popt_cfg, rngs=nnx.Rngs(0)))
            target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                  nnx.state(abstract, nnx.Param))
            params = manager.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(target)))["params"]
        finally:
            manager.close()
        logging.info("initialising from %s step %d", path, step)
        return popt_cfg, jax.device_get(params)
    model = convert.load_popt(str(path))
    if isinstance(model, PopTClassifier):
        model = model.upstream
    logging.info("initialising from %s", path)
    return model.config, nnx.state(model, nnx.Param)


class StoreData:
    """`TaskData` over the feature store with the grain pipelines of `popt_jax.data.datasets`.

    Pretraining: `PretrainSource` (pairs A/B, replacement from R) over the store's subjects;
    fine-tuning: `FinetuneSource` of `config.task` for `config.data.subject`. Splits are
    made once and saved in the store's `splits.json`. Each process reads every
    `process_count`-th example (grain sharding by process index) into its rows of the batch.
    """

    def __init__(self, config, store: Path, task: str):
        from popt_jax.ieeg import datasets as ds

        self._ds, self.task = ds, task
        d = config.data
        self.buckets = tuple(int(b) for b in d.buckets)
        self.workers = int(d.get("num_workers", 0))
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
        trials = job_trials(d, store, task)
        if task == PRETRAIN:
            pcfg = ds.PretrainConfig(replace_p=float(d.replace_p), coord_jitter=float(
                d.coord_jitter), pair_seed=self.seed, example_seed=self.seed,
                keep_split_order=self.order == "upstream", **split)

            def make(name):
                return ds.PretrainSource(store, name, pcfg, subjects=list(d.subjects) or None,
                                         selection=selection, trials=trials)
        else:
            def make(name):
                return ds.FinetuneSource(store, str(config.task), str(d.subject), name,
                                         selection=selection, trials=trials, **split)
        self.sources = {name: make(name) for name in ("train", "val", "test")}
        for name, src in self.sources.items():
            if len(src) < n_proc:
                raise TrainingError(f"the {task} {name} split has {len(src)} examples, fewer "
                                    f"than the {n_proc} processes; use more data or other "
                                    "split fractions")
        first = self.sources["train"][0]
        self.input_dim = int(np.shape(first["a" if task == PRETRAIN else "x"])[-1])
        logging.info("%s data from %s: %s examples", task, store,
                     {k: len(v) for k, v in self.sources.items()})

    def train_iterator(self):
        dataset = self._ds.make_dataset(self.sources["train"], batch_size=self.batch,
                                        train=True, seed=self.seed, buckets=self.buckets,
                                        worker_count=self.workers, order=_order(self.order),
                                        **self.shard)
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
    """The `pretrain` job: PopT pretraining on the feature store (see module docstring)."""
    mesh_lib.maybe_initialize_distributed(config)
    workdir = Path(workdir)
    store = ensure_features(config, workdir)
    data = StoreData(config, store, PRETRAIN)
    results = train_and_evaluate(config, workdir, task=PRETRAIN, data=data)
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
    """The `finetune` job: PopT + linear head on one decoding task, from `init_checkpoint`.

    An empty `config.init_checkpoint` first runs `config.pretrain` in `{workdir}/pretrain`
    (sharing this run's feature store) and starts from its best checkpoint.
    """
    mesh_lib.maybe_initialize_distributed(config)
    workdir = Path(workdir)
    store = ensure_features(config, workdir)
    init = config.get("init_checkpoint") or ""
    if not init:
        pre_cfg = config.pretrain
        with pre_cfg.unlocked():
            pre_cfg.features_dir = str(store)
            pre_cfg.distributed = False  # already initialised here if wanted
        init = workdir / "pretrain"
        if (init / "results.json").exists():
            logging.info("no init_checkpoint: using the finished pretraining run in %s", init)
        else:
            logging.info("no init_checkpoint: pretraining first in %s", init)
            pretrain_job(pre_cfg, init)
    popt_cfg, params = load_init(init)
    data = StoreData(config, store, FINETUNE)
    results = train_and_evaluate(config, workdir, task=FINETUNE, data=data, init_params=params,
                                 popt_cfg=popt_cfg)
    if "test" in results and config.get("linear_baseline", True):
        add_linear_baseline(results, data, workdir)
    return results


def add_linear_baseline(results: dict[str, Any], data: StoreData, workdir: Path) -> None:
    """Logistic regression on the stored embeddings, same split, beside PopT's test metrics
    (`results["linear_baseline"]`, results.json rewritten, one log/print line)."""
    from popt_jax.ieeg.linear_baseline import linear_baseline

    base = linear_baseline(data.sources["train"], data.sources["test"])
    results["linear_baseline"] = base
    if jax.process_index() == 0:
        atomic_json(Path(workdir) / "results.json", results)
        test = results["test"]
        line = (f"fine-tuning test ROC-AUC: PopT {test['roc_auc']:.3f} | linear baseline "
                f"(logistic regression on the stored embeddings) {base['roc_auc']:.3f} "
                f"(n_test {base['n_test']})")
        logging.info("%s", line)
        print(line, flush=True)
