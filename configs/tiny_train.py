"""Tiny pretraining / fine-tuning runs for tests: the tiny feature store, a 1-layer PopT.

    python -m popt_jax.main --config configs/tiny_train.py:pretrain --workdir /tmp/tiny_pre
    python -m popt_jax.main --config configs/tiny_train.py:finetune --workdir /tmp/tiny_ft

The default inputs (`popt_jax.ieeg.defaults`) are the `configs/tiny.py` features (one short
synthetic subject, a 1-layer BrainBERT) and, for fine-tuning, a tiny pretraining run; a few
steps of each job, checkpointing twice, on random splits.
"""


from ml_collections import config_dict

from popt_jax.core.config_lib import load_sibling_config


def _load(name):
    return load_sibling_config(__file__, name)


def _shrink(config: config_dict.ConfigDict) -> None:
    config.model.hidden_dim = 32
    config.model.n_heads = 2
    config.model.ff_dim = 64
    config.model.n_layers = 1
    config.total_steps = 6
    config.batch_size = 8
    config.eval_batch_size = 16
    config.log_every = 1
    config.eval_every = 3
    # A 40 s recording is too short for purged time blocks (windows last 5 s).
    config.data.split = "random"


def get_config(arg: str = "pretrain") -> config_dict.ConfigDict:
    """Args: arg: 'pretrain' or 'finetune'."""
    if arg not in ("pretrain", "finetune"):
        raise ValueError(f"configs/tiny_train.py takes ':pretrain' or ':finetune', got {arg!r}")
    config = _load(arg).get_config()
    _shrink(config)
    config.default_inputs.extract = _load("tiny").get_config()
    if arg == "finetune":
        _shrink(config.default_inputs.pretrain)
    return config
