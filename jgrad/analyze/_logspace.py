"""Log-space primitives shared by the analyzers: a matrix kept as a scale and a log,
logs and divisions that are safe at zero, norms that cannot under- or overflow, and where
an SVD runs.

A product of many Jacobians leaves float32's range (10^-38 .. 10^38) after a few dozen
layers; every analyzer carries it as a unit-norm matrix and the natural log of its scale
(:class:`LogMatrix`), renormalising after each step (:func:`normalize`). The helpers here
are the pieces of that bookkeeping written once:

- :func:`safe_log`: log with log 0 = -inf (NaN stays NaN) and no NaN gradient;
- :func:`safe_div`: ``x / n`` where ``n > 0``, ``x`` itself where ``n`` is zero (a zero
  vector stays zero instead of becoming NaN);
- :func:`finite_shift`: the shift ``mx`` of a sum ``sum_i exp(a_i - mx)`` in log space,
  0 where ``mx`` is not finite (every term ``-inf``), so no ``-inf - -inf`` NaN;
- :func:`vec_norm`, :func:`fro`: norms scaled by the largest entry first;
- :func:`svdvals`, :func:`svd_where`: singular values on the device or the host.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze._host_svd import host_svdvals

__all__ = [
    "ACCUMULATE",
    "HOST_SVD_MIN",
    "LogMatrix",
    "SVD_WHERE",
    "accumulate_dtype",
    "finite_shift",
    "fro",
    "normalize",
    "safe_div",
    "safe_log",
    "svd_where",
    "svdvals",
    "vec_norm",
]

SVD_WHERE = ("auto", "device", "host")
# "auto" takes the SVD on the host (LAPACK through a callback, threaded) for matrices with
# both sides >= this, off TPUs. On 2 CPU cores, 32 batches of 16 matrices in a lax.map:
# host/device 0.63-0.71x at n = 128, 0.73-1.07x at 64, 2.6x at 32 and 10-25x at 4 (a
# callback costs 0.4-0.9 ms); at the top level of a program 0.96x at 128 and 1.6x at 64
# (docs/benchmarks.md). On an H100 the host was 1.5-2.1x faster at 128 and 256.
HOST_SVD_MIN = 128

ACCUMULATE = ("float32", "float64")


class LogMatrix(NamedTuple):
    """A matrix stored as ``exp(log_scale) * matrix``, finite however large or small.

    Attributes:
        matrix: ``(..., m, n)`` with Frobenius norm 1 (or all zeros for an exactly zero
            product, e.g. a dead ReLU layer, whose ``log_scale`` is ``-inf``).
        log_scale: ``(...)``, the natural log of the Frobenius norm of the product.
    """

    matrix: jax.Array
    log_scale: jax.Array

    def value(self) -> jax.Array:
        """The matrix itself (overflows or underflows where its scale is out of range)."""
        return jnp.exp(self.log_scale)[..., None, None] * self.matrix


def safe_log(x):
    """log x, with log 0 = -inf and no NaN gradient or warning path; log NaN = NaN (a
    non-finite input never reads as an exact zero)."""
    low = jnp.where(jnp.isnan(x), jnp.nan, -jnp.inf)
    return jnp.where(x > 0, jnp.log(jnp.where(x > 0, x, 1.0)), low)


def safe_div(x, n):
    """``x / n`` where ``n > 0``, else ``x / 1``: dividing by a norm that may be zero
    leaves a zero vector zero, with no NaN value or gradient.

    ``n``'s axes are ``x``'s leading axes (one norm per row for ``n`` of shape
    ``x.shape[:-1]``; a scalar for all of ``x``; or ``keepdims`` norms of ``x``'s rank);
    the divisor is made safe before it is broadcast over ``x``'s trailing axes."""
    d = jnp.where(n > 0, n, 1.0)
    return x / jnp.expand_dims(d, tuple(range(d.ndim, jnp.ndim(x))))


def finite_shift(mx):
    """``mx`` where finite, else 0: the shift of a log-space sum ``sum_i exp(a_i - mx)
    ...`` with ``mx = max_i a_i``. Where every ``a_i`` is ``-inf`` the terms are
    ``exp(-inf) = 0`` instead of ``exp(-inf - -inf) = NaN``."""
    return jnp.where(jnp.isfinite(mx), mx, 0.0)


def svd_where(svd: str, shape: tuple[int, ...]) -> str:
    """Resolves ``svd="auto"`` for matrices of ``shape`` (..., r, n) at trace time."""
    if svd != "auto":
        return svd
    big = min(shape[-2:]) >= HOST_SVD_MIN
    return "host" if big and jax.default_backend() != "tpu" else "device"


def svdvals(m, svd="auto"):
    """Singular values (descending) of ``m`` (..., r, n), without singular vectors.

    ``svd="auto"``: ``"host"`` for float32 matrices with both sides >= ``HOST_SVD_MIN``
    (128), except on TPUs, else ``"device"`` (float64 stays on the device: a callback may
    run on an XLA thread outside a ``jax.enable_x64()`` context, where JAX would read the
    float64 result back as float32). ``svd="device"``: XLA's SVD where the array lives
    (LAPACK ``gesdd`` on CPU). Called on the transpose: the singular values are the same,
    and LAPACK's column-major operand is then the row-major array XLA already holds, so no
    transposing copy is made (about 15% of the SVD time at n = 256 on CPU).
    ``svd="host"``: LAPACK ``?gesdd`` on the host CPU through a callback, threaded over
    the batch (see ``jgrad.analyze._host_svd``)."""
    where = svd_where(svd, m.shape)
    if svd == "auto" and m.dtype == jnp.float64:
        where = "device"
    if where == "host":
        return host_svdvals(m)
    return jnp.linalg.svd(jnp.swapaxes(m, -1, -2), compute_uv=False)


def vec_norm(v, axis=-1):
    """Euclidean norm over ``axis``, scaled by max|v| first so it cannot under- or
    overflow (squaring a 1e-20 entry would underflow float32)."""
    a = jnp.max(jnp.abs(v), axis=axis, keepdims=True)
    n = a * jnp.sqrt(jnp.sum(jnp.square(safe_div(v, a)), axis=axis, keepdims=True))
    return jnp.squeeze(n, axis=axis)


def fro(m):
    """Frobenius norm over the last two axes, scaled by max|m| first so it cannot
    underflow or overflow."""
    return vec_norm(m, axis=(-2, -1))


def normalize(m, log_scale):
    """``(m / ||m||_F, log_scale + log ||m||_F)`` over the last two axes: the same
    product, renormalised (an all-zero ``m`` stays zero with log scale ``-inf``; an
    ``m`` holding a NaN or inf becomes all NaN with log scale NaN)."""
    n = fro(m)
    bad = jnp.isnan(n)[..., None, None]  # fro is NaN exactly for a NaN or inf entry
    return jnp.where(bad, jnp.nan, safe_div(m, n)), log_scale + safe_log(n)


def accumulate_dtype(accumulate: str | None):
    """The dtype for ``accumulate`` (None: keep), checked before any tracing."""
    if accumulate is None:
        return None
    _checks.choice("accumulate", accumulate, ACCUMULATE)
    if (
        accumulate == "float64"
        and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64
    ):
        raise ValueError(
            "`accumulate` must be None or 'float32' while JAX runs in 32-bit mode, got "
            "'float64': without 64-bit mode JAX silently makes every float64 array "
            "float32. Enable it first with jax.config.update('jax_enable_x64', True) "
            "(or inside `with jax.enable_x64(True):`); float32 models stay float32."
        )
    return jnp.dtype(accumulate)
