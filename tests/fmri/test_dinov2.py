"""DINOv2 backbone: bicubic position resize, features and weight import vs a PyTorch ViT.

Most tests use a reduced ViT (2 blocks, width 96, 4 heads, a 5x5 pretraining grid) written in
`tests/torch_reference_dinov2.py` with the torch-hub state_dict layout; features must agree
within 1e-4 (float32). One full-size ViT-B/14 forward at 434x434 checks the real shapes.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_reference_dinov2 as R  # noqa: E402

from popt_jax.core import torch_pickle  # noqa: E402
from popt_jax.fmri import convert_dinov2, dinov2  # noqa: E402
from popt_jax.ieeg.convert import ConversionError  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-4
SMALL = dict(dim=96, depth=2, heads=4, grid=5)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(torch reference, loaded JAX model, path of the saved .pth)."""
    torch.manual_seed(0)
    ref = R.RefViT(**SMALL).randomize(1).eval()
    path = tmp_path_factory.mktemp("dino") / "dinov2_small_pretrain.pth"
    torch.save(ref.state_dict(), path)
    model = convert_dinov2.load_dinov2(path, num_heads=4)
    return ref, model, path


def _images(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("m,g,offset", [(37, 31, 0.1), (37, 37, 0.1), (5, 3, 0.1), (5, 8, 0.1),
                                        (6, 4, 0.0)])
def test_bicubic_matrix_matches_torch(m, g, offset):
    x = np.random.default_rng(m + g).standard_normal((1, 3, m, m)).astype(np.float32)
    if offset:
        s = (g + offset) / m
        ref = torch.nn.functional.interpolate(torch.tensor(x), scale_factor=(s, s),
                                              mode="bicubic", antialias=False)
        mat = dinov2.torch_bicubic_matrix(m, g, s)
    else:
        ref = torch.nn.functional.interpolate(torch.tensor(x), size=(g, g), mode="bicubic",
                                              antialias=False)
        mat = dinov2.torch_bicubic_matrix(m, g)
    out = np.einsum("ia,jb,cab->cij", mat, mat, x[0])
    np.testing.assert_allclose(out, ref[0].numpy(), atol=2e-5)
    # rows of a cubic interpolation matrix sum to 1 (the border taps are clamped, not dropped)
    np.testing.assert_allclose(mat.sum(1), 1.0, atol=1e-6)


def test_jax_resize_differs_from_torch():
    """jax.image.resize (a = -0.5, no offset) is not torch-hub's rule: guard against it."""
    import jax

    x = np.random.default_rng(0).standard_normal((37, 37)).astype(np.float32)
    ours = dinov2.torch_bicubic_matrix(37, 31, 31.1 / 37) @ x @ dinov2.torch_bicubic_matrix(
        37, 31, 31.1 / 37).T
    theirs = np.asarray(jax.image.resize(x, (31, 31), "bicubic"))
    assert np.abs(ours - theirs).max() > 1e-2


def test_preprocess_matches_torch_and_pads():
    imgs = _images(2, 425, 425)
    ours = np.asarray(dinov2.preprocess_images(imgs))
    ref = R.preprocess(imgs).numpy()
    assert ours.shape == (2, 3, 434, 434)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert np.all(ours[:, :, 425:, :] == 0) and np.all(ours[:, :, :, 425:] == 0)


@pytest.mark.parametrize("hw,kind,block", [
    ((70, 70), "dinov2_q", -1),   # the pretraining grid, square: table used as is
    ((60, 60), "dinov2_q", -1),   # padded to 70: same grid, zero-padded pixels
    ((40, 56), "dinov2_q", 0),    # 3x4 grid: bicubic resize, non-square; an earlier block
    ((98, 84), "dinov2", -1),     # 7x6 grid (upsampled); normed block output
])
def test_features_match_torch(small, hw, kind, block):
    ref, model, _ = small
    imgs = _images(2, *hw, seed=hw[0])
    with torch.no_grad():
        want = ref.features(R.preprocess(imgs), kind, block).numpy()
    got = np.asarray(dinov2.extract_features(model, imgs, kind, block))
    assert got.shape == want.shape == (2, 96, -(-hw[0] // 14), -(-hw[1] // 14))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_offset_zero_matches_size_resize():
    torch.manual_seed(0)
    ref = R.RefViT(**SMALL, offset=0.0).randomize(3).eval()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    model = convert_dinov2.dinov2_from_state_dict(sd, num_heads=4)
    import dataclasses

    model.config = dataclasses.replace(model.config, interpolate_offset=0.0)
    imgs = _images(1, 42, 84)
    with torch.no_grad():
        want = ref.features(R.preprocess(imgs)).numpy()
    np.testing.assert_allclose(np.asarray(dinov2.extract_features(model, imgs)), want,
                               atol=TOL)


def test_huggingface_safetensors(small, tmp_path):
    ref, model, _ = small
    hub = {k: v.numpy() for k, v in ref.state_dict().items()}
    hf = convert_dinov2.hub_to_hf(hub)
    assert "encoder.layer.1.attention.attention.value.bias" in hf
    assert "embeddings.position_embeddings" in hf and "layernorm.weight" in hf
    torch_pickle.save_safetensors(hf, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2",
                                                     "num_attention_heads": 4}))
    loaded = convert_dinov2.load_dinov2(tmp_path)  # a directory, as downloaded from the hub
    imgs = _images(1, 56, 70)
    np.testing.assert_array_equal(np.asarray(dinov2.extract_features(loaded, imgs)),
                                  np.asarray(dinov2.extract_features(model, imgs)))


def test_roundtrip_state_dict(small):
    ref, model, _ = small
    sd = convert_dinov2.to_state_dict(model)
    want = ref.state_dict()
    assert set(sd) == set(want)
    for k, v in sd.items():
        np.testing.assert_array_equal(v, want[k].numpy(), err_msg=k)


def test_other_size_is_one_clear_line(tmp_path):
    vits = R.RefViT(dim=384, depth=1, heads=6, grid=2)
    path = tmp_path / "dinov2_vits14.pth"
    torch.save(vits.state_dict(), path)
    with pytest.raises(ConversionError) as e:
        convert_dinov2.load_dinov2(path, expected=dinov2.DinoV2Config())
    msg = str(e.value)
    assert "\n" not in msg and "ViT-S/14" in msg and "ViT-B/14" in msg
    # without an expectation the size is read from the tensors
    assert convert_dinov2.load_dinov2(path).config.embed_dim == 384


def test_strict_keys(small):
    ref, _, _ = small
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    broken = dict(sd)
    del broken["blocks.1.ls2.gamma"]
    broken["blocks.1.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match="1 missing: blocks.1.ls2.gamma.*1 unexpected"):
        convert_dinov2.dinov2_from_state_dict(broken, num_heads=4)
    reg = dict(sd, register_tokens=np.zeros((1, 4, 96), np.float32))
    with pytest.raises(ConversionError, match="register tokens"):
        convert_dinov2.dinov2_from_state_dict(reg, num_heads=4)


def test_bfloat16_close(small):
    _, model, _ = small
    imgs = _images(1, 70, 70)
    f32 = np.asarray(dinov2.extract_features(model, imgs))
    bf16 = np.asarray(dinov2.extract_features(model, imgs, compute_dtype=jnp.bfloat16))
    assert np.corrcoef(f32.ravel(), bf16.ravel())[0, 1] > 0.99


def test_bad_block_and_kind(small):
    _, model, _ = small
    with pytest.raises(ValueError, match="out of range"):
        dinov2.extract_features(model, _images(1, 14, 14), block=2)
    with pytest.raises(ValueError, match="feature kind"):
        dinov2.extract_features(model, _images(1, 14, 14), kind="cls")


def _real_size(depth: int):
    """ViT-B/14 widths, 37x37 pretraining grid, 425 px image -> 434 -> 31x31 features."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    ref = R.RefViT(dim=768, depth=depth, heads=12, grid=37).randomize(5).eval()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    expected = dinov2.DinoV2Config(depth=depth)
    model = convert_dinov2.dinov2_from_state_dict(sd, expected=expected)
    imgs = _images(1, 425, 425)
    with torch.no_grad():
        want = ref.features(R.preprocess(imgs)).numpy()
    got = np.asarray(dinov2.extract_features(model, imgs))
    assert got.shape == (1, 768, 31, 31)
    np.testing.assert_allclose(got, want, atol=TOL * 10, rtol=TOL)
    print(f"ViT-B/14 widths, {depth} blocks, parity took {time.perf_counter() - t0:.1f}s")
    assert isinstance(model, nnx.Module)


def test_vitb14_widths_two_blocks_at_434():
    _real_size(2)


@pytest.mark.slow
def test_full_size_vitb14_at_434():
    """The whole 12-block ViT-B/14 (about 40 s on 2 CPU cores, hence slow)."""
    _real_size(12)
