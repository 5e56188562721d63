"""The training path: a batched unroll whose backward pass is written by hand.

Autodiff of ``lax.scan`` accumulates the recurrent weight gradient with one small
``(H, B) @ (B, G)`` matmul per step inside the backward loop. Here the backward scan only
carries dL/dh (and dL/dc) and emits the gate cotangents dz_t; the weight gradients, and the
input gradient, are then ONE ``(., T*B) @ (T*B, G)`` matmul each after the loop. The
forward pass stores the gate activations, so the backward pass recomputes at most one
``tanh``.

This module validates the arguments and dispatches by cell kind; each cell's forward and
backward passes live in :mod:`jgrad.rnn._fast_lstm`, :mod:`jgrad.rnn._fast_gru` and
:mod:`jgrad.rnn._fast_vanilla`, and padded steps and clipping in
:mod:`jgrad.rnn._fast_mask`.

Being a ``jax.custom_vjp``, this path has no forward-mode derivative: use
:func:`jgrad.rnn.unroll` (plain autodiff) for ``jvp``/``jacfwd`` and the analyzers. Tests
check that both paths give the same gradients.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jgrad import _checks
from jgrad.rnn._cell import Cell, LSTMState, carry_like_step, check_params, check_xs
from jgrad.rnn._fast_gru import gru_core, gru_layer
from jgrad.rnn._fast_lstm import lstm_layer
from jgrad.rnn._fast_vanilla import vanilla_core
from jgrad.rnn._unroll import length_out_of_range
from jgrad.rnn._unroll import unroll as unroll_one

__all__ = ["unroll_batch"]

# unroll_batch's default scan unroll, by backend: the faster in scripts/bench_rnn.py on an
# H100 and on a 2-core CPU (docs/benchmarks.md).
DEFAULT_UNROLL = {"cpu": 1, "accelerator": 4}


def unroll_batch(
    cell: Cell,
    params: dict,
    xs: jax.Array,
    carry0: Any,
    *,
    seq_length: int | jax.Array | None = None,
    unroll: int | None = None,
    grad_clip: float | None = None,
    grad_clip_mode: str = "value",
):
    """Runs a cell over a batch with the hand-written backward pass (the training path).

    Same results and gradients as ``jax.vmap`` of :func:`jgrad.rnn.unroll`, faster to
    differentiate (see the module docstring). GRUs with ``reset_after=False`` fall back to
    ``vmap(unroll)`` (no hand-written backward).

    Memory layout: ``unroll`` also picks how the LSTM and the GRU (``reset_after=True``)
    lay out their loops.

    - ``unroll=1`` (the CPU default), in place: ONE ``custom_vjp`` over the whole layer,
      input weights included. The forward loop is feature-major (carries (H, B), the
      input projection inside the step, so no (B, T, G) projection is stored) and writes
      h_t and the gates into (B, T, .) buffers; the backward loop is batch-major and
      writes its results over those buffers, in place. Scratch memory: the stored gates
      plus three (B, T, H) arrays, 28.3 MiB (LSTM) and 25.2 MiB (GRU) at
      (B, T, D, H) = (32, 128, 128, 256), under glibc's 32 MiB mmap threshold, so the
      block is reused from call to call instead of faulted in afresh.
    - ``unroll > 1`` (the accelerator default), stacked: the loops stack their outputs
      (T, ., B) and the backward returns new arrays (55.6 MiB for the LSTM at that
      shape), because unrolled, the in-place writes make XLA copy whole buffers every
      step. The GRU then projects the inputs before the loop, batch-major.

    The vanilla RNN is batch-major with the input projection hoisted before the loop, for
    every ``unroll``.

    Args:
        cell: a :class:`Cell`.
        params: its params.
        xs: (B, T, in_dim), batch first.
        carry0: initial carry with a leading batch axis (``cell.init_carry((B,))``).
        seq_length: the number of real steps: an int (the same for every sequence) or a
            (B,) int array, one length per sequence (the name it has under ``vmap`` of
            :func:`jgrad.rnn.unroll`). Padded steps keep the carry and output 0. A
            concrete length must be an integer in [0, T] and an array must have shape
            (B,) (checked before tracing); a traced length (under ``jit``/``vmap``)
            outside [0, T] makes that sequence's final carry and outputs NaN (reported
            as data, never clamped), and is an error under
            ``jax.experimental.checkify.checkify``.
        unroll: ``lax.scan``'s unroll factor, forward and backward; it also picks the
            memory layout (above). None (default): the best measured factor for JAX's
            default backend, ``DEFAULT_UNROLL``: 1 on CPU, 4 elsewhere (the faster of the
            two at every shape of ``scripts/bench_rnn.py`` on an H100 and on a 2-core
            CPU: docs/benchmarks.md). TPUs were not measured.
        grad_clip, grad_clip_mode: clip dL/ds_t at every step, as in :func:`jgrad.rnn.unroll`.

    Returns:
        ``(final_carry, ys)`` with ``ys`` (B, T, H).

    Raises:
        ValueError: ``cell`` not a :class:`Cell`, ``xs`` not a float array of rank 3,
            T = 0, ``params`` whose keys or shapes differ from ``cell.init``'s, input
            size or carry not matching the cell, a concrete ``seq_length`` that is not an
            integer in [0, T] or not of shape (B,), bad
            ``unroll``/``grad_clip``/``grad_clip_mode``.
    """
    _checks.cell("cell", cell)
    check_xs(xs)
    shape = jnp.shape(xs)
    _checks.rank(
        "xs",
        shape,
        (3,),
        "unroll_batch takes a batch (B, T, in_dim); for one sequence use jgrad.rnn.unroll.",
    )
    B, T, _ = shape
    _checks.time_steps("xs", shape, axis=1)
    in_dim = check_params(cell, params)
    _checks.feature_size("xs", shape, in_dim, layer=f"this {cell.kind} cell")
    ref = cell.init_carry((B,))
    if jax.tree.structure(ref) != jax.tree.structure(carry0) or any(
        jnp.shape(a) != b.shape
        for a, b in zip(jax.tree.leaves(carry0), jax.tree.leaves(ref), strict=True)
    ):
        raise ValueError(
            f"`carry0` must be structured like cell.init_carry(({B},)) with leaves of shape "
            f"({B}, {cell.hidden}), got {jax.tree.map(jnp.shape, carry0)}."
        )
    traced_lengths = isinstance(seq_length, jax.core.Tracer)
    if seq_length is not None:
        seq_length = _check_lengths(seq_length, B, T)
    if grad_clip is not None:
        _checks.positive("grad_clip", grad_clip)
    _checks.choice("grad_clip_mode", grad_clip_mode, ("value", "norm"))
    if unroll is None:
        unroll = DEFAULT_UNROLL[
            "cpu" if jax.default_backend() == "cpu" else "accelerator"
        ]
    _checks.positive_int("unroll", unroll)
    if cell.kind == "gru" and not cell.options["reset_after"]:
        return _vmap_unroll(
            cell, params, xs, carry0, seq_length, unroll, grad_clip, grad_clip_mode
        )
    out = _run_batch(
        cell, params, xs, carry0, seq_length, unroll, grad_clip, grad_clip_mode
    )
    if traced_lengths:  # concrete ones were checked; a traced one outside [0, T]: NaN
        out = length_out_of_range(seq_length, T, out)
    return out


def _run_batch(cell, params, xs, carry0, seq_length, unroll, grad_clip, grad_clip_mode):
    """The hand-written paths of :func:`unroll_batch`, arguments checked."""
    T = jnp.shape(xs)[1]
    carry0 = carry_like_step(params, carry0, xs)
    valid = None
    if seq_length is not None:
        valid = jnp.arange(T)[:, None] < jnp.asarray(seq_length)[None, :]  # (T, B)
    if cell.kind == "lstm":
        xs = jnp.asarray(xs)
        mask = (
            None if valid is None else valid.astype(xs.dtype)[:, None, :]
        )  # (T, 1, B)
        hs, hT, cT = lstm_layer(
            params["w_ih"],
            params["w_hh"],
            params["b"],
            xs,
            carry0.h,
            carry0.c,
            mask,
            grad_clip,
            grad_clip_mode,
            unroll,
        )
        if valid is not None:  # outputs of padded steps are 0
            hs = hs * valid.T.astype(hs.dtype)[:, :, None]
        return LSTMState(h=hT, c=cT), hs
    if cell.kind == "gru" and unroll == 1:
        mask = None if valid is None else valid.astype(xs.dtype)[:, None, :]
        ys, final = gru_layer(
            params["w_ih"],
            params["w_hh"],
            params["b_ih"],
            params["b_hh"],
            jnp.asarray(xs),
            carry0,
            mask,
            grad_clip,
            grad_clip_mode,
            unroll,
        )
        if valid is not None:
            ys = ys * valid.T.astype(ys.dtype)[:, :, None]
        return final, ys
    xp = cell.input_proj(params, jnp.swapaxes(xs, 0, 1))  # (T, B, G): one matmul
    mask = None if valid is None else valid.astype(xp.dtype)[:, :, None]  # (T, B, 1)
    if cell.kind == "gru":
        hs, final = gru_core(
            params["w_hh"],
            params["b_hh"],
            xp,
            carry0,
            mask,
            grad_clip,
            grad_clip_mode,
            unroll,
        )
        ys = hs if mask is None else hs * mask
    else:
        ys, final = vanilla_core(
            params["w_hh"],
            xp,
            carry0,
            mask,
            cell.options["activation"],
            grad_clip,
            grad_clip_mode,
            unroll,
        )
    return final, jnp.swapaxes(ys, 0, 1)


def _check_lengths(seq_length, B, T):
    """``seq_length`` as a (B,) array: an int is repeated; a concrete (B,) array must hold
    integers in [0, T] (checked here, before tracing); a traced one only its dtype and
    shape (out-of-range values are reported as NaN outputs)."""
    if jnp.ndim(seq_length) == 0:  # one length for all
        _checks.seq_length("seq_length", seq_length, T)
        return jnp.full((B,), seq_length)
    if jnp.shape(seq_length) != (B,):
        raise ValueError(
            f"`seq_length` must be an int or a (B,) = ({B},) int array, one length per "
            f"sequence of xs, got shape {jnp.shape(seq_length)}. Pass one length per "
            "sequence, in the order of xs's batch axis."
        )
    dtype = jnp.result_type(seq_length)
    if not jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
        raise ValueError(
            f"`seq_length` must be an integer array (the number of real steps of each "
            f"sequence), got dtype {dtype}. Pass e.g. jnp.array([5, 3, ...], jnp.int32)."
        )
    if not isinstance(seq_length, jax.core.Tracer):
        values = np.asarray(seq_length)
        bad = (values < 0) | (values > T)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"`seq_length` must hold lengths in [0, T] = [0, {T}], got "
                f"seq_length[{i}] = {int(values[i])}. Each is the number of real "
                "(unpadded) steps at the start of its sequence."
            )
    return jnp.asarray(seq_length)


def _vmap_unroll(cell, params, xs, carry0, seq_length, unroll, grad_clip, mode):
    """``vmap`` of :func:`jgrad.rnn.unroll` (plain autodiff): the path of the cells that
    have no hand-written backward (GRUs with ``reset_after=False``)."""

    def one(x, c, n):
        return unroll_one(
            cell,
            params,
            x,
            c,
            seq_length=n,
            unroll=unroll,
            grad_clip=grad_clip,
            grad_clip_mode=mode,
        )

    B, T = jnp.shape(xs)[:2]
    lengths = jnp.full((B,), T) if seq_length is None else seq_length
    return jax.vmap(one)(xs, carry0, lengths)
