"""BrainBERT pretraining (masked spectrogram modelling): loss, jitted steps, the job.

    python -m popt_jax.main --config configs/pretrain_brainbert.py --workdir runs/brainbert

Upstream (czlwang/BrainBERT: `tasks/spec_pretrain.py`, `criterions/pretrain_masked_criterion.py`,
`tasks/base_task.py`, `conf/exp/spec2vec.yaml`): spectrograms of 5 s windows are masked
(`masking.py`), BrainBERT + its spectrogram head reconstructs them, and the loss is

    loss = mean |pred - target| over the loss-mask cells
           + alpha * mean |pred - target| over the loss-mask cells with |target| > 1

(alpha 2, means over every masked cell of the batch). Training: LAMB (torch_optimizer
semantics, `optim.lamb`) lr 1e-4, batch 256, ramp_up (2.5% warm-up, gamma 0.99), global-norm
clip 1.0 and upstream's `loss.backward(loss)`: the gradient is loss x d(loss) before clipping
(`loss_scaled_grad`, default True; the identity d/dθ (loss²/2) = loss · d(loss)/dθ is how
it is computed here: the gradient of the loss times the stop-gradient loss). The best
checkpoint is the one with the lowest validation loss.

Masks are drawn INSIDE the jitted step from the step key (training) or a fixed key per
validation batch (deterministic validation), so the hot path has no per-example Python.

Outputs in the workdir: `spectrograms.h5` (the store, `brainbert_data.py`), `checkpoints/`
(Orbax: latest + best), `metrics.jsonl` + `tensorboard/`, `results.json` (test metrics of
the best checkpoint, validation history, baselines), `reconstruction.png` (a validation
spectrogram, its masked input and loss mask, the reconstruction) and `brainbert_best/`
(`model.safetensors` + `config.json` in the upstream state_dict layout: `load_brainbert`
and `extract_features --config.brainbert_checkpoint=.../model.safetensors` take it).

Visible learning: every validation reports the L1 of the model next to two baselines on the
same cells: predicting zero (the z-scored mean) and copying the nearest frame outside every
time span of the masked input. The headline (`l1_masked`, and the final verdict) is on the
masked cells: every cell inside a time or frequency span, whichever loss mask trained the
model. The training criterion's cells (the loss mask) are reported as well (`l1`), split into
the hidden ones (inside a span) and the visible ones: under upstream's loss mask ~40% of them
are quirk columns outside every span, which the model sees in its input and where copying is
exact by construction. The run logs every recipe field off upstream's values
(`departures_from_upstream`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from popt_jax.core import loop, steps
from popt_jax.core import mesh as mesh_lib
from popt_jax.core.checkpoints import Checkpoints, quiet_orbax_logs
from popt_jax.core.jsonio import atomic_json
from popt_jax.core.logs import Logs
from popt_jax.core.nn import cast_floats
from popt_jax.errors import DataError, TrainingError
from popt_jax.ieeg import brainbert_data as bd
from popt_jax.ieeg import masking, optim, provenance, selections
from popt_jax.ieeg.brainbert import BrainBERT, BrainBERTConfig

CHECKPOINT_FORMAT = "popt_jax.brainbert_pretrain/1"
EVAL_SUMS = ("n", "l1", "n_content", "content", "zero_l1", "zero_content", "copy_l1",
             "copy_content", "n_hidden", "l1_hidden", "zero_l1_hidden", "copy_l1_hidden",
             "n_masked", "l1_masked", "zero_l1_masked", "copy_l1_masked")
PREDICTORS = (("", "model"), ("zero_", "predict-zero"), ("copy_", "copy-nearest-frame"))


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def masked_l1_sums(pred, target, mask) -> dict[str, jax.Array]:
    """Sums and counts of the two L1 terms over `mask` (bool, broadcastable to target)."""
    err = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
    m = mask.astype(jnp.float32)
    mc = m * (jnp.abs(target) > 1).astype(jnp.float32)
    return {"n": m.sum(), "l1": (err * m).sum(), "n_content": mc.sum(),
            "content": (err * mc).sum()}


def _mean(total, count):
    # Upstream's mean over an empty selection is NaN; a batch without |target| > 1 cells
    # contributes 0 here instead (never the case on real z-scored spectrograms).
    return total / jnp.maximum(count, 1.0)


def pretrain_loss(pred, target, mask, alpha: float = 2.0):
    """(loss, masked-cell L1, content L1) as upstream's `pretrain_masked_criterion`."""
    s = masked_l1_sums(pred, target, mask)
    l1, content = _mean(s["l1"], s["n"]), _mean(s["content"], s["n_content"])
    return l1 + alpha * content, l1, content


def copy_nearest_prediction(masked, time_covered):
    """Baseline: every frame predicted by the nearest frame outside the time spans (input)."""
    src = masking.nearest_unmasked_frame(time_covered)
    return jnp.take_along_axis(masked, src[..., None], axis=1)


# --------------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------------


def _leaf(path) -> str:
    return jax.tree_util.keystr(path)


def make_optimizer(config) -> optax.GradientTransformation:
    """Clip + LAMB (torch_optimizer semantics, q/k/v trust ratio packed as upstream's tensor)
    with the ramp_up schedule; `optimizer: adamw` falls back to `optim.make_optimizer`.

    Config fields: optimizer, lr, total_steps, warmup, gamma, grad_clip, weight_decay,
    lamb_clamp_value, lamb_packed_qkv (False = trust ratio per JAX leaf).
    """
    if str(config.optimizer).lower() != "lamb":
        return optim.make_optimizer(config)
    schedule = optim.ramp_up_schedule(float(config.lr), int(config.total_steps),
                                      float(config.warmup), float(config.gamma))
    # Trust ratios per torch tensor (packed q/k/v, `optim.torch_tensor_of`) or per leaf.
    tensor_of = optim.torch_tensor_of if config.get("lamb_packed_qkv", True) else _leaf
    tx = optim.lamb(schedule, weight_decay=float(config.get("weight_decay", 0.0)),
                    clamp_value=float(config.get("lamb_clamp_value", 10.0)), tensor_of=tensor_of)
    clip = float(config.get("grad_clip", 0.0))
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


def _forward(parts: steps.ModelParts, params, spec, pad_mask, rngs, deterministic, dtype):
    if dtype != jnp.float32:
        params = cast_floats(params, dtype)
    model = nnx.merge(parts.graphdef, params, rngs, parts.consts)
    out = model.predict_spectrogram(spec.astype(dtype), pad_mask, deterministic=deterministic)
    return out.astype(jnp.float32)


def make_pretrain_step(parts: steps.ModelParts, tx: optax.GradientTransformation,
                       mask_cfg: masking.MaskConfig, mesh, *, alpha: float = 2.0,
                       loss_scaled_grad: bool = True, deterministic: bool = False,
                       compute_dtype=jnp.float32) -> Callable:
    """Jitted `step(params, opt_state, spec [B,T,F], rng) -> (params, opt_state, metrics)`.

    The step draws the masks from `rng` (split from the dropout key), masks the batch, runs
    BrainBERT + head, and applies one optimiser update. `step.with_draws(params, opt_state,
    spec, draws, rng)` takes the mask draws instead (parity tests). `deterministic` turns
    dropout off. Metrics: loss, l1, content_l1, grad_norm (of the gradient before clipping,
    after the loss scaling, as upstream's `clip_grad_norm_` returns it).
    """
    rep = mesh_lib.replicated(mesh)
    spec_tpl = steps.rng_spec(parts.rngs)
    dtype = jnp.dtype(compute_dtype)

    def core(params, opt_state, spec, draws, drop_key, consts):
        res = masking.apply_fixed_mask(spec, draws, mask_cfg)

        def loss_fn(p):
            # dropout streams are made inside the traced function (NNX mutates their counts)
            rngs = steps.fresh_rngs(spec_tpl, drop_key)
            pred = _forward(parts._replace(consts=consts), p, res.masked, None, rngs,
                            deterministic, dtype)
            loss, l1, content = pretrain_loss(pred, spec, res.loss_mask, alpha)
            return loss, (l1, content)

        (loss, (l1, content)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if loss_scaled_grad:
            # upstream `loss.backward(loss)`: d(loss^2 / 2) = loss * d(loss)
            grads = jax.tree.map(lambda g: g * jax.lax.stop_gradient(loss), grads)
        gnorm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "l1": l1, "content_l1": content,
                                   "grad_norm": gnorm}

    def with_rng(params, opt_state, spec, rng, consts):
        mask_key, drop_key = jax.random.split(rng)
        b, t, f = spec.shape
        draws = masking.draw_fixed_mask(mask_key, b, t, f, mask_cfg)
        return core(params, opt_state, spec, draws, drop_key, consts)

    out_sh = (rep, rep, rep)
    jit_rng = jax.jit(with_rng, donate_argnums=(0, 1), out_shardings=out_sh)
    jit_draws = jax.jit(core, donate_argnums=(0, 1), out_shardings=out_sh)
    consts = mesh_lib.replicate(parts.consts, mesh)

    def train_step(params, opt_state, spec, rng):
        return jit_rng(params, opt_state, spec, rng, consts)

    def with_draws(params, opt_state, spec, draws, rng):
        return jit_draws(params, opt_state, spec, draws, rng, consts)

    train_step.with_draws = with_draws
    train_step.jitted = jit_rng
    return train_step


def make_eval_step(parts: steps.ModelParts, mask_cfg: masking.MaskConfig, mesh, *,
                   compute_dtype=jnp.float32) -> Callable:
    """Jitted `eval_step(params, spec, valid, key) -> (sums, (masked, loss_mask, pred))`.

    Sums (`EVAL_SUMS`) cover the model and the two baselines on the same loss-mask cells of
    the `valid` rows; masks come from `key` (fixed per validation batch: deterministic). The
    `*_hidden` sums take the loss-mask cells inside a time or frequency span (whatever the
    span's action); the rest of the loss mask is visible in the input (upstream's quirk
    columns outside every span), where copying the nearest unmasked frame is exact.
    """
    rep = mesh_lib.replicated(mesh)
    spec_tpl = steps.rng_spec(parts.rngs)
    dtype = jnp.dtype(compute_dtype)

    def step(params, spec, valid, key, consts):
        res = masking.fixed_mask(key, spec, mask_cfg)
        rngs = steps.fresh_rngs(spec_tpl, jax.random.key(0))
        pred = _forward(parts._replace(consts=consts), params, res.masked, None, rngs, True,
                        dtype)
        m = res.loss_mask & valid[:, None, None]
        spans = (res.time_covered[:, :, None] | res.freq_covered[:, None, :]) \
            & valid[:, None, None]
        hidden = m & spans
        zero_pred = jnp.zeros_like(spec)
        copy_pred = copy_nearest_prediction(res.masked, res.time_covered)
        model = masked_l1_sums(pred, spec, m)
        zero = masked_l1_sums(zero_pred, spec, m)
        copy = masked_l1_sums(copy_pred, spec, m)
        sums = {**model, "zero_l1": zero["l1"], "zero_content": zero["content"],
                "copy_l1": copy["l1"], "copy_content": copy["content"],
                "n_hidden": hidden.sum().astype(jnp.float32),
                "n_masked": spans.sum().astype(jnp.float32)}
        for name, p in (("", pred), ("zero_", zero_pred), ("copy_", copy_pred)):
            sums[f"{name}l1_hidden"] = masked_l1_sums(p, spec, hidden)["l1"]
            sums[f"{name}l1_masked"] = masked_l1_sums(p, spec, spans)["l1"]
        return sums, (res.masked, res.loss_mask, pred)

    jitted = jax.jit(step, out_shardings=(rep, rep))
    consts = mesh_lib.replicate(parts.consts, mesh)
    return lambda params, spec, valid, key: jitted(params, spec, valid, key, consts)


def summarize(sums: dict[str, float], alpha: float) -> dict[str, float]:
    """Validation metrics from accumulated sums. Per predictor (model, `zero_`, `copy_`):
    `l1` / `content_l1` / `loss` over the loss-mask cells (the training criterion), their
    `l1_hidden` (inside a span) and `l1_visible` parts (NaN if none), and `l1_masked`: the L1
    over every cell inside a time or frequency span, whichever loss mask trained the model
    (the headline: how well the masked cells are filled in)."""
    n, nc = max(sums["n"], 1.0), max(sums["n_content"], 1.0)
    n_hid, n_vis = sums["n_hidden"], sums["n"] - sums["n_hidden"]
    n_masked = sums["n_masked"]
    out = {}
    for name, _ in PREDICTORS:
        out[f"{name}l1"] = sums[f"{name}l1"] / n
        out[f"{name}content_l1"] = sums[f"{name}content"] / nc
        out[f"{name}loss"] = out[f"{name}l1"] + alpha * out[f"{name}content_l1"]
        hid = sums[f"{name}l1_hidden"]
        out[f"{name}l1_hidden"] = hid / n_hid if n_hid > 0 else float("nan")
        out[f"{name}l1_visible"] = (sums[f"{name}l1"] - hid) / n_vis if n_vis > 0 else float("nan")
        out[f"{name}l1_masked"] = (sums[f"{name}l1_masked"] / n_masked if n_masked > 0
                                   else float("nan"))
    out["masked_cells"] = n_masked
    out["loss_cells"] = sums["n"]
    out["hidden_fraction"] = n_hid / n
    return out


def l1_line(values: dict[str, float]) -> str:
    """One log line: L1 of the model and both baselines on the masked cells (inside a span),
    then on the loss-mask cells, split into hidden / visible."""
    masked = ", ".join(f"{label} {values[f'{name}l1_masked']:.4f}" for name, label in PREDICTORS)
    parts = []
    for name, label in PREDICTORS:
        hid, vis = values[f"{name}l1_hidden"], values[f"{name}l1_visible"]
        split = f"hidden {hid:.4f}" + ("" if np.isnan(vis) else f", visible {vis:.4f}")
        parts.append(f"{label} {values[f'{name}l1']:.4f} ({split})")
    return f"masked-cell L1: {masked} | loss-mask cells: " + ", ".join(parts)


def evaluate(eval_step, params, batches, key: jax.Array, mesh, alpha: float,
             keep_first: bool = False):
    """Runs the eval step over `batches`; returns (metrics, first batch arrays or None)."""
    total = {k: 0.0 for k in EVAL_SUMS}
    first = None
    for i, batch in enumerate(batches):
        g = mesh_lib.to_global(batch, mesh, keys=None)
        sums, arrays = eval_step(params, g["spec"], g["valid"], jax.random.fold_in(key, i))
        for k in EVAL_SUMS:
            total[k] += float(sums[k])
        if keep_first and first is None:
            first = {"spec": batch["spec"], **dict(zip(("masked", "loss_mask", "pred"),
                                                       map(np.asarray, arrays), strict=True))}
    if total["n"] == 0:
        raise TrainingError("an evaluation split has no masked cells; check the data split")
    return summarize(total, alpha), first


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------

# Upstream's recipe (README + conf/exp/spec2vec.yaml, fixed_mask_pretrain.yaml, masked_tf_model
# "stft large"): a run whose config differs says so in its log and results.json. Tuples list
# every value upstream uses (mask p: README 0.05, yaml 0.1).
UPSTREAM_RECIPE = {
    "optimizer": ("lamb",), "lr": (1e-4,), "batch_size": (256,), "total_steps": (500_000,),
    "warmup": (0.025,), "gamma": (0.99,), "grad_clip": (1.0,), "loss_scaled_grad": (True,),
    "alpha": (2.0,), "weight_decay": (0.0,), "model.hidden_dim": (768,), "model.n_heads": (12,),
    "model.ff_dim": (3072,), "model.n_layers": (6,), "model.dropout": (0.1,),
    "mask.loss_mask": ("upstream",), "mask.time_p": (0.05, 0.1), "mask.freq_p": (0.05, 0.1),
    "mask.time_min": (1,), "mask.time_max": (5,), "mask.freq_min": (1,), "mask.freq_max": (2,),
    "mask.keep_p": (0.1,), "mask.replace_p": (0.1,),
}


def departures_from_upstream(config) -> list[str]:
    """'field value (upstream ...)' for every recipe field of `config` off upstream's values."""
    out = []
    for field, allowed in UPSTREAM_RECIPE.items():
        node = config
        for part in field.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if node is None or node in allowed:
            continue
        if isinstance(node, float) and any(isinstance(a, float) and abs(node - a) <= 1e-12
                                           for a in allowed):
            continue
        out.append(f"{field} {node!r} (upstream {' or '.join(map(repr, allowed))})")
    return out


def verdict(test: dict[str, float]) -> str:
    """One line: does the model beat both baselines on the test split's masked cells (every
    cell inside a time or frequency span)?"""
    model = test["l1_masked"]

    def versus(name: str, label: str) -> str:
        gap = 100 * (1 - model / test[name])
        return f"{label} {test[name]:.4f}, model {abs(gap):.1f}% {'lower' if gap > 0 else 'higher'}"

    beats = model < test["zero_l1_masked"] and model < test["copy_l1_masked"]
    return (f"model masked-cell L1 {model:.4f} is {'BELOW' if beats else 'NOT below'} both "
            f"baselines ({versus('zero_l1_masked', 'predict-zero')}; "
            f"{versus('copy_l1_masked', 'copy-nearest-frame')})")


def mask_config_from(cfg) -> masking.MaskConfig:
    fields = {f.name for f in dataclasses.fields(masking.MaskConfig)}
    unknown = sorted(set(dict(cfg)) - fields)
    if unknown:
        raise TrainingError(f"unknown config.mask field(s): {', '.join(unknown)}")
    try:
        return masking.MaskConfig(**dict(cfg))
    except ValueError as err:
        raise TrainingError(f"config.mask: {err}") from None


def model_config_from(cfg) -> BrainBERTConfig:
    fields = {f.name for f in dataclasses.fields(BrainBERTConfig)}
    return BrainBERTConfig(**{k: v for k, v in dict(cfg).items() if k in fields})


def _resolve_data(config, workdir: Path) -> tuple[Path, dict, dict]:
    """(root, selection, trials) from config.data (synthetic tree when no root)."""
    from popt_jax.ieeg.braintreebank import BrainTreebank, load_selection, subject_id
    from popt_jax.ieeg.extract import synthetic_root

    d = config.data
    root = Path(d.root) if d.root else synthetic_root(config, workdir)
    sel_path = d.selection or (root / "electrode_selections" / "clean_laplacian.json")
    selection = load_selection(selections.resolve(sel_path))
    if d.trials:  # packaged name(s) or JSON path(s), comma-separated: their union
        trials = selections.union_trials(d.trials) or {}
    else:
        bt = BrainTreebank(root)
        trials = {s: bt.trials(s) for s in bt.subjects()}
    trials = {subject_id(k): list(v) for k, v in trials.items()}
    if d.subjects:
        wanted = [subject_id(s) for s in d.subjects]
        trials = {s: v for s, v in trials.items() if s in wanted}
    missing = [s for s in trials if s not in selection]
    if missing:
        raise DataError(sel_path, f"electrode selection has no entry for {', '.join(missing)}")
    return root, selection, trials


def _plot(first: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("target (validation spectrogram)", first["spec"][0]),
              ("masked input", first["masked"][0]), ("loss mask", first["loss_mask"][0]),
              ("reconstruction", first["pred"][0])]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    for ax, (title, img) in zip(axes, panels, strict=True):
        kw = {} if title == "loss mask" else {"vmin": -3, "vmax": 3}
        ax.imshow(np.asarray(img, np.float32).T, aspect="auto", origin="lower",
                  cmap="gray" if title == "loss mask" else "viridis", **kw)
        ax.set_title(title)
        ax.set_ylabel("frequency bin")
    axes[-1].set_xlabel("frame")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def pretrain_brainbert(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """The `pretrain_brainbert` job (see module docstring); returns `results.json`'s content."""
    from popt_jax.ieeg.extract import preprocess_config_from

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    quiet_orbax_logs()
    departures = departures_from_upstream(config)
    if departures:
        logging.info("this run departs from upstream's pretraining recipe: %s",
                     "; ".join(departures))
    root, selection, trials = _resolve_data(config, workdir)
    d = config.data
    store = Path(d.store) if d.store else workdir / "spectrograms.h5"
    bd.write_spectrogram_store(
        root, store, selection=selection, trials=trials,
        cfg=preprocess_config_from(config.preprocess), dtype=str(d.store_dtype),
        max_windows=None if int(d.max_windows) < 0 else int(d.max_windows))
    split = bd.split_rows(store, float(d.val_fraction), float(d.test_fraction))
    sources = {k: bd.SpectrogramSource(store, v, in_memory=bool(d.in_memory))
               for k, v in split.items()}
    logging.info("spectrogram splits: %s", {k: len(v) for k, v in sources.items()})

    mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
    mask_cfg = mask_config_from(config.mask)
    model_cfg = model_config_from(config.model)
    if model_cfg.input_dim != sources["train"].shape[-1]:
        raise TrainingError(f"config.model.input_dim {model_cfg.input_dim} != the store's "
                            f"{sources['train'].shape[-1]} frequency bins")
    dtype = jnp.dtype(str(config.compute_dtype))
    model = BrainBERT(model_cfg, rngs=nnx.Rngs(int(config.seed)))
    parts = steps.split_model(model)
    tx = make_optimizer(config)
    params = mesh_lib.replicate(parts.params, mesh)
    opt_state = mesh_lib.replicate(tx.init(parts.params), mesh)
    alpha = float(config.alpha)
    train_step = make_pretrain_step(parts, tx, mask_cfg, mesh, alpha=alpha,
                                    loss_scaled_grad=bool(config.loss_scaled_grad),
                                    compute_dtype=dtype)
    eval_step = make_eval_step(parts, mask_cfg, mesh, compute_dtype=dtype)

    meta = {"format": CHECKPOINT_FORMAT, "task": "brainbert_pretrain",
            "model": dataclasses.asdict(model_cfg)}
    ckpts = Checkpoints(workdir / "checkpoints", meta, keep=int(config.keep_checkpoints),
                        best_metric="loss", best_mode="min")
    eval_key = jax.random.key(int(config.seed) + 1)
    eval_bs = int(config.eval_batch_size or config.batch_size)
    local_bs = mesh_lib.local_batch_size(int(config.batch_size), mesh)
    if len(sources["train"]) < local_bs:
        raise TrainingError(f"the training split has {len(sources['train'])} spectrograms, "
                            f"fewer than one batch of {local_bs}; lower config.batch_size")
    train_iter = iter(bd.train_dataset(sources["train"], local_bs, int(config.seed),
                                       read_threads=int(d.read_threads)))
    state = loop.restore_or_init(ckpts, params, opt_state, train_iter, seed=int(config.seed),
                                 rng_impl=str(config.rng_impl))
    schedule = loop.Schedule.from_config(config)
    logs = Logs(workdir, schedule.total, state.step)
    history = []

    def step_fn(p, o, batch, key):
        spec = mesh_lib.to_global({"spec": batch["spec"]}, mesh, keys=None)["spec"]
        p, o, m = train_step(p, o, spec, key)
        return p, o, loop.Mean(m), {}

    def validate(p, split_name):
        return evaluate(eval_step, p, bd.eval_batches(sources[split_name], eval_bs), eval_key,
                        mesh, alpha, keep_first=split_name == "val")

    def validate_and_log(p):
        values, _ = validate(p, "val")
        history.append({"step": state.step, **values})
        logging.info("step %d %s", state.step, l1_line(values))
        return values

    try:
        if loop.run_steps(state, schedule, train_iter=train_iter, ckpts=ckpts, logs=logs,
                          step_fn=step_fn, validate=validate_and_log):
            return {"stopped_at": state.step}
        best, best_params = loop.best_params(ckpts, state)
        val, first = validate(best_params, "val")
        test, _ = validate(best_params, "test")
        logs.write(state.step, "test", test)
        logging.info("test (best step %s): %s", best, l1_line(test))
        logging.info("test: %s%s", verdict(test), " (a run off upstream's recipe, see above)"
                     if departures else "")
        results = {"best_step": best, "best_valid": val, "test": test, "steps": state.step,
                   "verdict": verdict(test), "departures_from_upstream": departures,
                   "train_seconds": round(state.train_seconds, 3), "history": history,
                   "store": str(store), "splits": {k: len(v) for k, v in sources.items()},
                   "model": dataclasses.asdict(model_cfg), "mask": dataclasses.asdict(mask_cfg),
                   "workdir": str(workdir.absolute()), "config": config.to_dict(),
                   # the sessions the weights saw (a fresh model on this store's trials)
                   **provenance.record(provenance.sessions_of_trials(trials))}
        _export(workdir, parts, best_params, first, results)
        return results
    finally:
        ckpts.close()
        logs.close()


def _export(workdir: Path, parts: steps.ModelParts, best_params, first, results: dict) -> None:
    """Process 0: the best weights in upstream layout (`brainbert_best/`), the reconstruction
    PNG and `results.json` (with the export's path)."""
    from popt_jax.ieeg import convert

    if jax.process_index() != 0:
        return
    best_model = nnx.merge(parts.graphdef, jax.device_get(best_params), parts.rngs, parts.consts)
    export = workdir / "brainbert_best" / "model.safetensors"
    convert.export_safetensors(best_model, str(export))
    results["export"] = str(export)
    provenance.write_provenance(export.parent, {k: results[k] for k in
                                                ("trained_on", "complete", "sources")})
    _plot(first, workdir / "reconstruction.png")
    atomic_json(workdir / "results.json", results)
