"""A tiny feature-extraction run for tests: one short synthetic subject, a 1-layer BrainBERT.

    python -m popt_jax.main --config configs/tiny.py --workdir /tmp/tiny
"""

from ml_collections import config_dict

from popt_jax.core.config_lib import load_sibling_config


def get_config() -> config_dict.ConfigDict:
    config = load_sibling_config(__file__, "extract_features").get_config()
    config.data.synthetic.n_subjects = 1
    config.data.synthetic.duration_s = 40.0
    config.data.synthetic.n_shafts = 2
    config.data.synthetic.contacts = (4, 6)
    config.brainbert.hidden_dim = 32
    config.brainbert.n_heads = 2
    config.brainbert.ff_dim = 64
    config.brainbert.n_layers = 1
    config.batch_windows = 8
    config.max_windows = 24
    return config
