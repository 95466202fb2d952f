"""Upstream's reproduction recipe (Hosseinadeli/transformer_brain_encoder `main.py`,
`datasets/nsd.py`): its train/validation split file, its output file names, its backbone-block
numbering and its image resizing, so upstream runs can be repeated and its notebooks can read
popt_jax outputs.

* Split: upstream lists the training PNGs sorted by name, takes `idxs = arange(n)`, shuffles it
  (`np.random.shuffle`, unseeded, for `run < 20`; unshuffled otherwise), saves it as
  `idxs.npy` in the run folder, and uses `idxs[:round(n / 100 * 90)]` for training and the rest,
  in that order, for validation. `make_split` writes the same file (seeded permutation, or
  `arange` when `config.data.shuffle` is False) or reads a given one (`config.data.split_file`,
  e.g. an upstream run's `idxs.npy`) after checking it is a permutation of this subject's images.
* Outputs: at the best epoch upstream saves `lh_fmri_val_pred.npy`, `rh_fmri_val_pred.npy`
  (validation rows in `idxs` order), `lh_val_corr.npy`, `rh_val_corr.npy` (per-vertex r) and
  `lh_pred_test.npy`, `rh_pred_test.npy` (float32) next to `idxs.npy`; `save_upstream_outputs`
  writes these names under `{workdir}/upstream/`.
* Backbone block: `--enc_output_layer k` (default 1) selects `blocks[-k]`, i.e. k = 1 is the last
  block, k = 2 the one before; `block_index` maps it to popt_jax's negative block index (-k).
* Image size: `--image_size s` resizes each PIL image to s x s (Pillow's default resampling,
  bicubic) before ToTensor and normalisation; `load_image` does the same (None = no resize).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from popt_jax.errors import DataError
from popt_jax.fmri.algonauts import read_png

__all__ = ["UPSTREAM_FILES", "block_index", "load_image", "make_split", "n_train_images",
           "save_upstream_outputs", "load_upstream_outputs"]

UPSTREAM_FILES = ("idxs.npy", "lh_fmri_val_pred.npy", "rh_fmri_val_pred.npy", "lh_val_corr.npy",
                  "rh_val_corr.npy", "lh_pred_test.npy", "rh_pred_test.npy")


def block_index(enc_output_layer: int) -> int:
    """Upstream's `enc_output_layer` (1 = last block) -> popt_jax's block index (-1 = last)."""
    k = int(enc_output_layer)
    if k < 1:
        raise ValueError(f"enc_output_layer counts blocks from the end starting at 1, got {k}")
    return -k


def load_image(path, image_size: int | None = None) -> np.ndarray:
    """uint8 [H, W, 3]; resized to image_size x image_size first when given (as upstream)."""
    img = read_png(path)
    if not image_size or img.shape[:2] == (image_size, image_size):
        return img
    try:
        from PIL import Image
    except ImportError:
        raise DataError(path, "resizing images (config image_size) needs Pillow: "
                        "pip install pillow") from None
    return np.asarray(Image.fromarray(img).resize((image_size, image_size),
                                                  Image.Resampling.BICUBIC))


def n_train_images(n: int, val_fraction: float) -> int:
    """Upstream's count: round(n / 100 * 90) for a 10 % validation split."""
    return int(np.round(n / 100 * round(100 * (1.0 - val_fraction))))


def make_split(n: int, config, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) image indices in upstream's order; writes `upstream/idxs.npy`.

    Reads `config.data.split_file` when set (an upstream `idxs.npy`); else a permutation seeded
    by `config.seed`, or `arange(n)` when `config.data.shuffle` is False.
    """
    split_file = str(config.data.get("split_file", "") or "")
    if split_file:
        try:
            idxs = np.load(split_file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(split_file, f"cannot read the split file ({e})") from None
        if idxs.ndim != 1 or len(idxs) != n:
            raise DataError(split_file, f"holds {idxs.shape[0] if idxs.ndim else 0} indices but "
                            f"the subject has {n} training images")
        if not np.array_equal(np.sort(idxs), np.arange(n)):
            raise DataError(split_file, f"is not a permutation of 0..{n - 1}")
        idxs = idxs.astype(np.int64)
    elif bool(config.data.get("shuffle", True)):
        idxs = np.random.default_rng(int(config.seed)).permutation(n)
    else:
        idxs = np.arange(n)
    n_train = n_train_images(n, float(config.train.val_fraction))
    if not 0 < n_train < n:
        raise DataError(split_file or None, f"{n} images cannot be split with val_fraction="
                        f"{config.train.val_fraction}")
    out = Path(workdir) / "upstream"
    out.mkdir(parents=True, exist_ok=True)
    _save(out / "idxs.npy", idxs)
    return idxs[:n_train], idxs[n_train:]


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def save_upstream_outputs(folder: Path, val_pred: dict, val_r: dict,
                          test_pred: dict | None) -> list[Path]:
    """Writes upstream's best-epoch files (see the module docstring) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for hemi in ("lh", "rh"):
        items = [(f"{hemi}_fmri_val_pred.npy", val_pred[hemi]), (f"{hemi}_val_corr.npy",
                                                                 np.asarray(val_r[hemi]))]
        if test_pred is not None:
            items.append((f"{hemi}_pred_test.npy", np.asarray(test_pred[hemi], np.float32)))
        for name, arr in items:
            _save(folder / name, arr)
            out.append(folder / name)
    return out


def load_upstream_outputs(folder: Path) -> dict[str, np.ndarray | None]:
    """Reads the files of `save_upstream_outputs` (or an upstream run folder); test
    predictions may be absent (None)."""
    folder = Path(folder)
    out = {}
    for name in UPSTREAM_FILES:
        p = folder / name
        if not p.exists():
            if "pred_test" in name:
                out[name[:-4]] = None
                continue
            raise DataError(p, "is missing: not a finished brain-encoder run")
        out[name[:-4]] = np.load(p, allow_pickle=False)
    return out
