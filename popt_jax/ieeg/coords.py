"""Electrode coordinates: from a declared millimetre frame into PopT's integer index space.

PopT looks each electrode's (L, I, P) position up in a sinusoid table of ``max_len`` rows
(5000 for the published model), so a position must be an integer in ``[0, max_len)``. The
Brain Treebank ships such positions already (``depth-wm.csv`` L/I/P columns, truncated toward
zero by PopT). Other recordings give real-valued coordinates in a named frame: BIDS
``coordsystem.json`` declares ``iEEGCoordinateSystem`` (MNI152..., fsaverage, Talairach, ACPC,
...) and ``iEEGCoordinateUnits`` (m, cm, mm). Every frame accepted here is a right-handed RAS
frame in millimetres once the units are converted (x to the Right, y Anterior, z Superior).

`CoordMapping` turns RAS millimetres into index space::

    lip = offset + scale * (-x, -z, -y)      axes="lip" (default)
    ras = offset + scale * ( x,  y,  z)      axes="ras"
    index = rint(position)                    round half to even; checked in [0, max_len)

``axes="lip"`` orders and orients the axes like the Brain Treebank's L, I, P columns (Left,
Inferior, Posterior grow), so a model pretrained on Brain Treebank positions sees the same
directions. ``offset`` (default 128 mm on every axis, the centre of a 256 mm FreeSurfer
conformed volume, which keeps every point of an adult head in [0, 256)) and ``scale`` (index
steps per mm, default 1) are saved with every feature file (``coord_mapping`` attribute), so
the choice can always be read back. A frame is only as comparable as its name says: MNI and
fsaverage positions are comparable across subjects, ACPC/Talairach approximately, the
subject's own scanner space (``ScanRAS``) is not and is refused unless asked for.

The real-valued positions (before rounding) are what PopT's opt-in continuous position code
(``PopTConfig.position_code="continuous"``) evaluates its sinusoids at; at integer positions
that code equals the table lookup.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from popt_jax.errors import ConfigError, DataError

__all__ = ["CoordMapping", "MM_PER_UNIT", "canonical_frame", "to_millimetres",
           "BRAINTREEBANK_FRAME", "POSITION_CODES", "position_code_of", "check_position_code"]

# The Brain Treebank's own L/I/P columns: already index space (PopT truncates them).
BRAINTREEBANK_FRAME = "BrainTreebank-LIP"
MM_PER_UNIT = {"m": 1000.0, "cm": 10.0, "mm": 1.0}
# PopT's spatial codes (`PopTConfig.position_code`): "table" looks integer rows up (upstream),
# "continuous" evaluates the same sinusoids at the real-valued positions.
POSITION_CODES = ("table", "continuous")
# Named BIDS template/anatomical frames, all RAS millimetre spaces.
_FRAMES = ("ACPC", "Talairach", "fsaverage", "fsaverageSym", "fsLR", "MNI305", "IXI549Space",
           "ICBM452AirSpace", "ICBM452Warp5Space")
_FRAME_PREFIXES = ("MNI152", "MNIColin27", "fsaverage")
# MNE montage frame names for the same thing.
_MNE_FRAMES = {"mni_tal": "MNI305", "fsaverage": "fsaverage"}


def canonical_frame(frame: str | None, path: Any, *, allow_scanner: bool = False) -> str:
    """The accepted spelling of ``frame``, or a one-line DataError naming ``path``.

    Args:
        frame: a BIDS ``iEEGCoordinateSystem`` value or an MNE montage frame name.
        path: the file that declared it (for the message).
        allow_scanner: also accept ``ScanRAS`` (the subject's scanner space: comparable
            within one subject only).
    """
    f = (frame or "").strip()
    if f in _MNE_FRAMES:
        return _MNE_FRAMES[f]
    if f in _FRAMES or any(f.startswith(p) for p in _FRAME_PREFIXES):
        return f
    if allow_scanner and f == "ScanRAS":
        return f
    shown = f or "none"
    raise DataError(path, f"electrode coordinates in an undeclared or unknown frame ({shown!r});"
                    " expected one of ACPC, Talairach, fsaverage, MNI152..., MNI305 "
                    "(RAS millimetre frames)")


def to_millimetres(xyz: np.ndarray, units: str | None, path: Any) -> np.ndarray:
    """``xyz`` [n, 3] converted from ``units`` (m, cm, mm) to millimetres."""
    u = (units or "").strip()
    if u not in MM_PER_UNIT:
        raise DataError(path, f"coordinate units {u or 'none'!r} are not one of m, cm, mm")
    return np.asarray(xyz, dtype=np.float64) * MM_PER_UNIT[u]


_AXES = {
    "lip": np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]),
    "ras": np.eye(3),
}


@dataclasses.dataclass(frozen=True)
class CoordMapping:
    """RAS millimetres -> PopT index space (see module docstring).

    Attributes:
        frame: the declared frame (canonical spelling).
        offset: index added on each output axis (after the axis map and scale).
        scale: index steps per millimetre.
        axes: "lip" (Brain Treebank order and directions) or "ras".
        max_len: rows of PopT's position table; indices must lie in [0, max_len).
    """

    frame: str
    offset: tuple[float, float, float] = (128.0, 128.0, 128.0)
    scale: float = 1.0
    axes: str = "lip"
    max_len: int = 5000

    def __post_init__(self):
        if self.axes not in _AXES:
            raise ValueError(f"axes must be one of {sorted(_AXES)}, not {self.axes!r}")
        if not self.scale > 0:
            raise ValueError("scale must be positive")

    def positions(self, mm: np.ndarray) -> np.ndarray:
        """Real-valued index-space positions [n, 3] of RAS millimetres [n, 3]."""
        mm = np.asarray(mm, dtype=np.float64).reshape(-1, 3)
        return np.asarray(self.offset, np.float64) + self.scale * mm @ _AXES[self.axes].T

    def index(self, mm: np.ndarray, names: Sequence[str], path: Any) -> np.ndarray:
        """int64 [n, 3] table rows of RAS millimetres; DataError naming the first electrode
        that falls outside ``[0, max_len)`` (or has no finite coordinate)."""
        pos = self.positions(mm)
        idx = np.rint(pos)
        bad = ~np.all(np.isfinite(idx) & (idx >= 0) & (idx < self.max_len), axis=1)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise DataError(path, f"electrode {names[i]} at {np.round(mm[i], 2).tolist()} mm "
                            f"maps to index {pos[i].round(1).tolist()}, outside [0, "
                            f"{self.max_len}) (adjust offset/scale)")
        return idx.astype(np.int64)

    def to_json(self, extra: Mapping[str, Any] | None = None) -> str:
        """The mapping (plus ``extra``, e.g. per-electrode millimetres) as stored in a file."""
        d = dataclasses.asdict(self)
        d["offset"] = list(d["offset"])
        d["formula"] = ("index = rint(offset + scale * A @ ras_mm), A = diag(-1,-1,-1) on "
                        "(x, z, y)" if self.axes == "lip" else
                        "index = rint(offset + scale * ras_mm)")
        return json.dumps({**d, **(extra or {})}, sort_keys=True)

    @classmethod
    def from_config(cls, frame: str, cfg: Mapping[str, Any] | None) -> "CoordMapping":
        """From a config section with optional offset/scale/axes/max_len."""
        cfg = dict(cfg or {})
        off = cfg.get("offset", 128.0)
        off = (float(off),) * 3 if np.isscalar(off) else tuple(float(v) for v in off)
        return cls(frame=frame, offset=off, scale=float(cfg.get("scale", 1.0)),
                   axes=str(cfg.get("axes", "lip")), max_len=int(cfg.get("max_len", 5000)))


def position_code_of(config) -> str:
    """``config.position_code`` (absent: "table"), checked: the field shared by the
    pretrain, finetune, embed and predict configs."""
    code = str(config.get("position_code", "table") or "table")
    if code not in POSITION_CODES:
        raise ConfigError(f"config.position_code: {code!r} is not one of "
                          f"{', '.join(POSITION_CODES)}")
    return code


def check_position_code(model_code: str, wanted: str, where: Any) -> None:
    """ConfigError naming ``where`` when a model built with ``model_code`` is asked to run
    with ``wanted``: a model reads positions only the way it was trained to."""
    if model_code != wanted:
        raise ConfigError(f"{where}: the model was trained with position_code={model_code!r} "
                          f"but config.position_code is {wanted!r}; set "
                          f"--config.position_code={model_code} (a model cannot switch codes)")
