"""PopT pretraining (ensemble-wise + channel-wise discrimination) on the BrainBERT feature store.

    python -m popt_jax.main --config configs/pretrain.py --workdir runs/pretrain

The default runs end to end in a few minutes on a 2-core CPU: with no `features_dir` the
default-inputs step (`popt_jax.ieeg.defaults`) first writes the synthetic Brain Treebank and
extracts features with a small random BrainBERT into `{workdir}/extract`
(`configs/extract_features.py` defaults, ~1 minute), then the job pretrains a SMALL PopT (hidden 128,
2 layers) for 800 steps at batch 16, LAMB at lr 5e-3, on embeddings standardised per feature
file (`data.feature_norm`), and prints its test CLS and token accuracies (synthetic latent
state: ~0.8 each; chance 0.5). The published PopT (hidden 512, 6 layers, 8 heads, FFN 2048)
takes ~1 s per step at batch 8 on such a machine, too slow for a few-minute default.

The paper recipe (SPEC section 3: published PopT, LAMB lr 5e-4, batch 256, 500k steps, grad
clip 1.0, ramp_up warm-up 2.5% and gamma 0.99, embeddings as stored) is the `paper` variant:

    python -m popt_jax.main --config configs/pretrain.py:paper --workdir runs/pretrain \\
        --config.features_dir=runs/features/features --config.compute_dtype=bfloat16

`:neuroprobe` is the paper recipe on the sessions Neuroprobe allows pretraining on
(`neuroprobe_allowed_pretraining`, SUBMIT.md), with its 12 evaluation sessions as the held-out
trials; extract its store with `configs/extract_features.py:neuroprobe`. The run records the
sessions it read (`trained_on` in results.json and popt_best/provenance.json), which the
`neuroprobe` job's leak check reads.

The paper variant is the default with `--config.total_steps=500000 --config.batch_size=256
--config.lr=5e-4 --config.data.feature_norm=none` and the published `model.*` sizes (hidden
512, 8 heads, FFN 2048, 6 layers), plus the upstream selections, split, order and cadence and
paper bookkeeping
(eval batch 256, validation fraction 0.01, log/validate every 1000 steps).
"""


from ml_collections import config_dict

from popt_jax.core.config_lib import load_sibling_config


def _load(name):
    return load_sibling_config(__file__, name)


def model_config(size: str = "small") -> config_dict.ConfigDict:
    """PopT architecture (`models.PopTConfig` fields; input_dim comes from the features)."""
    model = config_dict.ConfigDict()
    paper = size == "paper"
    model.hidden_dim = 512 if paper else 128  # published PopT: 512
    model.n_heads = 8 if paper else 4  # 8
    model.ff_dim = 2048 if paper else 512  # 2048 (upstream's layout fixes it)
    model.n_layers = 6 if paper else 2  # 6
    model.dropout = 0.1  # attention, FFN and input dropout
    model.max_len = 5000  # rows of the sinusoid table: coordinates must stay below it
    model.use_token_cls_head = True  # the channel-wise (token) discrimination head
    # "multi_subj_position_encoding": the (L, I, P) spatial code; "index": the ablation
    model.position_encoding = "multi_subj_position_encoding"
    return model


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """Args: arg: None (small default), 'paper' (the published recipe) or 'neuroprobe' (the
    published recipe on Neuroprobe's allowed sessions only)."""
    if arg not in (None, "", "paper", "neuroprobe"):
        raise ValueError("configs/pretrain.py takes no argument, ':paper' or ':neuroprobe', "
                         f"got {arg!r}")
    neuroprobe = arg == "neuroprobe"
    paper = arg in ("paper", "neuroprobe")
    config = config_dict.ConfigDict()
    config.job = "pretrain"  # popt_jax.main dispatches on this
    config.workdir = ""  # output folder; --workdir wins; empty = runs/pretrain
    config.seed = 0  # model init, dropout keys and data order

    # Inputs: a feature store (popt_jax.ieeg.feature_store layout; only read). Empty = the
    # built-in default made by popt_jax.ieeg.defaults.prepare_default_inputs: the extraction
    # job with `default_inputs.extract` (synthetic data) into {workdir}/extract/features.
    config.features_dir = ""
    config.default_inputs = config_dict.ConfigDict()  # used only for empty input paths
    config.default_inputs.extract = _load("extract_features").get_config()  # extraction config
    if not paper:
        # 500 pretraining windows (100 s) per synthetic recording: enough examples for the
        # short default run to learn the synthetic latent state (~40 s more extraction).
        config.default_inputs.extract.max_pretrain_windows = 500
    else:
        config.default_inputs.extract = _load("extract_features").get_config("paper")

    # Data (popt_jax.data.datasets): how pretraining examples are drawn from the store.
    config.data = config_dict.ConfigDict()
    config.data.subjects = ()  # subjects to pretrain on; empty = every file in the store
    # Electrode selection: a packaged name (popt_jax/ieeg/selections) or a JSON path
    # {subject: [names]}; empty = all stored. Paper: upstream's clean_laplacian.
    config.data.selection = "clean_laplacian" if paper else ""
    # Trials to pretrain on: packaged name(s) or JSON path(s), comma-separated; empty = every
    # trial in the store. Paper: upstream's pretrain_split_trials.
    config.data.trials = "pretrain_split_trials" if paper else ""
    # The fine-tuning test trials pretraining never reads (one log line says which were
    # excluded) unless allow_held_out is True.
    config.data.held_out_trials = "test_trials"
    config.data.allow_held_out = False
    if neuroprobe:  # leak-free for Neuroprobe: SUBMIT.md's allowed sessions, its 12 held out
        config.data.trials = "neuroprobe_allowed_pretraining"
        config.data.held_out_trials = "neuroprobe_lite_sessions"
        config.default_inputs.extract = _load("extract_features").get_config("neuroprobe")
    # "time_blocked" (new experiments: no overlap leak) or "random" (upstream's 89/1/10
    # train_test_split; the paper variant). Saved in splits.json.
    config.data.split = "random" if paper else "time_blocked"
    # Splits JSON (made once, reused; a stored split made with other settings is refused).
    # Empty = {workdir}/splits.json; name one file to share splits between experiments.
    config.data.split_file = ""
    config.data.val_fraction = 0.01 if paper else 0.1  # upstream 0.01 (tiny synthetic: 0.1)
    config.data.test_fraction = 0.1  # held-out pretraining windows
    config.data.time_blocks = 5  # contiguous blocks per recording (time_blocked split)
    config.data.replace_p = 0.1  # per-token replacement / kept-negative probability budget
    config.data.coord_jitter = 0.0  # std of N(0, s) added to coordinates (0 = off)
    # "none": embeddings as stored (upstream); "file": each dimension standardised per feature
    # file (datasets.feature_norm_stats): a random BrainBERT's embeddings are a large common
    # offset plus a small varying part, which the short default run cannot learn through.
    config.data.feature_norm = "none" if paper else "file"
    config.data.buckets = (16, 32, 64, 128)  # token lengths batches are padded to
    # Opt-in speed-up: >0 groups batches by length within windows of this many batches
    # (same examples, reordered within a window; datasets.length_grouped_examples). Pair with
    # data.buckets = datasets.PRETRAIN_BUCKETS (10, 20, ..., 100): no padding left.
    config.data.group_by_length = 0
    config.data.num_workers = 0  # grain worker processes (0 = in-process)
    # Training order: "shuffle" (a new permutation per epoch) or "upstream" (shuffle: False:
    # every epoch in the split's order; fine-tuning keeps the short last batch).
    config.data.order = "upstream" if paper else "shuffle"

    config.model = model_config("paper" if paper else "small")
    # PopT's spatial code, shared by pretrain, finetune, embed and predict: "table" (upstream:
    # integer (L, I, P) rows of the sinusoid table) or "continuous" (the same sinusoids at
    # the store's real-valued positions; sub-millimetre differences count). A checkpoint
    # is only fine-tuned / applied with the code it was trained with.
    config.position_code = "table"
    config.compute_dtype = "float32"  # or "bfloat16": bf16 compute, float32 parameters
    # Training steps run the per-token layers on real tokens only (models.TokenPacking): same
    # loss and gradients, ~1.5x fewer FLOPs on pretraining batches; each distinct packed
    # shape compiles once. On for the paper recipe; off for the short default run, where a
    # few extra compilations (~7 s each on 2 cores) cost more than packing saves.
    config.pack_tokens = paper

    # Optimisation (upstream multi_elec_pretrain.yaml): LAMB + ramp_up schedule.
    config.optimizer = "lamb"  # torch_optimizer.Lamb semantics (train_lib.lamb)
    # Peak learning rate. LAMB steps are relative to each weight's norm, so upstream's 5e-4
    # (made for 500k steps) barely moves the weights in a few hundred; the short default
    # run uses 5e-3 (1e-2 was worse in the same 600-step run).
    config.lr = 5e-4 if paper else 5e-3
    config.weight_decay = 0.0  # LAMB weight decay (upstream: none)
    config.lamb_clamp_value = 10.0  # weight-norm clamp in the trust ratio (torch_optimizer)
    config.grad_clip = 1.0  # global-norm clipping; 0 = off
    # True: upstream's loss.backward(loss), i.e. the optimiser (and clipping) sees loss x
    # gradient; False: the plain gradient (core.steps.make_train_step).
    config.loss_scaled_grad = True
    config.warmup = 0.025  # linear warm-up over this fraction of total_steps
    config.gamma = 0.99  # then lr x gamma every (total - warm-up) / 100 steps
    config.total_steps = 500_000 if paper else 800  # optimiser steps
    config.batch_size = 256 if paper else 16  # global batch (all processes and devices)
    config.eval_batch_size = 256 if paper else 32  # validation/test batch
    config.log_every = 1000 if paper else 25  # steps between progress lines / train metrics
    config.eval_every = 1000 if paper else 200  # steps between validation + checkpoint
    # "every": after eval_every, 2 eval_every, ... and the last step; "upstream": after
    # step 1, 1 + eval_every, ... and the last (runner.py's cadence).
    config.eval_schedule = "upstream" if paper else "every"
    config.keep_checkpoints = 2  # latest checkpoints kept (the best is kept as well)
    config.rng_impl = "rbg"  # PRNG of the per-step dropout keys (masks: models.hashed_bits)

    # Devices and processes.
    config.num_devices = 0  # devices in the data mesh; 0 = all
    config.distributed = False  # jax.distributed.initialize (also when JAX_COORDINATOR_ADDRESS)
    config.coordinator_address = ""  # host:port of process 0 (or JAX_COORDINATOR_ADDRESS)
    config.num_processes = -1  # -1 = from the environment
    config.process_id = -1  # -1 = from the environment
    config.stop_after_steps = 0  # stop (checkpointed) after this step; 0 = run to the end
    return config
