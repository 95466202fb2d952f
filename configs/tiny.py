"""A tiny feature-extraction run for tests: one short synthetic subject, a 1-layer BrainBERT.

    python -m popt_jax.main --config configs/tiny.py --workdir /tmp/tiny
"""

import importlib.util
import os

from ml_collections import config_dict


def _base():
    """configs/extract_features.py, loaded by path (configs/ is not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "extract_features.py")
    spec = importlib.util.spec_from_file_location("popt_jax_configs_extract_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config() -> config_dict.ConfigDict:
    config = _base().get_config()
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
