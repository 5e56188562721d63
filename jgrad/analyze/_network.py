"""A network as every analyzer sees it: its layers, one params entry per layer, its blocks.

Analyzers accept the same ``net``: a ``jgrad.nn.serial`` network (``mlp``, ``resnet``, ...;
its ``info.layers`` and ``info.block_ends``), a single Layer, or a non-empty sequence whose
items are Layers, flax ``linen.Module``s (params entry: the module's variables) or functions
``fn(params, x) -> y``. :func:`resolve_net` is the one place that reads it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.nn._layer import Layer, check_info

__all__ = ["Network", "as_layers", "resolve_net"]


class Network(NamedTuple):
    """A resolved network.

    Attributes:
        layers: the layers, first to last.
        params: their params, one entry per layer.
        ends: the indices of the layers that end a block, increasing; the last layer is
            always one.
    """

    layers: tuple[Layer, ...]
    params: tuple | list
    ends: tuple[int, ...]


def _flax_layer(module) -> Layer:
    def init(key, in_shape):
        variables = module.init(key, jnp.zeros(tuple(in_shape), jnp.float32))
        out = jax.eval_shape(module.apply, variables, jnp.zeros(tuple(in_shape)))
        return tuple(out.shape), variables

    def apply(params, x, *, train=False, key=None, return_state=False):
        del train, key
        y = module.apply(params, x)
        return (y, params) if return_state else y

    return Layer(init, apply)


def _callable_layer(fn) -> Layer:
    def init(key, in_shape):
        raise ValueError(
            "a plain function in `net` has no init; pass its params yourself."
        )

    def apply(params, x, *, train=False, key=None, return_state=False):
        del train, key
        y = fn(params, x)
        return (y, params) if return_state else y

    return Layer(init, apply)


def _is_flax_module(obj) -> bool:
    try:
        import flax.linen as nn
    except ImportError:  # pragma: no cover - flax is a core dependency
        return False
    return isinstance(obj, nn.Module)


def as_layers(net: Any) -> tuple[tuple[Layer, ...], tuple[int, ...]]:
    """The layers of ``net`` (see the module docstring) and the indices of the layers that
    end a block (every layer, unless ``net`` is a serial network that declares them).

    Raises:
        ValueError: if ``net`` is none of the accepted forms, or a Layer in it declares an
            inconsistent ``info``.
    """
    if isinstance(net, Layer):
        check_info(net, "net")
        if net.info.kind == "serial":
            return net.info.layers, net.info.block_ends
        return (net,), (0,)
    if isinstance(net, (tuple, list)) and net:
        out = []
        for i, item in enumerate(net):
            if isinstance(item, Layer):
                check_info(item, f"net[{i}]")
                out.append(item)
            elif _is_flax_module(item):
                out.append(_flax_layer(item))
            elif callable(item):
                out.append(_callable_layer(item))
            else:
                raise ValueError(
                    f"`net[{i}]` must be a jgrad.nn.Layer, a flax.linen.Module or a function "
                    f"fn(params, x), got {type(item).__name__}."
                )
        return tuple(out), tuple(range(len(out)))
    raise ValueError(
        f"`net` must be a jgrad.nn.Layer or a non-empty sequence of Layers / flax modules / "
        f"functions fn(params, x), got {type(net).__name__}. Build it with "
        "jgrad.nn.serial(...) or jgrad.nn.mlp(...)."
    )


def resolve_net(net: Any, params: Any, blocks: bool) -> Network:
    """``net`` and ``params`` as a validated :class:`Network`. The ends always include the
    last layer (a trailing readout is one more block); ``blocks=False`` makes every layer
    one. A single non-serial Layer takes its own params (or them in a one-entry list).

    Raises:
        ValueError: as :func:`as_layers`, ``blocks`` not a bool, or ``params`` without one
            entry per layer.
    """
    _checks.boolean("blocks", blocks)
    layers, ends = as_layers(net)
    if (
        isinstance(net, Layer)
        and net.info.kind != "serial"
        and not (isinstance(params, (tuple, list)) and len(params) == 1)
    ):
        params = (params,)
    if not isinstance(params, (tuple, list)) or len(params) != len(layers):
        got = (
            len(params) if isinstance(params, (tuple, list)) else type(params).__name__
        )
        raise ValueError(
            f"`params` must have one entry per layer ({len(layers)}), got {got}. Pass the "
            "params returned by net.init."
        )
    ends = tuple(range(len(layers))) if not blocks else tuple(sorted(set(ends)))
    if not ends or ends[-1] != len(layers) - 1:
        ends = ends + (len(layers) - 1,)
    return Network(layers, params, ends)
