"""The vanilla RNN of :func:`jgrad.rnn.unroll_batch`: forward and hand-written backward.

:func:`vanilla_core` is one ``custom_vjp`` over the recurrence, batch-major for every
``unroll``, with the input projection hoisted before the loop. The forward loop stacks
the outputs, the activation's derivative phi'(a_t) and h_{t-1}; the backward loop carries
dL/dh only and emits da_t = dL/dh_t * phi'(a_t), so dW_hh is ONE (H, T*B) @ (T*B, H)
matmul after it and da is the input projection's cotangent.
"""

from __future__ import annotations

from functools import partial

import jax
from jax import lax

from jgrad.nn._activations import activation as get_activation
from jgrad.rnn._fast_mask import mix, split_step

__all__ = ["vanilla_core"]


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def vanilla_core(w_hh, xp, h0, mask, act_name, clip, mode, unroll):
    """xp (T, B, H) the input projection, h0 (B, H), mask (T, B, 1) or None ->
    (ys (T, B, H), hT); ``act_name`` names the activation phi."""
    out, _ = _vanilla_fwd(w_hh, xp, h0, mask, act_name, clip, mode, unroll)
    return out


def _vanilla_fwd(w_hh, xp, h0, mask, act_name, clip, mode, unroll):
    act = get_activation(act_name)

    def body(h, inp):
        xp_t, m = inp
        a = xp_t + h @ w_hh
        h_new = act.fn(a)
        y = h_new if m is None else m * h_new
        return mix(m, h_new, h), (y, act.deriv(a), h)

    hT, (ys, dphi, h_prev) = lax.scan(body, h0, (xp, mask), unroll=unroll)
    return (ys, hT), (w_hh, dphi, h_prev, mask)


def _vanilla_bwd(act_name, clip, mode, unroll, res, cts):
    w_hh, dphi, h_prev, mask = res
    dys, dhT = cts
    H = w_hh.shape[0]
    w_hh_t = w_hh.T

    def body(dh_next, inp):
        dy, d, m = inp
        (dh,), keep = split_step((dy + dh_next,), m, clip, mode)
        da = dh * d
        dh_prev = da @ w_hh_t
        if keep is not None:
            dh_prev = dh_prev + keep[0]
        return dh_prev, da

    dh0, da = lax.scan(body, dhT, (dys, dphi, mask), reverse=True, unroll=unroll)
    T, B, _ = da.shape
    dw_hh = h_prev.reshape(T * B, H).T @ da.reshape(T * B, H)
    return dw_hh, da, dh0, None


vanilla_core.defvjp(_vanilla_fwd, _vanilla_bwd)
