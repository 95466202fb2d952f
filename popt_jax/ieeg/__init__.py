"""The sEEG family: BrainBERT, PopT, the signal front end, Brain Treebank data and jobs.

Public API (stable names; each is imported on first use, so `import popt_jax.ieeg` is cheap)::

    from popt_jax.ieeg import (BrainBERT, BrainBERTConfig, PopT, PopTConfig, PopTClassifier,
                               brainbert_embed, load_popt, load_brainbert, load_model,
                               export_safetensors, brainbert_spectrogram, stft)

Modules: `signal` (jitted STFT), `brainbert`, `popt`, `layers` (shared transformer blocks),
`convert` (published weights), `braintreebank` (reader), `preprocess`, `synthetic`,
`feature_store` (format) and `extract` (the extraction job), `datasets` (grain pipelines),
`optim`, `objectives` (losses and steps), `train` (pretraining and fine-tuning jobs),
`defaults` (the one step that makes the built-in default inputs of those jobs).
Other recordings: `recording` (the interface), `readers` (BIDS-iEEG, MNE, NWB), `coords`
(millimetres -> PopT indices), `frontend` (resampling, notch, re-reference),
`recording_store` (their feature-store files) and `apply` (the embed and predict jobs).
"""

import importlib

_API = {
    "BrainBERT": "brainbert", "BrainBERTConfig": "brainbert", "brainbert_embed": "brainbert",
    "PopT": "popt", "PopTConfig": "popt", "PopTClassifier": "popt",
    "load_popt": "convert", "load_brainbert": "convert", "load_model": "convert",
    "export_safetensors": "convert", "read_checkpoint": "convert",
    "brainbert_spectrogram": "signal", "stft": "signal",
    "Recording": "recording", "CoordMapping": "coords", "FrontEndConfig": "frontend",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
