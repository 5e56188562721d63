"""Singular values and log |det| of products of Jacobians you hold, in log space.

:func:`log_singular_values` takes the product rescaled (the top values exact at any depth,
those below ``sigma_max * eps`` lost) or by QR accumulation (``method="qr"``: every
``log |diag R_k|`` summed; their sum is ``log |det|`` exactly, the sorted terms the
finite-depth Lyapunov exponents); :func:`log_abs_det` is the QR sum. The accumulations
themselves and their guarantees: :mod:`jgrad.analyze._products`. All logs are natural.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze._logspace import SVD_WHERE, LogMatrix, accumulate_dtype, svdvals
from jgrad.analyze._precision import full_precision
from jgrad.analyze._products import (
    METHODS,
    _as_mats,
    _check_range,
    _count,
    _sub,
    jacobian_product,
)

__all__ = ["log_singular_values", "log_abs_det"]


def _qr_logs(mats):
    """Sum over layers of log|diag R_k| from QR re-orthonormalisation (unsorted)."""

    def step(q, acc, j):
        qn, r = jnp.linalg.qr(j @ q)
        d = jnp.log(jnp.abs(jnp.diagonal(r)))
        # Through a narrower layer the directions beyond its width are annihilated: their
        # exponents become -inf (the product has rank at most that width).
        k = d.shape[0]
        return qn, jnp.concatenate(
            [acc[:k] + d, jnp.full(acc.shape[0] - k, -jnp.inf, acc.dtype)]
        )

    if hasattr(mats, "shape"):
        n = mats.shape[2]
        q0 = jnp.eye(n, dtype=mats.dtype)

        def body(carry, j):
            return step(*carry, j), None

        (_, acc), _ = jax.lax.scan(body, (q0, jnp.zeros(n, mats.dtype)), mats)
        return acc
    n = mats[0].shape[-1]
    q, acc = jnp.eye(n, dtype=mats[0].dtype), jnp.zeros(n, mats[0].dtype)
    for j in mats:
        if j.ndim == 2:
            q, acc = step(q, acc, j)
            continue

        def body(carry, jk):
            return step(*carry, jk), None

        (q, acc), _ = jax.lax.scan(body, (q, acc), j)
    return acc


@full_precision
def log_singular_values(
    jacobians: Any,
    method: str = "rescaled",
    *,
    start: int = 0,
    stop: int | None = None,
    accumulate: str | None = None,
    svd: str = "auto",
) -> jax.Array:
    """Natural-log singular values of ``J_stop ... J_(start+1)``, in descending order.

    For a network, :func:`input_output_spectrum` (``d y / d x``) and
    :func:`output_spectra` (every ``d y / d h_l``) give the spectrum faster, to rounding
    the same: ``log_singular_values(layer_jacobians(...))`` forms L explicit Jacobians per
    example and multiplies them as separate per-example matrix products, where the
    sweeps pull the product's rows back through each layer (under ``vmap``, one matrix
    product per dense layer shared by the batch). Use this function for Jacobians you
    hold, a layer pair (``start``, ``stop``) or ``method="qr"``.

    Args:
        jacobians: a :class:`Jacobians`, a sequence of 2-D Jacobians, an ``(L, n, n)``
            array, or a :class:`LogMatrix` (a product already; any leading batch axes), whose
            spectrum is returned.
        method: ``"rescaled"``: exact top singular values at any depth; those below
            ``sigma_max * eps`` are lost (come out as rounding noise or ``-inf``).
            ``"qr"``: the sorted QR accumulation (finite-depth Lyapunov exponents times L):
            their sum is exactly ``log|det|``; they equal the log singular values only as
            depth grows.
        start, stop: the layer pair (default the whole network, input to output).
        accumulate: as :func:`jacobian_product`.
        svd: where the rescaled method takes its SVD. ``"auto"`` (default): ``"host"``
            for matrices with both sides >= 128 (except on TPUs), else ``"device"``.
            ``"device"``: XLA's SVD on the array's device. ``"host"``: LAPACK ``?gesdd``
            on the host CPU through ``jax.pure_callback``, threaded over the batch, in
            the matrix's precision. On a GPU this is far faster for matrices larger than
            32 x 32, which XLA's GPU SVD takes one at a time. On a CPU it is as fast as
            XLA's SVD at the top level of a program and faster inside a loop, where
            XLA's runs on one core; the callback's fixed cost decides for small
            matrices (docs/benchmarks.md has the times). Differentiating
            it falls back to XLA's SVD for the values and their derivative (see
            ``jgrad.analyze._host_svd``).

    Returns:
        ``(r,)`` log singular values, r = min of the dimensions along the product; all
        NaN when a Jacobian (or the LogMatrix) holds a NaN or inf.

    Examples:
        >>> import jax.numpy as jnp
        >>> js = jnp.stack([jnp.diag(jnp.array([3.0, 0.5]))] * 100)
        >>> # exact: 100 log 3 and 100 log 0.5; the second is 6^-100 times the first, far below
        >>> # float32's eps, so the rescaled product loses it and the QR accumulation keeps it.
        >>> [round(float(v), 2) for v in log_singular_values(js)]
        [109.86, -inf]
        >>> [round(float(v), 2) for v in log_singular_values(js, method="qr")]
        [109.86, -69.31]
    """
    _checks.choice("method", method, METHODS)
    _checks.choice("svd", svd, SVD_WHERE)
    dtype = accumulate_dtype(accumulate)
    if isinstance(jacobians, LogMatrix):
        if method != "rescaled":
            raise ValueError(
                f"`method` must be 'rescaled' for a LogMatrix (a product already formed), "
                f"got {method!r}. Pass the Jacobians themselves for method='qr'."
            )
        m, s = jacobians
        if dtype is not None:
            m, s = m.astype(dtype), s.astype(dtype)
        bad = jnp.any(~jnp.isfinite(m), axis=(-2, -1)) | jnp.isnan(s) | (s == jnp.inf)
        out = jnp.log(svdvals(m, svd)) + s[..., None]
        return jnp.where(bad[..., None], jnp.nan, out)
    mats = _as_mats(jacobians, dtype=dtype)
    start, stop = _check_range(start, stop, _count(mats))
    if start == stop:
        raise ValueError(
            f"`stop` must be greater than `start` for a spectrum, got start={start}, "
            f"stop={stop}."
        )
    if method == "rescaled":
        return log_singular_values(
            jacobian_product(jacobians, start, stop, accumulate=accumulate), svd=svd
        )
    sub = mats[start:stop] if hasattr(mats, "shape") else _sub(mats, start, stop)
    r = min(sub[-1].shape[-2], sub[0].shape[-1])
    return _nan_if_nonfinite(sub, jnp.sort(_qr_logs(sub))[::-1][:r])


@full_precision
def log_abs_det(
    jacobians: Any,
    *,
    start: int = 0,
    stop: int | None = None,
    accumulate: str | None = None,
) -> jax.Array:
    """``log |det(J_stop ... J_(start+1))|`` by QR accumulation: exact at any depth and
    conditioning (a sum of per-layer terms). Square products only. NaN when a
    Jacobian holds a NaN or inf.

    Args:
        jacobians, start, stop: as :func:`log_singular_values`.
        accumulate: as :func:`jacobian_product`.
    """
    mats = _as_mats(jacobians, dtype=accumulate_dtype(accumulate))
    start, stop = _check_range(start, stop, _count(mats))
    if start == stop:  # the identity
        return jnp.zeros((), mats[0].dtype)
    sub = mats[start:stop] if hasattr(mats, "shape") else _sub(mats, start, stop)
    n_out, n_in = sub[-1].shape[-2], sub[0].shape[-1]
    if n_out != n_in:
        raise ValueError(
            f"`jacobians` must give a square product for a determinant, got "
            f"({n_out}, {n_in}). Use log_singular_values for a rectangular product."
        )
    return _nan_if_nonfinite(sub, jnp.sum(_qr_logs(sub)))


def _nan_if_nonfinite(mats, out):
    """``out`` where every Jacobian in ``mats`` is finite, else NaN (a NaN or inf
    Jacobian must not read as a finite log or as ``-inf``, an exact zero)."""
    if hasattr(mats, "shape"):
        ok = jnp.all(jnp.isfinite(mats))
    else:
        ok = jnp.stack([jnp.all(jnp.isfinite(m)) for m in mats]).all()
    return jnp.where(ok, out, jnp.nan)
