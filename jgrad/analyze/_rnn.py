"""Step-to-step Jacobians of recurrent cells, their products over time and per-time-step
gradient norms (Lyapunov exponents and the Pascanu bound: :mod:`jgrad.analyze._rnn_rates`).

The state s_t is the flattened carry: ``h_t`` for the vanilla RNN and GRU, ``[h_t, c_t]``
(h first) for the LSTM, so ``n = H`` or ``2H``. The step Jacobian is
``J_t = d s_t / d s_{t-1}`` at the states of the actual forward pass, with the input x_t
held fixed.

Back-propagation through time multiplies the output gradient by ``d s_T / d s_t =
J_T ... J_{t+1}``; when its norm decays (grows) exponentially in T - t the gradient vanishes
(explodes). Its growth rates (Lyapunov exponents) and Pascanu et al.'s bound on it are in
:mod:`jgrad.analyze._rnn_rates`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad.analyze._logspace import (
    LogMatrix,
    accumulate_dtype,
    finite_shift,
    safe_div,
    safe_log,
    vec_norm,
)
from jgrad.analyze._precision import full_precision
from jgrad.analyze._products import output_products
from jgrad.rnn._cell import Cell, LSTMState, carry_like_step
from jgrad.rnn._unroll import _validate

__all__ = [
    "flatten_carry",
    "unflatten_carry",
    "rnn_step_jacobians",
    "rnn_jacobian_products",
    "rnn_grad_norms",
    "TimeGradFlow",
]


def flatten_carry(carry: Any) -> jax.Array:
    """The state vector s of a carry: ``h``, or ``[h, c]`` for an ``LSTMState``."""
    if isinstance(carry, LSTMState):
        return jnp.concatenate([carry.h, carry.c], axis=-1)
    return carry


def unflatten_carry(cell: Cell, s: jax.Array) -> Any:
    """Inverse of :func:`flatten_carry` for ``cell``."""
    if cell.kind == "lstm":
        return LSTMState(s[..., : cell.hidden], s[..., cell.hidden :])
    return s


def _states(cell, params, xs, carry0):
    """(xp (T, G), previous states (T, n), next states (T, n)), validated."""
    _validate(cell, params, xs, carry0, None, 1, None, "value")
    carry0 = carry_like_step(params, carry0, xs)
    xp = cell.input_proj(params, xs)

    def body(c, xp_t):
        new, _ = cell.step(params, c, xp_t)
        return new, new

    _, carries = jax.lax.scan(body, carry0, xp)  # unroll's loop, reusing xp
    s_next = flatten_carry(carries)
    s0 = flatten_carry(carry0)
    s_prev = jnp.concatenate([s0[None], s_next[:-1]], axis=0)
    return xp, s_prev, s_next


def step_fn(cell, params):
    def f(s, xp_t):
        new, _ = cell.step(params, unflatten_carry(cell, s), xp_t)
        return flatten_carry(new)

    return f


def _warn_nonfinite(values: jax.Array, what: str) -> None:
    """Warns naming the first non-finite step when the values are concrete (outside jit);
    under jit the non-finite entries are the data the caller gets."""
    try:
        bad = jnp.any(~jnp.isfinite(values), axis=tuple(range(1, values.ndim)))
        if bool(jnp.any(bad)):
            t = int(jnp.argmax(bad))
            warnings.warn(
                f"{what}: non-finite values first at step {t + 1} (1-based); the states "
                "overflowed or the inputs hold NaN/inf.",
                RuntimeWarning,
                stacklevel=3,
            )
    except jax.errors.ConcretizationTypeError:
        pass


@full_precision
def rnn_step_jacobians(
    cell: Cell, params: dict, xs: jax.Array, carry0: Any
) -> jax.Array:
    """Step Jacobians ``J_t = d s_t / d s_{t-1}`` of the flattened carry, t = 1..T.

    The states come from one forward pass (``unroll(return_carries=True)``); the Jacobians
    are then computed for all steps in parallel (``vmap`` over t of ``jax.jacfwd`` of one
    step), not in a sequential loop.

    Args:
        cell: a ``jgrad.rnn`` cell.
        params: its params.
        xs: ``(T, in_dim)`` one sequence (vmap for a batch), T >= 1.
        carry0: the initial carry, like ``cell.init_carry()``.

    Returns:
        ``(T, n, n)`` with n = H (vanilla, GRU) or 2H (LSTM, state ``[h, c]``). Outside
        ``jit``, a non-finite state or Jacobian raises a ``RuntimeWarning`` naming the
        first such step.

    Examples:
        >>> import jax, jgrad
        >>> cell = jgrad.rnn.lstm(4)
        >>> params = cell.init(jax.random.key(0), 3)
        >>> xs = jax.random.normal(jax.random.key(1), (6, 3))
        >>> jgrad.analyze.rnn_step_jacobians(cell, params, xs, cell.init_carry()).shape
        (6, 8, 8)
    """
    xp, s_prev, s_next = _states(cell, params, xs, carry0)
    jac = jax.vmap(jax.jacfwd(step_fn(cell, params)))(s_prev, xp)
    _warn_nonfinite(
        jnp.concatenate([s_next, jac.reshape(jac.shape[0], -1)], axis=1),
        "rnn_step_jacobians",
    )
    return jac


@full_precision
def rnn_jacobian_products(
    cell: Cell,
    params: dict,
    xs: jax.Array,
    carry0: Any,
    *,
    parallel: bool = False,
    accumulate: str | None = None,
) -> LogMatrix:
    """``d s_T / d s_t = J_T ... J_{t+1}`` for every t = 0..T-1, in log space.

    Args:
        cell, params, xs, carry0: as :func:`rnn_step_jacobians`.
        parallel: combine with ``lax.associative_scan`` (O(log T) depth, about twice the
            flops; each partial product is rescaled, so it is as stable as the sequential
            reverse scan used by default).
        accumulate: as :func:`jgrad.analyze.output_products` (``"float64"`` accumulates
            the float32 step Jacobians' products in float64; needs 64-bit JAX).

    Returns:
        A stacked :class:`LogMatrix`: ``matrix`` ``(T, n, n)`` and ``log_scale`` ``(T,)``,
        entry t being ``d s_T / d s_t``. ``jgrad.analyze.log_singular_values`` of it gives
        every spectrum; ``log_scale`` is the log Frobenius norm.
    """
    dtype = accumulate_dtype(accumulate)
    jac = rnn_step_jacobians(cell, params, xs, carry0)
    if dtype is not None:
        jac = jac.astype(dtype)
    return output_products(jac, parallel=parallel)


class TimeGradFlow(NamedTuple):
    """Per-time-step gradient norms ``||dL/ds_t||`` from one backward pass.

    Attributes:
        log10_norm: ``(T+1,)`` log10 ||dL/ds_t|| for t = 0..T (t = 0 the initial carry),
            computed with a rescaled cotangent so it never underflows; ``-inf`` only for an
            exactly zero gradient.
        raw_norm: ``(T+1,)`` the same norms from the plain float backward pass (what
            ``jax.grad`` gives); 0 where it underflowed.
        underflow: ``(T+1,)`` bool, the plain gradient is exactly zero though the stable
            norm is finite.
        loss: the scalar loss.
    """

    log10_norm: jax.Array
    raw_norm: jax.Array
    underflow: jax.Array
    loss: jax.Array


@full_precision
def rnn_grad_norms(
    cell: Cell,
    params: dict,
    xs: jax.Array,
    carry0: Any,
    loss_fn: Callable[[jax.Array], jax.Array],
) -> TimeGradFlow:
    """``||dL/ds_t||`` for every time step, from one backward pass, in log space.

    ``dL/ds_t`` is the total derivative of the loss with respect to the state after step t
    (the carry cotangent of the backward scan): the direct term through the output
    ``y_t = h_t`` plus everything that flows back from later steps. Its decay with T - t is
    the vanishing gradient through time that the issue trackers of every RNN library ask to
    see; here it is reported even where float32 underflows to 0.

    Args:
        cell, params, xs, carry0: as :func:`rnn_step_jacobians`.
        loss_fn: ``loss_fn(ys) -> scalar`` on the ``(T, H)`` outputs (close over targets).

    Returns:
        A :class:`TimeGradFlow`.
    """
    xp, s_prev, s_next = _states(cell, params, xs, carry0)
    _warn_nonfinite(s_next, "rnn_grad_norms")
    f = step_fn(cell, params)
    H = cell.hidden
    ys = s_next[:, :H]
    loss, gy = jax.value_and_grad(loss_fn)(ys)
    n = s_next.shape[1]
    direct = jnp.zeros((gy.shape[0], n), gy.dtype).at[:, :H].set(gy)

    def body(carry, inp):
        u, log_s, raw = carry  # dL/ds_t = exp(log_s) * u; raw = plain cotangent
        d_t, s_prev_t, xp_t = inp
        total_log = log_s  # u has unit norm (or is 0)
        # dL/ds_t = direct_t + (back-propagated part); combine in log space.
        nd = vec_norm(d_t)
        m = jnp.maximum(total_log, safe_log(nd))
        m_safe = finite_shift(m)
        w = u * jnp.exp(
            jnp.where(jnp.isfinite(total_log), total_log - m_safe, -jnp.inf)
        )
        # d_t / m would overflow when m < log(tiny); scale the unit vector instead.
        d_unit = safe_div(d_t, nd)
        w = w + d_unit * jnp.exp(jnp.where(nd > 0, safe_log(nd) - m_safe, -jnp.inf))
        nw = vec_norm(w)
        u_t = jnp.where(nw > 0, safe_div(w, nw), w)
        log_t = jnp.where(jnp.isfinite(m), m_safe + safe_log(nw), -jnp.inf)
        raw_t = raw + d_t
        out = (log_t, vec_norm(raw_t), jnp.all(raw_t == 0))
        # Pull back through step t to dL/ds_{t-1}.
        _, pull = jax.vjp(lambda s: f(s, xp_t), s_prev_t)
        (v,) = pull(u_t)
        nv = vec_norm(v)
        u_prev = jnp.where(nv > 0, safe_div(v, nv), v)
        (raw_prev,) = pull(raw_t)
        return (u_prev, log_t + safe_log(nv), raw_prev), out

    z = jnp.zeros(n, direct.dtype)
    init = (z, jnp.asarray(-jnp.inf, direct.dtype), z)
    (u0, log0, raw0), (logs, raws, zeros) = jax.lax.scan(
        body, init, (direct, s_prev, xp), reverse=True
    )
    del u0
    ln10 = jnp.log(jnp.asarray(10.0, logs.dtype))
    log10 = jnp.concatenate([log0[None], logs]) / ln10
    raw_norm = jnp.concatenate([vec_norm(raw0)[None], raws])
    zero = jnp.concatenate([jnp.all(raw0 == 0)[None], zeros])
    return TimeGradFlow(
        log10_norm=log10,
        raw_norm=raw_norm,
        underflow=zero & jnp.isfinite(log10),
        loss=loss,
    )
