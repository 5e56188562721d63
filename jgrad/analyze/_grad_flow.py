"""Per-layer gradient norms ||dL/dh_k||, computed in log space so that none underflows.

Back-propagation multiplies the output cotangent by one layer Jacobian after another; in a
vanishing regime the product drops below float32's smallest number (about 1e-45) and plain
``jax.grad`` returns exact zeros. Here the cotangent is divided by its norm after every layer
and the log10 of that norm is kept, which is exact because each vector-Jacobian product is
linear in the cotangent: ``log10 ||g_k|| = sum_{j>k} log10 ||vjp_j(g_j / ||g_j||)||``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze import _repeat
from jgrad.analyze._logspace import safe_div, vec_norm
from jgrad.analyze._network import as_layers, check_input, resolve_net
from jgrad.analyze._nonfinite import (
    NonFinite,
    first_true,
    last_true,
    no_nonfinite,
    nonfinite_record,
    reports_nonfinite,
)
from jgrad.analyze._precision import full_precision
from jgrad.nn._layer import Layer, split_keys

__all__ = ["GradFlow", "layer_grad_norms", "net_layers"]


class GradFlow(NamedTuple):
    """Gradient norms at every layer output of one backward pass.

    Index k = 0 is the input h_0 = x; k >= 1 is the output h_k of layer k (``len(layers)+1``
    entries). A ``jgrad.nn.repeat`` layer of n blocks (``mlp(..., stacked=True)``) has n
    consecutive entries, the outputs of its blocks in order, so the entries are those of
    the default layout at its blocks' outputs (K counts n for it). Logs are base 10, as
    the fields' names say.

    Attributes:
        log10_norm: (K+1,) log10 ||dL/dh_k|| (Frobenius norm over the whole input batch),
            computed stably; ``-inf`` only when the gradient is exactly zero (a dead ReLU
            layer), never because of underflow; NaN where computed from a NaN or inf
            (a non-finite h_j with j >= k, loss or cotangent).
        raw_norm: (K+1,) ||dL/dh_k|| from the plain float32 backward pass (what ``jax.grad``
            gives); 0 where it underflowed.
        underflow: (K+1,) bool, every entry of the plain float32 gradient dL/dh_k is exactly
            zero although the stable norm is finite: it underflowed (False where NaN).
        forward_finite: (K+1,) bool, every entry of h_k is finite.
        loss: the scalar loss.
        param_log10_norm: a tuple with one entry per layer, shaped like that layer's params,
            holding log10 ||dL/dtheta|| for every parameter leaf (a repeat layer's
            leaves are ``(n,)``, one entry per block), computed in the same backward
            pass with the same rescaling, so an underflowing gradient is still
            reported; NaN where computed from a NaN or inf.
        nonfinite: a :class:`NonFinite`: ``forward`` the first k whose h_k holds a NaN
            or inf (k = 0 the input x); ``backward`` the first k, met going from the
            output to the input, whose ``log10_norm`` is NaN or inf although h_k..h_K,
            the loss and the cotangent above were finite (k = K when the loss or its
            gradient is non-finite); -1 for none.
        log10_act_norm: (K+1,) log10 ||h_k|| (Frobenius norm over the batch), scaled by
            max|h_k| first, so it is finite wherever h_k is (an exploding network's
            norms up to the overflow); NaN where h_k holds a NaN or inf.
    """

    log10_norm: jax.Array
    raw_norm: jax.Array
    underflow: jax.Array
    forward_finite: jax.Array
    loss: jax.Array
    param_log10_norm: tuple = ()
    nonfinite: NonFinite = no_nonfinite()
    log10_act_norm: jax.Array | None = None


def net_layers(net: Layer | tuple | list) -> tuple[Layer, ...]:
    """The layers of a network, as every analyzer reads them: a ``serial`` network's
    ``info.layers``, a sequence's items (flax modules and functions ``fn(params, x)``
    wrapped as Layers), else ``(net,)``.

    Raises:
        ValueError: if ``net`` is none of these.
    """
    return as_layers(net)[0]


def _log10_norm(v):
    """log10 ||v|| (all entries), scaled by max|v|: finite for any finite ``v``
    (log10 0 = -inf), NaN where ``v`` holds a NaN or inf.

    ``v`` is first multiplied by 2^-64 (max|v| > 1) or 2^64 (exact: a power of two), so
    that 1 / max|v| stays a normal float: XLA divides by multiplying with the reciprocal,
    and the reciprocal of a number near float32's largest is subnormal, which CPUs flush
    to zero."""
    v = jnp.ravel(v)
    big = jnp.max(jnp.abs(v)) > 1
    p = jnp.where(big, -64.0, 64.0).astype(v.dtype)
    v = v * jnp.exp2(p)
    a = jnp.max(jnp.abs(v))
    lg = jnp.log10(a) + 0.5 * jnp.log10(jnp.sum(jnp.square(safe_div(v, a))))
    lg = jnp.where(a > 0, lg - p * jnp.log10(jnp.asarray(2.0, v.dtype)), -jnp.inf)
    return jnp.where(jnp.all(jnp.isfinite(v)), lg, jnp.nan)


def _param_log(log_scale, v):
    """log10 ||dL/dtheta|| from a unit-cotangent VJP ``v``; an integer leaf has no
    gradient (JAX's float0 cotangent): -inf, log10 of its zero gradient."""
    if v.dtype == jax.dtypes.float0:
        return jnp.full((), -jnp.inf, log_scale.dtype)
    return log_scale + jnp.log10(vec_norm(jnp.ravel(v)))


def _from_top(flags):
    """``out[k]``: some ``flags[j]`` with j >= k is set."""
    return jnp.cumsum(flags[::-1].astype(jnp.int32))[::-1] > 0


@reports_nonfinite("layer")
@full_precision
def layer_grad_norms(
    net: Layer,
    params,
    x: jax.Array,
    loss_fn: Callable[[jax.Array], jax.Array],
    *,
    train: bool = False,
    key: jax.Array | None = None,
) -> GradFlow:
    """Gradient norms ||dL/dh_k|| at every layer output, in log space.

    Args:
        net: a ``serial`` network, a single Layer, or a sequence of Layers, flax
            ``linen.Module``s and functions ``fn(params, x)``.
        params: its params (a tuple, one entry per layer; a single Layer's own params).
        x: the input, one example or a batch (the network's apply must accept it; a batch is
            needed for batch norm in train mode).
        loss_fn: ``loss_fn(y) -> scalar`` on the network output (close over targets).
        train: apply layers in train mode (dropout, batch statistics).
        key: dropout key, split once per layer as ``serial`` does.

    Returns:
        A :class:`GradFlow`; its ``nonfinite`` says where (layer k, forward or backward)
        values first went NaN or inf.

    Raises:
        ValueError: ``x`` not a non-empty float array, params of another network (another
            width or input size), ``train`` not a bool, ``key`` not a PRNG key.

    Examples:
        >>> import jax, jgrad
        >>> net = jgrad.nn.mlp(60, 32, activation="sigmoid", init="standard_uniform")
        >>> _, params = net.init(jax.random.key(0), (32,))
        >>> x = jax.random.normal(jax.random.key(1), (8, 32))
        >>> flow = jgrad.analyze.layer_grad_norms(net, params, x, lambda y: (y**2).sum())
        >>> bool(flow.underflow[0]), bool(flow.log10_norm[0] < -40)
        (True, True)
    """
    _checks.boolean("train", train)
    _checks.prng_key("key", key, optional=True)
    check_input("layer_grad_norms", net, params, x, one_example=False)
    layers, params, _ = resolve_net(net, params, blocks=False)
    keys = split_keys(key, len(layers))
    # per layer: its output(s) stacked on a leading axis (n for a repeat layer, else 1)
    hs = [jnp.asarray(x)[None]]
    passes = []  # per layer: a VJP function, or a repeat layer's (block, params, key)
    for layer, p, k in zip(layers, params, keys, strict=True):
        h_in = hs[-1][-1]
        if layer.info.kind == "repeat":
            block = layer.info.block
            traj = _repeat.forward_trajectory(block, p, h_in, train=train, key=k)
            hs.append(traj.hs)
            passes.append((block, p, k, h_in, traj.hs))
            continue
        h, f = jax.vjp(
            lambda h_in, p, k=k, layer=layer: layer.apply(p, h_in, train=train, key=k),
            h_in,
            p,
        )
        hs.append(h[None])
        passes.append(f)
    loss, g = jax.value_and_grad(loss_fn)(hs[-1][-1])

    def norm(v):  # max-scaled: squaring tiny entries cannot underflow
        return vec_norm(jnp.ravel(v))

    raw = g
    n = norm(g)
    log_scale = jnp.log10(n)
    g = jnp.where(n > 0, safe_div(g, n), g)
    logs, raws, zeros = [log_scale[None]], [n[None]], [jnp.all(raw == 0)[None]]
    param_logs = []
    for f in reversed(passes):
        if isinstance(f, tuple):  # a repeat layer: one backward scan over its blocks
            block, p, k, h_in, hr = f
            rg = _repeat.grad_norms(
                block,
                p,
                h_in,
                g,
                log10_scale=log_scale,
                raw_cotangent=raw,
                hs=hr,
                train=train,
                key=k,
            )
            g, raw = rg.cotangent, rg.raw_cotangent
            log_scale = rg.log10_norm[0]
            param_logs.append(rg.param_log10_norm)
            logs.append(rg.log10_norm)  # block order (the list is reversed below)
            raws.append(rg.raw_norm)
            zeros.append(rg.raw_zero)
            continue
        raw, _ = f(raw)
        g, gp = f(g)
        # dL/dtheta = ||dL/dh_out|| * vjp_theta(unit cotangent): log10 adds.
        param_logs.append(jax.tree.map(lambda v, s=log_scale: _param_log(s, v), gp))
        n = norm(g)
        log_scale = log_scale + jnp.log10(n)
        g = jnp.where(n > 0, safe_div(g, n), g)
        logs.append(log_scale[None])
        raws.append(norm(raw)[None])
        zeros.append(jnp.all(raw == 0)[None])
    log10_norm = jnp.concatenate(logs[::-1])
    raw_norm = jnp.concatenate(raws[::-1])
    forward_finite = jnp.concatenate([_finite_rows(h) for h in hs])
    # dL/dh_k is computed from h_k..h_K (the VJPs above it and the loss)
    dep = _from_top(~forward_finite)
    bad = jnp.isnan(log10_norm) | (log10_norm == jnp.inf)
    bad = bad.at[-1].set(bad[-1] | ~jnp.isfinite(loss))
    new = bad & ~dep
    nan = dep | _from_top(new)
    log10_norm = jnp.where(nan, jnp.nan, log10_norm)

    def mask(v, flag):
        return jnp.where(flag | jnp.isnan(v) | (v == jnp.inf), jnp.nan, v)

    # a parameter gradient: from the layer's input h_i and the cotangent at its output;
    # masked with the flag at its input index i (a repeat layer: one per block)
    out_logs, i = [], 0
    for f, h, pl in zip(passes, hs[1:], param_logs[::-1], strict=True):
        r = h.shape[0]
        flag = nan[i : i + r] if isinstance(f, tuple) else nan[i]
        out_logs.append(jax.tree.map(lambda v, f=flag: mask(v, f), pl))
        i += r
    return GradFlow(
        log10_norm=log10_norm,
        raw_norm=raw_norm,
        underflow=jnp.concatenate(zeros[::-1]) & jnp.isfinite(log10_norm),
        forward_finite=forward_finite,
        loss=loss,
        param_log10_norm=tuple(out_logs),
        nonfinite=nonfinite_record(first_true(~forward_finite), last_true(new)),
        log10_act_norm=jnp.concatenate([jax.vmap(_log10_norm)(h) for h in hs]),
    )


def _finite_rows(hs):
    """``(r,)`` bool: every entry of ``hs[i]`` is finite (``hs`` stacked on axis 0)."""
    return jnp.all(jnp.isfinite(hs.reshape(hs.shape[0], -1)), axis=1)
