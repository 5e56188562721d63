"""The GRU (reset after the recurrent matmul) of :func:`jgrad.rnn.unroll_batch`: forward
and hand-written backward, in two memory layouts.

- :func:`gru_layer` (``unroll=1``, in place) is the LSTM's layout (see
  :mod:`jgrad.rnn._fast_lstm`): one ``custom_vjp`` over the layer, a feature-major forward
  loop (two matmuls a step, W_ih^T x_t and W_hh^T h, so the input projection is never
  stored) that writes h_t into ys (B, T, H) and [r, z, n, hn] into gs (B, T, 4H), and a
  batch-major backward loop that overwrites them in place with [da_r, da_z, da_n, dhn]
  (the pre-activation cotangents; dhn = da_n * r is what W_hh's n block sees) and dL/dy_t
  with h_{t-1}. The input gradient does not feed the recursion, so it is ONE matmul after
  the loop (and none when it is not asked for), as are dW_ih and dW_hh. Scratch memory:
  25.2 MiB at (B, T, D, H) = (32, 128, 128, 256).
- :func:`gru_core` (``unroll > 1``, stacked) is batch-major and takes the input
  projection, hoisted before the loop; the loops stack their outputs (see the LSTM's
  stacked layout). The forward loop stores the carries and the r, z, n, hn activations
  only; the factors of the backward recursion are computed for all steps at once outside
  the loop.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jgrad.rnn._fast_mask import mix, split_step

__all__ = ["gru_core", "gru_layer"]


@partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def gru_layer(w_ih, w_hh, b_ih, b_hh, xs, h0, mask, clip, mode, unroll):
    """xs (B, T, D), h0 (B, H), mask (T, 1, B) or None -> (ys (B, T, H), hT).

    The in-place layout, for ``unroll=1``.
    """
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
        h_new = mix(m, n + rz[H:] * (h - n), h)
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
        m = None if m is None else m.T  # (B, 1)
        (dh,), keep = split_step(
            (dh_out + dh_next,), m, clip, mode
        )  # real step's dL/ds_t
        da_n = dh * (1 - z) * (1 - n * n)
        dz = jnp.concatenate(
            [da_n * hn * r * (1 - r), dh * (h_prev - n) * z * (1 - z), da_n, da_n * r],
            1,
        )  # (B, 4H): [da_r, da_z, da_n, dhn]
        dh_prev = dh * z + dz @ wh_r
        if keep is not None:
            dh_prev = dh_prev + keep[0]
        gs = lax.dynamic_update_index_in_dim(gs, dz, t, 1)
        g = lax.dynamic_index_in_dim(gs, tp, 1, keepdims=False)
        # h_{t-1} over dL/dy_t
        hbuf = lax.dynamic_update_index_in_dim(hbuf, h_prev, t, 1)
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


gru_layer.defvjp(_gru_layer_fwd, _gru_layer_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def gru_core(w_hh, b_hh, xp, h0, mask, clip, mode, unroll):
    """xp (T, B, 3H) the input projection, h0 (B, H), mask (T, B, 1) or None ->
    (hs (T, B, H), hT).

    The stacked layout, for ``unroll > 1``.
    """
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
        h = mix(m, h_new, h)
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
        (dh,), keep = split_step((dh_out + dh_next,), m, clip, mode)
        dan = dh * an
        dhp = jnp.concatenate([dh, dh, dan], -1) * cf  # [dar, daz, dan * r]
        dh_prev = dh * zt + dhp @ w_hh_t
        if keep is not None:
            dh_prev = dh_prev + keep[0]
        return dh_prev, (dhp, dan)

    dh0, (dhp, dan) = lax.scan(
        body, dhT, (dhs, a_n, coef, z, mask), reverse=True, unroll=unroll
    )
    T, B, G = dhp.shape
    dw_hh = h_prev.reshape(T * B, H).T @ dhp.reshape(T * B, G)
    dxp = jnp.concatenate([dhp[..., : 2 * H], dan], -1)
    return dw_hh, jnp.sum(dhp, axis=(0, 1)), dxp, dh0, None


gru_core.defvjp(_gru_fwd, _gru_bwd)
