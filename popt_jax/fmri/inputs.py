"""What a brain-encoder run starts from: the subject, the frozen backbone and its cached
features, and the decoder (optionally initialised from an upstream checkpoint).

Each piece is one call of `popt_jax.fmri.train.brain_encoder_job` and of the other fMRI jobs
(`ensemble`, `predict_images`), so they read the same config fields the same way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from absl import logging
from flax import nnx

from popt_jax.errors import TrainingError
from popt_jax.fmri import algonauts, backbones, recipe, synthetic_algonauts
from popt_jax.fmri import feature_cache as brain_features
from popt_jax.fmri.decoder import BrainEncoder, BrainEncoderConfig, from_torch_state_dict

__all__ = ["synthetic_root", "load_subject", "build_backbone", "feature_block", "image_size",
           "cache_split_features", "model_config", "build_model", "feature_stride"]

RESNET_HIDDEN = 768  # upstream's --hidden_dim, the ResNet input projection's width


def synthetic_root(config, workdir: Path) -> Path:
    """Writes the synthetic subject under the workdir once (re-written if its config changed)."""
    s = config.data.synthetic
    cfg = synthetic_algonauts.SyntheticAlgonautsConfig(
        subject=int(config.subject), n_train=int(s.n_train), n_test=int(s.n_test),
        image_size=int(s.image_size), n_vertices=(int(s.lh_vertices), int(s.rh_vertices)),
        snr_range=(float(s.snr_min), float(s.snr_max)), plant=bool(s.plant), seed=int(s.seed),
        spatial=bool(s.get("spatial", False)), test_fmri=bool(s.get("test_fmri", False)))
    root = workdir / "synthetic_algonauts"
    truth = root / f"subj{cfg.subject:02d}" / "synthetic_truth.json"
    want = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if not truth.exists() or json.loads(truth.read_text()).get("config") != want:
        logging.info("writing a synthetic Algonauts subject to %s", root)
        synthetic_algonauts.write_synthetic_algonauts(root, cfg)
    return root


def load_subject(config, workdir: Path) -> algonauts.AlgonautsSubject:
    """The Algonauts subject at `config.data.root`, or the synthetic one in the workdir."""
    root = Path(config.data.root) if config.data.root else synthetic_root(config, workdir)
    subject = algonauts.AlgonautsSubject(root, config.subject)
    logging.info("%s: %d training / %d test images of %dx%d, %d + %d vertices%s", subject.dir,
                 len(subject.train_images), len(subject.test_images), *subject.image_size,
                 subject.n_vertices("lh"), subject.n_vertices("rh"),
                 ", test fMRI present" if subject.has_test_fmri else "")
    return subject


def build_backbone(config):
    """The frozen backbone of `config.features.kind` (DINOv2, CLIP or ResNet-50) and a
    fingerprint of its family and weights (for the feature-cache key); `fmri.backbones`."""
    return backbones.build(config)


def feature_stride(config, backbone) -> int:
    """Image pixels per feature-grid cell of the configured block (for attention figures)."""
    return backbones.feature_stride(backbone, feature_block(config))


def feature_block(config) -> int:
    """The backbone block from `features.enc_output_layer` (upstream's 1 = last block)."""
    return recipe.block_index(int(config.features.enc_output_layer))


def image_size(config) -> int | None:
    return int(config.features.get("image_size", 0) or 0) or None


def cache_split_features(config, backbone, fingerprint: str, files, split: str,
                         workdir: Path) -> Path:
    """Caches (or finds) the backbone features of `files` under `{workdir}/features`."""
    fc = config.features
    block, size = feature_block(config), image_size(config)
    norm = str(fc.get("normalize", "imagenet"))
    key = brain_features.cache_key(fingerprint, fc.kind, block, files, str(fc.compute_dtype),
                                   size, norm)
    return brain_features.cache_features(
        backbone, files, Path(workdir) / "features" / f"{split}_{key}.h5", kind=str(fc.kind),
        block=block, batch_size=int(fc.batch_size), compute_dtype=str(fc.compute_dtype),
        backbone=fingerprint, label=split, image_size=size, normalize=norm)


def model_config(subject: algonauts.AlgonautsSubject, config, dim: int):
    """(BrainEncoderConfig, lh masks, rh masks, lh query names, rh query names)."""
    readout = str(config.model.readout)
    lh_m, lh_names = subject.query_masks("lh", readout)
    rh_m, rh_names = subject.query_masks("rh", readout)
    # Upstream projects ResNet features (1x1 conv, `input_proj`) to --hidden_dim (768); the
    # ViT features are the memory as they are. `model.hidden_dim` set: project to that width.
    hidden = int(config.model.get("hidden_dim", 0) or 0)
    resnet = backbones.family(str(config.features.kind)) == "resnet"
    if resnet and not hidden:
        hidden = RESNET_HIDDEN
    input_dim = dim if (resnet or (hidden and hidden != dim)) else 0
    cfg = BrainEncoderConfig(hidden_dim=hidden or dim, input_dim=input_dim, n_heads=int(config.model.n_heads),
                             ff_dim=int(config.model.ff_dim), dropout=float(config.model.dropout),
                             readout=readout, lh_vertices=subject.n_vertices("lh"),
                             rh_vertices=subject.n_vertices("rh"), lh_queries=len(lh_names),
                             rh_queries=len(rh_names),
                             grouped_readout=bool(config.model.get("grouped_readout", True)))
    return cfg, lh_m, rh_m, lh_names, rh_names


def build_model(config, subject, dim: int) -> tuple[BrainEncoder, BrainEncoderConfig,
                                                    list[str], list[str]]:
    """The decoder, seeded; `config.init_decoder` (an upstream `checkpoint.pth` or its
    state_dict, in any form `core.torch_io.read_checkpoint` reads) overwrites every weight."""
    mcfg, lh_m, rh_m, lh_names, rh_names = model_config(subject, config, dim)
    model = BrainEncoder(mcfg, lh_m, rh_m, rngs=nnx.Rngs(int(config.seed)))
    init = str(config.get("init_decoder", "") or "")
    if init:
        from popt_jax.core import torch_io

        try:
            sd, _, path = torch_io.read_checkpoint(init)
        except FileNotFoundError:
            raise TrainingError(f"init_decoder: {init} not found") from None
        from_torch_state_dict(model, sd)
        logging.info("decoder initialised from %s", path)
    return model, mcfg, lh_names, rh_names


def fmri_arrays(subject) -> dict[str, np.ndarray]:
    return {h: np.asarray(subject.fmri(h), np.float32) for h in algonauts.HEMIS}
