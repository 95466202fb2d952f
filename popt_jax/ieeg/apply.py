"""Apply the models to any recording: the ``embed`` and ``predict`` jobs.

    python -m popt_jax.main --config configs/embed.py --workdir runs/embed \
        --config.data.root=/data/bids --config.data.subject=01
    python -m popt_jax.main --config configs/predict.py --workdir runs/predict \
        --config.data.root=/data/bids --config.data.subject=01 \
        --config.model_checkpoint=runs/finetune

Both read the recordings named by ``config.data`` (`popt_jax.ieeg.readers`), take 5 s windows
every ``hop_s`` seconds, and stream: the front end (`frontend.iter_blocks`) preprocesses
``block_windows`` windows at a time, so memory stays bounded whatever the recording's length;
progress lines give windows/s and the ETA.

``embed`` writes ``{workdir}/embeddings/<run>.h5``::

    attrs  source, fs, window_samples, hop_samples, brainbert_hash, popt_hash, coord_mapping
    electrode_names [E], coords [E, 3] int (table rows), positions [E, 3] float
    starts [W] int64 (model-rate samples), times [W] float64 (window centre, seconds)
    brainbert [W, E, D]     per-electrode BrainBERT embeddings
    popt_cls [W, H]         PopT CLS hidden state
    popt_tokens [W, E, H]   PopT per-electrode hidden states (``save_tokens``)

``predict`` applies a fine-tuned PopT classifier (a ``finetune`` workdir: its best checkpoint
by validation ROC-AUC; or a converted/upstream checkpoint of a fine-tuned model) and writes
``{workdir}/predictions/<run>.csv`` (window, start_s, centre_s, end_s, probability) and a PNG
timeline of the probabilities with the recording's events marked. Files are written as
``*.tmp`` and renamed when complete.
"""

from __future__ import annotations

import csv
import functools
import os
import time
from pathlib import Path
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from popt_jax.core.jsonio import atomic_json
from popt_jax.errors import UserError
from popt_jax.ieeg import brainbert, frontend
from popt_jax.ieeg.coords import check_position_code, position_code_of
from popt_jax.ieeg.popt import PopT, PopTClassifier, PopTConfig
from popt_jax.ieeg.recording_store import Rate, check_length, frontend_config_from

__all__ = ["embed_job", "predict_job", "load_classifier", "window_starts", "embed_recording",
           "predict_recording"]


def window_starts(n_samples: int, window: int, hop: int) -> np.ndarray:
    """Starts of every whole window, ``hop`` apart."""
    return np.arange(0, n_samples - window + 1, hop, dtype=np.int64)


@functools.partial(jax.jit, static_argnums=0)
def _popt_hidden(graphdef, state, x, coords):
    model = nnx.merge(graphdef, state)
    hidden, _ = model.encode(x, None, coords)
    return hidden


@functools.partial(jax.jit, static_argnums=0)
def _classify(graphdef, state, x, coords):
    model = nnx.merge(graphdef, state)
    return jax.nn.sigmoid(model(x, None, coords)[:, 0])


def _coords_for(model_cfg: PopTConfig, plan: frontend.Plan, batch: int) -> np.ndarray:
    c = plan.positions if model_cfg.position_code == "continuous" else plan.index
    return np.broadcast_to(np.asarray(c, np.float32), (batch, *c.shape)).copy()


def _padded(x: np.ndarray, size: int) -> jnp.ndarray:
    """``x`` padded to ``size`` rows by repeating the last: one compiled shape per job."""
    if len(x) < size:
        x = np.concatenate([x, np.repeat(x[-1:], size - len(x), 0)])
    return jnp.asarray(x)


def _stream(rec, cfg, config, plan, label):
    """(starts, windows) blocks of one recording, plus a `Rate` to update."""
    p = cfg.preprocess
    n = check_length(rec, cfg)
    starts = window_starts(n, p.window_samples, max(1, int(round(config.hop_s * p.fs))))
    if config.get("max_windows", -1) >= 0:
        starts = starts[:int(config.max_windows)]
    rate = Rate(label, len(starts), every_s=float(config.get("progress_every_s", 5.0)))
    blocks = frontend.iter_blocks(rec, plan, cfg, starts, p.window_samples,
                                  int(config.block_windows))
    return starts, blocks, rate


def _brainbert_batches(model, windows: np.ndarray, size: int, compute_dtype):
    """BrainBERT embeddings [k, E, D] of ``windows`` [k, E, T], one compiled batch shape."""
    out = []
    for a in range(0, len(windows), size):
        part = windows[a:a + size]
        pad = np.concatenate([part, np.repeat(part[-1:], size - len(part), 0)]) \
            if len(part) < size else part
        out.append(np.asarray(brainbert.brainbert_embed(model, pad,
                                                        compute_dtype=compute_dtype))[:len(part)])
    return np.concatenate(out)


def _popt_from_config(config, input_dim: int) -> tuple[PopT, str]:
    """The PopT of ``config.popt_checkpoint`` (pretraining workdir or converted file), or
    seeded random weights with the ``config.popt`` architecture (logged loudly)."""
    path = config.get("popt_checkpoint") or ""
    code = position_code_of(config)
    if path:
        from popt_jax.ieeg.train import load_init

        cfg, params = load_init(path)
        check_position_code(cfg.position_code, code, path)
        model = PopT(cfg, rngs=nnx.Rngs(0))
        nnx.update(model, params)
        tag = str(path)
    else:
        cfg = PopTConfig(input_dim=input_dim, **dict(config.popt), position_code=code)
        logging.warning("PopT has RANDOM weights (seed %d): no popt_checkpoint given; fine "
                        "for plumbing, not for results", config.seed)
        model, tag = PopT(cfg, rngs=nnx.Rngs(config.seed)), f"random-seed-{config.seed}"
    if model.config.input_dim != input_dim:
        raise UserError(f"PopT takes {model.config.input_dim}-d embeddings, BrainBERT gives "
                        f"{input_dim}-d ones")
    return model, tag


def embed_recording(rec, out: Path, bb, popt: PopT, cfg, config, *, hashes=("", ""),
                    mapping_cfg=None) -> Path:
    """Stream ``rec`` through the front end, BrainBERT and PopT into ``out`` (atomic)."""
    plan = frontend.plan_channels(rec, cfg, mapping_cfg)
    starts, blocks, rate = _stream(rec, cfg, config, plan, f"embed {rec.name}")
    p = cfg.preprocess
    e, d, h = len(plan.names), bb.config.hidden_dim, popt.config.hidden_dim
    graphdef, state = nnx.split(popt)
    dtype = jnp.dtype(config.compute_dtype)
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in {"source": rec.path, "fs": p.fs, "window_samples": p.window_samples,
                         "hop_s": float(config.hop_s), "brainbert_hash": hashes[0],
                         "popt_hash": hashes[1], "coord_mapping": plan.mapping,
                         "position_code": popt.config.position_code}.items():
                f.attrs[k] = v
            f.create_dataset("electrode_names", data=np.asarray(plan.names, dtype=object),
                             dtype=h5py.string_dtype())
            f.create_dataset("coords", data=plan.index)
            f.create_dataset("positions", data=plan.positions)
            f.create_dataset("starts", data=starts)
            f.create_dataset("times", data=(starts + p.window_samples / 2) / p.fs)
            sink_b = f.create_dataset("brainbert", (len(starts), e, d), "float32")
            sink_c = f.create_dataset("popt_cls", (len(starts), h), "float32")
            sink_t = (f.create_dataset("popt_tokens", (len(starts), e, h), "float32")
                      if config.save_tokens else None)
            row = 0
            for st, win in blocks:
                emb = _brainbert_batches(bb, win, int(config.batch_windows), dtype)
                size = int(config.block_windows)
                hid = np.asarray(_popt_hidden(graphdef, state, _padded(emb, size),
                                              _coords_for(popt.config, plan, size)))[:len(st)]
                sink_b[row:row + len(st)] = emb
                sink_c[row:row + len(st)] = hid[:, 0]
                if sink_t is not None:
                    sink_t[row:row + len(st)] = hid[:, 1:]
                row += len(st)
                rate.update(len(st))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logging.info("embed %s: %d windows x %d electrodes -> %s (%.1f windows/s)", rec.name,
                 len(starts), e, out, rate.per_s)
    return out


def embed_job(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """The ``embed`` job (see module docstring); returns and writes ``results.json``."""
    from popt_jax.ieeg.extract import brainbert_from_config
    from popt_jax.ieeg.readers import open_recordings

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = frontend_config_from(config)
    recs = open_recordings(config.data)
    bb, bb_hash = brainbert_from_config(config)
    popt, popt_hash = _popt_from_config(config, bb.config.hidden_dim)
    mapping = dict(config.frontend.get("coords") or {})
    t0, files = time.perf_counter(), []
    for rec in recs:
        out = workdir / "embeddings" / f"{rec.name}.h5"
        files.append(str(embed_recording(rec, out, bb, popt, cfg, config,
                                         hashes=(bb_hash, popt_hash), mapping_cfg=mapping)))
    summary = {"files": files, "recordings": [r.path for r in recs],
               "brainbert_hash": bb_hash, "popt_hash": popt_hash,
               "seconds": round(time.perf_counter() - t0, 3), "config": config.to_dict()}
    atomic_json(workdir / "results.json", summary)
    return summary


# --------------------------------------------------------------------------- predict


def load_classifier(path: str | os.PathLike) -> tuple[PopTClassifier, str]:
    """A fine-tuned PopT classifier: a ``finetune`` workdir (best checkpoint by validation
    ROC-AUC, else the latest) or a converted/upstream checkpoint of a fine-tuned model."""
    from popt_jax.core.checkpoints import restore_best_params

    path = Path(path)
    if (path / "checkpoints").is_dir():
        model = None

        def abstract(meta):  # checks the task before anything is read
            nonlocal model
            if meta.get("task") != "finetune":
                raise UserError(f"{path}: not a fine-tuning workdir (checkpoint task "
                                f"{meta.get('task')!r})")
            model = PopTClassifier(PopTConfig(**meta["model"]), rngs=nnx.Rngs(0))
            return nnx.state(model, nnx.Param)

        # Best validation ROC-AUC, ties to the earliest step (as the trainer picks).
        step, _, params = restore_best_params(path, "roc_auc", "max", abstract)
        nnx.update(model, params)
        return model, f"{path}@{step}"
    from popt_jax.ieeg import convert

    model = convert.load_popt(str(path))
    if not isinstance(model, PopTClassifier):
        raise UserError(f"{path}: a pretrained PopT without a classification head; predict "
                        "needs a fine-tuned model")
    return model, str(path)


def _timeline(png: Path, centres: np.ndarray, probs: np.ndarray, events, title: str,
              threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 2.6))
    ax.plot(centres, probs, lw=1.0, color="C0", label="P(positive)")
    ax.axhline(threshold, color="0.5", lw=0.8, ls="--")
    if events is not None and len(events):
        ax.vlines(events.onset, 0, 0.06, color="C3", lw=0.6, label="events")
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


def predict_recording(rec, out_dir: Path, bb, clf: PopTClassifier, cfg, config,
                      mapping_cfg=None) -> dict[str, Any]:
    """Per-window probabilities of ``rec`` into ``<run>.csv`` and ``<run>.png`` (atomic)."""
    plan = frontend.plan_channels(rec, cfg, mapping_cfg)
    starts, blocks, rate = _stream(rec, cfg, config, plan, f"predict {rec.name}")
    p = cfg.preprocess
    graphdef, state = nnx.split(clf)
    dtype = jnp.dtype(config.compute_dtype)
    probs = np.empty(len(starts), np.float64)
    row = 0
    for st, win in blocks:
        emb = _brainbert_batches(bb, win, int(config.batch_windows), dtype)
        size = int(config.block_windows)
        probs[row:row + len(st)] = np.asarray(_classify(
            graphdef, state, _padded(emb, size),
            _coords_for(clf.upstream.config, plan, size)))[:len(st)]
        row += len(st)
        rate.update(len(st))
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{rec.name}.csv"
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    w = p.window_samples
    with open(tmp, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["window", "start_s", "centre_s", "end_s", "probability"])
        for i, (s, q) in enumerate(zip(starts, probs, strict=True)):
            wr.writerow([i, f"{s / p.fs:.4f}", f"{(s + w / 2) / p.fs:.4f}",
                         f"{(s + w) / p.fs:.4f}", f"{q:.6f}"])
    os.replace(tmp, csv_path)
    png = out_dir / f"{rec.name}.png"
    _timeline(png, (starts + w / 2) / p.fs, probs, rec.events(), rec.name,
              float(config.threshold))
    logging.info("predict %s: %d windows -> %s (%.1f windows/s)", rec.name, len(starts),
                 csv_path, rate.per_s)
    return {"csv": str(csv_path), "png": str(png), "windows": len(starts),
            "mean_probability": float(probs.mean()),
            "fraction_above_threshold": float((probs >= config.threshold).mean())}


def predict_job(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """The ``predict`` job (see module docstring); returns and writes ``results.json``."""
    from popt_jax.ieeg.extract import brainbert_from_config
    from popt_jax.ieeg.readers import open_recordings

    if not config.get("model_checkpoint"):
        raise UserError("config.model_checkpoint: give a fine-tuning workdir or a fine-tuned "
                        "checkpoint file")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = frontend_config_from(config)
    clf, tag = load_classifier(config.model_checkpoint)
    check_position_code(clf.upstream.config.position_code, position_code_of(config),
                        config.model_checkpoint)
    recs = open_recordings(config.data)
    bb, bb_hash = brainbert_from_config(config)
    if clf.upstream.config.input_dim != bb.config.hidden_dim:
        raise UserError(f"the classifier takes {clf.upstream.config.input_dim}-d embeddings, "
                        f"BrainBERT gives {bb.config.hidden_dim}-d ones")
    mapping = dict(config.frontend.get("coords") or {})
    t0 = time.perf_counter()
    runs = {rec.name: predict_recording(rec, workdir / "predictions", bb, clf, cfg, config,
                                        mapping) for rec in recs}
    summary = {"runs": runs, "model": tag, "brainbert_hash": bb_hash,
               "seconds": round(time.perf_counter() - t0, 3), "config": config.to_dict()}
    atomic_json(workdir / "results.json", summary)
    return summary
