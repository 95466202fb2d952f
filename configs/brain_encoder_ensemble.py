"""Ensemble of finished brain-encoder runs (upstream's `brain_encoder_wrapper.py` recipe).

    python -m popt_jax.main --config configs/brain_encoder_ensemble.py --workdir runs/ens \\
        --config.runs=runs/l1_r1,runs/l1_r2,runs/l2_r1,runs/l2_r2

Each run is a `brain_encoder` workdir (e.g. trained with `--config.features.enc_output_layer`
1, 2, ... and several seeds); all share a subject and a split (pass the first run's
`upstream/idxs.npy` as `--config.data.split_file` to the others). Outputs: `results.json`,
`upstream/`, `submission/`, `weights/`, `figures/`.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.job = "brain_encoder_ensemble"
    config.workdir = ""  # default: runs/brain_encoder_ensemble (or --workdir)
    config.runs = ""  # comma-separated finished brain_encoder workdirs
    config.beta = 40.0  # softmax(beta x validation r) over backbone blocks, per vertex
    config.mean_over_runs = False  # True: divide by the runs per block (upstream sums them)
    return config
