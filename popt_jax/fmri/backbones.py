"""The brain encoder's frozen backbones behind one interface: build, preprocess, extract.

Feature kinds are upstream's `--backbone_arch` names (`models/backbone.py`):

=============  ==============================  ================================================
kind           model                           features [B, C, h, w]
=============  ==============================  ================================================
`dinov2_q`     DINOv2 ViT-B/14 (`dinov2`)      a block's attention queries, 768 x H/14 x W/14
`dinov2`       DINOv2 ViT-B/14                 a block's normed tokens, 768 x H/14 x W/14
`clip`         CLIP ViT-L/14 (`clip`)          a block's tokens after ln_post, @ proj:
                                               768 x 16 x 16 (224 px input only)
`resnet50`     ResNet-50 (`resnet`)            a stage's output: layer4 2048 x H/32 x W/32,
                                               layer3 1024 x H/16 x W/16, ...
=============  ==============================  ================================================

`block` counts from the end as upstream's `--enc_output_layer` (block = -enc_output_layer):
transformer blocks for the ViTs, stages for the ResNet (-1 = layer4, -2 = layer3, ...).

Preprocessing as upstream's dataset: uint8 -> [0, 1] -> mean/std normalisation (ImageNet's for
every backbone, as upstream; `normalize="openai"` gives CLIP's own statistics), then, for
DINOv2 only, zero padding to a multiple of 14. Images are resized before that, when
`features.image_size` is set (`fmri.recipe.load_image`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from popt_jax.core.nn import Buffer, cast_floats
from popt_jax.errors import TrainingError
from popt_jax.fmri import clip, dinov2, resnet

__all__ = ["KINDS", "NORMALIZE", "family", "build", "fingerprint", "extract_features",
           "output_shape", "feature_stride", "preprocess"]

KINDS = {"dinov2_q": "dinov2", "dinov2": "dinov2", "clip": "clip", "resnet50": "resnet"}
NORMALIZE = {"imagenet": (dinov2.IMAGENET_MEAN, dinov2.IMAGENET_STD),
             "openai": (clip.OPENAI_MEAN, clip.OPENAI_STD)}
# `backbone.expect="auto"`: the size upstream uses for each family.
AUTO_EXPECT = {"dinov2": "vitb14", "clip": "vitl14", "resnet": "resnet50"}
_DINO_EXPECT = {"": None, "vits14": dict(embed_dim=384, num_heads=6),
                "vitb14": dict(embed_dim=768, num_heads=12),
                "vitl14": dict(embed_dim=1024, depth=24, num_heads=16)}
EXPECT = {"dinov2": _DINO_EXPECT, "clip": clip.EXPECT, "resnet": resnet.EXPECT}

Backbone = Any  # dinov2.DinoV2 | clip.ClipVision | resnet.ResNet


def family(kind: str) -> str:
    """'dinov2', 'clip' or 'resnet' for a feature kind."""
    if kind not in KINDS:
        raise ValueError(f"feature kind must be one of {sorted(KINDS)}, got {kind!r}")
    return KINDS[kind]


def _expected(fam: str, expect: str):
    if expect == "auto":
        expect = AUTO_EXPECT[fam]
    table = EXPECT[fam]
    if expect not in table:
        raise TrainingError(f"config.backbone.expect={expect!r} is not a {fam} size; one of "
                            f"{sorted(k for k in table if k)}, '' (any) or 'auto'")
    sizes = table[expect]
    if sizes is None:
        return None
    cls = {"dinov2": dinov2.DinoV2Config, "clip": clip.ClipVisionConfig,
           "resnet": resnet.ResNetConfig}[fam]
    return cls(**sizes)


def _resnet_layers(value) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    return tuple(int(v) for v in value)


def build(config) -> tuple[Backbone, str]:
    """The frozen backbone of `config.features.kind` and its fingerprint.

    With `config.backbone_checkpoint` the weights (and size) come from the file, checked
    against `backbone.expect`; without, a random stand-in shaped by `config.backbone.*`.
    """
    kind = str(config.features.kind)
    fam = family(kind)
    b = config.backbone
    ckpt = str(config.get("backbone_checkpoint", "") or "")
    act = str(b.get("clip_act", "quick_gelu"))
    dilation = bool(b.get("dilation", False))
    if ckpt:
        expected = _expected(fam, str(b.get("expect", "auto")))
        if fam == "dinov2":
            from popt_jax.fmri.convert_dinov2 import load_dinov2

            model = load_dinov2(ckpt, expected=expected)
        elif fam == "clip":
            model = clip.load_clip(ckpt, expected=expected, act=act)
        else:
            model = resnet.load_resnet(ckpt, expected=expected, dilation=dilation)
    else:
        seed = nnx.Rngs(int(b.seed))
        if fam == "dinov2":
            cfg = dinov2.DinoV2Config(patch_size=int(b.patch_size), embed_dim=int(b.embed_dim),
                                      depth=int(b.depth), num_heads=int(b.num_heads),
                                      mlp_ratio=float(b.mlp_ratio),
                                      pretrain_grid=int(b.pretrain_grid))
            model = dinov2.DinoV2(cfg, rngs=seed)
        elif fam == "clip":
            cfg = clip.ClipVisionConfig(
                patch_size=int(b.patch_size), width=int(b.embed_dim), layers=int(b.depth),
                heads=int(b.num_heads), mlp_ratio=float(b.mlp_ratio),
                grid=int(b.pretrain_grid), act=act,
                output_dim=int(b.get("output_dim", 0) or b.embed_dim))
            model = clip.ClipVision(cfg, rngs=seed)
        else:
            cfg = resnet.ResNetConfig(layers=_resnet_layers(b.get("resnet_layers", "3,4,6,3")),
                                      width=int(b.get("resnet_width", 64)), dilation=dilation)
            model = resnet.ResNet(cfg, rngs=seed)
        logging.info("no backbone_checkpoint: a random %s backbone (plumbing runs only)",
                     cfg.describe())
    return model, fingerprint(model)


def fingerprint(model: Backbone) -> str:
    """A short hash of the backbone's family, architecture and weights (the cache key's part).

    DINOv2's hash is unchanged from before the other families existed (config + Params), so
    existing feature stores and trained runs keep matching.
    """
    cfg = dict(model.config.__dict__)
    if not isinstance(model, dinov2.DinoV2):
        cfg = {"family": type(model).__name__, **cfg}
    h = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=list).encode())
    what = nnx.Param if isinstance(model, dinov2.DinoV2) else (nnx.Param, Buffer)
    pure = nnx.to_pure_dict(nnx.state(model, what))
    for path, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.asarray(leaf, np.float32).tobytes())
    return h.hexdigest()[:16]


def preprocess(model: Backbone, images, normalize: str = "imagenet") -> jax.Array:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H', W'] (normalised; DINOv2: padded to 14)."""
    mean, std = NORMALIZE[normalize]
    if isinstance(model, dinov2.DinoV2):
        return dinov2.preprocess_images(images, model.config.patch_size, mean, std)
    x = jnp.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got shape {tuple(x.shape)}")
    x = (x.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(
        std, jnp.float32)
    return x.transpose(0, 3, 1, 2)


@functools.partial(jax.jit, static_argnames=("graphdef", "kind", "block", "compute_dtype",
                                             "normalize"))
def _extract(graphdef, state, images, kind, block, compute_dtype, normalize):
    model = nnx.merge(graphdef, state)
    if normalize:  # uint8 input: preprocess inside the same program
        images = preprocess(model, images, normalize)
    if compute_dtype != jnp.float32:
        state = cast_floats(state, compute_dtype)
        model = nnx.merge(graphdef, state)
    return model.features(images.astype(compute_dtype), kind=kind, block=block).astype(
        jnp.float32)


def extract_features(model: Backbone, images, kind: str, block: int = -1, *,
                     compute_dtype: Any = jnp.float32, normalize: str = "imagenet"
                     ) -> jax.Array:
    """Jitted features [B, C, h, w] float32 of uint8 images [B, H, W, 3] (or preprocessed
    float [B, 3, H', W']); see the module docstring for kinds and blocks."""
    fam = family(kind)
    if not isinstance(model, {"dinov2": dinov2.DinoV2, "clip": clip.ClipVision,
                              "resnet": resnet.ResNet}[fam]):
        raise ValueError(f"feature kind {kind!r} needs a {fam} backbone, got "
                         f"{type(model).__name__}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {sorted(NORMALIZE)}, got {normalize!r}")
    if isinstance(model, dinov2.DinoV2) and normalize == "imagenet":
        return dinov2.extract_features(model, images, kind, block, compute_dtype=compute_dtype)
    model._block_index(block)  # range check outside jit, for a readable error
    graphdef, state = nnx.split(model)
    images = jnp.asarray(images)
    prep = normalize if images.dtype == jnp.uint8 else ""
    return _extract(graphdef, state, images, kind, int(block), jnp.dtype(compute_dtype), prep)


def output_shape(model: Backbone, kind: str, block: int, height: int, width: int
                 ) -> tuple[int, int, int]:
    """(C, h, w) of the features of one height x width image (no computation).

    Raises ValueError when the backbone cannot take that size (CLIP's fixed grid).
    """
    model._block_index(block)
    images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.uint8)
    graphdef, state = nnx.split(model)
    abstract = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).features(
        preprocess(nnx.merge(graphdef, s), x), kind=kind, block=block), state, images)
    return tuple(int(d) for d in abstract.shape[1:])


def feature_stride(model: Backbone, block: int = -1) -> int:
    """Image pixels per feature-grid cell (for drawing attention over images)."""
    if isinstance(model, resnet.ResNet):
        return model.stride(block)
    return int(model.config.patch_size)
