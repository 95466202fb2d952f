"""torchvision ResNet-50 (Bottleneck layout) in Flax NNX, and its strict weight import.

Upstream's `resnet50` backbone (`models/resnet.py` of transformer_brain_encoder, after DETR) is
torchvision's `resnet50` with ImageNet weights and frozen BatchNorm (running statistics, eps
1e-5), read out at `layer4` ([B, 2048, H/32, W/32]); the decoder then projects the 2048
channels to its width with a 1x1 convolution (`input_proj`, part of the decoder here too:
`popt_jax.fmri.decoder`). `--dilation` replaces layer4's stride by a dilation (DC5:
[B, 2048, H/16, W/16]). Feature kind `resnet50` here, with `block` choosing the stage:
-1 = layer4 (upstream), -2 = layer3 ([B, 1024, H/16, W/16]), -3 = layer2, -4 = layer1.

Layout (torchvision's "v1.5" ResNet): conv1 7x7/2 (pad 3) -> bn1 -> ReLU -> 3x3/2 max-pool (pad
1) -> layer1..layer4 of (3, 4, 6, 3) Bottlenecks with 64, 128, 256, 512 planes (x4 out). A
Bottleneck is conv1 1x1 -> bn1 -> ReLU -> conv2 3x3 (the stride sits here) -> bn2 -> ReLU ->
conv3 1x1 -> bn3, plus the identity or `downsample` (1x1 conv with the stride -> BN), then
ReLU. Convolution weights are kept in torch's [out, in, kh, kw] layout, so every tensor of a
torchvision state_dict maps to the same-named leaf unchanged. `width` scales every stage
(64 = ResNet-50; smaller widths give the same structure for random stand-ins).

Accepted weight files: torchvision's `resnet50-0676ba61.pth` / `resnet50-11ad3fa6.pth` (or any
`.pth`/`.bin`/`.safetensors` holding a torchvision ResNet `state_dict()`, optionally under
`model`). `fc.*` (the ImageNet classifier) and `num_batches_tracked` are not used by a feature
extractor and are skipped; every other tensor must be present, used and of the right shape.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from popt_jax.core import torch_io
from popt_jax.core.nn import Buffer
from popt_jax.errors import ConversionError

__all__ = ["ResNetConfig", "ResNet", "load_resnet", "resnet_from_state_dict", "to_state_dict",
           "infer_config", "EXPECT", "STAGES"]

STAGES = ("layer1", "layer2", "layer3", "layer4")
EXPANSION = 4
_STATE = (nnx.Param, Buffer)  # weights and BatchNorm running statistics


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """A Bottleneck ResNet; the defaults are torchvision's `resnet50`.

    Attributes:
      layers: Bottlenecks per stage.
      width: stem channels; stage s has width * 2**s planes (x4 output channels).
      dilation: layer4 uses dilation 2 instead of stride 2 (upstream's `--dilation`).
      bn_eps: BatchNorm epsilon (torchvision's and upstream's FrozenBatchNorm2d's).
      in_chans: image channels.
    """

    layers: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    dilation: bool = False
    bn_eps: float = 1e-5
    in_chans: int = 3

    def __post_init__(self):
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {self.layers}")

    def channels(self, stage: int) -> int:
        return self.width * 2 ** stage * EXPANSION

    def describe(self) -> str:
        name = {(3, 4, 6, 3): "ResNet-50", (3, 4, 23, 3): "ResNet-101",
                (3, 8, 36, 3): "ResNet-152"}.get(tuple(self.layers), "ResNet")
        return f"{name} (Bottleneck blocks {tuple(self.layers)}, width {self.width})"


EXPECT = {"": None, "resnet50": dict(layers=(3, 4, 6, 3), width=64)}


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class Conv(nnx.Module):
    """Bias-free 2-D convolution, NCHW input, torch weight layout [out, in, kh, kw]."""

    def __init__(self, c_in: int, c_out: int, k: int, *, stride: int = 1, padding: int = 0,
                 dilation: int = 1, rng: np.random.Generator | None):
        # torchvision's init: kaiming normal, fan_out, ReLU gain (rng None: no draws, for
        # weights about to be loaded).
        shape = (c_out, c_in, k, k)
        std = np.sqrt(2.0 / (c_out * k * k))
        self.weight = nnx.Param(jnp.zeros(shape, jnp.float32) if rng is None else jnp.asarray(
            std * rng.standard_normal(shape), jnp.float32))
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def __call__(self, x):
        p = self.padding
        return jax.lax.conv_general_dilated(
            x, self.weight.value.astype(x.dtype), (self.stride, self.stride), [(p, p), (p, p)],
            rhs_dilation=(self.dilation, self.dilation),
            dimension_numbers=("NCHW", "OIHW", "NCHW"))


class FrozenBatchNorm(nnx.Module):
    """Eval-mode BatchNorm: x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))."""

    def __init__(self, c: int, eps: float):
        self.weight = nnx.Param(jnp.ones((c,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((c,), jnp.float32))
        self.running_mean = Buffer(jnp.zeros((c,), jnp.float32))
        self.running_var = Buffer(jnp.ones((c,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        scale = self.weight.value * jax.lax.rsqrt(self.running_var.value + self.eps)
        shift = self.bias.value - self.running_mean.value * scale
        return x * scale.astype(x.dtype)[:, None, None] + shift.astype(x.dtype)[:, None, None]


class Bottleneck(nnx.Module):
    """torchvision's Bottleneck (stride on the 3x3 convolution)."""

    def __init__(self, c_in: int, planes: int, stride: int, dilation: int, downsample: bool,
                 eps: float, rng: np.random.Generator | None):
        c_out = planes * EXPANSION
        self.conv1 = Conv(c_in, planes, 1, rng=rng)
        self.bn1 = FrozenBatchNorm(planes, eps)
        self.conv2 = Conv(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation,
                          rng=rng)
        self.bn2 = FrozenBatchNorm(planes, eps)
        self.conv3 = Conv(planes, c_out, 1, rng=rng)
        self.bn3 = FrozenBatchNorm(c_out, eps)
        self.downsample = (nnx.List([Conv(c_in, c_out, 1, stride=stride, rng=rng),
                                     FrozenBatchNorm(c_out, eps)]) if downsample else None)

    def __call__(self, x):
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = jax.nn.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        skip = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(h + skip)


def _max_pool(x):
    """3x3 max-pool, stride 2, padding 1 (padding never wins: -inf)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                                 [(0, 0), (0, 0), (1, 1), (1, 1)])


class ResNet(nnx.Module):
    """Bottleneck ResNet without the classifier (eval only)."""

    def __init__(self, cfg: ResNetConfig = ResNetConfig(), *, rngs: nnx.Rngs):
        self.config = cfg
        data = jax.random.key_data(rngs.params())
        # numpy draws (see dinov2._Init); none under nnx.eval_shape (weights to be loaded)
        rng = None if isinstance(data, jax.core.Tracer) else np.random.default_rng(
            np.asarray(data))
        w, eps = cfg.width, cfg.bn_eps
        self.conv1 = Conv(cfg.in_chans, w, 7, stride=2, padding=3, rng=rng)
        self.bn1 = FrozenBatchNorm(w, eps)
        c_in, dilation = w, 1
        for s, n in enumerate(cfg.layers):
            planes, stride = w * 2 ** s, (1 if s == 0 else 2)
            prev = dilation
            if s == 3 and cfg.dilation:
                dilation, stride = dilation * stride, 1
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(
                    c_in, planes, stride if i == 0 else 1, prev if i == 0 else dilation,
                    i == 0 and (stride != 1 or c_in != planes * EXPANSION), eps, rng))
                c_in = planes * EXPANSION
            setattr(self, STAGES[s], nnx.List(blocks))

    def _block_index(self, block: int) -> int:
        if not -4 <= block < 4:
            raise ValueError(f"block {block} is out of range for the 4 ResNet stages "
                             "(-1 = layer4 ... -4 = layer1)")
        return block % 4

    def stride(self, block: int = -1) -> int:
        """Pixels per feature-grid cell at stage `block`."""
        s = self._block_index(block)
        return 2 ** (s + 2) if s < 3 or not self.config.dilation else 16

    def features(self, images, kind: str = "resnet50", block: int = -1):
        """Output of stage `block` [B, C, h, w] (-1 = layer4)."""
        if kind != "resnet50":
            raise ValueError(f"a ResNet backbone gives feature kind 'resnet50', not {kind!r}")
        stop = self._block_index(block)
        x = _max_pool(jax.nn.relu(self.bn1(self.conv1(images))))
        for s in range(stop + 1):
            for blk in getattr(self, STAGES[s]):
                x = blk(x)
        return x

    def __call__(self, images):
        return self.features(images)


# --------------------------------------------------------------------------------------------
# torchvision state_dict <-> NNX
# --------------------------------------------------------------------------------------------


def layout(model: ResNet) -> torch_io.Layout:
    """torchvision key -> leaf: the same dotted names, values unchanged."""
    return {".".join(path): [torch_io.Slot(path)] for path in torch_io.flat_state(model, _STATE)}


def to_state_dict(model: ResNet) -> dict[str, np.ndarray]:
    """torchvision-layout float32 state_dict (no `fc`, no `num_batches_tracked`)."""
    return torch_io.export_state_dict(model, layout(model), _STATE)


def infer_config(sd: dict[str, Any], *, dilation: bool = False,
                 source: str = "state_dict") -> ResNetConfig:
    """The ResNetConfig of a torchvision Bottleneck-ResNet state_dict."""
    if "conv1.weight" not in sd:
        raise ConversionError(f"{source}: not a torchvision ResNet: required tensor "
                              f"'conv1.weight' is missing (keys start: "
                              f"{', '.join(sorted(sd)[:5])})")
    layers = []
    for stage in STAGES:
        idx = [int(m.group(1)) for k in sd if (m := re.match(rf"{stage}\.(\d+)\.", k))]
        if not idx:
            raise ConversionError(f"{source}: not a torchvision ResNet: no {stage}.N.* tensors")
        layers.append(max(idx) + 1)
    if "layer1.0.conv3.weight" not in sd:
        raise ConversionError(f"{source}: a BasicBlock ResNet (resnet18/34: no conv3); only "
                              "Bottleneck ResNets (resnet50/101/152) are supported")
    w = tuple(np.shape(sd["conv1.weight"]))
    if len(w) != 4:
        raise ConversionError(f"{source}: conv1.weight has shape {w}, expected 4 dimensions")
    return ResNetConfig(layers=tuple(layers), width=int(w[0]), dilation=dilation,
                        in_chans=int(w[1]))


def resnet_from_state_dict(sd: dict[str, Any], *, expected: ResNetConfig | None = None,
                           dilation: bool = False, source: str = "state_dict") -> ResNet:
    """A ResNet holding the torchvision-layout `sd`, checked strictly (see the docstring)."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith(".num_batches_tracked")}
    cfg = infer_config(sd, dilation=dilation, source=source)
    if expected is not None and (cfg.layers, cfg.width) != (tuple(expected.layers),
                                                           expected.width):
        raise ConversionError(f"{source}: checkpoint is a {cfg.describe()}, but a "
                              f"{expected.describe()} was expected")
    model = nnx.eval_shape(lambda: ResNet(cfg, rngs=nnx.Rngs(0)))
    n = torch_io.fill_state_dict(model, layout(model), sd, what=_STATE, source=source,
                                 target=cfg.describe(), ignore=("fc.",), limit=8)
    logging.info("%s: loaded %s (%d tensors)", source, cfg.describe(), n)
    return model


def load_resnet(path: str | os.PathLike, *, expected: ResNetConfig | None = None,
                dilation: bool = False) -> ResNet:
    """Loads a torchvision ResNet checkpoint (see the module docstring)."""
    sd, _, resolved = torch_io.read_checkpoint(os.fspath(path))
    return resnet_from_state_dict(sd, expected=expected, dilation=dilation, source=resolved)
