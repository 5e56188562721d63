"""The non-finite contract every analyzer keeps: NaN and inf are reported, never read as zero.

jgrad measures gradients that vanish and explode, so a value that went non-finite (an
overflow in the forward pass of an exploding network, a NaN input, a NaN gradient) must
never come out looking like an exactly vanished one. Every analyzer result therefore
carries a :class:`NonFinite` record, as data that survives ``jit`` and ``vmap``:

- ``forward``: the index of the first layer output h_k (or time step t) whose forward value
  is not finite, counted as the result's own index counts (``GradFlow``: k = 0 is the
  input; sweeps: layer l = 1..L; recurrent: step t = 1..T); ``-1`` when every forward value
  is finite.
- ``backward``: the same for the backward (or accumulated) quantity: the first index, in
  the order the analyzer computes it (from the output towards the input for gradients and
  layer-to-output products, forward in time for Lyapunov exponents), whose value is not
  finite although everything it was computed from was; ``-1`` when none.

Values computed from a non-finite one are NaN, never ``-inf``: ``-inf`` is reserved for an
exactly zero quantity (a dead ReLU layer's gradient, a rank-deficient product's dropped
singular values). Called eagerly (outside ``jit``/``vmap``), an analyzer whose record is
set also warns with a :class:`NonFiniteWarning` that names the layer or step.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "NonFinite",
    "NonFiniteWarning",
    "first_true",
    "last_true",
    "no_nonfinite",
    "nonfinite_record",
    "reports_nonfinite",
    "all_finite",
    "warn_nonfinite",
]


class NonFiniteWarning(RuntimeWarning):
    """An analyzer met NaN or inf; its result's ``nonfinite`` field says where."""


class NonFinite(NamedTuple):
    """Where an analyzer's values first went non-finite (see the module docstring).

    Attributes:
        forward: int32, the first non-finite forward index, ``-1`` if none.
        backward: int32, the first non-finite backward index, ``-1`` if none.
    """

    forward: jax.Array
    backward: jax.Array

    @property
    def found(self) -> jax.Array:
        """bool, some value went non-finite (either direction)."""
        return (self.forward >= 0) | (self.backward >= 0)


def all_finite(x) -> jax.Array:
    """bool, every entry of every leaf of ``x`` is finite."""
    leaves = [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(x)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def first_true(flags: jax.Array, index: jax.Array | None = None) -> jax.Array:
    """int32, ``index[i]`` for the first ``i`` with ``flags[i]`` (``i`` itself when
    ``index`` is None), ``-1`` when no flag is set. ``flags`` is 1-D; the first is the
    lowest ``i``."""
    flags = jnp.asarray(flags, bool)
    i = jnp.argmax(flags)
    idx = i if index is None else jnp.asarray(index)[i]
    return jnp.where(flags.any(), idx, -1).astype(jnp.int32)


def last_true(flags: jax.Array, index: jax.Array | None = None) -> jax.Array:
    """As :func:`first_true` for the last (highest ``i``) set flag: the first one met by
    a pass that runs from the end backwards."""
    flags = jnp.asarray(flags, bool)
    n = flags.shape[0]
    i = n - 1 - jnp.argmax(flags[::-1])
    idx = i if index is None else jnp.asarray(index)[i]
    return jnp.where(flags.any(), idx, -1).astype(jnp.int32)


def nonfinite_record(forward: jax.Array, backward: jax.Array) -> NonFinite:
    """A :class:`NonFinite` from two int indices (``-1`` for none)."""
    return NonFinite(jnp.asarray(forward, jnp.int32), jnp.asarray(backward, jnp.int32))


def no_nonfinite() -> NonFinite:
    """The record of a computation whose values all stayed finite."""
    return nonfinite_record(-1, -1)


def _is_concrete(record: NonFinite) -> bool:
    return not any(isinstance(v, jax.core.Tracer) for v in record)


def _record_of(result) -> NonFinite | None:
    if isinstance(result, NonFinite):
        return result
    rec = getattr(result, "nonfinite", None)
    return rec if isinstance(rec, NonFinite) else None


def warn_nonfinite(name: str, record: NonFinite, unit: str = "layer") -> None:
    """Warns (:class:`NonFiniteWarning`) if the concrete ``record`` is set; silent for a
    traced record (inside ``jit``/``vmap`` the record is the report) and for a batched one
    (``vmap`` outside: read ``result.nonfinite``)."""
    if record is None or not _is_concrete(record):
        return
    fwd, bwd = (jnp.asarray(v) for v in record)
    if fwd.ndim or bwd.ndim:
        if bool(((fwd >= 0) | (bwd >= 0)).any()):
            warnings.warn(
                f"{name}: values went non-finite (NaN or inf) for some examples; "
                "result.nonfinite gives the first forward and backward index of each "
                "(-1: finite). Values computed from them are NaN, not zero.",
                NonFiniteWarning,
                stacklevel=3,
            )
        return
    fwd, bwd = int(fwd), int(bwd)
    if fwd < 0 and bwd < 0:
        return
    parts = []
    if fwd >= 0:
        parts.append(f"the forward pass went non-finite (NaN or inf) at {unit} {fwd}")
    if bwd >= 0:
        parts.append(f"the backward pass went non-finite at {unit} {bwd}")
    warnings.warn(
        f"{name}: " + " and ".join(parts) + ". Values computed from it are NaN, not "
        "zero; result.nonfinite holds these indices as data (also under jit/vmap).",
        NonFiniteWarning,
        stacklevel=3,
    )


def reports_nonfinite(unit: str = "layer"):
    """Decorator: after ``fn`` returns, warn (eager calls only) when the result's
    ``nonfinite`` record is set. ``unit`` names the index ("layer", "step")."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            warn_nonfinite(fn.__name__, _record_of(out), unit)
            return out

        return wrapper

    return deco
