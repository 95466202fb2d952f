"""Per-window BrainBERT and PopT embeddings of your own recordings (BIDS-iEEG or NWB).

    python -m popt_jax.main --config configs/embed.py --workdir runs/embed \
        --config.data.root=/data/bids --config.data.subject=01 \
        --config.brainbert_checkpoint=/ckpt/stft_large_pretrained.pth \
        --config.popt_checkpoint=/ckpt/pretrained_popt_brainbert_stft.pth

Writes {workdir}/embeddings/<run>.h5 (see popt_jax/ieeg/apply.py). Without checkpoints a
small BrainBERT and PopT with seeded random weights are used (plumbing only; logged loudly).
`:tiny` is the test variant (1-layer models, a few windows).
"""

from ml_collections import config_dict


def recording_sections(config: config_dict.ConfigDict) -> None:
    """data / preprocess / frontend sections shared by embed, predict, extract_recordings."""
    config.data = config_dict.ConfigDict()
    config.data.format = "bids"  # bids | nwb
    config.data.root = ""  # BIDS root folder
    config.data.subject = ""  # BIDS subject label (with or without "sub-")
    config.data.session = ""  # optional BIDS entities narrowing the runs
    config.data.task = ""
    config.data.run = ""
    config.data.space = ""  # electrodes.tsv space when several exist
    config.data.path = ""  # NWB file
    config.data.series = ""  # NWB ElectricalSeries name (empty: the only one)
    config.data.coord_frame = ""  # NWB: frame of x, y, z (NWB does not declare it)
    config.data.coord_units = ""  # NWB: m | cm | mm
    config.data.line_freq = 0.0  # NWB: power-line frequency (NWB does not store it)

    # Model-rate settings (popt_jax.ieeg.preprocess.PreprocessConfig fields).
    config.preprocess = config_dict.ConfigDict()
    config.preprocess.fs = 2048.0  # model rate; recordings are resampled to it
    config.preprocess.notch_freqs = (60.0,)  # replaced from the sidecar unless line_freq < 0
    config.preprocess.notch_q = 30.0  # notch quality factor
    config.preprocess.high_gamma = False  # 70-250 Hz band-pass after the notches
    config.preprocess.window_s = 5.0  # window length (s)
    config.preprocess.separation_s = 0.2  # pretraining window hop (s), extract_recordings
    config.preprocess.delta_s = -2.5  # event window start relative to the onset (s)
    config.preprocess.on_missing_neighbours = "skip"  # Laplacian: drop shaft ends
    # "upstream": the Laplacian the published weights were trained with (see preprocess.py);
    # "time": neighbours filtered like the contact (the documented intent).
    config.preprocess.neighbour_filtering = "upstream"
    config.preprocess.zscore = False  # whole-recording z-score (not when streaming)

    config.frontend = config_dict.ConfigDict()
    config.frontend.rereference = "laplacian"  # laplacian | bipolar | car | none
    config.frontend.line_freq = 0.0  # 0 = sidecar's PowerLineFrequency; <0 = notch_freqs
    config.frontend.notch_harmonics = 6  # notches at k * line_freq, k <= 6; -1 = all
    config.frontend.on_missing_coords = "drop"  # drop (reported) | error
    config.frontend.margin_s = 4.0  # filter warm-up per streamed block (s)
    config.frontend.coords = config_dict.ConfigDict()  # mm -> PopT index (ieeg/coords.py)
    config.frontend.coords.offset = 128.0  # index added per axis
    config.frontend.coords.scale = 1.0  # index steps per mm
    config.frontend.coords.axes = "lip"  # lip (Brain Treebank orientation) | ras
    config.frontend.coords.max_len = 5000  # PopT position table rows


def model_sections(config: config_dict.ConfigDict) -> None:
    config.brainbert_checkpoint = ""  # BrainBERT weights; empty = random (small) weights
    config.brainbert = config_dict.ConfigDict()  # random BrainBERT architecture
    config.brainbert.hidden_dim = 64  # published: 768
    config.brainbert.n_heads = 2  # 12
    config.brainbert.ff_dim = 128  # 3072
    config.brainbert.n_layers = 2  # 6
    config.compute_dtype = "float32"  # float32 | bfloat16
    config.batch_windows = 8  # windows per BrainBERT call
    config.block_windows = 32  # windows preprocessed per streamed block (bounds memory)
    config.hop_s = 1.0  # seconds between window starts
    config.max_windows = -1  # cap per recording; -1 = every window
    config.progress_every_s = 5.0  # seconds between progress lines


def shrink(config: config_dict.ConfigDict) -> None:
    """The tiny test variant."""
    config.brainbert.hidden_dim = 32
    config.brainbert.ff_dim = 64
    config.brainbert.n_layers = 1
    config.batch_windows = 4
    config.block_windows = 4
    config.hop_s = 2.0
    config.max_windows = 6


def get_config(arg=None) -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.job = "embed"  # popt_jax.main dispatches on this
    config.workdir = ""  # output folder; --workdir wins
    config.seed = 0  # seeds random weights (no checkpoint) and nothing else
    recording_sections(config)
    model_sections(config)
    config.popt_checkpoint = ""  # pretrained PopT (workdir, safetensors or .pth); empty = random
    config.popt = config_dict.ConfigDict()  # random PopT architecture (PopTConfig fields)
    config.popt.hidden_dim = 64  # published: 512
    config.popt.n_heads = 2  # 8
    config.popt.ff_dim = 128  # 2048
    config.popt.n_layers = 2  # 6
    # PopT's spatial code (as in configs/pretrain.py): table (upstream) | continuous; must be
    # the popt_checkpoint's (refused otherwise); with random weights it picks the code.
    config.position_code = "table"
    config.save_tokens = True  # also store PopT's per-electrode hidden states
    if arg == "tiny":
        shrink(config)
        config.popt.hidden_dim = 16
        config.popt.ff_dim = 32
        config.popt.n_layers = 1
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (have: tiny)")
    return config
