"""Prints the float32 parity of the CLIP and ResNet-50 backbones against their PyTorch references.

    JAX_PLATFORMS=cpu python scripts/parity_backbones.py [--size 224] [--clip-width 1024]

* CLIP: open_clip's own `VisionTransformer` (loaded as in `tests/open_clip_reference.py`) with
  random weights, QuickGELU, `--clip-layers` blocks of `--clip-width` (64-wide heads), a 16x16
  patch grid (224 px) and output 768 as ViT-L/14; upstream's projected patch tokens compared.
* ResNet-50: the full torchvision layout (`tests/torch_reference_resnet.py`, which the test suite
  checks against torchvision itself where torchvision imports) with random weights and BatchNorm
  statistics at `--size` pixels; layer3 and layer4 compared.

Each line: max |ours - reference| and the reference's max |value|. Needs torch and
open_clip_torch (the `test` extra).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

import open_clip_reference  # noqa: E402
import torch_reference_resnet as R  # noqa: E402

from popt_jax.fmri import backbones, clip, dinov2, resnet  # noqa: E402


def _normalised(imgs):
    mean, std = np.array(dinov2.IMAGENET_MEAN), np.array(dinov2.IMAGENET_STD)
    x = (imgs.astype(np.float32) / 255.0 - mean) / std
    return torch.tensor(x.transpose(0, 3, 1, 2).astype(np.float32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224, help="ResNet input size in pixels")
    p.add_argument("--clip-width", type=int, default=256)
    p.add_argument("--clip-layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    a = p.parse_args()
    rng = np.random.default_rng(0)

    T = open_clip_reference.open_clip_transformer()
    torch.manual_seed(0)
    ref = T.VisionTransformer(image_size=224, patch_size=14, width=a.clip_width,
                              layers=a.clip_layers, heads=a.clip_width // 64, mlp_ratio=4.0,
                              output_dim=768, act_layer=T.QuickGELU, output_tokens=True).eval()
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    model = clip.clip_from_state_dict(sd)
    imgs = rng.integers(0, 256, (a.batch, 224, 224, 3), dtype=np.uint8)
    with torch.no_grad():
        _, tokens = ref(_normalised(imgs))
        want = (tokens @ ref.proj).numpy().reshape(a.batch, 16, 16, 768).transpose(0, 3, 1, 2)
    got = np.asarray(backbones.extract_features(model, imgs, "clip"))
    print(f"clip ViT width {a.clip_width}, {a.clip_layers} blocks, 224 px, [B, 768, 16, 16]: "
          f"max |diff| {np.abs(got - want).max():.2e} (max |ref| {np.abs(want).max():.2f})")

    rn = R.RefResNet().randomize(0).eval()
    model = resnet.resnet_from_state_dict({k: v.numpy() for k, v in rn.state_dict().items()})
    imgs = rng.integers(0, 256, (a.batch, a.size, a.size, 3), dtype=np.uint8)
    with torch.no_grad():
        stages = rn.stages(_normalised(imgs))
    for block, name in ((-2, "layer3"), (-1, "layer4")):
        want = stages[name].numpy()
        got = np.asarray(backbones.extract_features(model, imgs, "resnet50", block))
        print(f"resnet50 {name}, {a.size} px, {list(want.shape[1:])}: max |diff| "
              f"{np.abs(got - want).max():.2e} (max |ref| {np.abs(want).max():.2f})")


if __name__ == "__main__":
    main()
