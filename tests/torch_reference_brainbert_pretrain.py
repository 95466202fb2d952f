"""A small PyTorch statement of upstream BrainBERT pretraining, for parity tests and benchmarks.

Written from upstream's semantics (czlwang/BrainBERT `util/mask_utils.py` fixed_mask_inputs,
`criterions/pretrain_masked_criterion.py`, `tasks/base_task.py` train_step, torch_optimizer's
Lamb): per-example Python loops over candidate positions, exactly in upstream's order. Two
sources of randomness:

* `ref_fixed_mask_random`: Python's `random`, drawn in upstream's order (statistics tests);
* `ref_fixed_mask_with_draws`: the per-position numbers the JAX masking draws (exactness
  tests), consumed by the same loops.

The model is `torch_reference.RefBrainBERT` (with its spectrogram head).
"""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
import torch
from torch_reference import RefLamb  # noqa: F401 - re-exported: torch_optimizer.Lamb, stated once


class Span(NamedTuple):
    axis: str  # "time" or "freq"
    start: int
    end: int
    action: str  # "keep", "replace" or "zero"


def _action(dice: float, keep_p: float, replace_p: float) -> str:
    if dice < keep_p:
        return "keep"
    if dice < keep_p + replace_p:
        return "replace"
    return "zero"


def _mask_loops(data: torch.Tensor, cfg, starts_fn, action_fn, loss_mask: str):
    """Upstream's fixed_mask_inputs with pluggable randomness; returns (masked, label, spans)."""
    t, f = data.shape
    label = torch.zeros_like(data)
    masked = data.clone()
    spans: list[Span] = []
    time_spans = starts_fn("time", t - cfg.time_max, cfg.time_p, cfg.time_min, cfg.time_max)
    for s, e in time_spans:
        label[s:e, :] = 1
    for s, e in time_spans:
        act, src = action_fn("time", s, t - cfg.time_max)
        if act == "replace":
            masked[s:e, :] = data[src:src + (e - s), :]
        elif act == "zero":
            masked[s:e, :] = 0
        spans.append(Span("time", s, e, act))
    if loss_mask == "upstream":
        for s, e in time_spans:  # the quirk: time bounds on the frequency axis
            label[:, s:e] = 1
    freq_spans = starts_fn("freq", f - cfg.freq_max, cfg.freq_p, cfg.freq_min, cfg.freq_max)
    for s, e in freq_spans:
        act, src = action_fn("freq", s, f - cfg.freq_max)
        if act == "replace":
            masked[:, s:e] = data[:, src:src + (e - s)]
        elif act == "zero":
            masked[:, s:e] = 0
        if loss_mask == "corrected":
            label[:, s:e] = 1
        spans.append(Span("freq", s, e, act))
    return masked, label, spans


def ref_fixed_mask_random(data: torch.Tensor, cfg, rng: random.Random,
                          loss_mask: str = "upstream"):
    """Upstream's masking driven by Python `random` in upstream's draw order."""

    def starts_fn(axis, n, p, lo, hi):
        out = []
        for i in range(n):
            if rng.random() < p:
                if not out or out[-1][1] < i:
                    out.append((i, i + rng.randint(lo, hi)))
        return out

    def action_fn(axis, start, n):
        act = _action(rng.random(), cfg.keep_p, cfg.replace_p)
        src = rng.randint(0, n - 1) if act == "replace" else None
        return act, src

    return _mask_loops(data, cfg, starts_fn, action_fn, loss_mask)


def ref_fixed_mask_with_draws(data: torch.Tensor, cfg, draws: dict[str, np.ndarray],
                              loss_mask: str = "upstream"):
    """The same loops consuming per-position draws ({time,freq}_{u,length,dice,source})."""

    def starts_fn(axis, n, p, lo, hi):
        out = []
        u, length = draws[f"{axis}_u"], draws[f"{axis}_length"]
        for i in range(n):
            if u[i] < p:
                if not out or out[-1][1] < i:
                    out.append((i, i + int(length[i])))
        return out

    def action_fn(axis, start, n):
        act = _action(float(draws[f"{axis}_dice"][start]), cfg.keep_p, cfg.replace_p)
        return act, int(draws[f"{axis}_source"][start])

    return _mask_loops(data, cfg, starts_fn, action_fn, loss_mask)


def ref_loss(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, alpha: float = 2.0):
    """Upstream's pretrain_masked_criterion: (loss, l1, content_l1)."""
    mask = mask.bool()
    true = target.masked_select(mask)
    pred = output.masked_select(mask)
    l1 = torch.mean(torch.abs(true - pred))
    big = torch.abs(true) > 1
    content = torch.mean(torch.abs(true[big] - pred[big]))
    return l1 + alpha * content, l1, content


def ref_train_step(model, opt, masked, target, mask, *, alpha=2.0, clip=1.0,
                   loss_scaled_grad=True):
    """Upstream's train_step: criterion, backward(loss), clip, optimiser step."""
    output = model.spec_prediction_head(model(masked))
    loss, l1, content = ref_loss(output, target, mask, alpha)
    if loss_scaled_grad:
        loss.backward(loss)
    else:
        loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip) if clip else None
    opt.step()
    opt.zero_grad()
    return {"loss": float(loss.detach()), "l1": float(l1.detach()),
            "content_l1": float(content.detach()),
            "grad_norm": None if gnorm is None else float(gnorm)}
