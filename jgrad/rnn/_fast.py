"""The training path: a batched unroll whose backward pass is written by hand.

Autodiff of ``lax.scan`` accumulates the recurrent weight gradient with one small
``(H, B) @ (B, G)`` matmul per step inside the backward loop. Here the backward scan only
carries dL/dh (and dL/dc) and emits the gate cotangents dz_t; the weight gradient is then ONE
``(H, T*B) @ (T*B, G)`` matmul after the loop, and the input-weight gradient another one
outside (autodiff of the hoisted projection). The forward pass stores the gate activations,
so the backward pass recomputes no nonlinearity.

Being a ``jax.custom_vjp``, this path has no forward-mode derivative: use
:func:`jgrad.rnn.unroll` (plain autodiff) for ``jvp``/``jacfwd`` and the analyzers. Tests
check that both paths give the same gradients.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jgrad import _checks
from jgrad.nn._activations import activation as get_activation
from jgrad.rnn._cell import Cell, LSTMState

__all__ = ["unroll_batch"]


def _clip(gs, threshold, mode):
    """Clips the carry cotangents ``gs`` (tuple of (B, H)) per sequence."""
    if threshold is None:
        return gs
    if mode == "value":
        return tuple(jnp.clip(g, -threshold, threshold) for g in gs)
    sq = sum(jnp.sum(jnp.square(g), axis=-1, keepdims=True) for g in gs)
    norm = jnp.sqrt(sq)
    scale = jnp.where(norm > threshold, threshold / jnp.where(norm > 0, norm, 1.0), 1.0)
    return tuple(g * scale for g in gs)


def _mix(m, new, old):
    return new if m is None else m * new + (1 - m) * old


# --- LSTM ------------------------------------------------------------------------------
#
# All four gates come from ONE elementwise op, gate = a * tanh(s * z) + b (sigmoid(z) =
# 0.5 tanh(z / 2) + 0.5 for i, f, o; tanh for g), so each step is one matmul and two fused
# elementwise kernels. The loop stores only the carries and the gates; everything else the
# backward pass needs (h_{t-1}, c_{t-1}, tanh c_t, the gate derivatives) is computed for all
# steps at once outside the loop.


def _lstm_consts(H, dtype):
    half, one = jnp.full((H,), 0.5, dtype), jnp.ones((H,), dtype)
    s = jnp.concatenate([half, half, one, half])[None, :]
    b = jnp.concatenate([half, half, jnp.zeros((H,), dtype), half])[None, :]
    return s, s, b  # (1, 4H): scale inside tanh, scale outside (equal), offset


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _lstm_core(w_hh, xp, h0, c0, mask, clip, mode, unroll):
    out, _ = _lstm_fwd(w_hh, xp, h0, c0, mask, clip, mode, unroll)
    return out


def _lstm_fwd(w_hh, xp, h0, c0, mask, clip, mode, unroll):
    H = h0.shape[-1]
    s, a, b = _lstm_consts(H, xp.dtype)

    def body(carry, inp):
        h, c = carry
        xp_t, m = inp
        gates = a * jnp.tanh(s * (xp_t + h @ w_hh)) + b
        c_new = gates[:, H : 2 * H] * c + gates[:, :H] * gates[:, 2 * H : 3 * H]
        h_new = gates[:, 3 * H :] * jnp.tanh(c_new)
        h, c = _mix(m, h_new, h), _mix(m, c_new, c)
        return (h, c), (h, c, gates)

    (hT, cT), (hs, cs, gates) = lax.scan(body, (h0, c0), (xp, mask), unroll=unroll)
    return (hs, hT, cT), (w_hh, gates, hs, cs, h0, c0, mask)


def _lstm_bwd(clip, mode, unroll, res, cts):
    w_hh, gates, hs, cs, h0, c0, mask = res
    dhs, dhT, dcT = cts
    H = w_hh.shape[0]
    s, a, b = (v[None] for v in _lstm_consts(H, gates.dtype))  # (1, 1, 4H)
    w_hh_t = w_hh.T  # hoisted out of the loop
    c_prev = jnp.concatenate([c0[None], cs[:-1]], 0)
    tcs = jnp.tanh(cs)
    dact = (a * s) * (1 - jnp.square((gates - b) / a))  # d gate / d z, every column
    # What multiplies dc (dh for o) in each gate block: i <- g, f <- c_{t-1}, g <- i, o <- tanh c.
    partner = dact * jnp.concatenate(
        [gates[..., 2 * H : 3 * H], c_prev, gates[..., :H], tcs], -1
    )
    o_dtanh = gates[..., 3 * H :] * (1 - tcs * tcs)  # d h_t / d c_t
    f = gates[..., H : 2 * H]

    def body(carry, inp):
        dh_next, dc_next = carry
        dh_out, pt, odt, ft, m = inp
        dh, dc = dh_out + dh_next, dc_next
        if m is not None:  # padded step: identity on the carry
            keep_h, keep_c = (1 - m) * dh, (1 - m) * dc
            dh, dc = m * dh, m * dc
        dh, dc = _clip((dh, dc), clip, mode)  # the total dL/ds_t of a real step
        dc = dc + dh * odt
        dz = jnp.concatenate([dc, dc, dc, dh], -1) * pt
        dh_prev, dc_prev = dz @ w_hh_t, dc * ft
        if m is not None:
            dh_prev, dc_prev = dh_prev + keep_h, dc_prev + keep_c
        return (dh_prev, dc_prev), dz

    (dh0, dc0), dz = lax.scan(
        body, (dhT, dcT), (dhs, partner, o_dtanh, f, mask), reverse=True, unroll=unroll
    )
    T, B, G = dz.shape
    h_prev = jnp.concatenate([h0[None], hs[:-1]], 0)
    dw_hh = h_prev.reshape(T * B, H).T @ dz.reshape(
        T * B, G
    )  # one matmul for all steps
    return dw_hh, dz, dh0, dc0, None


_lstm_core.defvjp(_lstm_fwd, _lstm_bwd)


# --- GRU (reset after the recurrent matmul) ----------------------------------------------
#
# As for the LSTM: the loop stores the carries and the r, z, n, hn activations only; the
# factors of the backward recursion are computed for all steps at once outside the loop.


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _gru_core(w_hh, b_hh, xp, h0, mask, clip, mode, unroll):
    out, _ = _gru_fwd(w_hh, b_hh, xp, h0, mask, clip, mode, unroll)
    return out


def _gru_fwd(w_hh, b_hh, xp, h0, mask, clip, mode, unroll):
    H = h0.shape[-1]

    def body(h, inp):
        xp_t, m = inp
        hp = h @ w_hh + b_hh[None, :]
        rz = jax.nn.sigmoid(xp_t[:, : 2 * H] + hp[:, : 2 * H])
        hn = hp[:, 2 * H :]
        n = jnp.tanh(xp_t[:, 2 * H :] + rz[:, :H] * hn)
        h_new = n + rz[:, H:] * (h - n)
        h = _mix(m, h_new, h)
        return h, (h, rz, n, hn)

    hT, (hs, rz, n, hn) = lax.scan(body, h0, (xp, mask), unroll=unroll)
    return (hs, hT), (w_hh, rz, n, hn, hs, h0, mask)


def _gru_bwd(clip, mode, unroll, res, cts):
    w_hh, rz, n, hn, hs, h0, mask = res
    dhs, dhT = cts
    H = w_hh.shape[0]
    w_hh_t = w_hh.T
    r, z = rz[..., :H], rz[..., H:]
    h_prev = jnp.concatenate([h0[None], hs[:-1]], 0)
    a_n = (1 - z) * (1 - n * n)  # d h_t / d(pre-activation of n)
    # d h_t / d(pre-activations of r, z), and r: what dz_n is multiplied by in dhp.
    coef = jnp.concatenate([a_n * hn * r * (1 - r), (h_prev - n) * z * (1 - z), r], -1)

    def body(dh_next, inp):
        dh_out, an, cf, zt, m = inp
        dh = dh_out + dh_next
        if m is not None:
            dh_keep, dh = (1 - m) * dh, m * dh
        (dh,) = _clip((dh,), clip, mode)
        dan = dh * an
        dhp = jnp.concatenate([dh, dh, dan], -1) * cf  # [dar, daz, dan * r]
        dh_prev = dh * zt + dhp @ w_hh_t
        if m is not None:
            dh_prev = dh_prev + dh_keep
        return dh_prev, (dhp, dan)

    dh0, (dhp, dan) = lax.scan(
        body, dhT, (dhs, a_n, coef, z, mask), reverse=True, unroll=unroll
    )
    T, B, G = dhp.shape
    dw_hh = h_prev.reshape(T * B, H).T @ dhp.reshape(T * B, G)
    dxp = jnp.concatenate([dhp[..., : 2 * H], dan], -1)
    return dw_hh, jnp.sum(dhp, axis=(0, 1)), dxp, dh0, None


_gru_core.defvjp(_gru_fwd, _gru_bwd)


# --- Vanilla RNN -------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _vanilla_core(w_hh, xp, h0, mask, act_name, clip, mode, unroll):
    out, _ = _vanilla_fwd(w_hh, xp, h0, mask, act_name, clip, mode, unroll)
    return out


def _vanilla_fwd(w_hh, xp, h0, mask, act_name, clip, mode, unroll):
    act = get_activation(act_name)

    def body(h, inp):
        xp_t, m = inp
        a = xp_t + h @ w_hh
        h_new = act.fn(a)
        y = h_new if m is None else m * h_new
        return _mix(m, h_new, h), (y, act.deriv(a), h)

    hT, (ys, dphi, h_prev) = lax.scan(body, h0, (xp, mask), unroll=unroll)
    return (ys, hT), (w_hh, dphi, h_prev, mask)


def _vanilla_bwd(act_name, clip, mode, unroll, res, cts):
    w_hh, dphi, h_prev, mask = res
    dys, dhT = cts
    H = w_hh.shape[0]
    w_hh_t = w_hh.T

    def body(dh_next, inp):
        dy, d, m = inp
        dh = dy + dh_next
        if m is not None:
            dh_keep, dh = (1 - m) * dh, m * dh
        (dh,) = _clip((dh,), clip, mode)
        da = dh * d
        dh_prev = da @ w_hh_t
        if m is not None:
            dh_prev = dh_prev + dh_keep
        return dh_prev, da

    dh0, da = lax.scan(body, dhT, (dys, dphi, mask), reverse=True, unroll=unroll)
    T, B, _ = da.shape
    dw_hh = h_prev.reshape(T * B, H).T @ da.reshape(T * B, H)
    return dw_hh, da, dh0, None


_vanilla_core.defvjp(_vanilla_fwd, _vanilla_bwd)


# --- Public driver -----------------------------------------------------------------------


def unroll_batch(
    cell: Cell,
    params: dict,
    xs: jax.Array,
    carry0: Any,
    *,
    seq_lengths: jax.Array | None = None,
    unroll: int = 1,
    grad_clip: float | None = None,
    grad_clip_mode: str = "value",
):
    """Runs a cell over a batch with the hand-written backward pass (the training path).

    Same results and gradients as ``jax.vmap`` of :func:`jgrad.rnn.unroll`, faster to
    differentiate (see the module docstring). GRUs with ``reset_after=False`` fall back to
    ``vmap(unroll)`` (no hand-written backward).

    Args:
        cell: a :class:`Cell`.
        params: its params.
        xs: (B, T, in_dim), batch first.
        carry0: initial carry with a leading batch axis (``cell.init_carry((B,))``).
        seq_lengths: (B,) real steps per sequence; padded steps keep the carry and output 0.
        unroll: ``lax.scan``'s unroll factor, forward and backward.
        grad_clip, grad_clip_mode: clip dL/ds_t at every step, as in :func:`jgrad.rnn.unroll`.

    Returns:
        ``(final_carry, ys)`` with ``ys`` (B, T, H).

    Raises:
        ValueError: ``xs`` not of rank 3, T = 0, input size or carry not matching the cell.
    """
    if not isinstance(cell, Cell):
        raise ValueError(f"`cell` must be a jgrad.rnn.Cell, got {type(cell).__name__}.")
    shape = jnp.shape(xs)
    _checks.rank(
        "xs",
        shape,
        (3,),
        "unroll_batch takes a batch (B, T, in_dim); for one sequence use jgrad.rnn.unroll.",
    )
    B, T, _ = shape
    if T == 0:
        raise ValueError("`xs` must have at least one time step (T >= 1), got T = 0.")
    _checks.feature_size(
        "xs", shape, params["w_ih"].shape[0], layer=f"this {cell.kind} cell"
    )
    ref = cell.init_carry((B,))
    if jax.tree.structure(ref) != jax.tree.structure(carry0) or any(
        jnp.shape(a) != b.shape
        for a, b in zip(jax.tree.leaves(carry0), jax.tree.leaves(ref), strict=True)
    ):
        raise ValueError(
            f"`carry0` must be structured like cell.init_carry(({B},)) with leaves of shape "
            f"({B}, {cell.hidden}), got {jax.tree.map(jnp.shape, carry0)}."
        )
    if grad_clip is not None:
        _checks.positive("grad_clip", grad_clip)
    _checks.choice("grad_clip_mode", grad_clip_mode, ("value", "norm"))
    _checks.positive_int("unroll", unroll)
    if cell.kind == "gru" and not cell.options["reset_after"]:
        from jgrad.rnn._unroll import unroll as unroll_one

        def one(x, c, n):
            return unroll_one(
                cell,
                params,
                x,
                c,
                seq_length=n,
                unroll=unroll,
                grad_clip=grad_clip,
                grad_clip_mode=grad_clip_mode,
            )

        lengths = jnp.full((B,), T) if seq_lengths is None else seq_lengths
        return jax.vmap(one)(xs, carry0, lengths)

    xp = cell.input_proj(params, jnp.swapaxes(xs, 0, 1))  # (T, B, G): one matmul
    mask = None
    if seq_lengths is not None:
        mask = jnp.arange(T)[:, None] < jnp.asarray(seq_lengths)[None, :]
        mask = mask.astype(xp.dtype)[:, :, None]  # (T, B, 1)
    if cell.kind == "lstm":
        hs, hT, cT = _lstm_core(
            params["w_hh"],
            xp,
            carry0.h,
            carry0.c,
            mask,
            grad_clip,
            grad_clip_mode,
            unroll,
        )
        ys = hs if mask is None else hs * mask  # outputs of padded steps are 0
        final = LSTMState(h=hT, c=cT)
    elif cell.kind == "gru":
        hs, final = _gru_core(
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
        ys, final = _vanilla_core(
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
