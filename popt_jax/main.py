"""Entry point: `python -m popt_jax.main --config configs/<job>.py [--workdir DIR] [--config.x=y]`.

The config's `job` field picks what runs; every job takes (config, workdir). Errors caused by
input (a bad file, a wrong path, a config value that cannot work) end the run with one line on
stderr and exit code 2; set POPT_JAX_TRACEBACK=1 to see the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Job configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (default: the config's `workdir`).")

# job name -> "module:function"; imported lazily so one job's dependencies never slow another.
JOBS = {
    "extract_features": "popt_jax.features:extract_features_job",
    "pretrain": "popt_jax.train:pretrain_job",
    "finetune": "popt_jax.train:finetune_job",
    "brain_encoder": "popt_jax.brain_encoder_train:brain_encoder_job",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    from popt_jax import convert, torch_pickle
    from popt_jax.data import braintreebank

    return (braintreebank.DataError, convert.ConversionError, torch_pickle.CheckpointError,
            FileNotFoundError, NotADirectoryError, PermissionError)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = FLAGS.config
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/extract_features.py")
    try:
        job = config.get("job")
    except OSError as e:  # ml_collections defers a config file's load error to first use
        cause = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1]
        print(f"error: cannot load the --config file: {cause}", file=sys.stderr)
        sys.exit(2)
    if job not in JOBS:
        raise app.UsageError(f"config job {job!r} is not one of {sorted(JOBS)}")
    workdir = FLAGS.workdir or config.get("workdir") or os.path.join("runs", job)
    # Multi-host set-up must come before anything touches a device (the log line below does).
    from popt_jax import train_lib

    try:
        train_lib.maybe_initialize_distributed(config)
    except train_lib.TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    logging.info("JAX %s, process %d/%d, local devices: %s", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_devices())
    logging.info("job %s, workdir %s", job, os.path.abspath(workdir))
    module, fn = JOBS[job].split(":")
    run = getattr(importlib.import_module(module), fn)
    try:
        run(config, workdir)
    except _user_errors() as e:
        if os.environ.get("POPT_JAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a bad config file or override reported in one line."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        # A config file that fails to load arrives with its traceback folded into the text:
        # keep the last line, which names the file and the cause.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        text = lines[-1] if "Traceback" in str(e) or len(lines) > 3 else " ".join(lines)
        print(f"error: {text}", file=sys.stderr)
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        # ml_collections raises these for `--config.no_such_field=1`, a value of the wrong
        # type or a config file that cannot be loaded.
        print(f"error: bad --config or --config.* override: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=_parse_flags)
