"""Reader for the Algonauts 2023 challenge layout (NSD images and fMRI on the cortical surface).

Per subject (`{root}/subjXX/`)::

    training_split/training_images/*.png            stimuli, sorted by name (425x425 RGB)
    training_split/training_fmri/{lh,rh}_training_fmri.npy   float [n_train, n_vertices]
    test_split/test_images/*.png                    stimuli without responses
    roi_masks/{lh,rh}.<family>_challenge_space.npy  int ROI id per vertex (0 = none)
    roi_masks/mapping_<family>.npy                  pickled dict {id: name}, id 0 = 'Unknown'
    roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy   optional bool mask onto fsaverage

Families: prf-visualrois, floc-bodies, floc-faces, floc-places, floc-words (the five the
decoder has queries for) and streams (used for evaluation only). Optional, not part of the
challenge release: `training_split/training_fmri/{lh,rh}_noise_ceiling.npy`, a per-vertex
noise ceiling (fraction of explainable variance, or percent) for the challenge metric.

The mapping files are object arrays, i.e. pickles. `np.load(allow_pickle=True)` would run any
code a pickle names, so they are read with an unpickler that only knows the few numpy
functions an object array of a dict needs (`load_mapping`).

Query masks follow upstream's `roi_masks` (transformer_brain_encoder `datasets/nsd_utils.py`)
for `rois_all`: one 0/1 row per named ROI of the five families, in family order and id order,
then one "Unknown" row for the vertices in none of them (a vertex in several ROIs has several
ones). Every problem is a `DataError` whose message is one line naming the file.
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from popt_jax.errors import DataError

__all__ = [
    "FAMILIES", "QUERY_FAMILIES", "HEMIS", "READOUTS", "AlgonautsSubject", "load_mapping",
    "read_png", "write_png", "png_size", "subject_dir",
]

FAMILIES = ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words",
            "streams")
QUERY_FAMILIES = FAMILIES[:5]
HEMIS = ("lh", "rh")
READOUTS = ("rois_all", "hemis", "voxels")


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Writes uint8 [H, W, 3] as an 8-bit RGB PNG (no dependency beyond zlib)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected [H, W, 3] uint8, got {rgb.shape}")
    h, w, _ = rgb.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    blob = (_PNG_MAGIC + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _chunk(b"IEND", b""))
    Path(path).write_bytes(blob)


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the IHDR chunk, without decoding the image."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != _PNG_MAGIC or head[12:16] != b"IHDR":
        raise DataError(path, "not a PNG file")
    w, h = struct.unpack(">II", head[16:24])
    return int(h), int(w)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _decode_png(path: str | os.PathLike) -> np.ndarray:
    """Minimal decoder (8-bit grey/RGB/RGBA, non-interlaced) for when Pillow is absent."""
    blob = Path(path).read_bytes()
    if blob[:8] != _PNG_MAGIC:
        raise DataError(path, "not a PNG file")
    pos, idat, hdr = 8, [], None
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos:pos + 4])
        tag, data = blob[pos + 4:pos + 8], blob[pos + 8:pos + 8 + n]
        pos += 12 + n
        if tag == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", data)
        elif tag == b"IDAT":
            idat.append(data)
        elif tag == b"IEND":
            break
    if hdr is None:
        raise DataError(path, "PNG without IHDR")
    w, h, depth, ctype, _, _, interlace = hdr
    channels = {0: 1, 2: 3, 6: 4}.get(ctype)
    if depth != 8 or channels is None or interlace:
        raise DataError(path, f"PNG kind (bit depth {depth}, colour type {ctype}, interlace "
                        f"{interlace}) needs Pillow to decode")
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, 1 + w * channels)
    out = np.zeros((h, w * channels), np.int64)
    prev = np.zeros(w * channels, np.int64)
    for y in range(h):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) % 256
        elif kind == 1:  # Sub: a running sum per channel
            cur = np.cumsum(line.reshape(w, channels), axis=0).reshape(-1) % 256
        else:  # Average / Paeth depend on the reconstructed left neighbour: byte by byte
            cur = line.copy()
            for i in range(cur.size):
                left = cur[i - channels] if i >= channels else 0
                up, ul = prev[i], (prev[i - channels] if i >= channels else 0)
                pred = (left + up) // 2 if kind == 3 else _paeth(left, up, ul)
                cur[i] = (cur[i] + pred) % 256
        out[y], prev = cur, cur
    img = out.reshape(h, w, channels).astype(np.uint8)
    if channels == 1:
        img = np.repeat(img, 3, axis=2)
    return img[..., :3]


def read_png(path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W, 3] RGB (Pillow when installed, as upstream's `Image.open().convert('RGB')`)."""
    try:
        from PIL import Image
    except ImportError:
        return _decode_png(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise DataError(path, f"cannot read image ({e})") from None


# --------------------------------------------------------------------------------------------
# Pickled ROI-name mappings
# --------------------------------------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    return allowed


class _MappingUnpickler(pickle.Unpickler):
    """Builds numpy object arrays and plain containers; refuses every other global."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def load_mapping(path: str | os.PathLike) -> dict[int, str]:
    """Reads `mapping_<family>.npy` ({id: name}) without running arbitrary pickled code."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, _, dtype = reader(f)
            if dtype != np.dtype(object):
                raise DataError(path, f"is a {dtype} array {shape}, not a pickled dict")
            obj = _MappingUnpickler(f).load()
    except FileNotFoundError:
        raise DataError(path, "ROI mapping file is missing") from None
    except DataError:
        raise
    except (ValueError, pickle.UnpicklingError, EOFError, TypeError, AttributeError) as e:
        raise DataError(path, f"not a pickled dict ({e})") from None
    if isinstance(obj, np.ndarray) and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DataError(path, f"holds a {type(obj).__name__}, not a pickled dict")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, (int, np.integer)) or not isinstance(v, str):
            raise DataError(path, f"mapping entry {k!r}: {v!r} is not int id -> str name")
        out[int(k)] = v
    return dict(sorted(out.items()))


def noise_ceiling_fraction(nc: np.ndarray, path) -> np.ndarray:
    """A noise-ceiling array as a fraction of explainable variance.

    The release's `{lh,rh}_noise_ceiling.npy` hold one value per vertex, either as a fraction
    in [0, 1] (used as is) or in percent (any value above 1: divided by 100). NaN or negative
    values are refused.
    """
    nc = np.asarray(nc, np.float64)
    if np.isnan(nc).any():
        raise DataError(path, f"noise ceiling has {int(np.isnan(nc).sum())} NaN values")
    if (nc < 0).any():
        raise DataError(path, "noise ceiling has negative values")
    return nc / 100.0 if nc.size and nc.max() > 1.0 else nc


# --------------------------------------------------------------------------------------------
# One subject
# --------------------------------------------------------------------------------------------


def subject_dir(root: str | os.PathLike, subject: int | str) -> Path:
    """`{root}/subjXX` (subject 1 -> subj01); `root` may also be the subject folder itself."""
    root = Path(root)
    if root.name.startswith("subj") and (root / "roi_masks").is_dir():
        return root
    name = subject if str(subject).startswith("subj") else f"subj{int(subject):02d}"
    return root / name


def _load_array(path: Path, what: str, mmap: bool = False) -> np.ndarray:
    if not path.exists():
        raise DataError(path, f"{what} is missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(path, f"cannot read {what} ({e})") from None


def _pngs(folder: Path, what: str, required: bool = True) -> list[Path]:
    if not folder.is_dir():
        if required:
            raise DataError(folder, f"{what} folder is missing")
        return []
    files = sorted(p for p in folder.iterdir() if p.suffix == ".png")
    if required and not files:
        raise DataError(folder, f"no .png {what} found")
    return files


class AlgonautsSubject:
    """One subject of the Algonauts 2023 layout, checked on construction.

    Args:
      root: the challenge data folder (holding subjXX/) or a subject folder.
      subject: 1-8 or 'subj01'.
    """

    def __init__(self, root: str | os.PathLike, subject: int | str = 1):
        self.dir = subject_dir(root, subject)
        if not self.dir.is_dir():
            raise DataError(self.dir, "subject folder not found")
        self.train_images = _pngs(self.dir / "training_split" / "training_images",
                                  "training images")
        self.test_images = _pngs(self.dir / "test_split" / "test_images", "test images",
                                 required=False)
        self.image_size = self._check_sizes(self.train_images + self.test_images)
        for hemi in HEMIS:
            fmri = self.fmri(hemi)
            if fmri.ndim != 2 or fmri.shape[0] != len(self.train_images):
                raise DataError(self._fmri_path(hemi),
                                f"has shape {fmri.shape}, expected [{len(self.train_images)} "
                                "training images, vertices]")
            for family in FAMILIES:
                roi = self.roi_map(hemi, family)
                if roi.shape != (fmri.shape[1],):
                    raise DataError(self._roi_path(hemi, family),
                                    f"has {roi.shape[0] if roi.ndim == 1 else roi.shape} "
                                    f"vertices but {hemi}_training_fmri.npy has "
                                    f"{fmri.shape[1]}")
                unknown = sorted(set(np.unique(roi).tolist()) - set(self.mapping(family)))
                if unknown:
                    raise DataError(self._roi_path(hemi, family),
                                    f"ROI ids {unknown[:5]} are not in mapping_{family}.npy")
            self._check_test_split(hemi, fmri.shape[1])
            fs = self.fsaverage_mask(hemi)
            if fs is not None and int(fs.sum()) != fmri.shape[1]:
                raise DataError(self.dir / "roi_masks" / f"{hemi}.all-vertices_fsaverage_space.npy",
                                f"selects {int(fs.sum())} vertices, fMRI has {fmri.shape[1]}")

    # paths
    def _fmri_path(self, hemi: str) -> Path:
        return self.dir / "training_split" / "training_fmri" / f"{hemi}_training_fmri.npy"

    def _roi_path(self, hemi: str, family: str) -> Path:
        return self.dir / "roi_masks" / f"{hemi}.{family}_challenge_space.npy"

    @staticmethod
    def _check_sizes(files: list[Path]) -> tuple[int, int]:
        sizes = {}
        for p in files:
            sizes.setdefault(png_size(p), p)
        if len(sizes) > 1:
            (s0, p0), (s1, p1) = list(sizes.items())[:2]
            raise DataError(p1, f"is {s1[0]}x{s1[1]} but {p0.name} is {s0[0]}x{s0[1]}; all "
                            "images of a subject must have one size")
        return next(iter(sizes))

    # arrays
    def fmri(self, hemi: str) -> np.ndarray:
        """[n_train, n_vertices] responses (memory-mapped; cast when used)."""
        return _load_array(self._fmri_path(hemi), f"{hemi} training fMRI", mmap=True)

    def n_vertices(self, hemi: str) -> int:
        return int(self.fmri(hemi).shape[1])

    @cached_property
    def _mappings(self) -> dict[str, dict[int, str]]:
        return {f: load_mapping(self.dir / "roi_masks" / f"mapping_{f}.npy") for f in FAMILIES}

    def mapping(self, family: str) -> dict[int, str]:
        return self._mappings[family]

    def roi_map(self, hemi: str, family: str) -> np.ndarray:
        roi = _load_array(self._roi_path(hemi, family), f"{hemi} {family} ROI mask")
        if not np.issubdtype(roi.dtype, np.number):
            raise DataError(self._roi_path(hemi, family), f"has dtype {roi.dtype}, not ROI ids")
        return np.rint(roi).astype(np.int64)

    def fsaverage_mask(self, hemi: str) -> np.ndarray | None:
        p = self.dir / "roi_masks" / f"{hemi}.all-vertices_fsaverage_space.npy"
        return _load_array(p, "fsaverage mask").astype(bool) if p.exists() else None

    def _noise_ceiling(self, p: Path, hemi: str) -> np.ndarray | None:
        if not p.exists():
            return None
        nc = _load_array(p, "noise ceiling")
        if nc.shape != (self.n_vertices(hemi),):
            raise DataError(p, f"has {nc.shape} values but {hemi}_training_fmri.npy has "
                            f"{self.n_vertices(hemi)} vertices")
        return noise_ceiling_fraction(nc, p)

    def noise_ceiling(self, hemi: str) -> np.ndarray | None:
        """Per-vertex noise ceiling of the training split (fraction), or None.

        Not part of the challenge release; the synthetic subject writes one (scores on the
        validation split use it)."""
        return self._noise_ceiling(
            self.dir / "training_split" / "training_fmri" / f"{hemi}_noise_ceiling.npy", hemi)

    def _test_fmri_path(self, hemi: str) -> Path:
        return self.dir / "test_split" / "test_fmri" / f"{hemi}_test_fmri.npy"

    def _test_nc_path(self, hemi: str) -> Path:
        return self.dir / "test_split" / "noise_ceiling" / f"{hemi}_noise_ceiling.npy"

    def test_fmri(self, hemi: str) -> np.ndarray | None:
        """[n_test, n_vertices] held-out responses (the post-challenge release), or None."""
        p = self._test_fmri_path(hemi)
        return _load_array(p, f"{hemi} test fMRI", mmap=True) if p.exists() else None

    def test_noise_ceiling(self, hemi: str) -> np.ndarray | None:
        """Per-vertex noise ceiling of the test split (fraction), or None."""
        return self._noise_ceiling(self._test_nc_path(hemi), hemi)

    def _check_test_split(self, hemi: str, n_vertices: int) -> None:
        fmri = self.test_fmri(hemi)
        if fmri is None:
            return
        p = self._test_fmri_path(hemi)
        if fmri.ndim != 2 or fmri.shape != (len(self.test_images), n_vertices):
            raise DataError(p, f"has shape {fmri.shape}, expected [{len(self.test_images)} test "
                            f"images, {n_vertices} vertices]")
        if not self._test_nc_path(hemi).exists():
            raise DataError(p, f"test fMRI has no noise ceiling ({self._test_nc_path(hemi)} is "
                            "missing); the challenge score needs both")
        self.test_noise_ceiling(hemi)

    @property
    def has_test_fmri(self) -> bool:
        return all(self._test_fmri_path(h).exists() for h in HEMIS)

    # ROI structure
    def query_masks(self, hemi: str, readout: str = "rois_all"
                    ) -> tuple[np.ndarray | None, list[str]]:
        """Readout masks [Q, n_vertices] float32 and the query names of one hemisphere.

        rois_all: one row per named ROI of the five query families + 'Unknown' (vertices in
        none); hemis: no mask, one query ('lh'/'rh'); voxels: no mask, one query per vertex.
        """
        if readout == "hemis":
            return None, [hemi]
        if readout == "voxels":
            return None, [f"{hemi}_v{i}" for i in range(self.n_vertices(hemi))]
        if readout != "rois_all":
            raise DataError(None, f"readout must be one of {READOUTS}, got {readout!r}")
        rows, names = [], []
        for family in QUERY_FAMILIES:
            roi = self.roi_map(hemi, family)
            for rid, name in self.mapping(family).items():
                if rid != 0:
                    rows.append(roi == rid)
                    names.append(name)
        masks = np.stack(rows)
        masks = np.concatenate([masks, ~masks.any(0, keepdims=True)])
        return masks.astype(np.float32), names + ["Unknown"]

    def roi_vertices(self, hemi: str) -> list[tuple[str, str, np.ndarray]]:
        """(family, ROI name, vertex indices) for every named ROI of all six families."""
        out = []
        for family in FAMILIES:
            roi = self.roi_map(hemi, family)
            for rid, name in self.mapping(family).items():
                if rid != 0:
                    out.append((family, name, np.flatnonzero(roi == rid)))
        return out

    def load_images(self, split: str, index: np.ndarray | list[int] | None = None) -> np.ndarray:
        """uint8 [n, H, W, 3] of the 'train' or 'test' images (all, or those at `index`)."""
        files = self.train_images if split == "train" else self.test_images
        if index is not None:
            files = [files[int(i)] for i in index]
        return np.stack([read_png(p) for p in files]) if files else np.zeros(
            (0, *self.image_size, 3), np.uint8)
