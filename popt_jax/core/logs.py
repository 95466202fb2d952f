"""Run logs: progress lines with rate and ETA, `metrics.jsonl` and TensorBoard events.

`Progress` is the one progress/ETA logger: training steps (`Logs.progress`), BrainBERT
feature extraction (windows) and the fMRI backbone feature cache (images) all report through it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
from absl import logging

from popt_jax.core import tb_writer
from popt_jax.core.jsonio import finite_or_null


class Logs:
    """Progress lines, `metrics.jsonl` and TensorBoard events (written by process 0 only)."""

    def __init__(self, workdir: Path, total_steps: int, start_step: int):
        self.main = jax.process_index() == 0
        self._steps = Progress("steps", total_steps, start=start_step, label="step")
        self.jsonl = workdir / "metrics.jsonl"
        self.tb = None
        if self.main:
            self._truncate(start_step)
            self.tb = tb_writer.SummaryWriter(str(workdir / "tensorboard"))

    def _truncate(self, start_step: int) -> None:
        """Drops lines a previous run wrote after the checkpoint this run resumes from."""
        if not self.jsonl.exists():
            return
        keep = [ln for ln in self.jsonl.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
        tmp = self.jsonl.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.jsonl)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.main:
            return
        with open(self.jsonl, "a", encoding="utf-8") as f:
            # NaN/inf (e.g. ROC-AUC of a single-class split) are written as null, not as scores.
            f.write(json.dumps(finite_or_null({"step": step, "split": split, **values}))
                    + "\n")
        self.tb.scalars(step, {f"{split}/{k}": v for k, v in values.items()})

    def progress(self, step: int, values: dict[str, float]) -> float:
        """Logs 'step s/N loss ... | steps/s | ETA'; returns steps/s since the last call."""
        return self._steps.log(step, "".join(f" {k} {v:.4g}" for k, v in values.items()))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Progress:
    """Counts done items of a known total and logs 'label done/total | rate | ETA'.

    `update(n)` adds n items and logs at most every `every_s` seconds (and at the end);
    `log(done)` logs now. The logged rate is the one since the previous line, the ETA uses
    the rate since construction (so a slow first compilation fades out).

    Args:
      unit: what is counted, e.g. "steps", "windows", "images" (the rate is unit/s).
      total: items when done.
      start: items already done (a resumed run).
      every_s: least seconds between `update` lines.
      label: start of every line.
      per_item: optional (name, factor): a second rate, e.g. ("electrode-windows", n_e).
    """

    def __init__(self, unit: str, total: int, *, start: int = 0, every_s: float = 0.0,
                 label: str = "", per_item: tuple[str, float] | None = None):
        self.unit, self.total, self.start, self.every_s = unit, int(total), int(start), every_s
        self.label, self.per_item = label, per_item
        self.t0 = self.last_t = time.perf_counter()
        self.done = self.last_done = int(start)

    def update(self, n: int = 1) -> None:
        """Adds `n` done items; logs when `every_s` passed since the last line, or at the end."""
        self.done += int(n)
        if self.done >= self.total or time.perf_counter() - self.last_t >= self.every_s:
            self.log(self.done)

    def log(self, done: int, detail: str = "") -> float:
        """Logs the line for `done` items (with `detail` after the count); returns the rate
        since the previous line (items/s)."""
        now = time.perf_counter()
        rate = (done - self.last_done) / max(now - self.last_t, 1e-9)
        overall = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / max(overall, 1e-9)
        self.done, self.last_done, self.last_t = done, done, now
        extra = f" ({rate * self.per_item[1]:.0f} {self.per_item[0]}/s)" if self.per_item else ""
        logging.info("%s %d/%d%s | %.2f %s/s%s | ETA %s", self.label, done, self.total, detail,
                     rate, self.unit, extra, _hms(eta))
        return rate


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"

