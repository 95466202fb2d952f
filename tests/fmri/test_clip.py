"""CLIP image tower: features and weight import vs open_clip's own VisionTransformer.

The reference is open_clip's `VisionTransformer` (`tests/open_clip_reference.py`) with random
weights at a reduced size (3 blocks, width 64, 4 heads, a 4x4 grid of 14-pixel patches, output
48), QuickGELU as for the OpenAI weights (and nn.GELU for `act="gelu"`). Features must agree
within 1e-4 (float32): upstream's projected patch tokens (`tokens @ proj` with
`output_tokens=True`) of the last block, and of an earlier block through `ln_post` and `proj`.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import open_clip_reference  # noqa: E402

from popt_jax.errors import ConversionError  # noqa: E402
from popt_jax.fmri import backbones, clip, dinov2  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-4
SMALL = dict(image_size=56, patch_size=14, width=64, layers=3, heads=4, mlp_ratio=4.0,
             output_dim=48)
TEXT = {"token_embedding.weight": np.zeros((10, 8), np.float32),
        "positional_embedding": np.zeros((5, 8), np.float32),
        "ln_final.weight": np.ones(8, np.float32), "text_projection": np.zeros((8, 48)),
        "logit_scale": np.zeros((), np.float32),
        "transformer.resblocks.0.ln_1.weight": np.ones(8, np.float32)}


def _reference(act="quick_gelu", seed=0):
    T = open_clip_reference.open_clip_transformer()
    torch.manual_seed(seed)
    layer = T.QuickGELU if act == "quick_gelu" else torch.nn.GELU
    ref = T.VisionTransformer(**SMALL, act_layer=layer, output_tokens=True).eval()
    with torch.no_grad():  # move LayerNorms and biases off their trivial init
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ref


def _state(ref):
    return {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(reference, loaded model, path of a whole-CLIP-style .bin with text tensors)."""
    ref = _reference()
    sd = {"visual." + k: torch.tensor(v) for k, v in _state(ref).items()}
    sd.update({k: torch.tensor(v) for k, v in TEXT.items()})
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    torch.save(sd, path)
    return ref, clip.load_clip(path, heads=4), path


def _images(n=2, size=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _normalised(imgs):
    mean, std = np.array(dinov2.IMAGENET_MEAN), np.array(dinov2.IMAGENET_STD)
    x = (imgs.astype(np.float32) / 255.0 - mean) / std
    return torch.tensor(x.transpose(0, 3, 1, 2).astype(np.float32))


def _ref_features(ref, x, block=-1):
    """Upstream's clip features, generalised to block k: ln_post(tokens_k)[1:] @ proj."""
    with torch.no_grad():
        if block == -1:
            _, tokens = ref(x)
        else:
            h = ref._embeds(x)
            for blk in list(ref.transformer.resblocks)[:len(ref.transformer.resblocks) + block
                                                       + 1]:
                h = blk(h)
            tokens = ref.ln_post(h)[:, 1:]
        out = tokens @ ref.proj
    b, n, d = out.shape
    g = int(round(n ** 0.5))
    return out.numpy().reshape(b, g, g, d).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("block", [-1, -2])
def test_features_match_open_clip(small, block):
    ref, model, _ = small
    imgs = _images()
    got = np.asarray(backbones.extract_features(model, imgs, "clip", block))
    want = _ref_features(ref, _normalised(imgs), block)
    assert got.shape == (2, 48, 4, 4)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_pooled_output_and_gelu_variant(small, tmp_path):
    ref, model, _ = small
    x = _normalised(_images(seed=1))
    with torch.no_grad():
        pooled, tokens = ref(x)
    ours_pooled, ours_tokens = nnx.jit(lambda m, a: m(a))(model, x.numpy())
    np.testing.assert_allclose(np.asarray(ours_pooled), pooled.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(ours_tokens), tokens.numpy(), atol=TOL, rtol=0)
    gelu_ref = _reference("gelu", seed=3)
    gelu = clip.clip_from_state_dict(_state(gelu_ref), act="gelu", heads=4)
    imgs = _images(seed=2)
    np.testing.assert_allclose(np.asarray(backbones.extract_features(gelu, imgs, "clip")),
                               _ref_features(gelu_ref, _normalised(imgs)), atol=TOL, rtol=0)
    quick = clip.clip_from_state_dict(_state(gelu_ref), heads=4)  # the wrong activation
    assert np.abs(np.asarray(backbones.extract_features(quick, imgs, "clip"))
                  - _ref_features(gelu_ref, _normalised(imgs))).max() > 10 * TOL


def test_openai_normalisation(small):
    ref, model, _ = small
    imgs = _images(seed=4)
    mean, std = np.array(clip.OPENAI_MEAN), np.array(clip.OPENAI_STD)
    x = (imgs.astype(np.float32) / 255.0 - mean) / std
    want = _ref_features(ref, torch.tensor(x.transpose(0, 3, 1, 2).astype(np.float32)))
    got = backbones.extract_features(model, imgs, "clip", normalize="openai")
    np.testing.assert_allclose(np.asarray(got), want, atol=TOL, rtol=0)


def test_export_round_trip(small):
    ref, model, _ = small
    sd = clip.to_state_dict(model)
    want = _state(ref)
    assert sorted(sd) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(sd[k], want[k])
    whole = clip.to_state_dict(model, prefix="visual.")
    assert all(k.startswith("visual.") for k in whole)


def test_inferred_config_and_vit_l14_shape():
    cfg = clip.ClipVisionConfig()
    assert (cfg.width, cfg.layers, cfg.heads, cfg.grid, cfg.output_dim) == (1024, 24, 16, 16,
                                                                          768)
    abstract = nnx.eval_shape(lambda: clip.ClipVision(cfg, rngs=nnx.Rngs(0)))
    assert backbones.output_shape(abstract, "clip", -1, 224, 224) == (768, 16, 16)
    sd = {k: np.zeros(s, np.float32) for k, s in _shapes(abstract).items()}
    assert clip.infer_config(sd) == cfg  # heads from open_clip's 64-wide heads


def _shapes(model):
    from popt_jax.core import torch_io

    return torch_io.expected_shapes(model, clip.layout(model))


def test_bad_checkpoints_one_line(small, tmp_path):
    ref, _, path = small
    sd = _state(ref)
    with pytest.raises(ConversionError, match="checkpoint is a CLIP ViT-width64/14.*but a "
                                              "CLIP ViT-L/14 .* was expected"):
        clip.clip_from_state_dict(sd, expected=clip.ClipVisionConfig(), heads=4)
    broken = dict(sd)
    del broken["transformer.resblocks.1.ln_2.bias"]
    broken["transformer.resblocks.0.attn.extra"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError) as e:
        clip.clip_from_state_dict(broken, heads=4, source="x.bin")
    msg = str(e.value)
    assert "x.bin" in msg and "1 missing: transformer.resblocks.1.ln_2.bias" in msg
    assert "1 unexpected: transformer.resblocks.0.attn.extra" in msg and "\n" not in msg
    wrong = dict(sd, proj=np.zeros((64, 40), np.float32),
                 **{"ln_post.weight": np.zeros(63, np.float32)})
    with pytest.raises(ConversionError, match="wrong shapes: ln_post.weight"):
        clip.clip_from_state_dict(wrong, heads=4)
    resnet_like = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
                   "bn1.weight": np.zeros(64, np.float32)}
    torch.save({k: torch.tensor(v) for k, v in resnet_like.items()}, tmp_path / "rn.pth")
    with pytest.raises(ConversionError, match=r"rn.pth: not an open_clip ViT image tower: "
                                              r"required tensor 'class_embedding' is missing"):
        clip.load_clip(tmp_path / "rn.pth")
    whole = {"visual." + k: v for k, v in sd.items()} | {"visual_extra.w": np.zeros(2)}
    with pytest.raises(ConversionError, match="1 unexpected: visual_extra.w"):
        clip.clip_from_state_dict(whole, heads=4)


def test_torchscript_archive_refused(tmp_path):
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "ViT-L-14.pt"
    scripted.save(str(path))
    with pytest.raises(ConversionError, match="ViT-L-14.pt: a TorchScript archive"):
        clip.load_clip(path)


def test_wrong_image_size(small):
    _, model, _ = small
    with pytest.raises(ValueError, match="takes 56x56 images .* got 70x70"):
        backbones.output_shape(model, "clip", -1, 70, 70)
