"""A torchvision-layout Bottleneck ResNet in plain PyTorch (the ResNet-50 parity reference).

Written from torchvision's `models/resnet.py` structure (v1.5 Bottleneck: the stride on the
3x3 convolution; `replace_stride_with_dilation` for layer4) with the same module names, so its
`state_dict()` has exactly torchvision's keys (`conv1.weight`, `bn1.running_mean`,
`layer1.0.downsample.0.weight`, ..., `fc.weight`). Used where torchvision itself cannot be
imported (a CPU torch next to a CUDA torchvision wheel); when it can, the tests also check this
reference against `torchvision.models.resnet.ResNet`.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class RefResNet(nn.Module):
    """torchvision's ResNet(Bottleneck, layers) with a `width` knob (64 = the real one)."""

    def __init__(self, layers=(3, 4, 6, 3), width=64, dilate_layer4=False, num_classes=1000):
        super().__init__()
        self.c_in, self.dilation = width, 1
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make(width, layers[0])
        self.layer2 = self._make(width * 2, layers[1], stride=2)
        self.layer3 = self._make(width * 4, layers[2], stride=2)
        self.layer4 = self._make(width * 8, layers[3], stride=2, dilate=dilate_layer4)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 32, num_classes)

    def _make(self, planes, blocks, stride=1, dilate=False):
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.c_in != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.c_in, planes * 4, 1, stride=stride,
                                                 bias=False), nn.BatchNorm2d(planes * 4))
        mods = [Bottleneck(self.c_in, planes, stride, downsample, previous)]
        self.c_in = planes * 4
        mods += [Bottleneck(self.c_in, planes, dilation=self.dilation)
                 for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def stages(self, x):
        """{'layer1': ..., 'layer4': ...} feature maps (torchvision's IntermediateLayerGetter)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        return out

    @torch.no_grad()
    def randomize(self, seed=0):
        """Random weights and BatchNorm statistics that keep activations of order 1."""
        g = torch.Generator().manual_seed(seed)
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                small = name.endswith("bn3") or name.endswith("downsample.1")
                lo, hi = (0.1, 0.4) if small else (0.5, 1.5)
                m.weight.copy_(lo + (hi - lo) * torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(7)
        return self
