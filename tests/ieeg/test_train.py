"""Tests of PopT training: schedule, optimisers, losses, metrics, sharding, resume, jobs.

Most tests train a 1-layer PopT on synthetic batches (`SynthData`, a deterministic function of
(seed, step)); the job tests run the tiny config on the synthetic Brain Treebank. A persistent
XLA compilation cache (one per session) lets later runs reuse the steps compiled by earlier
ones. The file doubles as the worker script of the multi-device/multi-process tests.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from popt_jax import errors
from popt_jax import ieeg as models
from popt_jax.core import checkpoints, jsonio, metrics, steps, tb_writer
from popt_jax.core import mesh as mesh_lib
from popt_jax.ieeg import layers, objectives, optim, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class SynthData:
    """Deterministic synthetic batches (a function of (seed, step)) with a planted signal.

    Pretraining: replaced tokens carry +4 on feature 0. Fine-tuning: the first 3 tokens carry
    +-1.5 on feature 0 by label. In a multi-process run each process yields its rows only.
    """

    def __init__(self, task, batch_size, input_dim=16, n=8, seed=0, plant=True, n_eval=24,
                 nan_at=None):
        self.task, self.bs, self.input_dim, self.n = task, batch_size, input_dim, n
        self.seed, self.plant, self.n_eval, self.nan_at = seed, plant, n_eval, nan_at

    def _rows(self, rs, b):
        n, d = self.n, self.input_dim
        x = rs.standard_normal((b, n, d)).astype(np.float32)
        pad = np.arange(n)[None] >= n - rs.integers(0, 5, b)[:, None]  # 0-4 padded per row
        out = dict(x=x, pad_mask=pad, coords=rs.integers(0, 200, (b, n, 3)).astype(np.int32))
        if self.task == objectives.PRETRAIN:
            out["seq_id"] = (np.arange(n)[None] >= n // 2).repeat(b, 0).astype(np.int32)
            out["cls_label"] = rs.integers(0, 2, b).astype(np.int32)
            lab = rs.integers(0, 3, (b, n)).astype(np.int32)
            lab[pad] = 0
            out["token_label"] = lab
            if self.plant:
                x[..., 0] += 4.0 * (lab == 1)
        else:
            out["seq_id"] = np.zeros((b, n), np.int32)
            y = rs.integers(0, 2, b).astype(np.int32)
            out["label"] = y
            if self.plant:
                x[:, :3, 0] += 1.5 * (2 * y[:, None] - 1)
        return out

    def _local(self, batch):
        n_proc, pid = jax.process_count(), jax.process_index()
        rows = len(batch["x"]) // n_proc
        return {k: v[pid * rows:(pid + 1) * rows] for k, v in batch.items()}

    def global_batch(self, step):
        batch = self._rows(np.random.default_rng([self.seed, step]), self.bs)
        if self.nan_at is not None and step == self.nan_at:
            batch["x"][0, 0, 0] = np.nan
        return batch

    class _Iterator:
        """Batches from step `state["step"]` on, with get_state / set_state."""

        def __init__(self, data):
            self.data, self.step = data, 0

        def __iter__(self):
            return self

        def __next__(self):
            batch = self.data._local(self.data.global_batch(self.step))
            self.step += 1
            return batch

        def get_state(self):
            return {"step": self.step}

        def set_state(self, state):
            self.step = int(state["step"])

    def train_iterator(self):
        return self._Iterator(self)

    def eval_batches(self, split):
        rs = np.random.default_rng([99, 0 if split == "valid" else 1])
        left = self.n_eval
        while left > 0:
            b = min(self.bs, left)
            rows = self._rows(rs, b)
            if jax.process_count() > 1:  # keep every process at the same number of rows
                rows = mesh_lib.pad_rows(rows, self.bs)
            yield self._local(rows)
            left -= b


def synth_config(task, **overrides):
    c = ml_collections.ConfigDict(dict(
        seed=0, total_steps=12, batch_size=8, eval_batch_size=8, lr=2e-3, warmup=0.1,
        gamma=0.9, optimizer="lamb" if task == objectives.PRETRAIN else "adamw", weight_decay=0.01,
        body_lr_scale=0.1, grad_clip=1.0, log_every=1, eval_every=4, keep_checkpoints=2,
        compute_dtype="float32", rng_impl="rbg", stop_after_steps=0, num_devices=0,
        model=dict(hidden_dim=32, n_heads=2, ff_dim=64, n_layers=1)))
    c.update(overrides)
    return c


def jsonl(workdir, split="train"):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r for r in rows if r["split"] == split}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache for this module: identical steps compile once."""
    from jax._src import compilation_cache as cc

    before = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
    path = os.environ.get("POPT_JAX_TEST_JIT_CACHE") or str(tmp_path_factory.mktemp("jit"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    cc.reset_cache()
    yield path
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    cc.reset_cache()


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Schedule and optimisers
# --------------------------------------------------------------------------------------------


def test_ramp_up_schedule_step_arithmetic():
    # total 1000: W = int(0.025 * 1000) = 25 warm-up steps, decay period int(975 / 100) = 9.
    sched = optim.ramp_up_schedule(1.0, 1000, 0.025, 0.5)
    assert optim.ramp_up_steps(1000, 0.025) == (25, 9)
    expected = {0: 0.0, 1: 1 / 25, 10: 10 / 25, 25: 1.0, 26: 1.0, 34: 1.0, 35: 0.5, 43: 0.5,
                44: 0.25, 26 + 9 * 5: 0.5**5}
    for t, lr in expected.items():
        assert float(sched(t)) == pytest.approx(lr, rel=1e-6), t
    # No warm-up when int(warmup * total) == 0; the period never drops below 1.
    sched = optim.ramp_up_schedule(2.0, 30, 0.025, 0.9)
    assert [round(float(sched(t)), 6) for t in range(4)] == [2.0, 2.0, 1.8, 1.62]


def _torch_tree(params):
    import torch

    return [torch.nn.Parameter(torch.tensor(np.asarray(p))) for p in params]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_lamb_matches_torch_reference(weight_decay):
    torch = pytest.importorskip("torch")
    from torch_reference import RefLamb as TorchLamb  # the benchmark's reference too
    rs = np.random.default_rng(0)
    # Norms on both sides of the clamp at 10, and a zero tensor (trust ratio 1).
    params = [rs.standard_normal((40, 30)).astype(np.float32),
              0.1 * rs.standard_normal(7).astype(np.float32), np.zeros(5, np.float32)]
    grads = [[rs.standard_normal(p.shape).astype(np.float32) for p in params]
             for _ in range(4)]
    tx = optim.lamb(1e-2, weight_decay=weight_decay)
    state = tx.init(params)
    ours = [jnp.asarray(p) for p in params]
    tparams = _torch_tree(params)
    opt = TorchLamb(tparams, lr=1e-2, weight_decay=weight_decay)
    for g in grads:
        updates, state = tx.update([jnp.asarray(x) for x in g], state, ours)
        ours = optax.apply_updates(ours, updates)
        for p, x in zip(tparams, g, strict=True):
            p.grad = torch.tensor(x)
        opt.step()
    for a, b in zip(ours, tparams, strict=True):
        np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=2e-5, atol=1e-6)


def test_finetune_optimizer_body_at_tenth_of_head_lr():
    cfg = synth_config(objectives.FINETUNE, warmup=0.0, lr=1e-2, grad_clip=0.0, weight_decay=0.0)
    tx = optim.make_optimizer(cfg)
    params = {"linear_out": {"kernel": jnp.ones((3,))}, "upstream": {"w": jnp.ones((3,))}}
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # First AdamW step is -lr * sign(g) (m/sqrt(v) = 1); lr(0) = base without warm-up.
    np.testing.assert_allclose(updates["linear_out"]["kernel"], -1e-2, rtol=1e-4)
    np.testing.assert_allclose(updates["upstream"]["w"], -1e-3, rtol=1e-4)
    # Decoupled weight decay scales with each group's lr, as torch.optim.AdamW.
    tx = optim.make_optimizer(synth_config(objectives.FINETUNE, warmup=0.0, lr=1e-2, grad_clip=0.0,
                                        weight_decay=0.5))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["linear_out"]["kernel"], -1e-2 * 0.5, rtol=1e-4)
    np.testing.assert_allclose(updates["upstream"]["w"], -1e-3 * 0.5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Losses and metrics
# --------------------------------------------------------------------------------------------


def _bce(z, y):
    return np.log1p(np.exp(-abs(z))) + max(z, 0) - z * y


def test_pretrain_loss_hand_computed():
    cls_logits = jnp.array([[0.5], [-1.0]])
    tok = jnp.array([[[2.0], [-1.0], [0.3], [9.0]], [[0.0], [1.0], [-2.0], [5.0]]])
    batch = dict(
        x=np.zeros((2, 4, 1), np.float32), cls_label=np.array([1, 0]),
        pad_mask=np.array([[0, 0, 0, 1], [0, 0, 0, 0]], bool),
        # 1 replaced (positive), 2 kept (negative), 0 unused; the padded token is ignored
        # even though it carries a label.
        token_label=np.array([[1, 2, 0, 1], [0, 2, 1, 0]]))
    loss, out = objectives.pretrain_loss(cls_logits, tok, batch)
    cls = (_bce(0.5, 1) + _bce(-1.0, 0)) / 2
    token = (_bce(2.0, 1) + _bce(-1.0, 0) + _bce(1.0, 0) + _bce(-2.0, 1)) / 4
    assert float(loss) == pytest.approx(cls + token, rel=1e-6)
    m = objectives.PretrainMetrics.single_from_model_output(**out).compute()
    assert float(m["cls_loss"]) == pytest.approx(cls, rel=1e-6)
    assert float(m["token_loss"]) == pytest.approx(token, rel=1e-6)
    assert float(m["cls_accuracy"]) == pytest.approx(1.0)  # 0.5 -> 1, -1 -> 0
    assert float(m["token_accuracy"]) == pytest.approx(0.5)  # right: 2.0, -1.0


def test_finetune_loss_and_weights():
    logits = jnp.array([[1.0], [-2.0], [3.0]])
    batch = dict(x=np.zeros((3, 1, 1)), label=np.array([1, 1, 0]),
                 weight=np.array([1.0, 1.0, 0.0]))  # row 3 is filler
    loss, out = objectives.finetune_loss(logits, batch)
    assert float(loss) == pytest.approx((_bce(1.0, 1) + _bce(-2.0, 1)) / 2, rel=1e-6)
    m = objectives.FinetuneMetrics.single_from_model_output(**out).compute()
    assert float(m["accuracy"]) == pytest.approx(0.5)


def test_roc_auc_and_f1_hand_computed():
    # Pairs (pos, neg): 0.8>0.1, 0.8>0.4, 0.4=0.4 (ties count 1/2), 0.4>0.1 -> 3.5 / 4.
    assert metrics.roc_auc([1, 0, 1, 0], [0.8, 0.1, 0.4, 0.4]) == pytest.approx(0.875)
    assert metrics.roc_auc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert metrics.roc_auc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0
    assert np.isnan(metrics.roc_auc([1, 1], [0.1, 0.2]))
    # tp 2, fp 1, fn 1 -> 2*2 / (2*2 + 1 + 1) = 2/3
    assert metrics.f1_score([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(2 / 3)
    assert metrics.f1_score([0, 0], [0, 0]) == 0.0
    preds = objectives.Predictions.empty()
    for lo, la, ma in [([2.0, -1.0], [1, 0], [1, 1]), ([0.5, 9.0], [0, 1], [1, 0])]:
        preds = preds.merge(objectives.Predictions.from_model_output(
            logits=np.array(lo), labels=np.array(la), mask=np.array(ma, bool),
            ids=np.array([len(preds.values.get("ids", ())) * 2 + i for i in range(2)])))
    out = preds.compute()
    assert out["labels"].tolist() == [1, 0, 0]  # the masked row is dropped
    assert out["ids"].tolist() == [0, 1, 2]
    assert out["roc_auc"] == 1.0 and out["f1"] == pytest.approx(2 / 3)  # sigmoid(.5) >= .5


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


def _tiny_parts(task, dtype=jnp.float32, input_dim=16):
    popt_cfg = models.PopTConfig(input_dim=input_dim, hidden_dim=32, n_heads=2, ff_dim=64,
                                 n_layers=1)
    return steps.split_model(train.build_model(task, popt_cfg, seed=0, dtype=dtype))


def _pretrain_steps(n_steps, dtype=jnp.float32, mesh=None, pack=True):
    """`n_steps` pretraining steps on SynthData batches of 16; returns (params, metrics list).

    The sharding worker runs exactly this (same config, so the same compiled step).
    """
    parts = _tiny_parts(objectives.PRETRAIN, dtype)
    mesh = mesh or mesh_lib.make_mesh(1)
    tx = optim.make_optimizer(synth_config(objectives.PRETRAIN, lr=2e-2, total_steps=40, warmup=0.0))
    params = mesh_lib.replicate(parts.params, mesh)
    opt_state = mesh_lib.replicate(tx.init(parts.params), mesh)
    step = objectives.make_train_step(objectives.PRETRAIN, parts, tx, mesh)
    data = SynthData(objectives.PRETRAIN, 16)
    key = jax.random.key(0, impl="rbg")
    out = []
    for i in range(n_steps):
        batch = data._local(data.global_batch(i))
        packed = objectives.pack_spec(objectives.PRETRAIN, batch, mesh) if pack else None
        params, opt_state, m, _ = step(params, opt_state, mesh_lib.to_global(batch, mesh),
                                       steps.step_key(key, i), packed)
        out.append({k: float(v) for k, v in m.compute().items()})
    return params, out


def test_train_step_learns_planted_tokens():
    params, metrics = _pretrain_steps(40)
    accs = [m["token_accuracy"] for m in metrics]
    assert np.mean(accs[-10:]) > 0.8 > 0.6 > np.mean(accs[:3])


def test_packed_and_padded_steps_agree():
    """Token packing changes the FLOPs, not the step: same losses and parameters."""
    mesh = mesh_lib.make_mesh(1)
    spec = objectives.pack_spec(objectives.PRETRAIN, SynthData(objectives.PRETRAIN, 16).global_batch(0), mesh)
    assert spec.slots and spec.out_slots
    packed, m_packed = _pretrain_steps(3, pack=True)
    padded, m_padded = _pretrain_steps(3, pack=False)
    for a, b in zip(m_packed, m_padded, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    for a, b in zip(jax.tree.leaves(packed), jax.tree.leaves(padded), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # as the 1 vs 8 device test
    # No padding, or padding too small to skip: the padded step.
    full = dict(pad_mask=np.zeros((16, 8), bool), token_label=np.ones((16, 8), np.int32))
    assert objectives.pack_spec(objectives.PRETRAIN, full, mesh) is None
    # Fine-tuning reads CLS only: the last layer is cut down even without padding.
    assert objectives.pack_spec(objectives.FINETUNE, full, mesh) == layers.PackSpec(None, 1, 18)


def test_bfloat16_compute_keeps_float32_params():
    params, metrics = _pretrain_steps(2, jnp.bfloat16)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params))
    _, ref = _pretrain_steps(2)
    for a, b in zip(metrics, ref, strict=True):
        assert np.isfinite(a["loss"]) and a["loss"] == pytest.approx(b["loss"], abs=0.05)


def test_dropout_keys_depend_only_on_step():
    parts = _tiny_parts(objectives.FINETUNE)
    mesh = mesh_lib.make_mesh(1)
    tx = optim.make_optimizer(synth_config(objectives.FINETUNE))
    step = objectives.make_train_step(objectives.FINETUNE, parts, tx, mesh)
    batch = mesh_lib.to_global(SynthData(objectives.FINETUNE, 8).global_batch(0), mesh)
    key = jax.random.key(3, impl="rbg")

    def run(i):
        params = mesh_lib.replicate(parts.params, mesh)
        opt_state = mesh_lib.replicate(tx.init(parts.params), mesh)
        return float(step(params, opt_state, batch, steps.step_key(key, i))[2].compute()["loss"])

    assert run(5) == run(5)
    assert run(5) != run(6)


# --------------------------------------------------------------------------------------------
# The loop: resume, checkpoints, logs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetune_runs(tmp_path_factory):
    """An uninterrupted fine-tuning run, and the same run stopped after step 5 and resumed."""
    base = tmp_path_factory.mktemp("resume")
    full, split = str(base / "full"), str(base / "split")
    data = SynthData(objectives.FINETUNE, 8)
    r_full = train.train_and_evaluate(synth_config(objectives.FINETUNE), full, task=objectives.FINETUNE,
                                      data=data)
    stopped = train.train_and_evaluate(synth_config(objectives.FINETUNE, stop_after_steps=5), split,
                                       task=objectives.FINETUNE, data=data)
    assert stopped == {"stopped_at": 5}
    assert sorted(jsonl(split)) == [1, 2, 3, 4, 5]
    r_split = train.train_and_evaluate(synth_config(objectives.FINETUNE), split, task=objectives.FINETUNE,
                                       data=data)
    return full, split, r_full, r_split


def test_resume_is_bitwise(finetune_runs):
    full, split, r_full, r_split = finetune_runs
    a, b = jsonl(full), jsonl(split)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for s in range(6, 13):
        assert a[s]["loss"] == b[s]["loss"], s  # exact equality, not approx
        assert a[s]["grad_norm"] == b[s]["grad_norm"], s
    assert r_full["test"] == r_split["test"]
    assert r_full["predictions"] == r_split["predictions"]


def test_outputs_of_a_run(finetune_runs):
    full, _, r_full, _ = finetune_runs
    results = json.load(open(os.path.join(full, "results.json")))
    assert set(results["test"]) == {"loss", "accuracy", "roc_auc", "f1"}
    assert len(results["predictions"]) == len(results["labels"]) == 24
    assert results["config"]["total_steps"] == 12
    valid = jsonl(full, "valid")
    assert sorted(valid) == [4, 8, 12]
    best = max(valid, key=lambda s: valid[s]["roc_auc"])
    assert results["best_step"] == best  # the test ran on the best-by-validation checkpoint
    steps = sorted(int(p) for p in os.listdir(os.path.join(full, "checkpoints")) if p.isdigit())
    assert steps == sorted({best, 8, 12})  # the latest 2 plus the best
    scalars = tb_writer.read_scalars(os.path.join(full, "tensorboard"))
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 13))
    assert scalars["train/loss"][-1][1] == pytest.approx(jsonl(full)[12]["loss"], rel=1e-6)
    assert [s for s, _ in scalars["valid/roc_auc"]] == [4, 8, 12]
    assert "test/roc_auc" in scalars


def test_finished_run_is_not_redone(finetune_runs):
    full, _, r_full, _ = finetune_runs
    again = train.train_and_evaluate(synth_config(objectives.FINETUNE), full, task=objectives.FINETUNE,
                                     data=SynthData(objectives.FINETUNE, 8))
    assert again["test"] == r_full["test"]
    assert sorted(jsonl(full)) == list(range(1, 13))


def test_workdir_of_another_model_is_refused(finetune_runs):
    full, *_ = finetune_runs
    ckpt = os.path.join(full, "checkpoints")
    before = {p: os.path.getmtime(os.path.join(ckpt, p)) for p in os.listdir(ckpt)}
    other = synth_config(objectives.FINETUNE, model=dict(hidden_dim=64, n_heads=2, ff_dim=64,
                                                 n_layers=1))
    with pytest.raises(errors.TrainingError, match="different run.*nothing was overwritten"):
        train.train_and_evaluate(other, full, task=objectives.FINETUNE, data=SynthData(objectives.FINETUNE, 8))
    with pytest.raises(errors.TrainingError, match="task"):
        train.train_and_evaluate(synth_config(objectives.PRETRAIN), full, task=objectives.PRETRAIN,
                                 data=SynthData(objectives.PRETRAIN, 8))
    assert before == {p: os.path.getmtime(os.path.join(ckpt, p)) for p in os.listdir(ckpt)}


def test_checkpoints_keep_latest_and_best(tmp_path):
    meta = train.model_meta(objectives.FINETUNE, models.PopTConfig(n_layers=1))
    ckpts = checkpoints.Checkpoints(tmp_path / "ck", meta, keep=2, best_metric="roc_auc",
                              best_mode="max")
    params, opt_state = {"w": jnp.zeros(3)}, {"m": jnp.ones(2)}
    for step, auc in zip(range(1, 6), [0.5, 0.9, 0.6, 0.7, 0.65], strict=True):
        ckpts.save(step, {"w": params["w"] + step}, opt_state, {"step": step},
                   metrics={"roc_auc": auc, "loss": 1.0})
    ckpts.wait()
    assert sorted(ckpts.manager.all_steps()) == [2, 4, 5]  # the latest 2 plus the best
    assert ckpts.best_step() == 2
    restored = ckpts.restore(2, params, opt_state)
    np.testing.assert_array_equal(restored["params"]["w"], np.full(3, 2.0))
    assert restored["progress"] == {"step": 2}
    ckpts.close()
    low = checkpoints.Checkpoints(tmp_path / "ck", meta, best_metric="loss", best_mode="min")
    assert low.latest_step() == 5
    low.close()


def test_non_finite_loss_stops_the_run(tmp_path):
    data = SynthData(objectives.FINETUNE, 8, nan_at=2)
    with pytest.raises(errors.TrainingError, match="non-finite training loss at step 3"):
        train.train_and_evaluate(synth_config(objectives.FINETUNE), str(tmp_path), task=objectives.FINETUNE,
                                 data=data)
    assert not os.path.exists(os.path.join(tmp_path, "results.json"))


def _same_params(a, b):
    fa = {"/".join(map(str, p)): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(a)}
    fb = {"/".join(map(str, p)): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(b)}
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_init_from_converted_and_upstream_checkpoints(tmp_path):
    from popt_jax.ieeg import convert

    cfg = models.PopTConfig(input_dim=16, hidden_dim=32, n_heads=2, ff_dim=2048, n_layers=1)
    src = models.PopT(cfg, rngs=nnx.Rngs(7))
    convert.export_safetensors(src, str(tmp_path / "hf" / "model.safetensors"))
    got_cfg, params = train.load_init(tmp_path / "hf")
    assert got_cfg == cfg
    _same_params(params, nnx.state(src, nnx.Param))
    # The original .pth layout (through the PyTorch reference).
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torch_reference import RefPopT, save_upstream_checkpoint

    torch.manual_seed(0)
    ref = RefPopT(input_dim=16, hidden_dim=32, n_head=2, n_layers=1)
    save_upstream_checkpoint(ref, tmp_path / "popt.pth", dict(
        name="pt_model_custom", position_encoding="multi_subj_position_encoding", n_head=2,
        n_layers=1, hidden_dim=32, input_dim=16, use_token_cls_head=True))
    got_cfg, params = train.load_init(tmp_path / "popt.pth")
    assert (got_cfg.hidden_dim, got_cfg.n_layers, got_cfg.input_dim) == (32, 1, 16)
    kernel = np.asarray(params["cls_head"]["kernel"].value)
    np.testing.assert_array_equal(kernel, ref.cls_head.weight.detach().numpy().T)


# --------------------------------------------------------------------------------------------
# Data parallelism
# --------------------------------------------------------------------------------------------


def _worker_sharding(out_path):
    """Two pretraining steps on fixed global batches of 16 over every visible device."""
    params, metrics = _pretrain_steps(2, mesh=mesh_lib.make_mesh())
    flat = {"/".join(map(str, p)): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(out_path, losses=np.array([m["loss"] for m in metrics]),
             n_devices=jax.device_count(), **flat)


def _run_worker(args, env_extra, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env_extra)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_one_device_and_eight_devices_agree(tmp_path):
    one, eight = str(tmp_path / "one.npz"), str(tmp_path / "eight.npz")
    _run_worker(["sharding", one], {})
    _run_worker(["sharding", eight],
                {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    a, b = np.load(one), np.load(eight)
    assert int(a["n_devices"]) == 1 and int(b["n_devices"]) == 8
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5, atol=1e-6)
    names = [k for k in a.files if k not in ("losses", "n_devices")]
    assert len(names) > 10
    for k in names:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5, err_msg=k)


# --------------------------------------------------------------------------------------------
# Jobs on the synthetic Brain Treebank
# --------------------------------------------------------------------------------------------


def _config(name, arg):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs",
                                                                             f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


@pytest.fixture(scope="module")
def tiny_finetune(tmp_path_factory):
    """`finetune_job` on the tiny config: extraction, a pretraining run, then fine-tuning."""
    workdir = tmp_path_factory.mktemp("tiny") / "ft"
    results = train.finetune_job(_config("tiny_train", "finetune"), str(workdir))
    return workdir, results


def test_tiny_jobs_end_to_end(tiny_finetune):
    workdir, results = tiny_finetune
    store = workdir / "extract" / "features"
    assert list(store.glob("sub_*_trial*.h5"))
    pre = workdir / "pretrain"
    assert not (pre / "extract").exists()  # the pretraining run shared the store
    pre_results = json.load(open(pre / "results.json"))
    assert pre_results["task"] == "pretrain" and pre_results["steps"] == 6
    assert set(pre_results["test"]) == {"loss", "cls_loss", "token_loss", "cls_accuracy",
                                        "token_accuracy"}
    ft = json.load(open(workdir / "results.json"))
    assert ft == json.loads(json.dumps(results, default=jsonio._json_default))
    assert ft["task"] == "finetune" and ft["model"] == pre_results["model"]
    assert set(ft["test"]) == {"loss", "accuracy", "roc_auc", "f1"}
    assert len(ft["predictions"]) == len(ft["labels"]) == len(ft["example_ids"]) > 0
    assert ft["config"]["init_checkpoint"] == ""
    for run in (pre, workdir):
        assert [s for s, _ in tb_writer.read_scalars(str(run / "tensorboard"))["train/loss"]] \
            == list(range(1, 7))
        # The grain iterator state is checkpointed beside the model.
        assert (run / "checkpoints" / "6" / "data" / "process_0-of-1.json").exists()
    with pytest.raises(errors.TrainingError, match="not a popt_jax pretraining workdir"):
        train.load_init(workdir)


@pytest.mark.parametrize("workers", [0, 2])
def test_grain_pipeline_resume_is_bitwise(tiny_finetune, tmp_path, workers):
    """Pretraining stopped after step 3 and resumed replays the uninterrupted sub-run, with
    batches made in this process or in 2 grain worker processes (whose per-worker iterator
    states go into the checkpoint)."""
    workdir, _ = tiny_finetune
    cfg = _config("tiny_train", "pretrain")
    cfg.features_dir = str(workdir / "extract" / "features")
    cfg.data.num_workers = workers
    cfg.stop_after_steps = 3
    assert train.pretrain_job(cfg, str(tmp_path)) == {"stopped_at": 3}
    cfg.stop_after_steps = 0
    train.pretrain_job(cfg, str(tmp_path))
    a, b = jsonl(workdir / "pretrain"), jsonl(tmp_path)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in range(4, 7):
        assert a[s]["loss"] == b[s]["loss"], s


def test_command_line(tiny_finetune):
    workdir, results = tiny_finetune
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
    cmd = [sys.executable, "-m", "popt_jax.main", "--config",
           "configs/tiny_train.py:finetune", "--workdir", str(workdir)]
    # A finished run: nothing is retrained, the test split is evaluated again.
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(workdir / "results.json"))["test"] == results["test"]
    proc = subprocess.run(cmd + ["--config.features_dir=/no/such/store"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: config.features_dir: /no/such/store: No such file or directory")


def _planted_store(base, plant):
    from popt_jax.ieeg import extract as features

    cfg = _config("extract_features", None)
    cfg.data.synthetic.n_subjects = 1
    cfg.data.synthetic.duration_s = 600.0
    cfg.data.synthetic.plant = plant
    cfg.tasks = ("word_onset",)
    cfg.max_windows = 400
    features.extract_features_job(cfg, str(base))
    return base / "features"


@pytest.mark.slow
@pytest.mark.parametrize("plant", [True, False])
def test_finetuning_finds_the_planted_signal(tmp_path, plant):
    """Speech vs non-speech on a 10-minute synthetic recording, time-blocked split.

    With the planted high-gamma bursts the test ROC-AUC is >= 0.8; without them (same random
    numbers otherwise) it stays near chance. A fresh PopT (hidden 64, 2 layers) is trained;
    the learning rate is held after warm-up (gamma 1) so 300 steps suffice.
    """
    store = _planted_store(tmp_path, plant)
    cfg = _config("finetune", None)
    cfg.model.update(hidden_dim=64, n_layers=2, n_heads=4, ff_dim=128)
    cfg.update(task="word_onset", total_steps=300, batch_size=32, eval_every=50, log_every=50,
               lr=1e-3, body_lr_scale=1.0, gamma=1.0)
    data = train.StoreData(cfg, store, objectives.FINETUNE)
    results = train.train_and_evaluate(cfg, str(tmp_path / "run"), task=objectives.FINETUNE,
                                       data=data)
    auc = results["test"]["roc_auc"]
    if plant:
        assert auc >= 0.8, results["test"]
    else:
        assert 0.3 <= auc <= 0.7, results["test"]


def _worker_multihost(pid, port, workdir):
    """Process `pid` of 2 (one CPU device each) fine-tuning on SynthData with a shared workdir."""
    cfg = synth_config(objectives.FINETUNE, total_steps=6, eval_every=3, distributed=True,
                       coordinator_address=f"localhost:{port}", num_processes=2,
                       process_id=int(pid))
    mesh_lib.maybe_initialize_distributed(cfg)
    assert jax.process_count() == 2 and jax.device_count() == 2
    train.train_and_evaluate(cfg, workdir, task=objectives.FINETUNE, data=SynthData(objectives.FINETUNE, 8))


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "multihost", str(i),
                               str(port), multi], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    train.train_and_evaluate(synth_config(objectives.FINETUNE, total_steps=6, eval_every=3), single,
                             task=objectives.FINETUNE, data=SynthData(objectives.FINETUNE, 8))
    a, b = jsonl(multi), jsonl(single)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert a[s]["loss"] == pytest.approx(b[s]["loss"], rel=1e-5, abs=1e-6)
    ra = json.load(open(os.path.join(multi, "results.json")))
    rb = json.load(open(os.path.join(single, "results.json")))
    assert ra["labels"] == rb["labels"]
    np.testing.assert_allclose(ra["predictions"], rb["predictions"], rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    if sys.argv[1] == "sharding":
        _worker_sharding(sys.argv[2])
    elif sys.argv[1] == "multihost":
        _worker_multihost(*sys.argv[2:5])
    else:
        raise SystemExit(f"unknown worker {sys.argv[1]}")
