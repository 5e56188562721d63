"""Gaussian expectations E[f(u)] and E[f(u1) g(u2)] for the mean-field maps.

One-dimensional: ``E_z[f(sqrt(q) z)]``, z ~ N(0, 1). Two-dimensional (a correlated pair
with variance q each and correlation c): ``u1 = sqrt(q) z1``,
``u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2)``. Both by Gauss-Hermite quadrature with the
probabilists' weight exp(-z^2/2) and an even number of nodes: an odd rule puts a node at
z = 0, on ReLU's kink, where the derivative is a convention, not a value. Quadrature of a
function analytic in a strip around the real line (tanh, erf, sigmoid, ...) converges
geometrically in the number of nodes; a kink converges slowly, so ReLU, leaky ReLU and
the linear map use closed forms (``_mean_field``), and erf's closed forms test the rule.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jgrad import _checks

__all__ = ["default_degree", "expectation", "hermite_rule", "pair_expectation"]

_MAX_DEGREE = 1024


def default_degree(dtype) -> int:
    """Nodes per dimension when ``degree=None``: 256 in float64 (tanh's q*, chi1, c* and
    chi_c then change by less than 1e-10 when the degree doubles, for q* up to about
    2.5), 128 in float32 (quadrature errors about 1e-8, below float32's resolution, at
    a quarter of the two-dimensional cost)."""
    return 256 if jnp.dtype(dtype) == jnp.float64 else 128


@functools.lru_cache(maxsize=32)
def _rule64(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Golub-Welsch: the nodes are the eigenvalues of the Jacobi matrix of the
    probabilists' Hermite polynomials (off-diagonal sqrt(k)), the weights the squared
    first components of its eigenvectors; stable at any degree (NumPy's ``hermegauss``
    overflows beyond about 360 nodes)."""
    off = np.sqrt(np.arange(1, degree, dtype=np.float64))
    jac = np.diag(off, 1) + np.diag(off, -1)
    z, v = np.linalg.eigh(jac)
    w = v[0] ** 2
    z = 0.5 * (z - z[::-1])  # exactly symmetric
    w = 0.5 * (w + w[::-1])
    return z, w / w.sum()


def hermite_rule(degree: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z_i and weights w_i (summing to 1) with ``sum_i w_i f(z_i) ~ E[f(z)]``,
    z ~ N(0, 1), exact for polynomials of degree < 2 ``degree``; float64 NumPy arrays.

    Raises:
        ValueError: ``degree`` not a positive even integer up to 1024.
    """
    d = _checks.positive_int("degree", degree)
    if d > _MAX_DEGREE:
        _checks._fail(
            "degree",
            f"at most {_MAX_DEGREE} nodes",
            degree,
            "Pass degree=1024 or fewer.",
        )
    if d % 2:
        _checks._fail(
            "degree",
            "an even number of nodes (an odd rule has a node at 0, on ReLU's kink)",
            degree,
            f"Pass degree={d + 1}.",
        )
    return _rule64(d)


def _nodes(degree: int | None, dtype) -> tuple[jax.Array, jax.Array]:
    z, w = hermite_rule(default_degree(dtype) if degree is None else degree)
    return jnp.asarray(z, dtype), jnp.asarray(w, dtype)


def _float(x) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def expectation(
    fn: Callable[[jax.Array], jax.Array], q, *, degree: int | None = None
) -> jax.Array:
    """``E_z[fn(sqrt(q) z)]``, z ~ N(0, 1), by Gauss-Hermite quadrature.

    Args:
        fn: an elementwise function.
        q: the variance, a scalar (``jnp.vectorize`` or ``vmap`` for arrays).
        degree: number of nodes, even; None: :func:`default_degree` of q's dtype.

    Returns:
        A scalar of ``q``'s floating dtype.

    Examples:
        >>> import jax.numpy as jnp, jgrad
        >>> round(float(jgrad.theory.expectation(lambda u: u**4, 2.0)), 4)  # 3 q^2
        12.0
    """
    q = _float(q)
    z, w = _nodes(degree, q.dtype)
    return jnp.sum(w * fn(jnp.sqrt(q) * z))


def pair_expectation(
    fn1: Callable[[jax.Array], jax.Array],
    fn2: Callable[[jax.Array], jax.Array],
    q,
    c,
    *,
    degree: int | None = None,
) -> jax.Array:
    """``E[fn1(u1) fn2(u2)]`` for a centred Gaussian pair with variances ``q`` and
    correlation ``c`` (``u1 = sqrt(q) z1``, ``u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2)``),
    by a ``degree`` x ``degree`` Gauss-Hermite product rule.

    Examples:
        >>> import jgrad
        >>> round(float(jgrad.theory.pair_expectation(lambda u: u, lambda u: u, 2.0, 0.3)), 6)
        0.6
    """
    q, c = _float(q), _float(c)
    dtype = jnp.result_type(q, c)
    z, w = _nodes(degree, dtype)
    s = jnp.sqrt(q)
    c = jnp.clip(c, -1.0, 1.0)
    u1 = s * z[:, None]
    u2 = s * (c * z[:, None] + jnp.sqrt(1.0 - c * c) * z[None, :])
    return jnp.sum(w[:, None] * w[None, :] * fn1(u1) * fn2(u2))
