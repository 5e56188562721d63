"""Batch normalization and layer normalization."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.nn._layer import (
    Layer,
    LayerInfo,
    check_apply,
    check_in_shape,
    check_init,
    check_params,
    lead,
    plain_layer,
)

__all__ = ["batch_norm", "layer_norm"]


def batch_norm(momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch normalization over every axis but the last (features/channels).

    Unlike every other jgrad layer, batch norm couples the examples of a batch: in train
    mode its ``apply`` takes the WHOLE batch ``(B, ..., C)`` (do not ``vmap`` it) and
    normalises with the batch mean and biased variance; in eval mode it uses the running
    statistics stored in params and works on one example or a batch. The running statistics
    are params entries (so they are saved and addressed by name) that never receive gradient
    (they pass through ``lax.stop_gradient``); exclude them from weight decay with
    ``optax.masked``. ``apply(..., train=True, return_state=True)`` returns ``(y, params)``
    with ``mean <- momentum * mean + (1 - momentum) * batch_mean`` and likewise ``var``
    (flax.linen.BatchNorm's convention; PyTorch's ``momentum`` is ``1 - momentum`` here and
    PyTorch updates with the unbiased variance).

    Args:
        momentum: weight of the old running statistics, in [0, 1).
        eps: added to the variance before the square root.

    Returns:
        A Layer with params ``{"scale": (C,), "offset": (C,), "mean": (C,), "var": (C,)}``
        initialised to ones, zeros, zeros, ones; ``info.couples_examples`` is True.

    References:
        Ioffe & Szegedy, "Batch Normalization", ICML 2015, arXiv:1502.03167; Yang et al.,
        "A Mean Field Theory of Batch Normalization", ICLR 2019, arXiv:1902.08129.
    """
    momentum = _checks.probability(
        "momentum",
        momentum,
        "momentum is the weight of the old running statistics, e.g. 0.9 (PyTorch's "
        "momentum=0.1).",
    )
    eps = _checks.positive("eps", eps)

    def init(key, in_shape):
        del key
        c = check_in_shape(in_shape, 1, "batch_norm")[-1]
        params = {
            "scale": jnp.ones((c,), jnp.float32),
            "offset": jnp.zeros((c,), jnp.float32),
            "mean": jnp.zeros((c,), jnp.float32),
            "var": jnp.ones((c,), jnp.float32),
        }
        return tuple(in_shape), params

    def apply(params, x, *, train=False, key=None, return_state=False):
        check_apply(x, train, key, return_state)
        check_params(params, ("scale", "offset", "mean", "var"), "batch_norm")
        c = params["scale"].shape[0]
        _checks.feature_size("x", jnp.shape(x), c, layer="batch_norm")
        if train:
            if jnp.ndim(x) < 2:
                _checks._fail(
                    "x",
                    f"a batch (B, ..., {c}) for batch_norm in train mode",
                    f"shape {jnp.shape(x)}",
                    "Batch norm couples examples: apply the network to the whole batch "
                    "instead of vmapping it, or use train=False.",
                )
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - lead(mean, x.ndim)), axis=axes)
        else:
            mean = jax.lax.stop_gradient(params["mean"])
            var = jax.lax.stop_gradient(params["var"])
        n = jnp.ndim(x)
        inv = jax.lax.rsqrt(var + eps) * params["scale"]
        y = (x - lead(mean, n)) * lead(inv, n) + lead(params["offset"], n)
        if not return_state:
            return y
        new = dict(params)
        if train:
            m = momentum
            new["mean"] = m * params["mean"] + (1 - m) * jax.lax.stop_gradient(mean)
            new["var"] = m * params["var"] + (1 - m) * jax.lax.stop_gradient(var)
        return y, new

    def checked_init(key, in_shape):
        return init(key, check_init(key, in_shape))

    return Layer(
        checked_init, apply, LayerInfo(kind="batch_norm", couples_examples=True)
    )


def layer_norm(eps: float = 1e-5) -> Layer:
    """Layer normalization over the last axis of one example (features).

    Args:
        eps: added to the variance before the square root (flax.linen.LayerNorm's default is
            1e-6, PyTorch's 1e-5).

    Returns:
        A Layer with params ``{"scale": (C,), "offset": (C,)}`` (ones, zeros).

    References:
        Ba, Kiros & Hinton, "Layer Normalization", 2016, arXiv:1607.06450.
    """
    eps = _checks.positive("eps", eps)

    def init(key, in_shape):
        del key
        c = check_in_shape(in_shape, 1, "layer_norm")[-1]
        return in_shape, {
            "scale": jnp.ones((c,), jnp.float32),
            "offset": jnp.zeros((c,)),
        }

    def fn(params, x):
        _checks.feature_size(
            "x", jnp.shape(x), params["scale"].shape[0], layer="layer_norm"
        )
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        n = jnp.ndim(x)
        y = (x - mean) * jax.lax.rsqrt(var + eps)
        return y * lead(params["scale"], n) + lead(params["offset"], n)

    return plain_layer(init, fn, LayerInfo(), ("scale", "offset"), "layer_norm")
