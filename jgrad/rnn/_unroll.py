"""Drivers: ``unroll`` (hoisted input projection + ``lax.scan``), stacks, bidirectional.

Every driver takes ONE sequence ``xs`` of shape ``(T, in_dim)``; ``jax.vmap`` it for batches
(and again for ensembles of models). The input projection ``xs @ w_ih + b`` of all T steps is
one matmul before the scan; the scan body does only the carry-dependent work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import checkify

from jgrad import _checks
from jgrad.rnn._cell import (
    Cell,
    LSTMState,
    carry_like_step,
    check_carry,
    check_params,
    check_xs,
)
from jgrad.rnn._clip import clip_carry_grad

__all__ = ["unroll", "unroll_stack", "bidirectional"]

_BATCH_FIX = (
    "unroll takes ONE sequence (T, in_dim); for a batch (B, T, in_dim) use "
    "jax.vmap(lambda x, c: unroll(cell, params, x, c))(xs, carries)."
)


def _hidden(carry):
    return carry.h if isinstance(carry, LSTMState) else carry


def _validate(cell, params, xs, carry0, seq_length, unroll, grad_clip, grad_clip_mode):
    _checks.cell("cell", cell)
    check_xs(xs)
    shape = jnp.shape(xs)
    _checks.rank("xs", shape, (2,), _BATCH_FIX)
    _checks.time_steps("xs", shape, axis=0)
    in_dim = check_params(cell, params)
    _checks.feature_size("xs", shape, in_dim, layer=f"this {cell.kind} cell")
    check_carry(cell, carry0)
    if seq_length is not None:
        if jnp.ndim(seq_length) != 0:
            raise ValueError(
                f"`seq_length` must be one integer for the one sequence unroll runs, got "
                f"shape {jnp.shape(seq_length)}. For a batch, jax.vmap over unroll with "
                "one length per sequence, or use unroll_batch(..., seq_length=lengths)."
            )
        _checks.seq_length("seq_length", seq_length, shape[0])
    if not isinstance(unroll, bool):
        _checks.positive_int("unroll", unroll)
    if grad_clip is not None:
        _checks.positive("grad_clip", grad_clip)
    _checks.choice("grad_clip_mode", grad_clip_mode, ("value", "norm"))


def unroll(
    cell: Cell,
    params: dict,
    xs: jax.Array,
    carry0: Any,
    *,
    return_carries: bool = False,
    reverse: bool = False,
    unroll: int | bool = 1,
    seq_length: int | jax.Array | None = None,
    grad_clip: float | None = None,
    grad_clip_mode: str = "value",
):
    """Runs a cell over one sequence: hoisted input projection, then ``lax.scan``.

    Args:
        cell: a :class:`Cell` (``vanilla``, ``lstm``, ``gru``).
        params: its params (``cell.init(key, in_dim)``).
        xs: (T, in_dim) one sequence; ``jax.vmap`` for batches.
        carry0: initial carry, structured like ``cell.init_carry()``.
        return_carries: also return the carry after every step (analyzers need them).
        reverse: run from the last step to the first (outputs stay in input order).
        unroll: ``lax.scan``'s unroll factor.
        seq_length: number of real steps (the rest of ``xs`` is padding). Padded steps leave
            the carry unchanged and output zeros, so the final carry is the one after the
            last real step; with ``reverse=True`` the reverse pass starts at the last real
            step. Under ``vmap``, give one length per sequence. A concrete length must be
            an integer in [0, T] (checked before tracing); a traced one (under ``jit``
            or ``vmap``) that lies outside [0, T] makes the final carry, ``ys`` and
            ``carries`` of that sequence NaN (reported as data, never clamped), and is
            an error under ``jax.experimental.checkify.checkify``.
        grad_clip: if set, clip the back-propagated dL/ds_t of the carry at every step
            (:func:`clip_carry_grad`: "clip through time"). Changes gradients, not values.
        grad_clip_mode: ``"value"`` (elementwise, Graves 2013) or ``"norm"``.

    Returns:
        ``(final_carry, ys)`` with ``ys`` (T, H), or ``(final_carry, ys, carries)`` with
        every leaf of ``carries`` of shape (T, H) when ``return_carries``.

    Raises:
        ValueError: ``xs`` not a float array or of the wrong rank (with how to vmap),
            T = 0, ``params`` whose keys or shapes differ from ``cell.init``'s, input
            size not matching params, wrong carry structure or shape, a ``seq_length``
            that is not one integer in [0, T], bad ``unroll``/``grad_clip``.

    Examples:
        >>> import jax, jgrad
        >>> cell = jgrad.rnn.lstm(8)
        >>> params = cell.init(jax.random.key(0), 3)
        >>> xs = jax.random.normal(jax.random.key(1), (5, 3))
        >>> final, ys = jgrad.rnn.unroll(cell, params, xs, cell.init_carry())
        >>> ys.shape, final.c.shape
        ((5, 8), (8,))
    """
    _validate(cell, params, xs, carry0, seq_length, unroll, grad_clip, grad_clip_mode)
    carry0 = carry_like_step(params, carry0, xs)
    xp = cell.input_proj(params, xs)
    T = xs.shape[0]

    def body(carry, inp):
        xp_t, t = inp if seq_length is not None else (inp, None)
        new, y = cell.step(params, carry, xp_t)
        if grad_clip is not None:
            new = clip_carry_grad(new, grad_clip, grad_clip_mode)
            y = _hidden(new)
        if seq_length is not None:
            real = t < seq_length
            new = jax.tree.map(lambda a, b: jnp.where(real, a, b), new, carry)
            y = jnp.where(real, y, jnp.zeros_like(y))
        return new, ((y, new) if return_carries else y)

    # The step index is scanned only when a length has to be compared with it.
    inputs = xp if seq_length is None else (xp, jnp.arange(T))
    final, out = lax.scan(body, carry0, inputs, reverse=reverse, unroll=unroll)
    if isinstance(seq_length, jax.core.Tracer):  # concrete ones were checked above
        final, out = length_out_of_range(seq_length, T, (final, out))
    if return_carries:
        ys, carries = out
        return final, ys, carries
    return final, out


def length_out_of_range(seq_length, T: int, outputs):
    """``outputs`` with every floating leaf NaN where the (possibly traced, possibly
    batched) ``seq_length`` lies outside [0, T]: a traced length cannot be checked before
    running, so an impossible one is reported as data instead of being clamped. Under
    ``jax.experimental.checkify.checkify`` it is also an error (``debug_check``)."""
    n = jnp.asarray(seq_length)
    bad = (n < 0) | (n > T)
    checkify.debug_check(
        ~jnp.any(bad),
        f"seq_length must be in [0, T] = [0, {T}], got {{n}}",
        n=n,
    )

    def poison(a):
        if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            return a
        b = jnp.reshape(bad, jnp.shape(bad) + (1,) * (jnp.ndim(a) - jnp.ndim(bad)))
        return jnp.where(b, jnp.asarray(jnp.nan, jnp.result_type(a)), a)

    return jax.tree.map(poison, outputs)


_run = unroll  # `unroll` is also a keyword argument name below


def unroll_stack(
    cells: Sequence[Cell],
    params: Sequence[dict],
    xs: jax.Array,
    carries0: Sequence[Any],
    **kwargs,
):
    """Stacked RNN: layer k runs over the whole output sequence of layer k-1 (as cuDNN
    does), so every layer keeps its hoisted input projection.

    Args:
        cells: one cell per layer.
        params: their params, in order.
        xs: (T, in_dim) one sequence.
        carries0: one initial carry per layer.
        **kwargs: passed to :func:`unroll` for every layer (``return_carries``,
            ``seq_length``, ``reverse``, ``unroll``, ``grad_clip``...).

    Returns:
        ``(finals, ys)`` (``finals`` a tuple, one per layer; ``ys`` the last layer's
        outputs), plus a tuple of per-layer carries when ``return_carries``.
    """
    if not (len(cells) == len(params) == len(carries0)) or not cells:
        raise ValueError(
            f"`cells`, `params` and `carries0` must have the same non-zero length, got "
            f"{len(cells)}, {len(params)} and {len(carries0)}."
        )
    finals, all_carries = [], []
    h = xs
    for cell, p, c0 in zip(cells, params, carries0, strict=True):
        out = unroll(cell, p, h, c0, **kwargs)
        finals.append(out[0])
        h = out[1]
        if kwargs.get("return_carries"):
            all_carries.append(out[2])
    if kwargs.get("return_carries"):
        return tuple(finals), h, tuple(all_carries)
    return tuple(finals), h


def bidirectional(
    cell_fw: Cell,
    cell_bw: Cell,
    params: tuple[dict, dict],
    xs: jax.Array,
    carries0: tuple[Any, Any],
    *,
    seq_length: int | jax.Array | None = None,
    unroll: int | bool = 1,
):
    """Bidirectional RNN: a forward and a reverse pass, outputs concatenated per step.

    Args:
        cell_fw, cell_bw: the two cells.
        params: ``(params_fw, params_bw)``.
        xs: (T, in_dim) one sequence.
        carries0: ``(carry_fw, carry_bw)``.
        seq_length: number of real steps; the reverse pass starts at the last real step.
        unroll: ``lax.scan``'s unroll factor.

    Returns:
        ``((final_fw, final_bw), ys)`` with ``ys`` (T, H_fw + H_bw).

    Raises:
        ValueError: ``params`` or ``carries0`` not a pair (and as :func:`unroll` for
            each direction).
    """
    for name, pair, what in (
        ("params", params, "(params_fw, params_bw)"),
        ("carries0", carries0, "(carry_fw, carry_bw)"),
    ):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            got = (
                f"a {type(pair).__name__} of length {len(pair)}"
                if isinstance(pair, (tuple, list))
                else f"a {type(pair).__name__}"
            )
            raise ValueError(
                f"`{name}` must be a pair {what}, one per direction, got {got}. Pass "
                f"e.g. {name}=({what.strip('()')})."
            )
    f_fw, y_fw = _run(
        cell_fw, params[0], xs, carries0[0], seq_length=seq_length, unroll=unroll
    )
    f_bw, y_bw = _run(
        cell_bw,
        params[1],
        xs,
        carries0[1],
        seq_length=seq_length,
        unroll=unroll,
        reverse=True,
    )
    return (f_fw, f_bw), jnp.concatenate([y_fw, y_bw], axis=-1)
