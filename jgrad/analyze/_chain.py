"""The chain of a flax linen model's submodule calls: :func:`module_chain`.

A model written with ``@nn.compact`` (``x = jnp.tanh(nn.Dense(32)(x))`` in a loop) is a
chain when each selected direct submodule call depends on the input only through the
call before it. :func:`module_chain` traces the model once (abstractly) to find those
calls, and every analyzer then takes it as a network whose layer k maps the output of
call k-1 to the output of call k (layer 0 maps the input to call 0's output; a last
layer maps the last call's output to the model output when they differ). Each layer
runs the model under ``flax.linen.intercept_methods``: the calls before k-1 are skipped,
call k-1 returns the given input, and the run stops at call k, so a jitted layer costs
what its own part of the model costs. Jacobians are taken by autodiff; for closed forms
write the model as an ``nn.Sequential``.

At construction every layer is checked to depend on nothing but its input (a
dependency walk of its jaxpr): a skip connection across calls is refused with the
call's name, never analysed wrongly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp

from jgrad.analyze import _foreign
from jgrad.analyze._linen import variables_of
from jgrad.nn._layer import Layer, LayerInfo

__all__ = ["ModuleChain", "module_chain"]


@dataclasses.dataclass(frozen=True, eq=False)
class ModuleChain:
    """A linen model analysed as the chain of its selected direct submodule calls
    (build it with :func:`module_chain`; pass it as ``net`` with the model's variables
    as ``params``).

    Attributes:
        module: the flax.linen model.
        in_shape: the shape of ONE example of its input.
        calls: the selected calls' paths, in call order (a second call of the same
            submodule has ``"#1"`` appended).
        layers: the chain's layers: one per call, plus one to the model output when
            the last call's output is not the model output.
        runs: per layer, the names of the direct submodules it runs (its params entry
            holds their variables).
        submodules: the names of every direct submodule the model calls.
        param_names: the names under ``variables["params"]`` that ``model.init`` makes.
    """

    module: Any
    in_shape: tuple[int, ...]
    calls: tuple[str, ...]
    layers: tuple[Layer, ...]
    runs: tuple[tuple[str, ...], ...]
    submodules: tuple[str, ...]
    param_names: tuple[str, ...]


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, value):
        super().__init__()
        self.value = value


def _apply(module, variables, x, *, sub, stop, h, zs, record=None):
    """``module.apply(variables, x)`` where direct call j < ``sub`` returns ``zs[j]``,
    call ``sub`` returns ``h`` and call ``stop`` ends the run (its output returned);
    ``stop=None`` runs to the model output. ``record`` collects (name, out) per call."""
    pos = [0]

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or len(module.path) != 1:
            return next_fun(*args, **kwargs)
        j = pos[0]
        pos[0] += 1
        if j < sub:
            return zs[j]
        if j == sub:
            return h
        out = next_fun(*args, **kwargs)
        if record is not None:
            record.append((str(module.path[0]), module, out))
        if j == stop:
            raise _Stop(out)
        return out

    try:
        with linen.intercept_methods(intercept):
            return module.apply(variables, x)
    except _Stop as done:
        return done.value


def _restrict(variables: Mapping, names: tuple[str, ...], submodules: set) -> dict:
    """The variables of the direct submodules ``names``, plus the model's own
    (non-submodule) variables."""
    return {
        col: {k: v for k, v in tree.items() if k in names or k not in submodules}
        for col, tree in variables.items()
    }


def _depends(fn, args, flags) -> list[bool]:
    """For each output leaf of ``fn(*args)``, whether it depends on a flagged argument
    leaf: a conservative walk of the jaxpr (an equation's outputs depend on all of its
    inputs)."""
    closed = jax.make_jaxpr(fn)(*args)
    jaxpr = closed.jaxpr
    leaf_flags = [
        f for a, f in zip(args, flags, strict=True) for _ in jax.tree.leaves(a)
    ]
    tainted = {v for v, f in zip(jaxpr.invars, leaf_flags, strict=True) if f}

    def hit(v):
        return not hasattr(v, "val") and v in tainted

    for eqn in jaxpr.eqns:
        if any(hit(v) for v in eqn.invars):
            tainted.update(eqn.outvars)
    return [hit(v) for v in jaxpr.outvars]


def module_chain(model: Any, in_shape: Any, *, select: Any = None) -> ModuleChain:
    """A flax linen model as the chain of its selected direct submodule calls, for
    every analyzer (``layer_grad_norms``, ``layer_jacobians``, ``output_sweep``, ...).

    Args:
        model: a ``flax.linen.Module``.
        in_shape: the shape of ONE example of its input (the model is traced once,
            abstractly, to find its calls).
        select: which direct submodule calls are the chain's layer outputs: None (every
            one), a glob pattern on the name (``"Dense_*"``), a list of patterns, or a
            predicate ``select(name, module) -> bool``.

    Returns:
        A :class:`ModuleChain`; pass it as ``net`` with the model's variables as
        ``params``. Its layer k's params entry holds the variables of the submodules
        it runs (``chain.runs[k]``).

    Raises:
        ValueError: ``model`` not a linen Module, ``in_shape`` not a tuple of positive
            ints, ``select`` invalid or matching no call (the message lists the calls),
            or the calls not a chain (a call whose output depends on the input other
            than through the previous selected call: the message names both).

    Examples:
        >>> import jax, jax.numpy as jnp, flax.linen as nn, jgrad
        >>> class MLP(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         for _ in range(3):
        ...             x = jnp.tanh(nn.Dense(8)(x))
        ...         return nn.Dense(2)(x)
        >>> chain = jgrad.analyze.module_chain(MLP(), (8,))
        >>> chain.calls
        ('Dense_0', 'Dense_1', 'Dense_2', 'Dense_3')
    """
    from jgrad.analyze._module_flow import select_predicate

    if not isinstance(model, linen.Module):
        raise ValueError(
            f"`model` must be a flax.linen.Module, got {type(model).__name__}. For NNX "
            "or equinox models use nnx.Sequential / eqx.nn.Sequential, or "
            "jgrad.analyze.module_grad_norms."
        )
    if not (
        isinstance(in_shape, (tuple, list))
        and in_shape
        and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in in_shape
        )
    ):
        raise ValueError(
            f"`in_shape` must be the shape of ONE input example, a non-empty tuple of "
            f"positive ints such as (32,), got {in_shape!r}."
        )
    in_shape = tuple(in_shape)
    pred = select_predicate(select)
    x0 = jnp.zeros(in_shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x0)
    record: list = []

    def trace(v, x):
        y = _apply(model, v, x, sub=-1, stop=None, h=None, zs=(), record=record)
        return (
            y,
            tuple(out for _, _, out in record),
            tuple(out is y for _, _, out in record),
        )

    # the last output's identity with y is a Python bool: read it in the trace
    is_y: list[bool] = []

    def trace_flags(v, x):
        y, outs, flags = trace(v, x)
        is_y.extend(flags)
        return y, outs

    y_shape, out_shapes = jax.eval_shape(trace_flags, variables, x0)
    names = [name for name, _, _ in record]
    counts: dict[str, int] = {}
    labels = []
    for name in names:
        n = counts.get(name, 0)
        counts[name] = n + 1
        labels.append(name if n == 0 else f"{name}#{n}")
    chosen = [j for j, (name, mod, _) in enumerate(record) if pred(name, mod)]
    if not chosen:
        raise ValueError(
            f"`select` must match at least one direct submodule call, got {select!r}; "
            f"the calls are {labels}."
        )
    trailing = not is_y[chosen[-1]]
    submodules = set(names)
    seg_bounds = list(zip([-1, *chosen[:-1]], chosen, strict=True))
    if trailing:
        seg_bounds.append((chosen[-1], None))
    layers, runs = [], []
    for k, (sub, stop) in enumerate(seg_bounds):
        last = len(names) - 1 if stop is None else stop
        run = tuple(dict.fromkeys(names[sub + 1 : last + 1]))
        layers.append(
            _segment(
                model, x0, out_shapes, sub, stop, k, len(in_shape), run, submodules
            )
        )
        runs.append(run)
    chain = ModuleChain(
        model,
        in_shape,
        tuple(labels[j] for j in chosen),
        tuple(layers),
        tuple(runs),
        tuple(dict.fromkeys(names)),
        tuple(variables.get("params", {})),
    )
    _check_chain(chain, variables, x0, out_shapes, seg_bounds, labels, submodules)
    return chain


def _zeros(shapes):
    return tuple(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))


def _segment(model, x0, out_shapes, sub, stop, k, rank, run, submodules) -> Layer:
    def init(key, in_shape):
        # not a ValueError: check_params_shapes skips a network it cannot init
        raise NotImplementedError("a module_chain layer takes the model's variables")

    def apply(params, x, *, train=False, key=None, return_state=False):
        del train, key
        if sub < 0:
            y = _apply(model, params, x, sub=-1, stop=stop, h=None, zs=())
        else:
            zs = _zeros(out_shapes[:sub])
            y = _apply(model, params, x0, sub=sub, stop=stop, h=x, zs=zs)
        return (y, params) if return_state else y

    return Layer(init, apply, LayerInfo(in_rank=rank if k == 0 else None))


def _check_chain(chain, variables, x0, out_shapes, seg_bounds, labels, submodules):
    for k, (sub, stop) in enumerate(seg_bounds):
        if sub < 0:
            continue
        params = _restrict(variables, chain.runs[k], submodules)
        h = out_shapes[sub]
        zs = tuple(out_shapes[:sub])

        def fn(p, x, h, zs, sub=sub, stop=stop):
            return _apply(chain.module, p, x, sub=sub, stop=stop, h=h, zs=zs)

        on_x = _depends(fn, (params, x0, h, zs), (False, True, False, False))
        on_z = _depends(fn, (params, x0, h, zs), (False, False, False, True))
        if any(on_x) or any(on_z):
            what = "the model input" if any(on_x) else "an earlier call's output"
            at = "the model output" if stop is None else labels[stop]
            raise ValueError(
                f"`model` must be a chain of the selected calls, but {at} depends on "
                f"{what} other than through {labels[sub]} (a skip connection?). "
                "Select calls that each depend only on the previous one (e.g. whole "
                "residual blocks), or use jgrad.analyze.module_grad_norms, which takes "
                "any model."
            )


def _chain_params(chain: ModuleChain, params: Any) -> tuple:
    variables = variables_of(params)
    have = variables.get("params", {})
    missing = sorted(n for n in chain.param_names if n not in have)
    if missing:
        raise ValueError(
            f"`params` must be the variables of this model (model.init(key, x)), got "
            f"variables without {missing}. Pass the variables of the model the chain "
            "was built from."
        )
    return tuple(_restrict(variables, run, set(chain.submodules)) for run in chain.runs)


_foreign.register(
    _foreign.Adapter(
        "jgrad.analyze.module_chain",
        lambda net: isinstance(net, ModuleChain),
        lambda net: net.layers,
        _chain_params,
    )
)
