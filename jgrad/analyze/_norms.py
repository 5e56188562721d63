"""The spectral norm and mean squared singular value of every layer-to-output product
``P_l = d y / d h_l``: :func:`output_norms`, exact (the explicit products of one sweep)
or matrix-free (:mod:`jgrad.analyze._estimates`)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze._estimates import matrix_free_norms
from jgrad.analyze._lanczos import lanczos_left, norm2, unit
from jgrad.analyze._logspace import safe_log
from jgrad.analyze._nonfinite import NonFinite, no_nonfinite, reports_nonfinite
from jgrad.analyze._precision import full_precision
from jgrad.analyze._records import bad_values, product_record
from jgrad.analyze._segments import unchunk
from jgrad.analyze._sweep import check_sweep_args, sweep

__all__ = ["OutputNorms", "output_norms"]

METHODS = ("exact", "matrix_free")

# each method's options and their defaults (None: the method's default, or "auto")
EXACT_DEFAULTS = {"min_lanczos_steps": 8, "max_lanczos_steps": 16, "residual_tol": 1e-4}
MATRIX_FREE_DEFAULTS = {
    "block_size": 8,
    "krylov_steps": 2,
    "probes": 24,
    "krylov_products": None,
    "lanczos_products": 8,
    "lanczos_steps": 6,
    "deep_probes": 4,
}


class OutputNorms(NamedTuple):
    """Spectral norm and mean squared singular value of every ``P_l = d y / d h_l``.

    Attributes:
        log_spectral_norm: ``(L,)`` natural log of sigma_max(P_l), a Ritz value: a
            lower bound (up to rounding), exact when the Krylov space holds the top
            singular vectors.
        log_mean_sq: ``(L,)`` natural log of ``tr(P_l P_l^T) / min(m, n)`` (the mean
            squared singular value): exact from ``method="exact"``, an unbiased
            Hutch++ estimate from ``method="matrix_free"``.
        mean_sq_rel_err: ``(L,)`` the relative standard error of ``exp(log_mean_sq)``,
            estimated from the probes' own spread (0 where exact).
        nonfinite: a :class:`NonFinite`: forward index k the first non-finite block
            output ``h_k`` (k = 0 the input x), backward index l the first product met
            from the output whose norms went non-finite by themselves, -1 for none.
            Entries computed from a NaN or inf are NaN (``-inf`` only for an exactly
            zero product).
    """

    log_spectral_norm: jax.Array
    log_mean_sq: jax.Array
    mean_sq_rel_err: jax.Array
    nonfinite: NonFinite = no_nonfinite()


def _options(method, given):
    """The chosen method's options with their defaults filled in; raises if an option
    of the other method was given."""
    own, other = (
        (EXACT_DEFAULTS, MATRIX_FREE_DEFAULTS)
        if method == "exact"
        else (MATRIX_FREE_DEFAULTS, EXACT_DEFAULTS)
    )
    for name in other:
        if given[name] is not None:
            other_method = "matrix_free" if method == "exact" else "exact"
            raise ValueError(
                f"`{name}` is an option of method={other_method!r}, got "
                f"{name}={given[name]!r} with method={method!r}. Drop it, or pass "
                f"method={other_method!r}."
            )
    return {
        name: default if given[name] is None else given[name]
        for name, default in own.items()
    }


def _check_options(method, opts):
    if method == "exact":
        _checks.positive_int("min_lanczos_steps", opts["min_lanczos_steps"])
        _checks.positive_int("max_lanczos_steps", opts["max_lanczos_steps"])
        _checks.positive("residual_tol", opts["residual_tol"])
        lo, hi = opts["min_lanczos_steps"], opts["max_lanczos_steps"]
        if lo > hi:
            raise ValueError(
                f"`min_lanczos_steps` must be at most `max_lanczos_steps` ({hi}), got "
                f"{lo}. Lower `min_lanczos_steps` or raise `max_lanczos_steps`."
            )
        return
    _checks.positive_int("block_size", opts["block_size"])
    _checks.non_negative_int("krylov_steps", opts["krylov_steps"])
    _checks.positive_int("probes", opts["probes"])
    if opts["krylov_products"] is not None:
        _checks.positive_int("krylov_products", opts["krylov_products"])
    _checks.non_negative_int("lanczos_products", opts["lanczos_products"])
    _checks.positive_int("lanczos_steps", opts["lanczos_steps"])
    _checks.positive_int("deep_probes", opts["deep_probes"])


@reports_nonfinite("layer")
@full_precision
def output_norms(
    net: Any,
    params: Any,
    x: jax.Array,
    *,
    probe_key: jax.Array,
    method: str = "exact",
    min_lanczos_steps: int | None = None,
    max_lanczos_steps: int | None = None,
    residual_tol: float | None = None,
    block_size: int | None = None,
    krylov_steps: int | None = None,
    probes: int | None = None,
    krylov_products: int | None = None,
    lanczos_products: int | None = None,
    lanczos_steps: int | None = None,
    deep_probes: int | None = None,
    blocks: bool = True,
    train: bool = False,
    key: jax.Array | None = None,
) -> OutputNorms:
    """Spectral norm and mean squared singular value of every ``P_l = d y / d h_l``.

    ``method="exact"`` (the default) forms every product ``P_l`` in ONE backward sweep
    (as :func:`output_sweep`: the cost of one ``jax.jacrev`` of the whole network) and
    summarises each as it is formed, so the L products are never stored:

    - mean squared singular value: exact, ``||P_l||_F^2 / min(m, n)``;
    - spectral norm: Lanczos on ``P_l P_l^T`` (matrix-vector products with the explicit
      product, no SVD): ``min_lanczos_steps`` steps, then on until the top Ritz pair's
      residual is small (``residual_tol``), or to ``max_lanczos_steps`` steps. Each
      product's run starts from the previous product's top Ritz vector, one power step
      on, plus a fresh random vector orthogonal to it, in equal parts (the first from a
      random vector drawn with ``probe_key``). The warm half holds the top left
      singular vector when it carries over (it converges as l decreases: it is set by
      the factors nearest the output; Oseledets); the random half holds it when the
      top singular values cross from one product to the next, which a warm start alone
      misses.

    The stopping rule bounds the distance to SOME eigenvalue of ``P P^T``, not to the
    largest: Lanczos can settle on a lower one before the top one has grown in its
    space, which ``min_lanczos_steps`` guards against. Needs memory for one product
    (m x n per example).

    ``method="matrix_free"`` forms no Jacobian or product, only sweeps of a few
    vectors: a shared block-Krylov output subspace Q of
    ``block_size * (krylov_steps + 1)`` directions over the ``krylov_products``
    products nearest the output gives Rayleigh-Ritz spectral norms (lower bounds) and,
    with ``probes`` Gaussian probes off Q, Hutch++ mean squares (unbiased, with their
    standard error); the ``lanczos_products`` products nearest the output get
    ``lanczos_steps`` Lanczos steps; the deeper products get ``block_size`` directions
    chosen where the near products begin (rows pushed from the input and Ritz
    directions) and ``deep_probes`` probes, in one more backward sweep. The steps are
    listed in :mod:`jgrad.analyze._estimates`. Exact when
    ``block_size * (krylov_steps + 1) >= size(y)``.

    Both spectral norms are Ritz values: lower bounds (up to rounding). Accuracy
    against the SVDs of :func:`output_spectra` and the time of both methods are
    measured in ``scripts/bench_jacobian.py`` (docs/benchmarks.md).

    Args:
        net, params, x: as :func:`output_sweep` (one example).
        probe_key: PRNG key for the random vectors: the exact method's Lanczos start
            vectors; the matrix-free method's Krylov start block, pushed rows and
            probes.
        method: ``"exact"`` or ``"matrix_free"``.
        min_lanczos_steps: exact: the fewest Lanczos steps per product, >= 1 and
            <= ``max_lanczos_steps`` (None: 8).
        max_lanczos_steps: exact: the most Lanczos steps per product, >= 1 (None:
            16; ``min(max_lanczos_steps, size(y))`` steps span the whole output
            space: exact).
        residual_tol: exact: stop (after ``min_lanczos_steps``) when the residual
            ``rho = ||P P^T y - theta y||`` of the top Ritz pair (theta ~ sigma^2, y
            unit) has ``rho^2 <= residual_tol * theta^2``, > 0 (None: 1e-4). Some
            eigenvalue of ``P P^T`` then lies within ``rho`` of theta, and within about
            ``rho^2 / gap`` when theta approximates an eigenvalue a gap above the next.
        block_size: matrix-free: the block size of the shared Krylov space, >= 1
            (None: 8).
        krylov_steps: matrix-free: block Krylov iterations, >= 0 (None: 2; the space
            has ``block_size * (krylov_steps + 1)`` directions).
        probes: matrix-free: Hutchinson probes for the part of ``||P_l||_F^2`` off Q,
            >= 1 (None: 24).
        krylov_products: matrix-free: how many products nearest the output get all
            ``krylov_steps`` and all ``probes`` (raised to ``lanczos_products`` if
            below it), >= 1; None: every product for a network with residual blocks
            (residual products stay near isometries, whose singular subspaces do not
            settle with depth, which the deep products' shortcut assumes), else 32.
        lanczos_products: matrix-free: how many products nearest the output Lanczos
            refines, >= 0 (None: 8).
        lanczos_steps: matrix-free: Lanczos steps for those, >= 1 (None: 6).
        deep_probes: matrix-free: Hutchinson probes for the deeper products, >= 1
            (None: 4; at most ``probes`` are used: they are the first near probes,
            re-projected).
        blocks, train: as :func:`output_sweep`.
        key: the dropout key for ``train=True``.

    Returns:
        An :class:`OutputNorms`; from ``method="exact"`` its ``mean_sq_rel_err`` is all
        0 (exact).

    Raises:
        ValueError: for an unknown ``method``, an option of the other method, an
            option out of range, ``probe_key`` not a PRNG key (None or an int seed
            included), ``key`` not a PRNG key or None, ``x`` not one float example
            (the message shows the ``vmap``), params of another network,
            ``train``/``blocks`` not a bool, or ``blocks=False`` with a repeat layer
            whose block has several layers (:func:`layer_jacobians`).

    References:
        Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace
        Estimation", https://arxiv.org/abs/2010.09649; Musco & Musco 2015, "Randomized
        Block Krylov Methods for Stronger and Faster Approximate Singular Value
        Decomposition", https://arxiv.org/abs/1504.05477; Halko, Martinsson & Tropp
        2011, "Finding Structure with Randomness", https://arxiv.org/abs/0909.4061.
    """
    _checks.choice("method", method, METHODS)
    _checks.prng_key("probe_key", probe_key)
    check_sweep_args("output_norms", net, params, x, blocks, train, key)
    given = dict(
        min_lanczos_steps=min_lanczos_steps,
        max_lanczos_steps=max_lanczos_steps,
        residual_tol=residual_tol,
        block_size=block_size,
        krylov_steps=krylov_steps,
        probes=probes,
        krylov_products=krylov_products,
        lanczos_products=lanczos_products,
        lanczos_steps=lanczos_steps,
        deep_probes=deep_probes,
    )
    opts = _options(method, given)
    _check_options(method, opts)
    run = _exact_norms if method == "exact" else matrix_free_norms
    sn, ms, err, bad_h = run(
        net, params, x, probe_key, blocks=blocks, train=train, key=key, **opts
    )
    bad_out = jax.vmap(lambda *v: bad_values(v))(sn, ms, err)
    rec, nan = product_record(bad_h, bad_out)
    sn, ms, err = (jnp.where(nan, jnp.nan, v) for v in (sn, ms, err))
    return OutputNorms(sn, ms, err, rec)


def _exact_norms(
    net,
    params,
    x,
    probe_key,
    *,
    blocks,
    train,
    key,
    min_lanczos_steps,
    max_lanczos_steps,
    residual_tol,
):
    """The exact method of :func:`output_norms` (arguments validated there): (log
    spectral norms, log mean squares, their relative errors (0), ``(L+1,)`` bool: block
    output ``h_k`` non-finite)."""

    def init(m):
        return unit(jax.random.normal(probe_key, m.shape[:1], m.dtype)), probe_key

    def emit(r, inv, s, state):  # inside the sweep: freed once summarised
        # m = r * inv has sum|m| = 1: its squared Frobenius norm lies in [1 / size, 1]
        fro2 = jnp.sum(jnp.square(r * inv))
        u, k = state
        k, kg = jax.random.split(k)
        g = jax.random.normal(kg, u.shape, u.dtype)
        g = g - jnp.vdot(g, u) * u  # a fresh random direction, orthogonal to u
        u = unit(u + g / jnp.maximum(norm2(g), jnp.finfo(u.dtype).tiny))
        lam, u = lanczos_left(
            r, inv, u, min_lanczos_steps, max_lanczos_steps, residual_tol
        )
        log_ms = 2 * s + jnp.log(fro2) - math.log(min(r.shape))
        return (s + 0.5 * safe_log(lam), log_ms), (u, k)

    ys, _, _, bad_h = sweep(net, params, x, blocks, train, key, emit, init)
    sn, ms = unchunk(ys)
    return sn, ms, jnp.zeros_like(ms), bad_h
