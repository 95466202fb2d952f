"""Step-exact training against a PyTorch statement of upstream's step (tests/torch_reference).

Upstream's `train_step` is `loss.backward(loss)`, `clip_grad_norm_(params, 1.0)`,
`optimizer.step()`: LAMB (`torch_optimizer.Lamb`, restated as `RefLamb`) in pretraining,
AdamW with the body at 0.1 x lr in fine-tuning, where the PopT heads the loss never reads have
no gradient and so get no step and no weight decay. Three steps (different batches, dropout
off) of the JAX step must leave every parameter within 1e-5 of the reference, with the loss
scaling on (upstream) and off (plain gradients); the gradient norm the step reports (what the
optimiser received, before clipping) must match the reference's too.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_reference as R  # noqa: E402

from popt_jax.core import mesh as mesh_lib  # noqa: E402
from popt_jax.core import steps  # noqa: E402
from popt_jax.ieeg import PopT, PopTClassifier, convert, objectives, optim, recipe  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-5
D, H, HEADS, LAYERS = 16, 32, 2, 1
POPT_CFG = {"name": "pt_model_custom", "position_encoding": "multi_subj_position_encoding",
            "n_head": HEADS, "n_layers": LAYERS, "hidden_dim": H, "input_dim": D,
            "layer_activation": "gelu", "attention_weights": False, "use_token_cls_head": True}
DOWNSTREAM_CFG = {"name": "pt_downstream_model", "hidden_dim": H, "upstream_cfg": POPT_CFG,
                  "upstream_path": "popt.pth", "frozen_upstream": False}


def make_batch(task: str, seed: int, b: int = 4, n: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pad = np.arange(n)[None] >= rng.integers(4, n + 1, b)[:, None]
    out = {"x": rng.standard_normal((b, n, D)).astype(np.float32), "pad_mask": pad,
           "coords": rng.integers(0, 200, (b, n, 3)).astype(np.int32),
           "seq_id": (np.arange(n)[None] >= n // 2).repeat(b, 0).astype(np.int32)}
    if task == objectives.PRETRAIN:
        out["cls_label"] = rng.integers(0, 2, b).astype(np.int32)
        lab = rng.integers(0, 3, (b, n)).astype(np.int32)
        lab[pad] = 0
        out["token_label"] = lab
    else:
        out["label"] = np.asarray([0, 1] * (b // 2), np.int32)
    return out


def comparable(key: str, value) -> np.ndarray:
    """`value` without the attention key-bias slice of torch's packed in_proj_bias."""
    value = np.asarray(value)
    if key.endswith("self_attn.in_proj_bias"):
        return np.concatenate([value[:H], value[2 * H:]])
    return value


def torch_loss(task, model, batch):
    """Upstream's criterion on the reference model (CLS row of ones prepended)."""
    b = batch["x"].shape[0]
    x = torch.cat([torch.ones(b, 1, D), torch.from_numpy(batch["x"])], dim=1)
    mask = torch.cat([torch.zeros(b, 1, dtype=torch.bool), torch.from_numpy(batch["pad_mask"])],
                     dim=1)
    coords = torch.from_numpy(batch["coords"]).long()
    seq_id = torch.from_numpy(batch["seq_id"]).long()
    bce = torch.nn.BCEWithLogitsLoss()
    if task == objectives.PRETRAIN:
        _, cls_logits, token_logits, _ = model(x, mask, coords, seq_id)
        lab = torch.from_numpy(batch["token_label"]).flatten()
        out = token_logits.flatten()
        keep = (lab == 1) | (lab == 2)
        token_loss = bce(out[keep], (lab[keep] == 1).float())
        cls_loss = bce(cls_logits.squeeze(-1), torch.from_numpy(batch["cls_label"]).float())
        return cls_loss + token_loss
    logits = model(x, mask, coords, seq_id).squeeze(-1)
    return bce(logits, torch.from_numpy(batch["label"]).float())


def run_torch(task, model, batches, lr, scaled):
    if task == objectives.PRETRAIN:
        opt = R.RefLamb(model.parameters(), lr=lr)
    else:
        body = list(model.upstream.parameters())
        opt = torch.optim.AdamW([{"params": body, "lr": lr * 0.1},
                                 {"params": list(model.linear_out.parameters()), "lr": lr}],
                                lr=lr * 0.1)
    norms, losses = [], []
    for batch in batches:
        with R.no_fastpath():
            loss = torch_loss(task, model, batch)
        if scaled:
            loss.backward(loss)  # upstream's tasks/base_task.py
        else:
            loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        losses.append(float(loss.detach()))
        opt.step()
        opt.zero_grad()
    return norms, losses


def jax_model(task, ref, tmp_path):
    path = tmp_path / "ref.pth"
    R.save_upstream_checkpoint(ref, path, POPT_CFG if task == objectives.PRETRAIN
                               else DOWNSTREAM_CFG)
    loaded = convert.load_popt(str(path))
    body = loaded if task == objectives.PRETRAIN else loaded.upstream
    cfg = dataclasses.replace(body.config, dropout=0.0)
    model = (PopT(cfg, rngs=nnx.Rngs(0)) if task == objectives.PRETRAIN
             else PopTClassifier(cfg, n_out=1, rngs=nnx.Rngs(0)))
    nnx.update(model, nnx.state(loaded, nnx.Param))
    return model


def run_jax(task, model, batches, lr, scaled):
    config = ml_collections.ConfigDict(dict(
        optimizer="lamb" if task == objectives.PRETRAIN else "adamw", lr=lr, total_steps=100,
        warmup=0.0, gamma=1.0, grad_clip=1.0, weight_decay=0.0 if task == objectives.PRETRAIN
        else 0.01, body_lr_scale=0.1, lamb_clamp_value=10.0))
    mesh = mesh_lib.make_mesh(1)
    parts = steps.split_model(model)
    tx = optim.make_optimizer(config)
    params = mesh_lib.replicate(parts.params, mesh)
    opt_state = mesh_lib.replicate(tx.init(parts.params), mesh)
    step = objectives.make_train_step(task, parts, tx, mesh, loss_scaled_grad=scaled)
    norms, losses = [], []
    for i, batch in enumerate(batches):
        params, opt_state, m, gnorm = step(params, opt_state, mesh_lib.to_global(batch, mesh),
                                           jax.random.key(i), None)
        norms.append(float(gnorm))
        losses.append(float(np.asarray(m.loss.compute())))
    nnx.update(model, jax.device_get(params))
    return norms, losses


def _ref(task):
    ref = R.randomize(R.RefPopT(input_dim=D, hidden_dim=H, n_head=HEADS, n_layers=LAYERS), 3)
    if task == objectives.FINETUNE:
        ref = R.RefPopTDownstream(upstream=ref, hidden_dim=H)
        R.randomize(ref.linear_out, 4)
    return ref.eval()  # dropout off (the JAX model is built with dropout 0)


@pytest.mark.parametrize("scaled", [True, False], ids=["loss_scaled", "plain"])
@pytest.mark.parametrize("task", [objectives.PRETRAIN, objectives.FINETUNE])
def test_steps_match_torch(task, scaled, tmp_path):
    lr = 1e-3
    ref = _ref(task)
    model = jax_model(task, ref, tmp_path)
    before = convert.to_state_dict(model)
    batches = [make_batch(task, seed) for seed in range(3)]
    t_norms, t_losses = run_torch(task, ref, batches, lr, scaled)
    j_norms, j_losses = run_jax(task, model, batches, lr, scaled)
    np.testing.assert_allclose(j_losses, t_losses, rtol=1e-5)
    np.testing.assert_allclose(j_norms, t_norms, rtol=1e-5)
    assert max(t_norms) > 1.0  # clipping is exercised
    after = convert.to_state_dict(model)
    want = {k: v.detach().numpy() for k, v in ref.named_parameters()}  # buffers: no steps
    assert set(want) <= set(after)
    moved = 0.0
    for key in want:
        value, ref_value = comparable(key, after[key]), comparable(key, want[key])
        diff = np.max(np.abs(np.asarray(value, np.float64) - ref_value))
        assert diff <= TOL, f"{key}: {diff}"
        moved = max(moved, float(np.max(np.abs(value - comparable(key, before[key])))))
    assert moved > 100 * TOL  # the steps really moved the parameters
    # The attention key bias is left out above: it cannot change any output (softmax is
    # shift-invariant), so its gradient is float noise in both frameworks, which AdamW turns
    # into +-lr steps. The updated models must still compute the same function.
    probe = make_batch(task, 99)
    with torch.no_grad(), R.no_fastpath():
        ref_out = torch_loss(task, ref, probe)
    _, jax_out = objectives.forward(task, model, probe, True)
    np.testing.assert_allclose(float(jax_out["loss"]), float(ref_out), rtol=TOL)
    if task == objectives.FINETUNE:  # heads the loss never reads: untouched (no decay)
        for key in after:
            if not recipe.receives_gradient(key.split(".")):
                assert np.array_equal(after[key], before[key]), key


def test_loss_scaling_scales_the_gradient(tmp_path):
    """The reported norm of the scaled gradient is the plain one times the loss."""
    batches = [make_batch(objectives.PRETRAIN, 7)]
    out = {}
    for scaled in (True, False):
        model = jax_model(objectives.PRETRAIN, _ref(objectives.PRETRAIN), tmp_path)
        out[scaled] = run_jax(objectives.PRETRAIN, model, batches, 1e-3, scaled)
    (n_s, l_s), (n_p, l_p) = out[True], out[False]
    assert l_s == pytest.approx(l_p, rel=1e-6)
    assert n_s[0] == pytest.approx(n_p[0] * l_p[0], rel=1e-5)
    assert abs(l_p[0] - 1.0) > 0.05  # otherwise the check could not tell the two apart


def test_receives_gradient_paths():
    assert not recipe.receives_gradient(["spec_prediction_head", "dense", "kernel"])
    assert recipe.receives_gradient(["cls_head", "kernel"])
    assert recipe.receives_gradient(["token_cls_head", "bias"])
    for head in ("cls_head", "token_cls_head", "spec_prediction_head"):
        assert not recipe.receives_gradient(["upstream", head, "kernel"])
    assert recipe.receives_gradient(["upstream", "transformer_encoder", "layers"])
    assert recipe.receives_gradient(["linear_out", "kernel"])


def test_upstream_eval_cadence():
    from popt_jax.core.loop import Schedule

    def due(schedule):
        sched = Schedule(total=350, eval_every=100, eval_schedule=schedule)
        return [s for s in range(1, 351) if sched.eval_due(s)]

    assert due("upstream") == [1, 101, 201, 301, 350]
    assert due("every") == [100, 200, 300, 350]
    with pytest.raises(ValueError):
        Schedule(total=10, eval_every=5, eval_schedule="sometimes").eval_due(1)
