"""Extract BrainBERT features into the HDF5 feature store (`popt_jax.features`).

    python -m popt_jax.main --config configs/extract_features.py --workdir runs/features
    # the real data with the published BrainBERT weights, all windows:
    python -m popt_jax.main --config configs/extract_features.py --workdir runs/features \
        --config.data.root=/data/braintreebank \
        --config.data.selection=/data/braintreebank/electrode_selections/clean_laplacian.json \
        --config.brainbert_checkpoint=/ckpt/stft_large_pretrained.pth \
        --config.max_windows=-1 --config.batch_windows=16 --config.compute_dtype=bfloat16

`:neuroprobe` extracts the pretraining windows of the sessions Neuroprobe allows pretraining
on (SUBMIT.md; packaged as `neuroprobe_allowed_pretraining`) for `configs/pretrain.py:neuroprobe`.
The store's `provenance.json` lists the sessions it holds and what its BrainBERT saw.

With no `data.root` a small synthetic Brain Treebank is written under the workdir (once), and
with no checkpoint a SMALL BrainBERT with seeded random weights is used: full-size BrainBERT
runs at ~3 electrode-windows/s on a laptop CPU, so the defaults (small model, a few hundred
windows per trial) finish in about a minute on 2 CPU cores. `max_windows=-1` means all.
"""

from ml_collections import config_dict


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """Args: arg: None (small synthetic default), 'paper' (upstream's selections) or
    'neuroprobe' (the PopT pretraining store on Neuroprobe's allowed sessions only)."""
    if arg not in (None, "", "paper", "neuroprobe"):
        raise ValueError("configs/extract_features.py takes no argument, ':paper' or "
                         f"':neuroprobe', got {arg!r}")
    neuroprobe = arg == "neuroprobe"
    paper = arg in ("paper", "neuroprobe")
    config = config_dict.ConfigDict()
    config.job = "extract_features"  # popt_jax.main dispatches on this
    config.workdir = ""  # output folder; --workdir wins; empty = runs/extract_features
    config.seed = 0  # seeds the random BrainBERT (when no checkpoint) and nothing else

    config.data = config_dict.ConfigDict()
    config.data.root = ""  # Brain Treebank root; empty = synthetic tree in {workdir}
    config.data.subjects = ()  # e.g. ("sub_1", "sub_3"); empty = every subject
    # Electrode selection: a packaged name (popt_jax/ieeg/selections) or a JSON path
    # {subject: [names]}; empty = all (for the synthetic tree: its own
    # electrode_selections/clean_laplacian.json). Paper: upstream's clean_laplacian.
    config.data.selection = "clean_laplacian" if paper else ""
    # Trials to extract: packaged name(s) or JSON path(s), comma-separated (their union);
    # empty = every trial. Paper: upstream's pretraining trials and held-out test trials.
    config.data.trials = "pretrain_split_trials,test_trials" if paper else ""
    if neuroprobe:  # SUBMIT.md's allowed sessions: none of Neuroprobe's evaluation sessions
        config.data.trials = "neuroprobe_allowed_pretraining"
    config.data.synthetic = config_dict.ConfigDict()  # write_synthetic_braintreebank(...)
    config.data.synthetic.n_subjects = 2  # sub_1..sub_n
    config.data.synthetic.trials_per_subject = 1  # recordings per subject
    config.data.synthetic.duration_s = 120.0  # seconds per recording
    config.data.synthetic.n_shafts = 3  # depth shafts per subject
    config.data.synthetic.contacts = (6, 12)  # (min, max) contacts per shaft
    config.data.synthetic.seed = 0  # the tree is a function of its arguments
    config.data.synthetic.plant = True  # add the task-related structure
    # A slowly varying, spatially coherent state (what pretraining learns from); False = a
    # stationary background, where the pretraining objectives stay at chance.
    config.data.synthetic.latent_state = True

    # Front end: the fields of popt_jax.data.preprocess.PreprocessConfig (upstream defaults).
    config.preprocess = config_dict.ConfigDict()
    config.preprocess.fs = 2048.0  # sampling rate (Hz)
    config.preprocess.notch_freqs = (60.0, 120.0, 180.0, 240.0, 300.0, 360.0)  # line noise
    config.preprocess.notch_q = 30.0  # notch quality factor
    config.preprocess.high_gamma = False  # 70-250 Hz band-pass after the notches
    config.preprocess.band = (70.0, 250.0)  # band-pass edges (Hz)
    config.preprocess.band_order = 5  # Butterworth order
    config.preprocess.rereference = "laplacian"  # laplacian | car | none
    config.preprocess.zscore = False  # z-score each channel over the trial
    config.preprocess.despike = False  # attenuate |z| > 4 excursions
    config.preprocess.window_s = 5.0  # window length (s)
    config.preprocess.separation_s = 0.2  # pretraining window hop (s)
    config.preprocess.interval_s = 1.0  # non-speech chunk length (s)
    config.preprocess.delta_s = -2.5  # word window start relative to the onset (s)
    config.preprocess.on_missing_neighbours = "error"  # or "skip" (drop the electrode)
    config.preprocess.neighbour_filtering = "upstream"  # parity quirk; "time" = intent
    config.preprocess.seed = 42  # class balancing of the onset tasks (upstream's seed)
    config.preprocess.chunk = 32  # electrodes filtered at a time (memory only)

    # BrainBERT: a checkpoint path (hash = sha256 of the file) or, if empty, random weights
    # with the architecture below (hash = "random-seed-{seed}/<architecture>").
    config.brainbert_checkpoint = ""
    config.brainbert = config_dict.ConfigDict()  # models.BrainBERTConfig fields
    config.brainbert.hidden_dim = 64  # published model: 768
    config.brainbert.n_heads = 2  # 12
    config.brainbert.ff_dim = 128  # 3072
    config.brainbert.n_layers = 2  # 6

    config.tasks = ("pretrain", "volume", "pitch", "sentence_onset", "word_onset")
    if neuroprobe:  # the store feeds PopT pretraining only
        config.tasks = ("pretrain",)
    config.compute_dtype = "float32"  # float32 (parity) or bfloat16 (accelerators)
    config.storage_dtype = "float32"  # float32 or float16 embeddings on disk
    config.batch_windows = 32  # windows per device call (x electrodes x 10240 samples)
    config.chunk = config_dict.placeholder(int)  # electrode-windows per inner step; None = auto
    config.max_windows = -1 if paper else 100  # cap per group and trial; -1 = all windows
    config.max_pretrain_windows = 0  # cap of the pretraining group; 0 = max_windows, -1 = all
    config.progress_every_s = 5.0  # seconds between progress lines
    return config
