"""Tests for popt_jax.torch_pickle: torch-free, code-free checkpoint loading."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from popt_jax.core.torch_pickle import (
    CheckpointError,
    UnsafeCheckpointError,
    load_pth,
    load_safetensors,
    save_safetensors,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- fixtures
def _build_checkpoint() -> dict:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    base = torch.randn(6, 5)
    model = collections.OrderedDict(
        [
            ("enc.weight", torch.randn(4, 3)),
            ("enc.bias", torch.randn(4)),
            ("conv.weight", torch.randn(2, 3, 4, 5)),
            ("proj.weight_t", torch.randn(3, 7).t()),  # non-contiguous view
            ("base", base),
            ("slice", base[2:4, 1:]),  # shares base's storage, offset 11
            ("half", torch.randn(3, 2).half()),
            ("bf16", torch.randn(5).to(torch.bfloat16)),
            ("ids", torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4)),
            ("mask", torch.tensor([[True, False], [False, True]])),
            ("scalar", torch.tensor(2.5)),
            ("empty", torch.empty(0, 4)),
            ("i32", torch.tensor([1, -2, 3], dtype=torch.int32)),
            ("u8", torch.tensor([0, 255], dtype=torch.uint8)),
            ("f64", torch.randn(2, 2, dtype=torch.float64)),
        ]
    )
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optim = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=2, gamma=0.5)
    net(torch.randn(8, 3)).pow(2).mean().backward()
    optim.step()
    sched.step()
    ckpt = {
        "model": model,
        "param": torch.nn.Parameter(torch.ones(3)),
        "optim": optim.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 7,
        "extra": {"np_scalar": np.float64(1.25), "np_array": np.arange(4, dtype=np.int16),
                  "size": torch.Size([2, 3]), "dtype": torch.float16,
                  "device": torch.device("cuda", 1), "shared": [base, base]},
    }
    try:
        from omegaconf import OmegaConf
    except ImportError:
        pass
    else:
        ckpt["model_cfg"] = OmegaConf.create(_CFG)
    return ckpt


_CFG = {
    "name": "popt",
    "hidden_dim": 768,
    "dropout": 0.1,
    "use_cls": True,
    "pretrained": None,
    "layers": [1, 2.5, "three", None, False],
    "encoder": {"heads": 12, "sizes": [{"a": 1}, {"b": [2, 3]}], "nested": {"deep": "x"}},
}


@pytest.fixture(scope="module")
def ckpt_files(tmp_path_factory):
    """(expected object, zip checkpoint path, legacy checkpoint path)."""
    torch = pytest.importorskip("torch")
    obj = _build_checkpoint()
    root = tmp_path_factory.mktemp("ckpt")
    zpath, lpath = root / "model_ckpt.pth", root / "legacy.pth"
    torch.save(obj, zpath)
    torch.save(obj, lpath, _use_new_zipfile_serialization=False)
    return obj, zpath, lpath


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:  # bf16 -> f32 -> bf16 is exact
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def _assert_same(expected, got, where="root"):
    import torch

    if isinstance(expected, torch.dtype):
        assert got == np.dtype(str(expected).split(".")[-1]), where
    elif isinstance(expected, torch.device):
        assert got == str(expected), where
    elif isinstance(expected, torch.Tensor):
        want = _to_numpy(expected)
        assert isinstance(got, np.ndarray), where
        assert got.dtype == want.dtype, where
        assert got.shape == want.shape, where
        assert np.array_equal(got, want), where
    elif type(expected).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        assert got == OmegaConf.to_container(expected), where
    elif isinstance(expected, dict):
        assert type(got) is type(expected) or isinstance(got, dict), where
        assert list(got) == list(expected), where
        for k in expected:
            _assert_same(expected[k], got[k], f"{where}.{k}")
    elif isinstance(expected, (list, tuple)):
        assert type(got) is (tuple if isinstance(expected, tuple) else list), where
        assert len(got) == len(expected), where
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            _assert_same(e, g, f"{where}[{i}]")
    elif isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and np.array_equal(got, expected), where
    else:
        assert type(got) is type(expected) and got == expected, where


def _rewrite_zip(src: Path, dst: Path, drop=(), replace=None, rename=None) -> None:
    """Copy a zip checkpoint, optionally dropping, replacing or renaming records."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name in drop:
                continue
            data = replace.get(name, zin.read(name))
            zout.writestr(rename(name) if rename else name, data)


def _assert_one_line_error(exc_info, path) -> None:
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg, msg


# --------------------------------------------------------------------------- round trips
def test_round_trip_zip(ckpt_files):
    obj, zpath, _ = ckpt_files
    got = load_pth(zpath)
    _assert_same(obj, got)
    assert type(got["model"]) is collections.OrderedDict
    assert got["extra"]["size"] == (2, 3) and got["extra"]["device"] == "cuda:1"
    # one pickled tensor referenced twice stays one array, as it was one tensor
    assert got["extra"]["shared"][0] is got["extra"]["shared"][1]
    assert got["optim"]["state"][0]["step"].shape == ()


def test_views_are_copied_and_independent(ckpt_files):
    _, zpath, _ = ckpt_files
    model = load_pth(zpath)["model"]
    assert model["proj.weight_t"].flags.c_contiguous and model["proj.weight_t"].shape == (7, 3)
    np.testing.assert_array_equal(model["slice"], model["base"][2:4, 1:])
    model["slice"][...] = 0  # must not write through into "base"
    assert not np.all(model["base"][2:4, 1:] == 0)
    assert model["base"].flags.writeable


def test_omegaconf_config_becomes_plain(ckpt_files):
    pytest.importorskip("omegaconf")
    cfg = load_pth(ckpt_files[1])["model_cfg"]
    assert cfg == _CFG

    def walk(x):
        assert type(x) in (dict, list, int, float, bool, str, type(None)), type(x)
        for v in x.values() if isinstance(x, dict) else x if isinstance(x, list) else ():
            walk(v)

    walk(cfg)


def test_legacy_round_trip(ckpt_files):
    obj, _, lpath = ckpt_files
    _assert_same(obj, load_pth(lpath))


def test_renamed_archive_folder(ckpt_files, tmp_path):
    obj, zpath, _ = ckpt_files
    dst = tmp_path / "renamed.pth"
    _rewrite_zip(zpath, dst, rename=lambda n: "other_dir/" + n.split("/", 1)[1])
    _assert_same(obj, load_pth(dst))


@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_protocols(tmp_path, protocol, zip_format):
    torch = pytest.importorskip("torch")
    obj = {"w": torch.randn(3, 2).t(), "b": torch.randn(4).bfloat16(), "n": np.arange(5.0),
           "o": collections.OrderedDict(x=torch.tensor(1))}
    path = tmp_path / "p.pth"
    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
    _assert_same(obj, load_pth(path))


def test_newer_dtypes(tmp_path):
    torch = pytest.importorskip("torch")
    obj = {
        "u16": torch.tensor([1, 65535], dtype=torch.int32).to(torch.uint16),  # _rebuild_tensor_v3
        "f8": torch.tensor([0.5, -2.0]).to(torch.float8_e4m3fn),
        "c64": torch.randn(3, dtype=torch.complex64),
        "c128": torch.randn(2, 2, dtype=torch.complex128),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "i16": torch.tensor([-5, 5], dtype=torch.int16),
    }
    path = tmp_path / "d.pth"
    torch.save(obj, path)
    got = load_pth(path)
    assert got["u16"].dtype == np.uint16 and got["u16"].tolist() == [1, 65535]
    assert got["f8"].dtype == ml_dtypes.float8_e4m3fn
    assert got["f8"].astype(np.float32).tolist() == [0.5, -2.0]
    for k in ("c64", "c128", "i8", "i16"):
        _assert_same(obj[k], got[k], k)


def test_big_endian_archive(tmp_path):
    torch = pytest.importorskip("torch")
    obj = {"f": torch.randn(3, 2), "b": torch.randn(4).bfloat16(), "c": torch.randn(3, dtype=torch.cfloat),
           "i": torch.arange(5), "u": torch.tensor([1, 2], dtype=torch.uint8)}
    src, dst = tmp_path / "le.pth", tmp_path / "be.pth"
    torch.save(obj, src)
    units = {"0": 4, "1": 2, "2": 4, "3": 8, "4": 1}  # storage key -> byte-swap unit
    replace = {"le/byteorder": b"big"}
    with zipfile.ZipFile(src) as z:
        for key, unit in units.items():
            raw = np.frombuffer(z.read(f"le/data/{key}"), dtype=f"<u{unit}")
            replace[f"le/data/{key}"] = raw.astype(f">u{unit}").tobytes()
    _rewrite_zip(src, dst, replace=replace)
    _assert_same(obj, load_pth(dst))


# --------------------------------------------------------------------------- without torch
def test_loads_without_torch_or_omegaconf(ckpt_files):
    obj, zpath, lpath = ckpt_files
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['omegaconf'] = None\n"
        "from popt_jax.core.torch_pickle import load_pth\n"
        "for p in sys.argv[1:]:\n"
        "    ck = load_pth(p)\n"
        "    print(len(ck), len(ck['model']), ck['model']['bf16'].dtype, type(ck.get('model_cfg')).__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code, str(zpath), str(lpath)], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    cfg_type = "dict" if "model_cfg" in obj else "NoneType"
    line = f"{len(obj)} {len(obj['model'])} bfloat16 {cfg_type}"
    assert res.stdout.splitlines() == [line, line]


# --------------------------------------------------------------------------- hostile input
def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that would create ``marker`` if ever executed."""
    cmd = f"touch {marker}".encode()
    py = f"open({str(marker)!r}, 'w').close()".encode()

    def unicode(s: bytes) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s

    def short(s: bytes) -> bytes:
        return b"\x8c" + bytes([len(s)]) + s

    return {
        "os.system": b"\x80\x02cos\nsystem\n" + unicode(cmd) + b"\x85R.",
        "builtins.eval": b"\x80\x04" + short(b"builtins") + short(b"eval") + b"\x93"
        + unicode(py) + b"\x85R.",
        "subprocess.Popen": b"\x80\x04" + short(b"subprocess") + short(b"Popen") + b"\x93"
        + short(b"touch") + unicode(str(marker).encode()) + b"\x86\x85R.",
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_payloads_are_live(tmp_path, name):
    """Control: the hostile pickles really do run code under plain pickle."""
    marker = tmp_path / "pwned"
    result = pickle.loads(_payloads(marker)[name])
    if hasattr(result, "wait"):
        result.wait()
    assert marker.exists()


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_hostile_global_is_refused(tmp_path, name, container):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[name]
    path = tmp_path / "evil.pth"
    if container == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("evil/data.pkl", payload)
            z.writestr("evil/byteorder", b"little")
    else:
        path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_pth(path)
    _assert_one_line_error(info, path)
    assert f"'{name}'" in str(info.value) and "allow-list" in str(info.value)
    assert not marker.exists()


def test_hostile_global_nested_after_tensors(ckpt_files, tmp_path):
    _, zpath, _ = ckpt_files
    marker = tmp_path / "pwned"
    # A dict whose second value is the os.system call; the first is harmless.
    evil = (b"\x80\x02}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bcos\nsystem\n"
            + b"X" + struct.pack("<I", len(f"touch {marker}")) + f"touch {marker}".encode()
            + b"\x85Ru.")
    dst = tmp_path / "evil2.pth"
    _rewrite_zip(zpath, dst, replace={"model_ckpt/data.pkl": evil})
    with pytest.raises(UnsafeCheckpointError, match="'os.system'"):
        load_pth(dst)
    assert not marker.exists()


def test_pickle_cannot_tamper_with_loader_state(ckpt_files, tmp_path):
    """BUILD on allow-listed objects must not alter them for later loads."""
    _, zpath, _ = ckpt_files

    def short(s: bytes) -> bytes:
        return b"\x8c" + bytes([len(s)]) + s

    attacks = [
        # torch.FloatStorage.dtype = 'x' via BUILD with a slot-state tuple
        b"\x80\x04" + short(b"torch") + short(b"FloatStorage") + b"\x93N}"
        + short(b"dtype") + short(b"x") + b"s\x86b.",
        # torch._utils._rebuild_tensor_v2.fn = None
        b"\x80\x04" + short(b"torch._utils") + short(b"_rebuild_tensor_v2") + b"\x93N}"
        + short(b"fn") + b"Ns\x86b.",
    ]
    for i, payload in enumerate(attacks):
        path = tmp_path / f"tamper{i}.pth"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("t/data.pkl", payload)
        with pytest.raises(CheckpointError) as info:
            load_pth(path)
        _assert_one_line_error(info, path)
    assert load_pth(zpath)["model"]["enc.weight"].dtype == np.float32


# --------------------------------------------------------------------------- corrupt input
def test_truncated_zip(ckpt_files, tmp_path):
    data = ckpt_files[1].read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_pth(path)
    _assert_one_line_error(info, path)


def test_truncated_legacy(ckpt_files, tmp_path):
    data = ckpt_files[2].read_bytes()
    for cut in (len(data) // 3, len(data) - 10):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as info:
            load_pth(path)
        _assert_one_line_error(info, path)


def test_missing_storage(ckpt_files, tmp_path):
    path = tmp_path / "nostorage.pth"
    _rewrite_zip(ckpt_files[1], path, drop={"model_ckpt/data/1"})
    with pytest.raises(CheckpointError, match="model_ckpt/data/1") as info:
        load_pth(path)
    _assert_one_line_error(info, path)


def test_storage_too_short(ckpt_files, tmp_path):
    path = tmp_path / "short.pth"
    with zipfile.ZipFile(ckpt_files[1]) as z:
        raw = z.read("model_ckpt/data/0")
    _rewrite_zip(ckpt_files[1], path, replace={"model_ckpt/data/0": raw[:8]})
    with pytest.raises(CheckpointError, match="needs") as info:
        load_pth(path)
    _assert_one_line_error(info, path)


def test_missing_data_pkl(ckpt_files, tmp_path):
    path = tmp_path / "nopkl.pth"
    _rewrite_zip(ckpt_files[1], path, drop={"model_ckpt/data.pkl"})
    with pytest.raises(CheckpointError, match="data.pkl") as info:
        load_pth(path)
    _assert_one_line_error(info, path)


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(4096), b"hello world\n",
                                     b"\x80\x02K\x05.", b""])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_pth(path)
    _assert_one_line_error(info, path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pth(path)


# --------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "t": rng.standard_normal((4, 3)).astype(np.float32).T,  # non-contiguous input
        "h": rng.standard_normal(5).astype(np.float16),
        "b": rng.standard_normal(6).astype(ml_dtypes.bfloat16),
        "i": np.arange(-3, 3, dtype=np.int64),
        "m": np.array([True, False]),
        "s": np.asarray(np.float32(1.5)),
        "e": np.zeros((0, 2), dtype=np.float32),
    }
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"old contents")  # atomically replaced
    save_safetensors(tensors, path, metadata={"format": "np"})
    assert not (tmp_path / "weights.safetensors.tmp").exists()
    got = load_safetensors(path)
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert np.array_equal(got[k], v), k


def test_safetensors_bf16_fallback(tmp_path, monkeypatch):
    """Older safetensors releases cannot give bf16 to numpy; the header reader steps in."""
    import safetensors.numpy

    tensors = {"b": np.arange(6).reshape(2, 3).astype(ml_dtypes.bfloat16),
               "f": np.ones(3, np.float32), "s": np.asarray(np.int64(4))}
    path = tmp_path / "bf16.safetensors"
    save_safetensors(tensors, path)

    def unsupported(*args, **kwargs):
        raise TypeError("data type 'BF16' not understood")

    monkeypatch.setattr(safetensors.numpy, "load_file", unsupported)
    got = load_safetensors(path)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k
    # Without bf16 in the file the fallback declines and the original error is reported.
    plain = tmp_path / "plain.safetensors"
    save_safetensors({"f": np.ones(2, np.float32)}, plain)
    with pytest.raises(CheckpointError, match="BF16' not understood") as info:
        load_safetensors(plain)
    _assert_one_line_error(info, plain)


def test_safetensors_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors({"a": np.ones(2, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any error from the writer is fine
        save_safetensors({"a": np.array([object()], dtype=object)}, path)
    assert path.read_bytes() == before
    assert not (tmp_path / "w.safetensors.tmp").exists()


def test_safetensors_corrupt(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{")
    with pytest.raises(CheckpointError) as info:
        load_safetensors(path)
    _assert_one_line_error(info, path)
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")


def test_safetensors_from_torch_bf16(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    t = torch.randn(3, 2).bfloat16()
    path = tmp_path / "bf16.safetensors"
    safetensors_torch.save_file({"x": t}, str(path))
    got = load_safetensors(path)["x"]
    assert got.dtype == ml_dtypes.bfloat16 and np.array_equal(got, _to_numpy(t))
