"""flax.linen models as jgrad networks (see ``_foreign``): ``nn.Sequential`` chains, lists
of modules, whole modules as one layer, and :func:`module_chain`, the chain of a module's
selected submodule calls.

Params are the model's variables as ``model.init`` returns them (``{"params": ...,
"batch_stats": ...}``; a bare params dict is read as ``{"params": params}``). An
``nn.Dense`` with a bias and default precision becomes ``jgrad.nn.dense`` with params
``{"w": kernel, "b": bias}`` (closed-form Jacobian); a known activation function becomes
``jgrad.nn.elementwise``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp

from jgrad.analyze import _foreign
from jgrad.nn._dense import dense
from jgrad.nn._layer import Layer

__all__ = ["is_module", "item_layer", "item_params", "module_layer", "variables_of"]


def is_module(obj: Any) -> bool:
    """``obj`` is a flax.linen Module."""
    return isinstance(obj, linen.Module)


def variables_of(params: Any, arg: str = "params") -> dict:
    """A linen model's variables: ``params`` itself when it holds a ``"params"``
    collection, else ``{"params": params}``.

    Raises:
        ValueError: ``params`` is not a mapping (naming ``arg``).
    """
    if not isinstance(params, Mapping):
        raise ValueError(
            f"`{arg}` must be the flax variables dict that model.init returns ({{'params': "
            f"...}}), got {type(params).__name__}. Pass variables = model.init(key, x)."
        )
    return dict(params) if "params" in params else {"params": params}


def _dense_like(m: Any) -> bool:
    """``m`` is an ``nn.Dense`` that ``jgrad.nn.dense`` computes exactly."""
    return (
        type(m) is linen.Dense
        and m.use_bias
        and m.dtype is None
        and m.precision is None
        and m.dot_general is None
        and m.dot_general_cls is None
    )


def module_layer(module: Any) -> Layer:
    """A linen module as a Layer of kind None: params its variables; ``init`` is the
    module's own (so the analyzers can check params shapes)."""

    def init(key, in_shape):
        variables = module.init(key, jnp.zeros(tuple(in_shape), jnp.float32))
        out = jax.eval_shape(module.apply, variables, jnp.zeros(tuple(in_shape)))
        return tuple(out.shape), variables

    def apply(params, x, *, train=False, key=None, return_state=False):
        del train, key
        y = module.apply(params, x)
        return (y, params) if return_state else y

    return Layer(init, apply)


def _unary_layer(fn: Any) -> Layer:
    """``fn(x) -> y`` (a Sequential item without params) as a Layer with params ``{}``."""

    def init(key, in_shape):
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(tuple(in_shape), jnp.float32))
        return tuple(out.shape), {}

    def apply(params, x, *, train=False, key=None, return_state=False):
        del train, key
        y = fn(x)
        return (y, params) if return_state else y

    return Layer(init, apply)


def _sequential_item(item: Any) -> Layer:
    if _dense_like(item):
        return dense(item.features)
    if is_module(item):
        return module_layer(item)
    name = _foreign.known_activation(item)
    return _foreign.activation_layer(name) if name else _unary_layer(item)


def item_layer(item: Any) -> Layer | None:
    """A list item (not a Layer) as a Layer: a linen module (a Dense as
    ``jgrad.nn.dense``), a known activation (``jgrad.nn.elementwise``), a function
    ``fn(params, x)``; None for anything else."""
    if is_module(item):
        return _sequential_item(item)
    if _foreign.known_activation(item):
        return _foreign.activation_layer(_foreign.known_activation(item))
    if callable(item):
        return _foreign.function_layer(item)
    return None


def _dense_params(variables: Mapping, arg: str) -> dict:
    if set(variables) == {"w", "b"}:  # converted already
        return dict(variables)
    p = variables.get("params", {})
    if not isinstance(p, Mapping) or "kernel" not in p or "bias" not in p:
        raise ValueError(
            f"`{arg}` must hold the Dense layer's {{'params': {{'kernel', 'bias'}}}}, got "
            f"{_keys(variables)}. Pass the variables model.init returns."
        )
    return {"w": p["kernel"], "b": p["bias"]}


def _keys(tree: Any) -> str:
    if isinstance(tree, Mapping):
        return "keys " + repr(sorted(tree))
    return type(tree).__name__


def item_params(item: Any, entry: Any, arg: str) -> Any:
    """A list item's params entry converted as :func:`item_layer` converts the item."""
    if _dense_like(item):
        if isinstance(entry, Mapping) and set(entry) == {"w", "b"}:
            return dict(entry)
        return _dense_params(variables_of(entry, arg), arg)
    if is_module(item):
        return variables_of(entry, arg)
    return entry


def _sequential_layers(net) -> tuple[Layer, ...]:
    if not net.layers:
        raise ValueError(
            "`net` must be an nn.Sequential with at least one layer, got an empty one."
        )
    return tuple(_sequential_item(item) for item in net.layers)


def _sequential_params(net, params) -> tuple:
    variables = variables_of(params)
    out = []
    for i, item in enumerate(net.layers):
        name = f"layers_{i}"
        entry = {c: t[name] for c, t in variables.items() if name in t}
        if _dense_like(item):
            if not entry:
                raise ValueError(
                    f"`params` must hold the variables of layer {i} ({name!r}, an "
                    f"nn.Dense) of the nn.Sequential, got {_keys(variables['params'])}. "
                    "Pass the variables model.init(key, x) returns for this model."
                )
            out.append(_dense_params(entry, f"params[...][{name!r}]"))
        elif is_module(item):
            out.append(entry)
        else:
            out.append({})
    return tuple(out)


def _whole_layers(net) -> tuple[Layer, ...]:
    return (dense(net.features) if _dense_like(net) else module_layer(net),)


def _whole_params(net, params) -> tuple:
    if _dense_like(net):
        return (_dense_params(variables_of(params), "params"),)
    return (variables_of(params),)


def _run(model, variables, x, select, eps, names=None):
    """``model.apply(variables, x)`` with ``eps[i]`` added to the output of the i-th
    selected submodule call (in the order the calls return); ``(y, outs)``. With
    ``names`` a list, the calls' names are appended to it."""
    from jgrad.analyze import _module_flow  # imports the analyzers: not at load time

    outs, counts = [], {}

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or not module.path:
            return out
        path = "/".join(str(p) for p in module.path)
        if not select(path, module):
            return out
        n = counts.get(path, 0)
        counts[path] = n + 1
        if names is not None:
            names.append(path if n == 0 else f"{path}#{n}")
        if eps is not None:
            out = _module_flow.perturb(out, eps[len(outs)])
        outs.append(out)
        return out

    with linen.intercept_methods(intercept):
        y = model.apply(variables, x)
    return y, tuple(outs)


def _probe(model, params, x, select):
    from jgrad.analyze import _module_flow

    variables = variables_of(params)
    rest = {c: v for c, v in variables.items() if c != "params"}
    names: list[str] = []
    shapes = jax.eval_shape(
        lambda p, v: _run(model, {"params": p, **rest}, v, select, None, names)[1],
        variables["params"],
        x,
    )

    def run(p, v, eps):
        return _run(model, {"params": p, **rest}, v, select, eps)

    return _module_flow.Probe(tuple(names), variables["params"], run, shapes)


_foreign.register(
    _foreign.Adapter(
        "flax.linen.Sequential",
        lambda net: isinstance(net, linen.Sequential),
        _foreign.cached_layers(_sequential_layers),
        _sequential_params,
        _probe,
    )
)
_foreign.register(
    _foreign.Adapter(
        "flax.linen.Module",
        is_module,
        _foreign.cached_layers(_whole_layers),
        _whole_params,
        _probe,
    )
)
