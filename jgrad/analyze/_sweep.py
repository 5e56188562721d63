"""The rescaled backward sweep: every layer-to-output product ``d y / d h_l`` by VJPs.

The sweeps never form a per-layer Jacobian: each block of the network is linearized once at
the forward trajectory (``jax.linearize``), and the rows of the product are pulled back
through it, vmapped over the rows, so a dense layer costs one matrix multiply shared by all
rows (and, under ``vmap`` over examples, one large GEMM shared by the whole batch). Every
pull is rescaled in log space, so nothing under- or overflows at any depth.

- :func:`output_sweep`: every ``d y / d h_l`` (l = 0..L-1) in ONE backward sweep.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jgrad import _checks
from jgrad.analyze._logspace import (
    LogMatrix,
    normalize,
    safe_log,
    svdvals,
)
from jgrad.analyze._network import as_layers, check_input, refuse_split_repeats
from jgrad.analyze._nonfinite import reports_nonfinite
from jgrad.analyze._precision import full_precision
from jgrad.analyze._records import Sweep, bad_values, nan_where, product_record
from jgrad.analyze._segments import (
    fold,
    forward_bad,
    per_block,
    segments,
)

__all__ = ["output_sweep"]


def check_sweep_args(fn, net, params, x, blocks, train, key):
    """The checks every sweep analyzer makes before tracing (see ``check_input``)."""
    _checks.boolean("blocks", blocks)
    _checks.boolean("train", train)
    _checks.prng_key("key", key, optional=True)
    check_input(fn, net, params, x, one_example=True)
    refuse_split_repeats(as_layers(net)[0], blocks)


def masked_products(ys_per_block, bad_h):
    """(the per-block results, NaN where computed from a non-finite value; the
    :class:`NonFinite` record): see :mod:`jgrad.analyze._records`."""
    bad_out = jnp.stack([bad_values(y) for y in ys_per_block])
    rec, nan = product_record(bad_h, bad_out)
    return [nan_where(nan[i], y) for i, y in enumerate(ys_per_block)], rec


@reports_nonfinite("layer")
@full_precision
def output_sweep(
    net: Any,
    params: Any,
    x: jax.Array,
    *,
    blocks: bool = True,
    train: bool = False,
    key: jax.Array | None = None,
) -> Sweep:
    """Every layer-to-output product ``d y / d h_l``, l = 0..L-1, in ONE backward sweep.

    Starting from the identity at the output, the rows are pulled back through each block's
    VJP and rescaled (reverse-mode ``jacrev``, rescaled, keeping every intermediate). Same
    numbers as ``output_products(layer_jacobians(...))`` without forming per-layer
    Jacobians; usually faster.

    Args:
        net, params, x, blocks, train, key: as :func:`layer_jacobians` (one example).

    Returns:
        A :class:`Sweep`: ``products``, a tuple of L :class:`LogMatrix`, entry l of
        shape ``(size(y), size(h_l))``; and ``nonfinite``, forward index k the first
        non-finite block output ``h_k`` (k = 0 the input), backward index l the first
        product met from the output that went non-finite by itself. A product computed
        from a NaN or inf is NaN.

    Raises:
        ValueError: ``x`` not one float example (the message shows the ``vmap``),
            params of another network, ``train``/``blocks`` not a bool, ``key`` not a
            PRNG key, or ``blocks=False`` with a repeat layer whose block has several
            layers (:func:`layer_jacobians`).
    """
    check_sweep_args("output_sweep", net, params, x, blocks, train, key)
    ys, _, _, bad_h = sweep(
        net, params, x, blocks, train, key, stateless(lambda m, s: (m, s))
    )
    prods = [LogMatrix(*normalize(m, s)) for m, s in per_block(ys)]
    prods, rec = masked_products(prods, bad_h)
    return Sweep(tuple(prods), rec)


def sum_scale(m, s):
    """(sum|m|, or 1 where m is all zero; the log scale s + log sum|m|).

    Scaling by the sum of |entries| (one reduction, which XLA fuses with the pull-back's
    elementwise work) instead of the Frobenius norm (two more passes) keeps the sweep at
    the speed of a plain ``jax.jacrev``; the scale convention does not change singular
    values. The scaled entries are at most 1 and sum to 1, so their squares neither
    overflow nor all underflow. A sum rather than max|entry|: XLA's CPU sum reduces at
    the memory rate, its NaN-propagating max does not. In float32 the sum overflows only
    when one block multiplies the product's entries by about 1e34."""
    a = jnp.sum(jnp.abs(m))
    return jnp.where(a > 0, a, 1.0), s + safe_log(a)


def probe_row(n, dtype):
    """A fixed row of n random signs (seed 0): see :func:`sweep`'s ``probe``."""
    return jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], n), dtype)


def probe_scale(r, s):
    """(||z||_1 for the carried probe row z = r[-1], or 1 where it is zero; the log scale
    s plus its log). Where z is zero the step is not rescaled (and s unchanged): zero
    rows above it give -inf singular values from the product itself, not from s."""
    a = jnp.sum(jnp.abs(r[-1]))
    ok = a > 0
    a = jnp.where(ok, a, 1.0)
    return a, s + jnp.log(a)


def stateless(emit):
    """A stateless ``emit(m, s)`` of the scaled product as :func:`sweep`'s form."""
    return lambda r, inv, s, state: (emit(r * inv, s), state)


def last_product(segs, y):
    """``d y / d h_{L-1}`` (size(y), size(h_{L-1})) of the last block (always a single
    Block): its Jacobian in closed form (no matmul), else the VJPs of the identity."""
    last = segs[-1]
    if last.jac is not None:
        return last.jac().reshape(y.size, -1)
    eye = jnp.eye(y.size, dtype=y.dtype)
    return jax.vmap(lambda r: last.vjp(r.reshape(last.out_shape)).ravel())(eye)


def sweep(net, params, x, blocks, train, key, emit, init=lambda m: (), probe=False):
    """The backward sweep of the rescaled products ``d y / d h_l``, l = L-1 .. 0.

    ``emit(r, inv, s, state) -> (kept, state)`` maps each product (``r * inv``, scaled
    so that sum|entries| = 1, ``s`` the log of the scale: the product is
    ``exp(s) * r * inv``) to what the caller keeps of it, inside the sweep, and carries
    ``state`` from product to product, nearest the output first (``init(m)`` makes the
    first state from the first product). An SVD or a norm taken there lets XLA free the
    product at once (on CPU, touching fresh memory for all L products costs as much as
    several SVDs). Returns (fold's ys of ``kept``, the product ``d y / d h_0`` as
    (m, s), the final state, ``(L+1,)`` bool: block output ``h_k`` non-finite).

    ``probe=True`` (for callers that keep little or nothing of the intermediate
    products): the product carries one more row, ``z = g^T P_l`` for a fixed row g of
    random signs, pulled back by the same matmuls, and every step is scaled by
    ``||z||_1`` instead of sum|entries| of the whole product: a reduction over one row
    instead of a pass over the product. The scale stays safe: ``sum|P| >= ||z||_1`` (the signs are
    +-1), so the scaled entries never all underflow, and they exceed ``||z||_1`` only
    by the factor ``||u||_1 / |g . u|`` for the product's column directions u, a
    random projection's (about sqrt(n) / 0.7 typically). ``emit`` gets the rows without
    z (a slice: a copy)."""
    segs, _, y = segments(net, params, x, blocks=blocks, train=train, key=key)
    m = last_product(segs, y)
    # The carry is (r, s, inv): the product is exp(s) * r * inv with inv = 1 / sum|r|.
    # Scaling r by inv happens inside the next pull-back (a scalar XLA fuses into the
    # pull-back's elementwise work), not as a pass of its own; emit gets r and inv apart,
    # so that a summary of the product need not write the scaled copy.
    if probe:
        m = jnp.concatenate([m, (probe_row(m.shape[0], m.dtype) @ m)[None]])
        scale, rows = probe_scale, lambda r: r[:-1]
    else:
        scale, rows = sum_scale, lambda r: r
    a, s = scale(m, jnp.zeros((), y.dtype))
    inv = 1 / a
    kept, state = emit(rows(m), inv, s, init(rows(m)))
    y_last = jax.tree.map(lambda v: v[None], kept)

    def step(carry, blk, _):
        r, s, inv, st = carry
        r = jax.vmap(lambda v: blk.vjp((v * inv).reshape(blk.out_shape)).ravel())(r)
        a, s = scale(r, s)
        inv = 1 / a
        kept, st = emit(rows(r), inv, s, st)
        return (r, s, inv, st), kept

    (r, s, inv, state), ys = fold(segs[:-1], step, (m, s, inv, state), reverse=True)
    return ys + [y_last], (rows(r) * inv, s), state, forward_bad(segs, y)


def log_svdvals(m, s, svd="auto"):
    return jnp.log(svdvals(m, svd)) + s


def pad_spectrum(lg, size):
    """A log spectrum padded to ``size`` values with -inf (dropped singular values)."""
    if lg.shape[-1] >= size:
        return lg[..., :size]
    return jnp.concatenate([lg, jnp.full((size - lg.shape[-1],), -jnp.inf, lg.dtype)])
