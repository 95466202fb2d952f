"""Neuroprobe evaluation and a leaderboard-ready submission folder (`popt_jax.ieeg.neuroprobe`).

    # built-in default: a synthetic Nano stand-in, Laplacian+STFT linear baseline
    python -m popt_jax.main --config configs/neuroprobe.py --workdir runs/neuroprobe
    # the real benchmark (Lite, all three split types, frozen BrainBERT + linear):
    python -m popt_jax.main --config configs/neuroprobe.py --workdir runs/np_brainbert \
        --config.root=/data/braintreebank --config.subset=lite --config.model=brainbert_linear \
        --config.brainbert_checkpoint=/ckpt/brainbert_np/model.safetensors \
        --config.model_name=BrainBERT-popt-jax --config.author="First Last"

Needs the optional extra: pip install 'popt_jax[neuroprobe]'. `tiny` shrinks everything for
tests (`configs/neuroprobe.py:tiny`).
"""

from ml_collections import config_dict

from popt_jax.ieeg.neuroprobe import TASKS


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.job = "neuroprobe"  # popt_jax.main dispatches on this
    config.workdir = ""  # output folder; --workdir wins
    config.seed = 42  # logistic-regression seed (Neuroprobe's default) and synthetic data seed
    config.root = ""  # Brain Treebank root (files as Neuroprobe reads them); empty = synthetic
    config.synthetic_seconds = 150.0  # length of each synthetic stand-in session
    config.subset = "nano"  # "lite" (12 sessions, <= 3500 samples) or "nano" (6, <= 1000)
    config.split = "all"  # "within_session", "cross_session", "cross_subject" or "all"
    config.tasks = TASKS  # any subset of Neuroprobe's 15 tasks
    config.sessions = ()  # restrict to these sessions (e.g. "btbank1_1"); empty = all of them
    # linear_stft | linear_raw | brainbert_linear | popt_linear (see the module docstring)
    config.model = "linear_stft"
    config.context = "none"  # only the benchmark's 1 s window is used (Neuroprobe's rule)
    config.stft = config_dict.ConfigDict(dict(  # linear_stft: Neuroprobe's baseline settings
        nperseg=512, overlap=0.75, max_freq=150.0, min_freq=0.0))
    config.brainbert_checkpoint = ""  # BrainBERT weights; empty = seeded random (plumbing only)
    config.random_brainbert = config_dict.ConfigDict(dict(  # sizes of that random BrainBERT
        hidden_dim=64, n_heads=4, ff_dim=128, n_layers=1))
    config.popt_checkpoint = ""  # popt_linear: a PopT checkpoint (upstream .pth or export)
    config.chunk = 256  # electrode-windows per BrainBERT call
    config.leak_override = ""  # a reason to write a submission despite a failed leak check
    # Submission metadata (SUBMIT.md); the folder is MODEL_First_Last_D_M_YYYY.
    config.model_name = "Laplacian-STFT-Linear-popt-jax"
    config.description = "Logistic regression on |STFT| of Laplacian-rereferenced sEEG (popt_jax)"
    config.author = "First Last"
    config.organization = "popt_jax"
    config.organization_url = "https://github.com/"
    config.logo_url = ""
    config.timestamp = 0  # 0 = now
    config.publication_bib = ""  # a .bib file; empty = the model's paper
    if arg == "tiny":
        config.synthetic_seconds = 90.0
        config.tasks = ("onset", "speech", "volume", "gpt2_surprisal")
    elif arg not in (None, ""):
        raise ValueError(f"unknown variant {arg!r} (use tiny)")
    return config
