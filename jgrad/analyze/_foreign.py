"""Models from other libraries as jgrad networks: the adapters behind every analyzer's ``net``.

An :class:`Adapter` turns one form of model into jgrad Layers (``layers(net)``, structure
only, cached per model object) and its params into one entry per layer
(``params(net, params)``). :func:`find` is the one lookup; ``_network.resolve_net`` calls it,
so every analyzer accepts every form registered here:

- ``flax.linen.Sequential``: a chain, one layer per item (``_linen.py``);
- any other ``flax.linen.Module``: the whole model as one layer; ``module_chain(model,
  in_shape, select=...)`` makes the chain of its selected submodule calls
  (``_chain.py``);
- ``flax.nnx.Sequential`` and other NNX modules (``_nnx.py``);
- ``equinox.nn.Sequential`` and other equinox modules (``_equinox.py``; equinox optional);
- a function ``fn(params, x) -> y``: one layer (any model, batch-coupled ones included).

Pieces with closed forms become jgrad's own layers, so the analyzers use the closed forms
for them: a Dense/Linear layer with a bias becomes ``jgrad.nn.dense`` (params ``{"w":
(in, out), "b": (out,)}``) and a known activation function (:func:`known_activation`)
``jgrad.nn.elementwise``. Anything else is a layer of kind None, whose Jacobian the
analyzers take by autodiff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad.nn._activations import elementwise
from jgrad.nn._layer import Layer

__all__ = [
    "Adapter",
    "FORMS",
    "block_ends",
    "cached_layers",
    "find",
    "function_layer",
    "known_activation",
    "register",
]

FORMS = (
    "a jgrad.nn.Layer (serial, mlp, resnet, ...), a flax.linen.Module (nn.Sequential: one "
    "layer per item), jgrad.analyze.module_chain(model, in_shape), a flax.nnx.Module "
    "(nnx.Sequential: one layer per item), an equinox.Module (eqx.nn.Sequential: one "
    "layer per item), a function fn(params, x) -> y, or a non-empty list of Layers, "
    "linen modules and functions"
)


class Adapter(NamedTuple):
    """One form of model.

    Attributes:
        name: the form, as messages name it (``"flax.linen.Sequential"``).
        matches: ``matches(net) -> bool``.
        layers: ``layers(net) -> tuple[Layer, ...]``, the chain (structure only).
        params: ``params(net, params) -> tuple``, one entry per layer; ``params`` is what
            the user passed (raises ValueError naming ``params`` when it does not fit).
        probe: ``probe(net, params, x, select) -> _module_flow.Probe``, the model with a
            perturbation on the output of every submodule call that ``select(path,
            module)`` accepts (what ``module_grad_norms`` differentiates), or None when
            the form has no submodules to probe.
    """

    name: str
    matches: Callable[[Any], bool]
    layers: Callable[[Any], tuple[Layer, ...]]
    params: Callable[[Any, Any], tuple]
    probe: Callable | None = None


_ADAPTERS: list[Adapter] = []


def register(adapter: Adapter) -> Adapter:
    """Adds ``adapter`` to the forms :func:`find` knows (first registered, first tried)."""
    _ADAPTERS.append(adapter)
    return adapter


def find(net: Any) -> Adapter | None:
    """The adapter for ``net``, or None (a jgrad Layer, a list, or an unknown object)."""
    from jgrad.analyze import _chain, _equinox, _linen, _nnx  # noqa: F401 - they register

    if isinstance(net, Layer):
        return None
    for adapter in _ADAPTERS:
        if adapter.matches(net):
            return adapter
    return None


_CACHE: dict[int, tuple[Any, tuple[Layer, ...]]] = {}


def cached_layers(build: Callable[[Any], tuple[Layer, ...]]):
    """``build(net)`` once per model object (the same Layer objects on every call, so
    the analyzers' caches keyed by layers hit). Models are held by identity (flax
    modules with list attributes are unhashable); the cache keeps at most 64."""

    def layers(net):
        hit = _CACHE.get(id(net))
        if hit is not None and hit[0] is net:
            return hit[1]
        out = build(net)
        if len(_CACHE) >= 64:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[id(net)] = (net, out)
        return out

    return layers


def block_ends(layers: tuple[Layer, ...]) -> tuple[int, ...]:
    """The blocks of a converted chain, as ``jgrad.nn.mlp`` declares its own: a block
    ends at each activation layer (kind ``"elementwise"``) not followed by another, and
    at the last layer; with no activation layer, every layer is a block. So a Sequential
    ``[Dense, tanh, Dense, tanh, Dense]`` has blocks ``dense -> tanh`` (the
    representations h_l after each activation) and the readout, and ``blocks=False``
    gives every layer."""
    kinds = [layer.info.kind for layer in layers]
    if "elementwise" not in kinds:
        return tuple(range(len(layers)))
    ends = [
        i
        for i, k in enumerate(kinds[:-1])
        if k == "elementwise" and kinds[i + 1] != "elementwise"
    ]
    return (*ends, len(layers) - 1)


def function_layer(fn: Callable) -> Layer:
    """``fn(params, x) -> y`` as a Layer of kind None (Jacobians by autodiff). Its init
    cannot run (there is nothing to init), so the analyzers skip the params check."""

    def init(key, in_shape):
        # not a ValueError: check_params_shapes skips a network it cannot init
        raise NotImplementedError(
            "a function in `net` has no init; pass its params yourself."
        )

    def apply(params, x, *, train=False, key=None, return_state=False):
        del train, key
        y = fn(params, x)
        return (y, params) if return_state else y

    return Layer(init, apply)


def _activation_table() -> dict[Any, str]:
    """Functions (by identity) that equal a jgrad activation exactly, with its name."""
    import flax.linen as linen

    table = {
        jax.nn.relu: "relu",
        jax.nn.sigmoid: "sigmoid",
        jnp.tanh: "tanh",
        jax.nn.softplus: "softplus",
        jax.nn.silu: "silu",
        jax.nn.swish: "silu",
        jax.nn.selu: "selu",
        jax.nn.elu: "elu",
        jax.nn.leaky_relu: "leaky_relu",
        jax.nn.hard_tanh: "hard_tanh",
        jax.scipy.special.erf: "erf",
        linen.tanh: "tanh",
        linen.relu: "relu",
        linen.sigmoid: "sigmoid",
    }
    try:
        from flax import nnx

        table.update({nnx.tanh: "tanh", nnx.relu: "relu", nnx.sigmoid: "sigmoid"})
    except ImportError:  # pragma: no cover - nnx ships with flax >= 0.8
        pass
    return table


_TABLE: dict[Any, str] | None = None


def known_activation(fn: Any) -> str | None:
    """The jgrad activation name that ``fn`` equals exactly (``jnp.tanh``,
    ``jax.nn.relu``, ``flax.linen.sigmoid``, ...), or None. Only the functions
    themselves are matched (a lambda around one is not: it is taken by autodiff)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _activation_table()
    try:
        return _TABLE.get(fn)
    except TypeError:  # unhashable
        return None


def activation_layer(name: str) -> Layer:
    """``jgrad.nn.elementwise(name)``, one Layer object per name (cached)."""
    if name not in _ACT_LAYERS:
        _ACT_LAYERS[name] = elementwise(name)
    return _ACT_LAYERS[name]


_ACT_LAYERS: dict[str, Layer] = {}
