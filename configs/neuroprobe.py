"""Neuroprobe evaluation and a leaderboard-ready submission folder (`popt_jax.ieeg.neuroprobe`).

    # built-in default: a synthetic Nano stand-in, Laplacian+STFT linear baseline
    python -m popt_jax.main --config configs/neuroprobe.py --workdir runs/neuroprobe
    # the real benchmark (Lite, all three split types, frozen BrainBERT + linear):
    python -m popt_jax.main --config configs/neuroprobe.py --workdir runs/np_brainbert \
        --config.root=/data/braintreebank --config.subset=lite --config.model=brainbert_linear \
        --config.brainbert_checkpoint=/ckpt/brainbert_np/model.safetensors \
        --config.model_name=BrainBERT-popt-jax --config.author="First Last"

    # PopT fine-tuned on every fold, from leak-free checkpoints (configs/*.py:neuroprobe):
    python -m popt_jax.main --config configs/neuroprobe.py --workdir runs/np_popt_ft \
        --config.root=/data/braintreebank --config.subset=lite --config.model=popt_finetune \
        --config.brainbert_checkpoint=runs/bb_np/brainbert_best/model.safetensors \
        --config.popt_checkpoint=runs/popt_np --config.author="First Last"

Checkpoints must carry a record of their training sessions (written by popt_jax's training
jobs); others, such as converted upstream weights, need --config.leak_override='<reason>'.
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
    # linear_stft | linear_raw | brainbert_linear | popt_linear | popt_finetune (see the
    # module docstrings of popt_jax.ieeg.neuroprobe and neuroprobe_finetune)
    config.model = "linear_stft"
    config.context = "none"  # only the benchmark's 1 s window is used (Neuroprobe's rule)
    config.stft = config_dict.ConfigDict(dict(  # linear_stft: Neuroprobe's baseline settings
        nperseg=512, overlap=0.75, max_freq=150.0, min_freq=0.0))
    config.brainbert_checkpoint = ""  # BrainBERT weights; empty = seeded random (plumbing only)
    config.random_brainbert = config_dict.ConfigDict(dict(  # sizes of that random BrainBERT
        hidden_dim=64, n_heads=4, ff_dim=128, n_layers=1))
    # popt_linear / popt_finetune: a PopT (popt_jax pretraining workdir, export, upstream .pth);
    # popt_finetune with none: seeded random weights of `random_popt` (plumbing only)
    config.popt_checkpoint = ""
    config.random_popt = config_dict.ConfigDict(dict(  # sizes of that random PopT
        hidden_dim=64, n_heads=4, ff_dim=256, n_layers=1))
    # popt_finetune: the per-fold fine-tuning (upstream's fine-tuning recipe, SPEC 3: AdamW,
    # head lr 5e-4, body 5e-5, batch 128, 2000 steps, best step by validation ROC-AUC)
    config.finetune = config_dict.ConfigDict()
    ft = config.finetune
    ft.optimizer = "adamw"  # head at lr, PopT body at lr * body_lr_scale
    ft.lr = 5e-4  # head learning rate
    ft.body_lr_scale = 0.1  # body lr = 5e-5
    ft.weight_decay = 0.01  # decoupled, scaled by each group's lr (torch AdamW)
    ft.grad_clip = 1.0  # global-norm clipping; 0 = off
    ft.warmup = 0.025  # linear warm-up fraction of total_steps
    ft.gamma = 0.95  # then lr x gamma every 1% of the steps
    ft.loss_scaled_grad = True  # upstream loss.backward(loss)
    ft.frozen_upstream = False  # True: only the linear head trains
    ft.total_steps = 2000  # optimiser steps per fold
    ft.batch_size = 128  # windows per step
    ft.eval_batch_size = 128  # windows per evaluation call
    ft.eval_every = 100  # steps between validations (best step by ROC-AUC)
    ft.val_fraction = 0.1  # of each fold's training windows, class-stratified; 0 = last step
    ft.compute_dtype = "float32"  # or "bfloat16" (accelerators): float32 parameters
    ft.pad_to = 16  # electrodes are padded to a multiple of this (few compiled shapes)
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
        config.finetune.total_steps = 4
        config.finetune.batch_size = 16
        config.finetune.eval_batch_size = 64
        config.finetune.eval_every = 2
    elif arg not in (None, ""):
        raise ValueError(f"unknown variant {arg!r} (use tiny)")
    return config
