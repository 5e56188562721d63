"""Sweeps of a few rows through a network's blocks, in log space, for the matrix-free
norms: pulls (``P_l^T r`` at every h_l, from rows r at the output), pushes (sums of
``P_l z_l`` at the output, or rows pushed from the input), and the orthonormal bases the
estimator grows from them. Every row is carried as a unit vector and the log of its
norm, so no product's scale over- or underflows."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jgrad.analyze._logspace import (
    finite_shift,
    safe_div,
    safe_log,
    vec_norm,
)
from jgrad.analyze._segments import fold

REORTH = 16  # push_rows re-orthonormalises its rows every REORTH blocks


def pull_one(cur, lg, blk):
    """Pulls the unit rows ``cur`` (k, size(out)) back through ``blk`` and renormalises
    them: (unit rows (k, size(in)), their logs ``lg`` plus the logs of the norms)."""
    out = jax.vmap(blk.vjp)(cur.reshape((-1,) + blk.out_shape))
    out = out.reshape((cur.shape[0], -1))
    n = vec_norm(out)
    return safe_div(out, n), lg + safe_log(n)


def pull_rows(segs, rows, keep=None):
    """One backward sweep of the rows (k, size(y)) at the output: P_l^T r for every l.

    Returns fold's ys of (unit rows (keep, size(h_l)), (k,) logs of their norms): only
    the first ``keep`` rows (default all) are kept at every block, the rest only as
    norms (writing vectors out of a loop costs memory traffic)."""

    def step(carry, blk, _):
        cur, lg = pull_one(*carry, blk)
        return (cur, lg), (cur[:keep], lg)

    lg0 = jnp.zeros(rows.shape[0], rows.dtype)
    _, ys = fold(segs, step, (rows, lg0), reverse=True)
    return ys


def pull_start(rows):
    """The carry of a pull that starts at the output: unit rows and zero logs."""
    return rows, jnp.zeros(rows.shape[0], rows.dtype)


def pull_fold(segs, carry, keep, prev=None, store=False):
    """Pulls the carried unit rows (and their logs) back through ``segs`` and
    summarises them on the way, without storing them for every block (a store of every
    block's rows and its copies in and out of the loop cost memory traffic and, past
    glibc's mmap threshold, page faults on every call).

    At every block: the logs of all carried rows; with ``prev`` (per segment, a tuple
    of the earlier blocks of Q's unit rows there, stacked (R, k_j, n)), the Gram matrix
    (r, r) of those and the first ``keep`` rows; with ``store``, those ``keep`` rows.

    Returns (the final carry, fold's ys of (Gram or None, logs, rows or None))."""

    def step(c, blk, zs):
        cur, lg = pull_one(*c, blk)
        gram = None
        if zs is not None:
            # formed here, from one block's rows, XLA makes no transposed copy of
            # every block's stored rows (as it does for one einsum over all of them)
            rows = jnp.concatenate([*zs, cur[:keep]])
            gram = rows @ rows.T
        return (cur, lg), (gram, lg, cur[:keep] if store else None)

    return fold(segs, step, carry, prev, reverse=True)


def off_basis(g, us):
    """The rows g projected off the orthonormal rows of all blocks ``us``."""
    basis = jnp.concatenate(us)
    return g - (g @ basis.T) @ basis


def orth_rows(v):
    """Orthonormal rows spanning the rows of ``v`` (k, n), k <= n (a QR)."""
    return jnp.linalg.qr(v.T)[0].T


def new_block(v, us):
    """The rows ``v`` projected off the orthonormal rows of all blocks ``us`` (twice:
    re-orthogonalised) and orthonormalised: the next block of a growing basis."""
    for _ in range(2):
        v = off_basis(v, us)
    return orth_rows(v)


def push_sum(segs, zs, zlogs):
    """sum_l exp(zlogs[l]) * P_l z_l for every row, in ONE forward sweep.

    ``zs``, ``zlogs``: fold's xs (per segment, stacked) of the (k, size(h_l)) vectors and
    their (k,) logs. The terms are added as the sweep passes h_l (linearity), each
    rescaled in log space; returns the (k, size(y)) sums, each row up to a positive factor
    (which the caller's orthonormalisation ignores)."""

    def step(carry, blk, inp):
        acc, al = carry
        t, tl = inp
        mx = finite_shift(jnp.maximum(al, tl))
        acc = acc * jnp.exp(al - mx)[:, None] + t * jnp.exp(tl - mx)[:, None]
        out = jax.vmap(blk.jvp)(acc.reshape((-1,) + blk.in_shape))
        out = out.reshape((acc.shape[0], -1))
        n = vec_norm(out)
        return (safe_div(out, n), mx + safe_log(n)), None

    acc0 = jnp.zeros_like(zs[0][0])
    al0 = jnp.full(acc0.shape[:1], -jnp.inf, acc0.dtype)
    (acc, _), _ = fold(segs, step, (acc0, al0), list(zip(zs, zlogs, strict=True)))
    return acc


def push_rows(segs, rows, every=REORTH):
    """Pushes the rows (m, size(h_0)) forward through every block of ``segs`` and
    returns orthonormal rows (m, size(y)) spanning their image. Each block renormalises
    the rows; every ``every`` blocks (and at the end) a QR re-orthonormalises them, so
    that in float32 they do not all collapse onto the top direction (a block
    subspace iteration, as for Lyapunov exponents: the randomized range finder of the
    product of all of ``segs``)."""

    def step(c, blk, _):
        cur, i = c
        out = jax.vmap(blk.jvp)(cur.reshape((-1,) + blk.in_shape))
        out = out.reshape((cur.shape[0], -1))
        n = vec_norm(out)
        out = safe_div(out, n)
        out = jax.lax.cond(i % every == every - 1, orth_rows, lambda v: v, out)
        return (out, i + 1), None

    (cur, _), _ = fold(segs, step, (rows, jnp.zeros((), jnp.int32)))
    return orth_rows(cur)
