"""Devices, meshes and batches: distributed start-up, a 1-D ("data",) mesh, replicated
state and batches placed per process. The same code runs on one CPU, forced host devices, a
GPU node or a multi-host pod.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from popt_jax.errors import TrainingError

_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize_distributed(config) -> bool:
    """`jax.distributed.initialize` when `config.distributed` or JAX_COORDINATOR_ADDRESS is set.

    Reads `config.coordinator_address`, `num_processes`, `process_id` or the JAX_* variables
    of the same names (SLURM/Open MPI clusters are detected by JAX itself). Must run before
    anything touches a JAX device. CPU collectives use gloo, so this also works across
    processes on one machine without accelerators.
    """
    wanted = bool(config.get("distributed", False)) or bool(os.environ.get(_DIST_ENV[0]))
    if not wanted:
        return False
    from jax._src import distributed as jax_distributed

    if jax_distributed.global_state.client is not None:
        return True  # already initialised (e.g. by the caller)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    addr = config.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    n = config.get("num_processes", -1)
    n = int(os.environ.get("JAX_NUM_PROCESSES", n if n is not None else -1))
    pid = config.get("process_id", -1)
    pid = int(os.environ.get("JAX_PROCESS_ID", pid if pid is not None else -1))
    if addr:
        kwargs["coordinator_address"] = addr
    if n >= 0:
        kwargs["num_processes"] = n
    if pid >= 0:
        kwargs["process_id"] = pid
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        raise TrainingError(
            f"jax.distributed.initialize failed ({' '.join(str(e).split())}); it must run "
            "before anything touches a JAX device") from None
    logging.info("distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True


def make_mesh(n_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D ("data",) mesh over all devices of all processes (or the first `n_devices`)."""
    n = n_devices or jax.device_count()
    devices = np.asarray(jax.devices()[:n])
    return jax.sharding.Mesh(devices, ("data",))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicate(tree, mesh):
    """Copies every array of `tree` onto all devices of `mesh` (from host or device values).

    Always a copy (`may_alias=False`): the result is donated to the train step, which must
    not delete the caller's arrays (e.g. the model's own state).
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding, may_alias=False)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


def local_batch_size(global_batch: int, mesh) -> int:
    """Rows each process feeds for a global batch; checks divisibility by the device count."""
    n_dev = mesh.devices.size
    if global_batch % n_dev:
        raise TrainingError(f"batch size {global_batch} is not divisible by the {n_dev} devices "
                            "of the data mesh; choose a multiple")
    return global_batch // jax.process_count()



# What the steps read; anything else in a batch (example ids, ...) stays on the host.
MODEL_KEYS = ("x", "pad_mask", "coords", "seq_id", "cls_label", "token_label", "label",
              "weight", "valid")


def to_global(batch: dict[str, np.ndarray], mesh,
              keys: tuple[str, ...] | None = MODEL_KEYS) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over "data" (leading axis).

    Keys outside `keys` are dropped (None keeps every key).
    """
    sharding = data_sharding(mesh)
    n_proc = jax.process_count()

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(
            sharding, a, (a.shape[0] * n_proc,) + a.shape[1:])

    return {k: put(v) for k, v in batch.items() if keys is None or k in keys}


def pad_rows(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Sets a float `weight` (from `valid` if present) and pads to `size` rows with weight 0.

    Filler rows repeat row 0; `valid` is dropped in favour of `weight`.
    """
    n = len(batch["x"])
    out = {k: v for k, v in batch.items() if k != "valid"}
    out["weight"] = np.asarray(batch.get("weight", batch.get("valid", np.ones(n))), np.float32)
    if n >= size:
        return out
    idx = np.concatenate([np.arange(n), np.zeros(size - n, np.int64)])
    out = {k: np.asarray(v)[idx] for k, v in out.items()}
    out["weight"][n:] = 0.0
    return out


def host_array(x) -> np.ndarray:
    """A (possibly multi-process sharded) global array as one numpy array on every host."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))



def allgather_host(a: np.ndarray) -> np.ndarray:
    """Concatenates a host array over processes (process order, as the global batch rows)."""
    if jax.process_count() == 1:
        return a
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


