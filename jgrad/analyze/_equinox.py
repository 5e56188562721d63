"""equinox models as jgrad networks (see ``_foreign``): ``eqx.nn.Sequential`` chains, any
other ``eqx.Module`` as one layer, and the probe behind ``module_grad_norms``.

equinox is optional: without it this module registers nothing.

Params are None (the model's own arrays) or a pytree like ``eqx.filter(model,
eqx.is_inexact_array)`` (the model itself is accepted too: its float arrays are used).
The analyzers differentiate the floating-point arrays; everything else is read from the
model. An ``eqx.nn.Linear`` with a bias becomes ``jgrad.nn.dense`` with params ``{"w":
weight.T, "b": bias}`` (closed-form Jacobian); an ``eqx.nn.Lambda`` of a known
activation function becomes ``jgrad.nn.elementwise``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax

from jgrad.analyze import _foreign, _nnx
from jgrad.nn._dense import dense
from jgrad.nn._layer import Layer

try:
    import equinox as eqx
except ImportError:  # pragma: no cover - equinox is optional
    eqx = None

__all__: list[str] = []


def _is_model(net: Any) -> bool:
    """``net`` is a user's ``eqx.Module`` or one of ``eqx.nn``'s (not equinox's own
    wrappers such as ``filter_jit`` or ``Partial``, which are modules too)."""
    if not isinstance(net, eqx.Module):
        return False
    where = type(net).__module__
    return where.startswith("equinox.nn") or not where.startswith("equinox")


def _linear_like(m: Any) -> bool:
    """``m`` is an ``eqx.nn.Linear`` that ``jgrad.nn.dense`` computes exactly."""
    return (
        type(m) is eqx.nn.Linear
        and m.bias is not None
        and isinstance(m.in_features, int)
        and isinstance(m.out_features, int)
    )


def _activation(item: Any) -> str | None:
    """The jgrad activation an ``eqx.nn.Lambda`` (or a bare function) computes."""
    fn = item.fn if isinstance(item, eqx.nn.Lambda) else item
    return _foreign.known_activation(fn)


def arrays_of(model: Any, params: Any) -> Any:
    """The model's float arrays (``params`` None) or ``params``'s, checked against the
    model's.

    Raises:
        ValueError: ``params`` not shaped like ``eqx.filter(model, eqx.is_inexact_array)``.

    Examples:
        >>> import equinox as eqx, jax
        >>> model = eqx.nn.Linear(3, 2, key=jax.random.key(0))
        >>> [a.shape for a in jax.tree.leaves(arrays_of(model, None))]
        [(2, 3), (2,)]
    """
    own = eqx.filter(model, eqx.is_inexact_array)
    if params is None:
        return own
    got = eqx.filter(params, eqx.is_inexact_array)
    want_def, got_def = jax.tree.structure(own), jax.tree.structure(got)
    if want_def != got_def:
        raise ValueError(
            f"`params` must be None (the model's own arrays) or a pytree like "
            f"eqx.filter(model, eqx.is_inexact_array) for an equinox model "
            f"({type(model).__name__}), got {type(params).__name__} with another "
            f"structure ({got_def}). Pass None, the model, or eqx.filter(model, "
            "eqx.is_inexact_array)."
        )
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(own), strict=True
    ):
        if a.shape != b.shape:
            raise ValueError(
                f"`params`{jax.tree_util.keystr(path)} must have shape {b.shape} (the "
                f"model's), got {a.shape}. These params belong to another model; pass "
                "eqx.filter(model, eqx.is_inexact_array) of this model."
            )
    return got


def _takes_key(fn: Any) -> bool:
    """``fn`` accepts a ``key`` keyword (as ``eqx.nn.Sequential`` passes one)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "key" or p.kind is p.VAR_KEYWORD for p in params)


def module_layer(module: Any, *, pass_key: bool = False) -> Layer:
    """An ``eqx.Module`` as a Layer of kind None: params its float arrays, ``apply``
    runs ``eqx.combine(params, static)(x)`` (with ``key=None`` when ``pass_key`` and it
    takes one, as ``eqx.nn.Sequential`` calls its items); ``init`` returns its arrays."""
    arrays, static = eqx.partition(module, eqx.is_inexact_array)
    kw = {"key": None} if pass_key and _takes_key(module) else {}

    def run(params, x):
        return eqx.combine(params, static)(x, **kw)

    def init(key, in_shape):
        del key
        leaves = jax.tree.leaves(arrays)
        dtype = leaves[0].dtype if leaves else jax.numpy.float32  # the module's own
        x = jax.ShapeDtypeStruct(tuple(in_shape), dtype)
        return tuple(jax.eval_shape(run, arrays, x).shape), arrays

    def apply(params, x, *, train=False, key=None, return_state=False):
        del train, key
        y = run(params, x)
        return (y, params) if return_state else y

    return Layer(init, apply)


def _item_layer(item: Any) -> Layer:
    if _linear_like(item):
        return dense(item.out_features)
    name = _activation(item)
    if name:
        return _foreign.activation_layer(name)
    if isinstance(item, eqx.Module):
        return module_layer(item, pass_key=True)
    return _foreign.function_layer(lambda params, x: item(x))


def _linear_params(arrays: Any) -> dict:
    return {"w": arrays.weight.T, "b": arrays.bias}


def _sequential_layers(net) -> tuple[Layer, ...]:
    if not net.layers:
        raise ValueError(
            "`net` must be an eqx.nn.Sequential with at least one layer, got an empty "
            "one."
        )
    return tuple(_item_layer(item) for item in net.layers)


def _sequential_params(net, params) -> tuple:
    arrays = arrays_of(net, params)
    out = []
    for item, entry in zip(net.layers, arrays.layers, strict=True):
        if _linear_like(item):
            out.append(_linear_params(entry))
        elif _activation(item):
            out.append({})
        elif isinstance(item, eqx.Module):
            out.append(entry)
        else:
            out.append({})
    return tuple(out)


def _whole_layers(net) -> tuple[Layer, ...]:
    return (dense(net.out_features) if _linear_like(net) else module_layer(net),)


def _whole_params(net, params) -> tuple:
    arrays = arrays_of(net, params)
    return (_linear_params(arrays) if _linear_like(net) else arrays,)


def _submodules(node: Any, path: tuple = ()):
    """``(path, module)`` for every ``eqx.Module`` below ``node`` (pytree fields, list
    and tuple items, dict values), parents before children."""
    if isinstance(node, eqx.Module):
        if path:
            yield path, node
        for field in dataclasses.fields(node):
            if not field.metadata.get("static", False):
                yield from _submodules(getattr(node, field.name), path + (field.name,))
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from _submodules(item, path + (i,))
    elif isinstance(node, dict):
        for k, item in node.items():
            yield from _submodules(item, path + (k,))


def _get(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = (
            tree[p]
            if isinstance(p, int) or isinstance(tree, dict)
            else getattr(tree, p)
        )
    return tree


if eqx is not None:

    class _Probed(eqx.Module):
        """A submodule whose calls report their output to the active ``CallTape``."""

        inner: Any
        path: str = eqx.field(static=True)

        def __call__(self, *args, **kwargs):
            out = self.inner(*args, **kwargs)
            tape = _nnx.active_tape()
            return out if tape is None else tape.record(self.path, out)

        def __getattr__(self, name):  # the parent may read the submodule's fields
            if name in ("inner", "path") or name.startswith("__"):
                raise AttributeError(name)
            return getattr(self.inner, name)


def _wrapped(model: Any, targets: list[tuple[tuple, str]]) -> Any:
    """``model`` with each target submodule replaced by a ``_Probed`` wrapper (deepest
    first, so a wrapped parent holds its wrapped children)."""
    for path, name in sorted(targets, key=lambda t: -len(t[0])):
        model = eqx.tree_at(
            lambda m, path=path: _get(m, path),
            model,
            replace_fn=lambda node, name=name: _Probed(node, name),
        )
    return model


def _probe(model, params, x, select):
    from jgrad.analyze import _module_flow

    arrays = arrays_of(model, params)
    static = eqx.partition(model, eqx.is_inexact_array)[1]
    targets = [
        (path, name)
        for path, module in _submodules(model)
        if callable(module) and select(name := "/".join(str(p) for p in path), module)
    ]

    def run_(p, v, eps, names=None):
        wrapped = _wrapped(eqx.combine(p, static), targets)
        with _nnx.CallTape(eps, names) as tape:
            y = wrapped(v)
        return y, tuple(tape.outs)

    names: list[str] = []
    shapes = jax.eval_shape(lambda p, v: run_(p, v, None, names)[1], arrays, x)

    def run(p, v, eps):
        return run_(p, v, eps)

    return _module_flow.Probe(tuple(names), arrays, run, shapes)


if eqx is not None:
    _foreign.register(
        _foreign.Adapter(
            "equinox.nn.Sequential",
            lambda net: isinstance(net, eqx.nn.Sequential),
            _foreign.cached_layers(_sequential_layers),
            _sequential_params,
            _probe,
        )
    )
    _foreign.register(
        _foreign.Adapter(
            "equinox.Module",
            _is_model,
            _foreign.cached_layers(_whole_layers),
            _whole_params,
            _probe,
        )
    )
