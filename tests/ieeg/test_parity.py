"""JAX port vs a PyTorch statement of upstream, through upstream-format checkpoints.

Random-weight reference models (tests/torch_reference.py) are saved the way upstream's trainer
saves them (`model`, an OmegaConf `model_cfg`, real `optim`/`scheduler` states), loaded with
`popt_jax.convert`, and compared in float32 to max |diff| <= 1e-5 (SPEC section 5). The reverse
direction (JAX -> PyTorch state_dict), the safetensors export, strict-loading errors and a
torch-free load are covered too. Each reference model is built once per module.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_reference as R  # noqa: E402

from popt_jax.ieeg import (  # noqa: E402
    PopT,
    PopTClassifier,
    brainbert_embed,
    convert,  # noqa: E402
)

pytestmark = pytest.mark.torch

TOL = 1e-5  # float32 parity bound (SPEC section 5)

BRAINBERT_CFG = {"name": "masked_tf_model", "hidden_dim": 768, "layer_dim_feedforward": 3072,
                 "layer_activation": "gelu", "nhead": 12, "encoder_num_layers": 6,
                 "input_dim": 40}
POPT_CFG = {"name": "pt_model_custom", "position_encoding": "multi_subj_position_encoding",
            "n_head": 8, "n_layers": 6, "hidden_dim": 512, "input_dim": 768,
            "layer_activation": "gelu", "attention_weights": False, "use_token_cls_head": True}
DOWNSTREAM_CFG = {"name": "pt_downstream_model", "hidden_dim": 512, "upstream_cfg": POPT_CFG,
                  "upstream_path": "pretrained_popt_brainbert_stft.pth", "frozen_upstream": False}


def max_abs(a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# Whole-model jit so each comparison compiles once instead of dispatching op by op.
@functools.partial(nnx.jit, static_argnames=("return_attention",))
def run_popt(model, x, pad, coords, seq_id, return_attention=True):
    return model(x, pad, coords, seq_id, return_attention=return_attention)


@nnx.jit
def run_classifier(model, x, pad, coords, seq_id):
    return model(x, pad, coords, seq_id)


@nnx.jit
def run_brainbert(model, spec, pad):
    return model(spec, pad), model.spec_prediction_head(model(spec, pad))


# ----------------------------------------------------------------------------------------------
# Fixtures: one reference per model kind, saved once
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("parity")


@pytest.fixture(scope="module")
def bb_ref():
    return R.randomize(R.RefBrainBERT(), seed=0)


@pytest.fixture(scope="module")
def bb_ckpt(bb_ref, tmp):
    path = tmp / "stft_large_pretrained.pth"
    R.save_upstream_checkpoint(bb_ref, path, BRAINBERT_CFG)
    return path


@pytest.fixture(scope="module")
def bb_jax(bb_ckpt):
    return convert.load_brainbert(str(bb_ckpt))


@pytest.fixture(scope="module")
def popt_ref():
    return R.randomize(R.RefPopT(), seed=1)


@pytest.fixture(scope="module")
def popt_ckpt(popt_ref, tmp):
    path = tmp / "pretrained_popt_brainbert_stft.pth"
    R.save_upstream_checkpoint(popt_ref, path, POPT_CFG)
    return path


@pytest.fixture(scope="module")
def popt_jax(popt_ckpt):
    return convert.load_popt(str(popt_ckpt))


@pytest.fixture(scope="module")
def popt_inputs():
    """B=3 with 8, 5 and 2 real electrodes; coords 0..200, seq ids 0/1, one negative coord."""
    rng = np.random.default_rng(2)
    b, n = 3, 8
    emb = rng.standard_normal((b, n, 768)).astype(np.float32)
    coords = rng.integers(0, 201, (b, n, 3)).astype(np.int64)
    coords[0, 3, 1] = -7  # torch indexing wraps to pe[4993]; the port must do the same
    seq_id = rng.integers(0, 2, (b, n)).astype(np.int64)
    pad = np.arange(n)[None, :] >= np.array([[8], [5], [2]])
    emb[pad] = 30.0 * rng.standard_normal((int(pad.sum()), 768))  # garbage under the padding
    return emb, pad, coords, seq_id


def ref_popt_forward(model, emb, pad, coords, seq_id):
    """Upstream call convention: CLS row of ones prepended, mask with the CLS column."""
    b = emb.shape[0]
    inputs = torch.cat([torch.ones(b, 1, emb.shape[-1]), torch.from_numpy(emb)], dim=1)
    mask = torch.cat([torch.zeros(b, 1, dtype=torch.bool), torch.from_numpy(pad)], dim=1)
    with torch.no_grad():
        return model.eval()(inputs, mask, torch.from_numpy(coords), torch.from_numpy(seq_id))


def jax_popt_forward(model, emb, pad, coords, seq_id):
    return run_popt(model, jnp.asarray(emb), jnp.asarray(pad), jnp.asarray(coords, jnp.int32),
                    jnp.asarray(seq_id, jnp.int32))


def assert_popt_outputs_match(ref_out, out):
    hidden, cls_logits, token_logits, weights = ref_out
    # The reference runs without torch's fused path, so padded rows are real numbers too.
    assert max_abs(out.hidden, hidden) <= TOL
    assert max_abs(out.cls_logits, cls_logits) <= TOL
    assert max_abs(out.token_logits, token_logits) <= TOL
    assert len(out.attention) == len(weights) == 6
    for w_jax, w_ref in zip(out.attention, weights, strict=True):
        assert max_abs(w_jax, w_ref) <= TOL


# ----------------------------------------------------------------------------------------------
# BrainBERT
# ----------------------------------------------------------------------------------------------


def test_brainbert_checkpoint_layout(bb_ref, bb_ckpt, bb_jax):
    saved = torch.load(bb_ckpt, weights_only=False)
    assert set(saved) == {"model", "model_cfg", "optim", "scheduler"}
    assert type(saved["model_cfg"]).__name__ == "DictConfig"
    assert bb_jax.config.n_heads == 12 and bb_jax.config.n_layers == 6
    assert saved["model"]["input_encoding.positional_encoding.pe"].shape == (1, 5000, 768)


def test_brainbert_hidden_states(bb_ref, bb_jax):
    rng = np.random.default_rng(3)
    spec = rng.standard_normal((2, 186, 40)).astype(np.float32)
    pad = np.zeros((2, 186), bool)
    pad[1, 150:] = True
    with torch.no_grad():
        want = bb_ref(torch.from_numpy(spec), torch.from_numpy(pad))
        want_spec = bb_ref.spec_prediction_head(want)
    hidden, pred = run_brainbert(bb_jax, jnp.asarray(spec), jnp.asarray(pad))
    assert hidden.shape == (2, 186, 768)
    assert max_abs(hidden, want) <= TOL
    assert max_abs(pred, want_spec) <= TOL


def test_brainbert_embed_from_raw_windows(bb_ref, bb_jax):
    rng = np.random.default_rng(4)
    wav = rng.standard_normal((3, 10240)).astype(np.float32)
    wav[1] = np.cumsum(wav[1]) / 30.0  # a brown-noise electrode beside white ones
    want = R.ref_brainbert_embed(bb_ref, wav)
    got = np.asarray(brainbert_embed(bb_jax, jnp.asarray(wav)))
    assert got.shape == want.shape == (3, 768)
    assert max_abs(got, want) <= TOL


# ----------------------------------------------------------------------------------------------
# PopT
# ----------------------------------------------------------------------------------------------


def test_popt_checkpoint_layout(popt_ref, popt_jax):
    assert len(popt_ref.state_dict()) == 87
    assert isinstance(popt_jax, PopT) and popt_jax.config.use_token_cls_head
    assert popt_jax.config.n_heads == 8 and popt_jax.config.n_layers == 6


def test_popt_outputs_and_attention(popt_ref, popt_jax, popt_inputs):
    assert_popt_outputs_match(ref_popt_forward(popt_ref, *popt_inputs),
                              jax_popt_forward(popt_jax, *popt_inputs))


def test_popt_negative_coordinate_wraps(popt_ref, popt_jax, popt_inputs):
    # The wrap-around really is exercised: pe[-7] differs from pe[7] and from clipping to 0.
    emb, pad, coords, seq_id = popt_inputs
    base = jax_popt_forward(popt_jax, *popt_inputs).hidden
    for alt in (7, 0, 4993):
        c = coords.copy()
        c[0, 3, 1] = alt
        h = jax_popt_forward(popt_jax, emb, pad, c, seq_id).hidden
        if alt == 4993:
            assert max_abs(h, base) == 0.0
        else:
            assert max_abs(h[0], base[0]) > 1e-3


def test_popt_classifier(popt_ref, popt_inputs, tmp):
    ref = R.RefPopTDownstream(upstream=copy.deepcopy(popt_ref))
    R.randomize(ref.linear_out, seed=5)
    ref.eval()
    path = tmp / "finetuned.pth"
    R.save_upstream_checkpoint(ref, path, DOWNSTREAM_CFG)
    model = convert.load_popt(str(path))
    assert isinstance(model, PopTClassifier)
    emb, pad, coords, seq_id = popt_inputs
    b = emb.shape[0]
    with torch.no_grad():
        want = ref(torch.cat([torch.ones(b, 1, 768), torch.from_numpy(emb)], dim=1),
                   torch.cat([torch.zeros(b, 1, dtype=torch.bool), torch.from_numpy(pad)], 1),
                   torch.from_numpy(coords), torch.from_numpy(seq_id))
    got = run_classifier(model, jnp.asarray(emb), jnp.asarray(pad),
                         jnp.asarray(coords, jnp.int32), jnp.asarray(seq_id, jnp.int32))
    assert got.shape == (3, 1)
    assert max_abs(got, want) <= TOL
    # A bare state_dict (no model_cfg) of the same model loads to the same thing.
    bare = tmp / "finetuned_bare.pth"
    torch.save(ref.state_dict(), bare)
    again = run_classifier(convert.load_popt(str(bare)), jnp.asarray(emb), jnp.asarray(pad),
                           jnp.asarray(coords, jnp.int32), jnp.asarray(seq_id, jnp.int32))
    assert max_abs(again, got) == 0.0


# ----------------------------------------------------------------------------------------------
# JAX -> PyTorch, safetensors
# ----------------------------------------------------------------------------------------------


def test_popt_state_dict_loads_back_into_torch(popt_ref, popt_jax, popt_inputs):
    sd = convert.popt_to_state_dict(popt_jax)
    assert len(sd) == 87
    fresh = R.RefPopT()
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                          strict=True)
    original = popt_ref.state_dict()
    for key, value in sd.items():
        np.testing.assert_array_equal(value, original[key].numpy(), err_msg=key)
    want = ref_popt_forward(popt_ref, *popt_inputs)
    got = ref_popt_forward(fresh, *popt_inputs)
    assert max_abs(got[0], want[0]) == 0.0
    assert_popt_outputs_match(got, jax_popt_forward(popt_jax, *popt_inputs))


def test_brainbert_state_dict_loads_back_into_torch(bb_ref, bb_jax):
    sd = convert.brainbert_to_state_dict(bb_jax)
    original = bb_ref.state_dict()
    assert set(sd) == set(original)
    fresh = R.RefBrainBERT()
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                          strict=True)
    for key, value in sd.items():
        np.testing.assert_array_equal(value, original[key].numpy(), err_msg=key)


def test_export_safetensors_round_trip(popt_ref, popt_jax, popt_inputs, tmp):
    from safetensors.torch import load_file

    folder = tmp / "export_popt"
    path = folder / "model.safetensors"
    convert.export_safetensors(popt_jax, str(path))
    assert (folder / "config.json").exists()
    json.loads((folder / "config.json").read_text())
    want = jax_popt_forward(popt_jax, *popt_inputs)
    for source in (path, folder):  # the file, or the directory holding it
        model = convert.load_popt(str(source))
        got = jax_popt_forward(model, *popt_inputs)
        assert max_abs(got.hidden, want.hidden) == 0.0
        assert max_abs(got.token_logits, want.token_logits) == 0.0
    # PyTorch reads the export directly.
    fresh = R.RefPopT()
    fresh.load_state_dict(load_file(str(path)), strict=True)
    assert_popt_outputs_match(ref_popt_forward(fresh, *popt_inputs), want)
    # Without config.json the architecture is inferred from the shapes.
    os.remove(folder / "config.json")
    inferred = convert.load_popt(str(path))
    assert max_abs(jax_popt_forward(inferred, *popt_inputs).hidden, want.hidden) == 0.0


def test_export_safetensors_brainbert(bb_jax, tmp):
    from safetensors.torch import load_file

    path = tmp / "export_bb" / "model.safetensors"
    convert.export_safetensors(bb_jax, str(path))
    fresh = R.RefBrainBERT()
    fresh.load_state_dict(load_file(str(path)), strict=True)
    back = convert.load_brainbert(str(path))
    spec = jnp.asarray(np.random.default_rng(6).standard_normal((1, 186, 40)), jnp.float32)
    pad = jnp.zeros((1, 186), bool)
    assert max_abs(run_brainbert(back, spec, pad)[0], run_brainbert(bb_jax, spec, pad)[0]) == 0


# ----------------------------------------------------------------------------------------------
# Strict loading
# ----------------------------------------------------------------------------------------------


def _save_variant(popt_ref, tmp, name, edit):
    sd = {k: v.clone() for k, v in popt_ref.state_dict().items()}
    edit(sd)
    path = tmp / f"{name}.pth"
    from omegaconf import OmegaConf

    torch.save({"model": sd, "model_cfg": OmegaConf.create(POPT_CFG)}, path)
    return path


@pytest.mark.parametrize("name, edit, needle", [
    ("wrong_shape",
     lambda sd: sd.__setitem__("transformer_encoder.layers.3.linear1.bias",
                               torch.zeros(2047)),
     "transformer_encoder.layers.3.linear1.bias"),
    ("missing",
     lambda sd: sd.pop("transformer_encoder.layers.2.norm1.bias"),
     "transformer_encoder.layers.2.norm1.bias"),
    ("extra",
     lambda sd: sd.__setitem__("transformer_encoder.layers.1.extra_gate.weight",
                               torch.zeros(4, 4)),
     "transformer_encoder.layers.1.extra_gate.weight"),
])
def test_strict_loading_errors(popt_ref, tmp, name, edit, needle):
    path = _save_variant(popt_ref, tmp, name, edit)
    with pytest.raises(convert.ConversionError) as info:
        convert.load_popt(str(path))
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_non_strict_loading_tolerates_extra_and_missing(popt_ref, tmp, popt_jax, popt_inputs):
    path = _save_variant(popt_ref, tmp, "extra_ok",
                         lambda sd: sd.__setitem__("some_unused.weight", torch.zeros(3)))
    model = convert.load_popt(str(path), strict=False)
    got = jax_popt_forward(model, *popt_inputs)
    assert max_abs(got.hidden, jax_popt_forward(popt_jax, *popt_inputs).hidden) == 0.0
    # A wrong shape is an error whatever the strictness.
    path = _save_variant(popt_ref, tmp, "wrong_shape_lenient",
                         lambda sd: sd.__setitem__("cls_head.bias", torch.zeros(1, 1)))
    with pytest.raises(convert.ConversionError, match="cls_head.bias"):
        convert.load_popt(str(path), strict=False)


def test_wrong_model_kind(popt_ckpt, bb_ckpt):
    with pytest.raises(convert.ConversionError):
        convert.load_brainbert(str(popt_ckpt))
    with pytest.raises(convert.ConversionError):
        convert.load_popt(str(bb_ckpt))


# ----------------------------------------------------------------------------------------------
# Without torch
# ----------------------------------------------------------------------------------------------


def test_loading_without_torch(popt_ref, popt_ckpt, bb_ref, bb_ckpt, popt_inputs, tmp):
    emb, pad, coords, seq_id = popt_inputs
    hidden, cls_logits, token_logits, weights = ref_popt_forward(popt_ref, *popt_inputs)
    spec = np.random.default_rng(7).standard_normal((1, 186, 40)).astype(np.float32)
    with torch.no_grad():
        bb_hidden = bb_ref(torch.from_numpy(spec), torch.zeros(1, 186, dtype=torch.bool))
    ref_file = tmp / "reference_outputs.npz"
    np.savez(ref_file, emb=emb, pad=pad, coords=coords, seq_id=seq_id, hidden=hidden.numpy(),
             cls_logits=cls_logits.numpy(), token_logits=token_logits.numpy(),
             attention_last=weights[-1].numpy(), spec=spec, bb_hidden=bb_hidden.numpy())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import jax.numpy as jnp
        from popt_jax.ieeg import convert
        ref = np.load({str(ref_file)!r})
        from flax import nnx
        model = convert.load_popt({str(popt_ckpt)!r})
        run = nnx.jit(lambda m, *a: m(*a, return_attention=True))
        out = run(model, jnp.asarray(ref["emb"]), jnp.asarray(ref["pad"]),
                  jnp.asarray(ref["coords"], jnp.int32), jnp.asarray(ref["seq_id"], jnp.int32))
        diffs = {{
            "hidden": np.abs(np.asarray(out.hidden) - ref["hidden"]).max(),
            "cls": np.abs(np.asarray(out.cls_logits) - ref["cls_logits"]).max(),
            "token": np.abs(np.asarray(out.token_logits) - ref["token_logits"]).max(),
            "attention": np.abs(np.asarray(out.attention[-1]) - ref["attention_last"]).max(),
        }}
        bb = convert.load_brainbert({str(bb_ckpt)!r})
        h = nnx.jit(lambda m, *a: m(*a))(bb, jnp.asarray(ref["spec"]), jnp.zeros((1, 186), bool))
        diffs["brainbert"] = np.abs(np.asarray(h) - ref["bb_hidden"]).max()
        assert sys.modules["torch"] is None
        print(diffs)
        bad = {{k: float(v) for k, v in diffs.items() if not v <= {TOL}}}
        sys.exit(f"outputs differ: {{bad}}" if bad else 0)
    """)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=str(tmp),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
