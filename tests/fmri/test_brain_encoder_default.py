"""The documented default, end to end: `python -m popt_jax.main --config configs/brain_encoder.py`.

Slow (about 3 minutes on 2 busy CPU cores: a 300-image synthetic subject, 15 epochs); run with
`python -m pytest -m slow tests/fmri/test_brain_encoder_default.py`. The command is run
exactly as the README gives it (only `--workdir` points into a temporary folder), bounded by a
30-minute timeout, and must leave a complete run: results, submission arrays of the Algonauts
shape, figures, checkpoints, TensorBoard events, and a transformer that beats the ridge
baseline on the validation images.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reliability_util import run_main  # noqa: E402

pytestmark = pytest.mark.slow
BOUND_S = 1800


def test_default_config_runs_to_completion(tmp_path):
    workdir = tmp_path / "brain_encoder"
    res = run_main("--config", "configs/brain_encoder.py", "--workdir", str(workdir),
                   timeout=BOUND_S)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["epochs"] == 15 and results["steps"] == 15 * 17  # ceil(270 / 16) steps
    assert results["n_train"] + results["n_val"] == 300 and results["n_test"] == 40
    for hemi, n in (("lh", 320), ("rh", 300)):
        sub = np.load(workdir / "submission" / "subj01" / f"{hemi}_pred_test.npy")
        assert sub.shape == (40, n) and np.isfinite(sub).all()
    figures = sorted(p.name for p in (workdir / "figures").glob("*.png"))
    assert "roi_scores.png" in figures and len(figures) >= 2
    assert any((workdir / "tensorboard").iterdir())
    assert (workdir / "checkpoints" / str(results["best_step"])).is_dir()
    t, ridge = results["transformer"], results["ridge"]
    assert np.isfinite(t["mean_r"]) and t["mean_r"] > ridge["mean_r"]
    assert 0 < results["test_challenge"]["overall"] <= 100
    print(f"default brain_encoder run: {results['total_seconds']} s in the job, "
          f"valid mean r {t['mean_r']:.3f} (ridge {ridge['mean_r']:.3f})")
