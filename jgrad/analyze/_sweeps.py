"""Layer-to-output products, spectra and cheap norm estimates by sweeps of JVPs and VJPs.

These never form a per-layer Jacobian: each block of the network is linearized once at the
forward trajectory (``jax.linearize``), and matrices or probe vectors are pushed through it,
vmapped over their rows, so a dense layer costs one matrix multiply shared by all rows (and,
under ``vmap`` over examples, one large GEMM shared by the whole batch). Every push is
rescaled in log space, so nothing under- or overflows at any depth.

- :func:`output_sweep`: every ``d y / d h_l`` (l = 0..L-1) in ONE backward sweep.
- :func:`output_spectra`: their log singular values (one batched SVD).
- :func:`output_norm_estimates`: spectral norm (Lanczos on ``P^T P``, a few JVP/VJP sweeps,
  no explicit Jacobian) and mean squared singular value (Hutchinson probes) of every
  ``d y / d h_l``, at a small fraction of the cost of the exact spectra.
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
    """Log singular values of exp(log) * mat, one batched SVD per group of equal shapes."""
    shapes = {m.shape for m in mats}
    if len(shapes) == 1:
        sv = svdvals(jnp.stack(mats))
        return tuple(jnp.log(sv) + jnp.stack(logs)[:, None])
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

    One backward sweep (:func:`output_sweep`) and one batched SVD (singular values only)
    over the products of equal shape. Exact at any depth for the top singular values; those
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
    """Cheap estimates for every layer-to-output product ``P_l = d y / d h_l``.

    Attributes:
        log_spectral_norm: ``(L,)`` natural log of sigma_max(P_l), from ``iters`` Lanczos
            steps on ``P_l^T P_l`` (a lower bound that converges from below; the Ritz value
            of a Krylov space of dimension ``iters``).
        log_mean_sq: ``(L,)`` natural log of ``tr(P_l P_l^T) / min(m, n)`` (the mean squared
            singular value), estimated with ``probes`` Gaussian probes (Hutchinson). Its
            relative standard error is ``sqrt(2 sum sigma^4) / sum sigma^2 / sqrt(probes)``:
            ``sqrt(2 / (probes r))`` for a flat spectrum but up to ``sqrt(2 / probes)`` when
            one singular value dominates (deep products); see ``mean_sq_rel_err``.
        mean_sq_rel_err: ``(L,)`` the relative standard error of ``exp(log_mean_sq)``
            estimated from the probes' own spread.
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


def output_norm_estimates(
    net: Any,
    params: Any,
    x: jax.Array,
    key: jax.Array,
    *,
    iters: int = 6,
    probes: int = 32,
    blocks: bool = True,
    train: bool = False,
    dropout_key: jax.Array | None = None,
) -> NormEstimates:
    """Spectral norm and mean squared singular value of every ``d y / d h_l``, cheaply.

    No Jacobian or product is formed. The mean squared singular value comes from one
    backward sweep of ``probes`` Gaussian vectors (Hutchinson:
    ``E ||P_l^T g||^2 = tr(P_l P_l^T)``). The spectral norm comes from ``iters`` Lanczos
    steps on ``P_l^T P_l`` for all l at once, each step one forward sweep of JVPs and one
    backward sweep of VJPs, each vector rescaled in log space at every block. Lanczos gives
    the top eigenvalue of a Krylov space, a lower bound on sigma_max^2 that converges fast
    when sigma_max is separated from the rest (deep products) and more slowly for flat
    spectra; its accuracy against the exact value is measured in ``scripts/bench_jacobian.py``
    and the tests.

    Args:
        net, params, x: as :func:`output_sweep` (one example).
        key: PRNG key for the probes and the Lanczos start vectors.
        iters: Lanczos steps (Krylov dimension), >= 1.
        probes: Hutchinson probes, >= 1.
        blocks, train: as :func:`output_sweep`.
        dropout_key: the dropout key for ``train=True``.

    Returns:
        A :class:`NormEstimates`.
    """
    _checks.positive_int("iters", iters)
    _checks.positive_int("probes", probes)
    maps, hs = _blocks(net, params, x, blocks=blocks, train=train, key=dropout_key)
    L = len(maps)
    y = hs[-1]
    dtype = y.dtype
    kp, kl = jax.random.split(key)
    # Hutchinson: probes g at the output, pulled back to every h_l.
    # One sweep serves every l: P_l^T g is the sweep's value at h_l.
    cur = jax.random.normal(kp, (probes, y.size), dtype)
    cur_log = jnp.zeros((probes,), dtype)
    back_log = [None] * L
    back_vec = [None] * L
    for m in range(L - 1, -1, -1):
        _, vjp, in_shape, out_shape, _ = maps[m]
        out = jax.vmap(vjp)(cur.reshape((probes,) + out_shape)).reshape((probes, -1))
        n = vec_norm(out)
        cur = out / jnp.where(n > 0, n, 1.0)[:, None]
        cur_log = cur_log + safe_log(n)
        back_log[m] = cur_log
        back_vec[m] = cur
    # ||P_l^T g_i||^2 = exp(2 log) (the swept vectors are unit-norm)
    sq = 2 * jnp.stack(back_log)
    r = jnp.asarray([min(y.size, int(jnp.size(h))) for h in hs[:-1]], dtype)
    log_mean_sq = jax.nn.logsumexp(sq, axis=1) - jnp.log(float(probes)) - jnp.log(r)
    # Lanczos on A_l = P_l^T P_l / c_l, c_l = ||P_l||_F^2 estimate, for every l at once.
    log_c = jax.nn.logsumexp(sq, axis=1) - jnp.log(float(probes))
    ratio = jnp.exp(sq - log_c[:, None])  # per-probe estimates over their mean
    rel_err = jnp.std(ratio, axis=1, ddof=1 if probes > 1 else 0) / jnp.sqrt(
        float(probes)
    )
    # Start vectors: the top right singular vector of the probes' pull-backs G P_l (a
    # randomized range finder with `probes` columns), already close to the top right
    # singular vector of P_l, so that few Lanczos steps suffice even for flat spectra.
    del kl
    qs = []
    for vecs, lg in zip(back_vec, back_log, strict=True):
        w = jnp.exp(lg - jnp.max(lg))
        y_l = vecs * jnp.where(jnp.isfinite(w), w, 0.0)[:, None]
        qs.append(jnp.linalg.svd(y_l, full_matrices=False)[2][0])

    top = _lanczos_top(maps, qs, log_c, iters, dtype)
    # The products nearest the output have the flattest spectra (slowest convergence) and
    # the cheapest sweeps (cost ~ (L - l) per step): refine the last quarter with 3x the
    # steps, at about a fifth of the main loop's cost. Ritz values are lower bounds: keep
    # the larger.
    k_tail = max(1, L // 4)
    if L > 1:
        tail = _lanczos_top(
            maps[L - k_tail :], qs[L - k_tail :], log_c[L - k_tail :], 3 * iters, dtype
        )
        top = top.at[L - k_tail :].set(jnp.maximum(top[L - k_tail :], tail))
    log_sn = 0.5 * (jnp.log(jnp.maximum(top, jnp.finfo(dtype).tiny)) + log_c)
    return NormEstimates(
        log_spectral_norm=log_sn, log_mean_sq=log_mean_sq, mean_sq_rel_err=rel_err
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
