"""Checks of the brain-encoder job's config and inputs, run by `popt_jax.main` first.

* `validate(job, config)`: every field of `configs/brain_encoder.py` against its allowed
  values; one `ConfigError` line listing each `config.<field>: <problem>`.
* `run_inputs(job, config, workdir)`: the run's identity (data root or the synthetic
  subject's settings, NSD subject, backbone checkpoint hash, feature kind/block/normalisation/image size, split seed
  and fraction) and whether the workdir holds checkpoints to resume; `core.run_identity`
  records it or refuses a resume on other inputs (e.g. another data root).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from popt_jax.core.run_identity import file_fingerprint, has_checkpoints
from popt_jax.core.validate import Checks

READOUTS = ("rois_all", "hemis", "voxels")
EXPECT = ("auto", "", "vits14", "vitb14", "vitl14", "vitb16", "resnet50")
KINDS = ("dinov2_q", "dinov2", "clip", "resnet50")


def check_brain_encoder(c: Checks) -> None:
    c.integer("seed", required=True)
    c.integer("subject", min_value=1, max_value=8, required=True)
    c.non_negative_int("num_devices")
    c.existing_path("data.root", "dir")
    if not c.get("data.root", ""):
        s = "data.synthetic."
        for f in ("n_train", "image_size", "lh_vertices", "rh_vertices"):
            c.positive_int(s + f)
        c.non_negative_int(s + "n_test")
        c.positive(s + "snr_min")
        c.positive(s + "snr_max")
        lo, hi = c.get(s + "snr_min", 0), c.get(s + "snr_max", 0)
        c.rule(not all(isinstance(x, (int, float)) for x in (lo, hi)) or lo <= hi,
               s + "snr_max", f"must be >= snr_min ({lo}), got {hi}")
    c.existing_path("backbone_checkpoint")
    c.choice("backbone.expect", EXPECT)
    c.choice("features.kind", KINDS)
    c.choice("features.normalize", ("imagenet", "openai"))
    c.choice("backbone.clip_act", ("quick_gelu", "gelu"))
    c.non_negative_int("model.hidden_dim")
    hidden = c.get("model.hidden_dim", 0)
    if hidden:
        c.divisible("model.hidden_dim", "model.n_heads")
        c.rule(not isinstance(hidden, int) or hidden % 2 == 0, "model.hidden_dim",
               f"must be even (half per axis for the decoder's position code), got {hidden}")
    kind = c.get("features.kind", "dinov2_q")
    if not c.get("backbone_checkpoint", "") and kind == "resnet50":
        c.positive_int("backbone.resnet_width")
        layers = str(c.get("backbone.resnet_layers", "3,4,6,3"))
        parts = [v.strip() for v in layers.split(",")]
        c.rule(len(parts) == 4 and all(v.isdigit() and int(v) > 0 for v in parts),
               "backbone.resnet_layers", f"must be 4 positive block counts, got {layers!r}")
    elif not c.get("backbone_checkpoint", ""):
        for f in ("patch_size", "embed_dim", "depth", "num_heads", "pretrain_grid"):
            c.positive_int(f"backbone.{f}")
        c.positive("backbone.mlp_ratio")
        c.divisible("backbone.embed_dim", "backbone.num_heads")
        if kind == "clip" and c.get("backbone.output_dim", 0):
            c.positive_int("backbone.output_dim")
        elif not hidden:
            c.divisible("backbone.embed_dim", "model.n_heads")
        dim = c.get("backbone.embed_dim", 0)
        c.rule(not isinstance(dim, int) or dim % 2 == 0, "backbone.embed_dim",
               f"must be even (half per axis for the decoder's position code), got {dim}")
    c.integer("features.enc_output_layer", min_value=1)
    c.positive_int("features.batch_size")
    c.choice("features.compute_dtype", ("float32", "bfloat16"))
    c.positive("features.max_memory_gb")
    c.choice("model.readout", READOUTS)
    c.positive_int("model.n_heads")
    c.positive_int("model.ff_dim")
    c.fraction("model.dropout", open_low=False)
    t = "train."
    c.positive(t + "lr")
    c.non_negative(t + "weight_decay")
    for f in ("batch_size", "epochs", "lr_drop", "log_every", "keep_checkpoints"):
        c.positive_int(t + f)
    c.non_negative(t + "grad_clip")
    c.fraction(t + "lr_gamma", open_high=False)
    c.fraction(t + "val_fraction")
    c.positive_int("eval.batch_size")
    c.choice("eval.ridge_features", ("pooled", "flat"))
    c.choice("eval.attention_hemi", ("lh", "rh"))
    c.non_negative_int("eval.n_attention_images")


def check_ensemble(c: Checks) -> None:
    """Fields of `configs/brain_encoder_ensemble.py`."""
    runs = c.get("runs", "")
    names = [r.strip() for r in runs.split(",") if r.strip()] if isinstance(runs, str) else None
    c.rule(bool(names), "runs", "must list finished brain_encoder workdirs, comma-separated, "
           f"got {runs!r}")
    for i, run in enumerate(names or ()):
        if not Path(run).is_dir():
            c.fail("runs", f"{run}: No such directory" + (f" (entry {i + 1})" if i else ""))
    c.non_negative("beta")


def check_predict_images(c: Checks) -> None:
    """Fields of `configs/predict_images.py`."""
    for field in ("run", "images"):
        c.rule(bool(c.get(field, "")), field, "is required")
        c.existing_path(field, "dir")
    rois = c.get("rois", "")
    c.rule(isinstance(rois, str) and any(r.strip() for r in rois.split(",")), "rois",
           f"must name ROIs, comma-separated (e.g. 'V1v,FFA-1'), got {rois!r}")
    c.choice("hemi", ("lh", "rh"))
    c.positive_int("top_k")
    c.non_negative_int("n_attention_images")
    c.positive_int("batch_size")


JOBS = ("brain_encoder", "brain_encoder_ensemble", "predict_images")
IDENTITY_JOBS = ("brain_encoder",)


def validate(job: str, config) -> None:
    """Raises one `ConfigError` naming every invalid field of an fMRI job's config."""
    c = Checks(config)
    {"brain_encoder": check_brain_encoder, "brain_encoder_ensemble": check_ensemble,
     "predict_images": check_predict_images}[job](c)
    c.done()


def run_inputs(job: str, config, workdir: str | Path) -> tuple[dict[str, Any], bool]:
    """(identity, resuming) of a brain-encoder run in `workdir`."""
    root = config.data.get("root") or ""
    synthetic = config.data.get("synthetic")
    ckpt = config.get("backbone_checkpoint") or ""
    identity = {
        "job": job,
        "data_root": (str(Path(root).absolute()) if root else {"synthetic": json.loads(
            json.dumps(synthetic.to_dict() if hasattr(synthetic, "to_dict")
                       else dict(synthetic or {})))}),
        "subject": config.get("subject"),
        "backbone": file_fingerprint(ckpt) if ckpt else "random stand-in (config.backbone)",
        "features": {k: config.features.get(k) for k in (
            "kind", "enc_output_layer", "normalize", "image_size")},
        "split": {"seed": config.get("seed"), "val_fraction": config.train.get("val_fraction")},
    }
    return identity, has_checkpoints(Path(workdir) / "checkpoints")
