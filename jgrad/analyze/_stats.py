"""Summaries of a spectrum from its natural-log singular values: spectral norm, smallest
singular value, mean square, log det, condition number, and the density of the values."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze._nonfinite import NonFinite, no_nonfinite, nonfinite_record
from jgrad.analyze._records import Spectrum

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
        nonfinite: a :class:`NonFinite`: the ``Spectrum``'s own record when one was
            given; for a raw array, forward -1 and backward 0 where the spectrum holds a
            NaN or ``+inf`` (else -1), shaped as the leading axes.
    """

    log_spectral_norm: jax.Array
    log_min: jax.Array
    log_mean_sq: jax.Array
    log_det: jax.Array
    log_cond: jax.Array
    nonfinite: NonFinite = no_nonfinite()


def spectrum_stats(log_sv: jax.Array | Spectrum) -> SpectrumStats:
    """Spectral norm, mean squared singular value, log det and condition number.

    A spectrum holding a NaN or ``+inf`` (computed from a non-finite value) gives NaN
    for every summary, never ``-inf``; ``-inf`` values (exactly zero singular values)
    are values: they give ``log_min = -inf`` and ``log_det = -inf``.

    Args:
        log_sv: ``(..., r)`` natural-log singular values (any order; leading axes are kept,
            e.g. one spectrum per layer pair and per example), or a :class:`Spectrum`
            (from ``input_output_spectrum``; from ``output_spectra`` its L spectra give
            summaries with a leading axis L, after any ``vmap`` axes).

    Returns:
        A :class:`SpectrumStats` of ``(...)`` arrays, with the ``Spectrum``'s record
        (or one made from the values, see :class:`SpectrumStats`).
    """
    if isinstance(log_sv, Spectrum):
        rec = log_sv.nonfinite
        if isinstance(log_sv.log_sv, (tuple, list)):
            parts = [_stats(v) for v in log_sv.log_sv]
            fields = zip(*(pt[:5] for pt in parts), strict=True)
            stacked = [jnp.stack(f, axis=-1) for f in fields]
            return SpectrumStats(*stacked, nonfinite=rec)
        return _stats(log_sv.log_sv)._replace(nonfinite=rec)
    out = _stats(log_sv)
    bad = jnp.isnan(out.log_spectral_norm)
    return out._replace(
        nonfinite=nonfinite_record(
            jnp.full(bad.shape, -1, jnp.int32), jnp.where(bad, 0, -1)
        )
    )


def _stats(log_sv) -> SpectrumStats:
    """The summaries of ``(..., r)`` log singular values (record left as none)."""
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
    bad = jnp.any(jnp.isnan(log_sv) | (log_sv == jnp.inf), axis=-1)
    fields = (mx, mn, mean_sq, jnp.sum(log_sv, axis=-1), mx - mn)
    return SpectrumStats(*(jnp.where(bad, jnp.nan, f) for f in fields))


def spectrum_density(
    log_sv: jax.Array, bins: int = 50, range: tuple[float, float] | None = None
) -> tuple[jax.Array, jax.Array]:
    """Histogram density of log singular values (pooled over every leading axis).

    Args:
        log_sv: natural-log singular values, any shape, or a :class:`Spectrum`; NaN
            entries (computed from a non-finite value: see its ``nonfinite``) and
            infinite ones (``-inf``: an exactly zero singular value, which has no
            place on a log axis) are left out of the density.
        bins: number of bins.
        range: ``(lo, hi)``; default the finite min and max.

    Returns:
        ``(density, edges)``: ``(bins,)`` densities integrating to 1 over ``edges``
        ``(bins+1,)``.
    """
    _checks.positive_int("bins", bins)
    if isinstance(log_sv, Spectrum):
        log_sv = log_sv.log_sv
    if isinstance(log_sv, (tuple, list)):
        v = jnp.concatenate([jnp.ravel(jnp.asarray(a)) for a in log_sv])
    else:
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
