"""`python -m popt_jax.main` turns bad command lines into one line on stderr and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "popt_jax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, expected", [
    (("--config", "configs/extract_features.py", "--config.no_such_field=1"), "no_such_field"),
    (("--config", "configs/extract_features.py", "--config.max_windows=abc"), "max_windows"),
    (("--config", "configs/no_such_config.py"), "no_such_config.py"),
])
def test_bad_command_line_is_one_line(args, expected, tmp_path):
    res = _main(*args, "--workdir", str(tmp_path / "w"))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], res.stderr
    assert not (tmp_path / "w").exists()


def test_missing_data_root_is_one_line(tmp_path):
    res = _main("--config", "configs/extract_features.py", "--workdir", str(tmp_path / "w"),
                "--config.data.root", str(tmp_path / "nowhere"))
    assert res.returncode == 2
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "nowhere") in errors[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "w" / "results.json").exists()
