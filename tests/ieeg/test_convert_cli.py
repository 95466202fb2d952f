"""`scripts/convert_weights.py` end to end: upstream checkpoints in, popt_jax checkpoints out.

The script runs in a subprocess, as a user would run it, so its exit code and the exact
stderr line are what is checked.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402  (tests/ is on sys.path via conftest rootdir)

from popt_jax.ieeg import convert  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "convert_weights.py")
POPT_CFG = {"name": "pt_model_custom", "position_encoding": "multi_subj_position_encoding",
            "n_head": 4, "n_layers": 2, "hidden_dim": 64, "input_dim": 32,
            "layer_activation": "gelu", "attention_weights": False, "use_token_cls_head": True}


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def small_popt_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "popt.pth"
    model = ref.randomize(ref.RefPopT(input_dim=32, hidden_dim=64, n_head=4, n_layers=2), 3)
    ref.save_upstream_checkpoint(model, path, POPT_CFG)
    return path, {k: v.numpy() for k, v in model.state_dict().items()}


def test_converts_upstream_checkpoint_and_reloads(small_popt_ckpt, tmp_path):
    path, want = small_popt_ckpt
    res = _run("--input", str(path), "--output", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "converted popt" in res.stdout and "total" in res.stdout
    out = tmp_path / "out" / "model.safetensors"
    assert out.exists() and (tmp_path / "out" / "config.json").exists()
    got = convert.to_state_dict(convert.load_popt(str(tmp_path / "out")))
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # The architecture (4 heads, not inferable from shapes) survives through config.json.
    assert convert.load_popt(str(tmp_path / "out")).config.n_heads == 4


def test_kind_mismatch_is_one_line(small_popt_ckpt, tmp_path):
    path, _ = small_popt_ckpt
    res = _run("--input", str(path), "--output", str(tmp_path / "o"), "--kind", "brainbert")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "not brainbert" in lines[0]
    assert not (tmp_path / "o" / "model.safetensors").exists()


def _hostile_pth(path) -> None:
    marker = str(path) + ".pwned"
    payload = (b"\x80\x02cposix\nsystem\nq\x00X" + len(f"touch {marker}").to_bytes(4, "little")
               + f"touch {marker}".encode() + b"\x85R.")
    # SHORT_BINUNICODE-free framing: BINUNICODE (X) + 4-byte length, TUPLE1, REDUCE, STOP.
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    return marker


def test_hostile_pickle_refused_with_one_line(tmp_path):
    bad = tmp_path / "evil.pth"
    marker = _hostile_pth(bad)
    res = _run("--input", str(bad), "--output", str(tmp_path / "o"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "posix.system" in lines[0] and str(bad) in lines[0]
    assert not os.path.exists(marker)
    assert not (tmp_path / "o").exists()


def test_truncated_and_wrong_shape_refused(small_popt_ckpt, tmp_path):
    path, want = small_popt_ckpt
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    res = _run("--input", str(cut), "--output", str(tmp_path / "o1"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert str(cut) in res.stderr

    sd = {k: torch.from_numpy(v.copy()) for k, v in want.items()}
    sd["cls_head.weight"] = torch.zeros(1, 63)
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": sd, "model_cfg": POPT_CFG}, wrong)
    res = _run("--input", str(wrong), "--output", str(tmp_path / "o2"))
    assert res.returncode == 2
    line = res.stderr.strip()
    assert "\n" not in line and "cls_head.weight (1, 63) vs model (1, 64)" in line
    assert not (tmp_path / "o2" / "model.safetensors").exists()


def test_pickle_helper_really_is_hostile(tmp_path):
    # Control: the payload above does run under plain pickle, so the refusal test means something.
    bad = tmp_path / "evil.pth"
    marker = _hostile_pth(bad)
    with zipfile.ZipFile(bad) as z:
        payload = z.read("archive/data.pkl")
    if not hasattr(os, "system"):
        pytest.skip("no os.system here")
    pickle.load(io.BytesIO(payload))
    assert os.path.exists(marker)
