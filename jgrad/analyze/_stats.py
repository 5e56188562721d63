"""Summaries of a spectrum from its natural-log singular values: spectral norm, smallest
singular value, mean square, log det, condition number, and the density of the values."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks

__all__ = ["SpectrumStats", "spectrum_stats", "spectrum_density"]


class SpectrumStats(NamedTuple):
    """Summaries of a spectrum, from its natural-log singular values (all natural logs).

    Attributes:
        log_spectral_norm: log of the spectral norm sigma_max (the same name as in
            :class:`OutputNorms`).
        log_min: log of the smallest singular value.
        log_mean_sq: log of the mean squared singular value, ``log(tr(J J^T) / r)`` with
            r = min(m, n); its growth rate with depth is log chi_1 in mean-field theory.
        log_det: sum of the log singular values (log|det| for a square matrix; for
            ``method="rescaled"`` spectra it misses the singular values lost below eps).
        log_cond: log of the condition number ``sigma_max / sigma_min``.
    """

    log_spectral_norm: jax.Array
    log_min: jax.Array
    log_mean_sq: jax.Array
    log_det: jax.Array
    log_cond: jax.Array


def spectrum_stats(log_sv: jax.Array) -> SpectrumStats:
    """Spectral norm, mean squared singular value, log det and condition number.

    Args:
        log_sv: ``(..., r)`` natural-log singular values (any order; leading axes are kept,
            e.g. one spectrum per layer pair and per example).

    Returns:
        A :class:`SpectrumStats` of ``(...)`` arrays.
    """
    log_sv = jnp.asarray(log_sv)
    if log_sv.ndim < 1 or log_sv.shape[-1] == 0:
        raise ValueError(
            f"`log_sv` must have a non-empty last axis of log singular values, got shape "
            f"{log_sv.shape}."
        )
    mx = jnp.max(log_sv, axis=-1)
    mn = jnp.min(log_sv, axis=-1)
    r = log_sv.shape[-1]
    mean_sq = jax.nn.logsumexp(2 * log_sv, axis=-1) - jnp.log(
        jnp.asarray(r, log_sv.dtype)
    )
    return SpectrumStats(
        log_spectral_norm=mx,
        log_min=mn,
        log_mean_sq=mean_sq,
        log_det=jnp.sum(log_sv, axis=-1),
        log_cond=mx - mn,
    )


def spectrum_density(
    log_sv: jax.Array, bins: int = 50, range: tuple[float, float] | None = None
) -> tuple[jax.Array, jax.Array]:
    """Histogram density of log singular values (pooled over every leading axis).

    Args:
        log_sv: natural-log singular values, any shape; non-finite entries are dropped.
        bins: number of bins.
        range: ``(lo, hi)``; default the finite min and max.

    Returns:
        ``(density, edges)``: ``(bins,)`` densities integrating to 1 over ``edges``
        ``(bins+1,)``.
    """
    _checks.positive_int("bins", bins)
    v = jnp.ravel(jnp.asarray(log_sv))
    v = v[jnp.isfinite(v)]
    if v.size == 0:
        raise ValueError(
            "`log_sv` must contain at least one finite value for a density, got none."
        )
    if range is None:
        lo, hi = float(jnp.min(v)), float(jnp.max(v))
        range = (lo, hi if hi > lo else lo + 1.0)
    return jnp.histogram(v, bins=bins, range=range, density=True)
