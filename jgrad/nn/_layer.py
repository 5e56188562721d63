"""The ``Layer(init, apply)`` protocol and the ``serial`` combinator.

A layer is a NamedTuple of two pure functions, as in ``jax.example_libraries.stax``:

- ``init(key, in_shape) -> (out_shape, params)`` computes shapes without running the layer;
  ``in_shape`` is the shape of ONE example (no batch axis).
- ``apply(params, x, *, train=False, key=None, return_state=False) -> y`` (or ``(y, params)``
  when ``return_state=True``). Every layer takes exactly these keywords, so a typo is a
  ``TypeError`` rather than silently ignored. ``train`` switches dropout and batch norm to
  training behaviour; ``key`` feeds dropout; ``return_state`` also returns the params with
  any running statistics updated (batch norm) and every other entry unchanged.

Params are dicts with fixed names (``{"w", "b"}`` for dense, ``{}`` for a layer without
parameters); ``serial`` holds a tuple with one entry per layer, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Params = Any
Shape = tuple[int, ...]

__all__ = [
    "Layer",
    "Params",
    "Shape",
    "serial",
    "plain_layer",
    "check_in_shape",
    "lead",
]


class Layer(NamedTuple):
    """A network layer as two pure functions (see the module docstring).

    Attributes:
        init: ``init(key, in_shape) -> (out_shape, params)``.
        apply: ``apply(params, x, *, train=False, key=None, return_state=False)``.
    """

    init: Callable[[jax.Array, Shape], tuple[Shape, Params]]
    apply: Callable[..., Any]


class SerialLayer(Layer):
    """A :class:`Layer` that also exposes the layers it composes as ``.layers``.

    Analyzers walk ``.layers`` to take per-layer Jacobians and gradients. Builders may set
    ``.block_ends``: the indices of the layers whose outputs are the blocks' outputs h_l
    (e.g. after each activation of an MLP).
    """


def lead(v: jax.Array, ndim: int) -> jax.Array:
    """Adds leading unit axes to ``v`` up to rank ``ndim``: explicit broadcasting, so layers
    work under ``jax_numpy_rank_promotion="raise"``."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def check_in_shape(
    in_shape: Any, min_rank: int = 0, layer: str = "this layer"
) -> Shape:
    """Validates an ``init`` input shape: a tuple of positive ints (one example, no batch)
    with at least ``min_rank`` axes."""
    try:
        shape = tuple(int(d) for d in in_shape)
        ok = all(d >= 1 and d == e for d, e in zip(shape, in_shape, strict=True))
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"`in_shape` must be a tuple of positive ints, the shape of ONE example "
            f"(no batch axis), got {in_shape!r}. E.g. init(key, (784,)) for a vector input."
        )
    if len(shape) < min_rank:
        raise ValueError(
            f"`in_shape` must have at least {min_rank} axis (a feature axis) for {layer}, "
            f"got {shape}. E.g. init(key, (784,)) for a vector input."
        )
    return shape


def plain_layer(
    init: Callable[[jax.Array, Shape], tuple[Shape, Params]],
    fn: Callable[[Params, jax.Array], jax.Array],
) -> Layer:
    """Builds a Layer from ``fn(params, x) -> y`` that has no train mode, key or state."""

    def apply(params, x, *, train=False, key=None, return_state=False):
        del train, key
        y = fn(params, x)
        return (y, params) if return_state else y

    def checked_init(key, in_shape):
        return init(key, check_in_shape(in_shape))

    return Layer(checked_init, apply)


def serial(*layers: Layer) -> SerialLayer:
    """Composes layers in order; itself a Layer.

    Args:
        *layers: the layers, applied first to last.

    Returns:
        A :class:`SerialLayer` whose ``apply`` additionally takes
        ``return_intermediates=True`` and then returns ``(y, hs)`` with ``hs`` a tuple of
        every layer's output (``hs[-1] is y``); with ``return_state=True`` it returns
        ``(y, new_params)`` or ``(y, hs, new_params)``. A ``key`` is split once, one subkey
        per layer.

    Raises:
        ValueError: if no layers are given or an argument is not a Layer.

    Examples:
        >>> import jax, jgrad
        >>> net = jgrad.nn.serial(jgrad.nn.dense(3), jgrad.nn.elementwise("tanh"))
        >>> out_shape, params = net.init(jax.random.key(0), (5,))
        >>> out_shape, len(params)
        ((3,), 2)
        >>> y, hs = net.apply(params, jax.numpy.arange(1.0, 6.0), return_intermediates=True)
        >>> [h.shape for h in hs]
        [(3,), (3,)]
    """
    if not layers:
        raise ValueError(
            "`layers` must be at least one Layer, got none. serial(dense(8), ...)"
        )
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise ValueError(
                f"`layers[{i}]` must be a jgrad.nn.Layer (init, apply), got "
                f"{type(layer).__name__}. Build layers with jgrad.nn.dense, elementwise, ..."
            )

    def init(key, in_shape):
        shape = check_in_shape(in_shape)
        keys = jax.random.split(key, len(layers))
        params = []
        for k, layer in zip(keys, layers, strict=True):
            shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def apply(
        params,
        x,
        *,
        train=False,
        key=None,
        return_state=False,
        return_intermediates=False,
    ):
        if not isinstance(params, (tuple, list)) or len(params) != len(layers):
            n = (
                len(params)
                if isinstance(params, (tuple, list))
                else type(params).__name__
            )
            raise ValueError(
                f"`params` must be a sequence of {len(layers)} per-layer entries (from this "
                f"network's init), got {n}. Pass the params returned by net.init."
            )
        keys = (
            [None] * len(layers)
            if key is None
            else list(jax.random.split(key, len(layers)))
        )
        hs, new_params = [], []
        for layer, p, k in zip(layers, params, keys, strict=True):
            out = layer.apply(p, x, train=train, key=k, return_state=return_state)
            if return_state:
                x, p = out
                new_params.append(p)
            else:
                x = out
            hs.append(x)
        result = (x, tuple(hs)) if return_intermediates else (x,)
        if return_state:
            result = result + (tuple(new_params),)
        return result if len(result) > 1 else result[0]

    net = SerialLayer(init, apply)
    net.layers = tuple(layers)
    net.block_ends = tuple(range(len(layers)))
    return net
