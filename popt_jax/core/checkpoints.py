"""Orbax checkpoints: model, optimiser, progress, run identity and the data-iterator state.

Every trainer saves through `Checkpoints`: the latest N steps plus the best by a validation
metric, the grain iterator position beside the weights (resume is bitwise), and a `meta`
item naming the run (format, task, architecture) so a workdir of another run is refused.

Failures surface promptly as one line: an OS failure while writing (disk full, read-only or
vanished folder) raises `CheckpointError` naming the folder and the errno meaning at the next
save/wait/close, and the manager is then closed without waiting on the failed save. Finished
steps are untouched (Orbax writes each step to a temporary folder and renames it when
complete; leftovers of a failed step are removed at the next start). A best metric that is
undefined (NaN, e.g. ROC-AUC of a single-class split) never wins the best-step selection.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from popt_jax.core import oserrors
from popt_jax.errors import CheckpointError, TrainingError


class Checkpoints:
    """Orbax `CheckpointManager` under `{workdir}/checkpoints`.

    Items per step: `params`, `opt_state`, `meta` (format, task, model architecture),
    `progress` (step, base rng key data) and the training iterator's position: `data`
    (grain iterator state, one JSON file per process) or, for other iterators, their
    `get_state()` inside `progress`. Kept: the
    latest `keep` steps plus the best by `best_metric` (saved with its validation metrics).
    """

    def __init__(self, directory: str | os.PathLike, meta: dict[str, Any], *, keep: int = 2,
                 best_metric: str = "loss", best_mode: str = "min"):
        self.directory = Path(directory).absolute()
        self.meta = meta
        self.best_metric, self.best_mode = best_metric, best_mode
        sign = 1.0 if best_mode == "max" else -1.0

        def metric_fn(metrics):
            # Ties go to the earliest step (upstream replaces its best only on a strict gain).
            # An undefined metric ranks below every defined one (never "best" by NaN).
            value = float(metrics.get(best_metric, np.nan))
            if not np.isfinite(value):
                return -1e30
            return sign * value - 1e-9 * float(metrics.get("step", 0))

        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=metric_fn, n=1,
                                          keep_checkpoints_without_metrics=False),
        ])
        self._check_directory()
        _silence_closed_loop_reports()
        quiet_orbax_logs()
        # best_fn is set too: without it Orbax writes no metrics, and BestN sees none.
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                preservation_policy=policy, best_fn=metric_fn, best_mode="max", create=True,
                cleanup_tmp_directories=True, enable_async_checkpointing=True,
                async_options=ocp.AsyncOptions(timeout_secs=600)))
        self._failed: BaseException | None = None
        self.best_reason = ""

    def _guard(self, what: str, fn, *args, **kwargs):
        """Runs a manager call; an OS failure (also from an earlier async save) becomes one
        `CheckpointError` line naming the folder, and later calls no longer wait on it."""
        if self._failed is not None:
            raise self._failed
        try:
            return fn(*args, **kwargs)
        except CheckpointError:
            raise
        except Exception as e:  # Orbax wraps write failures in various types
            found = oserrors.os_failure(e)
            if found is None:
                raise
            self._failed = CheckpointError(
                f"{self.directory}: {oserrors.strerror(found[0])} (while {what}; finished "
                "checkpoints are intact)")
            raise self._failed from None

    def _check_directory(self) -> None:
        if not self.directory.exists():
            return
        if not self.directory.is_dir():
            raise TrainingError(f"{self.directory} exists and is not a directory")
        steps = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        if not steps:
            return
        found = read_meta(self.directory / str(steps[-1]))
        want = {k: self.meta[k] for k in ("format", "task", "model")}
        have = {k: (found or {}).get(k) for k in want}
        if have != want:
            diff = [f"{k}: {have[k]!r} vs this run {want[k]!r}" for k in want if have[k] != want[k]]
            raise TrainingError(
                f"{self.directory} holds checkpoints of a different run ({'; '.join(diff)}); "
                "nothing was overwritten: pick another --workdir or remove that one")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The saved step with the best finite `best_metric`.

        If no step has one (e.g. ROC-AUC undefined on a single-class validation split), the
        lowest validation `loss`, else the latest; `best_reason` says which rule chose.
        """
        best = self._best_by(self.best_metric, self.best_mode)
        self.best_reason = f"best valid {self.best_metric}"
        if best is None and self.best_metric != "loss":
            best = self._best_by("loss", "min")
            if best is not None:
                self.best_reason = (f"valid {self.best_metric} undefined at every saved step; "
                                    "chosen by the lowest valid loss")
                std_logging.getLogger("absl").warning("%s: %s", self.directory,
                                                      self.best_reason)
        if best is None:
            self.best_reason = "no saved step has a finite validation metric; the latest step"
            return self.latest_step()
        return best

    def _best_by(self, metric: str, mode: str) -> int | None:
        best, best_val = None, None
        for step in sorted(self.manager.all_steps()):  # ties: the earliest, as upstream
            m = self.manager.metrics(step)
            if not m or m.get(metric) is None or not np.isfinite(m[metric]):
                continue
            v = float(m[metric])
            better = best_val is None or (v > best_val if mode == "max" else v < best_val)
            if better:
                best, best_val = step, v
        return best

    def save(self, step: int, params, opt_state, progress: dict[str, Any], data_iter=None,
             metrics: dict[str, float] | None = None) -> None:
        items = dict(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(self.meta),
            progress=ocp.args.JsonSave(progress),
        )
        if data_iter is not None:
            if _is_grain(data_iter):
                import grain

                items["data"] = grain.checkpoint.CheckpointSave(data_iter)
            else:
                progress = {**progress, "data_state": data_iter.get_state()}
                items["progress"] = ocp.args.JsonSave(progress)
        metrics = {**{k: float(v) for k, v in (metrics or {}).items()}, "step": step}
        # The previous step's background write must be finished (or its failure reported)
        # first: Orbax would otherwise start this save waiting on a commit signal that a
        # failed write never sends, and hang until its async timeout. A new save waits on the
        # previous one anyway, so this costs no overlap with training.
        self._guard("writing a checkpoint", self.manager.wait_until_finished)
        self._guard("writing a checkpoint", self.manager.save, step,
                    args=ocp.args.Composite(**items), metrics=metrics)

    def restore(self, step: int, params, opt_state=None, data_iter=None):
        """Restores into the shardings/dtypes of the given (abstract or concrete) trees."""
        def abstract(tree):
            return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)

        items = dict(params=ocp.args.StandardRestore(abstract(params)),
                     progress=ocp.args.JsonRestore())
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract(opt_state))
        grain_data = data_iter is not None and _is_grain(data_iter)
        if grain_data:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        if data_iter is not None and not grain_data:
            data_iter.set_state(out["progress"]["data_state"])
        return out

    def wait(self) -> None:
        self._guard("writing a checkpoint", self.manager.wait_until_finished)

    def close(self) -> None:
        if self._failed is None:
            try:
                self.wait()
            finally:
                if self._failed is not None:
                    self._close_quietly()
            self.manager.close()
        else:
            self._close_quietly()

    def _close_quietly(self) -> None:
        # After a failed save the manager would re-raise (or wait on) it; the error is
        # already on its way to the user.
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001 - the first failure is the one reported
            pass


def restore_best_params(workdir: str | os.PathLike, metric: str, mode: str, abstract_params,
                        ) -> tuple[int, dict[str, Any], Any]:
    """(step, meta, params) of a finished run's best checkpoint, read-only.

    The best step is the one with the best finite validation `metric` (`mode` "max" or
    "min"; ties go to the earliest step, as the trainers choose), else the latest step.
    `abstract_params(meta)` gives the parameter tree (shapes/dtypes, e.g. from
    `nnx.eval_shape`) of the architecture that step's `meta` names, so the caller can check
    the meta (task, architecture) before anything is read.

    Raises:
      TrainingError: `workdir` has no finished checkpoint.
    """
    directory = (Path(workdir) / "checkpoints").absolute()
    quiet_orbax_logs()
    manager = ocp.CheckpointManager(directory,
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        steps = manager.all_steps()
        if not steps:
            raise TrainingError(f"{workdir}: a workdir without checkpoints")
        sign = 1.0 if mode == "max" else -1.0
        scored = [(sign * float((manager.metrics(s) or {}).get(metric, np.nan)), -s)
                  for s in steps]
        finite = [x for x in scored if np.isfinite(x[0])]
        step = -max(finite)[1] if finite else max(steps)
        meta = read_meta(directory / str(step)) or {}
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params(meta))
        params = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target)))["params"]
    finally:
        manager.close()
    return step, meta, jax.device_get(params)


def _is_grain(it) -> bool:
    import grain

    return isinstance(it, grain.DatasetIterator)


def read_meta(step_dir: Path) -> dict[str, Any] | None:
    path = Path(step_dir) / "meta" / "metadata"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------



class _QuietOrbax(std_logging.Filter):
    """Drops Orbax's INFO chatter (dozens of lines per checkpoint); warnings and errors pass
    as their first line only (a failed async save otherwise logs several tracebacks, which
    `Checkpoints` reports as one line anyway); after `MAX_ERRORS` error lines the rest of
    Orbax's errors are dropped (one failed save reports from every writer thread)."""

    MAX_ERRORS = 3

    def __init__(self):
        super().__init__()
        self.errors = 0

    def filter(self, record):
        if "/orbax/" not in record.pathname:
            return True
        if record.levelno < std_logging.WARNING:
            return False
        if record.levelno >= std_logging.ERROR:
            self.errors += 1
            if self.errors > self.MAX_ERRORS:
                return False
        if record.exc_info or record.exc_text:
            record.exc_info, record.exc_text = None, None
        message = record.getMessage().splitlines()
        record.msg, record.args = (message[0] if message else ""), None
        return True


def _silence_closed_loop_reports() -> None:
    """After a failed async save, tensorstore callbacks still pending report each of their
    writes against Orbax's closed event loop through `sys.excepthook` (a traceback per write,
    hundreds of lines). Those reports say nothing the save's own error does not; drop them."""
    hook, unraisable = sys.excepthook, sys.unraisablehook
    if getattr(hook, "_popt_jax_quiet", False):
        return

    def closed_loop(exc) -> bool:
        return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

    def quiet(exc_type, exc, tb):
        if not closed_loop(exc):
            hook(exc_type, exc, tb)

    def quiet_unraisable(info):
        if not closed_loop(info.exc_value):
            unraisable(info)

    quiet._popt_jax_quiet = True
    sys.excepthook, sys.unraisablehook = quiet, quiet_unraisable


def quiet_orbax_logs() -> None:
    logger = std_logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
        logger.addFilter(_QuietOrbax())

