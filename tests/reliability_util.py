"""Shared helpers of the reliability and fault-injection tests (not a test module)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ".popt_jax.lock"


def run_main(*args: str, timeout: float = 300, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    """`python -m popt_jax.main ARGS` from the repository root, on CPU."""
    full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    full_env.pop("POPT_JAX_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "popt_jax.main", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_one_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, exactly one `error:` line on stderr (containing every needle), no
    traceback; returns the line."""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert len(errors) == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def snapshot(directory: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under `directory` (the lock file left out)."""
    out = {}
    for p in sorted(Path(directory).rglob("*")):
        if p.is_file() and p.name != LOCK:
            out[str(p.relative_to(directory))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def tiny_pretrain_args(store: str | os.PathLike, workdir: str | os.PathLike, *extra: str
                       ) -> list[str]:
    return ["--config", "configs/tiny_train.py:pretrain", "--workdir", str(workdir),
            f"--config.features_dir={store}", *extra]
