"""Read PyTorch checkpoints into NumPy without torch and without running pickled code.

``torch.save`` files are pickles, and unpickling an untrusted pickle with the
standard machinery can execute arbitrary code.  This module unpickles with a
``find_class`` that only hands out an explicit allow-list of harmless callables
and inert stand-in classes, so a checkpoint can at worst fail to load.  Tensors
come back as ``numpy.ndarray`` and pickled ``omegaconf`` configs come back as
plain ``dict``/``list`` trees, so neither torch nor omegaconf is needed.

Supported: the zip format (torch >= 1.6) and the legacy non-zip format
(magic-number pickles followed by raw storages).  Not supported: the pre-0.4
tar format, quantized/sparse/meta tensors, tensor subclasses other than
``nn.Parameter``, pickled ``nn.Module`` objects, and structured (dataclass)
omegaconf configs; all of these fail with a :class:`CheckpointError`.

Memory is bounded by the file: every tensor's shape, stride and offset are checked
against its storage before anything is allocated, and the bytes materialised (storages
read plus tensors copied) may not exceed ``_BUDGET_FACTOR`` times the file size plus
``_BUDGET_SLACK`` -- a few-MB file holding an expanded (stride-0) tensor of GBs is refused
before the allocation, not after.

Safetensors helpers are included so callers can convert once and then load
without pickle at all.
"""

from __future__ import annotations

import _compat_pickle
import collections
import errno
import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np

from popt_jax.errors import CheckpointError, UnsafeCheckpointError  # noqa: F401

try:  # numpy >= 2 moved the pickle helpers to numpy._core; 1.x only has numpy.core.
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - depends on the installed numpy
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "load_pth",
    "load_safetensors",
    "save_safetensors",
]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Materialised bytes allowed per file byte. Real checkpoints need ~1x (each storage read
# once, each tensor copied once); tied weights and views add a little; 4x leaves room.
_BUDGET_FACTOR = 4
_BUDGET_SLACK = 16 << 20
_LEGACY_PROTOCOL = 1001


def _one_line(text: str) -> str:
    # Errors must stay single-line for log grepping, whatever a hostile file contains.
    return " ".join(str(text).splitlines())


class _Malformed(Exception):
    """Raised inside the unpickler; ``load_pth`` adds the file name."""


class _Budget:
    """Bytes a load may still allocate; refuses (before allocating) past the cap."""

    def __init__(self, file_size: int):
        self.left = _BUDGET_FACTOR * int(file_size) + _BUDGET_SLACK
        self.cap = self.left

    def take(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise _Malformed(f"{what} would need {nbytes:,} bytes, over the {self.cap:,}-byte "
                             "limit for a file of this size (an expanded or forged tensor?)")
        self.left -= nbytes


# --------------------------------------------------------------------------- dtypes
_TORCH_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dt)
    for name, dt in {
        "float32": np.float32, "float64": np.float64, "float16": np.float16,
        "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32,
        "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
        "complex64": np.complex64, "complex128": np.complex128, "uint16": np.uint16,
        "uint32": np.uint32, "uint64": np.uint64,
        "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
        "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
        "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    }.items()
}
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


class _Inert:
    """Base for loader-internal objects: a pickle must not BUILD (mutate) them."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _Malformed(f"pickle tries to modify an internal {type(self).__name__}")


class _Token(_Inert):
    """Immutable stand-in for a torch storage class, torch dtype or ``typing`` name.

    Shared singletons are handed out by ``find_class``; being slotted and refusing
    ``__setstate__`` they cannot be altered by one file to poison later loads.
    """

    __slots__ = ("kind", "name", "dtype")

    def __init__(self, kind: str, name: str, dtype: np.dtype | None = None) -> None:
        self.kind, self.name, self.dtype = kind, name, dtype

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"


class _Function(_Inert):
    """Allow-listed callable; wrapped so a pickle cannot rebind ``__defaults__``."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _StorageRef(_Inert):
    """Lazy reference to ``data/<key>``; bytes are read only when a tensor needs them."""

    __slots__ = ("key", "dtype", "view")

    def __init__(self, key: str, dtype: np.dtype, view: tuple[int, int] | None = None):
        self.key, self.dtype, self.view = key, dtype, view


class _PendingTensor(_Inert):
    """Tensor recipe; materialised after unpickling (legacy storages follow the pickle)."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: Any = None):
        if not isinstance(storage, _StorageRef):
            raise _Malformed("tensor rebuilt from something that is not a storage")
        if dtype is not None and not (isinstance(dtype, _Token) and dtype.kind == "dtype"):
            raise _Malformed("tensor rebuilt with an unknown dtype")
        self.storage, self.offset = storage, int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)
        self.dtype = storage.dtype if dtype is None else dtype.dtype
        if len(self.size) != len(self.stride):
            raise _Malformed(f"tensor size {self.size} and stride {self.stride} disagree")


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    # v3 stores an untyped (byte) storage plus the real dtype for newer dtypes.
    return _PendingTensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    return data  # nn.Parameter is just its data for inference purposes.


def _device(kind: Any, index: Any = None) -> str:
    return str(kind) if index is None else f"{kind}:{int(index)}"


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # numpy's protocol-2 pickles smuggle raw bytes as latin1 text; nothing else is needed.
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise _Malformed("unexpected _codecs.encode call")
    return text.encode("latin-1")


def _defaultdict(default_factory: Any = None, *args: Any) -> dict:
    return dict(*args)  # only omegaconf's resolver cache uses it; drop the factory.


# --------------------------------------------------------------------------- omegaconf
class _OmegaObject:
    """Inert holder for the ``__dict__`` state of a pickled omegaconf object."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise _Malformed(f"unexpected {type(self).__name__} state")
        self.state = state


class _DictConfig(_OmegaObject):
    pass


class _ListConfig(_OmegaObject):
    pass


class _OmegaNode(_OmegaObject):
    pass


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # Protocol 0/1 pickles create plain objects this way; only our stand-ins qualify.
    if not (isinstance(cls, type) and issubclass(cls, _OmegaObject)) or state is not None:
        raise _Malformed("copyreg._reconstructor used on a non-omegaconf class")
    return cls.__new__(cls)


def _build_allow_list() -> dict[tuple[str, str], Any]:
    untyped = _Token("storage", "UntypedStorage", np.dtype(np.uint8))
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): _Function(_defaultdict),
        ("torch._utils", "_rebuild_tensor"): _Function(_rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v2"): _Function(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_tensor_v3"): _Function(_rebuild_tensor_v3),
        ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Function(_rebuild_parameter),
        ("torch.storage", "UntypedStorage"): untyped,
        ("torch", "UntypedStorage"): untyped,
        ("torch.storage", "TypedStorage"): _Token("storage", "TypedStorage"),
        ("torch", "Size"): tuple,
        ("torch", "device"): _Function(_device),
        ("_codecs", "encode"): _Function(_codecs_encode),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("typing", "Any"): _Token("typing", "Any"),
        ("copyreg", "_reconstructor"): _Function(_copyreg_reconstructor),
        ("omegaconf.dictconfig", "DictConfig"): _DictConfig,
        ("omegaconf.listconfig", "ListConfig"): _ListConfig,
        ("omegaconf.base", "Metadata"): _OmegaObject,
        ("omegaconf.base", "ContainerMetadata"): _OmegaObject,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _Token("storage", name, _TORCH_DTYPES[dtype])
    for name, dtype in _TORCH_DTYPES.items():
        allowed[("torch", name)] = _Token("dtype", name, dtype)
    for node in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                 "EnumNode", "ValueNode", "BytesNode", "PathNode"):
        allowed[("omegaconf.nodes", node)] = _OmegaNode
    for core in ("numpy.core", "numpy._core"):
        allowed[(core + ".multiarray", "_reconstruct")] = _np_multiarray._reconstruct
        allowed[(core + ".multiarray", "scalar")] = _np_multiarray.scalar
        # pickle protocol 5 stores arrays as out-of-band-capable buffers
        allowed[(core + ".numeric", "_frombuffer")] = _Function(_np_numeric._frombuffer)
    # Type objects only appear as omegaconf type annotations; calling them is harmless.
    # (bytes/bytearray are left out: bytearray(10**12) would be a cheap memory bomb.)
    for typ in (dict, list, tuple, set, frozenset, int, float, complex, bool, str, slice,
                object):
        allowed[("builtins", typ.__name__)] = typ
    return allowed


_ALLOWED = _build_allow_list()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only from ``_ALLOWED`` and keeps storages lazy."""

    def __init__(self, file: Any, path: str, legacy: bool = False) -> None:
        super().__init__(file, encoding="utf-8")  # same text decoding as torch.load
        self.path, self.legacy = path, legacy
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 era names (__builtin__.long, ...) are mapped the way pickle itself would.
        mod, nam = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        mod = _compat_pickle.IMPORT_MAPPING.get(mod, mod)
        obj = _ALLOWED.get((mod, nam))
        if obj is None:
            shown = f"{module}.{name}"[:200]
            raise UnsafeCheckpointError(
                f"refusing to load {self.path}: pickled global {shown!r} is not on the "
                "allow-list (popt_jax never executes pickled code)")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5:
            raise _Malformed(f"unexpected persistent id {str(pid)[:80]!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise _Malformed(f"unsupported persistent id type {str(kind)[:40]!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _Token) or storage_type.dtype is None \
                or storage_type.kind != "storage":
            raise _Malformed(f"storage {key!r} has no usable element type")
        root = self.storages.setdefault(key, _StorageRef(key, storage_type.dtype))
        view = pid[5] if self.legacy and len(pid) > 5 else None
        if view is None:
            return root
        _view_key, offset, size = view  # legacy storage views: a slice of the root storage
        return _StorageRef(key, storage_type.dtype, (int(offset), int(size)))


# --------------------------------------------------------------------------- tensors
def _typed_storage(raw: bytes, dtype: np.dtype, big_endian: bool, what: str) -> np.ndarray:
    if len(raw) % dtype.itemsize:
        raise _Malformed(f"{what} has {len(raw)} bytes, not a multiple of {dtype.itemsize}")
    arr = np.frombuffer(raw, dtype=dtype)
    if big_endian and dtype.itemsize > 1:
        # Swap via unsigned ints: works for bfloat16/float8, which lack a '>' variant.
        unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
        arr = np.frombuffer(raw, dtype=f">u{unit}").astype(f"=u{unit}").view(dtype)
    return arr


def _materialize(t: _PendingTensor, storage: np.ndarray, what: str,
                 budget: _Budget | None = None) -> np.ndarray:
    if t.storage.view is not None:
        start, length = t.storage.view
        storage = storage[start:start + length]
    if t.offset < 0 or min(t.size + t.stride, default=0) < 0:
        raise _Malformed(f"tensor on {what} has a negative size, stride or offset")
    if 0 in t.size:
        return np.zeros(t.size, dtype=t.dtype)
    needed = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True)) + 1
    if needed > storage.size:
        raise _Malformed(f"{what} holds {storage.size} elements but a tensor of shape "
                         f"{t.size} (offset {t.offset}, stride {t.stride}) needs {needed}")
    if budget is not None:
        budget.take(int(np.prod(t.size, dtype=object)) * t.dtype.itemsize,
                    f"tensor of shape {t.size} on {what}")
    view = np.lib.stride_tricks.as_strided(
        storage[t.offset:], shape=t.size,
        strides=[s * t.dtype.itemsize for s in t.stride], writeable=False)
    return view.copy()  # own C-contiguous memory, detached from shared storages


def _finalize(obj: Any, tensor: Any, memo: dict[int, Any]) -> Any:
    """Replace pending tensors and omegaconf stand-ins by arrays and plain containers."""
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _PendingTensor):
        out = memo[id(obj)] = tensor(obj)
    elif isinstance(obj, (_DictConfig, _ListConfig)):
        content = obj.state.get("_content")
        if content is None or isinstance(content, str):  # None / '???' / '${interp}'
            out = content
        elif isinstance(obj, _DictConfig) and isinstance(content, dict):
            out = memo[id(obj)] = {}
            for k, v in content.items():
                out[_finalize(k, tensor, memo)] = _finalize(v, tensor, memo)
        elif isinstance(obj, _ListConfig) and isinstance(content, list):
            out = memo[id(obj)] = []
            out.extend(_finalize(v, tensor, memo) for v in content)
        else:
            raise _Malformed(f"unexpected omegaconf content {type(content).__name__}")
    elif isinstance(obj, _OmegaNode):
        out = _finalize(obj.state.get("_val"), tensor, memo)
    elif isinstance(obj, _Token) and obj.kind == "dtype":
        out = obj.dtype  # a pickled torch.float32 value becomes numpy's float32 dtype
    elif type(obj) in (dict, collections.OrderedDict):
        out = memo[id(obj)] = type(obj)()
        for k, v in obj.items():
            out[_finalize(k, tensor, memo)] = _finalize(v, tensor, memo)
    elif type(obj) is list:
        out = memo[id(obj)] = []
        out.extend(_finalize(v, tensor, memo) for v in obj)
    elif type(obj) is tuple:
        out = tuple(_finalize(v, tensor, memo) for v in obj)
    else:
        out = obj
    memo[id(obj)] = out
    return out


# --------------------------------------------------------------------------- loaders
# What a malformed (not hostile) file can raise while being decoded.  MemoryError is
# included because absurd shapes (or a checkpoint bigger than RAM) end up there.
_DATA_ERRORS = (_Malformed, pickle.UnpicklingError, zipfile.BadZipFile, zlib.error, EOFError,
                struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError,
                OverflowError, RecursionError, MemoryError)


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        # torch names the top folder after the file it first saved to, so search for it.
        pkl = sorted((n for n in names if n == "data.pkl"
                      or (n.endswith("/data.pkl") and n.count("/") == 1)), key=len)
        if not pkl:
            raise _Malformed("zip archive has no <archive>/data.pkl record")
        prefix = pkl[0][: -len("data.pkl")]
        big = (prefix + "byteorder" in names
               and archive.read(prefix + "byteorder").strip() == b"big")
        budget = _Budget(os.path.getsize(path))
        budget.take(archive.getinfo(pkl[0]).file_size, "data.pkl")
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pkl[0])), path)
        result = unpickler.load()
        cache: dict[tuple[str, str], np.ndarray] = {}
        read: set[str] = set()

        def tensor(t: _PendingTensor) -> np.ndarray:
            record = f"{prefix}data/{t.storage.key}"
            # Keyed by dtype too: v3 tensors view a byte storage as their own dtype.
            if (record, t.dtype.str) not in cache:
                if record not in names:
                    raise _Malformed(f"storage record {record!r} referenced by data.pkl is missing")
                if record not in read:  # the declared size, checked before decompressing
                    budget.take(archive.getinfo(record).file_size, f"storage {record!r}")
                    read.add(record)
                cache[record, t.dtype.str] = _typed_storage(
                    archive.read(record), t.dtype, big, f"storage {record!r}")
            return _materialize(t, cache[record, t.dtype.str], f"storage {record!r}", budget)

        return _finalize(result, tensor, {})


def _load_legacy(path: str, blob: bytes) -> Any:
    # Decode from memory: a file object would let a bogus length field make the
    # unpickler allocate that many bytes before noticing the data is short.
    f, view = io.BytesIO(blob), memoryview(blob)
    budget = _Budget(len(blob))
    header = _RestrictedUnpickler(f, path)
    try:
        magic = header.load()
    except CheckpointError:
        raise
    except _DATA_ERRORS:
        magic = None  # random bytes or text: report the format, not the pickle error
    if type(magic) is not int or magic != _LEGACY_MAGIC:  # could be any pickled object
        raise _Malformed("not a PyTorch checkpoint (neither a zip archive nor legacy magic)")
    version = header.load()
    if type(version) is not int or version != _LEGACY_PROTOCOL:
        raise _Malformed("unsupported legacy protocol version")
    header.load()  # sys info; legacy storages are always written little-endian
    unpickler = _RestrictedUnpickler(f, path, legacy=True)
    result = unpickler.load()
    keys = _RestrictedUnpickler(f, path).load()
    data: dict[str, memoryview] = {}
    for key in keys:  # each storage: int64 little-endian element count, then raw bytes
        ref = unpickler.storages.get(str(key))
        if ref is None:
            raise _Malformed(f"legacy storage {key!r} is not referenced by the pickle")
        (numel,) = struct.unpack("<q", f.read(8))
        start, nbytes = f.tell(), numel * ref.dtype.itemsize
        if numel < 0 or start + nbytes > len(blob):
            raise _Malformed(f"legacy storage {key!r} is truncated")
        data[ref.key] = view[start:start + nbytes]  # zero-copy; arrays copy on materialise
        f.seek(start + nbytes)

    def tensor(t: _PendingTensor) -> np.ndarray:
        what = f"legacy storage {t.storage.key!r}"
        if t.storage.key not in data:
            raise _Malformed(f"{what} is missing")
        return _materialize(t, _typed_storage(data[t.storage.key], t.dtype, False, what), what,
                            budget)

    return _finalize(result, tensor, {})


def load_pth(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` checkpoint with tensors as NumPy arrays.

    Args:
        path: A zip-format (torch >= 1.6) or legacy-format checkpoint.

    Returns:
        The pickled object; tensors (and ``nn.Parameter``) become ``numpy.ndarray``
        with their dtype and shape, omegaconf configs become plain ``dict``/``list``,
        ``torch.Size`` becomes ``tuple`` and ``torch.device`` becomes ``str``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: The pickle references a global outside the allow-list.
        CheckpointError: The file is truncated, corrupt or uses an unsupported feature.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "checkpoint not found", path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            blob = f.read()
        if blob.startswith(b"PK"):
            raise _Malformed("corrupt or truncated zip archive")
        return _load_legacy(path, blob)
    except CheckpointError:
        raise
    except _DATA_ERRORS as exc:
        detail = str(exc) if isinstance(exc, _Malformed) else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"cannot load {path}: {detail}") from exc


# --------------------------------------------------------------------------- safetensors
_ML_DTYPES = ("BF16", "F8_E4M3", "F8_E5M2")
_ST_DTYPES = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
              "F8_E5M2": ml_dtypes.float8_e5m2, "F64": np.float64, "F32": np.float32,
              "F16": np.float16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16,
              "U8": np.uint8, "BOOL": np.bool_, "C64": np.complex64}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    # Fallback for safetensors releases whose numpy backend lacks bf16/float8; it is only
    # used for files that declare such a dtype and is as strict as the reference reader.
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        body = f.read()
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if not any(v["dtype"] in _ML_DTYPES for v in entries.values()):
        raise ValueError("no bfloat16/float8 tensors; nothing for the fallback to do")
    out = {}
    for name, info in entries.items():
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if not 0 <= begin <= end <= len(body) or end - begin != dtype.itemsize * int(
                np.prod(shape, dtype=np.int64)):
            raise ValueError(f"tensor {name!r} has inconsistent data offsets")
        out[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).copy()
    return out


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a safetensors file as NumPy arrays (bfloat16 via ``ml_dtypes``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: The file is not valid safetensors.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "safetensors file not found", path)
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as first:  # the Rust binding raises its own error types
        try:
            return _read_safetensors(path)
        except Exception:
            raise CheckpointError(f"cannot load {path}: {type(first).__name__}: {first}") from first


def save_safetensors(tensors: dict[str, np.ndarray], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` atomically (``path + '.tmp'`` then ``os.replace``).

    A crash mid-write therefore never leaves a half-written file under ``path``.
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    tmp = path + ".tmp"
    arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}
    try:
        save_file(arrays, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
