"""Frozen-backbone feature cache for the brain encoder (HDF5, float16, resumable).

The backbone never trains (upstream freezes it and runs it under `no_grad`), so its features are
computed once per (backbone family and weights, feature kind, block, image list, image size,
normalisation) and stored:

    {cache_dir}/{split}_{key}.h5
      features  float16 [n_images, D, gh, gw]   chunked per image
      attrs     completed (images written so far), n_images, kind, block, backbone,
                image_names_sha1, format

`key` hashes everything that determines the content, so a changed setting writes a new file
rather than mixing features. Extraction writes batch by batch and bumps `completed` after each
flush; a run that stopped part-way continues from there. Images are decoded in threads while the
device computes the previous batch; a progress line with images/s and the ETA is logged.

Every backbone of `popt_jax.fmri.backbones` (DINOv2, CLIP ViT, ResNet-50) goes through the
same store; its fingerprint hashes the family, the architecture and every weight (BatchNorm
statistics included), and `kind` + `block` name the feature, so the key differs per backbone
and per layer.

float16 halves the store (NSD subject 1: 9841 x 768 x 31 x 31 x 2 bytes = 14.5 GB); DINOv2
query features are O(1)-O(10) in magnitude, well inside float16's range, and the relative
rounding (5e-4) is far below the fMRI noise.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import h5py
import jax.numpy as jnp
import numpy as np
from absl import logging

from popt_jax.core.logs import Progress
from popt_jax.errors import DataError
from popt_jax.fmri import backbones
from popt_jax.fmri.recipe import load_image

__all__ = ["FORMAT", "cache_key", "cache_features", "load_features", "FeatureReader",
           "backbone_fingerprint"]

FORMAT = "popt_jax.brain_features/1"


def backbone_fingerprint(model) -> str:
    """A short hash of the backbone's family, architecture and weights
    (`backbones.fingerprint`)."""
    return backbones.fingerprint(model)


def _names_sha(files: Sequence[Path]) -> str:
    return hashlib.sha1("\n".join(Path(f).name for f in files).encode()).hexdigest()


def cache_key(backbone: str, kind: str, block: int, files: Sequence[Path],
              compute_dtype: str = "float32", image_size: int | None = None,
              normalize: str = "imagenet") -> str:
    """Name of the store of (backbone fingerprint, kind, block, files, dtype, size, norm)."""
    parts = [FORMAT, backbone, kind, int(block), _names_sha(files), compute_dtype]
    if image_size:  # appended only when set, so existing stores keep their keys
        parts.append(int(image_size))
    if normalize != "imagenet":
        parts.append(str(normalize))
    blob = json.dumps(parts)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _open_store(path: Path, attrs: dict[str, Any], shape: tuple[int, ...]) -> h5py.File:
    """Opens an existing matching store for appending, or starts a new one."""
    if path.exists():
        try:
            f = h5py.File(path, "a")
            same = all(f.attrs.get(k) == v for k, v in attrs.items() if k != "completed")
            if same and "features" in f and f["features"].shape == shape:
                return f
            f.close()
        except OSError:  # a file cut off mid-write is not worth keeping
            pass
        logging.warning("%s does not match this extraction; rebuilding it", path)
        path.unlink()
    tmp = path.with_suffix(".h5.partial")
    f = h5py.File(tmp, "w")
    f.create_dataset("features", shape=shape, dtype=np.float16, chunks=(1,) + shape[1:])
    for k, v in attrs.items():
        f.attrs[k] = v
    f.attrs["completed"] = 0
    f.close()
    os.replace(tmp, path)
    return h5py.File(path, "a")


def cache_features(model, files: Sequence[Path], path: str | os.PathLike, *,
                   kind: str = "dinov2_q", block: int = -1, batch_size: int = 16,
                   compute_dtype: str = "float32", backbone: str | None = None,
                   label: str = "", progress_every_s: float = 10.0,
                   image_size: int | None = None, normalize: str = "imagenet") -> Path:
    """Extracts features of the PNG `files` into the HDF5 store at `path` (resuming).

    Args:
      model: the frozen backbone (`backbones.build`).
      files: image paths, in dataset order (row i of the store = files[i]).
      path: the .h5 file.
      kind, block: see `backbones.extract_features`.
      batch_size: images per jitted call (the last batch is padded, so one compilation).
      compute_dtype: 'float32' or 'bfloat16'.
      backbone: fingerprint stored in the attrs (default: computed from the weights).
      label: name in the progress lines.
      progress_every_s: seconds between progress lines.
      image_size: resize every image to this square size before normalising (upstream's
        `--image_size`); None keeps the files' size.
      normalize: 'imagenet' (upstream, every backbone) or 'openai' (CLIP's statistics).

    Returns:
      `path` as a Path, with `completed == n_images`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(files)
    if n == 0:
        raise DataError(path, "no images to extract features from")
    def read_image(p):  # resized as upstream when image_size is set
        return load_image(p, image_size)

    first = read_image(files[0])
    try:
        dim, gh, gw = backbones.output_shape(model, kind, block, *first.shape[:2])
    except ValueError as e:
        raise DataError(files[0], str(e)) from None
    attrs = {"format": FORMAT, "n_images": n, "kind": kind, "block": int(block),
             "backbone": backbone or backbone_fingerprint(model),
             "image_names_sha1": _names_sha(files), "compute_dtype": compute_dtype,
             "image_size": int(image_size or 0)}
    if normalize != "imagenet":  # only then, so existing stores still match
        attrs["normalize"] = str(normalize)
    shape = (n, dim, gh, gw)
    f = _open_store(path, attrs, shape)
    try:
        start = int(f.attrs["completed"])
        if start >= n:
            return path
        if start:
            logging.info("features %s: resuming at image %d of %d", label, start, n)
        ds = f["features"]
        prog = Progress("images", n, start=start, every_s=progress_every_s,
                        label=f"features {label or path.stem}:")
        dtype = jnp.dtype(compute_dtype)
        with ThreadPoolExecutor(max_workers=4) as pool:
            def submit(a):
                return [pool.submit(read_image, files[i])
                        for i in range(a, min(a + batch_size, n))]

            pending = submit(start)
            for a in range(start, n, batch_size):
                imgs = np.stack([fut.result() for fut in pending])
                b = a + len(imgs)
                pending = submit(b) if b < n else []
                if imgs.shape[1:3] != first.shape[:2]:
                    raise DataError(files[a], f"image size {imgs.shape[1:3]} differs from "
                                    f"{first.shape[:2]}")
                if len(imgs) < batch_size:  # keep one compiled shape
                    imgs = np.concatenate(
                        [imgs, np.zeros((batch_size - len(imgs),) + imgs.shape[1:], np.uint8)])
                out = backbones.extract_features(model, imgs, kind, block, compute_dtype=dtype,
                                                 normalize=normalize)
                ds[a:b] = np.asarray(out[:b - a], np.float16)
                f.attrs["completed"] = b
                f.flush()
                prog.update(b - a)
    finally:
        f.close()
    return path


def load_features(path: str | os.PathLike) -> np.ndarray:
    """The whole store as float16 [n, D, gh, gw] (checks it is complete)."""
    with h5py.File(path, "r") as f:
        if int(f.attrs["completed"]) != int(f.attrs["n_images"]):
            raise DataError(path, f"feature store is incomplete ({int(f.attrs['completed'])}/"
                            f"{int(f.attrs['n_images'])}); run the extraction again")
        return f["features"][...]


class FeatureReader:
    """Rows of a feature store by index: from memory when it fits `max_bytes`, else from disk.

    Args:
      path: the .h5 store.
      max_bytes: keep the whole store in memory (float16) below this size.
    """

    def __init__(self, path: str | os.PathLike, max_bytes: float = 4e9):
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            ds = f["features"]
            self.shape = ds.shape
            if int(f.attrs["completed"]) != self.shape[0]:
                raise DataError(self.path, "feature store is incomplete")
            nbytes = int(np.prod(self.shape)) * 2
        self._data = load_features(self.path) if nbytes <= max_bytes else None
        self._file = None if self._data is not None else h5py.File(self.path, "r")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        """float32 rows [len(index), D, gh, gw]."""
        index = np.asarray(index)
        if self._data is not None:
            return self._data[index].astype(np.float32)
        # h5py fancy indexing needs strictly increasing indices
        unique, inverse = np.unique(index, return_inverse=True)
        return self._file["features"][unique][inverse].astype(np.float32)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
