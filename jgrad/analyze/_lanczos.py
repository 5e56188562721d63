"""Lanczos kernels for the top eigenvalue of ``P^T P`` or ``P P^T``: over a chain of
linear maps (:func:`lanczos_top`, every product of a sub-network at once, a fixed number
of steps) and over an explicit matrix (:func:`lanczos_left`, to a residual tolerance).
Both take their steps by :func:`recurrence_step` and read their Ritz values off
:func:`tridiagonal`; small tridiagonal eigenproblems are solved by :func:`top2` (closed
form) or :func:`top_eig` (no LAPACK call inside a loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jgrad.analyze._logspace import (
    safe_div,
    safe_log,
    vec_norm,
)


def top_eig(g, squarings=3, powers=8):
    """Top eigenvalue and eigenvector of the PSD matrix g (r, r): ``squarings`` repeated
    squarings give m = g^(2^squarings) (trace-normalised), whose column of largest
    diagonal is then multiplied by m ``powers`` more times (matrix-vector products, r^2
    each instead of a squaring's r^3), and a Rayleigh quotient with g is taken. The vector
    is g^(2^squarings * (powers + 1)) applied to a unit vector (g^72 by default), so the
    quotient lies in [lambda_2, lambda_1] and is within about
    lambda_1 (lambda_j / lambda_1)^72 of lambda_1 for every other eigenvalue lambda_j:
    exact to float precision unless the top eigenvalues are nearly equal, and then close
    to lambda_1 anyway."""
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


def unit(v):
    """``v`` over its Euclidean norm."""
    return v / jnp.linalg.norm(v)


def norm2(v):
    """Euclidean norm over the last axis of vectors whose entries are O(1) (no
    rescaling pass)."""
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def tridiagonal(diag, off):
    """The symmetric tridiagonal matrix (k, k) with diagonal ``diag`` (k,) and off-diagonal
    ``off`` (k - 1,): the Lanczos matrix ``T`` whose eigenvalues are the Ritz values."""
    return jnp.diag(diag) + jnp.diag(off, 1) + jnp.diag(off, -1)


def recurrence_step(aq, alpha, q, q_prev, beta_prev, basis, passes):
    """One step of the Lanczos three-term recurrence with full re-orthogonalisation.

    From ``aq = A q`` and ``alpha = q^T A q``: the residual
    ``w = A q - alpha q - beta_prev q_prev``, projected ``passes`` times off the rows of
    ``basis`` (rows not yet filled are zero and project out nothing), its norm ``beta``
    (the next off-diagonal entry of T) and ``w / beta``, the next Lanczos vector (0 once
    the Krylov space is exhausted, ``beta = 0``).

    Shapes: ``aq``, ``q``, ``q_prev`` (..., n); ``alpha``, ``beta_prev`` (...);
    ``basis`` (..., k, n): a leading batch of independent runs, vectorised.

    Returns:
        (beta (...), next Lanczos vector (..., n)).
    """
    w = aq - alpha[..., None] * q - beta_prev[..., None] * q_prev
    for _ in range(passes):
        coef = jnp.einsum("...kn,...n->...k", basis, w)
        w = w - jnp.einsum("...k,...kn->...n", coef, basis)
    beta = norm2(w)
    return beta, safe_div(w, beta)


def _push_fwd(maps, vs, logs, start):
    """Pushes vectors vs[l] (at h_l) forward to the output, each rescaled in log space.

    vs: list of L arrays (k, size(h_l)); returns (L, k, size(y)) and (L, k) logs."""
    L = len(maps)
    cur, cur_log = None, None
    for m in range(start, L):
        jvp, in_shape, out_shape = maps[m].jvp, maps[m].in_shape, maps[m].out_shape
        v_new = vs[m].reshape((-1,) + in_shape)
        add = v_new[None]
        lg = logs[m][None]
        cur = add if cur is None else jnp.concatenate([cur, add], axis=0)
        cur_log = lg if cur_log is None else jnp.concatenate([cur_log, lg], axis=0)
        a, k = cur.shape[0], cur.shape[1]
        flat = cur.reshape((a * k,) + in_shape)
        out = jax.vmap(jvp)(flat).reshape((a, k, -1))
        n = vec_norm(out)
        cur = safe_div(out, n).reshape((a, k) + out_shape)
        cur_log = cur_log + safe_log(n)
    return cur.reshape(cur.shape[:2] + (-1,)), cur_log


def _pull_back(maps, us, logs):
    """Pulls vectors us[l] (at the output) back to h_l for every l, rescaled.

    us: (L, k, size(y)); returns a list of L arrays (k, size(h_l)) and (L, k) logs."""
    L = len(maps)
    res, res_log = [None] * L, [None] * L
    cur, cur_log = us, logs
    for m in range(L - 1, -1, -1):
        vjp, in_shape, out_shape = maps[m].vjp, maps[m].in_shape, maps[m].out_shape
        a, k = cur.shape[0], cur.shape[1]
        flat = cur.reshape((a * k,) + out_shape)
        out = jax.vmap(vjp)(flat).reshape((a, k, -1))
        n = vec_norm(out)
        out = safe_div(out, n)
        lg = cur_log + safe_log(n)
        res[m], res_log[m] = out[m], lg[m]
        cur, cur_log = out[:m].reshape((m, k) + in_shape), lg[:m]
    return res, jnp.stack(res_log)


def lanczos_top(maps, qs, log_c, steps, dtype):
    """Top Ritz value of ``P_l^T P_l / exp(log_c_l)`` for every l of the sub-network
    ``maps`` (single Blocks; ``P_l`` the product from h_l to its output), after ``steps``
    Lanczos steps from the start vectors ``qs`` (a list, (size(h_l),) each), fully
    re-orthogonalised (two passes a step). A lower bound on the top eigenvalue, exact
    once ``steps`` reaches size(h_l).

    The sweeps are unrolled over the blocks and triangular: the forward sweep adds the
    vector of product l as it passes h_l, the backward sweep drops it there, so L
    products cost L (L + 1) block applications per step instead of the 2 L^2 of a scan
    that carries a row per product throughout. Returns (L,)."""
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

    # the steps in a fori_loop, so that the sweeps are traced once (compile time
    # independent of `steps`)
    def body(it, state):
        basis, cur, prev, beta, alphas, betas = state  # basis (L, steps, n_max)
        w = apply_a(cur)
        alpha = jnp.sum(w * cur, axis=-1)
        beta_new, nxt = recurrence_step(w, alpha, cur, prev, beta, basis, passes=2)
        i = jnp.minimum(it + 1, steps - 1)
        basis = basis.at[:, i].set(jnp.where(it + 1 < steps, nxt, basis[:, -1]))
        alphas = alphas.at[it].set(alpha)
        betas = betas.at[it].set(beta_new)
        return basis, nxt, cur, beta_new, alphas, betas

    q0 = stack(qs)
    state = (
        jnp.zeros((L, steps, n_max), dtype).at[:, 0].set(q0),
        q0,
        jnp.zeros_like(q0),
        jnp.zeros((L,), dtype),
        jnp.zeros((steps, L), dtype),
        jnp.zeros((steps, L), dtype),
    )
    *_, alphas, betas = jax.lax.fori_loop(0, steps, body, state)
    t = jax.vmap(tridiagonal)(alphas.T, betas[:-1].T)  # (L, steps, steps)
    return jnp.linalg.eigvalsh(t)[:, -1]


def top2(alphas, betas):
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
    n = norm2(v)
    v = jnp.where(n > 0, safe_div(v, n), jnp.array([1.0, 0.0], a.dtype))
    return 0.5 * (a + c) + rad, v


def lanczos_left(r, inv, u, min_steps, max_steps, residual_tol):
    """Lanczos on ``m m^T`` with ``m = r * inv`` (an explicit (ny, n) matrix and a
    positive scalar, so that ``m`` is never written out) from the unit vector ``u``
    (ny,), fully re-orthogonalised (one pass a step), for ``min_steps`` steps and then
    until the top Ritz pair's residual ``rho = ||m m^T y - theta y||`` (= beta_k |s_k|,
    free from the recurrence) has ``rho^2 <= residual_tol * theta^2``, or after
    ``max_steps`` steps, or when the Krylov space is exhausted (theta's error is about
    ``rho^2 / gap``, gap the distance to the next eigenvalue: about
    ``residual_tol * theta`` for a well-separated top).
    Returns (theta, the top Ritz value: a lower bound on sigma_max(m)^2, exact when the
    Krylov space holds the top left singular vector, and within ``rho`` of an
    eigenvalue of ``m m^T``; the next start vector, ``m m^T y`` normalised: one power
    step beyond the Ritz vector, also free).

    Each step is two passes over ``r``. The first steps are unrolled and tested in
    closed form; the rest run in a ``while_loop`` (which, under ``vmap``, runs until
    every example has converged, keeping a converged example's state as it is) on the
    tridiagonal matrix padded to ``max_steps`` with zeros. That adds only zero
    eigenvalues (it is positive semi-definite), so its top eigenpair is that of the
    steps taken: by :func:`top_eig` for the test in each step (no LAPACK call per
    step), by ``eigh`` once at the end."""
    k = min(max_steps, u.shape[0])
    dtype = r.dtype
    idx = jnp.arange(k)

    def lanczos_step(q, q_prev, beta_prev, qs):
        """(alpha, beta, next q) of one step from q; ``qs`` (j, ny) to re-orthogonalise
        against (zero rows project out nothing)."""
        z = (q @ r) * inv  # m^T q
        alpha = jnp.sum(z * z)
        beta, q_next = recurrence_step(
            (r @ z) * inv, alpha, q, q_prev, beta_prev, qs, passes=1
        )
        return alpha, beta, q_next

    def converged(theta, beta, s_last):
        res = beta * s_last  # the Ritz pair's residual
        return (res * res <= residual_tol * theta * theta) | (beta == 0)

    m0 = min(min_steps, k)
    qs, alphas, betas = [u], [], []
    q_prev, beta = jnp.zeros_like(u), jnp.zeros((), dtype)
    for _ in range(m0):  # unrolled: a step in the loop below costs about 1.5x more
        alpha, beta, q_next = lanczos_step(qs[-1], q_prev, beta, jnp.stack(qs))
        alphas.append(alpha)
        betas.append(beta)
        q_prev = qs[-1]
        qs.append(q_next)
    if m0 <= 2:
        theta, vec = top2(alphas, betas[:-1])
    else:
        theta, vec = top_eig(tridiagonal(jnp.stack(alphas), jnp.stack(betas[:-1])))

    def padded_t(al, be, i):  # T of the first i steps, padded with zeros
        return tridiagonal(al, jnp.where(idx < i - 1, be, 0.0)[:-1])

    def body(st):
        i, q, q_prev, beta_prev, basis, al, be, *_ = st
        alpha, beta, q_next = lanczos_step(q, q_prev, beta_prev, basis)
        al, be = al.at[i].set(alpha), be.at[i].set(beta)
        basis = basis.at[jnp.minimum(i + 1, k - 1)].set(
            jnp.where(i + 1 < k, q_next, basis[k - 1])
        )
        theta, vec = top_eig(padded_t(al, be, i + 1))
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
    # the final pair by eigh: top_eig's value is only within [lambda_2, lambda_1] of T
    # when those nearly coincide
    lam, vecs = jnp.linalg.eigh(padded_t(al, be, i))
    theta, vec = lam[-1], vecs[:, -1]
    y = vec @ jnp.where((idx < i)[:, None], basis, 0.0)  # the Ritz vector
    s_last = vec[jnp.maximum(i - 1, 0)]
    nxt = theta * y + beta * s_last * q_next  # m m^T y
    n = norm2(nxt)
    return jnp.maximum(theta, 0.0), jnp.where(n > 0, safe_div(nxt, n), u)
