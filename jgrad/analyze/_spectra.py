"""Log singular values of layer-to-output products from the sweeps.

- :func:`output_spectra`: of every ``d y / d h_l`` (one SVD per product).
- :func:`input_output_spectrum`: of ``d y / d x`` only.
"""

from __future__ import annotations

from typing import Any

import jax

from jgrad import _checks
from jgrad.analyze._logspace import SVD_WHERE
from jgrad.analyze._precision import full_precision
from jgrad.analyze._rank_sweep import compressed, compressible, rank_sweep
from jgrad.analyze._segments import (
    per_block,
)
from jgrad.analyze._sweep import log_svdvals, stateless, sweep

__all__ = ["output_spectra", "input_output_spectrum"]


@full_precision
def output_spectra(
    net: Any,
    params: Any,
    x: jax.Array,
    *,
    blocks: bool = True,
    train: bool = False,
    key: jax.Array | None = None,
    svd: str = "auto",
    compress: bool = True,
) -> tuple[jax.Array, ...]:
    """Log singular values (natural log, descending) of every ``d y / d h_l``.

    One backward sweep (:func:`output_sweep`) and one SVD (singular values only) per
    product, taken inside the sweep as the product is formed. Exact at any depth for the
    top singular values; those below ``sigma_max * eps`` are lost (the rescaled method;
    see ``log_singular_values``). ``svd`` as in ``log_singular_values``: the default
    takes the SVDs of 128 x 128 and larger products on the host, where they run on
    every core; XLA's CPU SVD runs on one core inside the sweep's loop, and its GPU SVD
    takes one matrix at a time. ``compress`` as in :func:`input_output_spectrum` (every
    product's dropped values read ``-inf``; the SVDs of compressed products are smaller).

    Returns:
        A tuple of L arrays, entry l the spectrum of ``d y / d h_l``.
    """
    _checks.choice("svd", svd, SVD_WHERE)

    def exact(p, v):
        ys, *_ = sweep(
            net,
            p,
            v,
            blocks,
            train,
            key,
            stateless(lambda m, s: log_svdvals(m, s, svd)),
        )
        return tuple(per_block(ys))

    if not compressible(net, params, blocks, compress):
        return exact(params, x)

    def fn(p, v):
        ys, _ = rank_sweep(net, p, v, blocks, train, key, svd, every=True)
        return tuple(per_block(ys))

    return compressed(fn, exact, params, x)


@full_precision
def input_output_spectrum(
    net: Any,
    params: Any,
    x: jax.Array,
    *,
    train: bool = False,
    key: jax.Array | None = None,
    svd: str = "auto",
    compress: bool = True,
) -> jax.Array:
    """Log singular values of the input-output Jacobian ``d y / d x`` (rescaled, exact
    top singular values at any depth), by one rescaled reverse sweep and one SVD
    (``svd`` as in ``log_singular_values``).

    ``compress`` (default True): once the product's numerical rank falls, carry it in
    fewer rows (a pivoted QR drops a part whose Frobenius norm is at most ``sqrt(n) *
    eps`` times the product's, within one rounding of the next matrix product: see
    ``jgrad.analyze._rank``). The singular values it drops come back as ``-inf`` (log 0)
    instead of the rounding noise the rescaled method returns for them; the values it
    keeps are as accurate. Networks whose spectra spread (a chaotic tanh network) sweep
    faster; one whose spectrum does not spread is looked at a few times and never
    compressed. ``compress=False`` carries every row."""
    _checks.choice("svd", svd, SVD_WHERE)

    def exact(p, v):
        _, (m, s), _ = sweep(
            net, p, v, True, train, key, stateless(lambda m, s: None), probe=True
        )
        return log_svdvals(m, s, svd)

    if not compressible(net, params, True, compress):
        return exact(params, x)
    return compressed(
        lambda p, v: rank_sweep(net, p, v, True, train, key, svd, every=False)[1],
        exact,
        params,
        x,
    )
