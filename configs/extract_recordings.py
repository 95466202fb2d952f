"""Feature-store files from your own recordings (BIDS-iEEG or NWB), for pretrain/finetune.

    python -m popt_jax.main --config configs/extract_recordings.py --workdir runs/mine \
        --config.data.root=/data/bids --config.data.subject=01 \
        --config.event_task.column=trial_type --config.event_task.positive='("word",)'

Every run becomes {workdir}/features/sub_{S}_trial{TTT}.h5 in the Brain Treebank store
format (popt_jax/ieeg/recording_store.py); point configs/finetune.py's `features_dir` at
{workdir}/features and set `task` to `event_task.name`. `:tiny` is the test variant.
"""

from ml_collections import config_dict

from popt_jax.core.config_lib import load_sibling_config


def get_config(arg=None) -> config_dict.ConfigDict:
    embed = load_sibling_config(__file__, "embed")
    config = config_dict.ConfigDict()
    config.job = "extract_recordings"  # popt_jax.main dispatches on this
    config.workdir = ""  # output folder; --workdir wins
    config.seed = 0  # seeds a random BrainBERT (no checkpoint) and nothing else
    embed.recording_sections(config)
    embed.model_sections(config)
    config.store_subject = 0  # subject number in file names; 0 = the numeric BIDS label
    config.tasks = ("pretrain",)  # + volume/pitch/sentence_onset/word_onset (word events)
    config.event_task = config_dict.ConfigDict()  # a task from one event column
    config.event_task.name = "events"  # task group name in the store
    config.event_task.column = ""  # e.g. trial_type; empty = no event task
    config.event_task.positive = ("word",)  # values labelled 1
    config.event_task.negative = ()  # values labelled 0; empty = every other value
    config.storage_dtype = "float32"  # float32 | float16
    config.max_windows = 200  # cap per group and run; -1 = all
    if arg == "tiny":
        embed.shrink(config)
        config.max_windows = 8
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (have: tiny)")
    return config
