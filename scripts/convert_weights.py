"""Convert published PyTorch weights (PopT, BrainBERT) into a checkpoint popt_jax loads.

    python scripts/convert_weights.py --input pretrained_popt_brainbert_stft.pth \
        --output converted/popt            # -> converted/popt/model.safetensors + config.json
    python scripts/convert_weights.py --input stft_large_pretrained.pth \
        --output converted/brainbert.safetensors --kind brainbert

The input may be an upstream training checkpoint (.pth dict with model/model_cfg/optim/
scheduler), a bare state_dict, a .safetensors file (config.json beside it) or a directory.
torch is not needed and no pickled code is run. The output is PyTorch-layout safetensors plus
config.json: `popt_jax.convert.load_model(OUTPUT)` reads it, and the upstream module loads the
same file with `load_state_dict(strict=True)`. The script re-reads what it wrote and checks
every tensor before it reports success.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="upstream .pth/.safetensors or directory")
    parser.add_argument("--output", required=True,
                        help="output .safetensors path, or a directory for model.safetensors")
    parser.add_argument("--kind", choices=("popt", "brainbert"), default=None,
                        help="expected model kind (default: auto-detect)")
    parser.add_argument("--no-strict", action="store_true",
                        help="allow missing/unexpected tensors (logged); shapes must still agree")
    parser.add_argument("--quiet", action="store_true", help="skip the parameter table")
    args = parser.parse_args(argv)

    # Imported here so `--help` is instant and import errors surface as one line below.
    from popt_jax.core import torch_pickle
    from popt_jax.ieeg import convert

    out = args.output
    if not out.endswith(".safetensors"):
        out = os.path.join(out, "model.safetensors")
    try:
        model = convert.load_model(args.input, strict=not args.no_strict, kind=args.kind)
        written = convert.export_safetensors(model, out)
        back = convert.load_model(out, strict=True)
        again = convert.to_state_dict(back)
        bad = [k for k in written if not np.array_equal(written[k], again[k])]
        if bad:
            raise convert.ConversionError(f"{out}: re-read tensors differ: {', '.join(bad)}")
    except (convert.ConversionError, torch_pickle.CheckpointError, FileNotFoundError,
            OSError) as e:
        print(f"convert_weights: error: {e}", file=sys.stderr)
        return 2

    kind = convert.model_kind(model)
    if not args.quiet:
        print(convert.parameter_overview(model))
    n_params = sum(int(np.prod(v.shape)) for k, v in written.items() if not k.endswith(".pe"))
    print(f"converted {kind}: {len(written)} tensors, {n_params:,} parameters -> {out} "
          f"(+ {os.path.join(os.path.dirname(out), 'config.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
