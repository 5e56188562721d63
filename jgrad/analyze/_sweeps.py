"""Layer-to-output products, spectra and cheap norm estimates by sweeps of JVPs and VJPs.

These never form a per-layer Jacobian: each block of the network is linearized once at the
forward trajectory (``jax.linearize``), and matrices or probe vectors are pushed through it,
vmapped over their rows, so a dense layer costs one matrix multiply shared by all rows (and,
under ``vmap`` over examples, one large GEMM shared by the whole batch). Every push is
rescaled in log space, so nothing under- or overflows at any depth.

- :func:`output_sweep`: every ``d y / d h_l`` (l = 0..L-1) in ONE backward sweep.
- :func:`output_spectra`: their log singular values (one SVD per product).
- :func:`output_norms`: spectral norm (Lanczos) and exact mean squared singular value of
  every ``d y / d h_l`` from the explicit products of one sweep.
- :func:`output_norm_estimates`: the same two summaries matrix-free (a shared block-Krylov
  output subspace, Hutch++ probes, Lanczos for the products nearest the output, the work
  tapered with depth), at a small fraction of the cost of the exact spectra.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jgrad import _checks
from jgrad.analyze import _rank
from jgrad.analyze._jacobians import resolve_net
from jgrad.analyze._precision import full_precision
from jgrad.analyze._products import (
    SVD_WHERE,
    LogMatrix,
    _normalize,
    safe_log,
    svdvals,
    vec_norm,
)
from jgrad.analyze._segments import (
    Run,
    _run_block,
    fold,
    per_block,
    seg_len,
    segments,
    split_at,
    unchunk,
)

__all__ = [
    "output_sweep",
    "output_spectra",
    "NormEstimates",
    "output_norm_estimates",
    "input_output_spectrum",
]


@full_precision
def output_sweep(
    net: Any,
    params: Any,
    x: jax.Array,
    *,
    blocks: bool = True,
    train: bool = False,
    key: jax.Array | None = None,
) -> tuple[LogMatrix, ...]:
    """Every layer-to-output product ``d y / d h_l``, l = 0..L-1, in ONE backward sweep.

    Starting from the identity at the output, the rows are pulled back through each block's
    VJP and rescaled (reverse-mode ``jacrev``, rescaled, keeping every intermediate). Same
    numbers as ``output_products(layer_jacobians(...))`` without forming per-layer
    Jacobians; usually faster.

    Args:
        net, params, x, blocks, train, key: as :func:`layer_jacobians` (one example).

    Returns:
        A tuple of L :class:`LogMatrix`, entry l of shape ``(size(y), size(h_l))``.
    """
    ys, *_ = _sweep(net, params, x, blocks, train, key, _stateless(lambda m, s: (m, s)))
    return tuple(LogMatrix(*_normalize(m, s)) for m, s in per_block(ys))


def _scale(m, s):
    """(sum|m|, or 1 where m is all zero; the log scale s + log sum|m|).

    Scaling by the sum of |entries| (one reduction, which XLA fuses with the pull-back's
    elementwise work) instead of the Frobenius norm (two more passes) keeps the sweep at
    the speed of a plain ``jax.jacrev``; the scale convention does not change singular
    values. The scaled entries are at most 1 and sum to 1, so their squares neither
    overflow nor all underflow. A sum rather than max|entry|: XLA's CPU sum reduces at
    the memory rate, its NaN-propagating max does not (57.3 against 58.8 ms for the 128
    steps of a 128-wide sweep of 16 examples, 2-core CPU, session 7). In float32 the sum
    overflows only when one block multiplies the product's entries by about 1e34."""
    a = jnp.sum(jnp.abs(m))
    return jnp.where(a > 0, a, 1.0), s + safe_log(a)


def _probe_row(n, dtype):
    """A fixed row of n random signs (seed 0): see :func:`_sweep`'s ``probe``."""
    return jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], n), dtype)


def _probe_scale(r, s):
    """(||z||_1 for the carried probe row z = r[-1], or 1 where it is zero; the log scale
    s plus its log). Where z is zero the step is not rescaled (and s unchanged): zero
    rows above it give -inf singular values from the product itself, not from s."""
    a = jnp.sum(jnp.abs(r[-1]))
    ok = a > 0
    a = jnp.where(ok, a, 1.0)
    return a, s + jnp.log(a)


def _stateless(emit):
    """A stateless ``emit(m, s)`` of the scaled product as :func:`_sweep`'s form."""
    return lambda r, inv, s, state: (emit(r * inv, s), state)


def _last_product(segs, y):
    """``d y / d h_{L-1}`` (size(y), size(h_{L-1})) of the last block (always a single
    Block): its Jacobian in closed form (no matmul), else the VJPs of the identity."""
    last = segs[-1]
    if last.jac is not None:
        return last.jac().reshape(y.size, -1)
    eye = jnp.eye(y.size, dtype=y.dtype)
    return jax.vmap(lambda r: last.vjp(r.reshape(last.out_shape)).ravel())(eye)


def _sweep(net, params, x, blocks, train, key, emit, init=lambda m: (), probe=False):
    """The backward sweep of the rescaled products ``d y / d h_l``, l = L-1 .. 0.

    ``emit(r, inv, s, state) -> (kept, state)`` maps each product (``r * inv``, scaled
    so that sum|entries| = 1, ``s`` the log of the scale: the product is
    ``exp(s) * r * inv``) to what the caller keeps of it, inside the sweep, and carries
    ``state`` from product to product, nearest the output first (``init(m)`` makes the
    first state from the first product). An SVD or a norm taken there lets XLA free the
    product at once (on CPU, touching fresh memory for all L products costs as much as
    several SVDs). Returns (fold's ys of ``kept``, the product ``d y / d h_0`` as
    (m, s), the final state).

    ``probe=True`` (for callers that keep little or nothing of the intermediate
    products): the product carries one more row, ``z = g^T P_l`` for a fixed row g of
    random signs, pulled back by the same matmuls, and every step is scaled by
    ``||z||_1`` instead of sum|entries| of the whole product: a reduction over one row
    instead of a pass over the product (3.2 ms of a 57 ms sweep at L = 128, N = 128, 16
    examples, 2-core CPU). The scale stays safe: ``sum|P| >= ||z||_1`` (the signs are
    +-1), so the scaled entries never all underflow, and they exceed ``||z||_1`` only
    by the factor ``||u||_1 / |g . u|`` for the product's column directions u, a
    random projection's (about sqrt(n) / 0.7 typically). ``emit`` gets the rows without
    z (a slice: a copy)."""
    segs, _, y = segments(net, params, x, blocks=blocks, train=train, key=key)
    m = _last_product(segs, y)
    # The carry is (r, s, inv): the product is exp(s) * r * inv with inv = 1 / sum|r|.
    # Scaling r by inv happens inside the next pull-back (a scalar XLA fuses into the
    # pull-back's elementwise work), not as a pass of its own; emit gets r and inv apart,
    # so that a summary of the product need not write the scaled copy.
    if probe:
        m = jnp.concatenate([m, (_probe_row(m.shape[0], m.dtype) @ m)[None]])
        scale, rows = _probe_scale, lambda r: r[:-1]
    else:
        scale, rows = _scale, lambda r: r
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
    return ys + [y_last], (rows(r) * inv, s), state


def _log_svdvals(m, s, svd="auto"):
    return jnp.log(svdvals(m, svd)) + s


def _pad_spectrum(lg, size):
    """A log spectrum padded to ``size`` values with -inf (dropped singular values)."""
    if lg.shape[-1] >= size:
        return lg[..., :size]
    return jnp.concatenate([lg, jnp.full((size - lg.shape[-1],), -jnp.inf, lg.dtype)])


class _RankState(NamedTuple):
    """The carry of :func:`_rank_sweep` (see there)."""

    buf: jax.Array  # (rows, n): live rows [:bks[k]], then the probe row, then zeros
    k: jax.Array  # the active bucket
    s: jax.Array  # the log scale: the product is exp(s) * buf[:bks[k]] * inv
    inv: jax.Array
    count: jax.Array  # blocks pulled so far
    nxt: jax.Array  # the count at which to look at the rank next
    last: tuple  # (count, log tails) of the last look: see _rank.next_look


def _rank_sweep(net, params, x, blocks, train, key, svd, every):
    """The backward sweep of the rescaled products, carried in fewer rows as their
    numerical rank falls (:mod:`jgrad.analyze._rank`), with the log singular values of
    the products: of every ``d y / d h_l`` (``every``) or of ``d y / d h_0`` only.

    Static shapes: between blocks the rows live in one buffer of m rows (plus the probe
    row of ``_sweep``'s ``probe`` when only the last spectrum is wanted) of which the
    first ``bks[k]`` are live, the probe row right after them. A run of identical blocks
    is swept by one ``while_loop`` per bucket, each on a buffer of that bucket's rows,
    entered only while ``k`` is that bucket (``k`` is unbatched under ``vmap``:
    ``_rank.batch_max``); inside, an inner loop pulls blocks until the next look, so the
    steps carry no conditional. Returns (fold's ys of the padded log spectra, or None;
    the padded log spectrum of ``d y / d h_0``)."""
    segs, _, y = segments(net, params, x, blocks=blocks, train=train, key=key)
    total = sum(seg_len(seg) for seg in segs)
    m0 = _last_product(segs, y)
    size = y.size
    # blocks outside runs are compiled once per bucket: with many of them (blocks=False,
    # or blocks that all differ), one bucket only (no compression; compile time as the
    # plain sweep's)
    singles = sum(not isinstance(seg, Run) for seg in segs)
    bks = _rank.buckets(size) if singles <= _rank.MAX_SINGLE else (size,)
    bks_arr = jnp.asarray(bks + (0,), jnp.int32)
    nb = len(bks)
    eps = float(jnp.finfo(m0.dtype).eps)
    probe = not every  # one row, the scale of every step from it (see _sweep)
    extra = 1 if probe else 0
    dtype = m0.dtype

    def with_probe(w):
        if not probe:
            return w
        return jnp.concatenate([w, (_probe_row(w.shape[0], w.dtype) @ w)[None]])

    scale = _probe_scale if probe else _scale

    def spectrum(r, inv, s):  # r: the rows of one bucket (and the probe row)
        lg = _log_svdvals(r[: r.shape[0] - extra] * inv, s, svd)
        return _pad_spectrum(lg, min(size, r.shape[1]))

    def pull(blk, r, st):
        r = jax.vmap(lambda v: blk.vjp((v * st.inv).reshape(blk.out_shape)).ravel())(r)
        a, s = scale(r, st.s)
        return r, s, 1 / a

    def widen(buf, r):
        """``r`` (one bucket's rows) as the first rows of a buffer of ``buf``'s rows."""
        if r.shape[0] == buf.shape[0]:
            return r
        if r.shape[1] != buf.shape[1]:
            buf = jnp.zeros((buf.shape[0], r.shape[1]), r.dtype)
        return jax.lax.dynamic_update_slice(buf, r, (0, 0))

    def look(j, r, st):
        """Looks at the rank of bucket j's rows ``r``; compresses them in place (rows
        past the new bucket zeroed, the probe row after them) when a smaller bucket
        holds them. Returns (rows, state)."""
        if j == nb - 1:  # the smallest bucket: nothing smaller to move to
            return r, st._replace(nxt=jnp.int32(_rank.NEVER))
        u = r[: bks[j]] * st.inv
        need0, lr0 = _rank.prefilter(u, eps, size)

        def fails(r, st):  # the batch's first example does not fit: no look at all
            nxt = _rank.next_look(
                lr0, st.last, st.count, bks[j + 1], eps, u.shape[1], total
            )
            return r, st._replace(
                nxt=nxt, last=(st.count, lr0 + jnp.zeros_like(st.last[1]))
            )

        return jax.lax.cond(
            need0 > bks[j + 1], fails, lambda r, st: full(j, u, r, st), r, st
        )

    def full(j, u, r, st):
        """The look at every example (see ``look``)."""
        t, piv, need, lr = _rank.factor(u, eps, size)
        n = t.shape[1]
        need = _rank.batch_max(need)
        k = jnp.maximum(jnp.sum(bks_arr[:nb] >= need) - 1, j).astype(jnp.int32)
        bk = bks_arr[k]

        def compress(r, s, inv):
            w = _rank.unpermute(t, piv, bks[j])
            w = jnp.where(jnp.arange(bks[j], dtype=jnp.int32)[:, None] < bk, w, 0)
            if probe:
                z = _probe_row(bks[j], dtype) @ w
                w = jnp.concatenate([w, jnp.zeros((1, n), dtype)])
                w = jax.lax.dynamic_update_slice(w, z[None], (bk, jnp.int32(0)))
                a, s = _probe_scale(z[None], s)
            else:
                a, s = _scale(w, s)
            return w, s, 1 / a

        r, s, inv = jax.lax.cond(
            k > j, compress, lambda r, s, inv: (r, s, inv), r, st.s, st.inv
        )
        nxt = _rank.next_look(lr, st.last, st.count, bks_arr[k + 1], eps, n, total)
        return r, st._replace(k=k, s=s, inv=inv, nxt=nxt, last=(st.count, lr))

    def single(blk, st):
        """One block (not in a run), its pull and look switched on the bucket."""

        def branch(j):
            def f(st):
                r, s, inv = pull(blk, st.buf[: bks[j] + extra], st)
                st = st._replace(s=s, inv=inv, count=st.count + 1)
                out = spectrum(r, inv, s) if every else None
                r, st = jax.lax.cond(
                    st.count >= st.nxt,
                    lambda r, st: look(j, r, st),
                    lambda r, st: (r, st),
                    r,
                    st,
                )
                return st._replace(buf=widen(st.buf, r)), out

            return f

        return jax.lax.switch(st.k, [branch(j) for j in range(nb)], st)

    def run(seg, st):
        """A run of identical blocks, last to first: one loop per bucket."""
        length = seg.hs.shape[0]
        res = None if seg.lin is None else seg.lin[2]
        take = lambda a, i: jax.lax.dynamic_index_in_dim(a, i, keepdims=False)  # noqa: E731
        ys = None
        if every:
            ys = jnp.zeros((length, min(size, math.prod(seg.shape))), dtype)

        def block(i):
            p, kk, h, rs = jax.tree.map(
                lambda a: take(a, i), (seg.ps, seg.ks, seg.hs, res)
            )
            return _run_block(seg, p, kk, h, rs)

        i = jnp.int32(length - 1)
        for j in range(nb):

            def steps(c, j=j):
                r, st, i, ys = c
                r, s, inv = pull(block(i), r, st)
                if every:
                    ys = jax.lax.dynamic_update_index_in_dim(
                        ys, spectrum(r, inv, s), i, 0
                    )
                return r, st._replace(s=s, inv=inv, count=st.count + 1), i - 1, ys

            def until_look(c, j=j):
                c = jax.lax.while_loop(
                    lambda c: (c[2] >= 0) & (c[1].count < c[1].nxt), steps, c
                )
                r, st, i, ys = c
                r, st = jax.lax.cond(
                    (i >= 0) & (st.count >= st.nxt),
                    lambda r, st: look(j, r, st),
                    lambda r, st: (r, st),
                    r,
                    st,
                )
                return r, st, i, ys

            r = st.buf[: bks[j] + extra]
            r, st, i, ys = jax.lax.while_loop(
                lambda c, j=j: (c[2] >= 0) & (c[1].k == j), until_look, (r, st, i, ys)
            )
            st = st._replace(buf=widen(st.buf, r))
        return st, ys

    buf = with_probe(m0)
    a, s = scale(buf, jnp.zeros((), y.dtype))
    look0 = _rank.FIRST_CHECK
    if look0 + _rank.MIN_REMAINING > total or nb == 1:
        look0 = _rank.NEVER
    st = _RankState(
        buf, jnp.int32(0), s, 1 / a, jnp.int32(1), jnp.int32(look0),
        (jnp.int32(0), jnp.zeros((size,), dtype)),
    )  # fmt: skip
    ys = [None] * len(segs)
    if every:
        ys[-1] = spectrum(buf, st.inv, s)[None]
    for q in range(len(segs) - 2, -1, -1):
        seg = segs[q]
        if isinstance(seg, Run):
            st, ys[q] = run(seg, st)
        else:
            st, out = single(seg, st)
            ys[q] = None if out is None else out[None]
    if every:  # the input's spectrum is the last of ys already
        return ys, None
    final = jax.lax.switch(
        st.k,
        [
            (lambda j=j: spectrum(st.buf[: bks[j] + extra], st.inv, st.s))
            for j in range(nb)
        ],
    )
    return None, final


def _compressible(net, params, blocks, compress) -> bool:
    """Whether a rank-compressed sweep can look at the rank at all: ``compress`` and
    enough blocks (else the plain sweep: the same values, compiled faster)."""
    _checks.boolean("compress", compress)
    n_blocks = len(resolve_net(net, params, blocks)[2])
    return compress and n_blocks >= _rank.FIRST_CHECK + _rank.MIN_REMAINING


def _compressed(fn, exact, params, x):
    """``fn(params, x)`` (a rank-compressed sweep: while loops, no reverse-mode
    derivative), differentiated as ``exact`` (the same values from the uncompressed sweep,
    a scan): forward and reverse mode both work, at the cost of the uncompressed sweep."""

    @jax.custom_jvp
    def f(p, v):
        return fn(p, v)

    @f.defjvp
    def _jvp(primals, tangents):
        return jax.jvp(exact, primals, tangents)

    return f(params, x)


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
        ys, *_ = _sweep(
            net,
            p,
            v,
            blocks,
            train,
            key,
            _stateless(lambda m, s: _log_svdvals(m, s, svd)),
        )
        return tuple(per_block(ys))

    if not _compressible(net, params, blocks, compress):
        return exact(params, x)

    def fn(p, v):
        ys, _ = _rank_sweep(net, p, v, blocks, train, key, svd, every=True)
        return tuple(per_block(ys))

    return _compressed(fn, exact, params, x)


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
        _, (m, s), _ = _sweep(
            net, p, v, True, train, key, _stateless(lambda m, s: None), probe=True
        )
        return _log_svdvals(m, s, svd)

    if not _compressible(net, params, True, compress):
        return exact(params, x)
    return _compressed(
        lambda p, v: _rank_sweep(net, p, v, True, train, key, svd, every=False)[1],
        exact,
        params,
        x,
    )


class NormEstimates(NamedTuple):
    """Spectral norm and mean squared singular value of every ``P_l = d y / d h_l``.

    Attributes:
        log_spectral_norm: ``(L,)`` natural log of sigma_max(P_l). From
            :func:`output_norm_estimates`: a Rayleigh-Ritz value, a lower bound that is
            exact when the Krylov spaces contain the top singular vectors; from
            :func:`output_norms`: Lanczos on the explicit product.
        log_mean_sq: ``(L,)`` natural log of ``tr(P_l P_l^T) / min(m, n)`` (the mean
            squared singular value): exact from :func:`output_norms`, an unbiased
            Hutch++ estimate from :func:`output_norm_estimates`.
        mean_sq_rel_err: ``(L,)`` the relative standard error of ``exp(log_mean_sq)``,
            estimated from the probes' own spread (0 where exact).
    """

    log_spectral_norm: jax.Array
    log_mean_sq: jax.Array
    mean_sq_rel_err: jax.Array


def _pull_one(cur, lg, blk):
    """Pulls the unit rows ``cur`` (k, size(out)) back through ``blk`` and renormalises
    them: (unit rows (k, size(in)), their logs ``lg`` plus the logs of the norms)."""
    out = jax.vmap(blk.vjp)(cur.reshape((-1,) + blk.out_shape))
    out = out.reshape((cur.shape[0], -1))
    n = vec_norm(out)
    return out / jnp.where(n > 0, n, 1.0)[:, None], lg + safe_log(n)


def _pull_rows(segs, rows, keep=None):
    """One backward sweep of the rows (k, size(y)) at the output: P_l^T r for every l.

    Returns fold's ys of (unit rows (keep, size(h_l)), (k,) logs of their norms): only
    the first ``keep`` rows (default all) are kept at every block, the rest only as
    norms (writing vectors out of a loop costs memory traffic)."""

    def step(carry, blk, _):
        cur, lg = _pull_one(*carry, blk)
        return (cur, lg), (cur[:keep], lg)

    lg0 = jnp.zeros(rows.shape[0], rows.dtype)
    _, ys = fold(segs, step, (rows, lg0), reverse=True)
    return ys


def _start(rows):
    """The carry of a pull that starts at the output: unit rows and zero logs."""
    return rows, jnp.zeros(rows.shape[0], rows.dtype)


def _pull_fold(segs, carry, keep, prev=None, store=False):
    """Pulls the carried unit rows (and their logs) back through ``segs`` and
    summarises them on the way, without storing them for every block (at L = 128, 16
    examples, that store and its copies in and out of the loop put the scratch over
    glibc's 32 MiB mmap threshold: a page fault per 4 KiB on every call).

    At every block: the logs of all carried rows; with ``prev`` (per segment, a tuple
    of the earlier blocks of Q's unit rows there, stacked (R, k_j, n)), the Gram matrix
    (r, r) of those and the first ``keep`` rows; with ``store``, those ``keep`` rows.

    Returns (the final carry, fold's ys of (Gram or None, logs, rows or None))."""

    def step(c, blk, zs):
        cur, lg = _pull_one(*c, blk)
        gram = None
        if zs is not None:
            # formed here, from one block's rows, XLA makes no transposed copy of
            # every block's stored rows (as it does for one einsum over all of them)
            rows = jnp.concatenate([*zs, cur[:keep]])
            gram = rows @ rows.T
        return (cur, lg), (gram, lg, cur[:keep] if store else None)

    return fold(segs, step, carry, prev, reverse=True)


def _off(g, us):
    """The rows g projected off the orthonormal rows of all blocks ``us``."""
    basis = jnp.concatenate(us)
    return g - (g @ basis.T) @ basis


def _orth_rows(v):
    """Orthonormal rows spanning the rows of ``v`` (k, n), k <= n (a QR)."""
    return jnp.linalg.qr(v.T)[0].T


def _new_block(v, us):
    """The rows ``v`` projected off the orthonormal rows of all blocks ``us`` (twice:
    re-orthogonalised) and orthonormalised: the next block of a growing basis."""
    for _ in range(2):
        v = _off(v, us)
    return _orth_rows(v)


def _krylov_block(segs, ys, log_c, us):
    """The next block of the shared Krylov space: ``sum_l P_l P_l^T U / c_l`` over the
    blocks of ``segs`` (one forward sweep of the pulled rows ``ys``), projected off all
    earlier blocks ``us`` (twice: re-orthogonalised) and orthonormalised."""
    zs = [z for z, _ in ys]
    zlogs = [lg - c for (_, lg), c in zip(ys, log_c, strict=True)]
    return _new_block(_push_sum(segs, zs, zlogs), us)


def _push_sum(segs, zs, zlogs):
    """sum_l exp(zlogs[l]) * P_l z_l for every row, in ONE forward sweep.

    ``zs``, ``zlogs``: fold's xs (per segment, stacked) of the (k, size(h_l)) vectors and
    their (k,) logs. The terms are added as the sweep passes h_l (linearity), each
    rescaled in log space; returns the (k, size(y)) sums, each row up to a positive factor
    (which the caller's orthonormalisation ignores)."""

    def step(carry, blk, inp):
        acc, al = carry
        t, tl = inp
        mx = jnp.maximum(al, tl)
        mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
        acc = acc * jnp.exp(al - mx)[:, None] + t * jnp.exp(tl - mx)[:, None]
        out = jax.vmap(blk.jvp)(acc.reshape((-1,) + blk.in_shape))
        out = out.reshape((acc.shape[0], -1))
        n = vec_norm(out)
        return (out / jnp.where(n > 0, n, 1.0)[:, None], mx + safe_log(n)), None

    acc0 = jnp.zeros_like(zs[0][0])
    al0 = jnp.full(acc0.shape[:1], -jnp.inf, acc0.dtype)
    (acc, _), _ = fold(segs, step, (acc0, al0), list(zip(zs, zlogs, strict=True)))
    return acc


def _top_eig(g, squarings=3, powers=8):
    """Top eigenvalue and eigenvector of the PSD matrix g (r, r): ``squarings`` repeated
    squarings give m = g^(2^squarings) (trace-normalised), whose column of largest
    diagonal is then multiplied by m ``powers`` more times (matrix-vector products, r^2
    each instead of a squaring's r^3), and a Rayleigh quotient with g is taken. The vector
    is g^(2^squarings * (powers + 1)) applied to a unit vector (g^72 by default), so the
    quotient lies in [lambda_2, lambda_1] and is within about
    lambda_1 (lambda_j / lambda_1)^72 of lambda_1 for every other eigenvalue lambda_j:
    exact to float precision unless the top eigenvalues are nearly equal, and then close
    to lambda_1 anyway. (Six squarings cost twice as much for the same power: 19 against
    about 9 ms for 2048 24 x 24 matrices on 2 CPU cores.)"""
    tiny = jnp.finfo(g.dtype).tiny
    m = g / jnp.maximum(jnp.trace(g), tiny)
    for _ in range(squarings):
        m = m @ m
        m = m / jnp.maximum(jnp.trace(m), tiny)
    v = m[:, jnp.argmax(jnp.diagonal(m))]
    for _ in range(powers):
        v = v / jnp.maximum(jnp.max(jnp.abs(v)), tiny)
        v = m @ v
    v = v / jnp.maximum(jnp.linalg.norm(v), tiny)
    return jnp.maximum(v @ g @ v, 0.0), v


REACH = 32  # output_norm_estimates' default reach for networks without residual blocks


def _has_residual(layer) -> bool:
    """Whether ``layer`` is (or contains) a residual block."""
    if getattr(layer.apply, "kind", None) == "residual":
        return True
    return any(_has_residual(sub) for sub in getattr(layer, "layers", ()))


REORTH = 16  # the deep push re-orthonormalises its rows every REORTH blocks


def _push_rows(segs, rows, every=REORTH):
    """Pushes the rows (m, size(h_0)) forward through every block of ``segs`` and
    returns orthonormal rows (m, size(y)) spanning their image. Each block renormalises
    the rows; every ``every`` blocks (and at the end) a QR re-orthonormalises them, so
    that in float32 they do not all collapse onto the top direction (a block
    subspace iteration, as for Lyapunov exponents)."""

    def step(c, blk, _):
        cur, i = c
        out = jax.vmap(blk.jvp)(cur.reshape((-1,) + blk.in_shape))
        out = out.reshape((cur.shape[0], -1))
        n = vec_norm(out)
        out = out / jnp.where(n > 0, n, 1.0)[:, None]
        out = jax.lax.cond(i % every == every - 1, _orth_rows, lambda v: v, out)
        return (out, i + 1), None

    (cur, _), _ = fold(segs, step, (rows, jnp.zeros((), jnp.int32)))
    return _orth_rows(cur)


def _deep_start(q_rows, carry, us, z_in, gauss, rank, kq, d):
    """The deep products' pull, started at the boundary h_b (the first near product)
    from rows already pulled there, with no sweep of its own: ``rank`` orthonormal
    output directions Q' = Q v in the span of Q (r directions) and ``d`` probes
    projected off Q'.

    v: the directions ``z_in`` pushed from the input (the deepest product's top left
    singular directions, m of them) and the top ``rank - m`` Ritz directions of P_b in
    Q. The probes: ``(I - Q' Q'^T) G = (I - Q Q^T) G + Q (I - v v^T) Q^T G`` for the
    first d Gaussian rows G of ``gauss``, whose ``(I - Q Q^T) G`` part is the near
    probes' (rows kq: of ``carry``).

    Args:
        q_rows: (unit rows, logs) of Q's blocks at h_b, lists in the order of ``us``.
        carry: the last near pull's (unit rows, logs) at h_b.

    Returns:
        (unit rows (rank + d, n), logs (rank + d,)) at h_b."""
    zq, lq = (jnp.concatenate(a) for a in q_rows)
    mx = jnp.max(lq)
    mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
    a = zq * jnp.exp(lq - mx)[:, None]  # Q^T P_b / exp(mx)
    qmat = jnp.concatenate(us)
    ritz = jnp.linalg.eigh(a @ a.T)[1][:, ::-1][:, : rank - z_in.shape[0]]
    v = jnp.linalg.qr(jnp.concatenate([qmat @ z_in.T, ritz], axis=1))[0]  # (r, rank)
    coef = qmat @ gauss[:d].T  # (r, d): Q^T G
    coef = coef - v @ (v.T @ coef)
    cur, lg = carry
    lgp = lg[kq : kq + d]
    mp = jnp.maximum(lgp, mx)
    mp = jnp.where(jnp.isfinite(mp), mp, 0.0)
    gp = cur[kq : kq + d] * jnp.exp(lgp - mp)[:, None]
    gp = gp + (coef.T @ a) * jnp.exp(mx - mp)[:, None]
    rows = jnp.concatenate([v.T @ a, gp])
    n = vec_norm(rows)
    rows = rows / jnp.where(n > 0, n, 1.0)[:, None]
    return rows, jnp.concatenate([mx + safe_log(n[:rank]), mp + safe_log(n[rank:])])


@full_precision
def output_norm_estimates(
    net: Any,
    params: Any,
    x: jax.Array,
    key: jax.Array,
    *,
    rank: int = 8,
    power: int = 2,
    probes: int = 24,
    tail: int = 8,
    iters: int = 6,
    reach: int | None = None,
    deep_probes: int = 4,
    blocks: bool = True,
    train: bool = False,
    dropout_key: jax.Array | None = None,
) -> NormEstimates:
    """Spectral norm and mean squared singular value of every ``P_l = d y / d h_l``,
    cheaply: no Jacobian or product is formed, only sweeps of a few vectors.

    1. A shared output subspace Q (``rank * (power + 1)`` orthonormal directions in the
       space of y) by block Krylov iteration with the operator ``sum_l P_l P_l^T / c_l``
       over the ``reach`` products nearest the output (``c_l`` a Frobenius estimate,
       so that every l counts; the ``tail`` products are left out of the sum when
       there are others, step 4 refines them): each application is one backward sweep
       (``P_l^T U`` at every h_l) and ONE forward sweep that adds the terms
       ``P_l P_l^T U / c_l`` as it passes h_l, so its cost does not grow with the
       number of products.
    2. One backward sweep of Q gives ``Q^T P_l`` for every l: its top singular value is a
       lower bound on sigma_max(P_l) (a Rayleigh-Ritz value), close when the top left
       singular vector of P_l lies in Q.
    3. Mean squared singular value, as Hutch++ (Meyer et al. 2021) with the shared Q:
       ``||P_l||_F^2 = ||Q^T P_l||_F^2`` (exact) ``+ ||(I - Q Q^T) P_l||_F^2``, the
       second by ``probes`` Gaussian probes projected off Q (Hutchinson, unbiased), so
       the estimator's variance comes only from what Q leaves out.
    4. The ``tail`` products nearest the output are the shortest and have the flattest
       spectra, least captured by Q: they get ``iters`` Lanczos steps on ``P_l^T P_l``
       (forward and backward sweeps over the last ``tail`` blocks only, cost ~ tail^2)
       started from step 2's top right singular vector; the larger of the two lower
       bounds is kept.
    5. The deeper products (all but the ``reach`` nearest) get no Krylov sweep of their
       own: their top left singular subspaces converge as l decreases, to that of the
       deepest product ``P_0``, which ``max(rank // 2, 1)`` random rows pushed
       forward from the input find (one forward sweep, re-orthonormalised every
       ``REORTH`` blocks: a block subspace iteration, the randomized range finder of
       ``P_0``). Those rows join Q's last pull, which carries them to ``h_b``, the
       first near product. There the deep products get ``rank`` directions ``Q'``:
       the pushed ones and the top Ritz directions of ``P_b`` in Q, and
       ``deep_probes`` probes re-projected off ``Q'`` (``(I - Q'Q'^T) G = (I - QQ^T) G
       + Q (I - v v^T) Q^T G`` with ``Q' = Q v``): all combinations of rows already
       pulled to ``h_b``, so the deep products cost one backward sweep of
       ``rank + deep_probes`` rows. At L = 128 (width 128, 16 examples, 2-core CPU)
       this takes 0.80x the time of the earlier scheme (one Krylov iteration over
       every block for the deep products) with max errors 0.77% / 3.7% (spectral norm
       / mean square; were 2.1% / 6.3%), medians 0.02% / 0.13% (were 0.08% / 0.36%)
       (docs/benchmarks.md, session 11). With ``reach >= L`` every product gets every
       iteration and every probe. That premise fails for residual networks: their
       products stay near isometries, whose singular subspaces do not settle with
       depth (tanh residual, L = 128, width 128: max spectral-norm error 17% with
       ``reach=32``, 11% and median 0.19% with ``reach=L`` at 1.17x the time), so by
       default a network with residual blocks gets ``reach = L``.

    When ``rank * (power + 1) >= size(y)``, Q is the whole output space and both values
    are exact. Accuracy against the exact values of :func:`output_spectra` is measured
    in ``scripts/bench_jacobian.py`` (docs/benchmarks.md) and the tests; the spectral
    norm never exceeds the true value (up to rounding).

    Args:
        net, params, x: as :func:`output_sweep` (one example).
        key: PRNG key for the Krylov start block and the probes.
        rank: block size of the shared Krylov space, >= 1.
        power: block Krylov iterations, >= 0 (the space has ``rank * (power + 1)``
            directions).
        probes: Hutchinson probes for the part of ``||P_l||_F^2`` off Q, >= 1.
        tail: number of products nearest the output refined by Lanczos, >= 0.
        iters: Lanczos steps for those, >= 1.
        reach: number of products nearest the output that get all ``power``
            iterations and all ``probes`` (raised to ``tail`` if below it), >= 1, or
            None (the default): every product for a network with residual blocks (step
            5's premise fails there), else ``REACH`` = 32.
        deep_probes: Hutchinson probes for the deeper products, >= 1 (at most
            ``probes`` are used: they are the first near probes, re-projected).
        blocks, train: as :func:`output_sweep`.
        dropout_key: the dropout key for ``train=True``.

    Returns:
        A :class:`NormEstimates`.

    References:
        Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace
        Estimation"; Musco & Musco 2015, "Randomized Block Krylov Methods for Stronger
        and Faster Approximate Singular Value Decomposition"; Halko, Martinsson & Tropp
        2011, "Finding Structure with Randomness" (the range finder).
    """
    _checks.positive_int("rank", rank)
    _checks.non_negative_int("power", power)
    _checks.positive_int("probes", probes)
    _checks.non_negative_int("tail", tail)
    _checks.positive_int("iters", iters)
    if reach is not None:
        _checks.positive_int("reach", reach)
    _checks.positive_int("deep_probes", deep_probes)
    layers, _, ends = resolve_net(net, params, blocks)
    L = len(ends)
    if reach is None:  # residual blocks keep the products near isometries: no shortcut
        reach = L if any(_has_residual(lay) for lay in layers) else REACH
    t = min(tail, L)
    near_len = min(max(reach, t), L)  # the products nearest the output, tail included
    segs, shapes, y = segments(
        net,
        params,
        x,
        blocks=blocks,
        train=train,
        key=dropout_key,
        cut=L - t,
        single_after_cut=True,
        bounds=(L - near_len,),
    )
    ny = y.size
    dtype = y.dtype
    ku, kg = jax.random.split(key)
    full = rank * (power + 1) >= ny  # Q spans the output space: exact
    if full:
        u = jnp.eye(ny, dtype=dtype)
        ys = _pull_rows(segs, u)  # Q^T P_l for every l
        groups = [
            (
                [jnp.einsum("...in,...jn->...ij", z, z) for z, _ in ys],
                [lg for _, lg in ys],
                None,
            )
        ]
    else:
        u = jnp.linalg.qr(jax.random.normal(ku, (ny, rank), dtype))[0].T
        head, near = split_at(segs, L - near_len)
        nh, ns = len(head), len(segs)
        near_rest, tail_segs = split_at(near, near_len - t)
        n_rest = len(near_rest)
        kd, kn = jax.random.split(kg)
        # 1. Q: block Krylov over the near blocks. pulled[i][s]: (rows (R, rank, n),
        # logs (R, rank)) of Q's block i at near segment s
        us, pulled = [u], []
        for it in range(power):
            pulled.append(list(_pull_rows(near, u)))
            if it == 0:  # c_l: ||P_l||_F^2 ~ (ny / rank) sum_i ||P_l^T u_i||^2
                log_c = [
                    jax.nn.logsumexp(2 * lg, axis=-1, keepdims=True)
                    + jnp.log(ny / rank)
                    for _, lg in pulled[0]
                ]
                if n_rest and tail_segs:  # Lanczos refines the tail: out of the sum
                    log_c = log_c[:n_rest] + [c + jnp.inf for c in log_c[n_rest:]]
            u = _krylov_block(near, pulled[-1], log_c, us)
            us.append(u)
        # 2. the deep products' top left singular directions: rows pushed from h_0
        m = max(rank // 2, 1) if nh else 0
        if m:
            z_in = _push_rows(segs, jax.random.normal(kd, (m, x.size), dtype))
            us.append(_new_block(z_in, us))
            u = jnp.concatenate([u, us[-1]])
        kq = rank + m  # Q's rows in the last pull
        gauss = jax.random.normal(kn, (probes, ny), dtype)
        g = _off(gauss, us)
        # 3. one last pull through the near blocks: Q's last block and the probes
        prev = [tuple(p[s][0] for p in pulled) for s in range(len(near))]
        carry, ys_tail = _pull_fold(
            tail_segs, _start(jnp.concatenate([u, g])), kq, prev[n_rest:], store=True
        )
        carry, ys_rest = _pull_fold(near_rest, carry, kq, prev[:n_rest])
        last = ys_rest + ys_tail  # per near segment: (Gram, logs, Q's rows)
        # (Gram matrices, Q's row logs, probe logs) of the near products
        groups = [
            (
                [gm for gm, _, _ in last],
                [
                    jnp.concatenate([p[s][1] for p in pulled] + [lg[:, :kq]], -1)
                    for s, (_, lg, _) in enumerate(last)
                ],
                [2 * lg[:, kq:] for _, lg, _ in last],  # log ||P^T g_j||^2
            )
        ]
        if nh:  # 4. the deep products: one pull of rank directions and the probes
            q_rows = (
                [p[0][0][0] for p in pulled] + [carry[0][:kq]],
                [p[0][1][0] for p in pulled] + [carry[1][:kq]],
            )
            start = _deep_start(
                q_rows, carry, us, z_in, gauss, rank, kq, min(deep_probes, probes)
            )
            _, ys_head = _pull_fold(head, start, rank, [()] * nh)
            groups.insert(
                0,
                (
                    [gm for gm, _, _ in ys_head],
                    [lg[:, :rank] for _, lg, _ in ys_head],
                    [2 * lg[:, rank:] for _, lg, _ in ys_head],
                ),
            )
    tiny = jnp.finfo(dtype).tiny

    def summary(g, lg, per_probe):
        """One product: (log sigma_max lower bound, weights ws with the start vector
        ``v ~ rows^T ws``, log ||P||_F^2, rel err) from the Gram matrix ``g`` (r, r) of
        its unit rows Q^T P, their logs (r,), and the probes' logs."""
        mx = jnp.max(lg)
        mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
        e = jnp.exp(lg - mx)  # the rows scaled to Q^T P_l / exp(mx)
        lam, w = _top_eig(g * e[:, None] * e[None, :])
        fro_q = jax.nn.logsumexp(2 * lg)
        if per_probe is None:
            return 0.5 * safe_log(lam) + mx, w * e, fro_q, jnp.zeros((), dtype)
        k = per_probe.shape[-1]
        fro_r = jax.nn.logsumexp(per_probe) - jnp.log(float(k))
        tot = jnp.logaddexp(fro_q, fro_r)
        share = jnp.exp(per_probe - tot)  # each probe's residual over the total
        sd = jnp.std(share, ddof=1 if k > 1 else 0) / jnp.sqrt(float(k))
        return 0.5 * safe_log(lam) + mx, w * e, tot, sd

    # in chunks of 16 products: the Gram matrices' squarings for all L at once held
    # three (L, r, r) temporaries per example (13.5 MiB at L = 128, 16 examples)
    outs = [
        jax.lax.map(
            lambda a: summary(*a),
            (unchunk(gr), unchunk(lg), None if pp is None else unchunk(pp)),
            batch_size=16,
        )
        for gr, lg, pp in groups
    ]
    sn = jnp.concatenate([o[0] for o in outs])
    fro = jnp.concatenate([o[2] for o in outs])
    rel_err = jnp.concatenate([o[3] for o in outs])
    ws = outs[-1][1]  # the near products' (the tail's start vectors)
    if t and not full:
        maps = split_at(segs, L - t)[1]  # single Blocks
        starts = []  # the top right singular vectors' estimates v ~ (Q^T P)^T ws
        off = L - near_len  # ws is indexed from the first near product
        for j, i in enumerate(range(ns - t - nh, ns - nh)):  # near segment index
            rows_ = jnp.concatenate([p[i][0][0] for p in pulled] + [last[i][2][0]])
            v = rows_.T @ ws[L - t + j - off]
            starts.append(v / jnp.maximum(jnp.linalg.norm(v), tiny))
        top = _lanczos_top(maps, starts, fro[L - t :], iters, dtype)
        sn_t = 0.5 * (safe_log(jnp.maximum(top, 0.0)) + fro[L - t :])
        sn = sn.at[L - t :].set(jnp.maximum(sn[L - t :], sn_t))
    r = jnp.asarray([min(ny, math.prod(s)) for s in shapes], dtype)
    return NormEstimates(
        log_spectral_norm=sn,
        log_mean_sq=fro - jnp.log(r),
        mean_sq_rel_err=rel_err,
    )


def _unit(v):
    return v / jnp.linalg.norm(v)


def _push_fwd(maps, vs, logs, start):
    """Pushes vectors vs[l] (at h_l) forward to the output, each rescaled in log space.

    vs: list of L arrays (k, size(h_l)); returns (L, k, size(y)) and (L, k) logs."""
    L = len(maps)
    cur, cur_log = None, None
    for m in range(start, L):
        jvp, _, in_shape, out_shape, _ = maps[m]
        v_new = vs[m].reshape((-1,) + in_shape)
        add = v_new[None]
        lg = logs[m][None]
        cur = add if cur is None else jnp.concatenate([cur, add], axis=0)
        cur_log = lg if cur_log is None else jnp.concatenate([cur_log, lg], axis=0)
        a, k = cur.shape[0], cur.shape[1]
        flat = cur.reshape((a * k,) + in_shape)
        out = jax.vmap(jvp)(flat).reshape((a, k, -1))
        n = vec_norm(out)
        cur = (out / jnp.where(n > 0, n, 1.0)[..., None]).reshape((a, k) + out_shape)
        cur_log = cur_log + safe_log(n)
    return cur.reshape(cur.shape[:2] + (-1,)), cur_log


def _pull_back(maps, us, logs):
    """Pulls vectors us[l] (at the output) back to h_l for every l, rescaled.

    us: (L, k, size(y)); returns a list of L arrays (k, size(h_l)) and (L, k) logs."""
    L = len(maps)
    res, res_log = [None] * L, [None] * L
    cur, cur_log = us, logs
    for m in range(L - 1, -1, -1):
        _, vjp, in_shape, out_shape, _ = maps[m]
        a, k = cur.shape[0], cur.shape[1]
        flat = cur.reshape((a * k,) + out_shape)
        out = jax.vmap(vjp)(flat).reshape((a, k, -1))
        n = vec_norm(out)
        out = out / jnp.where(n > 0, n, 1.0)[..., None]
        lg = cur_log + safe_log(n)
        res[m], res_log[m] = out[m], lg[m]
        cur, cur_log = out[:m].reshape((m, k) + in_shape), lg[:m]
    return res, jnp.stack(res_log)


def _lanczos_top(maps, qs, log_c, iters, dtype):
    """Top Ritz value of P_l^T P_l / exp(log_c_l) for every l of the sub-network ``maps``
    (single Blocks; products to its output), after ``iters`` Lanczos steps from the start
    vectors ``qs``.

    The sweeps are unrolled over the tail's blocks and triangular: the forward sweep adds
    the vector of product l as it passes h_l, the backward sweep drops it there, so the
    tail costs t (t + 1) block applications per step instead of the 2 t^2 of a scan that
    carries a row per product throughout (measured: 34 against 46 ms at L = 32,
    N = 256)."""
    L = len(maps)
    sizes = [q.shape[0] for q in qs]
    n_max = max(sizes)

    # one (L, n_max) array, zero-padded: the per-product steps vectorised
    def stack(vs):
        return jnp.stack([jnp.pad(v, (0, n_max - v.shape[0])) for v in vs])

    def apply_a(vs):
        vs = [v[:n] for v, n in zip(vs, sizes, strict=True)]
        fwd, fwd_log = _push_fwd(
            maps, [v[None] for v in vs], [jnp.zeros((1,), dtype)] * L, 0
        )
        bwd, bwd_log = _pull_back(maps, fwd, fwd_log)
        scale = jnp.exp(bwd_log[:, 0] - log_c)
        return stack([b[0] for b in bwd]) * scale[:, None]

    # Lanczos with full re-orthogonalisation, the iterations in a fori_loop so that the
    # sweeps are traced once (compile time independent of `iters`).
    def body(it, state):
        basis, cur, prev, beta, alphas, betas = state  # basis (L, iters, n_max)
        w = apply_a(cur)
        alpha = jnp.sum(w * cur, axis=-1)
        w = w - alpha[:, None] * cur - beta[:, None] * prev
        # basis rows not yet filled are zero and project out nothing
        for _ in range(2):
            w = w - jnp.einsum("lk,lkn->ln", jnp.einsum("lkn,ln->lk", basis, w), basis)
        beta_new = jnp.linalg.norm(w, axis=-1)
        nxt = w / jnp.where(beta_new > 0, beta_new, 1.0)[:, None]
        i = jnp.minimum(it + 1, iters - 1)
        basis = basis.at[:, i].set(jnp.where(it + 1 < iters, nxt, basis[:, -1]))
        alphas = alphas.at[it].set(alpha)
        betas = betas.at[it].set(beta_new)
        return basis, nxt, cur, beta_new, alphas, betas

    q0 = stack(qs)
    state = (
        jnp.zeros((L, iters, n_max), dtype).at[:, 0].set(q0),
        q0,
        jnp.zeros_like(q0),
        jnp.zeros((L,), dtype),
        jnp.zeros((iters, L), dtype),
        jnp.zeros((iters, L), dtype),
    )
    *_, alphas, betas = jax.lax.fori_loop(0, iters, body, state)
    off = betas[:-1].T  # (L, iters-1)
    t = jax.vmap(lambda d, e: jnp.diag(d) + jnp.diag(e, 1) + jnp.diag(e, -1))(
        alphas.T, off
    )
    top = jnp.linalg.eigvalsh(t)[:, -1]

    return top


def _norm2(v):
    """Euclidean norm of a vector whose entries are O(1) (no rescaling pass)."""
    return jnp.sqrt(jnp.sum(v * v))


def _top2(alphas, betas):
    """Largest eigenvalue and unit eigenvector of the 1 x 1 or 2 x 2 symmetric
    tridiagonal matrix with diagonal ``alphas`` and off-diagonal ``betas``, in closed
    form (no LAPACK call inside a sweep's loop)."""
    if len(alphas) == 1:
        return alphas[0], jnp.ones((1,), alphas[0].dtype)
    (a, c), b = alphas, betas[0]
    d = 0.5 * (a - c)
    rad = jnp.sqrt(d * d + b * b)
    # the eigenvector's two forms, each free of cancellation on its side of d = 0
    v = jnp.where(d >= 0, jnp.stack([d + rad, b]), jnp.stack([b, rad - d]))
    n = _norm2(v)
    v = jnp.where(n > 0, v / jnp.where(n > 0, n, 1.0), jnp.array([1.0, 0.0], a.dtype))
    return 0.5 * (a + c) + rad, v


def _lanczos_left(r, inv, u, min_iters, max_iters, tol):
    """Lanczos on ``m m^T`` with ``m = r * inv`` (an explicit (ny, n) matrix and a
    positive scalar, so that ``m`` is never written out) from the unit vector ``u``
    (ny,), fully re-orthogonalised, for ``min_iters`` steps and then until the top
    Ritz pair's residual ``rho = ||m m^T y - theta y||`` (= beta_k |s_k|, free from the
    recurrence) has ``rho^2 <= tol * theta^2``, or after ``max_iters`` steps, or when
    the Krylov space is exhausted (theta's error is about ``rho^2 / gap``, gap the
    distance to the next eigenvalue: about ``tol * theta`` for a well-separated top).
    Returns (theta, the top Ritz value: a lower bound on sigma_max(m)^2, exact when the
    Krylov space holds the top left singular vector, and within ``rho`` of an
    eigenvalue of ``m m^T``; the next start vector, ``m m^T y`` normalised: one power
    step beyond the Ritz vector, also free).

    Each step is two passes over ``r``. The first steps are unrolled and tested in
    closed form; the rest run in a ``while_loop`` (which, under ``vmap``, runs until
    every example has converged, keeping a converged example's state as it is) on the
    tridiagonal matrix padded to ``max_iters`` with zeros. That adds only zero
    eigenvalues (it is positive semi-definite), so its top eigenpair is that of the
    steps taken: by :func:`_top_eig` for the test in each step (no LAPACK call per
    step), by ``eigh`` once at the end."""
    k = min(max_iters, u.shape[0])
    dtype = r.dtype
    idx = jnp.arange(k)

    def lanczos_step(q, q_prev, beta_prev, qs):
        """(alpha, beta, next q) of one step from q; ``qs`` (j, ny) to re-orthogonalise
        against (zero rows project out nothing)."""
        z = (q @ r) * inv  # m^T q
        alpha = jnp.sum(z * z)
        w = (r @ z) * inv - alpha * q - beta_prev * q_prev  # m m^T q, orthogonalised
        w = w - qs.T @ (qs @ w)  # re-orthogonalise
        beta = _norm2(w)
        return alpha, beta, w / jnp.where(beta > 0, beta, 1.0)  # 0 once exhausted

    def converged(theta, beta, s_last):
        res = beta * s_last  # the Ritz pair's residual
        return (res * res <= tol * theta * theta) | (beta == 0)

    m0 = min(min_iters, k)
    qs, alphas, betas = [u], [], []
    q_prev, beta = jnp.zeros_like(u), jnp.zeros((), dtype)
    for _ in range(m0):  # unrolled: a step in the loop below costs about 1.5x more
        alpha, beta, q_next = lanczos_step(qs[-1], q_prev, beta, jnp.stack(qs))
        alphas.append(alpha)
        betas.append(beta)
        q_prev = qs[-1]
        qs.append(q_next)
    if m0 <= 2:
        theta, vec = _top2(alphas, betas[:-1])
    else:
        off = jnp.stack(betas[:-1])
        theta, vec = _top_eig(
            jnp.diag(jnp.stack(alphas)) + jnp.diag(off, 1) + jnp.diag(off, -1)
        )

    def tridiag(al, be, i):  # T of the first i steps, padded with zeros
        off = jnp.where(idx < i - 1, be, 0.0)[:-1]
        return jnp.diag(al) + jnp.diag(off, 1) + jnp.diag(off, -1)

    def body(st):
        i, q, q_prev, beta_prev, basis, al, be, *_ = st
        alpha, beta, q_next = lanczos_step(q, q_prev, beta_prev, basis)
        al, be = al.at[i].set(alpha), be.at[i].set(beta)
        basis = basis.at[jnp.minimum(i + 1, k - 1)].set(
            jnp.where(i + 1 < k, q_next, basis[k - 1])
        )
        theta, vec = _top_eig(tridiag(al, be, i + 1))
        return (i + 1, q_next, q, beta, basis, al, be, theta, vec,
                converged(theta, beta, vec[i]))  # fmt: skip

    def pad(v):  # (m0,) -> (k,), zeros after
        return jnp.zeros((k,), dtype).at[:m0].set(v)

    # the loop does not run when the first steps already span k (m0 == k)
    nb = min(m0 + 1, k)
    basis = jnp.zeros((k, u.shape[0]), dtype).at[:nb].set(jnp.stack(qs[:nb]))
    al, be = pad(jnp.stack(alphas)), pad(jnp.stack(betas))
    st = (m0, qs[-1], q_prev, beta, basis, al, be, theta, pad(vec),
          converged(theta, beta, vec[-1]))  # fmt: skip
    i, q_next, _, beta, basis, al, be, _, _, _ = jax.lax.while_loop(
        lambda st: (st[0] < k) & ~st[-1], body, st
    )
    # the final pair by eigh: _top_eig's value is only within [lambda_2, lambda_1] of T
    # when those nearly coincide (1.8e-4 low on a 12 x 30 Gaussian matrix)
    lam, vecs = jnp.linalg.eigh(tridiag(al, be, i))
    theta, vec = lam[-1], vecs[:, -1]
    y = vec @ jnp.where((idx < i)[:, None], basis, 0.0)  # the Ritz vector
    s_last = vec[jnp.maximum(i - 1, 0)]
    nxt = theta * y + beta * s_last * q_next  # m m^T y
    n = _norm2(nxt)
    return jnp.maximum(theta, 0.0), jnp.where(n > 0, nxt / jnp.where(n > 0, n, 1.0), u)


@full_precision
def output_norms(
    net: Any,
    params: Any,
    x: jax.Array,
    key: jax.Array,
    *,
    iters: int = 16,
    min_iters: int = 8,
    tol: float = 1e-4,
    blocks: bool = True,
    train: bool = False,
    dropout_key: jax.Array | None = None,
) -> NormEstimates:
    """Spectral norm and EXACT mean squared singular value of every ``d y / d h_l``,
    from ONE backward sweep.

    The sweep forms every product ``P_l`` (as :func:`output_sweep`: the cost of one
    ``jax.jacrev`` of the whole network) and summarises each as it is formed, so the L
    products are never stored:

    - mean squared singular value: exact, ``||P_l||_F^2 / min(m, n)``;
    - spectral norm: Lanczos on ``P_l P_l^T`` (matrix-vector products with the explicit
      product, no SVD): ``min_iters`` steps, then on until the top Ritz pair's
      residual is small (``tol``), or to ``iters`` steps. Each product's run starts
      from the previous product's top Ritz vector, one power step on, plus a fresh
      random vector orthogonal to it, in equal parts (the first from a random vector
      drawn with ``key``). The warm half holds the top left singular vector when it
      carries over (it converges as l decreases: it is set by the factors nearest the
      output; Oseledets); the random half holds it when the top singular values cross
      from one product to the next, which a warm start alone misses: started warm
      only, with two steps, Lanczos settled on the second singular value (2.9% low) at
      one product of a depth-32, width-256 tanh MLP.

    The spectral norm is a Ritz value: a lower bound (up to rounding), exact when the
    Krylov space holds the top left singular vector. The stopping rule bounds the
    distance to SOME eigenvalue of ``P P^T``, not to the largest: Lanczos can settle on
    a lower one before the top one has grown in its space, which ``min_iters`` guards
    against (8 steps: largest error 7.5e-4 at depth 32, width 256, and 1.8e-4 at depth
    128, width 128; 6 steps: 6.4% at one product of the first). Accuracy against the
    SVDs of :func:`output_spectra` and the time are measured in
    ``scripts/bench_jacobian.py`` (docs/benchmarks.md). Needs memory for one product
    (m x n per example); for very wide layers use the matrix-free
    :func:`output_norm_estimates`.

    Args:
        net, params, x: as :func:`output_sweep` (one example).
        key: PRNG key for the random start vectors.
        iters: the most Lanczos steps per product, >= 1 (``min(iters, size(y))`` steps
            span the whole output space: exact).
        min_iters: the fewest, >= 1 and <= ``iters``.
        tol: stop (after ``min_iters``) when the residual
            ``rho = ||P P^T y - theta y||`` of the top Ritz pair (theta ~ sigma^2, y
            unit) has ``rho^2 <= tol * theta^2``, > 0. Some eigenvalue of ``P P^T``
            then lies within ``rho`` of theta, and within about ``rho^2 / gap`` when
            theta approximates an eigenvalue a gap above the next.
        blocks, train: as :func:`output_sweep`.
        dropout_key: the dropout key for ``train=True``.

    Returns:
        A :class:`NormEstimates` with ``mean_sq_rel_err`` all 0 (exact).
    """
    _checks.positive_int("iters", iters)
    _checks.positive_int("min_iters", min_iters)
    _checks.positive("tol", tol)
    if min_iters > iters:
        raise ValueError(
            f"`min_iters` must be at most `iters` ({iters}), got {min_iters}. Lower "
            "`min_iters` or raise `iters`."
        )

    def init(m):
        return _unit(jax.random.normal(key, m.shape[:1], m.dtype)), key

    def emit(r, inv, s, state):  # inside the sweep: freed once summarised
        # m = r * inv has sum|m| = 1: its squared Frobenius norm lies in [1 / size, 1]
        fro2 = jnp.sum(jnp.square(r * inv))
        u, k = state
        k, kg = jax.random.split(k)
        g = jax.random.normal(kg, u.shape, u.dtype)
        g = g - jnp.vdot(g, u) * u  # a fresh random direction, orthogonal to u
        u = _unit(u + g / jnp.maximum(_norm2(g), jnp.finfo(u.dtype).tiny))
        lam, u = _lanczos_left(r, inv, u, min_iters, iters, tol)
        log_ms = 2 * s + jnp.log(fro2) - math.log(min(r.shape))
        return (s + 0.5 * safe_log(lam), log_ms), (u, k)

    ys, *_ = _sweep(net, params, x, blocks, train, dropout_key, emit, init)
    sn, ms = unchunk(ys)
    return NormEstimates(
        log_spectral_norm=sn, log_mean_sq=ms, mean_sq_rel_err=jnp.zeros_like(ms)
    )
