"""The training path: a batched unroll whose backward pass is written by hand.

Autodiff of ``lax.scan`` accumulates the recurrent weight gradient with one small
``(H, B) @ (B, G)`` matmul per step inside the backward loop. Here the backward scan only
carries dL/dh (and dL/dc) and emits the gate cotangents dz_t; the weight gradients, and the
input gradient, are then ONE ``(., T*B) @ (T*B, G)`` matmul each after the loop. The
forward pass stores the gate activations, so the backward pass recomputes at most one
``tanh``.

With ``unroll=1`` (the CPU default) the LSTM and the GRU are each ONE ``custom_vjp`` over
the whole layer, input weights included:

- the forward loop is feature-major, carries ``(H, B)``: each step's matmul has the gate
  rows as its long side instead of the B examples, which XLA's CPU matmul runs faster,
  and the input projection happens inside the step, so no ``(T, B, G)`` projection is
  stored;
- the backward loop is batch-major and writes its results over the forward's stored
  arrays, in place: the gate cotangents over the gates, h_{t-1} over dL/dy_t.

That keeps the scratch memory of a call at the stored gates plus three ``(B, T, H)``
arrays: 28.3 MiB (LSTM) and 25.2 MiB (GRU) at (B, T, D, H) = (32, 128, 128, 256), against
55.6 and 62.1 MiB before. Below 32 MiB, glibc reuses the block from call to call; above
it, every call gets a fresh mmap whose pages the kernel faults in and zeroes (about
14,000 faults, 15-20 ms, per call at that shape). With ``unroll > 1`` (the accelerator
default) the loops stack their outputs instead (see ``_lstm_fwd_stacked``): unrolled,
the in-place writes make XLA copy whole buffers every step. The vanilla RNN is
batch-major with the projection hoisted before the loop.

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
from jgrad.rnn._cell import Cell, LSTMState, carry_like_step

__all__ = ["unroll_batch"]


def _clip(gs, threshold, mode, axis=-1):
    """Clips the carry cotangents ``gs`` (tuple of (B, H), or (H, B) with ``axis=0``)
    per sequence."""
    if threshold is None:
        return gs
    if mode == "value":
        return tuple(jnp.clip(g, -threshold, threshold) for g in gs)
    sq = sum(jnp.sum(jnp.square(g), axis=axis, keepdims=True) for g in gs)
    norm = jnp.sqrt(sq)
    scale = jnp.where(norm > threshold, threshold / jnp.where(norm > 0, norm, 1.0), 1.0)
    return tuple(g * scale for g in gs)


def _mix(m, new, old):
    return new if m is None else m * new + (1 - m) * old


# --- LSTM ------------------------------------------------------------------------------
#
# One custom_vjp over the whole layer (input weights included). The forward loop is
# feature-major: the carries are h^T, c^T of shape (H, B), and each step is ONE matmul
# W^T (4H, D+H) @ [x_t^T; h^T] (D+H, B). With B = 32, a matmul whose rows are the 4H gates
# runs about 20% faster on CPU than (B, H) @ (H, 4H), and the input projection inside the
# step leaves no (T, B, 4H) array to write and read back. All four gates come from ONE
# elementwise op, gate = a * tanh(s * z) + b (sigmoid(z) = 0.5 tanh(z / 2) + 0.5 for i, f,
# o; tanh for g).
#
# What is stored is kept to the minimum, because the scratch memory of a call decides
# its speed as much as its flops do: glibc serves a block above 32 MiB (its largest
# dynamic mmap threshold) with a fresh mmap on every call, and the kernel then faults in
# and zeroes every page of it, about 1.3 us per 4 KiB page here. The forward loop writes
# the outputs h_t into ys (B, T, H), the gates into gs (B, T, 4H) and c_{t-1} as its
# stacked output (T, H, B); nothing else. The backward loop runs batch-major and
# overwrites, in place, the gates of step t with the gate cotangents dz_t, and dL/dy_t
# (read at step t only) with h_{t-1}: after it, gs holds dz and the dL/dy buffer holds the
# shifted h, so [dW_ih; dW_hh] are two (., B*T) @ (B*T, 4H) matmuls with no (T, B, .) copy
# made for them. The backward loop reads step t-1's slices from the buffers it has just updated,
# which lets XLA do the writes in place (a read of step t after the write would make it
# copy the whole buffer every step). dx does not feed the recursion, so the loop only
# computes dz_t @ W_hh^T, and dx is one matmul after it (XLA drops it when unused). At
# (B, T, D, H) = (32, 128, 128, 256) the scratch went from 55.6 to 28.3 MiB and the call
# from 107 to 82 ms in an interleaved A/B (docs/benchmarks.md, session 6).


def _lstm_consts(H, dtype):
    half, one = jnp.full((H,), 0.5, dtype), jnp.ones((H,), dtype)
    s = jnp.concatenate([half, half, one, half])[:, None]
    b = jnp.concatenate([half, half, jnp.zeros((H,), dtype), half])[:, None]
    return s, s, b  # (4H, 1): scale inside tanh, scale outside (equal), offset


def _lstm_weights(w_ih, w_hh, b):
    """The forward loops' hoisted operands: W^T (4H, D+H), the bias (4H, 1), the gate
    constants."""
    H = w_hh.shape[0]
    return jnp.concatenate([w_ih, w_hh], 0).T, b[:, None], _lstm_consts(H, w_hh.dtype)


def _lstm_cell_fwd(w_t, b_t, consts, xh, h, c, m):
    """One feature-major step: [x_t; h] (D+H, B), h, c (H, B) -> (h_t, c_t, gates (4H, B))."""
    s, a, bb = consts
    H = h.shape[0]
    g = a * jnp.tanh(s * (w_t @ xh + b_t)) + bb  # all four gates in one op
    c_new = g[H : 2 * H] * c + g[:H] * g[2 * H : 3 * H]
    h_new = g[3 * H :] * jnp.tanh(c_new)
    return _mix(m, h_new, h), _mix(m, c_new, c), g


def _lstm_cell_bwd(g, cp, dh, dc, m, clip, mode, axis):
    """One step's backward from dL/dh_t, dL/dc_t (the output's included) and the stored
    gates ``g`` and c_{t-1} ``cp``, along the feature ``axis`` (0: feature-major (., B),
    -1: batch-major (B, .)). Returns the gate cotangents dz, ``dL/dc_t * f`` (c_{t-1}'s
    share) and, for a padded step (mask ``m``), what passes through it unchanged."""
    i, f, gg, o = jnp.split(g, 4, axis=axis)
    keep = None
    if m is not None:  # padded step: identity on the carry
        keep, dh, dc = ((1 - m) * dh, (1 - m) * dc), m * dh, m * dc
    dh, dc = _clip((dh, dc), clip, mode, axis=axis)  # dL/ds_t of a real step
    tc = jnp.tanh(f * cp + i * gg)
    dc = dc + dh * o * (1 - tc * tc)
    parts = [
        dc * gg * i * (1 - i),
        dc * cp * f * (1 - f),
        dc * i * (1 - gg * gg),
        dh * tc * o * (1 - o),
    ]
    return jnp.concatenate(parts, axis), dc * f, keep


@partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _lstm_layer(w_ih, w_hh, b, xs, h0, c0, mask, clip, mode, unroll):
    """xs (B, T, D), h0/c0 (B, H), mask (T, 1, B) or None -> (ys (B, T, H), hT, cT)."""
    out, _ = _lstm_fwd(w_ih, w_hh, b, xs, h0, c0, mask, clip, mode, unroll)
    return out


def _lstm_fwd(w_ih, w_hh, b, xs, h0, c0, mask, clip, mode, unroll):
    fwd = _lstm_fwd_inplace if unroll == 1 else _lstm_fwd_stacked
    return fwd(w_ih, w_hh, b, xs, h0, c0, mask, clip, mode, unroll)


def _lstm_bwd(clip, mode, unroll, res, cts):
    bwd = _lstm_bwd_inplace if unroll == 1 else _lstm_bwd_stacked
    return bwd(clip, mode, unroll, res, cts)


def _lstm_fwd_inplace(w_ih, w_hh, b, xs, h0, c0, mask, clip, mode, unroll):
    B, T, _ = xs.shape
    H = h0.shape[-1]
    w_t, b_t, consts = _lstm_weights(w_ih, w_hh, b)

    def body(carry, inp):
        h, c, ys, gs = carry  # h, c: (H, B)
        t, m = inp
        x_t = lax.dynamic_index_in_dim(xs, t, 1, keepdims=False)  # (B, D)
        xh = jnp.concatenate([x_t.T, h], 0)  # (D+H, B)
        h_new, c_new, g = _lstm_cell_fwd(w_t, b_t, consts, xh, h, c, m)
        ys = lax.dynamic_update_index_in_dim(ys, h_new.T, t, 1)
        gs = lax.dynamic_update_index_in_dim(gs, g.T, t, 1)
        return (h_new, c_new, ys, gs), c

    init = (
        h0.T,
        c0.T,
        jnp.zeros((B, T, H), xs.dtype),
        jnp.zeros((B, T, 4 * H), xs.dtype),
    )
    (hT, cT, ys, gs), c_prev = lax.scan(
        body, init, (jnp.arange(T), mask), unroll=unroll
    )
    return (ys, hT.T, cT.T), (w_ih, w_hh, xs, h0, ys, c_prev, gs, mask)


def _lstm_bwd_inplace(clip, mode, unroll, res, cts):
    w_ih, w_hh, xs, h0, ys, c_prev, gs, mask = res
    dys, dhT, dcT = cts
    B, T, D = xs.shape
    H = h0.shape[-1]

    def body(carry, inp):
        # batch-major (B, .): dL/dh and dL/dc from step t+1; the gates and dL/dy of step t,
        # read at step t+1 from the buffers after their writes (so the writes are in place)
        dh_next, dc_next, g, dh_out, gs, hbuf = carry
        t, cp, m = inp  # c_{t-1} and the mask, feature-major
        m = None if m is None else m.T  # (B, 1)
        dz, dc_prev, keep = _lstm_cell_bwd(
            g, cp.T, dh_out + dh_next, dc_next, m, clip, mode, -1
        )  # dz: (B, 4H)
        dh_prev = dz @ wh_t  # (B, H)
        if keep is not None:
            dh_prev, dc_prev = dh_prev + keep[0], dc_prev + keep[1]
        tp = jnp.maximum(t - 1, 0)
        # dz_t over the gates of step t
        gs = lax.dynamic_update_index_in_dim(gs, dz, t, 1)
        g = lax.dynamic_index_in_dim(gs, tp, 1, keepdims=False)
        h_in = jnp.where(t > 0, lax.dynamic_index_in_dim(ys, tp, 1, keepdims=False), h0)
        hbuf = lax.dynamic_update_index_in_dim(hbuf, h_in, t, 1)  # h_{t-1} over dL/dy_t
        dh_out = lax.dynamic_index_in_dim(hbuf, tp, 1, keepdims=False)
        return (dh_prev, dc_prev, g, dh_out, gs, hbuf), None

    wh_t = w_hh.T  # (4H, H)
    init = (dhT, dcT, gs[:, T - 1], dys[:, T - 1], gs, dys)
    (dh0, dc0, _, _, dz, h_prev), _ = lax.scan(
        body, init, (jnp.arange(T), c_prev, mask), reverse=True, unroll=unroll
    )
    dz = dz.reshape(B * T, 4 * H)
    dw_ih = xs.reshape(B * T, D).T @ dz  # one matmul for all steps
    dw_hh = h_prev.reshape(B * T, H).T @ dz
    dx = (dz @ w_ih.T).reshape(
        B, T, D
    )  # not in the loop: it does not feed the recursion
    return dw_ih, dw_hh, jnp.sum(dz, 0), dx, dh0, dc0, None


# The previous layout, for unroll > 1: with the loop body unrolled, XLA fuses the
# read-ahead slices of the in-place path into consumers scheduled after the next write and
# copies the whole buffers every step (1.3-9.9x slower on CPU). Here the loops stack their
# outputs (T, ., B) and the backward returns dz as a new array: 55.6 MiB of scratch at
# (32, 128, 128, 256) against 28.3, but no per-step copies; on an H100, unroll=4 took
# 0.57-0.87x the time of unroll=1 with it (docs/benchmarks.md, session 5).


def _lstm_fwd_stacked(w_ih, w_hh, b, xs, h0, c0, mask, clip, mode, unroll):
    w_t, b_t, consts = _lstm_weights(w_ih, w_hh, b)

    def body(carry, inp):
        h, c = carry  # (H, B)
        x_t, m = inp
        xh = jnp.concatenate([x_t, h], 0)  # (D+H, B)
        h_new, c_new, g = _lstm_cell_fwd(w_t, b_t, consts, xh, h, c, m)
        return (h_new, c_new), (h_new.T, xh.T, c, g)

    xs_t = jnp.transpose(xs, (1, 2, 0))  # (T, D, B)
    (hT, cT), (hs, xh, c_prev, gates) = lax.scan(
        body, (h0.T, c0.T), (xs_t, mask), unroll=unroll
    )
    return (jnp.swapaxes(hs, 0, 1), hT.T, cT.T), (w_ih, w_hh, xh, c_prev, gates, mask)


def _lstm_bwd_stacked(clip, mode, unroll, res, cts):
    w_ih, w_hh, xh, c_prev, gates, mask = res
    dys, dhT, dcT = cts
    dhs = jnp.swapaxes(dys, 0, 1)
    T, G, B = gates.shape
    D = w_ih.shape[0]
    w_cat = jnp.concatenate([w_ih, w_hh], 0)  # (D+H, 4H), hoisted

    def body(carry, inp):
        dh_next, dc_next = carry  # (H, B)
        dh_out, g, cp, m = inp
        dz, dc_prev, keep = _lstm_cell_bwd(
            g, cp, dh_out.T + dh_next, dc_next, m, clip, mode, 0
        )  # dz: (4H, B)
        dxh = w_cat @ dz  # (D+H, B): [dx_t; dh_{t-1}]
        dh_prev = dxh[D:]
        if keep is not None:
            dh_prev, dc_prev = dh_prev + keep[0], dc_prev + keep[1]
        return (dh_prev, dc_prev), (dz.T, dxh[:D].T)

    (dh0, dc0), (dz, dx) = lax.scan(
        body, (dhT.T, dcT.T), (dhs, gates, c_prev, mask), reverse=True, unroll=unroll
    )
    dz = dz.reshape(T * B, G)
    dw = xh.reshape(T * B, -1).T @ dz  # [dW_ih; dW_hh], one matmul for all steps
    return dw[:D], dw[D:], jnp.sum(dz, 0), jnp.swapaxes(dx, 0, 1), dh0.T, dc0.T, None


_lstm_layer.defvjp(_lstm_fwd, _lstm_bwd)


# --- GRU (reset after the recurrent matmul), unroll = 1 ---------------------------------
#
# The LSTM's in-place layout: one custom_vjp over the layer, a feature-major forward loop
# (two matmuls a step, W_ih^T x_t and W_hh^T h, so the input projection is never stored)
# that writes h_t into ys (B, T, H) and [r, z, n, hn] into gs (B, T, 4H), and a
# batch-major backward loop that overwrites them in place with [da_r, da_z, da_n, dhn]
# (the pre-activation cotangents; dhn = da_n * r is what W_hh's n block sees) and dL/dy_t
# with h_{t-1}. The input gradient does not feed the recursion, so it is ONE matmul after
# the loop (and none when it is not asked for), as are dW_ih and dW_hh.


@partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _gru_layer(w_ih, w_hh, b_ih, b_hh, xs, h0, mask, clip, mode, unroll):
    """xs (B, T, D), h0 (B, H), mask (T, 1, B) or None -> (ys (B, T, H), hT)."""
    out, _ = _gru_layer_fwd(w_ih, w_hh, b_ih, b_hh, xs, h0, mask, clip, mode, unroll)
    return out


def _gru_layer_fwd(w_ih, w_hh, b_ih, b_hh, xs, h0, mask, clip, mode, unroll):
    B, T, _ = xs.shape
    H = h0.shape[-1]
    wi_t, wh_t = w_ih.T, w_hh.T  # (3H, D), (3H, H), hoisted
    bi, bh = b_ih[:, None], b_hh[:, None]

    def body(carry, inp):
        h, ys, gs = carry  # h: (H, B)
        t, m = inp
        x_t = lax.dynamic_index_in_dim(xs, t, 1, keepdims=False)  # (B, D)
        ax = wi_t @ x_t.T + bi  # (3H, B)
        ah = wh_t @ h + bh
        rz = jax.nn.sigmoid(ax[: 2 * H] + ah[: 2 * H])
        hn = ah[2 * H :]
        n = jnp.tanh(ax[2 * H :] + rz[:H] * hn)
        h_new = _mix(m, n + rz[H:] * (h - n), h)
        ys = lax.dynamic_update_index_in_dim(ys, h_new.T, t, 1)
        g = jnp.concatenate([rz, n, hn], 0)  # (4H, B)
        gs = lax.dynamic_update_index_in_dim(gs, g.T, t, 1)
        return (h_new, ys, gs), None

    init = (h0.T, jnp.zeros((B, T, H), xs.dtype), jnp.zeros((B, T, 4 * H), xs.dtype))
    (hT, ys, gs), _ = lax.scan(body, init, (jnp.arange(T), mask), unroll=unroll)
    return (ys, hT.T), (w_ih, w_hh, xs, h0, ys, gs, mask)


def _gru_layer_bwd(clip, mode, unroll, res, cts):
    w_ih, w_hh, xs, h0, ys, gs, mask = res
    dys, dhT = cts
    B, T, D = xs.shape
    H = h0.shape[-1]
    wh_r = jnp.concatenate(
        [w_hh[:, : 2 * H], jnp.zeros((H, H), w_hh.dtype), w_hh[:, 2 * H :]], 1
    ).T  # (4H, H)

    def body(carry, inp):
        dh_next, g, dh_out, gs, hbuf = carry  # (B, .), g and dh_out read ahead
        t, m = inp
        r, z, n, hn = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H :]
        tp = jnp.maximum(t - 1, 0)
        h_prev = jnp.where(
            t > 0, lax.dynamic_index_in_dim(ys, tp, 1, keepdims=False), h0
        )
        dh = dh_out + dh_next
        if m is not None:  # padded step: identity on the carry
            m = m.T  # (B, 1)
            keep, dh = (1 - m) * dh, m * dh
        (dh,) = _clip((dh,), clip, mode)  # dL/ds_t of a real step
        da_n = dh * (1 - z) * (1 - n * n)
        dz = jnp.concatenate(
            [da_n * hn * r * (1 - r), dh * (h_prev - n) * z * (1 - z), da_n, da_n * r],
            1,
        )  # (B, 4H): [da_r, da_z, da_n, dhn]
        dh_prev = dh * z + dz @ wh_r
        if m is not None:
            dh_prev = dh_prev + keep
        gs = lax.dynamic_update_index_in_dim(gs, dz, t, 1)
        g = lax.dynamic_index_in_dim(gs, tp, 1, keepdims=False)
        hbuf = lax.dynamic_update_index_in_dim(
            hbuf, h_prev, t, 1
        )  # h_{t-1} over dL/dy_t
        dh_out = lax.dynamic_index_in_dim(hbuf, tp, 1, keepdims=False)
        return (dh_prev, g, dh_out, gs, hbuf), None

    init = (dhT, gs[:, T - 1], dys[:, T - 1], gs, dys)
    (dh0, _, _, dz, h_prev), _ = lax.scan(
        body, init, (jnp.arange(T), mask), reverse=True, unroll=unroll
    )
    # Column slices of dz would be copied (12 MiB each at (32, 128, ., 256)), so each
    # matmul takes all 4H columns and drops the block it does not need afterwards: 1/4
    # more flops in these three matmuls, and no copy.
    dz = dz.reshape(B * T, 4 * H)
    gi = xs.reshape(B * T, D).T @ dz  # (D, 4H): [dW_ih | unused]
    gh = h_prev.reshape(B * T, H).T @ dz  # (H, 4H): r, z, unused, n blocks of dW_hh
    db = jnp.sum(dz, 0)
    drop_n = lambda a: jnp.concatenate([a[..., : 2 * H], a[..., 3 * H :]], -1)  # noqa: E731
    w_x = jnp.concatenate([w_ih.T, jnp.zeros((H, D), w_ih.dtype)], 0)  # (4H, D)
    dx = (dz @ w_x).reshape(B, T, D)
    return gi[:, : 3 * H], drop_n(gh), db[: 3 * H], drop_n(db), dx, dh0, None


_gru_layer.defvjp(_gru_layer_fwd, _gru_layer_bwd)


# --- GRU (reset after the recurrent matmul), unroll > 1 ----------------------------------
#
# Batch-major with the input projection hoisted before the loop (stacked outputs; see the
# LSTM's unroll > 1 note).
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

# unroll_batch's default scan unroll, by backend (bench_rnn.py, session 5: the fast path
# with unroll=4 against 1 took 0.57-0.87x on an H100, 1.01-1.54x on a 2-core CPU).
DEFAULT_UNROLL = {"cpu": 1, "accelerator": 4}


def unroll_batch(
    cell: Cell,
    params: dict,
    xs: jax.Array,
    carry0: Any,
    *,
    seq_lengths: jax.Array | None = None,
    unroll: int | None = None,
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
        unroll: ``lax.scan``'s unroll factor, forward and backward. None (default): the
            best measured factor for JAX's default backend, ``DEFAULT_UNROLL``: 1 on CPU,
            4 elsewhere. On an H100, 4 took 0.57-0.87x the time of 1 at every shape
            measured. On a 2-core CPU, 4 took 1.01-1.54x (docs/benchmarks.md, session
            5). TPUs were not measured.
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
    if unroll is None:
        unroll = DEFAULT_UNROLL[
            "cpu" if jax.default_backend() == "cpu" else "accelerator"
        ]
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

    carry0 = carry_like_step(params, carry0, xs)
    valid = None
    if seq_lengths is not None:
        valid = jnp.arange(T)[:, None] < jnp.asarray(seq_lengths)[None, :]  # (T, B)
    if cell.kind == "lstm":
        xs = jnp.asarray(xs)
        mask = (
            None if valid is None else valid.astype(xs.dtype)[:, None, :]
        )  # (T, 1, B)
        hs, hT, cT = _lstm_layer(
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
        ys, final = _gru_layer(
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
