"""The non-finite records of the sweep analyzers and the result types that carry them.

A sweep result is indexed by the block l of ``P_l = d y / d h_l`` (l = 0..L-1, l = 0 the
input). ``P_l`` is computed from the forward values ``h_l .. h_(L-1)`` (the blocks above
``h_l`` are linearized there) and from ``P_(l+1)``. Its record
(:class:`~jgrad.analyze._nonfinite.NonFinite`) is:

- ``forward``: the first k with a NaN or inf in ``h_k`` (k = 0 the input x, k = L the
  output y), ``-1`` if none;
- ``backward``: the largest l (the first met from the output) whose result holds a NaN or
  ``+inf`` although ``h_l .. h_(L-1)`` and ``P_(l+1)`` were finite, ``-1`` if none.

Every result computed from a non-finite value (``P_l`` with a non-finite ``h_j``, j >= l,
or at or below the backward index) is set to NaN as a whole, so that no ``-inf`` (an
exact zero) or finite-looking number comes out of it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrad.analyze._logspace import LogMatrix
from jgrad.analyze._nonfinite import (
    NonFinite,
    first_true,
    last_true,
    no_nonfinite,
    nonfinite_record,
)

__all__ = ["Spectrum", "Sweep", "bad_values", "nan_where", "product_record"]


class Spectrum(NamedTuple):
    """Log singular values with their non-finite record.

    Attributes:
        log_sv: natural-log singular values, descending: an ``(r,)`` array
            (``input_output_spectrum``) or a tuple of L such arrays, entry l the spectrum
            of ``d y / d h_l`` (``output_spectra``). ``-inf`` only for an exactly zero
            singular value; NaN where computed from a NaN or inf.
        nonfinite: a :class:`NonFinite`; see the "Non-finite values" section of
            docs/api.md for how its indices count.
    """

    log_sv: jax.Array | tuple
    nonfinite: NonFinite = no_nonfinite()


class Sweep(NamedTuple):
    """Every layer-to-output product ``d y / d h_l`` with their non-finite record.

    Attributes:
        products: a tuple of L :class:`LogMatrix`, entry l ``d y / d h_l``; a product
            computed from a NaN or inf is NaN (matrix and log scale).
        nonfinite: a :class:`NonFinite` (forward: block output k, k = 0 the input;
            backward: product index l).
    """

    products: tuple[LogMatrix, ...]
    nonfinite: NonFinite = no_nonfinite()


def bad_values(v) -> jax.Array:
    """bool, some leaf of ``v`` holds a NaN or ``+inf`` (``-inf``, log 0, is a value)."""
    flags = [jnp.any(jnp.isnan(a) | (a == jnp.inf)) for a in jax.tree.leaves(v)]
    return jnp.stack(flags).any() if flags else jnp.array(False)


def _from_top(flags: jax.Array) -> jax.Array:
    """``out[l]``: some ``flags[j]`` with j >= l is set."""
    return jnp.cumsum(flags[::-1].astype(jnp.int32))[::-1] > 0


def product_record(bad_h: jax.Array, bad_out: jax.Array) -> tuple[NonFinite, jax.Array]:
    """The record of L products (module docstring) and which of them to set to NaN.

    Args:
        bad_h: ``(L+1,)`` bool, ``h_k`` non-finite (``_segments.forward_bad``).
        bad_out: ``(L,)`` bool, result l holds a NaN or ``+inf``.

    Returns:
        (the :class:`NonFinite`, ``(L,)`` bool: result l was computed from a non-finite
        value).
    """
    n = bad_out.shape[0]
    dep = _from_top(bad_h[:n])
    new = bad_out & ~dep
    return nonfinite_record(first_true(bad_h), last_true(new)), dep | _from_top(new)


def nan_where(flag: jax.Array, tree):
    """Every float leaf of ``tree`` set to NaN where the scalar ``flag`` is set."""
    return jax.tree.map(lambda a: jnp.where(flag, jnp.nan, a), tree)
