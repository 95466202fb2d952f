"""ResNet-50 backbone: features and weight import vs a torchvision-layout PyTorch ResNet.

The reference is `tests/torch_reference_resnet.py` (torchvision's Bottleneck ResNet in plain
PyTorch, same module names and state_dict keys, BatchNorm in eval mode), because torchvision
itself does not import where a CPU-only torch sits next to a CUDA torchvision wheel; where it
does import (CI), `test_reference_is_torchvision` checks the reference against
`torchvision.models.resnet50` itself. The full ResNet-50 layout (3, 4, 6, 3 Bottlenecks, real
widths) runs with random weights and BatchNorm statistics at 64 x 64 pixels; every stage must
agree within 1e-4 (float32), with and without upstream's `--dilation`.
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
import torch_reference_resnet as R  # noqa: E402

from popt_jax.errors import ConversionError  # noqa: E402
from popt_jax.fmri import backbones, dinov2, resnet  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-4


def _state(ref):
    return {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """(reference ResNet-50 with random weights, loaded model, path of the .pth)."""
    ref = R.RefResNet().randomize(0).eval()
    path = tmp_path_factory.mktemp("rn") / "resnet50-0676ba61.pth"
    torch.save(ref.state_dict(), path)  # fc and num_batches_tracked included, as published
    model = resnet.load_resnet(path, expected=resnet.ResNetConfig())
    return ref, model, path


def _images(n=2, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _normalised(imgs):
    mean, std = np.array(dinov2.IMAGENET_MEAN), np.array(dinov2.IMAGENET_STD)
    x = (imgs.astype(np.float32) / 255.0 - mean) / std
    return torch.tensor(x.transpose(0, 3, 1, 2).astype(np.float32))


@pytest.mark.parametrize("block,shape", [(-1, (2048, 2, 2)), (-2, (1024, 4, 4))])
def test_stages_match_reference(full, block, shape):
    ref, model, _ = full
    imgs = _images()
    with torch.no_grad():
        want = ref.stages(_normalised(imgs))[resnet.STAGES[block]].numpy()
    got = np.asarray(backbones.extract_features(model, imgs, "resnet50", block))
    assert got.shape == (2,) + shape
    assert np.abs(want).max() > 0.1  # the stage carries signal (BatchNorm not degenerate)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert backbones.output_shape(model, "resnet50", block, 64, 64) == shape
    assert backbones.feature_stride(model, block) == 64 // shape[-1]


def test_dilated_layer4_matches_reference():
    ref = R.RefResNet(layers=(1, 1, 2, 2), dilate_layer4=True).randomize(1).eval()
    model = resnet.resnet_from_state_dict(_state(ref), dilation=True)
    imgs = _images(seed=1)
    with torch.no_grad():
        want = ref.stages(_normalised(imgs))["layer4"].numpy()
    got = np.asarray(backbones.extract_features(model, imgs, "resnet50", -1))
    assert got.shape == (2, 2048, 4, 4) and model.stride(-1) == 16
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_export_round_trip(full):
    ref, model, _ = full
    sd = resnet.to_state_dict(model)
    want = {k: v for k, v in _state(ref).items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert sorted(sd) == sorted(want) and len(sd) == 265
    for k in want:
        np.testing.assert_array_equal(sd[k], want[k])


def test_reference_is_torchvision():
    """The plain-PyTorch reference is torchvision's resnet50: same keys, same outputs."""
    tv, reason = open_clip_reference.torchvision_or_reason()
    if tv is None:
        pytest.skip(reason)
    from torchvision.models._utils import IntermediateLayerGetter

    ref = R.RefResNet().randomize(2).eval()
    net = tv.models.resnet50(weights=None).eval()
    assert sorted(net.state_dict()) == sorted(ref.state_dict())
    net.load_state_dict(ref.state_dict())
    body = IntermediateLayerGetter(net, {"layer3": "2", "layer4": "3"})
    x = _normalised(_images(seed=3))
    with torch.no_grad():
        got, want = body(x), ref.stages(x)
    np.testing.assert_allclose(got["3"].numpy(), want["layer4"].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["2"].numpy(), want["layer3"].numpy(), atol=1e-6, rtol=0)
    dil = tv.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, True])
    assert [tuple(p.shape) for p in dil.state_dict().values()] == [
        tuple(p.shape) for p in ref.state_dict().values()]


def test_bad_checkpoints_one_line(full, tmp_path):
    ref, _, path = full
    sd = _state(ref)
    small = _state(R.RefResNet(layers=(1, 1, 1, 1), width=16))
    with pytest.raises(ConversionError, match=r"checkpoint is a ResNet \(Bottleneck blocks "
                                              r"\(1, 1, 1, 1\), width 16\), but a ResNet-50"):
        resnet.resnet_from_state_dict(small, expected=resnet.ResNetConfig())
    broken = dict(sd)
    del broken["layer2.0.bn1.running_var"]
    broken["layer3.0.extra"] = np.zeros(3, np.float32)
    broken["layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ConversionError) as e:
        resnet.resnet_from_state_dict(broken, source="r.pth")
    msg = str(e.value)
    assert msg.startswith("r.pth: state_dict does not fit ResNet-50") and "\n" not in msg
    assert "1 missing: layer2.0.bn1.running_var" in msg
    assert "1 unexpected: layer3.0.extra" in msg
    assert "wrong shapes: layer1.0.conv2.weight (64, 64, 1, 1) vs model (64, 64, 3, 3)" in msg
    basic = {k.replace("conv3", "convX"): v for k, v in sd.items()}
    with pytest.raises(ConversionError, match="BasicBlock ResNet"):
        resnet.resnet_from_state_dict(basic)
    vit = {"cls_token": np.zeros((1, 1, 8)), "pos_embed": np.zeros((1, 5, 8))}
    torch.save({k: torch.tensor(v) for k, v in vit.items()}, tmp_path / "dinov2.pth")
    with pytest.raises(ConversionError, match=r"dinov2.pth: not a torchvision ResNet: required "
                                              r"tensor 'conv1.weight' is missing"):
        resnet.load_resnet(tmp_path / "dinov2.pth")


def test_random_stand_in_is_seeded_and_abstract_load_draws_nothing():
    cfg = resnet.ResNetConfig(layers=(1, 1, 1, 1), width=8)
    a = resnet.to_state_dict(resnet.ResNet(cfg, rngs=nnx.Rngs(0)))
    b = resnet.to_state_dict(resnet.ResNet(cfg, rngs=nnx.Rngs(0)))
    assert all(np.array_equal(a[k], b[k]) for k in a) and a["conv1.weight"].std() > 0
    # per Bottleneck 3 convs + 3 BatchNorms x 4 tensors, + a downsample conv and BatchNorm
    # in each stage's first block; + the stem's conv1 and bn1
    assert len(a) == 4 * (15 + 5) + 5
