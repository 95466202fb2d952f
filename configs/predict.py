"""Apply a fine-tuned PopT classifier to your own recordings: probabilities per window.

    python -m popt_jax.main --config configs/predict.py --workdir runs/predict \
        --config.data.root=/data/bids --config.data.subject=01 \
        --config.model_checkpoint=runs/finetune \
        --config.brainbert_checkpoint=/ckpt/stft_large_pretrained.pth

Writes {workdir}/predictions/<run>.csv and <run>.png (see popt_jax/ieeg/apply.py). The
BrainBERT must be the one whose features the classifier was fine-tuned on.
`:tiny` is the test variant.
"""

from ml_collections import config_dict

from popt_jax.core.config_lib import load_sibling_config


def get_config(arg=None) -> config_dict.ConfigDict:
    embed = load_sibling_config(__file__, "embed")
    config = config_dict.ConfigDict()
    config.job = "predict"  # popt_jax.main dispatches on this
    config.workdir = ""  # output folder; --workdir wins
    config.seed = 0  # seeds a random BrainBERT (no checkpoint) and nothing else
    embed.recording_sections(config)
    embed.model_sections(config)
    config.model_checkpoint = ""  # finetune workdir or fine-tuned checkpoint (required)
    # PopT's spatial code (as in configs/pretrain.py): table | continuous; must be the one
    # model_checkpoint was fine-tuned with (refused otherwise).
    config.position_code = "table"
    config.threshold = 0.5  # line drawn on the timeline; fraction above it is reported
    if arg == "tiny":
        embed.shrink(config)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (have: tiny)")
    return config
