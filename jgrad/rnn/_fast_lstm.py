"""The LSTM layer of :func:`jgrad.rnn.unroll_batch`: forward and hand-written backward.

:func:`lstm_layer` is ONE ``custom_vjp`` over the whole layer, input weights included,
with two memory layouts chosen by the scan's ``unroll`` factor:

- ``unroll=1``, in place: the forward loop is feature-major, with carries h^T, c^T of
  shape (H, B) and ONE matmul a step, W^T (4H, D+H) @ [x_t^T; h^T] (D+H, B). With B = 32
  a matmul whose long side is the 4H gate rows runs about 20% faster on CPU than
  (B, H) @ (H, 4H), and the input projection inside the step leaves no (B, T, 4H) array
  to write and read back. The loop writes h_t into ys (B, T, H), the gates into
  gs (B, T, 4H) and stacks c_{t-1} (T, H, B); nothing else is stored. The backward loop
  runs batch-major and overwrites, in place, the gates of step t with the gate cotangents
  dz_t and dL/dy_t (read at step t only) with h_{t-1}. It reads step t-1's slices from the
  buffers it has just updated, which lets XLA do the writes in place (a read of step t
  after the write would make it copy the whole buffer every step). After it, gs holds dz
  and the dL/dy buffer holds the shifted h, so [dW_ih; dW_hh] are two
  (., B*T) @ (B*T, 4H) matmuls with no (T, B, .) copy made for them; dx does not feed the
  recursion and is one matmul after the loop (XLA drops it when unused). Scratch memory:
  the stored gates plus three (B, T, H) arrays, 28.3 MiB at
  (B, T, D, H) = (32, 128, 128, 256). That size matters: glibc serves a block above
  32 MiB (its largest dynamic mmap threshold) with a fresh mmap on every call, whose pages
  the kernel faults in and zeroes, about 1.3 us per 4 KiB page.
- ``unroll > 1``, stacked: with the loop body unrolled, XLA fuses the read-ahead slices of
  the in-place layout into consumers scheduled after the next write and copies the whole
  buffers every step (1.3-9.9x slower on CPU). So the loops stack their outputs
  (T, ., B) and the backward returns dz as a new array: 55.6 MiB of scratch at the shape
  above, and no per-step copies.

All four gates come from ONE elementwise op, gate = a * tanh(s * z) + b
(sigmoid(z) = 0.5 tanh(z / 2) + 0.5 for i, f, o; tanh for g).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jgrad.rnn._fast_mask import mix, split_step

__all__ = ["lstm_layer"]


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
    return mix(m, h_new, h), mix(m, c_new, c), g


def _lstm_cell_bwd(g, cp, dh, dc, m, clip, mode, axis):
    """One step's backward from dL/dh_t, dL/dc_t (the output's included) and the stored
    gates ``g`` and c_{t-1} ``cp``, along the feature ``axis`` (0: feature-major (., B),
    -1: batch-major (B, .)). Returns the gate cotangents dz, ``dL/dc_t * f`` (c_{t-1}'s
    share) and, for a padded step (mask ``m``), what passes through it unchanged."""
    i, f, gg, o = jnp.split(g, 4, axis=axis)
    (dh, dc), keep = split_step((dh, dc), m, clip, mode, axis)  # dL/ds_t of a real step
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
def lstm_layer(w_ih, w_hh, b, xs, h0, c0, mask, clip, mode, unroll):
    """xs (B, T, D), h0/c0 (B, H), mask (T, 1, B) or None -> (ys (B, T, H), hT, cT).

    ``clip``/``mode`` clip dL/ds_t per sequence at every step; ``unroll`` is the scan's
    unroll factor and picks the memory layout (1: in place, > 1: stacked).
    """
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
    # not in the loop: it does not feed the recursion
    dx = (dz @ w_ih.T).reshape(B, T, D)
    return dw_ih, dw_hh, jnp.sum(dz, 0), dx, dh0, dc0, None


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


lstm_layer.defvjp(_lstm_fwd, _lstm_bwd)
