"""Entry point: `python -m popt_jax.main --config configs/<job>.py [--workdir DIR] [--config.x=y]`.

The config's `job` field picks what runs; every job is one function of (config, workdir).
Errors caused by input (a bad file, a wrong path, a config value that cannot work) end the
run with one `error:` line on stderr and exit code 2; set POPT_JAX_TRACEBACK=1 to see the
full traceback instead.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from popt_jax.core import mesh
from popt_jax.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Job configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (default: the config's `workdir`).")

JOB_NAMES = ("extract_features", "pretrain", "finetune", "harness", "brain_encoder")


def run_job(job: str, config, workdir: str):
    """Runs one job; each family is imported only by its own jobs."""
    if job == "extract_features":
        from popt_jax.ieeg.extract import extract_features_job

        return extract_features_job(config, workdir)
    if job == "pretrain":
        from popt_jax.ieeg.train import pretrain_job

        return pretrain_job(config, workdir)
    if job == "finetune":
        from popt_jax.ieeg.train import finetune_job

        return finetune_job(config, workdir)
    if job == "harness":
        from popt_jax.ieeg.harness import harness_job

        return harness_job(config, workdir)
    if job == "brain_encoder":
        from popt_jax.fmri.train import brain_encoder_job

        return brain_encoder_job(config, workdir)
    raise UserError(f"config.job: {job!r} is not one of {', '.join(JOB_NAMES)}")


def _fail(message) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = FLAGS.config
    if config is None:
        _fail("--config is required, e.g. --config configs/pretrain.py")
    try:
        job = config.get("job")
    except OSError as e:  # ml_collections defers a config file's load error to first use
        cause = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1]
        _fail(f"cannot load the --config file: {cause}")
    if job not in JOB_NAMES:
        _fail(f"config.job: {job!r} is not one of {', '.join(JOB_NAMES)}")
    workdir = FLAGS.workdir or config.get("workdir") or os.path.join("runs", job)
    try:
        # Multi-host set-up must come before anything touches a device (the log line does).
        mesh.maybe_initialize_distributed(config)
        logging.info("JAX %s, process %d/%d, local devices: %s", jax.__version__,
                     jax.process_index(), jax.process_count(), jax.local_devices())
        logging.info("job %s, workdir %s", job, os.path.abspath(workdir))
        run_job(job, config, workdir)
    except (UserError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if os.environ.get("POPT_JAX_TRACEBACK"):
            raise
        _fail(e)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a bad config file or override reported in one line."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        # A config file that fails to load arrives with its traceback folded into the text:
        # keep the last line, which names the file and the cause.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        _fail(lines[-1] if "Traceback" in str(e) or len(lines) > 3 else " ".join(lines))
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        # ml_collections raises these for `--config.no_such_field=1`, a value of the wrong
        # type or a config file that cannot be loaded.
        _fail(f"bad --config or --config.* override: {e}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=_parse_flags)
