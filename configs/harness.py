"""The experiment grid (`popt_jax.ieeg.harness`): fine-tuning cells, linear baselines, a table.

    python -m popt_jax.main --config configs/harness.py --workdir runs/grid

The default runs on the synthetic Brain Treebank (features extracted under the workdir, one
short pretraining made there and reused): 2 subjects x 2 tasks x 3 variants x 1 seed x 2
splits = 24 fine-tuning cells of 150 steps, plus the linear baselines. Rerunning the command
skips every finished cell. `:tiny` is the same grid with tiny models, 3 steps per cell and
the popt / random_init variants (minutes; the tests run it).

The paper grid (`:paper`): the fine-tuning recipe of `configs/finetune.py:paper` on the
upstream test subjects and the four tasks, pretrained, frozen and random-init PopT, 5 seeds,
both splits; pass the feature store and the pretrained weights:

    python -m popt_jax.main --config configs/harness.py:paper --workdir runs/paper_grid \\
        --config.features_dir=runs/features/features \\
        --config.data_root=/data/braintreebank \\
        --config.init_checkpoint=/ckpt/pretrained_popt_brainbert_stft.pth
"""

from ml_collections import config_dict

from popt_jax.core.config_lib import load_sibling_config

# Upstream trial_selections/test_trials.json: the subjects fine-tuned and tested in the paper.
PAPER_SUBJECTS = ("sub_1", "sub_2", "sub_3", "sub_4", "sub_6", "sub_7", "sub_10")


def _load(name):
    return load_sibling_config(__file__, name)


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """Args: arg: None (small synthetic grid), 'paper' or 'tiny' (tests)."""
    if arg not in (None, "", "paper", "tiny"):
        raise ValueError(f"configs/harness.py takes no argument, ':paper' or ':tiny', got {arg!r}")
    paper = arg == "paper"
    config = config_dict.ConfigDict()
    config.job = "harness"  # popt_jax.main dispatches on this
    config.workdir = ""  # output folder; --workdir wins; empty = runs/harness

    # Features: an existing store or, if empty, one extracted under {workdir}/extract.
    config.features_dir = ""
    config.features = _load("extract_features").get_config()
    # Brain Treebank root the linear_stft baseline re-reads; empty = the extraction's root
    # (the synthetic tree) when the harness extracted the features, else that baseline is off.
    config.data_root = ""

    # Pretrained PopT for the pretrained variants (a .pth, converted folder or a popt_jax
    # pretraining workdir); empty = one `pretrain` run in {workdir}/pretrain, made once.
    config.init_checkpoint = ""
    config.init_checkpoint_index = ""  # the same for `no_spatial` (PopT with the index code)
    config.pretrain = _load("pretrain").get_config("paper" if paper else None)

    # Every cell is this fine-tuning config with subject, task, seed, split and the
    # variant's overrides set (see harness.VARIANTS).
    config.finetune = _load("finetune").get_config("paper" if paper else None)
    # (the harness passes features_dir and init_checkpoint to every cell explicitly, so the
    # cells' default_inputs are never used)

    config.subjects = PAPER_SUBJECTS if paper else ("sub_1", "sub_2")
    config.tasks = (("volume", "pitch", "sentence_onset", "word_onset") if paper
                    else ("word_onset", "volume"))
    # popt | frozen | random_init | random_frozen | no_spatial | few_shot
    config.variants = ("popt", "frozen", "random_init")
    config.seeds = (0, 1, 2, 3, 4) if paper else (0,)
    config.splits = ("random", "time_blocked")  # the leak: random vs contiguous blocks
    config.baselines = ("linear_brainbert", "linear_stft")  # on the same splits, every table
    config.few_shot_examples = 100  # training examples of the few_shot variant
    # JAX's persistent compilation cache in {workdir}/jax_cache: cells sharing a program
    # (same model and batch shapes) compile it once.
    config.compilation_cache = True

    if not paper:
        config.finetune.total_steps = 150
        config.finetune.eval_every = 50
        config.finetune.data.val_fraction = 0.1
        config.pretrain.total_steps = 200
    if arg == "tiny":
        _tiny(config)
    return config


def _tiny(config: config_dict.ConfigDict) -> None:
    """Seconds per cell: a short 2-subject tree, a 1-layer BrainBERT and PopT, a few steps."""
    f = config.features
    f.data.synthetic.n_subjects = 2
    f.data.synthetic.duration_s = 60.0
    f.data.synthetic.n_shafts = 2
    f.data.synthetic.contacts = (4, 5)
    f.brainbert.hidden_dim = 16
    f.brainbert.n_heads = 1
    f.brainbert.ff_dim = 32
    f.brainbert.n_layers = 1
    f.batch_windows = 16
    f.max_windows = 40
    f.tasks = ("pretrain", "volume", "word_onset")
    for job in (config.pretrain, config.finetune):
        job.model.hidden_dim = 16
        job.model.n_heads = 1
        job.model.ff_dim = 32
        job.model.n_layers = 1
        job.total_steps = 3
        job.batch_size = 8
        job.eval_batch_size = 32
        job.log_every = 3
        job.eval_every = 3
        job.data.buckets = (16,)
    config.pretrain.data.split = "random"
    # Both classes in every tiny validation and test split (one 60 s block each).
    config.finetune.data.val_fraction = 0.25
    config.finetune.data.test_fraction = 0.25
    config.finetune.data.time_blocks = 1
    config.variants = ("popt", "random_init")
    config.splits = ("random", "time_blocked")
