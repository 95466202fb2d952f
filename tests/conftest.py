"""Shared test fixtures and markers.

* `braintreebank_tree`: ONE synthetic Brain Treebank per session (2 subjects, 60 s, seed 3),
  read-only: a test that damages a tree makes its own copy or its own small tree.
* `algonauts_root`: ONE synthetic Algonauts 2023 tree per session (40 + 6 images of 28 px,
  90 + 80 vertices), read-only likewise.
* the `gpu` marker: such tests are skipped when JAX sees no GPU (checked only when one runs,
  so the suite never initialises a backend early).

Test files are grouped like the package (`tests/core`, `tests/ieeg`, `tests/fmri`; the
package-wide `test_main.py` and `test_layout.py` here). `tests/` itself is on `sys.path`
(pytest inserts the folder of this rootdir conftest), so the PyTorch references
(`torch_reference*.py`, kept here) import by name from every test folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def braintreebank_tree(tmp_path_factory) -> Path:
    """The session's synthetic Brain Treebank (do not modify it)."""
    from popt_jax.ieeg.synthetic import write_synthetic_braintreebank

    return write_synthetic_braintreebank(tmp_path_factory.mktemp("btb"), n_subjects=2,
                                         duration_s=60, seed=3)


@pytest.fixture(scope="session")
def algonauts_root(tmp_path_factory) -> Path:
    """The session's synthetic Algonauts tree (do not modify it)."""
    from popt_jax.fmri import synthetic_algonauts as S

    path = tmp_path_factory.mktemp("algonauts")
    S.write_synthetic_algonauts(path, S.SyntheticAlgonautsConfig(
        n_train=40, n_test=6, image_size=28, n_vertices=(90, 80)))
    return path


def _has_gpu() -> bool:
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and not _has_gpu():
        pytest.skip("needs a GPU (JAX sees none)")
