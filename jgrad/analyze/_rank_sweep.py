"""The rank-compressed backward sweep: the products carried in fewer rows as their
numerical rank falls (see :mod:`jgrad.analyze._rank` for the compression itself)."""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze import _rank
from jgrad.analyze._network import num_blocks
from jgrad.analyze._segments import (
    Run,
    _run_block,
    forward_bad,
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


class _RankConfig(NamedTuple):
    """The constants of one :func:`rank_sweep`, fixed at trace time."""

    bks: tuple  # the buckets' row counts, descending (_rank.buckets)
    bks_arr: jax.Array  # (len(bks) + 1,) int32: bks, then 0
    size: int  # size(y): the rows of the full product
    total: int  # blocks in the network
    eps: float  # the product dtype's machine epsilon
    dtype: jnp.dtype
    probe: bool  # carry the probe row (only the last spectrum is wanted)
    every: bool  # the spectrum of every product
    svd: str

    @property
    def nb(self) -> int:
        """The number of buckets."""
        return len(self.bks)

    @property
    def extra(self) -> int:
        """Rows carried past the live ones: 1 for the probe row, else 0."""
        return 1 if self.probe else 0

    def scale(self, r, s):
        """The step's scale and log scale: the probe row's or the whole product's."""
        return probe_scale(r, s) if self.probe else sum_scale(r, s)


def _with_probe(cfg, w):
    """``w`` with the probe row ``g^T w`` appended when ``cfg.probe``."""
    if not cfg.probe:
        return w
    return jnp.concatenate([w, (probe_row(w.shape[0], w.dtype) @ w)[None]])


def _spectrum(cfg, r, inv, s):
    """The padded log spectrum of one bucket's rows ``r`` (probe row dropped)."""
    lg = log_svdvals(r[: r.shape[0] - cfg.extra] * inv, s, cfg.svd)
    return pad_spectrum(lg, min(cfg.size, r.shape[1]))


def _pull(cfg, blk, r, st):
    """Pulls the rows ``r`` back through ``blk`` and rescales: (rows, s, inv)."""
    r = jax.vmap(lambda v: blk.vjp((v * st.inv).reshape(blk.out_shape)).ravel())(r)
    a, s = cfg.scale(r, st.s)
    return r, s, 1 / a


def _widen(buf, r):
    """``r`` (one bucket's rows) as the first rows of a buffer of ``buf``'s rows."""
    if r.shape[0] == buf.shape[0]:
        return r
    if r.shape[1] != buf.shape[1]:
        buf = jnp.zeros((buf.shape[0], r.shape[1]), r.dtype)
    return jax.lax.dynamic_update_slice(buf, r, (0, 0))


def _look(cfg, j, r, st):
    """Looks at the rank of bucket j's rows ``r``; compresses them in place (rows past
    the new bucket zeroed, the probe row after them) when a smaller bucket holds them.
    Returns (rows, state)."""
    bks = cfg.bks
    if j == cfg.nb - 1:  # the smallest bucket: nothing smaller to move to
        return r, st._replace(nxt=jnp.int32(_rank.NEVER))
    u = r[: bks[j]] * st.inv
    need0, lr0 = _rank.prefilter(u, cfg.eps, cfg.size)

    def fails(r, st):  # the batch's first example does not fit: no look at all
        nxt = _rank.next_look(
            lr0, st.last, st.count, bks[j + 1], cfg.eps, u.shape[1], cfg.total
        )
        return r, st._replace(
            nxt=nxt, last=(st.count, lr0 + jnp.zeros_like(st.last[1]))
        )

    return jax.lax.cond(
        need0 > bks[j + 1], fails, lambda r, st: _full(cfg, j, u, r, st), r, st
    )


def _compress(cfg, j, t, piv, bk, s):
    """Bucket j's rows rebuilt from the pivoted QR ``(t, piv)`` with the rows past
    ``bk`` zeroed (and the probe row after them): (rows, s, inv)."""
    w = _rank.unpermute(t, piv, cfg.bks[j])
    w = jnp.where(jnp.arange(cfg.bks[j], dtype=jnp.int32)[:, None] < bk, w, 0)
    if cfg.probe:
        z = probe_row(cfg.bks[j], cfg.dtype) @ w
        w = jnp.concatenate([w, jnp.zeros((1, t.shape[1]), cfg.dtype)])
        w = jax.lax.dynamic_update_slice(w, z[None], (bk, jnp.int32(0)))
        a, s = probe_scale(z[None], s)
    else:
        a, s = sum_scale(w, s)
    return w, s, 1 / a


def _full(cfg, j, u, r, st):
    """The look at every example (see :func:`_look`)."""
    bks_arr, nb = cfg.bks_arr, cfg.nb
    t, piv, need, lr = _rank.factor(u, cfg.eps, cfg.size)
    n = t.shape[1]
    need = _rank.batch_max(need)
    k = jnp.maximum(jnp.sum(bks_arr[:nb] >= need) - 1, j).astype(jnp.int32)
    bk = bks_arr[k]
    r, s, inv = jax.lax.cond(
        k > j,
        lambda r, s, inv: _compress(cfg, j, t, piv, bk, s),
        lambda r, s, inv: (r, s, inv),
        r,
        st.s,
        st.inv,
    )
    nxt = _rank.next_look(lr, st.last, st.count, bks_arr[k + 1], cfg.eps, n, cfg.total)
    return r, st._replace(k=k, s=s, inv=inv, nxt=nxt, last=(st.count, lr))


def _maybe_look(cfg, j, r, st, due):
    """:func:`_look` where ``due``, else (r, st) unchanged."""
    return jax.lax.cond(
        due, lambda r, st: _look(cfg, j, r, st), lambda r, st: (r, st), r, st
    )


def _single_in_bucket(cfg, j, blk, st):
    """One block (not in a run) while bucket j is active: its pull, then a look when
    due. Returns (state, the padded spectrum or None)."""
    r, s, inv = _pull(cfg, blk, st.buf[: cfg.bks[j] + cfg.extra], st)
    st = st._replace(s=s, inv=inv, count=st.count + 1)
    out = _spectrum(cfg, r, inv, s) if cfg.every else None
    r, st = _maybe_look(cfg, j, r, st, st.count >= st.nxt)
    return st._replace(buf=_widen(st.buf, r)), out


def _single(cfg, blk, st):
    """One block (not in a run), its pull and look switched on the bucket."""
    branches = [partial(_single_in_bucket, cfg, j, blk) for j in range(cfg.nb)]
    return jax.lax.switch(st.k, branches, st)


def _run_block_at(seg, i):
    """Block i of the run ``seg`` (a traced index)."""
    res = None if seg.lin is None else seg.lin[2]
    p, kk, h, rs = jax.tree.map(
        lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False),
        (seg.ps, seg.ks, seg.hs, res),
    )
    return _run_block(seg, p, kk, h, rs)


def _run_step(cfg, seg, c):
    """One block of a run: pull (rows, state, index, ys) back through block i."""
    r, st, i, ys = c
    r, s, inv = _pull(cfg, _run_block_at(seg, i), r, st)
    if cfg.every:
        ys = jax.lax.dynamic_update_index_in_dim(ys, _spectrum(cfg, r, inv, s), i, 0)
    return r, st._replace(s=s, inv=inv, count=st.count + 1), i - 1, ys


def _run_until_look(cfg, j, seg, c):
    """Blocks of a run in bucket j up to the next look (or the run's end), then the
    look when it is due."""
    c = jax.lax.while_loop(
        lambda c: (c[2] >= 0) & (c[1].count < c[1].nxt),
        partial(_run_step, cfg, seg),
        c,
    )
    r, st, i, ys = c
    r, st = _maybe_look(cfg, j, r, st, (i >= 0) & (st.count >= st.nxt))
    return r, st, i, ys


def _run(cfg, seg, st):
    """A run of identical blocks, last to first: one loop per bucket."""
    length = seg.hs.shape[0]
    ys = None
    if cfg.every:
        ys = jnp.zeros((length, min(cfg.size, math.prod(seg.shape))), cfg.dtype)
    i = jnp.int32(length - 1)
    for j in range(cfg.nb):
        r = st.buf[: cfg.bks[j] + cfg.extra]
        r, st, i, ys = jax.lax.while_loop(
            lambda c, j=j: (c[2] >= 0) & (c[1].k == j),
            partial(_run_until_look, cfg, j, seg),
            (r, st, i, ys),
        )
        st = st._replace(buf=_widen(st.buf, r))
    return st, ys


def _config(segs, m0, y, svd, every):
    """The :class:`_RankConfig` of a sweep of ``segs`` from the last product ``m0``."""
    size = y.size
    # blocks outside runs are compiled once per bucket: with many of them (blocks=False,
    # or blocks that all differ), one bucket only (no compression; compile time as the
    # plain sweep's)
    singles = sum(not isinstance(seg, Run) for seg in segs)
    bks = _rank.buckets(size) if singles <= _rank.MAX_SINGLE else (size,)
    return _RankConfig(
        bks=bks,
        bks_arr=jnp.asarray(bks + (0,), jnp.int32),
        size=size,
        total=sum(seg_len(seg) for seg in segs),
        eps=float(jnp.finfo(m0.dtype).eps),
        dtype=m0.dtype,
        probe=not every,  # one row, the scale of every step from it (see sweep)
        every=every,
        svd=svd,
    )


def _init_state(cfg, m0, y):
    """The state at the last product ``m0``: bucket 0, the first look scheduled."""
    buf = _with_probe(cfg, m0)
    a, s = cfg.scale(buf, jnp.zeros((), y.dtype))
    look0 = _rank.FIRST_CHECK
    if look0 + _rank.MIN_REMAINING > cfg.total or cfg.nb == 1:
        look0 = _rank.NEVER
    return _RankState(
        buf, jnp.int32(0), s, 1 / a, jnp.int32(1), jnp.int32(look0),
        (jnp.int32(0), jnp.zeros((cfg.size,), cfg.dtype)),
    )  # fmt: skip


def _final_spectrum(cfg, st):
    """The padded log spectrum of ``d y / d h_0``, switched on the bucket."""
    branches = [
        (lambda j=j: _spectrum(cfg, st.buf[: cfg.bks[j] + cfg.extra], st.inv, st.s))
        for j in range(cfg.nb)
    ]
    return jax.lax.switch(st.k, branches)


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
    the padded log spectrum of ``d y / d h_0``, or None; ``(L+1,)`` bool: block output
    ``h_k`` non-finite)."""
    segs, _, y = segments(net, params, x, blocks=blocks, train=train, key=key)
    m0 = last_product(segs, y)
    cfg = _config(segs, m0, y, svd, every)
    st = _init_state(cfg, m0, y)
    ys = [None] * len(segs)
    if every:
        ys[-1] = _spectrum(cfg, st.buf, st.inv, st.s)[None]
    for q in range(len(segs) - 2, -1, -1):
        seg = segs[q]
        if isinstance(seg, Run):
            st, ys[q] = _run(cfg, seg, st)
        else:
            st, out = _single(cfg, seg, st)
            ys[q] = None if out is None else out[None]
    bad_h = forward_bad(segs, y)
    if every:  # the input's spectrum is the last of ys already
        return ys, None, bad_h
    return None, _final_spectrum(cfg, st), bad_h


def compressible(net, params, blocks, compress) -> bool:
    """Whether a rank-compressed sweep can look at the rank at all: ``compress`` and
    enough blocks (else the plain sweep: the same values, compiled faster)."""
    _checks.boolean("compress", compress)
    n_blocks = num_blocks(net, params, blocks)
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
