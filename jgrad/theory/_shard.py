"""The grid axis of a sweep, sharded over every device of one or several hosts.

A phase diagram is a function vmapped over a flat axis of grid points. Here that axis is
laid out over a device mesh with ``jax.sharding``: a :class:`jax.sharding.NamedSharding`
that splits it over ALL the mesh's axes (their product is the number of devices), so one
process with one CPU, a GPU, a TPU slice or several hosts each holding some devices run
the same program. A grid that does not divide the device count is padded by the caller
(:func:`padded_length`) and the padding dropped after the run.

Several hosts use JAX's own multi-controller runtime: every process calls
``jax.distributed.initialize(...)`` before anything else touches JAX and then runs the
same program; ``jax.devices()`` then lists every host's devices and the default mesh
spans them all. Inputs are made global arrays with ``jax.make_array_from_callback``
(each process supplies only the shards its own devices hold), and :func:`to_host`
gathers a result onto every process (``multihost_utils.process_allgather``), so every
host gets the whole diagram.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "AXIS",
    "check_mesh",
    "default_mesh",
    "padded_length",
    "replicated",
    "row_sharding",
    "shard_rows",
    "to_host",
]

#: The axis name of the default 1-D mesh.
AXIS = "grid"


def default_mesh() -> Mesh:
    """A 1-D mesh named ``"grid"`` over ``jax.devices()`` (every process's devices when
    ``jax.distributed.initialize`` ran)."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def check_mesh(name: str, mesh: Any) -> Mesh:
    """Returns ``mesh`` (None: :func:`default_mesh`) if it is a ``jax.sharding.Mesh``
    with at least one device, else raises ValueError."""
    if mesh is None:
        return default_mesh()
    if not isinstance(mesh, Mesh):
        raise ValueError(
            f"`{name}` must be a jax.sharding.Mesh or None, got "
            f"{type(mesh).__name__}. Build one with jax.sharding.Mesh("
            "np.asarray(jax.devices()), ('grid',)), or pass None for that default."
        )
    if mesh.devices.size < 1:
        raise ValueError(
            f"`{name}` must hold at least one device, got a mesh of shape "
            f"{dict(mesh.shape)}. Pass mesh=None to use every device."
        )
    return mesh


def padded_length(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-n // multiple) * multiple


def row_sharding(mesh: Mesh) -> NamedSharding:
    """Axis 0 split over all of ``mesh``'s axes (their product), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
    """A copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def shard_rows(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The host array ``value`` (the same on every process) as a global jax array with
    ``sharding``; each process places only the shards its own devices hold, which is
    what a multi-process run needs (a plain ``device_put`` would need them all)."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def to_host(tree: Any) -> Any:
    """Every leaf of ``tree`` as a NumPy array holding the whole global array, on every
    process (``process_allgather`` across hosts; a plain copy within one)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(
        lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree
    )
