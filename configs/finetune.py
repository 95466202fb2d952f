"""PopT fine-tuning on one Brain Treebank decoding task (PopT -> CLS -> Linear(hidden -> 1)).

    python -m popt_jax.main --config configs/finetune.py --workdir runs/finetune
    # from the published weights, on the real data:
    python -m popt_jax.main --config configs/finetune.py:paper --workdir runs/volume \\
        --config.init_checkpoint=/ckpt/pretrained_popt_brainbert_stft.pth \\
        --config.features_dir=runs/features/features --config.task=volume

`init_checkpoint` may be a converted PopT (safetensors dir), the original `.pth`, or a
popt_jax pretraining workdir. Empty inputs are filled by the default-inputs step
(`popt_jax.ieeg.defaults.prepare_default_inputs`): no `features_dir` -> the synthetic Brain
Treebank and its features in `{workdir}/extract`; no `init_checkpoint` -> a short pretraining
run (`default_inputs.pretrain`, the `configs/pretrain.py` default) in `{workdir}/pretrain` on
the same store. So the default runs end to end (pretraining + fine-tuning) in a few minutes on
a 2-core CPU.

The paper recipe (SPEC section 3: AdamW weight decay 0.01, head lr 5e-4, body lr 5e-5, batch
128, 2000 steps, validation every 100, best by validation ROC-AUC, random 80/10/10 split) is
the `paper` variant: the default with `--config.total_steps=2000 --config.batch_size=128`,
gamma 0.95 instead of 0.99, the random split and the published PopT sizes (which a loaded
`init_checkpoint` brings anyway: the architecture always comes from the checkpoint).
"""


from ml_collections import config_dict

from popt_jax.core.config_lib import load_sibling_config


def _load(name):
    return load_sibling_config(__file__, name)


def _default_pretrain(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """The pretraining config of the default inputs: its store is the fine-tuning run's."""
    del config.default_inputs
    return config


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """Args: arg: None (small default) or 'paper' (the published recipe)."""
    if arg not in (None, "", "paper"):
        raise ValueError(f"configs/finetune.py takes no argument or ':paper', got {arg!r}")
    paper = arg == "paper"
    pretrain = _load("pretrain")
    config = pretrain.get_config(arg)
    config.job = "finetune"  # popt_jax.main dispatches on this

    # What to fine-tune from (see the module docstring); the architecture comes from it.
    config.init_checkpoint = ""
    # The default pretraining run, made only when init_checkpoint is empty (on this run's
    # store). Override its fields as --config.default_inputs.pretrain.total_steps=...
    config.default_inputs.pretrain = _default_pretrain(pretrain.get_config(arg))

    # Variants upstream offers (popt_jax.ieeg.variants).
    config.random_init = False  # upstream model.random_init: body not loaded, no pretraining
    config.frozen_upstream = False  # upstream model.frozen_upstream: only the head trains
    # "" = the checkpoint's (or config.model's) code; "index" = the no-spatial-code ablation
    # (upstream's PositionalEncoding of the token index), "multi_subj_position_encoding".
    config.position_encoding = ""

    # Data (popt_jax.data.datasets): the decoding task, subject and split.
    # volume | pitch | sentence_onset | word_onset | pos (noun vs verb) | rms_reg (regression:
    # MSE, Pearson r / R^2); pos and rms_reg need a store extracted with them in its tasks.
    config.task = "word_onset"
    # upstream fine-tunes one subject at a time; "sub_1,sub_2" trains on several at once
    config.data.subject = "sub_1"
    config.data.max_train_examples = 0  # few-shot: cap the training split (0 = all of it)
    config.data.few_shot_seed = 0  # which (class-stratified) training examples are kept
    # "time_blocked": contiguous, purged blocks (no overlap leak); "random": upstream's
    # 80/10/10 train_test_split(random_state=42), which inflates scores (SPEC 3).
    config.data.split = "random" if paper else "time_blocked"
    config.data.val_fraction = 0.1
    config.data.test_fraction = 0.1
    # Trials to fine-tune on (names/paths as in pretraining; empty = all the subject's
    # trials). Paper: upstream's per-subject held-out test_trials.
    config.data.trials = "test_trials" if paper else ""
    for key in ("subjects", "replace_p", "coord_jitter", "held_out_trials",
                "allow_held_out"):  # pretraining only
        del config.data[key]

    # Optimisation (upstream multi_elec_feature_extract.yaml, optim AdamW_finetune).
    config.optimizer = "adamw"  # head at lr, pretrained body at lr * body_lr_scale
    config.lr = 5e-4  # head learning rate
    config.body_lr_scale = 0.1  # body lr = 5e-5
    config.weight_decay = 0.01  # decoupled, scaled by each group's lr (torch AdamW)
    config.grad_clip = 1.0
    config.warmup = 0.025
    # lr x gamma every 1% of the steps: 0.95 (paper) leaves 0.6% of the lr at the end, which
    # over 2000 steps is fine but starves the short default run; it uses 0.99.
    config.gamma = 0.95 if paper else 0.99
    config.total_steps = 2000 if paper else 300
    config.batch_size = 128 if paper else 32
    config.eval_batch_size = 128 if paper else 64
    config.log_every = 100 if paper else 25
    config.eval_every = 100 if paper else 50  # validation ROC-AUC; the best is tested
    del config.lamb_clamp_value
    # Also fit the linear baseline (logistic regression on the stored embeddings, the same
    # split) and report it beside PopT in results.json and the log.
    config.linear_baseline = True
    return config
