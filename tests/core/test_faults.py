"""Fault injection (issue 16): a full disk, a read-only folder and a kill -9, for real.

The faults are made with a small tmpfs (disk full) and read-only bind mounts (root ignores
permission bits, so `chmod` cannot make a folder unwritable); that needs root, so where
`mount` is not allowed every test here is skipped with the reason. Each failure must end
promptly with exit code 2 and ONE `error:` line naming the path and the errno meaning, no
traceback, and finished checkpoints must stay intact (a later run resumes from them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_util import ROOT, assert_one_error, run_main, snapshot, tiny_pretrain_args


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {getattr(e, 'stderr', e)}")
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def read_only(path: Path):
    """`path` made read-only in place (a read-only bind mount over itself)."""
    try:
        _mount("--bind", str(path), str(path))
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot bind-mount here (needs root): {getattr(e, 'stderr', e)}")
    try:
        # Remounting read-only fails (EBUSY, exit 32) while a file is open for writing through
        # the new mount: a running job that opened one since the bind (a checkpoint, a log
        # line) makes it fail for a moment. Retry for up to ~5 s; then it is a real failure.
        for attempt in range(100):
            try:
                _mount("-o", "remount,bind,ro", str(path))
                break
            except subprocess.CalledProcessError:
                if attempt == 99:
                    raise
                time.sleep(0.05)
        yield path
    finally:
        _umount(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from popt_jax.ieeg.extract import write_random_features

    out = tmp_path_factory.mktemp("store") / "features"
    write_random_features(out, 1, 0, n_electrodes=8, n_windows=60, n_task=40, hidden_dim=32)
    return out


def _popen(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("POPT_JAX_TRACEBACK", None)
    return subprocess.Popen([sys.executable, "-m", "popt_jax.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached the expected state"
        time.sleep(0.05)


def _finished_steps(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) \
        if ckpt_dir.is_dir() else []


def test_disk_full_while_writing_the_synthetic_tree(tmp_path):
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        workdir = mnt / "ext"
        res = run_main("--config", "configs/tiny.py", "--workdir", str(workdir))
        assert_one_error(res, str(mnt), "No space left on device")
        assert not (workdir / "results.json").exists()
        assert not (workdir / "synthetic_braintreebank").exists()  # only the .tmp folder


def test_disk_full_while_writing_a_checkpoint(store, tmp_path):
    with tmpfs(tmp_path / "mnt", "300k") as mnt:
        workdir = mnt / "run"
        res = run_main(*tiny_pretrain_args(store, workdir))
        assert_one_error(res, str(workdir / "checkpoints"), "No space left on device")
        assert not (workdir / "results.json").exists()
        assert res.stderr.count("\n") < 200  # no flood of per-writer tracebacks
        for step in _finished_steps(workdir / "checkpoints"):  # finished means complete
            assert (workdir / "checkpoints" / str(step) / "params").is_dir()


def test_read_only_workdir(store, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with read_only(workdir):
        assert_one_error(run_main(*tiny_pretrain_args(store, workdir)), str(workdir),
                         "Read-only file system")


def test_read_only_mid_run_then_kill_during_a_checkpoint_then_resume(store, tmp_path):
    """Run 1 loses its workdir's write access mid-run; run 2 resumes and is killed -9 while
    writing a checkpoint; run 3 resumes from the last finished one (the dead run's lock file
    does not block it)."""
    workdir = tmp_path / "run"
    ckpts = workdir / "checkpoints"
    args = tiny_pretrain_args(store, workdir, "--config.total_steps=400", "--config.log_every=100")
    proc = _popen(args + ["--config.eval_every=3"])
    try:
        _wait_for(lambda: (ckpts / "3").is_dir(), proc)
        with read_only(workdir):
            kept = snapshot(ckpts / "3")
            out, err = proc.communicate(timeout=300)
            assert_one_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                             str(workdir), "Read-only file system")
            assert err.count("\n") < 200  # no flood of per-writer tracebacks
    finally:
        if proc.poll() is None:
            proc.kill()
    assert snapshot(ckpts / "3") == kept

    first = _finished_steps(ckpts)[-1]
    proc = _popen(args + ["--config.eval_every=1"])
    try:  # the moment a new step is being written
        _wait_for(lambda: any(p.name.endswith("orbax-checkpoint-tmp") and
                              not p.name.startswith(f"{first}.") for p in ckpts.iterdir()),
                  proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (workdir / ".popt_jax.lock").exists()
    last = _finished_steps(ckpts)[-1]
    res = run_main(*args, "--config.eval_every=1", f"--config.stop_after_steps={last + 1}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {ckpts / str(last)}" in res.stderr
    assert last + 1 in _finished_steps(ckpts)
