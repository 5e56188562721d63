"""Rank-adaptive sweeps: a product whose numerical rank has fallen is carried in fewer rows.

The backward sweep of the spectrum functions pulls an ``m x n`` product ``P_l = d y / d h_l``
through every block. In a deep network its singular values spread apart exponentially
(the Lyapunov exponents), and within a few dozen blocks most of them fall below
``eps * sigma_max``: there the rescaled method cannot resolve them anyway (DESIGN.md, "two
numerical facts"), yet every one of the m rows still costs a row of matrix multiply in
every later block. At 128 tanh blocks of width 128 (weight variance 1.5) only 94 of 128
singular values are above ``eps * sigma_max`` after 16 blocks, 37 after 64 and 22 at the
input.

Compression. A pivoted QR of the (scaled) rows, ``P Pi = Q T`` with ``T`` upper
trapezoidal, gives ``P = Q T Pi^T``. Keeping the first ``r`` rows of ``T`` leaves out
exactly ``E = Q[:, r:] T[r:] Pi^T``, whose norm ``||T[r:]||_F`` is read off ``T``
itself. The sweep keeps the fewest rows ``r`` with ``||T[r:]||_F <= sqrt(n) * eps *
||P||_F`` (``eps`` the dtype's machine epsilon, ``n`` the columns): at most the
worst-case rounding error of the next matrix product, ``n * eps * ||P||_F ||J||_F``
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.5), once
``E`` is carried through ``J`` (``||E J||_F <= ||E||_F ||J||_2``). A tolerance of ``eps *
sigma_max`` was never met in a 128-block chaotic network: a float32 product's own
rounding noise spreads over all its rows. From there it
carries ``W = T[:r] Pi^T`` (r x n): since ``Q[:, :r]`` has orthonormal columns, ``P ~=
Q[:, :r] W`` has the singular values of ``W``, and so has every later product ``P J =
Q[:, :r] (W J)``. The bound holds whatever the pivoting finds; column pivoting is what
makes ``r`` small (it is rank-revealing in practice: Golub & Van Loan, Matrix
Computations, 4th ed., section 5.4.2). A product with a NaN or inf is never compressed.

What it gives up: the singular values it drops come back as exact zeros (log ``-inf``)
instead of the rounding noise the rescaled method returns for them; the values it keeps
are as accurate as without compression (the dropped part, like the rounding of any step
of the sweep, reaches the final product through the later blocks' Jacobians).

Static shapes. Under ``jit`` the row count must be static, so the rows are carried in
*buckets* of m, m/2, m/4, ... rows (down to :data:`MIN_ROWS`): a run of identical blocks
is swept by one ``while_loop`` per bucket, entered only while that bucket is the active
one; a block outside such a run switches on the bucket, so it is compiled once per
bucket, and a network with more than :data:`MAX_SINGLE` of them (``blocks=False``, or
blocks that all differ) is not compressed. Under ``vmap`` over examples the bucket must
be the same for the whole batch (a batched ``switch`` index or loop condition would run
every branch): :func:`batch_max` reduces over the vmapped axes (a ``custom_vmap``), so
each example keeps at least its own ``r`` rows. An example's values can therefore
depend on the batch it is in, at the level of rounding noise only.

When to look. A pivoted QR of an ``m x n`` product costs about as much as 7-9 blocks'
pull-backs on a CPU (LAPACK ``geqp3`` is largely matrix-vector work). The sweep looks
first after :data:`FIRST_CHECK` blocks, never with fewer than :data:`MIN_REMAINING`
blocks to go (so not at all below 48 blocks), and each look predicts the next from the
decay of ``log ||T[t:]||_F``, which falls about linearly with the depth swept (the
Lyapunov exponents), a little late rather than early (:data:`MARGIN`). Under ``vmap``
a look first factors the batch's first example alone (:func:`prefilter`): when that one
does not fit the next bucket, no example is factored. What it saves depends on how fast
the spectrum spreads: a chaotic tanh network at depth 128 reaches the input in far fewer
rows than it started with; an orthogonal linear one (nothing to drop) keeps all of them
and pays only the looks (docs/benchmarks.md has the times).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jgrad.analyze._logspace import safe_log

# a look at the rank after this many blocks pulled, then as predicted (see module doc)
FIRST_CHECK = 16
MIN_REMAINING = 32
MIN_GAP = 8
MIN_ROWS = 8
MAX_SINGLE = 16  # more blocks outside runs of identical blocks: no compression
MARGIN = 1.5
NEVER = 2**30


def _across_batch(reduce, doc):
    """A function that is the identity alone and, under ``vmap``, ``reduce`` over the
    mapped axis, unbatched (a ``custom_vmap``; under nested vmaps it reduces over each)."""

    @jax.custom_batching.custom_vmap
    def f(v: jax.Array) -> jax.Array:
        return v

    @f.def_vmap
    def _vmap(axis_size, in_batched, v):
        del axis_size
        (batched,) = in_batched
        return (f(reduce(v)) if batched else v), False

    f.__doc__ = doc
    return f


batch_max = _across_batch(
    lambda v: jnp.max(v, axis=0),
    "``v`` itself; under ``vmap``, its maximum over the mapped axes, unbatched.",
)
first = _across_batch(
    lambda v: v[0], "``v`` itself; under ``vmap``, its entry 0 along the mapped axes."
)


def factor(u: jax.Array, eps: float, m: int):
    """(T, piv, rows needed, log tails padded to m) of one (b, n) matrix, by a pivoted
    QR: what a look needs (see :func:`rows_needed`, :func:`log_tails`)."""
    t, piv = pivoted_qr(u)
    tail2 = tails(t)
    return t, piv, rows_needed(tail2, eps, t.shape[1]), log_tails(tail2, m)


def needed_and_profile(u: jax.Array, eps: float, m: int):
    """(rows needed, log tails padded to m) of one (b, n) matrix (:func:`factor`)."""
    return factor(u, eps, m)[2:]


def prefilter(u: jax.Array, eps: float, m: int):
    """(rows needed, log tails) of the first example of a vmapped batch (unbatched), or
    (0, zeros) for one example alone. A look at the whole batch compresses only when
    every example fits the smaller bucket, so when the first does not, a pivoted QR of
    one example (1/B of the look's cost) is enough to know that the look would fail."""

    @jax.custom_batching.custom_vmap
    def f(u):
        return jnp.int32(0), jnp.zeros((m,), u.dtype)

    @f.def_vmap
    def _vmap(axis_size, in_batched, u):
        del axis_size
        if not in_batched[0]:
            return f(u), (False, False)
        return needed_and_profile(first(u[0]), eps, m), (False, False)

    return f(u)


def buckets(m: int) -> tuple[int, ...]:
    """The row counts a product of m rows can be carried in: m, m // 2, ... while at
    least :data:`MIN_ROWS` (fewer rows save nothing more: the matmul of a few rows costs
    its overhead; each bucket is one more loop to compile)."""
    out = [m]
    while out[-1] // 2 >= MIN_ROWS:
        out.append(out[-1] // 2)
    return tuple(out)


def pivoted_qr(u: jax.Array):
    """(T, piv) of ``u[:, piv] = Q T`` for one (b, n) matrix; T is (min(b, n), n)."""
    _, t, piv = jax.lax.linalg.qr(u, pivoting=True, full_matrices=False)
    return t, piv


def tails(t: jax.Array) -> jax.Array:
    """``||T[r:]||_F^2`` for r = 0 .. rows(T) - 1 (non-increasing in r)."""
    r2 = jnp.sum(jnp.square(t), axis=-1)
    return jnp.cumsum(r2[::-1])[::-1]


def rows_needed(tail2: jax.Array, eps: float, n: int) -> jax.Array:
    """The fewest rows r with ``||T[r:]||_F <= sqrt(n) * eps * ||T||_F`` (0 for a zero
    matrix; all of T's rows where T is not finite, so that NaN and inf stay in sight)."""
    r = jnp.sum(tail2 > (n * eps * eps) * tail2[0])
    return jnp.where(jnp.isfinite(tail2[0]), r, tail2.shape[0]).astype(jnp.int32)


def next_look(lr, last, done, target, eps, n, total):
    """The block count of the next look (unbatched): when ``target`` rows are predicted
    to suffice for every example, a little late rather than early.

    ``lr`` (per example, ``(m,)``) is ``log(||T[t:]||_F / ||T||_F)`` for every row count
    t now, after ``done`` blocks; ``last`` is (count, lr) of the last look (count 0 for
    none). Each entry falls about linearly with depth: with a last look the crossing of
    ``log(sqrt(n) * eps)`` at ``t = target`` is extrapolated from the two, else from the
    origin, and the predicted distance is stretched by :data:`MARGIN` (a look that finds
    nothing to drop costs 7-9 blocks' pull-backs, or 1/B of that under vmap when the
    prefilter stops it; one a few blocks late, a few blocks' savings). At least
    ``MIN_GAP`` and at most ``4 * done`` blocks on; none with fewer than
    ``MIN_REMAINING`` blocks left after it."""
    goal = math.log(eps * math.sqrt(n))
    c0, lr0 = last
    now = lr[target]
    done_f = done.astype(lr.dtype)
    slope_two = (now - lr0[target]) / jnp.maximum(done - c0, 1).astype(lr.dtype)
    slope_one = now / jnp.maximum(done_f, 1.0)
    slope = jnp.where(c0 > 0, slope_two, slope_one)
    ahead = (goal - now) / jnp.minimum(slope, -1e-6)
    ahead = jnp.where(slope < -1e-6, ahead * MARGIN, NEVER)
    ahead = jnp.where(now <= goal, 0.0, jnp.nan_to_num(ahead, nan=NEVER, posinf=NEVER))
    need = batch_max(jnp.clip(done_f + ahead, 0, float(NEVER)).astype(jnp.int32))
    nxt = jnp.clip(need, done + MIN_GAP, 4 * done)
    return jnp.where(nxt + MIN_REMAINING > total, NEVER, nxt).astype(jnp.int32)


def log_tails(tail2: jax.Array, m: int) -> jax.Array:
    """``log(||T[t:]||_F / ||T||_F)`` for t = 0 .. m - 1 (-inf past T's rows, and for a
    zero T)."""
    lr = 0.5 * (safe_log(tail2) - safe_log(tail2[0]))
    lr = jnp.where(tail2[0] > 0, lr, -jnp.inf)
    return jnp.concatenate([lr, jnp.full((m - lr.shape[0],), -jnp.inf, lr.dtype)])


def unpermute(t: jax.Array, piv: jax.Array, rows: int) -> jax.Array:
    """``T[:rows] Pi^T`` as (rows, n), zero rows appended where T has fewer."""
    w = t[:rows]
    if w.shape[0] < rows:
        w = jnp.concatenate([w, jnp.zeros((rows - w.shape[0], w.shape[1]), w.dtype)])
    return w[:, jnp.argsort(piv)]
