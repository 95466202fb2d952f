"""Run logs: progress lines with rate and ETA, `metrics.jsonl` and TensorBoard events."""

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
        self.total, self.t0, self.s0 = total_steps, time.perf_counter(), start_step
        self.last_t, self.last_step = self.t0, start_step
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
        """Logs 'step s/N loss ... steps/s ETA'; returns steps/s since the last call."""
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
        overall = (step - self.s0) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / max(overall, 1e-9)
        self.last_t, self.last_step = now, step
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        logging.info("step %d/%d %s | %.2f steps/s | ETA %s", step, self.total, shown, rate,
                     _hms(eta))
        return rate

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"

