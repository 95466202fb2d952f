"""Entry point: `python -m popt_jax.main --config configs/<job>.py [--workdir DIR] [--config.x=y]`.

The config's `job` field picks what runs; every job is one function of (config, workdir).
Errors caused by input (a bad file, a wrong path, a config value that cannot work) end the
run with one `error:` line on stderr and exit code 2; set POPT_JAX_TRACEBACK=1 to see the
full traceback instead.

Before any work: the config is validated (`preflight`: every problem as
`config.<field>: <problem>`), the workdir is created and locked (`core.workdir`: a second
process on it is refused), and the run's inputs are recorded in / checked against
`{workdir}/run_identity.json` (`core.run_identity`). Operating-system failures (a workdir
that is a file, a read-only or full disk) end as `error: <path>: <errno meaning>`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from popt_jax.core import oserrors, run_identity
from popt_jax.core import workdir as workdir_lib
from popt_jax.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Job configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (default: the config's `workdir`).")

JOB_NAMES = ("extract_features", "pretrain", "finetune", "brain_encoder", "neuroprobe",
             "extract_recordings", "embed", "predict", "pretrain_brainbert",
             "brain_encoder_ensemble", "predict_images", "harness")
FMRI_JOBS = ("brain_encoder", "brain_encoder_ensemble", "predict_images")


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
    if job == "neuroprobe":
        from popt_jax.ieeg.neuroprobe import neuroprobe_job

        return neuroprobe_job(config, workdir)
    if job in ("embed", "predict", "extract_recordings"):
        from popt_jax.ieeg import apply, recording_store

        return {"embed": apply.embed_job, "predict": apply.predict_job,
                "extract_recordings": recording_store.extract_recordings_job}[job](config,
                                                                                   workdir)
    if job == "pretrain_brainbert":
        from popt_jax.ieeg.brainbert_pretrain import pretrain_brainbert

        return pretrain_brainbert(config, workdir)
    if job == "harness":
        from popt_jax.ieeg.harness import harness_job

        return harness_job(config, workdir)
    if job == "brain_encoder":
        from popt_jax.fmri.train import brain_encoder_job

        return brain_encoder_job(config, workdir)
    if job == "brain_encoder_ensemble":
        from popt_jax.fmri.ensemble import ensemble_job

        return ensemble_job(config, workdir)
    if job == "predict_images":
        from popt_jax.fmri.predict import predict_images_job

        return predict_images_job(config, workdir)
    raise UserError(f"config.job: {job!r} is not one of {', '.join(JOB_NAMES)}")


def preflight(job: str, config, workdir: str, *, check_inputs: bool) -> None:
    """Validates `config` (always) and checks/records the run's inputs (`check_inputs`).

    Every job has its validator in its family's `validate` module (`JOBS`); the jobs that
    resume from checkpoints or read a feature store also record their inputs
    (`IDENTITY_JOBS`) in `{workdir}/run_identity.json`.
    """
    if job in FMRI_JOBS:
        from popt_jax.fmri import validate as family
    else:
        from popt_jax.ieeg import validate as family
    if job not in family.JOBS:  # a job added to JOB_NAMES without its checks
        raise UserError(f"config.job: {job!r} has no config checks (popt_jax.*.validate.JOBS)")
    if not check_inputs:
        family.validate(job, config)
        return
    if job in family.IDENTITY_JOBS:
        identity, resuming = family.run_inputs(job, config, workdir)
        run_identity.check_or_record(workdir, identity, resuming=resuming)


def _fail(message) -> None:
    """Prints the one `error:` line and ends the process with exit code 2, at once.

    `os._exit`, not `sys.exit`: after a failed asynchronous checkpoint write, Orbax's and
    tensorstore's background threads still hold pending writes; a normal interpreter
    shutdown would wait on them (a hang of up to the async timeout) and let their
    finalisers print tracebacks after our line. Every output is written to a temporary
    name and renamed when complete, so nothing half-written can look finished, and the
    workdir lock is an `flock` the kernel releases with the process.
    """
    print(f"error: {message}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(2)


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
    lock = None
    try:
        preflight(job, config, workdir, check_inputs=False)
        import jax  # after the checks: a bad config fails fast, without starting JAX

        from popt_jax.core import mesh

        # Multi-host set-up must come before anything touches a device (the log line does).
        mesh.maybe_initialize_distributed(config)
        if jax.process_index() == 0:  # other processes share (or mirror) process 0's folder
            lock = workdir_lib.claim(workdir)
            preflight(job, config, workdir, check_inputs=True)
        logging.info("JAX %s, process %d/%d, local devices: %s", jax.__version__,
                     jax.process_index(), jax.process_count(), jax.local_devices())
        logging.info("job %s, workdir %s", job, os.path.abspath(workdir))
        run_job(job, config, workdir)
    except UserError as e:
        if os.environ.get("POPT_JAX_TRACEBACK"):
            raise
        _fail(e)
    except Exception as e:  # noqa: BLE001 - OS failures in any wrapping; others re-raised
        line = oserrors.describe(e, workdir)  # the workdir when the error names no file
        if line is None and isinstance(e, OSError):
            line = " ".join(str(e).split())  # e.g. FileNotFoundError("feature store not found")
        if line is None or os.environ.get("POPT_JAX_TRACEBACK"):
            raise
        _fail(line)
    finally:
        if lock is not None:
            lock.release()


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
    except SyntaxError as e:
        _fail(f"{e.filename}:{e.lineno}: cannot load the --config file: SyntaxError: {e.msg}")
    except Exception as e:  # noqa: BLE001 - a config file's get_config() may raise anything
        _fail(f"cannot load the --config file: {_raised_where(e)}{type(e).__name__}: {e}")


def _raised_where(exc: BaseException) -> str:
    """`file:line: ` of the innermost frame outside popt_jax/absl/ml_collections."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not any(s in f.filename for s in ("/absl/", "/ml_collections/", "<frozen"))]
    return f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=_parse_flags)
