"""``record_layers``: the analyzers' per-layer gradient flow as a ``record_fn`` of
``jgrad.optim.train``.

Every ``record_every`` steps ``train`` calls the returned function on the current params
and batch; it runs ``jgrad.analyze.layer_grad_norms`` (one backward pass, rescaled at
every layer so no norm underflows) and returns, per layer, log10 ||dL/dh_k|| and log10
||dL/dtheta_k||, and where the pass first went non-finite. The analysis is jitted once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["record_layers"]


def _log10_total(logs: list[jax.Array]) -> jax.Array:
    """log10 sqrt(sum_i 10^(2 l_i)) of per-leaf log10 norms, without overflow."""
    if not logs:
        return jnp.array(-jnp.inf, jnp.float32)
    a = 2.0 * jnp.stack(jnp.broadcast_arrays(*logs), axis=-1) * jnp.log(10.0)
    return 0.5 * jax.nn.logsumexp(a, axis=-1) / jnp.log(10.0)


def record_layers(
    net: Any,
    loss: Callable[[jax.Array, Any], jax.Array],
    *,
    inputs: Callable[[Any], jax.Array] | None = None,
) -> Callable[[Any, Any], dict]:
    """A ``record_fn`` for ``jgrad.optim.train`` recording each layer's gradient norms.

    Args:
        net: the network the params belong to (anything ``jgrad.analyze.layer_grad_norms``
            takes: a ``jgrad.nn`` network, a flax ``linen.Sequential``, ...); ``train``'s
            params must be its params.
        loss: ``loss(y, batch) -> scalar``, the training loss from the network output
            ``y`` (the same loss as ``train``'s ``loss_fn``, taking the targets from
            ``batch``).
        inputs: ``inputs(batch) -> x``, the network input of a batch (default
            ``batch[0]``).

    Returns:
        ``record_fn(params, batch) -> dict`` with ``log10_layer_grad_norms`` ((K+1,),
        log10 ||dL/dh_k||, k = 0 the input), ``log10_layer_param_grad_norms`` ((K,),
        log10 of the norm of each layer's parameter gradient, -inf for a layer without
        params), ``nonfinite_forward_layer`` and ``nonfinite_backward_layer`` (the first
        layer going forward, and going back from the loss, whose values went NaN or inf;
        -1 for none). K counts a stacked network's blocks, as ``GradFlow`` does.

    Raises:
        ValueError: ``loss`` or ``inputs`` not a function.

    Examples:
        >>> import jax, jax.numpy as jnp, jgrad
        >>> net = jgrad.nn.mlp(3, 8, activation="tanh", out_dim=1)
        >>> _, params = net.init(jax.random.key(0), (4,))
        >>> def loss(y, batch):
        ...     return jnp.mean((y[:, 0] - batch[1]) ** 2)
        >>> rec = jgrad.optim.record_layers(net, loss)
        >>> batch = (jax.random.normal(jax.random.key(1), (5, 4)), jnp.arange(5.0))
        >>> r = rec(params, batch)  # 7 layers: 4 dense, 3 tanh
        >>> r["log10_layer_grad_norms"].shape, r["log10_layer_param_grad_norms"].shape
        ((8,), (7,))
    """
    from jgrad.analyze import layer_grad_norms

    for name, fn in (("loss", loss), ("inputs", inputs)):
        if fn is not None and not callable(fn):
            raise ValueError(
                f"`{name}` must be a function, got {type(fn).__name__}. Pass e.g. "
                "`lambda y, batch: jnp.mean((y - batch[1]) ** 2)` as loss."
            )
    get_x = inputs if inputs is not None else (lambda batch: batch[0])

    @jax.jit
    def analyse(params, batch):
        flow = layer_grad_norms(net, params, get_x(batch), lambda y: loss(y, batch))
        per_layer = []
        for p in flow.param_log10_norm:
            logs = jax.tree.leaves(p)
            total = _log10_total(logs)
            per_layer.append(total if total.ndim else total[None])
        return {
            "log10_layer_grad_norms": flow.log10_norm,
            "log10_layer_param_grad_norms": jnp.concatenate(per_layer),
            "nonfinite_forward_layer": flow.nonfinite.forward,
            "nonfinite_backward_layer": flow.nonfinite.backward,
        }

    return analyse
