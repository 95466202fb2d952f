"""`scripts/benchmark_brain_encoder.py --tiny` runs end to end (benchmarks cannot rot)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_brain_encoder.py"


def test_tiny_benchmark_prints_ratios(capsys):
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("benchmark_brain_encoder", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--tiny"])
    out = capsys.readouterr().out
    ratios = [ln for ln in out.splitlines() if ln.startswith("ratio vs reference:")]
    assert len(ratios) == 2, out
    assert all(float(ln.rsplit(" ", 1)[1].rstrip("x")) > 0 for ln in ratios)
    assert "feature extraction small 56px float32" in out
