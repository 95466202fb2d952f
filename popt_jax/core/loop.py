"""The model-agnostic pieces of a training job: restore-or-init, run the steps with periodic
validation and checkpoints, take the best checkpoint, write the results.

A job builds its model, optimizer, jitted steps and `Checkpoints`, then reads top to bottom:

    state = loop.restore_or_init(ckpts, params, opt_state, train_iter, seed=0)
    logs = Logs(workdir, schedule.total, state.step)
    if loop.run_steps(state, schedule, train_iter=..., step_fn=..., validate=..., ckpts=ckpts,
                      logs=logs):
        return {"stopped_at": state.step}
    best, best_params = loop.best_params(ckpts, state)
    ...evaluate best_params on the test split...
    loop.write_results(workdir, results)

Resume is exact as long as `step_fn` is a pure function of (params, opt_state, batch, key):
the dropout key of step t is `fold_in(seed key, t)` (`steps.step_key`), the base key and the
step are checkpointed with the model, and the data iterator's state goes with them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging

from popt_jax.core import steps
from popt_jax.core.checkpoints import Checkpoints
from popt_jax.core.jsonio import atomic_json
from popt_jax.core.logs import Logs
from popt_jax.core.metrics import compute_metrics
from popt_jax.errors import TrainingError

__all__ = ["Schedule", "RunState", "restore_or_init", "check_finite", "run_steps",
           "best_params", "write_results"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When things happen in `run_steps`.

    Attributes:
      total: optimiser steps of the run.
      log_every: steps between progress lines / train metrics (and the last step).
      eval_every: steps between validation + checkpoint (and the last step); 0 = only the last.
      stop_after: stop, checkpointed, after this step (a simulated preemption); 0 = never.
      eval_schedule: "every": after steps eval_every, 2 eval_every, ...; "upstream": after
        steps 1, 1 + eval_every, ... (upstream validates when its 0-based update counter is a
        multiple of its log step); both also after the last step.
    """

    total: int
    log_every: int = 1
    eval_every: int = 0
    stop_after: int = 0
    eval_schedule: str = "every"

    def eval_due(self, step: int) -> bool:
        """Whether to validate (and checkpoint) after optimiser update `step` (1-based)."""
        if self.eval_schedule not in ("every", "upstream"):
            raise ValueError(f"eval_schedule must be every or upstream, not "
                             f"{self.eval_schedule!r}")
        if step == self.total:
            return True
        if self.eval_schedule == "upstream":
            return (step - 1) % self.eval_every == 0
        return step % self.eval_every == 0

    @classmethod
    def from_config(cls, config) -> Schedule:
        """From the usual config fields (total_steps, log_every, eval_every, stop_after_steps)."""
        return cls(total=int(config.total_steps), log_every=max(1, int(config.log_every)),
                   eval_every=int(config.eval_every) or int(config.total_steps),
                   stop_after=int(config.get("stop_after_steps", 0) or 0),
                   eval_schedule=str(config.get("eval_schedule", "every")))


class Mean:
    """Running means of a step's scalar outputs (a dict), mergeable like a clu collection, for
    steps that return plain dicts of device scalars rather than clu metrics."""

    def __init__(self, values: dict[str, Any], count: int = 1):
        self.sums, self.count = dict(values), count

    def merge(self, other: "Mean") -> "Mean":
        return Mean({k: v + other.sums[k] for k, v in self.sums.items()},
                    self.count + other.count)

    def compute(self) -> dict[str, float]:
        return {k: float(v) / self.count for k, v in self.sums.items()}


@dataclasses.dataclass
class RunState:
    """The replicated training state and where the run stands (mutated by `run_steps`)."""

    params: Any
    opt_state: Any
    step: int
    base_key: jax.Array  # per-step keys are fold_in(base_key, step)
    last_ckpt: int | None = None  # the last saved step (named when a run fails)
    train_seconds: float = 0.0

    def progress(self) -> dict[str, Any]:
        """The JSON-able position saved with every checkpoint."""
        return {"step": self.step, "rng": np.asarray(jax.random.key_data(self.base_key)).tolist(),
                "rng_impl": str(jax.random.key_impl(self.base_key))}


def restore_or_init(ckpts: Checkpoints, params, opt_state, train_iter=None, *, seed: int,
                    rng_impl: str = "rbg") -> RunState:
    """The latest checkpoint of `ckpts` (params, optimizer, base key, data position) restored
    into the given templates, or a fresh state at step 0 with `key(seed)` as base key."""
    base_key = jax.random.key(int(seed), impl=str(rng_impl))
    latest = ckpts.latest_step()
    if latest is None:
        return RunState(params, opt_state, 0, base_key)
    restored = ckpts.restore(latest, params, opt_state, train_iter)
    progress = restored["progress"]
    state = RunState(restored["params"], restored["opt_state"], int(progress["step"]),
                     jax.random.wrap_key_data(np.asarray(progress["rng"], np.uint32),
                                              impl=progress["rng_impl"]), last_ckpt=latest)
    logging.info("resumed from %s at step %d", ckpts.directory / str(latest), state.step)
    return state


def check_finite(values: dict[str, float], step: int, what: str, last_ckpt, hint: str = ""
                 ) -> None:
    """Raises `TrainingError` naming the step and the last good checkpoint on NaN/inf."""
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        raise TrainingError(
            f"non-finite {what} at step {step} ({', '.join(f'{k}={v}' for k, v in bad.items())})"
            f"; stopped. Last good checkpoint: {last_ckpt}." + (f" {hint}" if hint else ""))


def run_steps(state: RunState, schedule: Schedule, *, train_iter: Iterator,
              step_fn: Callable, validate: Callable[[Any], dict[str, float]],
              ckpts: Checkpoints, logs: Logs, lr_fn: Callable[[int], float] | None = None,
              hint: str = "") -> bool:
    """Runs `state` from its step to `schedule.total`; returns True when stopped early.

    Args:
      state: mutated in place (params, opt_state, step, last_ckpt, train_seconds).
      schedule: totals and intervals.
      train_iter: yields this process's rows of each batch; checkpointed with the model.
      step_fn: (params, opt_state, batch, key) -> (params, opt_state, metrics, aux):
        `metrics` a clu metric collection or a `Mean` (merged until the next log line), `aux` a dict of
        device scalars logged with them (read only on log steps, so no per-step sync).
      validate: params -> validation metrics (with "loss"); every `eval_every` steps, then a
        checkpoint carrying them (the best checkpoint is chosen by them).
      ckpts, logs: where checkpoints and metric lines go.
      lr_fn: step -> learning rate, logged as "lr".
      hint: advice appended to the non-finite-loss error.
    """
    train_metrics = None
    t_start = time.perf_counter()
    while state.step < schedule.total:
        batch = next(train_iter)
        state.params, state.opt_state, m, aux = step_fn(
            state.params, state.opt_state, batch, steps.step_key(state.base_key, state.step))
        train_metrics = m if train_metrics is None else train_metrics.merge(m)
        state.step += 1
        step = state.step
        if step % schedule.log_every == 0 or step == schedule.total:
            values = compute_metrics(train_metrics)
            values.update({k: float(v) for k, v in aux.items()})
            if lr_fn is not None:
                values["lr"] = lr_fn(step - 1)
            check_finite(values, step, "training loss", state.last_ckpt, hint)
            logs.progress(step, values)
            logs.write(step, "train", values)
            train_metrics = None
        stopping = step == schedule.stop_after
        if schedule.eval_due(step) or stopping:
            values = validate(state.params)
            check_finite({"loss": values["loss"]}, step, "validation loss", state.last_ckpt,
                         hint)
            logging.info("step %d valid %s", step,
                         " ".join(f"{k} {v:.4f}" for k, v in values.items()))
            logs.write(step, "valid", values)
            ckpts.save(step, state.params, state.opt_state, state.progress(), train_iter,
                       metrics=values)
            state.last_ckpt = step
        if stopping:  # a simulated preemption (tests): checkpointed, no test evaluation
            logging.info("stopping after step %d (config.stop_after_steps)", step)
            return True
    state.train_seconds = time.perf_counter() - t_start
    ckpts.wait()
    return False


def best_params(ckpts: Checkpoints, state: RunState) -> tuple[int | None, Any]:
    """(best step by the validation metric, its params): the live params when that is now."""
    best = ckpts.best_step()
    return best, (ckpts.restore(best, state.params)["params"] if best != state.step
                  else state.params)


def write_results(workdir: Path, results: dict[str, Any]) -> None:
    """`{workdir}/results.json`, atomically, by process 0."""
    if jax.process_index() == 0:
        atomic_json(Path(workdir) / "results.json", results)
