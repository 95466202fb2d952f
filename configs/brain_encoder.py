"""Transformer brain encoder (Adeli, Sun & Kriegeskorte) on Algonauts 2023 data.

    # CPU default (< 5 min on 2 cores): a synthetic subject written under the workdir and a
    # small randomly initialised DINOv2-like backbone -- it checks the plumbing, not the science.
    python -m popt_jax.main --config configs/brain_encoder.py --workdir runs/brain_encoder

    # The real run: NSD subject 1 with the torch-hub DINOv2 ViT-B/14 weights (GPU advised).
    python -m popt_jax.main --config configs/brain_encoder.py --workdir runs/subj01 \\
        --config.data.root=/data/algonauts_2023_challenge_data --config.subject=1 \\
        --config.backbone_checkpoint=/ckpt/dinov2_vitb14_pretrain.pth

    # Upstream's other backbones (`features.kind`, its --backbone_arch): CLIP ViT-L/14 (open_clip
    # weights, 224 px) and ResNet-50 (torchvision weights, layer4; a 1x1 input projection to 768).
    python -m popt_jax.main --config configs/brain_encoder.py:clip --workdir runs/subj01_clip \
        --config.data.root=/data/algonauts_2023_challenge_data \
        --config.backbone_checkpoint=/ckpt/vit_large_patch14_clip_224.openai/open_clip_model.safetensors
    python -m popt_jax.main --config configs/brain_encoder.py:resnet50 --workdir runs/subj01_rn50 \
        --config.data.root=/data/algonauts_2023_challenge_data \
        --config.backbone_checkpoint=/ckpt/resnet50-0676ba61.pth
    # Without a checkpoint both variants use a small random stand-in of the same layout.

With a checkpoint the backbone's size comes from the file (and must be `backbone.expect`); the
`backbone.*` sizes below only shape the random stand-in. Outputs: `results.json`,
`metrics.jsonl`, `tensorboard/`, `checkpoints/`, `features/*.h5`, `predictions/`,
`submission/subjXX/{lh,rh}_pred_test.npy`, `submission_ridge/`, `figures/*.png`.
"""

from ml_collections import config_dict

VARIANTS = ("", "clip", "resnet50")


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """arg: '' (DINOv2, upstream's default), 'clip' or 'resnet50' (the backbone)."""
    arg = arg or ""
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; choose one of {VARIANTS}")
    config = config_dict.ConfigDict()
    config.job = "brain_encoder"
    config.workdir = ""  # default: runs/brain_encoder (or --workdir)
    config.seed = 0  # model init, 90/10 split, epoch order, dropout
    config.subject = 1  # NSD subject 1-8 (folder subjXX)
    config.num_devices = 0  # 0 = all devices in the data mesh

    config.data = config_dict.ConfigDict()
    config.data.root = ""  # Algonauts 2023 challenge data folder; "" = synthetic subject
    config.data.synthetic = config_dict.ConfigDict()
    config.data.synthetic.n_train = 300  # training images (with fMRI)
    config.data.synthetic.n_test = 40  # test images (no fMRI)
    config.data.synthetic.image_size = 112  # pixels; 112 = 8 x 14-pixel patches
    config.data.synthetic.lh_vertices = 320  # left-hemisphere vertices
    config.data.synthetic.rh_vertices = 300  # right-hemisphere vertices
    config.data.synthetic.snr_min = 0.5  # per-vertex signal/noise variance, drawn uniformly
    config.data.synthetic.snr_max = 2.0
    config.data.synthetic.plant = True  # False: responses are pure noise (a null check)
    config.data.synthetic.seed = 0
    config.data.synthetic.spatial = True  # each ROI driven by content at its own image place
    config.data.synthetic.test_fmri = True  # also write test fMRI + noise ceiling (post-release)
    config.data.split_file = ""  # an upstream idxs.npy to reuse its split ("" = make one)
    config.data.shuffle = True  # False: upstream's unshuffled split (its run >= 20)

    # DINOv2: torch-hub .pth or Hugging Face folder/safetensors; CLIP: open_clip .bin/.safetensors
    # (or a .pt state_dict); ResNet-50: torchvision resnet50-*.pth. "" = a random stand-in.
    config.backbone_checkpoint = ""
    config.backbone = config_dict.ConfigDict()
    # A checkpoint must be this size: "auto" = upstream's (DINOv2 vitb14, CLIP vitl14,
    # resnet50); "" = any; or vits14/vitb14/vitl14 (DINOv2), vitb16/vitl14 (CLIP), resnet50.
    config.backbone.expect = "auto"
    # The random stand-in used without a checkpoint (DINOv2 layout, much smaller than ViT-B):
    config.backbone.patch_size = 14
    config.backbone.embed_dim = 96  # = the decoder width (features are not projected)
    config.backbone.depth = 4
    config.backbone.num_heads = 4
    config.backbone.mlp_ratio = 4.0
    config.backbone.pretrain_grid = 6  # != the 8x8 input grid, so the bicubic resize runs
    config.backbone.output_dim = 0  # CLIP stand-in's projection width (0 = embed_dim)
    config.backbone.clip_act = "quick_gelu"  # CLIP MLP: OpenAI weights' QuickGELU, or "gelu"
    config.backbone.resnet_layers = "3,4,6,3"  # ResNet stand-in's Bottlenecks per stage
    config.backbone.resnet_width = 16  # ResNet stand-in's stem width (ResNet-50's is 64)
    config.backbone.dilation = False  # ResNet: layer4 dilated, not strided (upstream --dilation)
    config.backbone.seed = 0

    config.features = config_dict.ConfigDict()
    # Upstream's --backbone_arch: "dinov2_q" (DINOv2 attention queries), "dinov2" (DINOv2
    # tokens), "clip" (CLIP ViT tokens @ proj), "resnet50" (a ResNet-50 stage's feature map).
    config.features.kind = "dinov2_q"
    # Backbone block as upstream's --enc_output_layer: 1 = last block, 2 = the one before, ...
    # (ResNet-50: 1 = layer4, 2 = layer3, 3 = layer2, 4 = layer1).
    config.features.enc_output_layer = 1
    config.features.normalize = "imagenet"  # upstream's for every backbone; "openai" = CLIP's
    config.features.image_size = 0  # resize images to this square size first (0 = as stored)
    config.features.batch_size = 16  # images per extraction call
    config.features.compute_dtype = "float32"  # or "bfloat16" (accelerators)
    config.features.max_memory_gb = 4.0  # cached features kept in RAM below this size

    config.model = config_dict.ConfigDict()
    config.model.readout = "rois_all"  # "rois_all", "hemis" or "voxels"
    # Decoder width; 0 = the feature channels (ViTs), 768 for resnet50 (upstream's input_proj).
    config.model.hidden_dim = 0
    config.model.n_heads = 16  # cross-attention heads
    config.model.ff_dim = 1024  # FFN width
    config.model.dropout = 0.1
    config.model.grouped_readout = True  # readout by query groups (exact); False = dense
    config.init_decoder = ""  # upstream checkpoint.pth / decoder state_dict to start from

    config.train = config_dict.ConfigDict()
    config.train.lr = 5e-4  # AdamW
    config.train.weight_decay = 1e-4
    config.train.batch_size = 16
    config.train.epochs = 15
    config.train.grad_clip = 0.1  # global-norm clipping (0 = off)
    config.train.lr_drop = 100  # StepLR period in epochs (upstream's default: no drop in 15)
    config.train.lr_gamma = 0.5  # StepLR factor
    config.train.val_fraction = 0.1  # 90/10 split of the training images
    config.train.log_every = 20  # steps between progress lines
    config.train.keep_checkpoints = 2  # latest checkpoints kept (plus the best)

    config.eval = config_dict.ConfigDict()
    config.eval.batch_size = 64  # images per prediction call
    config.eval.ridge_features = "pooled"  # ridge baseline on "pooled" (mean over grid) or "flat"
    config.eval.attention_rois = "V1v,hV4,FFA-1,PPA,EBA,VWFA-1"  # queries drawn on images
    config.eval.attention_hemi = "lh"
    config.eval.n_attention_images = 3  # validation images with attention figures

    if arg == "clip":
        config.features.kind = "clip"
        config.features.image_size = 224  # ViT-L/14's position table is for 16x16 patches
        config.backbone.pretrain_grid = 16  # the stand-in's table, for 224 px as ViT-L/14's
    elif arg == "resnet50":
        config.features.kind = "resnet50"
    return config
