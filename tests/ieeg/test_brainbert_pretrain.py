"""BrainBERT pretraining: masking, loss and step parity with a PyTorch statement of upstream;
the spectrogram store (resume, bad input); the `pretrain_brainbert` job end to end at tiny
size, including the hand-off of its export to `extract_features`.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_reference as R  # noqa: E402
import torch_reference_brainbert_pretrain as RB  # noqa: E402

from popt_jax.core import mesh as mesh_lib  # noqa: E402
from popt_jax.core import steps  # noqa: E402
from popt_jax.errors import DataError  # noqa: E402
from popt_jax.ieeg import brainbert_data as bd  # noqa: E402
from popt_jax.ieeg import brainbert_pretrain as bp  # noqa: E402
from popt_jax.ieeg import convert, masking  # noqa: E402
from popt_jax.ieeg.braintreebank import load_selection  # noqa: E402
from popt_jax.ieeg.synthetic import write_synthetic_braintreebank  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T, F = 186, 40


def _spec(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, T, F)).astype(np.float32)


def _draws_of(draws: masking.MaskDraws, b: int) -> dict[str, np.ndarray]:
    out = {}
    for axis in ("time", "freq"):
        for name, a in getattr(draws, axis)._asdict().items():
            out[f"{axis}_{name}"] = np.asarray(a[b])
    return out


# ------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("loss_mask", ["upstream", "corrected"])
def test_mask_equals_reference_loops_given_the_same_draws(loss_mask):
    cfg = masking.MaskConfig(time_p=0.15, freq_p=0.2, loss_mask=loss_mask)
    spec = _spec(24)
    draws = masking.draw_fixed_mask(jax.random.key(3), len(spec), T, F, cfg)
    res = jax.jit(lambda s, d: masking.apply_fixed_mask(s, d, cfg))(jnp.asarray(spec), draws)
    n_replaced = 0
    for b in range(len(spec)):
        masked, label, spans = RB.ref_fixed_mask_with_draws(torch.from_numpy(spec[b]), cfg,
                                                            _draws_of(draws, b), loss_mask)
        np.testing.assert_array_equal(np.asarray(res.masked[b]), masked.numpy())
        np.testing.assert_array_equal(np.asarray(res.loss_mask[b]), label.numpy() > 0)
        n_replaced += sum(s.action == "replace" for s in spans)
    assert n_replaced > 0  # the replacement path was exercised


def _jax_stats(res, cfg):
    ts, fs = np.asarray(res.time_starts), np.asarray(res.freq_starts)
    tcov, fcov = np.asarray(res.time_covered), np.asarray(res.freq_covered)
    out = {"time_spans": ts.sum(), "freq_spans": fs.sum(),
           "time_frames": tcov.sum(), "freq_bins": fcov.sum(),
           "label_frac": np.asarray(res.loss_mask).mean(axis=(1, 2)), "n": ts.shape[0]}
    for axis, starts, act in (("time", ts, res.time_action), ("freq", fs, res.freq_action)):
        act = np.asarray(act)[starts]
        for name, code in (("keep", masking.KEEP), ("replace", masking.REPLACE),
                           ("zero", masking.ZERO)):
            out[f"{axis}_{name}"] = (act == code).sum()
    # span lengths from the covered runs (spans never touch, so runs are spans)
    for axis, cov, hi in (("time", tcov, cfg.time_max), ("freq", fcov, cfg.freq_max)):
        padded = np.pad(cov.astype(np.int8), ((0, 0), (1, 1)))
        d = np.diff(padded, axis=1)
        lengths = np.nonzero(d == -1)[1] - np.nonzero(d == 1)[1]
        for k in range(1, hi + 1):
            out[f"{axis}_len{k}"] = (lengths == k).sum()
        assert lengths.min() >= 1 and lengths.max() <= hi
    return out


def _ref_stats(n, cfg, loss_mask, seed=0):
    rng = random.Random(seed)
    out: dict[str, float] = {}
    data = torch.zeros(T, F)
    fracs = []
    for _ in range(n):
        _, label, spans = RB.ref_fixed_mask_random(data, cfg, rng, loss_mask)
        fracs.append(float(label.mean()))
        for s in spans:
            k = s.end - s.start
            for key in (f"{s.axis}_spans", f"{s.axis}_{s.action}", f"{s.axis}_len{k}"):
                out[key] = out.get(key, 0) + 1
            unit = "frames" if s.axis == "time" else "bins"
            out[f"{s.axis}_{unit}"] = out.get(f"{s.axis}_{unit}", 0) + k
    out["n"] = n
    out["label_frac"] = np.asarray(fracs)
    return out


def _close_rates(a: float, na: float, b: float, nb: float, what: str) -> None:
    """Two empirical rates agree within 5 standard errors (binomial/Poisson)."""
    pa, pb = a / na, b / nb
    p = (a + b) / (na + nb)
    se = math.sqrt(max(p * (1 - p), 1e-12) * (1 / na + 1 / nb))
    assert abs(pa - pb) <= 5 * se, f"{what}: {pa:.5f} vs reference {pb:.5f} (se {se:.5f})"


@pytest.mark.parametrize("loss_mask", ["upstream", "corrected"])
def test_mask_statistics_match_upstream_random_draws(loss_mask):
    cfg = masking.MaskConfig(loss_mask=loss_mask)  # yaml p = 0.1
    n = 600
    res = jax.jit(lambda k, s: masking.fixed_mask(k, s, cfg))(
        jax.random.key(0), jnp.zeros((n, T, F)))
    js = _jax_stats(res, cfg)
    rs = _ref_stats(n, cfg, loss_mask)
    # spans per example (Poisson-like counts: compare per candidate position)
    _close_rates(js["time_spans"], n * (T - 5), rs["time_spans"], n * (T - 5), "time spans")
    _close_rates(js["freq_spans"], n * (F - 2), rs["freq_spans"], n * (F - 2), "freq spans")
    for axis, hi in (("time", 5), ("freq", 2)):
        for k in range(1, hi + 1):
            _close_rates(js[f"{axis}_len{k}"], js[f"{axis}_spans"], rs.get(f"{axis}_len{k}", 0),
                         rs[f"{axis}_spans"], f"{axis} span length {k}")
        for act in ("keep", "replace", "zero"):
            _close_rates(js[f"{axis}_{act}"], js[f"{axis}_spans"], rs.get(f"{axis}_{act}", 0),
                         rs[f"{axis}_spans"], f"{axis} {act} fraction")
    # loss-mask fraction per example (cells of one example are correlated: compare the
    # per-example means within 5 standard errors)
    a, b = js["label_frac"], rs["label_frac"]
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) <= 5 * se, (a.mean(), b.mean(), se)
    # The fractions themselves: 10% kept, 10% replaced, 80% zeroed (upstream's dice).
    spans = js["time_spans"] + js["freq_spans"]
    for act, p in (("keep", 0.1), ("replace", 0.1), ("zero", 0.8)):
        got = js[f"time_{act}"] + js[f"freq_{act}"]
        assert abs(got / spans - p) <= 5 * math.sqrt(p * (1 - p) / spans)


def test_quirk_switch_changes_the_loss_mask_as_documented():
    spec = jnp.asarray(_spec(32, 1))
    key = jax.random.key(7)
    up = masking.fixed_mask(key, spec, masking.MaskConfig())
    fixed = masking.fixed_mask(key, spec, masking.MaskConfig(loss_mask="corrected"))
    np.testing.assert_array_equal(np.asarray(up.masked), np.asarray(fixed.masked))
    tcov, fcov = np.asarray(up.time_covered), np.asarray(up.freq_covered)
    want_up = tcov[:, :, None] | tcov[:, None, :F]
    want_fix = tcov[:, :, None] | fcov[:, None, :]
    np.testing.assert_array_equal(np.asarray(up.loss_mask), want_up)
    np.testing.assert_array_equal(np.asarray(fixed.loss_mask), want_fix)
    assert (want_up != want_fix).any()


def test_nearest_unmasked_frame():
    cov = jnp.asarray([[0, 1, 1, 1, 0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(np.asarray(masking.nearest_unmasked_frame(cov))[0],
                                  [0, 0, 0, 4, 4, 5, 5, 5])


# ------------------------------------------------------------------------------ loss


def test_loss_matches_reference_on_fixed_inputs():
    rng = np.random.default_rng(0)
    pred = rng.standard_normal((4, T, F)).astype(np.float32)
    target = (1.5 * rng.standard_normal((4, T, F))).astype(np.float32)
    mask = rng.random((4, T, F)) < 0.3
    loss, l1, content = bp.pretrain_loss(jnp.asarray(pred), jnp.asarray(target),
                                         jnp.asarray(mask))
    r_loss, r_l1, r_content = RB.ref_loss(torch.from_numpy(pred), torch.from_numpy(target),
                                          torch.from_numpy(mask))
    for a, b in ((loss, r_loss), (l1, r_l1), (content, r_content)):
        assert abs(float(a) - float(b)) <= 1e-6


# ------------------------------------------------------------------------------ evaluation


@pytest.mark.parametrize("loss_mask", ["upstream", "corrected"])
def test_eval_splits_hidden_and_visible_cells(loss_mask):
    """The validation sums split the loss-mask cells into hidden (inside a span) and visible
    ones; copying the nearest unmasked frame is exact on the visible ones. The masked-cell
    sums cover every cell inside a span of a valid row, whichever the loss mask."""
    from flax import nnx

    from popt_jax.ieeg.brainbert import BrainBERT, BrainBERTConfig

    cfg = masking.MaskConfig(loss_mask=loss_mask)
    model = BrainBERT(BrainBERTConfig(hidden_dim=16, n_heads=2, ff_dim=32, n_layers=1),
                      rngs=nnx.Rngs(0))
    parts = steps.split_model(model)
    mesh = mesh_lib.make_mesh(1)
    eval_step = bp.make_eval_step(parts, cfg, mesh)
    spec = jnp.asarray(_spec(6, 3))
    valid = jnp.asarray([True] * 5 + [False])
    key = jax.random.key(11)
    sums, (_, loss_mask_out, pred) = eval_step(parts.params, spec, valid, key)
    sums = {k: float(v) for k, v in sums.items()}
    res = masking.fixed_mask(key, spec, cfg)
    m = np.asarray(res.loss_mask) & np.asarray(valid)[:, None, None]
    hid = m & (np.asarray(res.time_covered)[:, :, None] | np.asarray(res.freq_covered)[:, None])
    err = np.abs(np.asarray(pred) - np.asarray(spec))
    assert sums["n"] == m.sum() and sums["n_hidden"] == hid.sum()
    np.testing.assert_allclose(sums["l1_hidden"], err[hid].sum(), rtol=1e-5)
    spans = (np.asarray(res.time_covered)[:, :, None] | np.asarray(res.freq_covered)[:, None]) \
        & np.asarray(valid)[:, None, None]
    assert sums["n_masked"] == spans.sum() and 0 < spans.sum() < spans.size
    copy = np.asarray(bp.copy_nearest_prediction(res.masked, res.time_covered))
    np.testing.assert_allclose(sums["copy_l1_masked"],
                               np.abs(copy - np.asarray(spec))[spans].sum(), rtol=1e-5)
    np.testing.assert_allclose(sums["zero_l1_masked"], np.abs(np.asarray(spec))[spans].sum(),
                               rtol=1e-5)
    out = bp.summarize(sums, 2.0)
    np.testing.assert_allclose(out["l1_hidden"], err[hid].mean(), rtol=1e-5)
    np.testing.assert_allclose(out["l1_masked"], err[spans].mean(), rtol=1e-5)
    # the corrected loss mask IS the masked cells; upstream's misses most frequency-span cells
    assert (loss_mask == "corrected") == bool(np.array_equal(hid, spans))
    if loss_mask == "upstream":
        assert 0 < out["hidden_fraction"] < 1
        np.testing.assert_allclose(out["l1_visible"], err[m & ~hid].mean(), rtol=1e-5)
        assert out["copy_l1_visible"] == 0.0 < out["copy_l1_hidden"]
    else:
        assert out["hidden_fraction"] == 1.0 and math.isnan(out["l1_visible"])
    line = bp.l1_line(out)
    assert "copy-nearest-frame" in line and ("visible" in line) == (loss_mask == "upstream")


def test_departures_from_upstream_are_listed():
    from popt_jax.core.config_lib import load_sibling_config

    module = load_sibling_config(os.path.join(REPO, "configs", "x.py"), "pretrain_brainbert")
    assert bp.departures_from_upstream(module.get_config("paper")) == []
    default = bp.departures_from_upstream(module.get_config())
    assert any(d.startswith("lr ") for d in default)
    cfg = module.get_config("paper")
    cfg.mask.loss_mask = "corrected"
    assert bp.departures_from_upstream(cfg) == [
        "mask.loss_mask 'corrected' (upstream 'upstream')"]


# ------------------------------------------------------------------------------ one step


@pytest.mark.parametrize("scaled", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_train_step_matches_reference(scaled):
    torch.manual_seed(0)
    ref = R.RefBrainBERT(input_dim=F, hidden_dim=32, nhead=2, ff=64, n_layers=2)
    ref = R.randomize(ref, 1)
    model = convert.brainbert_from_state_dict(
        {k: v.detach().numpy() for k, v in ref.state_dict().items()},
        {"hidden_dim": 32, "nhead": 2, "layer_dim_feedforward": 64, "encoder_num_layers": 2,
         "input_dim": F})
    cfg = masking.MaskConfig()
    spec = _spec(4, 2) * 1.3
    draws = masking.draw_fixed_mask(jax.random.key(1), 4, T, F, cfg)
    res = masking.apply_fixed_mask(jnp.asarray(spec), draws, cfg)

    class C(dict):
        __getattr__ = dict.get

    conf = C(optimizer="lamb", lr=1e-3, total_steps=100, warmup=0.0, gamma=0.99, grad_clip=1.0)
    tx = bp.make_optimizer(conf)
    mesh = mesh_lib.make_mesh(1)
    parts = steps.split_model(model)
    step = bp.make_pretrain_step(parts, tx, cfg, mesh, loss_scaled_grad=scaled,
                                 deterministic=True)
    params = mesh_lib.replicate(parts.params, mesh)
    opt_state = mesh_lib.replicate(tx.init(parts.params), mesh)
    params, opt_state, m = step.with_draws(params, opt_state, jnp.asarray(spec), draws,
                                           jax.random.key(0))

    ref.eval()  # dropout off; gradients still flow
    opt = RB.RefLamb(ref.parameters(), lr=1e-3)
    out = RB.ref_train_step(ref, opt, torch.from_numpy(np.asarray(res.masked)),
                            torch.from_numpy(spec),
                            torch.from_numpy(np.asarray(res.loss_mask)), loss_scaled_grad=scaled)
    for k in ("loss", "l1", "content_l1", "grad_norm"):
        assert abs(float(m[k]) - out[k]) <= 1e-5 * max(1.0, abs(out[k])), k
    from flax import nnx

    trained = nnx.merge(parts.graphdef, jax.device_get(params), parts.rngs, parts.consts)
    got = convert.to_state_dict(trained)
    want = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    start = {k: v for k, v in convert.to_state_dict(model).items()}
    moved = 0.0
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=0, atol=1e-5, err_msg=k)
        moved = max(moved, float(np.abs(v - start[k]).max()))
    assert moved > 1e-4  # the step really changed the weights


# ------------------------------------------------------------------------------ store


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "tree"
    write_synthetic_braintreebank(root, n_subjects=2, duration_s=32.5, n_shafts=2,
                                  contacts=(4, 4))
    sel = load_selection(root / "electrode_selections" / "clean_laplacian.json")
    trials = json.loads((root / "trial_selections" / "all_trials.json").read_text())
    return root, sel, trials


def _interpolated(masked: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Each time-span frame interpolated linearly between the frames just outside its span
    (the nearest one at the edges of the window)."""
    b, t, _ = masked.shape
    idx = np.broadcast_to(np.arange(t), (b, t))
    prev = np.maximum.accumulate(np.where(~covered, idx, -1), axis=1)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(~covered, idx, t), 1), axis=1), 1)
    lo, hi = np.where(prev < 0, nxt, prev), np.where(nxt >= t, prev, nxt)
    w = np.where(hi > lo, (idx - lo) / np.maximum(hi - lo, 1), 0.0)[..., None]
    rows = np.arange(b)[:, None]
    return (1 - w) * masked[rows, lo] + w * masked[rows, hi]


def _l1(pred: np.ndarray, target: np.ndarray, cells: np.ndarray) -> float:
    """Mean |pred - target| over `cells` (pred broadcast to the target's shape)."""
    return float(np.abs(np.broadcast_to(pred, target.shape) - target)[cells].mean())


def test_broadband_state_plants_what_the_masks_hide(tmp_path):
    """The default pretraining tree's state (`BROADBAND_STATE`) gives the masked cells
    structure that copying the nearest unmasked frame misses: a time span lies on a curve its
    two sides pin down, a frequency span moves with the other rows of its frame. The PopT
    trees' slow state does not (the contrast keeps the claim honest)."""
    from popt_jax.ieeg.synthetic import BROADBAND_STATE

    cfg = masking.MaskConfig()
    out = {}
    for name, state in (("broadband", BROADBAND_STATE), ("default", {})):
        root = write_synthetic_braintreebank(tmp_path / name, n_subjects=1, duration_s=60.0,
                                             n_shafts=2, contacts=(6, 6), **state)
        sel = load_selection(root / "electrode_selections" / "clean_laplacian.json")
        store = bd.write_spectrogram_store(root, tmp_path / f"{name}.h5", selection=sel,
                                           trials={"sub_1": ["trial000"]})
        with h5py.File(store) as f:
            spec = f["spec"][:]
        res = masking.fixed_mask(jax.random.key(0), jnp.asarray(spec), cfg)
        masked, tc = np.asarray(res.masked), np.asarray(res.time_covered)
        fc = np.asarray(res.freq_covered)
        copy = np.asarray(bp.copy_nearest_prediction(res.masked, res.time_covered))
        time_cells = np.broadcast_to(tc[..., None], spec.shape)
        freq_cells = ~tc[..., None] & fc[:, None, :]
        visible_rows = ~fc[:, None, :] & ~tc[..., None]
        row_mean = (masked * visible_rows).sum(-1, keepdims=True) / np.maximum(
            visible_rows.sum(-1, keepdims=True), 1)
        out[name] = {"copy_time": _l1(copy, spec, time_cells),
                     "interp_time": _l1(_interpolated(masked, tc), spec, time_cells),
                     "copy_freq": _l1(copy, spec, freq_cells),
                     "rows_freq": _l1(row_mean, spec, freq_cells)}
    b, d = out["broadband"], out["default"]
    assert b["interp_time"] < 0.9 * b["copy_time"], out
    assert b["rows_freq"] < 0.6 * b["copy_freq"], out
    assert d["rows_freq"] > 0.9 * d["copy_freq"], out


def test_store_rows_tail_and_settings(tree, tmp_path, caplog):
    root, sel, trials = tree
    with caplog.at_level("INFO"):
        path = bd.write_spectrogram_store(root, tmp_path / "s.h5", selection=sel, trials=trials)
    assert any("shorter than a 5.0 s window; dropped" in r.message for r in caplog.records)
    with h5py.File(path) as f:
        n_el = sum(len(v) for v in sel.values())
        assert f["spec"].shape == (6 * n_el, T, F)  # 32.5 s -> 6 whole windows per trial
        assert f.attrs["n_rows"] == 6 * n_el
        assert np.isfinite(f["spec"][:]).all()
    other = bd.pp.PreprocessConfig(notch_q=10.0)
    with pytest.raises(DataError, match="other settings.*preprocess.notch_q"):
        bd.write_spectrogram_store(root, path, selection=sel, trials=trials, cfg=other)
    split = bd.split_rows(path, 0.1, 0.1)
    assert sorted(np.concatenate(list(split.values()))) == list(range(6 * n_el))
    assert np.array_equal(split["val"], bd.split_rows(path, 0.1, 0.1)["val"])  # deterministic


def test_store_bad_input_and_resume(tree, tmp_path):
    root, sel, trials = tree
    bad_sel = {**sel, "sub_1": sel["sub_1"] + ["NOPE9"]}
    with pytest.raises(DataError, match="NOPE9 not in the labels"):
        bd.write_spectrogram_store(root, tmp_path / "a.h5", selection=bad_sel, trials=trials)
    assert not (tmp_path / "a.h5").exists()

    # A NaN stretch in sub_2: sub_1 is written, the store stays partial, then resumes.
    import shutil

    broken = tmp_path / "tree"
    shutil.copytree(root, broken)
    h5 = broken / "all_subject_data" / "sub_2_trial000.h5"
    with h5py.File(h5, "a") as f:
        key = sorted(f["data"].keys())[0]
        f["data"][key][1000:1500] = np.nan
    store = tmp_path / "b.h5"
    with pytest.raises(DataError, match="NaN"):
        bd.write_spectrogram_store(broken, store, selection=sel, trials=trials)
    partial = tmp_path / "b.h5.partial"
    assert not store.exists() and partial.exists()
    with h5py.File(partial) as f:
        assert json.loads(f.attrs["done"]) == ["sub_1/trial000"]
    shutil.copy(root / "all_subject_data" / "sub_2_trial000.h5", h5)
    bd.write_spectrogram_store(broken, store, selection=sel, trials=trials)
    fresh = bd.write_spectrogram_store(root, tmp_path / "c.h5", selection=sel, trials=trials)
    with h5py.File(store) as a, h5py.File(fresh) as b:
        np.testing.assert_array_equal(a["spec"][:], b["spec"][:])
        np.testing.assert_array_equal(a["index"][:], b["index"][:])


# ------------------------------------------------------------------------------ job


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from popt_jax.core.config_lib import load_sibling_config

    config = load_sibling_config(os.path.join(REPO, "configs", "x.py"),
                                 "pretrain_brainbert").get_config("tiny")
    work = tmp_path_factory.mktemp("bb")
    return work, bp.pretrain_brainbert(config, work)


def test_tiny_job_outputs(tiny_run):
    work, results = tiny_run
    for k in ("l1", "zero_l1", "copy_l1", "loss", "l1_masked", "zero_l1_masked",
              "copy_l1_masked"):
        assert np.isfinite(results["test"][k])
    assert results["best_step"] in (3, 6)
    assert (work / "reconstruction.png").stat().st_size > 1000
    lines = [json.loads(ln) for ln in (work / "metrics.jsonl").read_text().splitlines()]
    assert {ln["split"] for ln in lines} == {"train", "valid", "test"}
    assert all("copy_l1" in ln for ln in lines if ln["split"] == "valid")


def test_export_hands_off_to_load_and_extract(tiny_run, tmp_path):
    work, results = tiny_run
    model = convert.load_brainbert(results["export"])
    assert model.config.hidden_dim == results["model"]["hidden_dim"]
    from popt_jax.core.config_lib import load_sibling_config

    cfg = load_sibling_config(os.path.join(REPO, "configs", "x.py"),
                              "extract_features").get_config()
    cfg.data.root = str(work / "synthetic_braintreebank")
    cfg.brainbert_checkpoint = results["export"]
    cfg.tasks = ("pretrain",)
    cfg.max_windows = 2
    from popt_jax.ieeg.extract import extract_features_job

    summary = extract_features_job(cfg, tmp_path / "features")
    assert summary["windows"]["pretrain"] == 4  # 2 windows x 2 trials
    with h5py.File(summary["files"][0]) as f:
        emb = f["pretrain/embeddings"][:]
    assert emb.shape[-1] == results["model"]["hidden_dim"] and np.isfinite(emb).all()


@pytest.mark.slow  # the full small default: ~300 s of CPU (3000 steps)
def test_default_run_beats_both_baselines(tmp_path):
    """The visible-learning promise of the default config: on its synthetic tree, the test
    masked-cell L1 (every cell inside a span) of the best checkpoint is clearly below both
    predicting zero and copying the nearest unmasked frame. The loss-mask cells (hidden and
    visible quirk columns, where copying is exact by construction) are reported beside it;
    the README gives their figures and the spread over seeds."""
    from popt_jax.core.config_lib import load_sibling_config

    config = load_sibling_config(os.path.join(REPO, "configs", "x.py"),
                                 "pretrain_brainbert").get_config()
    results = bp.pretrain_brainbert(config, tmp_path)
    test = results["test"]
    assert test["l1_masked"] < 0.85 * test["copy_l1_masked"]
    assert test["l1_masked"] < 0.6 * test["zero_l1_masked"]
    for name in ("l1_hidden", "l1_visible", "copy_l1_hidden", "copy_l1_visible"):
        assert np.isfinite(test[name])  # the loss-mask split is stored beside the headline
    assert results["verdict"].startswith(
        f"model masked-cell L1 {test['l1_masked']:.4f} is BELOW")
    saved = json.loads((tmp_path / "results.json").read_text())["test"]
    assert saved["l1_masked"] == test["l1_masked"]


def test_benchmark_tiny_runs():
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts",
                                                       "benchmark_brainbert_pretrain.py"),
                          "--tiny"], capture_output=True, text=True, cwd=REPO, timeout=1800,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratio vs reference" in out.stdout


def test_cli_bad_selection_is_one_error_line(tree, tmp_path):
    root, _, _ = tree
    out = subprocess.run(
        [sys.executable, "-m", "popt_jax.main", "--config",
         "configs/pretrain_brainbert.py:tiny", "--workdir", str(tmp_path / "w"),
         f"--config.data.root={root}", f"--config.data.selection={tmp_path / 'none.json'}"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 2
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    # Refused by the config checks, before any work (the workdir is not even made).
    assert errors == [f"error: config.data.selection: {tmp_path / 'none.json'}: No such file "
                      "or directory"]
    assert not (tmp_path / "w").exists()
    assert "Traceback" not in out.stderr
