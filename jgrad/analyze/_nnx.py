"""flax NNX models as jgrad networks (see ``_foreign``): ``nnx.Sequential`` chains, any
other ``nnx.Module`` as one layer, and the probe behind ``module_grad_norms``.

Params are None (the model's own state, ``nnx.split(model)``) or an ``nnx.State``: the
whole state (``nnx.state(model)``) or part of it (``nnx.state(model, nnx.Param)``);
variables it leaves out are read from the model. The analyzers differentiate the
floating-point variables (``nnx.Param``, ``nnx.BatchStat``, ...); integer and key state
(RNG streams, counters) is read from the model and held constant. An ``nnx.Linear``
with a bias and default dtype, precision and dot_general becomes ``jgrad.nn.dense`` with
params ``{"w": kernel, "b": bias}`` (closed-form Jacobian); a known activation function
becomes ``jgrad.nn.elementwise``.

:class:`CallTape` records submodule calls for the NNX and equinox probes: the probed
copy of the model reports each selected call's output to the innermost active tape,
which adds that call's perturbation ``eps[i]``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jgrad.analyze import _foreign
from jgrad.nn._dense import dense
from jgrad.nn._layer import Layer

__all__ = ["CallTape", "active_tape", "fresh_merge", "split_state"]


def _is_float(path, variable) -> bool:
    """nnx filter: a variable holding a floating-point (differentiable) value."""
    del path
    value = _value(variable)
    return hasattr(value, "dtype") and jnp.issubdtype(value.dtype, jnp.inexact)


def _value(variable: Any) -> Any:
    """A Variable's array (``get_value`` in flax >= 0.12, ``.value`` before)."""
    get = getattr(variable, "get_value", None)
    return get() if get is not None else variable.value


def _flat(state: Any) -> dict:
    """``{path: Variable}`` of an ``nnx.State``."""
    return dict(nnx.to_flat_state(state))


def _path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def split_state(model: Any, params: Any, keep: Any) -> tuple:
    """``(graphdef, kept, other)``: ``nnx.split(model, keep, ...)`` with the values that
    ``params`` gives in place of the model's.

    Args:
        model: an ``nnx.Module``.
        params: None (the model's own state) or an ``nnx.State`` whose paths are paths of
            the model's state (all of them or a part).
        keep: an nnx filter (``nnx.Param``, a predicate ``(path, variable) -> bool``).

    Raises:
        ValueError: ``params`` not an ``nnx.State``, with a path the model does not have,
            or with a value of another shape than the model's.

    Examples:
        >>> from flax import nnx
        >>> model = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
        >>> _, params, other = split_state(model, nnx.state(model, nnx.Param), nnx.Param)
        >>> sorted(params), sorted(other)
        (['bias', 'scale'], ['mean', 'var'])
    """
    graphdef, kept, other = nnx.split(model, keep, ...)
    if params is None:
        return graphdef, kept, other
    if not isinstance(params, nnx.State):
        hint = (
            " (that is what nnx.split returns: pass its second element)"
            if isinstance(params, tuple)
            else ""
        )
        raise ValueError(
            f"`params` must be None (the model's own state) or an nnx.State for an "
            f"nnx.Module, got {type(params).__name__}{hint}. Pass None, "
            "nnx.state(model), or nnx.state(model, nnx.Param)."
        )
    given = _flat(params)
    own = {**_flat(kept), **_flat(other)}
    for path, var in given.items():
        if path not in own:
            raise ValueError(
                f"`params` must hold variables of this model, got one at "
                f"{_path_str(path)!r}, which the model does not have (its paths: "
                f"{sorted(_path_str(p) for p in own)[:8]}...). Pass nnx.state(model) "
                "of this model."
            )
        want, got = jnp.shape(_value(own[path])), jnp.shape(_value(var))
        if want != got:
            raise ValueError(
                f"`params` at {_path_str(path)!r} must have shape {want} (the model's), "
                f"got {got}. These params belong to another model; pass "
                "nnx.state(model) of this model."
            )

    def pick(state):
        return nnx.from_flat_state(
            [(p, given.get(p, v)) for p, v in nnx.to_flat_state(state)]
        )

    return graphdef, pick(kept), pick(other)


def fresh_merge(graphdef: Any, *states: Any) -> Any:
    """``nnx.merge(graphdef, *states)`` on copies of the states' Variables: the model
    may update its variables (an RNG stream's count) in the current trace, and the
    caller's states stay untouched."""
    return nnx.merge(graphdef, *jax.tree.map(lambda a: a, states))


@functools.cache
def _linear_defaults() -> dict:
    """``nnx.Linear``'s default ``dot_general`` and ``promote_dtype`` (where it has them)."""
    params = inspect.signature(nnx.Linear.__init__).parameters
    names = ("dot_general", "promote_dtype")
    return {n: params[n].default for n in names if n in params}


def _linear_like(m: Any) -> bool:
    """``m`` is an ``nnx.Linear`` that ``jgrad.nn.dense`` computes exactly."""
    if type(m) is not nnx.Linear or m.bias is None:
        return False
    same = all(getattr(m, name, None) is f for name, f in _linear_defaults().items())
    return (
        same
        and m.dtype is None
        and m.precision is None
        and getattr(m, "preferred_element_type", None) is None
        and jnp.ndim(_value(m.kernel)) == 2
    )


def module_layer(module: Any) -> Layer:
    """An ``nnx.Module`` as a Layer of kind None: params its floating-point state,
    ``apply`` runs ``nnx.merge(graphdef, params, other)(x)`` with the module's other
    (integer, key) state constant; ``init`` returns the module's own state."""
    graphdef, floats, other = nnx.split(module, _is_float, ...)

    def run(params, x):
        return fresh_merge(graphdef, params, other)(x)

    def init(key, in_shape):
        del key
        leaves = jax.tree.leaves(floats)
        dtype = leaves[0].dtype if leaves else jnp.float32  # the module's own
        x = jax.ShapeDtypeStruct(tuple(in_shape), dtype)
        out = jax.eval_shape(run, floats, x)
        return tuple(out.shape), floats

    def apply(params, x, *, train=False, key=None, return_state=False):
        del train, key
        y = run(params, x)
        return (y, params) if return_state else y

    return Layer(init, apply)


def _item_layer(item: Any) -> Layer:
    if _linear_like(item):
        return dense(item.out_features)
    if isinstance(item, nnx.Module):
        return module_layer(item)
    name = _foreign.known_activation(item)
    if name:
        return _foreign.activation_layer(name)
    return _foreign.function_layer(lambda params, x: item(x))


def _linear_params(state: Any) -> dict:
    return {"w": _value(state["kernel"]), "b": _value(state["bias"])}


def _sequential_layers(net) -> tuple[Layer, ...]:
    if not len(net.layers):
        raise ValueError(
            "`net` must be an nnx.Sequential with at least one layer, got an empty one."
        )
    return tuple(_item_layer(item) for item in net.layers)


def _sequential_params(net, params) -> tuple:
    _, floats, _ = split_state(net, params, _is_float)
    items = floats["layers"] if "layers" in floats else nnx.State({})
    out = []
    for i, item in enumerate(net.layers):
        entry = items[i] if i in items else nnx.State({})
        if _linear_like(item):
            out.append(_linear_params(entry))
        elif isinstance(item, nnx.Module):
            out.append(entry)
        else:
            out.append({})
    return tuple(out)


def _whole_layers(net) -> tuple[Layer, ...]:
    return (dense(net.out_features) if _linear_like(net) else module_layer(net),)


def _whole_params(net, params) -> tuple:
    _, floats, _ = split_state(net, params, _is_float)
    return (_linear_params(floats) if _linear_like(net) else floats,)


class CallTape:
    """The selected submodule calls of one run of a probed model, in the order they
    return.

    Args:
        eps: None (record only), or one perturbation per call, added to its output.
        names: None, or a list the calls' names are appended to (a path seen before
            gets ``"#1"``, ``"#2"``, ... appended).
    """

    def __init__(self, eps: Any = None, names: list | None = None):
        self.eps, self.names = eps, names
        self.outs: list = []
        self._counts: dict[str, int] = {}

    def record(self, path: str, out: Any) -> Any:
        """Call ``path`` returned ``out``: returns ``out + eps[i]`` (or ``out``)."""
        from jgrad.analyze import _module_flow  # imports the analyzers: not at load

        n = self._counts.get(path, 0)
        self._counts[path] = n + 1
        if self.names is not None:
            self.names.append(path if n == 0 else f"{path}#{n}")
        if self.eps is not None:
            if len(self.outs) >= len(self.eps):
                raise ValueError(
                    f"`model` must make the same submodule calls on every run: call "
                    f"{len(self.outs)} ({path!r}) was not made when the calls were "
                    "recorded. Models whose Python control flow depends on values "
                    "cannot be probed; analyse a fixed-structure model."
                )
            out = _module_flow.perturb(out, self.eps[len(self.outs)])
        self.outs.append(out)
        return out

    def __enter__(self) -> CallTape:
        _TAPES.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _TAPES.remove(self)


_TAPES: list[CallTape] = []


def active_tape() -> CallTape | None:
    """The innermost tape being recorded, or None."""
    return _TAPES[-1] if _TAPES else None


_PROBED: dict[type, type] = {}
_PATHS: dict[int, str] = {}  # id(module) -> path, for the modules of the probed copies


def _probed_class(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` reports its output to the active tape
    (one per class, cached)."""
    if cls not in _PROBED:
        call = cls.__call__

        def __call__(self, *args, **kwargs):
            out = call(self, *args, **kwargs)
            tape, path = active_tape(), _PATHS.get(id(self))
            return out if tape is None or path is None else tape.record(path, out)

        _PROBED[cls] = type(
            cls.__name__,
            (cls,),
            {"__call__": __call__, "__module__": cls.__module__},
        )
    return _PROBED[cls]


def _run(graphdef, params, other, x, select, eps, names=None):
    """The model merged from ``(graphdef, params, other)`` run on ``x`` with every
    selected submodule's class swapped for its probed subclass; ``(y, outs)``."""
    model = fresh_merge(graphdef, params, other)
    swapped = []
    for path, module in list(nnx.iter_modules(model)):
        if not path or not callable(module):
            continue
        name = _path_str(path)
        if select(name, module):
            object.__setattr__(module, "__class__", _probed_class(type(module)))
            _PATHS[id(module)] = name
            swapped.append(module)
    try:
        with CallTape(eps, names) as tape:
            y = model(x)
    finally:
        for module in swapped:
            _PATHS.pop(id(module), None)
    return y, tuple(tape.outs)


def _probe(model, params, x, select):
    from jgrad.analyze import _module_flow

    graphdef, p, other = split_state(model, params, nnx.Param)
    names: list[str] = []
    shapes = jax.eval_shape(
        lambda p, v: _run(graphdef, p, other, v, select, None, names)[1], p, x
    )

    def run(p, v, eps):
        return _run(graphdef, p, other, v, select, eps)

    return _module_flow.Probe(tuple(names), p, run, shapes)


_foreign.register(
    _foreign.Adapter(
        "flax.nnx.Sequential",
        lambda net: isinstance(net, nnx.Sequential),
        _foreign.cached_layers(_sequential_layers),
        _sequential_params,
        _probe,
    )
)
_foreign.register(
    _foreign.Adapter(
        "flax.nnx.Module",
        lambda net: isinstance(net, nnx.Module),
        _foreign.cached_layers(_whole_layers),
        _whole_params,
        _probe,
    )
)
