"""Log singular values of layer-to-output products from the sweeps.

- :func:`output_spectra`: of every ``d y / d h_l`` (one SVD per product).
- :func:`input_output_spectrum`: of ``d y / d x`` only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze._logspace import SVD_WHERE
from jgrad.analyze._nonfinite import reports_nonfinite
from jgrad.analyze._precision import full_precision
from jgrad.analyze._rank_sweep import compressed, compressible, rank_sweep
from jgrad.analyze._records import Spectrum, bad_values, nan_where, product_record
from jgrad.analyze._segments import (
    per_block,
)
from jgrad.analyze._sweep import (
    check_sweep_args,
    log_svdvals,
    masked_products,
    stateless,
    sweep,
)

__all__ = ["output_spectra", "input_output_spectrum"]


@reports_nonfinite("layer")
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
) -> Spectrum:
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
        A :class:`Spectrum`: ``log_sv`` a tuple of L arrays, entry l the spectrum of
        ``d y / d h_l``; ``nonfinite`` with forward index k the first non-finite block
        output ``h_k`` (k = 0 the input x) and backward index l the first spectrum, met
        from the output, that went non-finite by itself. A spectrum computed from a NaN
        or inf is all NaN.

    Raises:
        ValueError: ``x`` not one float example (the message shows the ``vmap``),
            params of another network, an unknown ``svd``, ``train``/``blocks``/
            ``compress`` not a bool, ``key`` not a PRNG key, or ``blocks=False`` with a
            repeat layer whose block has several layers (:func:`layer_jacobians`).
    """
    _checks.choice("svd", svd, SVD_WHERE)
    check_sweep_args("output_spectra", net, params, x, blocks, train, key)

    def exact(p, v):
        ys, _, _, bad_h = sweep(
            net,
            p,
            v,
            blocks,
            train,
            key,
            stateless(lambda m, s: log_svdvals(m, s, svd)),
        )
        return tuple(per_block(ys)), bad_h

    if not compressible(net, params, blocks, compress):
        out, bad_h = exact(params, x)
    else:

        def fn(p, v):
            ys, _, bad_h = rank_sweep(net, p, v, blocks, train, key, svd, every=True)
            return tuple(per_block(ys)), bad_h

        out, bad_h = compressed(fn, exact, params, x)
    out, rec = masked_products(list(out), bad_h)
    return Spectrum(tuple(out), rec)


@reports_nonfinite("layer")
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
) -> Spectrum:
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
    compressed. ``compress=False`` carries every row.

    Returns:
        A :class:`Spectrum`: ``log_sv`` ``(r,)`` the log singular values, descending;
        ``nonfinite`` with forward index k the first non-finite block output ``h_k``
        (k = 0 the input x, k = L the output) and backward index 0 when the product
        went non-finite with every ``h_k`` finite (else -1). A spectrum computed from a
        NaN or inf is all NaN (``-inf`` only for exactly zero singular values).

    Raises:
        ValueError: ``x`` not one float example (the message shows the ``vmap``),
            params of another network, an unknown ``svd``, ``train``/``compress`` not a
            bool, ``key`` not a PRNG key.

    Examples:
        >>> import jax, jgrad
        >>> net = jgrad.nn.mlp(4, 8, activation="tanh")
        >>> _, params = net.init(jax.random.key(0), (8,))
        >>> x = jax.random.normal(jax.random.key(1), (8,))
        >>> spec = jgrad.analyze.input_output_spectrum(net, params, x)
        >>> spec.log_sv.shape, int(spec.nonfinite.forward), int(spec.nonfinite.backward)
        ((8,), -1, -1)
    """
    _checks.choice("svd", svd, SVD_WHERE)
    check_sweep_args("input_output_spectrum", net, params, x, True, train, key)

    def exact(p, v):
        _, (m, s), _, bad_h = sweep(
            net, p, v, True, train, key, stateless(lambda m, s: None), probe=True
        )
        return log_svdvals(m, s, svd), bad_h

    if not compressible(net, params, True, compress):
        lg, bad_h = exact(params, x)
    else:

        def fn(p, v):
            _, lg, bad_h = rank_sweep(net, p, v, True, train, key, svd, every=False)
            return lg, bad_h

        lg, bad_h = compressed(fn, exact, params, x)
    # one product, P_0: computed from every h_k below the output
    bad_out = jnp.zeros(bad_h.shape[0] - 1, bool).at[0].set(bad_values(lg))
    rec, nan = product_record(bad_h, bad_out)
    return Spectrum(nan_where(nan[0], lg), rec)
