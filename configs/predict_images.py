"""A trained brain encoder on any folder of images: predictions, attention maps, top images.

    python -m popt_jax.main --config configs/predict_images.py --workdir runs/pred \\
        --config.run=runs/brain_encoder --config.images=runs/brain_encoder/synthetic_algonauts/subj01/test_split/test_images

Outputs: `predictions/{lh,rh}_pred.npy`, `submission/` (when the folder is the subject's test
split), `figures/attention_*.png`, `figures/top_images.png`, `results.json`.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.job = "predict_images"
    config.workdir = ""  # default: runs/predict_images (or --workdir)
    config.run = "runs/brain_encoder"  # a finished brain_encoder workdir
    config.images = ""  # folder of .png/.jpg images (nothing else in it)
    config.rois = "V1v,FFA-1,PPA,EBA"  # ROI queries drawn and ranked
    config.hemi = "lh"  # hemisphere of those ROIs
    config.top_k = 8  # images per ROI in figures/top_images.png
    config.n_attention_images = 4  # images with attention figures
    config.batch_size = 16  # images per prediction call
    return config
