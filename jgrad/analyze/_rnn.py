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
from jgrad.analyze._nonfinite import (
    NonFinite,
    all_finite,
    first_true,
    last_true,
    nonfinite_record,
    reports_nonfinite,
    warn_nonfinite,
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


def _rows_bad(a: jax.Array) -> jax.Array:
    """(T,) bool, row t of ``a`` (T, ...) holds a NaN or an inf."""
    return ~jnp.all(jnp.isfinite(a), axis=tuple(range(1, a.ndim)))


def _step_jacobians(cell, params, xs, carry0):
    """(J (T, n, n), s_prev, s_next, record): J_t is NaN wherever a state or input it
    is evaluated at is non-finite (a ReLU's derivative at NaN would read 0).
    Record: forward = first step t = 1..T whose state s_t is non-finite; backward =
    first step whose Jacobian went non-finite at finite states and inputs."""
    xp, s_prev, s_next = _states(cell, params, xs, carry0)
    jac = jax.vmap(jax.jacfwd(step_fn(cell, params)))(s_prev, xp)
    at_bad = _rows_bad(s_prev) | _rows_bad(s_next) | _rows_bad(xp)
    jac = jnp.where(at_bad[:, None, None], jnp.nan, jac)
    steps = jnp.arange(1, xs.shape[0] + 1)
    record = nonfinite_record(
        first_true(_rows_bad(s_next), steps),
        first_true(_rows_bad(jac) & ~at_bad, steps),
    )
    return jac, s_prev, s_next, record


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
        params: its params, with the keys and shapes ``cell.init(key, in_dim)`` gives.
        xs: ``(T, in_dim)`` one sequence of floats (vmap for a batch), T >= 1.
        carry0: the initial carry, like ``cell.init_carry()``.

    Returns:
        ``(T, n, n)`` with n = H (vanilla, GRU) or 2H (LSTM, state ``[h, c]``). ``J_t``
        is all NaN when ``s_{t-1}``, ``s_t`` or the input of step t is non-finite (NaN
        in ``xs`` or ``params``, or an overflowed state), and so is every later step's
        whose state stays non-finite. Called eagerly, it then warns
        (``NonFiniteWarning``) naming the first such step (1-based); under ``jit``/
        ``vmap`` the NaN entries are the report.

    Raises:
        ValueError: ``cell`` not a Cell; ``xs`` not a float array of shape
            ``(T, in_dim)``; ``params`` not of this cell's keys and shapes;
            ``carry0`` not like ``cell.init_carry()``.

    Examples:
        >>> import jax, jgrad
        >>> cell = jgrad.rnn.lstm(4)
        >>> params = cell.init(jax.random.key(0), 3)
        >>> xs = jax.random.normal(jax.random.key(1), (6, 3))
        >>> jgrad.analyze.rnn_step_jacobians(cell, params, xs, cell.init_carry()).shape
        (6, 8, 8)
    """
    jac, _, _, record = _step_jacobians(cell, params, xs, carry0)
    warn_nonfinite("rnn_step_jacobians", record, "step")
    return jac


def _time_products(cell, params, xs, carry0, parallel=False, accumulate=None):
    """(products, record of the step Jacobians); products NaN wherever a factor is."""
    dtype = accumulate_dtype(accumulate)
    jac, _, _, record = _step_jacobians(cell, params, xs, carry0)
    bad_j = _rows_bad(jac)
    if dtype is not None:
        jac = jac.astype(dtype)
    prods = output_products(jac, parallel=parallel)
    # Entry t = J_T ... J_(t+1) is NaN as soon as any factor is: a suffix "any".
    bad = jnp.flip(jnp.cumsum(jnp.flip(bad_j.astype(jnp.int32)))) > 0
    prods = LogMatrix(
        jnp.where(bad[:, None, None], jnp.nan, prods.matrix),
        jnp.where(bad, jnp.nan, prods.log_scale),
    )
    return prods, record


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
        every spectrum; ``log_scale`` is the log Frobenius norm (``-inf`` only for an
        exactly zero product). Entry t is NaN (matrix and ``log_scale``) when any of
        its factors ``J_{t+1}..J_T`` is non-finite (see :func:`rnn_step_jacobians`,
        which also says when an eager call warns).

    Raises:
        ValueError: as :func:`rnn_step_jacobians`; an unknown ``accumulate``.
    """
    prods, record = _time_products(cell, params, xs, carry0, parallel, accumulate)
    warn_nonfinite("rnn_jacobian_products", record, "step")
    return prods


def _log(x):
    """Natural log of a norm: ``-inf`` for exactly 0, NaN for NaN (``safe_log`` alone
    would give ``-inf`` for a NaN norm, reading it as a vanished gradient)."""
    return jnp.where(jnp.isnan(x), jnp.nan, safe_log(x))


class TimeGradFlow(NamedTuple):
    """Per-time-step gradient norms ``||dL/ds_t||`` from one backward pass.

    Attributes:
        log10_norm: ``(T+1,)`` log10 ||dL/ds_t|| for t = 0..T (t = 0 the initial carry),
            computed with a rescaled cotangent so it never underflows; ``-inf`` only for an
            exactly zero gradient; NaN for a gradient computed from a NaN or inf.
        raw_norm: ``(T+1,)`` the same norms from the plain float backward pass (what
            ``jax.grad`` gives); 0 where it underflowed.
        underflow: ``(T+1,)`` bool, the plain gradient is exactly zero though the stable
            norm is finite (False where the norm is NaN).
        loss: the scalar loss.
        nonfinite: a :class:`jgrad.analyze.NonFinite`, indexed as ``log10_norm`` (t =
            0..T): ``forward`` the first t whose state s_t is non-finite (0: the initial
            carry), ``backward`` the first t met going backwards in time (from T) whose
            ``log10_norm`` is NaN or ``+inf`` (every later one being finite or an exact
            zero); ``-1`` for none. None only when built by hand.
    """

    log10_norm: jax.Array
    raw_norm: jax.Array
    underflow: jax.Array
    loss: jax.Array
    nonfinite: NonFinite | None = None


@reports_nonfinite("step")
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
        A :class:`TimeGradFlow`. A NaN or inf (in ``xs``, ``params``, an overflowed
        state or the loss) gives NaN norms, never ``-inf``, and is located by its
        ``nonfinite`` record; called eagerly, the function then also warns
        (``NonFiniteWarning``); under ``jit``/``vmap`` the record is the report.

    Raises:
        ValueError: as :func:`rnn_step_jacobians`.
    """
    xp, s_prev, s_next = _states(cell, params, xs, carry0)
    f = step_fn(cell, params)
    H = cell.hidden
    ys = s_next[:, :H]
    loss, gy = jax.value_and_grad(loss_fn)(ys)
    n = s_next.shape[1]
    direct = jnp.zeros((gy.shape[0], n), gy.dtype).at[:, :H].set(gy)

    def body(carry, inp):
        u, log_s, raw = carry  # dL/ds_t = exp(log_s) * u; raw = plain cotangent
        d_t, s_prev_t, s_t, xp_t = inp
        # dL/ds_t = direct_t + (back-propagated part); combine in log space.
        nd = vec_norm(d_t)
        m = jnp.maximum(log_s, _log(nd))  # NaN if either is
        m_safe = finite_shift(m)
        w = u * jnp.exp(jnp.where(jnp.isfinite(log_s), log_s - m_safe, -jnp.inf))
        w = jnp.where(jnp.isnan(log_s), jnp.nan, w)
        # d_t / m would overflow when m < log(tiny); scale the unit vector instead.
        d_unit = safe_div(d_t, nd)
        w = w + d_unit * jnp.exp(jnp.where(nd > 0, safe_log(nd) - m_safe, -jnp.inf))
        nw = vec_norm(w)
        u_t = jnp.where(nw > 0, safe_div(w, nw), w)
        # -inf only for an exact zero; NaN (or +inf) carried on as such.
        log_t = jnp.where(jnp.isfinite(m), m_safe + _log(nw), m)
        raw_t = raw + d_t
        out = (log_t, vec_norm(raw_t), jnp.all(raw_t == 0))
        # Pull back through step t to dL/ds_{t-1}.
        _, pull = jax.vjp(lambda s: f(s, xp_t), s_prev_t)
        (v,) = pull(u_t)
        (raw_prev,) = pull(raw_t)
        # A step taken at a non-finite state or input has no gradient to report (a
        # ReLU's derivative at NaN reads 0): NaN, not a vanished gradient.
        at_bad = ~(all_finite(s_prev_t) & all_finite(s_t) & all_finite(xp_t))
        v = jnp.where(at_bad, jnp.nan, v)
        raw_prev = jnp.where(at_bad, jnp.nan, raw_prev)
        nv = vec_norm(v)
        u_prev = jnp.where(nv > 0, safe_div(v, nv), v)
        return (u_prev, log_t + _log(nv), raw_prev), out

    z = jnp.zeros(n, direct.dtype)
    init = (z, jnp.asarray(-jnp.inf, direct.dtype), z)
    (u0, log0, raw0), (logs, raws, zeros) = jax.lax.scan(
        body, init, (direct, s_prev, s_next, xp), reverse=True
    )
    del u0
    ln10 = jnp.log(jnp.asarray(10.0, logs.dtype))
    log10 = jnp.concatenate([log0[None], logs]) / ln10
    raw_norm = jnp.concatenate([vec_norm(raw0)[None], raws])
    zero = jnp.concatenate([jnp.all(raw0 == 0)[None], zeros])
    states = jnp.concatenate(
        [flatten_carry(carry_like_step(params, carry0, xs))[None], s_next]
    )
    bad_log = jnp.isnan(log10) | (log10 == jnp.inf)
    return TimeGradFlow(
        log10_norm=log10,
        raw_norm=raw_norm,
        underflow=zero & jnp.isfinite(log10),
        loss=loss,
        nonfinite=nonfinite_record(first_true(_rows_bad(states)), last_true(bad_log)),
    )
