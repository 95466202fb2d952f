"""The experiment harness on the synthetic tree: a 2 subjects x 2 tasks x 2 variants grid
(tiny sizes), its table and plots against the per-cell results.json, resume, baselines.

One module fixture runs `configs/harness.py:tiny` on the time-blocked split only (extraction,
one tiny pretraining, 8 cells of 3 steps, the two linear baselines; the tiny config's second
split would double the cells), removes one finished cell and runs the grid again. The plot of
both splits side by side is checked on a hand-made table.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from popt_jax.ieeg import baselines as bl
from popt_jax.ieeg import harness

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "harness.py"

REMOVED = "sub_2/volume/random_init/seed0/time_blocked"


def _tiny_config():
    spec = importlib.util.spec_from_file_location("cfg_harness", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("tiny")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("harness") / "grid"
    config = _tiny_config()
    config.splits = ("time_blocked",)
    first = harness.harness_job(config, workdir)
    cells = sorted((workdir / "cells").glob("*/*/*/*/*/results.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    shutil.rmtree(workdir / "cells" / REMOVED)
    second = harness.harness_job(config, workdir)
    return config, workdir, first, second, stamps


def _table(workdir: Path) -> list[dict]:
    with open(workdir / "table.csv") as f:
        return list(csv.DictReader(f))


def test_grid_runs_every_cell_once_and_resumes(grid):
    config, workdir, first, second, stamps = grid
    n = (len(config.subjects) * len(config.tasks) * len(config.variants) * len(config.seeds)
         * len(config.splits))
    assert n == 8 and first["cells"] == n
    assert len(first["ran"]) == n and first["skipped"] == []
    # The second run re-did only the removed cell; the others were read, not rewritten.
    assert second["ran"] == [REMOVED]
    assert len(second["skipped"]) == n - 1 and REMOVED not in second["skipped"]
    for path, stamp in stamps.items():
        if REMOVED not in str(path):
            assert path.stat().st_mtime_ns == stamp, path
    assert (workdir / "pretrain" / "results.json").exists()  # one pretraining, reused
    assert first["init"] == second["init"] == {"spatial": str(workdir / "pretrain")}


def test_table_agrees_with_each_results_json(grid):
    config, workdir, _, _, _ = grid
    rows = _table(workdir)
    as_json = json.loads((workdir / "table.json").read_text())["rows"]
    assert len(rows) == len(as_json)
    cells = [r for r in rows if r["variant"] in config.variants]
    assert len(cells) == 8
    seen = set()
    for row, jrow in zip(rows, as_json, strict=True):
        assert row["variant"] == jrow["variant"] and row["subject"] == jrow["subject"]
        if row["variant"] not in config.variants:
            continue
        key = (row["subject"], row["task"], row["variant"], int(row["seed"]), row["split"])
        seen.add(key)
        res = json.loads((harness.cell_dir(workdir, *key) / "results.json").read_text())
        assert res["config"]["task"] == row["task"]
        assert res["config"]["data"]["subject"] == row["subject"]
        assert res["config"]["data"]["split"] == row["split"]
        for m in ("roc_auc", "f1"):
            assert np.isfinite(res["test"][m])  # the tiny splits hold both classes
            assert float(row[m]) == res["test"][m] == jrow[m]
        assert int(row["n_test"]) == len(res["labels"]) == res["n_examples"]["test"]
        assert int(row["n_train"]) == res["n_examples"]["train"] > 0
        assert int(row["best_step"]) == res["best_step"]
        # The variant reached the run: random_init has no init checkpoint, popt has one.
        assert res["config"]["random_init"] == (row["variant"] == "random_init")
        assert res["config"]["init_checkpoint"] == ("" if row["variant"] == "random_init"
                                                    else str(workdir / "pretrain"))
    assert len(seen) == 8
    # Same seed, same data: the pretrained body is what makes popt differ from random_init.
    for subject in config.subjects:
        preds = {v: json.loads((harness.cell_dir(workdir, subject, "volume", v, 0,
                                                 "time_blocked")
                                / "results.json").read_text())["predictions"]
                 for v in ("popt", "random_init")}
        assert len(preds["popt"]) == len(preds["random_init"])
        assert not np.allclose(preds["popt"], preds["random_init"], rtol=0, atol=1e-7)


def test_baselines_use_the_same_test_split(grid):
    config, workdir, _, _, _ = grid
    rows = _table(workdir)
    for subject in config.subjects:
        for task in config.tasks:
            for split in config.splits:
                group = [r for r in rows if (r["subject"], r["task"], r["split"])
                         == (subject, task, split)]
                by_variant = {r["variant"]: r for r in group}
                assert set(by_variant) == set(config.variants) | set(bl.BASELINES)
                n_test = {int(r["n_test"]) for r in group}
                n_train = {int(r["n_train"]) for r in group}
                assert len(n_test) == 1 and len(n_train) == 1, group
                for name in bl.BASELINES:
                    auc = float(by_variant[name]["roc_auc"])
                    assert 0.0 <= auc <= 1.0 and by_variant[name]["seed"] == ""


def test_summary_and_plots(grid):
    config, workdir, _, second, _ = grid
    rows = json.loads((workdir / "table.json").read_text())["rows"]
    summary = json.loads((workdir / "table.json").read_text())["summary"]
    assert summary == second["summary"]
    for s in summary:
        vals = [r["roc_auc"] for r in rows if (r["task"], r["variant"], r["split"])
                == (s["task"], s["variant"], s["split"])]
        assert s["n"] == len(vals) == len(config.subjects)
        assert s["roc_auc"] == pytest.approx(float(np.mean(vals)), abs=1e-12)
    for task in config.tasks:
        png = workdir / "plots" / f"{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert sorted(second["plots"]) == sorted(str(workdir / "plots" / f"{t}.png")
                                             for t in config.tasks)
    assert not list(workdir.rglob("*.tmp"))


def test_plot_puts_both_splits_side_by_side(tmp_path):
    rows = [{"subject": f"sub_{s}", "task": "pitch", "variant": v, "seed": 0, "split": sp,
             "roc_auc": 0.5 + 0.1 * s + (0.2 if sp == "random" else 0.0)}
            for s in (1, 2) for v in ("popt", "linear_stft") for sp in ("random", "time_blocked")]
    summary = harness.summarize([{**r, "f1": None, "pearson_r": None, "r2": None}
                                 for r in rows])
    by = {(s["variant"], s["split"]): s for s in summary}
    assert by[("popt", "random")]["roc_auc"] == pytest.approx(0.85)
    assert by[("popt", "time_blocked")]["roc_auc"] == pytest.approx(0.65)
    assert by[("popt", "random")]["n"] == 2 and by[("popt", "random")]["f1"] is None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    calls = []
    real_bar = plt.Axes.bar

    def bar(self, x, height, *args, **kwargs):
        calls.append((round(float(x), 6), round(float(height), 6), kwargs.get("label")))
        return real_bar(self, x, height, *args, **kwargs)

    plt.Axes.bar = bar
    try:
        (path,) = harness.plot_tables(tmp_path, rows, ("random", "time_blocked"), ())
    finally:
        plt.Axes.bar = real_bar
    assert path.read_bytes()[:4] == b"\x89PNG"
    # Per variant, the random bar left of the time-blocked bar, at the means over subjects.
    assert sorted(calls) == [(-0.2, 0.85, "random"), (0.2, 0.65, "time_blocked"),
                             (0.8, 0.85, None), (1.2, 0.65, None)]


def test_unknown_variant_is_a_user_error(tmp_path):
    from popt_jax.errors import UserError

    config = _tiny_config()
    config.variants = ("popt", "nope")
    with pytest.raises(UserError, match="nope"):
        harness.harness_job(config, tmp_path)


# ------------------------------------------------------------------------- linear baselines


def _objective(x, y, w, b, c=1.0):
    z = x @ w + b
    return c * np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * w @ w


def test_logistic_regression_is_the_minimiser():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 4))
    y = (x[:, 0] + 0.5 * rng.standard_normal(80) > 0).astype(float)
    w, b = bl.fit_logistic(x, y)
    # Gradient of C * sum(log-loss) + |w|^2 / 2 vanishes at the solution ...
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    assert np.abs(x.T @ (p - y) + w).max() < 1e-8 and abs(np.sum(p - y)) < 1e-8
    # ... and moving away from it only increases the objective.
    f0 = _objective(x, y, w, b)
    for d in rng.standard_normal((5, 4)):
        assert _objective(x, y, w + 1e-3 * d, b) > f0


def test_wide_features_solve_in_the_span_of_the_rows():
    """More features than examples: the SVD-span fit equals the full primal fit."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 60))
    y = (x[:, :3].sum(1) > 0).astype(float)
    probe = bl.LinearProbe().fit(x, y)
    assert probe.basis is not None and probe.basis.shape == (60, 29)  # centred: rank n - 1
    z = (x - x.mean(0)) / x.std(0)
    w, b = bl.fit_logistic(z, y)
    test = rng.standard_normal((10, 60))
    zt = (test - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(probe.decision(test), zt @ w + b, atol=1e-7)


def test_ridge_matches_the_normal_equations():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 3.0 + 0.1 * rng.standard_normal(50)
    w, b = bl.fit_ridge(x, y, alpha=1.0)
    xc = x - x.mean(0)
    assert np.abs(xc.T @ (y - x @ w - b) - 1.0 * w).max() < 1e-9  # stationarity
    assert abs(np.sum(y - x @ w - b)) < 1e-9
