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
from jgrad.analyze._logspace import safe_div, vec_norm
from jgrad.analyze._network import as_layers, resolve_net
from jgrad.analyze._precision import full_precision
from jgrad.nn._layer import Layer, split_keys

__all__ = ["GradFlow", "layer_grad_norms", "net_layers"]


class GradFlow(NamedTuple):
    """Gradient norms at every layer output of one backward pass.

    Index k = 0 is the input h_0 = x; k >= 1 is the output h_k of layer k (``len(layers)+1``
    entries). Logs are base 10, as the fields' names say.

    Attributes:
        log10_norm: (K+1,) log10 ||dL/dh_k|| (Frobenius norm over the whole input batch),
            computed stably; ``-inf`` only when the gradient is exactly zero (a dead ReLU
            layer), never because of underflow.
        raw_norm: (K+1,) ||dL/dh_k|| from the plain float32 backward pass (what ``jax.grad``
            gives); 0 where it underflowed.
        underflow: (K+1,) bool, every entry of the plain float32 gradient dL/dh_k is exactly
            zero although the stable norm is finite: it underflowed.
        forward_finite: (K+1,) bool, every entry of h_k is finite.
        loss: the scalar loss.
        param_log10_norm: a tuple with one entry per layer, shaped like that layer's params,
            holding log10 ||dL/dtheta|| for every parameter leaf (computed in the same
            backward pass with the same rescaling, so an underflowing gradient is still
            reported).
    """

    log10_norm: jax.Array
    raw_norm: jax.Array
    underflow: jax.Array
    forward_finite: jax.Array
    loss: jax.Array
    param_log10_norm: tuple = ()


def net_layers(net: Layer | tuple | list) -> tuple[Layer, ...]:
    """The layers of a network, as every analyzer reads them: a ``serial`` network's
    ``info.layers``, a sequence's items (flax modules and functions ``fn(params, x)``
    wrapped as Layers), else ``(net,)``.

    Raises:
        ValueError: if ``net`` is none of these.
    """
    return as_layers(net)[0]


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
        A :class:`GradFlow`.

    Examples:
        >>> import jax, jgrad
        >>> net = jgrad.nn.mlp(60, 32, activation="sigmoid", init="standard_uniform")
        >>> _, params = net.init(jax.random.key(0), (32,))
        >>> x = jax.random.normal(jax.random.key(1), (8, 32))
        >>> flow = jgrad.analyze.layer_grad_norms(net, params, x, lambda y: (y**2).sum())
        >>> bool(flow.underflow[0]), bool(flow.log10_norm[0] < -40)
        (True, True)
    """
    layers, params, _ = resolve_net(net, params, blocks=False)
    _checks.boolean("train", train)
    keys = split_keys(key, len(layers))
    hs = [x]
    vjps = []
    for layer, p, k in zip(layers, params, keys, strict=True):
        h, f = jax.vjp(
            lambda h_in, p, k=k, layer=layer: layer.apply(p, h_in, train=train, key=k),
            hs[-1],
            p,
        )
        hs.append(h)
        vjps.append(f)
    loss, g = jax.value_and_grad(loss_fn)(hs[-1])

    def norm(v):
        return vec_norm(
            jnp.ravel(v)
        )  # max-scaled: squaring tiny entries cannot underflow

    raw = g
    n = norm(g)
    log_scale = jnp.log10(n)
    g = jnp.where(n > 0, safe_div(g, n), g)
    logs, raws, zeros = [log_scale], [n], [jnp.all(raw == 0)]
    param_logs = []
    for f in reversed(vjps):
        raw, _ = f(raw)
        g, gp = f(g)
        # dL/dtheta = ||dL/dh_out|| * vjp_theta(unit cotangent): log10 adds.
        param_logs.append(
            jax.tree.map(lambda v, s=log_scale: s + jnp.log10(norm(v)), gp)
        )
        n = norm(g)
        log_scale = log_scale + jnp.log10(n)
        g = jnp.where(n > 0, safe_div(g, n), g)
        logs.append(log_scale)
        raws.append(norm(raw))
        zeros.append(jnp.all(raw == 0))
    log10_norm = jnp.stack(logs[::-1])
    raw_norm = jnp.stack(raws[::-1])
    return GradFlow(
        log10_norm=log10_norm,
        raw_norm=raw_norm,
        underflow=jnp.stack(zeros[::-1]) & jnp.isfinite(log10_norm),
        forward_finite=jnp.stack([jnp.all(jnp.isfinite(h)) for h in hs]),
        loss=loss,
        param_log10_norm=tuple(param_logs[::-1]),
    )
