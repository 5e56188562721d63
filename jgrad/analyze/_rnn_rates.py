"""Growth rates of recurrent Jacobian products: input-driven Lyapunov exponents (QR
re-orthonormalisation) and Pascanu et al.'s bound next to the measured rate.

The Lyapunov exponents are the asymptotic growth rates of the singular values of
``d s_T / d s_t``: a largest exponent below 0 means gradients vanish exponentially, above
0 that some direction explodes. Pascanu, Mikolov & Bengio (2013) bound every step
Jacobian of ``h_t = phi(W h_{t-1} + ...)`` by ``gamma ||W||_2``, ``gamma = sup|phi'|``.

References:
    Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks",
    ICML 2013, arXiv:1211.5063.
    Vogt, Puelma Touzel, Shlizerman & Lajoie, "On Lyapunov exponents for RNNs: understanding
    information propagation using dynamical systems tools", Front. Appl. Math. Stat. 2022,
    arXiv:2006.14123.
    Engelken, Wolf & Abbott, "Lyapunov spectra of chaotic recurrent neural networks", Phys.
    Rev. Research 5, 2023, arXiv:2006.02427.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze._logspace import (
    accumulate_dtype,
)
from jgrad.analyze._nonfinite import (
    NonFinite,
    all_finite,
    first_true,
    last_true,
    nonfinite_record,
    reports_nonfinite,
)
from jgrad.analyze._precision import full_precision
from jgrad.analyze._product_spectra import log_singular_values
from jgrad.analyze._rnn import _time_products, flatten_carry, step_fn
from jgrad.rnn._cell import Cell, carry_like_step
from jgrad.rnn._unroll import _validate

__all__ = ["Lyapunov", "lyapunov_spectrum", "PascanuBound", "pascanu_bound"]


class Lyapunov(NamedTuple):
    """Input-driven Lyapunov exponents and where they went non-finite.

    Attributes:
        exponents: ``(k,)`` exponents per step, natural log, descending; all NaN when
            ``nonfinite`` is set (``-inf`` only for a direction the dynamics map exactly
            to zero, such as a dead ReLU unit's).
        nonfinite: a :class:`jgrad.analyze.NonFinite` over steps t = 1..T:
            ``forward`` the first step whose state s_t is non-finite, ``backward`` the
            first step whose QR factor ``log|diag R_t|`` is NaN or ``+inf`` (the
            running sum then is too); ``-1`` for none.
    """

    exponents: jax.Array
    nonfinite: NonFinite


@reports_nonfinite("step")
@full_precision
def lyapunov_spectrum(
    cell: Cell,
    params: dict,
    xs: jax.Array,
    carry0: Any,
    *,
    k: int | None = None,
    warmup: int = 0,
    accumulate: str | None = None,
) -> Lyapunov:
    """Input-driven Lyapunov exponents of a recurrent cell, by QR re-orthonormalisation.

    An orthonormal ``(n, k)`` basis Q is pushed through the step Jacobians inside one
    ``lax.scan`` (k forward-mode JVPs per step, no explicit Jacobian), re-orthonormalised
    each step (``J_t Q_{t-1} = Q_t R_t``), and the exponents are the time averages of
    ``log |diag R_t|`` after ``warmup`` steps (Benettin et al. 1980). They are the growth
    rates, per step, of the singular values of ``d s_T / d s_t``: a largest exponent below 0
    means gradients through time vanish exponentially at that rate, above 0 that they explode
    (chaotic dynamics). The sum of all n exponents is the mean of ``log|det J_t|``. Pure and
    jit-able: ``jax.vmap`` over sequences, initial carries or params for ensembles.

    Args:
        cell, params, xs, carry0: as :func:`rnn_step_jacobians`.
        k: number of exponents (the k largest); default n, the full spectrum.
        warmup: steps to run before averaging (the basis aligns with the dynamics first).
        accumulate: dtype of the basis, the QR and the running sums: None (the carry's),
            ``"float32"`` or ``"float64"`` (needs 64-bit JAX). The JVPs run in the
            model's dtype; with ``"float64"`` the orthonormalisation and the sum over T
            steps add no rounding of their own (float32 sums over T = 10^4 steps lose about
            T * 6e-8 relative).

    Returns:
        A :class:`Lyapunov`: ``exponents`` ``(k,)`` per step, natural log, descending,
        and the ``nonfinite`` record. A NaN or inf in ``xs``, ``params`` or an
        overflowed state makes every exponent NaN; called eagerly, the function then
        also warns (``NonFiniteWarning``) naming the step; under ``jit``/``vmap`` the
        record is the report.

    Raises:
        ValueError: as :func:`jgrad.analyze.rnn_step_jacobians`; ``k`` not in [1, n];
            ``warmup`` not an int in [0, T); an unknown ``accumulate``.

    Examples:
        >>> import jax, jgrad
        >>> cell = jgrad.rnn.vanilla(16, weight_var=0.5)
        >>> params = cell.init(jax.random.key(0), 2)
        >>> xs = jax.random.normal(jax.random.key(1), (200, 2))
        >>> lam = jgrad.analyze.lyapunov_spectrum(cell, params, xs, cell.init_carry(), k=3)
        >>> lam.exponents.shape, bool(lam.exponents[0] < 0), int(lam.nonfinite.forward)
        ((3,), True, -1)
    """
    _validate(cell, params, xs, carry0, None, 1, None, "value")
    T = xs.shape[0]
    n = flatten_carry(carry0).shape[-1]
    k = n if k is None else _checks.positive_int("k", k)
    if k > n:
        raise ValueError(
            f"`k` must be at most the state size n = {n}, got {k}. Use k=None for all."
        )
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < T:
        raise ValueError(
            f"`warmup` must be an int in [0, T) = [0, {T}), got {warmup!r}. Leave at least "
            "one step to average over."
        )
    dtype = accumulate_dtype(accumulate)
    carry0 = carry_like_step(params, carry0, xs)
    xp = cell.input_proj(params, xs)
    f = step_fn(cell, params)
    s0 = flatten_carry(carry0)
    acc_dtype = s0.dtype if dtype is None else dtype
    q0 = jnp.eye(n, k, dtype=acc_dtype)

    def body(carry, inp):
        s, q, acc = carry
        xp_t, t = inp
        s_new, jq = jax.vmap(
            lambda v: jax.jvp(lambda z: f(z, xp_t), (s,), (v.astype(s.dtype),)),
            in_axes=1,
            out_axes=(None, 1),
        )(q)
        # A JVP at a non-finite state or input is NaN (a ReLU's derivative at NaN
        # would read 0 and give a -inf exponent, an exact zero it is not).
        at_bad = ~(all_finite(s) & all_finite(s_new) & all_finite(xp_t))
        jq = jnp.where(at_bad, jnp.nan, jq)
        q_new, r = jnp.linalg.qr(jq.astype(acc_dtype))
        d = jnp.log(jnp.abs(jnp.diagonal(r)))
        acc = acc + jnp.where(t >= warmup, d, 0.0)
        flags = (
            ~jnp.all(jnp.isfinite(s_new)),
            jnp.any(jnp.isnan(d) | (d == jnp.inf)),
        )
        return (s_new, q_new, acc), flags

    (_, _, acc), (bad_s, bad_d) = jax.lax.scan(
        body, (s0, q0, jnp.zeros(k, acc_dtype)), (xp, jnp.arange(T))
    )
    steps = jnp.arange(1, T + 1)
    record = nonfinite_record(first_true(bad_s, steps), first_true(bad_d, steps))
    lam = jnp.sort(acc / (T - warmup))[::-1]
    return Lyapunov(jnp.where(record.found, jnp.nan, lam), record)


class PascanuBound(NamedTuple):
    """The Pascanu et al. (2013) condition for a vanilla RNN, next to the measured rate.

    Two units: ``bound`` and ``measured_factor`` are per-step growth factors (the
    paper's); ``log_bound`` and ``measured_log_rate`` are the same two numbers as natural
    logs per step, the unit of :func:`lyapunov_spectrum`'s exponents (a largest
    Lyapunov exponent is at most ``log_bound``, and ``measured_log_rate`` estimates it).

    Attributes:
        gamma: ``sup |phi'|`` of the activation.
        w_hh_norm: ``||W_hh||_2``.
        bound: ``gamma * ||W_hh||_2``, a factor per step; every step Jacobian has norm
            at most this.
        log_bound: ``log(gamma * ||W_hh||_2)``, natural log per step.
        vanishing_guaranteed: ``bound < 1`` (sufficient for vanishing gradients).
        exploding_possible: ``||W_hh||_2 > 1 / gamma`` (necessary for exploding gradients).
        measured_factor: the fitted growth factor per step of ``||d s_T / d s_t||_2``,
            ``exp(measured_log_rate)``; at most ``bound``.
        measured_log_rate: the least-squares slope of ``log_norms`` against ``T - t``
            (the exactly zero products, ``-inf``, left out), natural log per step; at
            most ``log_bound``. NaN if any ``log_norms`` entry is NaN (and where fewer
            than two entries are finite: a line through one point has no slope);
            ``-inf`` if every product is exactly zero.
        log_norms: ``(T,)`` natural log ``||d s_T / d s_t||_2`` for t = 0..T-1.
        nonfinite: a :class:`jgrad.analyze.NonFinite`: ``forward`` the first step t =
            1..T whose state s_t is non-finite, ``backward`` the first t met going
            backwards from T - 1 whose ``log_norms`` entry is NaN or ``+inf``; ``-1`` for
            none.
    """

    gamma: float
    w_hh_norm: jax.Array
    bound: jax.Array
    log_bound: jax.Array
    vanishing_guaranteed: jax.Array
    exploding_possible: jax.Array
    measured_factor: jax.Array
    measured_log_rate: jax.Array
    log_norms: jax.Array
    nonfinite: NonFinite


@reports_nonfinite("step")
@full_precision
def pascanu_bound(cell: Cell, params: dict, xs: jax.Array, carry0: Any) -> PascanuBound:
    """Pascanu et al.'s sufficient condition for vanishing gradients, and the measurement.

    For ``h_t = phi(x_t W_ih + b + h_{t-1} W_hh)``, ``J_t = diag(phi'(a_t)) W_hh^T`` so
    ``||J_t||_2 <= gamma ||W_hh||_2`` and ``||d s_T / d s_t|| <= (gamma ||W_hh||_2)^(T-t)``.

    Args:
        cell: a ``jgrad.rnn.vanilla`` cell (the bound is stated for it only).
        params, xs, carry0: as :func:`jgrad.analyze.rnn_step_jacobians`.

    Returns:
        A :class:`PascanuBound`. A NaN or inf in ``xs``, ``params`` or an overflowed
        state gives NaN ``log_norms`` and a NaN measured rate, located by ``nonfinite``;
        called eagerly, the function then also warns (``NonFiniteWarning``).

    Raises:
        ValueError: a cell that is not a vanilla RNN; as
            :func:`jgrad.analyze.rnn_step_jacobians`.

    References:
        Pascanu, Mikolov & Bengio, ICML 2013, arXiv:1211.5063, section 3.1.
    """
    _checks.cell("cell", cell)
    if cell.kind != "vanilla":
        raise ValueError(
            f"`cell` must be a vanilla RNN for the Pascanu bound, got a {cell.kind} cell. "
            "For gated cells use rnn_jacobian_products or lyapunov_spectrum."
        )
    prods, record = _time_products(cell, params, xs, carry0)
    gamma = float(cell.options["gamma"])
    w_norm = jnp.linalg.norm(params["w_hh"], ord=2)
    bound = gamma * w_norm
    log_norms = log_singular_values(prods)[:, 0]
    T = log_norms.shape[0]
    dist = (T - jnp.arange(T)).astype(log_norms.dtype)  # T - t for t = 0..T-1
    ok = jnp.isfinite(log_norms)
    count = jnp.sum(ok).astype(log_norms.dtype)
    xm = jnp.sum(jnp.where(ok, dist, 0.0)) / count
    ym = jnp.sum(jnp.where(ok, log_norms, 0.0)) / count
    slope = jnp.sum(jnp.where(ok, (dist - xm) * (log_norms - ym), 0.0)) / jnp.sum(
        jnp.where(ok, (dist - xm) ** 2, 0.0)
    )
    bad = jnp.isnan(log_norms) | (log_norms == jnp.inf)
    # Every product exactly zero: the gradient vanishes at once (rate -inf, factor 0).
    slope = jnp.where(count == 0, -jnp.inf, slope)
    slope = jnp.where(jnp.any(bad), jnp.nan, slope)
    return PascanuBound(
        gamma=gamma,
        w_hh_norm=w_norm,
        bound=bound,
        log_bound=jnp.log(bound),
        vanishing_guaranteed=bound < 1,
        exploding_possible=w_norm > 1 / gamma,
        measured_factor=jnp.exp(slope),
        measured_log_rate=slope,
        log_norms=log_norms,
        nonfinite=nonfinite_record(record.forward, last_true(bad)),
    )
