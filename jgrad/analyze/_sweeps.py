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
  output subspace, Hutch++ probes, Lanczos for the products nearest the output), at a
  small fraction of the cost of the exact spectra.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze._jacobians import (
    _couples_examples,
    _serial_jacobian,
    _to_full,
    resolve_net,
    split_keys,
    warn_first_nonfinite,
)
from jgrad.analyze._products import LogMatrix, _normalize, safe_log, svdvals, vec_norm

__all__ = [
    "output_sweep",
    "output_spectra",
    "NormEstimates",
    "output_norm_estimates",
    "input_output_spectrum",
]


_CLOSED_KINDS = ("dense", "elementwise")


def _closed_form(layer) -> bool:
    """Whether ``_serial_jacobian`` has a closed form (no autodiff) for this layer."""
    kind = getattr(layer.apply, "kind", None)
    if kind == "residual":
        return _closed_form(layer.apply.block)
    if hasattr(layer, "layers"):
        return all(_closed_form(sub) for sub in layer.layers)
    return kind in _CLOSED_KINDS


def _blocks(net, params, x, *, blocks, train, key):
    """Forward pass; returns one (jvp, vjp, in_shape, out_shape, jac) per block and the
    trajectory. ``jac()`` is the block's Jacobian in closed form, or None when it has none
    (then the sweep pulls the identity back through the VJP)."""
    layers, params, ends = resolve_net(net, params, blocks)
    if train and any(_couples_examples(lay) for lay in layers):
        raise ValueError(
            "`train` must be False for a network with batch norm in these sweeps, got "
            "True: batch norm couples the examples. Use layer_jacobians(..., "
            "batch_jacobian=True) for its batch Jacobian."
        )
    keys = split_keys(key, len(layers))
    h = jnp.asarray(x)
    maps, hs = [], [h]
    start = 0
    for end in ends:
        seg = slice(start, end + 1)

        def block(v, seg=seg):
            for layer, p, k in zip(layers[seg], params[seg], keys[seg], strict=True):
                v = layer.apply(p, v, train=train, key=k)
            return v

        h_in = h
        h, jvp = jax.linearize(block, h_in)
        vjp = jax.linear_transpose(jvp, h_in)
        jac = None
        if h_in.ndim == 1 and all(_closed_form(lay) for lay in layers[seg]):

            def jac(seg=seg, h_in=h_in):
                j, _ = _serial_jacobian(
                    layers[seg],
                    params[seg],
                    h_in,
                    train=train,
                    key=None,
                    chunk_size=None,
                )
                return _to_full(j)

        maps.append((jvp, lambda c, vjp=vjp: vjp(c)[0], h_in.shape, h.shape, jac))
        hs.append(h)
        start = end + 1
    bad = jnp.stack([~jnp.all(jnp.isfinite(v)) for v in hs])
    first = jnp.where(jnp.any(bad), jnp.argmax(bad), -1)
    warn_first_nonfinite(first, "jgrad.analyze sweep", "h_{k}")
    return maps, hs


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
    mats, logs = _sweep(net, params, x, blocks=blocks, train=train, key=key)
    return tuple(LogMatrix(*_normalize(m, s)) for m, s in zip(mats, logs, strict=True))


def _sweep(net, params, x, *, blocks, train, key):
    """The backward sweep: (matrices, log scales), each matrix scaled to max|entry| = 1.

    Dividing by max|entry| (one reduction, which XLA fuses with the pull-back's elementwise
    work) instead of the Frobenius norm (two more passes) keeps the sweep at the speed of a
    plain ``jax.jacrev``; the scale convention does not change singular values."""
    maps, hs = _blocks(net, params, x, blocks=blocks, train=train, key=key)
    y = hs[-1]
    m = None
    s = jnp.zeros((), y.dtype)
    mats, logs = [], []
    for _, vjp, _, out_shape, jac in reversed(maps):
        if m is None and jac is not None:  # the last block: its Jacobian, no matmul
            m = jac().reshape(y.size, -1)
        else:
            if m is None:
                m = jnp.eye(y.size, dtype=y.dtype)
            m = jax.vmap(lambda r, vjp=vjp, o=out_shape: vjp(r.reshape(o)).ravel())(m)
        a = jnp.max(jnp.abs(m))
        ok = a > 0
        m = m / jnp.where(ok, a, 1.0)
        s = s + safe_log(a)
        mats.append(m)
        logs.append(s)
    return mats[::-1], logs[::-1]


def _spectra(mats, logs):
    """Log singular values of exp(log) * mat, one SVD call per product.

    Not one SVD of the stacked products: stacking copies all L products (L n^2 floats per
    example, 128 MB for L = 32, n = 256, 16 examples) into a fresh buffer, and on CPU
    touching that much new memory costs as much as several SVDs; per-product calls also
    let XLA free each product once its singular values are taken."""
    return tuple(jnp.log(svdvals(m)) + s for m, s in zip(mats, logs, strict=True))


def output_spectra(
    net: Any,
    params: Any,
    x: jax.Array,
    *,
    blocks: bool = True,
    train: bool = False,
    key: jax.Array | None = None,
) -> tuple[jax.Array, ...]:
    """Log singular values (natural log, descending) of every ``d y / d h_l``.

    One backward sweep (:func:`output_sweep`) and one SVD (singular values only) per
    product. Exact at any depth for the top singular values; those
    below ``sigma_max * eps`` are lost (the rescaled method; see ``log_singular_values``).

    Returns:
        A tuple of L arrays, entry l the spectrum of ``d y / d h_l``.
    """
    return _spectra(*_sweep(net, params, x, blocks=blocks, train=train, key=key))


def input_output_spectrum(
    net: Any,
    params: Any,
    x: jax.Array,
    *,
    train: bool = False,
    key: jax.Array | None = None,
) -> jax.Array:
    """Log singular values of the input-output Jacobian ``d y / d x`` (rescaled, exact
    top singular values at any depth), by one rescaled reverse sweep and one SVD."""
    mats, logs = _sweep(net, params, x, blocks=True, train=train, key=key)
    return jnp.log(svdvals(mats[0])) + logs[0]


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


def _pull_rows(maps, rows):
    """One backward sweep of the rows (k, size(y)) at the output: P_l^T r for every l.

    Returns a list of L arrays (k, size(h_l)) of unit rows and a list of L (k,) logs of
    their norms."""
    L = len(maps)
    cur = rows
    lg = jnp.zeros(rows.shape[0], rows.dtype)
    vecs, logs = [None] * L, [None] * L
    for m in range(L - 1, -1, -1):
        _, vjp, _, out_shape, _ = maps[m]
        out = jax.vmap(vjp)(cur.reshape((-1,) + out_shape)).reshape((cur.shape[0], -1))
        n = vec_norm(out)
        cur = out / jnp.where(n > 0, n, 1.0)[:, None]
        lg = lg + safe_log(n)
        vecs[m], logs[m] = cur, lg
    return vecs, logs


def _push_sum(maps, zs, zlogs):
    """sum_l exp(zlogs[l]) * P_l z_l for every row, in ONE forward sweep.

    The terms are added as the sweep passes h_l (linearity), each rescaled in log space;
    returns the (k, size(y)) sums, each row up to a positive factor (which the caller's
    orthonormalisation ignores)."""
    acc = al = None
    for m, (jvp, _, in_shape, _, _) in enumerate(maps):
        t, tl = zs[m], zlogs[m]
        if acc is None:
            acc, al = t, tl
        else:
            mx = jnp.maximum(al, tl)
            mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
            acc = acc * jnp.exp(al - mx)[:, None] + t * jnp.exp(tl - mx)[:, None]
            al = mx
        out = jax.vmap(jvp)(acc.reshape((-1,) + in_shape)).reshape((acc.shape[0], -1))
        n = vec_norm(out)
        acc = out / jnp.where(n > 0, n, 1.0)[:, None]
        al = al + safe_log(n)
    return acc


def _top_eig(g, squarings=6):
    """Top eigenvalue and eigenvector of the PSD matrix g (r, r), by repeated squaring
    (g^(2^squarings), trace-normalised) and a Rayleigh quotient. The quotient lies in
    [lambda_2, lambda_1] and is within lambda_1 (lambda_j / lambda_1)^(2^squarings) of
    lambda_1 for every other eigenvalue lambda_j: exact to float precision unless the top
    eigenvalues are nearly equal, and then close to lambda_1 anyway."""
    tiny = jnp.finfo(g.dtype).tiny
    m = g / jnp.maximum(jnp.trace(g), tiny)
    for _ in range(squarings):
        m = m @ m
        m = m / jnp.maximum(jnp.trace(m), tiny)
    v = m[:, jnp.argmax(jnp.diagonal(m))]
    v = v / jnp.maximum(jnp.linalg.norm(v), tiny)
    return jnp.maximum(v @ g @ v, 0.0), v


def output_norm_estimates(
    net: Any,
    params: Any,
    x: jax.Array,
    key: jax.Array,
    *,
    rank: int = 8,
    power: int = 2,
    probes: int = 24,
    tail: int = 12,
    iters: int = 6,
    blocks: bool = True,
    train: bool = False,
    dropout_key: jax.Array | None = None,
) -> NormEstimates:
    """Spectral norm and mean squared singular value of every ``P_l = d y / d h_l``,
    cheaply: no Jacobian or product is formed, only sweeps of a few vectors.

    1. A shared output subspace Q (``rank * (power + 1)`` orthonormal directions in the
       space of y) by block Krylov iteration with the operator ``sum_l P_l P_l^T / c_l``
       (``c_l`` a Frobenius estimate, so that every l counts): each application is one
       backward sweep (``P_l^T U`` at every h_l) and ONE forward sweep that adds the
       terms ``P_l P_l^T U / c_l`` as it passes h_l, so its cost does not grow with the
       number of products. The top left singular vectors of the products share most of
       Q (the left singular vectors of ``J_L ... J_{l+1}`` converge as l decreases).
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
        blocks, train: as :func:`output_sweep`.
        dropout_key: the dropout key for ``train=True``.

    Returns:
        A :class:`NormEstimates`.

    References:
        Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace
        Estimation"; Musco & Musco 2015, "Randomized Block Krylov Methods for Stronger
        and Faster Approximate Singular Value Decomposition".
    """
    _checks.positive_int("rank", rank)
    _checks.non_negative_int("power", power)
    _checks.positive_int("probes", probes)
    _checks.non_negative_int("tail", tail)
    _checks.positive_int("iters", iters)
    maps, hs = _blocks(net, params, x, blocks=blocks, train=train, key=dropout_key)
    L = len(maps)
    y = hs[-1]
    ny = y.size
    dtype = y.dtype
    ku, kg = jax.random.split(key)
    full = rank * (power + 1) >= ny  # Q spans the output space: exact
    u = (
        jnp.eye(ny, dtype=dtype)
        if full
        else jnp.linalg.qr(jax.random.normal(ku, (ny, rank), dtype))[0].T
    )
    zs, zlogs = _pull_rows(maps, u)
    ys, ylogs = [zs], [zlogs]  # Q^T P_l for every l, one block of Q at a time
    if not full:
        us = [u]
        # c_l: ||P_l||_F^2 ~ (ny / rank) sum_i ||P_l^T u_i||^2
        log_c = [jax.nn.logsumexp(2 * lg) + jnp.log(ny / rank) for lg in zlogs]
        for _ in range(power):
            acc = _push_sum(
                maps, zs, [lg - c for lg, c in zip(zlogs, log_c, strict=True)]
            )
            basis = jnp.concatenate(us)
            for _ in range(2):  # project off the space so far (twice: re-orthogonalise)
                acc = acc - (acc @ basis.T) @ basis
            u = jnp.linalg.qr(acc.T)[0].T
            us.append(u)
            zs, zlogs = _pull_rows(maps, u)
            ys.append(zs)
            ylogs.append(zlogs)
        basis = jnp.concatenate(us)
        g = jax.random.normal(kg, (probes, ny), dtype)
        g = g - (g @ basis.T) @ basis
        _, glogs = _pull_rows(maps, g)
    tiny = jnp.finfo(dtype).tiny

    def summary(rows, lg, per_probe):
        """One product: (log sigma_max lower bound, start vector, log ||P||_F^2, rel err)
        from its unit rows Q^T P (r, n), their logs (r,), and the probes' logs."""
        mx = jnp.max(lg)
        mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
        rows = rows * jnp.exp(lg - mx)[:, None]  # Q^T P_l / exp(mx)
        lam, w = _top_eig(rows @ rows.T)
        v = rows.T @ w
        fro_q = jax.nn.logsumexp(2 * lg)
        if per_probe is None:
            return 0.5 * safe_log(lam) + mx, v, fro_q, jnp.zeros((), dtype)
        fro_r = jax.nn.logsumexp(per_probe) - jnp.log(float(probes))
        tot = jnp.logaddexp(fro_q, fro_r)
        share = jnp.exp(per_probe - tot)  # each probe's residual over the total
        sd = jnp.std(share, ddof=1 if probes > 1 else 0) / jnp.sqrt(float(probes))
        return 0.5 * safe_log(lam) + mx, v, tot, sd

    rows_l = [jnp.concatenate([z[i] for z in ys]) for i in range(L)]
    lg_l = [jnp.concatenate([z[i] for z in ylogs]) for i in range(L)]
    probe_l = [None] * L if full else [2 * g for g in glogs]  # log ||P_l^T g_j||^2
    if len({r.shape for r in rows_l}) == 1:  # one vmapped summary (compiled once)
        probes_arg = None if full else jnp.stack(probe_l)
        sn, starts, fro, rel_err = jax.vmap(summary)(
            jnp.stack(rows_l), jnp.stack(lg_l), probes_arg
        )
        starts = list(starts)
    else:
        out = [summary(*a) for a in zip(rows_l, lg_l, probe_l, strict=True)]
        sn, starts, fro, rel_err = (list(v) for v in zip(*out, strict=True))
        sn, fro, rel_err = jnp.stack(sn), jnp.stack(fro), jnp.stack(rel_err)
    starts = [v / jnp.maximum(jnp.linalg.norm(v), tiny) for v in starts]
    t = min(tail, L)
    if t and not full:
        top = _lanczos_top(maps[L - t :], starts[L - t :], fro[L - t :], iters, dtype)
        sn_t = 0.5 * (safe_log(jnp.maximum(top, 0.0)) + fro[L - t :])
        sn = sn.at[L - t :].set(jnp.maximum(sn[L - t :], sn_t))
    r = jnp.asarray([min(ny, int(jnp.size(h))) for h in hs[:-1]], dtype)
    return NormEstimates(
        log_spectral_norm=sn,
        log_mean_sq=fro - jnp.log(r),
        mean_sq_rel_err=rel_err,
    )


def _unit(v):
    return v / jnp.linalg.norm(v)


def _lanczos_top(maps, qs, log_c, iters, dtype):
    """Top Ritz value of P_l^T P_l / exp(log_c_l) for every l of the sub-network ``maps``
    (products to its output), after ``iters`` Lanczos steps from the start vectors ``qs``."""
    L = len(maps)

    def apply_a(vs):
        fwd, fwd_log = _push_fwd(
            maps, [v[None] for v in vs], [jnp.zeros((1,), dtype)] * L, 0
        )
        bwd, bwd_log = _pull_back(maps, fwd, fwd_log)
        scale = jnp.exp(bwd_log[:, 0] - log_c)
        return [b[0] * s for b, s in zip(bwd, scale, strict=True)]

    # Lanczos with full re-orthogonalisation, the iterations in a fori_loop so that the
    # sweeps are traced once (compile time independent of `iters`).
    def body(it, state):
        basis, cur, prev, beta, alphas, betas = state
        w = apply_a(cur)
        alpha = jnp.stack([jnp.vdot(wi, ci) for wi, ci in zip(w, cur, strict=True)])
        w = [
            wi - al * ci - be * pi
            for wi, al, ci, be, pi in zip(w, alpha, cur, beta, prev, strict=True)
        ]
        # basis rows not yet filled are zero and project out nothing
        w = [wi - bl.T @ (bl @ wi) for wi, bl in zip(w, basis, strict=True)]
        w = [wi - bl.T @ (bl @ wi) for wi, bl in zip(w, basis, strict=True)]
        beta_new = jnp.stack([jnp.linalg.norm(wi) for wi in w])
        nxt = [wi / jnp.where(b > 0, b, 1.0) for wi, b in zip(w, beta_new, strict=True)]
        basis = [
            bl.at[jnp.minimum(it + 1, iters - 1)].set(
                jnp.where(it + 1 < iters, n, bl[-1])
            )
            for bl, n in zip(basis, nxt, strict=True)
        ]
        alphas = alphas.at[it].set(alpha)
        betas = betas.at[it].set(beta_new)
        return basis, nxt, cur, beta_new, alphas, betas

    basis0 = [jnp.zeros((iters, q.shape[0]), dtype).at[0].set(q) for q in qs]
    state = (
        basis0,
        qs,
        [jnp.zeros_like(q) for q in qs],
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


def _matrix_lanczos_top(m, iters, key):
    """Top singular value of a matrix ``m`` (r, n) by ``iters`` Lanczos steps on m^T m
    (full re-orthogonalisation), from a random start."""
    n = m.shape[1]
    q = _unit(jax.random.normal(key, (n,), m.dtype))
    k = min(iters, n)
    basis = jnp.zeros((k, n), m.dtype).at[0].set(q)

    def body(it, state):
        basis, cur, prev, beta, alphas, betas = state
        w = m.T @ (m @ cur)
        alpha = jnp.vdot(w, cur)
        w = w - alpha * cur - beta * prev
        w = w - basis.T @ (basis @ w)
        w = w - basis.T @ (basis @ w)
        b = jnp.linalg.norm(w)
        nxt = w / jnp.where(b > 0, b, 1.0)
        basis = basis.at[jnp.minimum(it + 1, k - 1)].set(
            jnp.where(it + 1 < k, nxt, basis[-1])
        )
        return basis, nxt, cur, b, alphas.at[it].set(alpha), betas.at[it].set(b)

    z = jnp.zeros((k,), m.dtype)
    state = (basis, q, jnp.zeros_like(q), jnp.zeros((), m.dtype), z, z)
    *_, alphas, betas = jax.lax.fori_loop(0, k, body, state)
    t = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(t)[-1], 0.0))


def output_norms(
    net: Any,
    params: Any,
    x: jax.Array,
    key: jax.Array,
    *,
    iters: int = 16,
    blocks: bool = True,
    train: bool = False,
    dropout_key: jax.Array | None = None,
) -> NormEstimates:
    """Spectral norm and EXACT mean squared singular value of every ``d y / d h_l``.

    One backward sweep forms every product (as :func:`output_sweep`, the cost of one
    ``jax.jacrev``); the mean squared singular value is then exact (the squared Frobenius
    norm over r), and the spectral norm comes from ``iters`` Lanczos steps on each explicit
    ``P_l^T P_l`` (matrix-vector products only, no SVD), which is exact when ``iters``
    reaches the matrix size. Needs memory for all L products (L n^2 per example); for very
    wide layers use the matrix-free :func:`output_norm_estimates`.

    Args:
        net, params, x: as :func:`output_sweep` (one example).
        key: PRNG key for the Lanczos start vectors.
        iters: Lanczos steps, >= 1.
        blocks, train: as :func:`output_sweep`.
        dropout_key: the dropout key for ``train=True``.

    Returns:
        A :class:`NormEstimates` with ``mean_sq_rel_err`` all 0 (exact).
    """
    _checks.positive_int("iters", iters)
    mats, logs = _sweep(net, params, x, blocks=blocks, train=train, key=dropout_key)
    keys = jax.random.split(key, len(mats))
    logs = jnp.stack(logs)
    if len({m.shape for m in mats}) == 1:  # one vmapped Lanczos (compiled once)
        stacked = jnp.stack(mats)
        top = jax.vmap(lambda m, k: _matrix_lanczos_top(m, iters, k))(stacked, keys)
        fro2 = jnp.sum(jnp.square(stacked), axis=(1, 2))
    else:
        top = jnp.stack(
            [_matrix_lanczos_top(m, iters, k) for m, k in zip(mats, keys, strict=True)]
        )
        fro2 = jnp.stack([jnp.sum(jnp.square(m)) for m in mats])
    # entries <= 1 in magnitude: the squared Frobenius norm cannot overflow
    r = jnp.asarray([min(m.shape) for m in mats], logs.dtype)
    sn = jnp.log(top) + logs
    ms = jnp.log(fro2) + 2 * logs - jnp.log(r)
    return NormEstimates(
        log_spectral_norm=sn, log_mean_sq=ms, mean_sq_rel_err=jnp.zeros_like(ms)
    )
