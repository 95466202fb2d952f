"""The built-in default inputs of the PopT jobs, made by one explicit step.

A PopT job reads a feature store (`config.features_dir`) and, for fine-tuning, a pretrained
model (`config.init_checkpoint`); it never runs another job by itself. When those paths are
empty, `prepare_default_inputs` makes the built-in default, logged, into the workdir:

  * `{workdir}/extract/`: the extraction job (`config.default_inputs.extract`, i.e.
    `configs/extract_features.py`: a synthetic Brain Treebank and a small random BrainBERT)
    with its store in `{workdir}/extract/features`;
  * `{workdir}/pretrain/` (fine-tuning only): a short PopT pretraining run
    (`config.default_inputs.pretrain`) on that store, or on `config.features_dir` when given.

Each is made once: a finished one (its `results.json`) is reused, so rerunning the command
resumes or re-tests instead of redoing them. The default-input configs are used nowhere else.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

import jax
from absl import logging

__all__ = ["DefaultInputs", "prepare_default_inputs", "default_features", "default_pretrained"]


class DefaultInputs(NamedTuple):
    """What a PopT job reads: a feature store, and for fine-tuning what to start from."""

    features_dir: Path
    init_checkpoint: Path | None


def _sync(what: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"popt_jax {what}")


def default_features(extract_config, workdir: Path) -> Path:
    """`{workdir}/extract/features`, extracted with `extract_config` unless already done
    (process 0 extracts, the others wait)."""
    job_dir = Path(workdir) / "extract"
    store = job_dir / "features"
    if (job_dir / "results.json").exists():
        logging.info("default inputs: reusing the feature store %s", store)
        return store
    if jax.process_index() == 0:
        from popt_jax.ieeg import extract

        logging.info("default inputs: no features_dir given; extracting the built-in default "
                     "(synthetic Brain Treebank unless data.root is set) into %s", store)
        extract.extract_features_job(extract_config, job_dir)
    _sync("feature extraction")
    return store


def default_pretrained(pretrain_config, workdir: Path, store: Path,
                       position_code: str | None = None) -> Path:
    """`{workdir}/pretrain`: a PopT pretraining run with `pretrain_config` on `store` (reused
    when finished, resumed when interrupted); `position_code` (the fine-tuning run's) replaces
    the config's, so the model it makes can be fine-tuned with that code."""
    from popt_jax.ieeg import train

    run = Path(workdir) / "pretrain"
    if (run / "results.json").exists():
        logging.info("default inputs: reusing the finished pretraining run %s", run)
        return run
    cfg = copy.deepcopy(pretrain_config)
    with cfg.unlocked():
        cfg.features_dir = str(store)
        cfg.distributed = False  # the calling job has initialised it if wanted
        if position_code is not None:
            cfg.position_code = position_code
    logging.info("default inputs: no init_checkpoint given; pretraining PopT in %s", run)
    train.pretrain_job(cfg, run)
    return run


def prepare_default_inputs(config, workdir: Path, *, pretrained: bool = False
                           ) -> DefaultInputs:
    """The job's inputs: `config.features_dir` / `config.init_checkpoint` when set, otherwise
    the built-in defaults made under `workdir` from `config.default_inputs`.

    Raises:
      FileNotFoundError: `features_dir` is set but is not a folder.
    """
    store = config.get("features_dir") or ""
    if store:
        store = Path(store)
        if not store.is_dir():
            raise FileNotFoundError(f"feature store not found: {store}")
    else:
        store = default_features(config.default_inputs.extract, workdir)
    init = None
    if pretrained:
        init = config.get("init_checkpoint") or ""
        init = Path(init) if init else default_pretrained(
            config.default_inputs.pretrain, workdir, store,
            position_code=config.get("position_code") or None)
    return DefaultInputs(store, init)
