"""The fMRI family: the transformer brain encoder (Algonauts 2023 / NSD).

Public API (imported on first use)::

    from popt_jax.fmri import (DinoV2, DinoV2Config, load_dinov2, ClipVision,
                               ClipVisionConfig, load_clip, ResNet, ResNetConfig, load_resnet,
                               extract_features, BrainEncoder, BrainEncoderConfig,
                               challenge_score, challenge_scores, pearson_r, predict_images,
                               ensemble_job)

Modules: `dinov2` (backbone), `convert_dinov2` (its weights), `clip` (CLIP ViT image tower and
its open_clip weights), `resnet` (ResNet-50 and its torchvision weights), `backbones` (one
interface to the three: build from a config, preprocess, extract, fingerprint), `decoder` (ROI-query decoder and
readout, upstream state_dict import), `algonauts` (reader), `synthetic_algonauts`,
`feature_cache` (backbone features on disk), `metrics`, `plots`, `recipe` (upstream's split
file, output names, block numbering, image resizing), `inputs` (subject, backbone, features,
model of a run), `evaluate` (best-epoch evaluation), `train` (the job), `ensemble` (the
ensemble job), `predict` (`predict_images`).
"""

import importlib

_API = {
    "DinoV2": "dinov2", "DinoV2Config": "dinov2", "load_dinov2": "convert_dinov2",
    "ClipVision": "clip", "ClipVisionConfig": "clip", "load_clip": "clip",
    "ResNet": "resnet", "ResNetConfig": "resnet", "load_resnet": "resnet",
    "extract_features": "backbones",
    "BrainEncoder": "decoder", "BrainEncoderConfig": "decoder",
    "challenge_score": "metrics", "challenge_scores": "metrics", "pearson_r": "metrics",
    "predict_images": "predict", "ensemble_job": "ensemble",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
