"""Products of Jacobians in log space (their spectra: :mod:`jgrad.analyze._product_spectra`).

A product of L Jacobians leaves float32's range after a few dozen layers in a vanishing or
exploding regime (10^-38 .. 10^38). Two accumulations keep it exact at any depth:

- **rescaled** (the default): multiply, divide by the Frobenius norm, keep the log of the norm.
  The stored matrix has norm 1 and ``log_scale`` carries the magnitude, so the top singular
  values are exact at any depth. Singular values below ``sigma_max * eps`` (eps = 1.2e-7 in
  float32) are lost in rounding: the normalised matrix cannot resolve them.
- **qr** (``method="qr"``): push an orthonormal basis through the layers and re-orthonormalise
  after each, ``J_k Q_{k-1} = Q_k R_k``, summing ``log |diag R_k|``. The sum of all of them is
  ``log |det(J_L ... J_1)|`` exactly (up to rounding, at any depth and any conditioning); the
  sorted terms are the finite-depth Lyapunov exponents times L, which equal the log singular
  values of the product only asymptotically in depth (Oseledets), not at small depth.

All logs here are natural logs.

References:
    Benettin, Galgani, Giorgilli & Strelcyn, "Lyapunov characteristic exponents for smooth
    dynamical systems", Meccanica 15, 1980 (QR re-orthonormalisation).
    Pennington, Schoenholz & Ganguli, "Resurrecting the sigmoid in deep learning through
    dynamical isometry", NeurIPS 2017, arXiv:1711.04735 (spectra of J_L ... J_1).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jgrad.analyze._jacobians import Jacobians
from jgrad.analyze._logspace import (
    LogMatrix,
    accumulate_dtype,
    normalize,
)
from jgrad.analyze._precision import full_precision

__all__ = [
    "jacobian_product",
    "input_products",
    "output_products",
]

METHODS = ("rescaled", "qr")


def _as_mats(jacobians: Any, name: str = "jacobians", dtype=None):
    """A ``(L, m, n)`` array (scan path) or a tuple of 2-D arrays (loop path), checked,
    cast to ``dtype`` when given (the accumulation dtype)."""
    mats = _as_mats_checked(jacobians, name)
    if dtype is None:
        return mats
    if hasattr(mats, "shape"):
        return mats.astype(dtype)
    return tuple(m.astype(dtype) for m in mats)


def _as_mats_checked(jacobians: Any, name: str):
    # a Jacobians' stacked (n, N, N) entry is a repeat layer's; in a plain sequence a
    # 3-D entry is refused (most likely a vmapped batch)
    held = isinstance(jacobians, Jacobians)
    if held:
        jacobians = jacobians.mats
    if isinstance(jacobians, LogMatrix):
        raise ValueError(
            f"`{name}` must be the Jacobians J_1..J_L, got a LogMatrix (a product). Use "
            "log_singular_values(product) for its spectrum."
        )
    if hasattr(jacobians, "ndim") and not isinstance(jacobians, (tuple, list)):
        if jacobians.ndim != 3 or jacobians.shape[0] == 0:
            raise ValueError(
                f"`{name}` as an array must have shape (L, m, n) with L >= 1 (stacked "
                f"Jacobians of one example; vmap for a batch), got {jacobians.shape}."
            )
        if jacobians.shape[1] == jacobians.shape[2]:
            return jacobians
        jacobians = tuple(jacobians)
    if not isinstance(jacobians, (tuple, list)) or not jacobians:
        raise ValueError(
            f"`{name}` must be a Jacobians from layer_jacobians, a non-empty sequence of 2-D "
            f"arrays or an (L, m, n) array, got {type(jacobians).__name__}."
        )
    mats = tuple(jnp.asarray(j) for j in jacobians)
    for k, j in enumerate(mats):
        stacked = held and j.ndim == 3 and j.shape[0] >= 1 and j.shape[1] == j.shape[2]
        if j.ndim != 2 and not stacked:
            raise ValueError(
                f"`{name}[{k}]` must be a 2-D Jacobian (out, in) of one example, got "
                f"shape {j.shape}. vmap over examples for a batch; a repeat layer's "
                "stacked Jacobians are read from the Jacobians that layer_jacobians "
                "returns."
            )
        if k and j.shape[-1] != mats[k - 1].shape[-2]:
            raise ValueError(
                f"`{name}[{k}]` must take the output of `{name}[{k - 1}]`: expected "
                f"{mats[k - 1].shape[-2]} columns, got shape {j.shape}. Pass the "
                "Jacobians in forward order J_1, ..., J_L."
            )
    return mats


def _count(mats) -> int:
    """L, the number of Jacobians (a stacked ``(n, N, N)`` entry counts n)."""
    if hasattr(mats, "shape"):
        return mats.shape[0]
    return sum(m.shape[0] if m.ndim == 3 else 1 for m in mats)


def _sub(mats, start, stop):
    """The entries of a sequence ``mats`` holding layers start+1..stop (static bounds),
    a stacked entry sliced to the layers it shares with that range."""
    out, i = [], 0
    for m in mats:
        r = m.shape[0] if m.ndim == 3 else 1
        lo, hi = max(start, i), min(stop, i + r)
        if lo < hi:
            out.append(m[lo - i : hi - i] if m.ndim == 3 else m)
        i += r
    return tuple(out)


def _first(m):
    """The first Jacobian of an entry, and the rest of it (None for a 2-D entry)."""
    if m.ndim == 2:
        return m, None
    return m[0], (m[1:] if m.shape[0] > 1 else None)


def _check_range(start, stop, length):
    stop = length if stop is None else stop
    if not (
        isinstance(start, int)
        and isinstance(stop, int)
        and 0 <= start <= stop <= length
    ):
        raise ValueError(
            f"`start`, `stop` must be ints with 0 <= start <= stop <= L = {length}, got "
            f"start={start!r}, stop={stop!r}. The product J_stop ... J_(start+1) is "
            "d h_stop / d h_start."
        )
    return start, stop


@full_precision
def jacobian_product(
    jacobians: Any,
    start: int = 0,
    stop: int | None = None,
    *,
    accumulate: str | None = None,
) -> LogMatrix:
    """``d h_stop / d h_start = J_stop ... J_(start+1)`` in log space (rescaled).

    Args:
        jacobians: a :class:`Jacobians`, a sequence of ``(n_l, n_(l-1))`` matrices, or an
            ``(L, n, n)`` array.
        start: the layer index i of h_i (0 is the input).
        stop: the layer index j > i of h_j; default L (the output).
        accumulate: dtype the products are accumulated in: None (the Jacobians'
            own), ``"float32"`` or ``"float64"``. ``"float64"`` under a float32 (or
            bfloat16) model keeps singular values down to ``sigma_max * 1e-16`` instead
            of ``sigma_max * 1e-7`` (the rescaled method) and sums the QR logs to float64
            rounding; the per-layer Jacobians keep the model's precision. Needs 64-bit JAX
            (``jax.config.update("jax_enable_x64", True)``).

    Returns:
        A :class:`LogMatrix` of shape ``(n_stop, n_start)``; the identity when equal.
        A product that takes in a Jacobian holding a NaN or inf is all NaN (matrix and
        log scale); the same holds for :func:`input_products` and
        :func:`output_products`.

    Examples:
        >>> import jax.numpy as jnp
        >>> js = jnp.stack([jnp.eye(2) * 1e-30] * 4)
        >>> p = jacobian_product(js)
        >>> round(float(p.log_scale / jnp.log(10.0)), 3)  # log10 of ||1e-120 I||_F
        -119.849
    """
    mats = _as_mats(jacobians, dtype=accumulate_dtype(accumulate))
    start, stop = _check_range(start, stop, _count(mats))
    if start == stop:
        if hasattr(mats, "shape"):
            n = mats[start - 1].shape[0] if start else mats[0].shape[1]
        else:
            n = (
                _sub(mats, start - 1, start)[0].shape[-2]
                if start
                else mats[0].shape[-1]
            )
        dtype = mats[0].dtype
        return LogMatrix(*normalize(jnp.eye(n, dtype=dtype), jnp.zeros((), dtype)))
    if isinstance(mats, jax.Array) or hasattr(mats, "shape"):
        first, rest = mats[start], mats[start + 1 : stop]
        init = normalize(first, jnp.zeros((), first.dtype))
        if rest.shape[0] == 0:
            return LogMatrix(*init)

        def body(carry, j):
            return normalize(j @ carry[0], carry[1]), None

        (m, s), _ = jax.lax.scan(body, init, rest)
        return LogMatrix(m, s)
    sub = _sub(mats, start, stop)
    first, rest = _first(sub[0])
    m, s = normalize(first, jnp.zeros((), first.dtype))
    for j in ((rest,) if rest is not None else ()) + sub[1:]:
        if j.ndim == 2:
            m, s = normalize(j @ m, s)
            continue

        def body(carry, jk):
            return normalize(jk @ carry[0], carry[1]), None

        (m, s), _ = jax.lax.scan(body, (m, s), j)
    return LogMatrix(m, s)


@full_precision
def input_products(
    jacobians: Any, *, parallel: bool = False, accumulate: str | None = None
) -> tuple[LogMatrix, ...] | LogMatrix:
    """Every input-to-layer product ``d h_l / d h_0`` for l = 1..L, in one forward sweep.

    Args:
        jacobians: as :func:`jacobian_product`.
        parallel: combine with ``lax.associative_scan`` (O(log L) sequential depth,
            about twice the flops, each partial product rescaled, so as stable as the
            sweep); for an ``(L, n, n)`` array of equal square Jacobians only.
        accumulate: as :func:`jacobian_product`.

    Returns:
        For an ``(L, n, n)`` array, one stacked :class:`LogMatrix` with leading axis L (entry
        l-1 is ``d h_l / d h_0``); for a sequence, a tuple of L LogMatrix.
    """
    mats = _as_mats(jacobians, dtype=accumulate_dtype(accumulate))
    if _parallel(parallel, mats):
        # element order kept: `a` holds the earlier layers' product, `b` the later ones'
        return _assoc(mats, lambda a, b: b @ a, reverse=False)
    if hasattr(mats, "shape"):
        init = normalize(mats[0], jnp.zeros((), mats.dtype))

        def body(carry, j):
            out = normalize(j @ carry[0], carry[1])
            return out, out

        _, (ms, ss) = jax.lax.scan(body, init, mats[1:])
        return LogMatrix(
            jnp.concatenate([init[0][None], ms]), jnp.concatenate([init[1][None], ss])
        )
    return _sweep_products(mats, lambda j, m: j @ m)


def _sweep_products(mats, mul, reverse=False):
    """Every prefix (or suffix, ``reverse``) product of a sequence ``mats``, one entry
    per entry of ``mats``: a LogMatrix, or a stacked one (leading axis n) for a stacked
    entry, formed by a scan over it."""
    order = mats[::-1] if reverse else mats
    out, carry = [], None
    for m in order:
        if m.ndim == 2:
            if carry is None:
                carry = normalize(m, jnp.zeros((), m.dtype))
            else:
                carry = normalize(mul(m, carry[0]), carry[1])
            out.append(LogMatrix(*carry))
            continue
        stack = m[::-1] if reverse else m
        head = None
        if carry is None:
            carry = head = normalize(stack[0], jnp.zeros((), stack.dtype))
            stack = stack[1:]

        def body(c, j):
            nxt = normalize(mul(j, c[0]), c[1])
            return nxt, nxt

        carry, (ms, ss) = jax.lax.scan(body, carry, stack)
        if head is not None:
            ms = jnp.concatenate([head[0][None], ms])
            ss = jnp.concatenate([head[1][None], ss])
        out.append(LogMatrix(ms[::-1], ss[::-1]) if reverse else LogMatrix(ms, ss))
    return tuple(out[::-1]) if reverse else tuple(out)


def _parallel(parallel, mats) -> bool:
    if not isinstance(parallel, bool):
        raise ValueError(f"`parallel` must be True or False, got {parallel!r}.")
    if parallel and not hasattr(mats, "shape"):
        raise ValueError(
            "`parallel=True` needs the Jacobians stacked as one (L, n, n) array (equal "
            f"square layers), got {len(mats)} matrices of shapes "
            f"{sorted({m.shape for m in mats})}. Use parallel=False (the sweep) for "
            "layers of different widths."
        )
    return parallel


def _assoc(mats, mul, reverse):
    """Every prefix (or suffix, ``reverse``) product of the stacked ``mats`` by
    ``lax.associative_scan``, each partial product rescaled in log space."""

    def combine(a, b):
        return normalize(mul(a[0], b[0]), a[1] + b[1])

    init = normalize(mats, jnp.zeros(mats.shape[0], mats.dtype))
    return LogMatrix(*jax.lax.associative_scan(combine, init, reverse=reverse))


@full_precision
def output_products(
    jacobians: Any, *, parallel: bool = False, accumulate: str | None = None
) -> tuple[LogMatrix, ...] | LogMatrix:
    """Every layer-to-output product ``d h_L / d h_l`` for l = 0..L-1, in one backward sweep.

    This is what back-propagation multiplies a gradient by: ``dL/dh_l = dL/dh_L d h_L/d h_l``.
    One sweep of L-1 matrix products, not L separate Jacobian computations.

    Args:
        jacobians: as :func:`jacobian_product`.
        parallel: as :func:`input_products`.
        accumulate: as :func:`jacobian_product`.

    Returns:
        For an ``(L, n, n)`` array, one stacked :class:`LogMatrix` with leading axis L (entry
        l is ``d h_L / d h_l``); for a sequence, a tuple of L LogMatrix in the same order.
    """
    mats = _as_mats(jacobians, dtype=accumulate_dtype(accumulate))
    if _parallel(parallel, mats):
        # reversed: `a` holds the later layers' product, `b` the earlier ones'
        return _assoc(mats, lambda a, b: a @ b, reverse=True)
    if hasattr(mats, "shape"):
        init = normalize(mats[-1], jnp.zeros((), mats.dtype))

        def body(carry, j):
            out = normalize(carry[0] @ j, carry[1])
            return out, out

        _, (ms, ss) = jax.lax.scan(body, init, mats[:-1], reverse=True)
        return LogMatrix(
            jnp.concatenate([ms, init[0][None]]), jnp.concatenate([ss, init[1][None]])
        )
    return _sweep_products(mats, lambda j, m: m @ j, reverse=True)
