"""Step 5 of the matrix-free norms (:mod:`jgrad.analyze._estimates`): from a product's
rows ``Q^T P`` pulled to h_l and its probes, the Rayleigh-Ritz lower bound on
sigma_max(P) and the Hutch++ estimate of ``||P||_F^2``, with its standard error.

References:
    Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace
    Estimation", https://arxiv.org/abs/2010.09649.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrad.analyze._lanczos import top_eig
from jgrad.analyze._logspace import finite_shift, safe_log
from jgrad.analyze._segments import unchunk


class Summaries(NamedTuple):
    """Every product's estimates before the tail's Lanczos.

    Attributes:
        log_spectral_norm: (L,) log of the top singular value of ``Q^T P_l``.
        start_weights: (L_last, r) for the last group's products: weights w with the
            top right singular vector of ``Q^T P_l`` along ``rows^T w`` (rows the
            product's unit rows).
        log_fro2: (L,) log of the ``||P_l||_F^2`` estimate.
        mean_sq_rel_err: (L,) the estimate's relative standard error.
    """

    log_spectral_norm: jax.Array
    start_weights: jax.Array
    log_fro2: jax.Array
    mean_sq_rel_err: jax.Array


def product_summary(gram, row_logs, probe_logs):
    """For one product, from the Gram matrix ``gram`` (r, r) of its unit rows
    ``Q^T P``, their logs ``row_logs`` (r,) and the probes' ``log ||P^T g_j||^2``
    ``probe_logs`` (k,) or None.

    Returns:
        (log of the top singular value of ``Q^T P``; weights w (r,) with that singular
        value's right singular vector along ``rows^T w``; log of
        ``||Q^T P||_F^2 + mean_j ||P^T g_j||^2`` (Hutch++); that estimate's relative
        standard error, from the probes' spread, 0 without probes).
    """
    mx = finite_shift(jnp.max(row_logs))
    e = jnp.exp(row_logs - mx)  # the rows scaled to Q^T P_l / exp(mx)
    lam, w = top_eig(gram * e[:, None] * e[None, :])
    fro_q = jax.nn.logsumexp(2 * row_logs)
    if probe_logs is None:
        return 0.5 * safe_log(lam) + mx, w * e, fro_q, jnp.zeros((), row_logs.dtype)
    k = probe_logs.shape[-1]
    fro_r = jax.nn.logsumexp(probe_logs) - jnp.log(float(k))
    tot = jnp.logaddexp(fro_q, fro_r)
    share = jnp.exp(probe_logs - tot)  # each probe's residual over the total
    sd = jnp.std(share, ddof=1 if k > 1 else 0) / jnp.sqrt(float(k))
    return 0.5 * safe_log(lam) + mx, w * e, tot, sd


def summarise(groups):
    """:func:`product_summary` of every product of ``groups`` (deepest first; each a
    :class:`~jgrad.analyze._estimates.ProductGroup`), as :class:`Summaries`."""
    # in chunks of 16 products: the Gram matrices' squarings for all L at once hold
    # three (L, r, r) temporaries per example
    outs = [
        jax.lax.map(
            lambda a: product_summary(*a),
            (unchunk(gr), unchunk(lg), None if pp is None else unchunk(pp)),
            batch_size=16,
        )
        for gr, lg, pp in groups
    ]
    return Summaries(
        log_spectral_norm=jnp.concatenate([o[0] for o in outs]),
        start_weights=outs[-1][1],
        log_fro2=jnp.concatenate([o[2] for o in outs]),
        mean_sq_rel_err=jnp.concatenate([o[3] for o in outs]),
    )
