"""open_clip's own `transformer` module (VisionTransformer, QuickGELU) as the CLIP reference.

`import open_clip` imports torchvision, which fails where a CPU-only torch sits next to a CUDA
torchvision wheel ("operator torchvision::nms does not exist"). The vision transformer itself
needs nothing from torchvision (open_clip's `utils` only re-exports its FrozenBatchNorm2d), so
in that case the three source files `utils.py`, `pos_embed.py` and `transformer.py` of the
installed open_clip are loaded as a private package with a placeholder for that one name;
sys.modules is left as it was. Either way the reference is open_clip's code, unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest


def _load_private(folder: str):
    import torch

    pkg = "_open_clip_reference"
    stub_names = ("torchvision", "torchvision.ops", "torchvision.ops.misc")
    saved = {n: sys.modules.get(n) for n in stub_names + (pkg,)}
    try:
        misc = types.ModuleType("torchvision.ops.misc")
        misc.FrozenBatchNorm2d = torch.nn.Identity  # not used by VisionTransformer
        ops = types.ModuleType("torchvision.ops")
        ops.misc = misc
        tv = types.ModuleType("torchvision")
        tv.ops = ops
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops,
                            "torchvision.ops.misc": misc})
        package = types.ModuleType(pkg)
        package.__path__ = [folder]
        sys.modules[pkg] = package
        for name in ("utils", "pos_embed", "transformer"):
            spec = importlib.util.spec_from_file_location(f"{pkg}.{name}",
                                                          os.path.join(folder, f"{name}.py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[f"{pkg}.{name}"] = module
            spec.loader.exec_module(module)
        return sys.modules[f"{pkg}.transformer"]
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def open_clip_transformer():
    """open_clip.transformer (the installed package's), importable or loaded privately."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open_clip_torch is not installed (pip install -e '.[test]')")
    try:
        from open_clip import transformer
        return transformer
    except RuntimeError:  # torchvision's C ops failed to register (see the docstring)
        return _load_private(os.path.dirname(spec.origin))


def torchvision_or_reason():
    """(torchvision module, None) or (None, why it cannot be imported)."""
    try:
        import torchvision
        return torchvision, None
    except (ImportError, RuntimeError) as e:
        return None, f"torchvision cannot be imported here: {str(e).splitlines()[0]}"
