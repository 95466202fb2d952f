"""The CLIP and ResNet-50 backbones wired into the brain encoder: config variants, feature
cache keys, the decoder's ResNet input projection, a tiny `:resnet50` run with
`predict_images`, and a wrong checkpoint as one `error:` line from `popt_jax.main`."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reliability_util import assert_one_error, run_main  # noqa: E402
from test_brain_encoder_train import CONFIGS  # noqa: E402

from popt_jax.fmri import algonauts as A  # noqa: E402
from popt_jax.fmri import backbones, decoder, inputs, resnet  # noqa: E402
from popt_jax.fmri import feature_cache as BF  # noqa: E402
from popt_jax.fmri import predict as P  # noqa: E402
from popt_jax.fmri import synthetic_algonauts as S  # noqa: E402
from popt_jax.fmri import train as BT  # noqa: E402
from popt_jax.fmri import validate as V  # noqa: E402


def variant(arg=""):
    spec = importlib.util.spec_from_file_location("brain_encoder_config",
                                                  os.path.join(CONFIGS, "brain_encoder.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def small(arg):
    """A variant with small stand-ins (same layouts) for 56-pixel images."""
    c = variant(arg)
    c.backbone.embed_dim, c.backbone.depth, c.backbone.num_heads = 32, 1, 2
    c.backbone.pretrain_grid = 4  # CLIP: its 4x4 table = 56 px / 14
    c.backbone.resnet_layers, c.backbone.resnet_width = "1,1,1,1", 8
    c.features.image_size = 0
    return c


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("subj")
    S.write_synthetic_algonauts(root, S.SyntheticAlgonautsConfig(
        n_train=6, n_test=0, image_size=56, n_vertices=(20, 20)))
    return A.AlgonautsSubject(root, 1)


def test_variants_validate_and_pick_the_backbone():
    for arg, cls, kind in (("", "DinoV2", "dinov2_q"), ("clip", "ClipVision", "clip"),
                           ("resnet50", "ResNet", "resnet50")):
        c = variant(arg)
        V.validate("brain_encoder", c)
        assert c.features.kind == kind and backbones.family(kind) in cls.lower()
    assert variant("clip").features.image_size == 224  # ViT-L/14's grid, as upstream
    c = variant("resnet50")
    c.backbone.resnet_layers = "3,4,6"
    with pytest.raises(Exception, match="backbone.resnet_layers: must be 4 positive"):
        V.validate("brain_encoder", c)
    with pytest.raises(ValueError, match="unknown variant"):
        variant("vgg")


def test_cache_keys_differ_by_backbone_and_layer(subject, tmp_path):
    files = subject.train_images
    models = {arg: inputs.build_backbone(small(arg)) for arg in ("", "clip", "resnet50")}
    prints = {arg: fp for arg, (_, fp) in models.items()}
    assert len(set(prints.values())) == 3
    rn, fp = models["resnet50"]
    keys = {BF.cache_key(fp, "resnet50", b, files) for b in (-1, -2)}
    keys.add(BF.cache_key(prints["clip"], "clip", -1, files))
    keys.add(BF.cache_key(prints[""], "dinov2_q", -1, files))
    assert len(keys) == 4
    other = resnet.ResNet(rn.config, rngs=nnx.Rngs(1))  # same layout, other weights
    assert backbones.fingerprint(other) != fp
    for arg, kind, block, shape in (("resnet50", "resnet50", -2, (6, 128, 4, 4)),
                                    ("clip", "clip", -1, (6, 32, 4, 4))):
        model, fpr = models[arg]
        # one batch of all 6 images: the direct extraction below reuses the compiled program
        path = BF.cache_features(model, files, tmp_path / f"{arg}.h5", kind=kind, block=block,
                                 batch_size=6, backbone=fpr)
        got = BF.load_features(path)
        want = np.asarray(backbones.extract_features(model, subject.load_images("train"), kind,
                                                     block))
        assert got.shape == shape
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_clip_cache_refuses_wrong_image_size(subject, tmp_path):
    model, fp = inputs.build_backbone(variant("clip"))  # a 16x16 table: 224-pixel images
    with pytest.raises(Exception, match=r"takes 224x224 images .* got 56x56; resize the "
                                        r"images to 224 \(features.image_size\)"):
        BF.cache_features(model, subject.train_images, tmp_path / "c.h5", kind="clip")


def test_input_projection_is_upstreams_1x1_conv():
    torch = pytest.importorskip("torch")
    cfg = decoder.BrainEncoderConfig(hidden_dim=16, n_heads=2, ff_dim=32, readout="hemis",
                                     lh_vertices=5, rh_vertices=4, lh_queries=1, rh_queries=1,
                                     input_dim=40)
    with_proj = decoder.BrainEncoder(cfg, rngs=nnx.Rngs(0))
    sd = decoder.to_torch_state_dict(with_proj)
    assert sd["input_proj.weight"].shape == (16, 40, 1, 1) and sd["input_proj.bias"].shape == (16,)
    plain = decoder.BrainEncoder(decoder.BrainEncoderConfig(
        **{**cfg.__dict__, "input_dim": 0}), rngs=nnx.Rngs(5))
    decoder.from_torch_state_dict(plain, {k: v for k, v in sd.items()
                                          if not k.startswith("input_proj.")})
    feats = np.random.default_rng(0).standard_normal((2, 40, 3, 5)).astype(np.float32)
    projected = torch.nn.functional.conv2d(torch.tensor(feats), torch.tensor(
        sd["input_proj.weight"]), torch.tensor(sd["input_proj.bias"])).numpy()
    run = nnx.jit(lambda m, x: m(x))
    a, b = run(with_proj, feats), run(plain, projected)
    for k in ("lh", "rh", "attention"):
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=1e-5, rtol=1e-5)
    again = decoder.BrainEncoder(cfg, rngs=nnx.Rngs(9))
    decoder.from_torch_state_dict(again, sd)  # strict: input_proj.* are expected keys
    np.testing.assert_array_equal(np.asarray(run(again, feats)["lh"]), np.asarray(a["lh"]))


def test_tiny_resnet50_run_and_predict_images(tmp_path):
    c = small("resnet50")
    s = c.data.synthetic
    s.n_train, s.n_test, s.image_size, s.lh_vertices, s.rh_vertices = 40, 4, 56, 30, 30
    c.model.hidden_dim, c.model.n_heads, c.model.ff_dim = 32, 2, 32
    c.train.epochs, c.train.log_every, c.eval.n_attention_images = 1, 1000, 1
    results = BT.brain_encoder_job(c, tmp_path / "run")
    assert results["feature_shape"] == [256, 2, 2]  # layer4 of width 8: 8 * 8 * 4 channels
    assert results["model"]["input_dim"] == 256 and results["model"]["hidden_dim"] == 32
    # a 2x2 grid is coarser than the synthetic patchwork: no NaN in the attention statistics
    assert "NaN" not in (tmp_path / "run" / "results.json").read_text()
    folder = tmp_path / "run" / "synthetic_algonauts" / "subj01" / "test_split" / "test_images"
    out = P.predict_images(tmp_path / "run", folder, tmp_path / "pred", rois="V1v", top_k=2,
                           n_attention_images=1)
    sub = np.load(tmp_path / "pred" / "submission" / "subj01" / "lh_pred_test.npy")
    np.testing.assert_allclose(sub, np.load(tmp_path / "run" / "submission" / "subj01" /
                                            "lh_pred_test.npy"), rtol=1e-5, atol=1e-5)
    assert out["images"] == 4 and len(out["attention"]) == 1


def test_wrong_checkpoint_is_one_error_line(tmp_path):
    torch = pytest.importorskip("torch")
    ckpt = tmp_path / "resnet50-0676ba61.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, ckpt)
    res = run_main("--config", "configs/brain_encoder.py:clip", "--workdir", str(tmp_path / "w"),
                   f"--config.backbone_checkpoint={ckpt}", "--config.data.synthetic.n_train=8",
                   "--config.data.synthetic.n_test=0", "--config.data.synthetic.image_size=28")
    assert_one_error(res, str(ckpt), "not an open_clip ViT image tower")
