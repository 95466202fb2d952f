"""The default synthetic subject's point: ROI-specific places in the image, which the ROI-query
decoder finds (its attention peaks there) and ridge on grid-mean features cannot use."""

from __future__ import annotations

import numpy as np
import pytest

from popt_jax.fmri import synthetic_algonauts as S


def test_spatial_subject_plants_places(tmp_path):
    S.write_synthetic_algonauts(tmp_path, S.SyntheticAlgonautsConfig(
        n_train=24, n_test=2, image_size=56, n_vertices=(60, 50), spatial=True))
    import json

    truth = json.loads((tmp_path / "subj01" / "synthetic_truth.json").read_text())
    assert len(truth["places"]) == 24 and truth["patchwork"] == S.PATCHWORK
    # a perfect attention map (all mass in the planted block) scores every ROI
    names = list(truth["places"])
    att = np.zeros((len(names), 8 * 8))
    for q, n in enumerate(names):
        by, bx = truth["places"][n]
        a = np.zeros((8, 8))
        a[2 * by:2 * by + 2, 2 * bx:2 * bx + 2] = 1
        att[q] = a.ravel()
    s = S.attention_on_places(att, names, truth["places"], (8, 8))
    assert s["peak_in_place"] == 1.0 and s["median_mass_ratio"] == pytest.approx(16.0)
    uniform = S.attention_on_places(np.ones_like(att), names, truth["places"], (8, 8))
    assert uniform["median_mass_ratio"] == pytest.approx(1.0)


@pytest.mark.slow
def test_default_run_beats_ridge_and_attends_to_the_places(tmp_path):
    """The README's default command (synthetic spatial subject, 15 epochs)."""
    import importlib.util
    import os

    from popt_jax.fmri import train as BT

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "configs", "brain_encoder.py")
    spec = importlib.util.spec_from_file_location("brain_encoder_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = BT.brain_encoder_job(module.get_config(), tmp_path)
    t, ridge = results["transformer"], results["ridge"]
    assert t["mean_r"] > ridge["mean_r"] + 0.03, (t["mean_r"], ridge["mean_r"])
    assert results["test_challenge"]["overall"] > results["ridge_test_challenge"]["overall"]
    places = t["attention_on_places"]
    assert places["peak_in_place"] >= 4 * places["chance"], places
    assert places["median_mass_ratio"] > 1.0, places
