"""The rank-compressed backward sweep: the products carried in fewer rows as their
numerical rank falls (see :mod:`jgrad.analyze._rank` for the compression itself)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze import _rank
from jgrad.analyze._jacobians import resolve_net
from jgrad.analyze._segments import (
    Run,
    _run_block,
    seg_len,
    segments,
)
from jgrad.analyze._sweep import (
    last_product,
    log_svdvals,
    pad_spectrum,
    probe_row,
    probe_scale,
    sum_scale,
)


class _RankState(NamedTuple):
    """The carry of :func:`rank_sweep` (see there)."""

    buf: jax.Array  # (rows, n): live rows [:bks[k]], then the probe row, then zeros
    k: jax.Array  # the active bucket
    s: jax.Array  # the log scale: the product is exp(s) * buf[:bks[k]] * inv
    inv: jax.Array
    count: jax.Array  # blocks pulled so far
    nxt: jax.Array  # the count at which to look at the rank next
    last: tuple  # (count, log tails) of the last look: see _rank.next_look


def rank_sweep(net, params, x, blocks, train, key, svd, every):
    """The backward sweep of the rescaled products, carried in fewer rows as their
    numerical rank falls (:mod:`jgrad.analyze._rank`), with the log singular values of
    the products: of every ``d y / d h_l`` (``every``) or of ``d y / d h_0`` only.

    Static shapes: between blocks the rows live in one buffer of m rows (plus the probe
    row of ``sweep``'s ``probe`` when only the last spectrum is wanted) of which the
    first ``bks[k]`` are live, the probe row right after them. A run of identical blocks
    is swept by one ``while_loop`` per bucket, each on a buffer of that bucket's rows,
    entered only while ``k`` is that bucket (``k`` is unbatched under ``vmap``:
    ``_rank.batch_max``); inside, an inner loop pulls blocks until the next look, so the
    steps carry no conditional. Returns (fold's ys of the padded log spectra, or None;
    the padded log spectrum of ``d y / d h_0``)."""
    segs, _, y = segments(net, params, x, blocks=blocks, train=train, key=key)
    total = sum(seg_len(seg) for seg in segs)
    m0 = last_product(segs, y)
    size = y.size
    # blocks outside runs are compiled once per bucket: with many of them (blocks=False,
    # or blocks that all differ), one bucket only (no compression; compile time as the
    # plain sweep's)
    singles = sum(not isinstance(seg, Run) for seg in segs)
    bks = _rank.buckets(size) if singles <= _rank.MAX_SINGLE else (size,)
    bks_arr = jnp.asarray(bks + (0,), jnp.int32)
    nb = len(bks)
    eps = float(jnp.finfo(m0.dtype).eps)
    probe = not every  # one row, the scale of every step from it (see sweep)
    extra = 1 if probe else 0
    dtype = m0.dtype

    def with_probe(w):
        if not probe:
            return w
        return jnp.concatenate([w, (probe_row(w.shape[0], w.dtype) @ w)[None]])

    scale = probe_scale if probe else sum_scale

    def spectrum(r, inv, s):  # r: the rows of one bucket (and the probe row)
        lg = log_svdvals(r[: r.shape[0] - extra] * inv, s, svd)
        return pad_spectrum(lg, min(size, r.shape[1]))

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
                z = probe_row(bks[j], dtype) @ w
                w = jnp.concatenate([w, jnp.zeros((1, n), dtype)])
                w = jax.lax.dynamic_update_slice(w, z[None], (bk, jnp.int32(0)))
                a, s = probe_scale(z[None], s)
            else:
                a, s = sum_scale(w, s)
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


def compressible(net, params, blocks, compress) -> bool:
    """Whether a rank-compressed sweep can look at the rank at all: ``compress`` and
    enough blocks (else the plain sweep: the same values, compiled faster)."""
    _checks.boolean("compress", compress)
    n_blocks = len(resolve_net(net, params, blocks)[2])
    return compress and n_blocks >= _rank.FIRST_CHECK + _rank.MIN_REMAINING


def compressed(fn, exact, params, x):
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
