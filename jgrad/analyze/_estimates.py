"""Matrix-free estimates of the spectral norm and mean squared singular value of every
layer-to-output product: a shared block-Krylov output subspace, Hutch++ probes, Lanczos for
the products nearest the output, the work tapered with depth."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze._jacobians import resolve_net
from jgrad.analyze._lanczos import lanczos_top, top_eig
from jgrad.analyze._logspace import (
    safe_log,
    vec_norm,
)
from jgrad.analyze._precision import full_precision
from jgrad.analyze._segments import (
    fold,
    segments,
    split_at,
    unchunk,
)

__all__ = ["NormEstimates", "output_norm_estimates"]


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
        lam, w = top_eig(g * e[:, None] * e[None, :])
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
        top = lanczos_top(maps, starts, fro[L - t :], iters, dtype)
        sn_t = 0.5 * (safe_log(jnp.maximum(top, 0.0)) + fro[L - t :])
        sn = sn.at[L - t :].set(jnp.maximum(sn[L - t :], sn_t))
    r = jnp.asarray([min(ny, math.prod(s)) for s in shapes], dtype)
    return NormEstimates(
        log_spectral_norm=sn,
        log_mean_sq=fro - jnp.log(r),
        mean_sq_rel_err=rel_err,
    )
