"""The matrix-free method of :func:`jgrad.analyze.output_norms`: the spectral norm and
mean squared singular value of every ``P_l = d y / d h_l`` from sweeps of a few vectors,
no Jacobian or product formed.

:func:`matrix_free_norms` runs the steps below in order, each a function of its own:

1. :func:`krylov_space`: a shared output subspace Q (``block_size * (krylov_steps +
   1)`` orthonormal directions in the space of y) by block Krylov iteration with the
   operator ``sum_l P_l P_l^T / c_l`` over the ``krylov_products`` products nearest the
   output (``c_l`` a Frobenius estimate, so that every l counts; the
   ``lanczos_products`` nearest are left out of the sum when there are others, step 5
   refines them). Each application is one backward sweep (``P_l^T U`` at every h_l)
   and ONE forward sweep that adds the terms ``P_l P_l^T U / c_l`` as it passes h_l,
   so its cost does not grow with the number of products.
2. :func:`~jgrad.analyze._row_sweeps.push_rows`: the deeper products (all but the
   ``krylov_products`` nearest) get no Krylov sweep of their own. Their top left
   singular subspaces converge as l decreases, to that of the deepest product ``P_0``,
   which ``max(block_size // 2, 1)`` random rows pushed forward from the input find
   (one forward sweep, re-orthonormalised every ``REORTH`` blocks: the randomized range
   finder of ``P_0``). Those rows join Q as one more block.
3. :func:`hutchpp_probes` and :func:`near_pull`: ``probes`` Gaussian rows projected off
   Q and one last backward sweep of them with Q's last blocks through the near
   products. It gives ``Q^T P_l`` (as Gram matrices of unit rows and their logs) and
   ``||P_l^T g_j||`` for every near l.
4. :func:`deep_start` and :func:`deep_pull`: at ``h_b``, the first near product, the
   deep products get ``block_size`` directions ``Q' = Q v`` (the pushed rows and the
   top Ritz directions of ``P_b`` in Q) and ``deep_probes`` probes re-projected off
   ``Q'``, all combinations of rows already pulled to ``h_b``; one backward sweep of
   those ``block_size + deep_probes`` rows through the deep products.
5. :func:`~jgrad.analyze._ritz.summarise`: per product, the top singular value of
   ``Q^T P_l`` (a Rayleigh-Ritz value: a lower bound on sigma_max(P_l), close when the
   top left singular vector of P_l lies in Q) and Hutch++ (Meyer et al. 2021):
   ``||P_l||_F^2 = ||Q^T P_l||_F^2`` (exact) ``+ ||(I - Q Q^T) P_l||_F^2``, the second
   by the probes (Hutchinson, unbiased), so the variance comes only from what Q leaves
   out; the probes' spread gives its standard error.
6. :func:`tail_starts` and :func:`refine_tail`: the ``lanczos_products`` products
   nearest the output are the shortest and have the flattest spectra, least captured by
   Q: they get ``lanczos_steps`` Lanczos steps on ``P_l^T P_l`` (sweeps over those
   blocks only) started from step 5's top right singular vector; the larger of the two
   lower bounds is kept.
7. :func:`assemble`: the mean squared singular value ``||P_l||_F^2 / min(m, n)``.

When ``block_size * (krylov_steps + 1) >= size(y)``, Q is the whole output space
(:func:`full_space_group`) and both values are exact.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrad.analyze._lanczos import lanczos_top
from jgrad.analyze._logspace import finite_shift, safe_div, safe_log, vec_norm
from jgrad.analyze._network import block_counts, resolve_net
from jgrad.analyze._ritz import summarise
from jgrad.analyze._row_sweeps import (
    new_block,
    off_basis,
    pull_fold,
    pull_rows,
    pull_start,
    push_rows,
    push_sum,
)
from jgrad.analyze._segments import forward_bad, segments, split_at
from jgrad.nn._layer import walk

# the default krylov_products of a network without residual blocks
KRYLOV_PRODUCTS = 32


class ProductGroup(NamedTuple):
    """What one pull leaves of consecutive products ``P_l``, per segment (fold's ys: a
    segment's entries stacked over its R blocks).

    Attributes:
        grams: per segment, (R, r, r) Gram matrices of the unit rows of ``Q^T P_l``
            (r directions of the output space).
        row_logs: per segment, (R, r) the logs of those rows' norms.
        probe_logs: per segment, (R, k) ``log ||P_l^T g_j||^2`` for the k probes
            ``g_j``; None when Q is the whole output space (no probes).
    """

    grams: list
    row_logs: list
    probe_logs: list | None


def _krylov_block(segs, ys, log_c, us):
    """The next block of the shared Krylov space: ``sum_l P_l P_l^T U / c_l`` over the
    blocks of ``segs`` (one forward sweep of the pulled rows ``ys``), projected off all
    earlier blocks ``us`` (twice: re-orthogonalised) and orthonormalised."""
    zs = [z for z, _ in ys]
    zlogs = [lg - c for (_, lg), c in zip(ys, log_c, strict=True)]
    return new_block(push_sum(segs, zs, zlogs), us)


def krylov_space(near, start, steps, leave_out):
    """Step 1: the shared output subspace, by block Krylov iteration with
    ``A = sum_l P_l P_l^T / c_l`` over the blocks of ``near`` from the orthonormal rows
    ``start`` (k, size(y)); ``c_l = (size(y) / k) ||P_l^T start^T||_F^2`` (a Frobenius
    estimate); the last ``leave_out`` segments' terms are left out of the sum.

    Returns:
        (blocks, pulled): the ``steps + 1`` orthonormal row blocks (k, size(y)) of Q,
        together spanning ``start, A start, ..., A^steps start``, each orthogonal to the
        earlier ones; and for each of the first ``steps`` blocks, per segment of
        ``near``, fold's ys of (unit rows (R, k, size(h_l)), logs (R, k)) of the block
        pulled to every h_l.
    """
    ny, k = start.shape[1], start.shape[0]
    blocks, pulled = [start], []
    u = start
    for it in range(steps):
        pulled.append(list(pull_rows(near, u)))
        if it == 0:  # c_l: ||P_l||_F^2 ~ (ny / k) sum_i ||P_l^T u_i||^2
            log_c = [
                jax.nn.logsumexp(2 * lg, axis=-1, keepdims=True) + jnp.log(ny / k)
                for _, lg in pulled[0]
            ]
            if leave_out:
                n = len(log_c) - leave_out
                log_c = log_c[:n] + [c + jnp.inf for c in log_c[n:]]
        u = _krylov_block(near, pulled[-1], log_c, blocks)
        blocks.append(u)
    return blocks, pulled


def hutchpp_probes(key, count, blocks, dtype):
    """Step 3's probes: ``count`` Gaussian rows G (count, size(y)) and ``(I - Q Q^T) G``
    (their rows projected off all ``blocks`` of Q). Returns (G, the projected rows)."""
    gauss = jax.random.normal(key, (count, blocks[0].shape[1]), dtype)
    return gauss, off_basis(gauss, blocks)


def near_pull(near_rest, tail, rows, kq, pulled):
    """Step 3's sweep: the rows (Q's last ``kq`` rows, then the probes) pulled back
    through the near segments (``near_rest`` then ``tail``, whose last ``kq`` rows are
    stored for step 6), summarised with the earlier blocks' rows ``pulled`` (as
    :func:`krylov_space` returns them).

    Returns:
        (the carry at the first near product: unit rows and logs of all the rows;
        per near segment (Gram, logs, stored rows or None) from
        :func:`~jgrad.analyze._row_sweeps.pull_fold`; the near products'
        :class:`ProductGroup`, Q being all of ``pulled``'s blocks and the ``kq`` rows).
    """
    n_rest = len(near_rest)
    prev = [tuple(p[s][0] for p in pulled) for s in range(n_rest + len(tail))]
    carry, ys_tail = pull_fold(tail, pull_start(rows), kq, prev[n_rest:], store=True)
    carry, ys_rest = pull_fold(near_rest, carry, kq, prev[:n_rest])
    last = ys_rest + ys_tail
    group = ProductGroup(
        grams=[gm for gm, _, _ in last],
        row_logs=[
            jnp.concatenate([p[s][1] for p in pulled] + [lg[:, :kq]], -1)
            for s, (_, lg, _) in enumerate(last)
        ],
        probe_logs=[2 * lg[:, kq:] for _, lg, _ in last],  # log ||P^T g_j||^2
    )
    return carry, last, group


def boundary_rows(pulled, carry, kq):
    """(unit rows, logs) of every block of Q at the first near product h_b: the first
    block of ``pulled``'s first segment, and the first ``kq`` rows of ``carry``."""
    return (
        [p[0][0][0] for p in pulled] + [carry[0][:kq]],
        [p[0][1][0] for p in pulled] + [carry[1][:kq]],
    )


def deep_start(q_rows, carry, us, z_in, gauss, size, kq, d):
    """Step 4's start: the deep products' pull, started at the boundary h_b (the first
    near product) from rows already pulled there, with no sweep of its own: ``size``
    orthonormal output directions Q' = Q v in the span of Q (r directions) and ``d``
    probes projected off Q'.

    v: the directions ``z_in`` pushed from the input (the deepest product's top left
    singular directions, m of them) and the top ``size - m`` Ritz directions of P_b in
    Q. The probes: ``(I - Q' Q'^T) G = (I - Q Q^T) G + Q (I - v v^T) Q^T G`` for the
    first d Gaussian rows G of ``gauss``, whose ``(I - Q Q^T) G`` part is the near
    probes' (rows kq: of ``carry``).

    Args:
        q_rows: (unit rows, logs) of Q's blocks at h_b, lists in the order of ``us``.
        carry: the last near pull's (unit rows, logs) at h_b.

    Returns:
        (unit rows (size + d, n), logs (size + d,)) at h_b."""
    zq, lq = (jnp.concatenate(a) for a in q_rows)
    mx = finite_shift(jnp.max(lq))
    a = zq * jnp.exp(lq - mx)[:, None]  # Q^T P_b / exp(mx)
    qmat = jnp.concatenate(us)
    ritz = jnp.linalg.eigh(a @ a.T)[1][:, ::-1][:, : size - z_in.shape[0]]
    v = jnp.linalg.qr(jnp.concatenate([qmat @ z_in.T, ritz], axis=1))[0]  # (r, size)
    coef = qmat @ gauss[:d].T  # (r, d): Q^T G
    coef = coef - v @ (v.T @ coef)
    cur, lg = carry
    lgp = lg[kq : kq + d]
    mp = finite_shift(jnp.maximum(lgp, mx))
    gp = cur[kq : kq + d] * jnp.exp(lgp - mp)[:, None]
    gp = gp + (coef.T @ a) * jnp.exp(mx - mp)[:, None]
    rows = jnp.concatenate([v.T @ a, gp])
    n = vec_norm(rows)
    rows = safe_div(rows, n)
    return rows, jnp.concatenate([mx + safe_log(n[:size]), mp + safe_log(n[size:])])


def deep_pull(head, start, size):
    """Step 4's sweep: the rows ``start`` (``size`` directions, then the probes; unit
    rows and logs) pulled back through the deep segments ``head``. Returns their
    :class:`ProductGroup`."""
    _, ys = pull_fold(head, start, size, [()] * len(head))
    return ProductGroup(
        grams=[gm for gm, _, _ in ys],
        row_logs=[lg[:, :size] for _, lg, _ in ys],
        probe_logs=[2 * lg[:, size:] for _, lg, _ in ys],
    )


def full_space_group(segs, ny, dtype):
    """The :class:`ProductGroup` of every product when Q is the whole output space: the
    identity's rows pulled through ``segs``, no probes (exact)."""
    ys = pull_rows(segs, jnp.eye(ny, dtype=dtype))  # Q^T P_l for every l
    return ProductGroup(
        grams=[jnp.einsum("...in,...jn->...ij", z, z) for z, _ in ys],
        row_logs=[lg for _, lg in ys],
        probe_logs=None,
    )


def tail_starts(pulled, last, weights):
    """Step 6's start vectors: for each of the t products nearest the output (the last
    t near segments, single blocks; ``weights`` (t, r) their ``start_weights`` from
    :func:`~jgrad.analyze._ritz.summarise`), the unit vector along ``rows^T w``, rows
    the product's unit rows
    of ``Q^T P`` (``pulled``'s blocks and the rows :func:`near_pull` stored): the top
    right singular vector of ``Q^T P``. Returns a list of t vectors (size(h_l),)."""
    t = weights.shape[0]
    tiny = jnp.finfo(weights.dtype).tiny
    starts = []
    for j in range(t):
        i = len(last) - t + j  # near segment index
        rows = jnp.concatenate([p[i][0][0] for p in pulled] + [last[i][2][0]])
        v = rows.T @ weights[j]
        starts.append(v / jnp.maximum(jnp.linalg.norm(v), tiny))
    return starts


def refine_tail(maps, starts, log_fro2, log_sn, steps):
    """Step 6: ``steps`` Lanczos steps on ``P_l^T P_l`` for the products of the single
    Blocks ``maps`` (to the output) from ``starts``, scaled by the Frobenius estimates
    ``exp(log_fro2)``; returns the larger of the Lanczos and the ``log_sn`` lower bounds
    on log sigma_max(P_l) (t,)."""
    top = lanczos_top(maps, starts, log_fro2, steps, log_fro2.dtype)
    sn_t = 0.5 * (safe_log(jnp.maximum(top, 0.0)) + log_fro2)
    return jnp.maximum(log_sn, sn_t)


def assemble(log_sn, log_fro2, rel_err, shapes, ny):
    """Step 7: (log sigma_max, log mean squared singular value
    ``log(||P_l||_F^2 / min(size(y), size(h_l)))``, its relative standard error) of
    every product, ``shapes`` the shapes of h_l."""
    r = jnp.asarray([min(ny, math.prod(s)) for s in shapes], log_fro2.dtype)
    return log_sn, log_fro2 - jnp.log(r), rel_err


def matrix_free_norms(
    net,
    params,
    x,
    probe_key,
    *,
    blocks,
    train,
    key,
    block_size,
    krylov_steps,
    probes,
    krylov_products,
    lanczos_products,
    lanczos_steps,
    deep_probes,
):
    """The module docstring's steps, arguments as :func:`jgrad.analyze.output_norms`
    (validated there; ``krylov_products=None`` resolved here). Returns
    (log_spectral_norm, log_mean_sq, mean_sq_rel_err), each (L,), and ``(L+1,)`` bool:
    block output ``h_k`` non-finite."""
    layers, _, ends = resolve_net(net, params, blocks)
    L = sum(block_counts(layers, ends))
    if krylov_products is None:  # residual products stay near isometries: no shortcut
        residual = any(sub.info.kind == "residual" for sub in walk(*layers))
        krylov_products = L if residual else KRYLOV_PRODUCTS
    t = min(lanczos_products, L)
    near_len = min(max(krylov_products, t), L)  # the near products, tail included
    segs, shapes, y = segments(
        net,
        params,
        x,
        blocks=blocks,
        train=train,
        key=key,
        cut=L - t,
        single_after_cut=True,
        bounds=(L - near_len,),
    )
    ny, dtype = y.size, y.dtype
    k_start, k_rest = jax.random.split(probe_key)
    if block_size * (krylov_steps + 1) >= ny:  # Q spans the output space: exact
        s = summarise([full_space_group(segs, ny, dtype)])
        out = assemble(s.log_spectral_norm, s.log_fro2, s.mean_sq_rel_err, shapes, ny)
        return (*out, forward_bad(segs, y))
    start = jnp.linalg.qr(jax.random.normal(k_start, (ny, block_size), dtype))[0].T
    head, near = split_at(segs, L - near_len)
    near_rest, tail = split_at(near, near_len - t)
    k_deep, k_probes = jax.random.split(k_rest)
    # 1. the shared space Q
    leave_out = len(tail) if near_rest else 0  # the tail is refined by Lanczos
    qs, pulled = krylov_space(near, start, krylov_steps, leave_out)
    last_rows = qs[-1]
    # 2. the deep products' top left singular directions: rows pushed from h_0
    n_deep = max(block_size // 2, 1) if head else 0
    if n_deep:
        z_in = push_rows(segs, jax.random.normal(k_deep, (n_deep, x.size), dtype))
        qs.append(new_block(z_in, qs))
        last_rows = jnp.concatenate([last_rows, qs[-1]])
    kq = block_size + n_deep  # Q's rows in the last pull
    # 3. the probes and the last pull through the near products
    gauss, g = hutchpp_probes(k_probes, probes, qs, dtype)
    rows = jnp.concatenate([last_rows, g])
    carry, last, near_group = near_pull(near_rest, tail, rows, kq, pulled)
    groups = [near_group]
    if head:  # 4. the deep products: one pull of block_size directions and probes
        q_rows = boundary_rows(pulled, carry, kq)
        d = min(deep_probes, probes)
        start = deep_start(q_rows, carry, qs, z_in, gauss, block_size, kq, d)
        groups.insert(0, deep_pull(head, start, block_size))
    # 5. Ritz values and Hutch++
    s = summarise(groups)
    sn = s.log_spectral_norm
    if t:  # 6. Lanczos for the products nearest the output
        starts = tail_starts(pulled, last, s.start_weights[-t:])
        maps = split_at(segs, L - t)[1]  # single Blocks
        fro_t = s.log_fro2[L - t :]
        sn = sn.at[L - t :].set(
            refine_tail(maps, starts, fro_t, sn[L - t :], lanczos_steps)
        )
    # 7. the mean squares
    out = assemble(sn, s.log_fro2, s.mean_sq_rel_err, shapes, ny)
    return (*out, forward_bad(segs, y))
