"""Per-submodule gradient norms of a whole model (flax linen, NNX, equinox) from one
backward pass: ``module_grad_norms``.

Each framework's adapter (``_foreign.Adapter.probe``) returns a :class:`Probe`: the model
run with a perturbation ``eps_i`` added to the output of every selected submodule call.
The gradient with respect to ``eps_i`` at ``eps = 0`` is ``dL/dh_i``, the gradient at that
call's output, so one ``jax.value_and_grad`` gives every call's gradient, every
parameter leaf's and the input's.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze import _foreign
from jgrad.analyze._grad_flow import _from_top, _log10_norm
from jgrad.analyze._nonfinite import (
    NonFinite,
    first_true,
    last_true,
    nonfinite_record,
    reports_nonfinite,
)
from jgrad.analyze._precision import full_precision

__all__ = [
    "ModuleGradFlow",
    "Probe",
    "module_grad_norms",
    "perturb",
    "select_predicate",
    "zeros_like_shapes",
]


class Probe(NamedTuple):
    """A model with its selected submodule calls exposed.

    Attributes:
        names: one path string per selected call, in call order ("/"-joined attribute
            names and list indices: ``"Dense_0"``, ``"block/linear"``, ``"layers/2"``;
            a second call of the same submodule gets ``"#1"`` appended, a third ``"#2"``).
        params: the differentiable params pytree (what per-leaf norms are reported for).
        run: ``run(params, x, eps) -> (y, outs)``: the model output with ``eps[i]``
            (a pytree shaped like call i's output) added to the output of call i, and
            ``outs`` the tuple of the calls' outputs (with ``eps`` added).
        shapes: per call, a pytree of ``jax.ShapeDtypeStruct``, the call's output.
    """

    names: tuple[str, ...]
    params: Any
    run: Callable
    shapes: tuple


def select_predicate(select: Any) -> Callable[[str, Any], bool]:
    """``select`` as a predicate ``(path, module) -> bool``: None (every submodule call),
    a glob pattern on the path (``"Dense_*"``, ``"block*/linear"``), a sequence of
    patterns (any matches), or a predicate.

    Raises:
        ValueError: anything else.
    """
    if select is None:
        return lambda path, module: True
    if isinstance(select, str):
        return lambda path, module: fnmatch.fnmatchcase(path, select)
    if isinstance(select, (tuple, list)) and all(isinstance(s, str) for s in select):
        pats = tuple(select)
        return lambda path, module: any(fnmatch.fnmatchcase(path, s) for s in pats)
    if callable(select):
        return select
    raise ValueError(
        "`select` must be None (every submodule call), a glob pattern on the module path "
        "(e.g. 'Dense_*' or 'layers/*'), a list of patterns, or a predicate "
        f"select(path, module) -> bool, got {type(select).__name__}."
    )


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "log10_norm",
        "log10_act_norm",
        "forward_finite",
        "loss",
        "param_log10_norm",
        "nonfinite",
    ],
    meta_fields=["names"],
)
@dataclasses.dataclass(frozen=True)
class ModuleGradFlow:
    """Gradient norms at the input, at every selected submodule call's output and at
    the model output, from one backward pass.

    A dataclass registered as a pytree (``names`` static), so it passes through ``jit``.

    Attributes:
        names: ``("input", <one path per call, in the order the calls return>,
            "output")``; a submodule called twice appears twice (``"#1"`` appended).
        log10_norm: ``(K+2,)`` log10 ||dL/dh|| (Frobenius over the whole output of the
            call, every float leaf), max-scaled so squaring cannot underflow. From ONE
            plain backward pass, as ``jax.grad`` computes it: a gradient that underflowed
            float32 reads ``-inf``. For the rescaled pass that never underflows, analyse
            a chain (``nn.Sequential`` or :func:`module_chain`) with ``layer_grad_norms``.
            NaN where computed from a NaN or inf (see ``nonfinite``).
        log10_act_norm: ``(K+2,)`` log10 ||h||, max-scaled; NaN where h is non-finite.
        forward_finite: ``(K+2,)`` bool, every entry of h is finite.
        loss: the scalar loss.
        param_log10_norm: log10 ||dL/dtheta|| per parameter leaf, a pytree like the
            model's params (linen: ``variables["params"]``; NNX: its ``nnx.Param``
            state; equinox: its float arrays).
        nonfinite: a ``NonFinite``: ``forward`` the first entry (index into ``names``)
            whose h holds a NaN or inf; ``backward`` the first entry, met going from the
            output to the input, whose gradient is NaN or inf although every h from it
            to the output, and the loss, were finite; -1 for none. Entries are ordered
            by call order, so for a model that is not a chain "after" means "returned
            later".
    """

    names: tuple[str, ...]
    log10_norm: jax.Array
    log10_act_norm: jax.Array
    forward_finite: jax.Array
    loss: jax.Array
    param_log10_norm: Any
    nonfinite: NonFinite


def _float_leaves(tree) -> list:
    return [
        jnp.ravel(v)
        for v in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(v), jnp.inexact)
    ]


def plain_sums(groups: list[list[jax.Array]]) -> tuple[jax.Array, jax.Array]:
    """The sum of squares of each group of arrays (one pass, fused with what produced
    them), and whether every sum is exact to rounding: finite and larger than ``size *
    tiny / eps`` (then the squares that underflowed add less than one rounding). An
    empty group's sum is 0 (not exact: its norm is taken the scaled way, ``-inf``)."""
    sums, bounds = [], []
    for group in groups:
        group = [v for v in group if v.size]
        dtype = jnp.result_type(*group) if group else jnp.float32
        fi = jnp.finfo(dtype)
        sums.append(sum((jnp.sum(jnp.square(v)) for v in group), jnp.zeros((), dtype)))
        bounds.append(
            float(sum(v.size for v in group)) * float(fi.tiny) / float(fi.eps)
        )
    dtype = jnp.result_type(*sums)
    ss = jnp.stack([v.astype(dtype) for v in sums])
    return ss, jnp.all(jnp.isfinite(ss) & (ss > jnp.asarray(bounds, dtype)))


def zeros_like_shapes(shapes):
    """Zeros shaped like ``shapes`` (a pytree of ShapeDtypeStructs)."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def perturb(out, eps):
    """``out + eps`` on every inexact leaf (other leaves unchanged)."""
    return jax.tree.map(
        lambda o, e: o + e if jnp.issubdtype(jnp.result_type(o), jnp.inexact) else o,
        out,
        eps,
    )


def _probe_of(fn: str, model: Any):
    adapter = _foreign.find(model)
    if adapter is None or adapter.probe is None:
        raise ValueError(
            f"`model` must be a flax.linen.Module, a flax.nnx.Module or an equinox.Module "
            f"for {fn}, got {type(model).__name__}. For a jgrad network or a chain use "
            "jgrad.analyze.layer_grad_norms; for any function fn(params, x) use "
            "jgrad.analyze.per_example_grad_norms or input_output_spectrum."
        )
    return adapter


@reports_nonfinite("entry")
@full_precision
def module_grad_norms(
    model: Any,
    params: Any,
    x: jax.Array,
    loss_fn: Callable[[Any], jax.Array],
    *,
    select: Any = None,
) -> ModuleGradFlow:
    """Gradient norms ||dL/dh|| at the output of every (selected) submodule call of a
    whole flax linen, flax NNX or equinox model, and per parameter leaf, from ONE
    backward pass.

    A zero perturbation is added to the output of each selected call (linen: through
    ``flax.linen.intercept_methods``; NNX and equinox: by wrapping the submodules in a
    copy of the model); the gradient with respect to it is the gradient at that
    output. Cost: one ``jax.value_and_grad`` of the loss plus one norm per entry.

    Args:
        model: a ``flax.linen.Module``, ``flax.nnx.Module`` or ``equinox.Module``.
        params: linen: the variables ``model.init`` returns; NNX: None (the model's own
            state) or an ``nnx.State``; equinox: None (the model's arrays) or a pytree
            like ``eqx.filter(model, eqx.is_inexact_array)``.
        x: the model's input (what ``model(x)`` / ``model.apply(variables, x)`` takes:
            one example or a batch).
        loss_fn: ``loss_fn(y) -> scalar`` on the model output (close over targets).
        select: which submodule calls to report: None (all, nested ones included), a
            glob pattern on the path (``"Dense_*"``, ``"layers/*"``), a list of
            patterns, or a predicate ``select(path, module) -> bool``.

    Returns:
        A :class:`ModuleGradFlow` (``names`` says which entry is which).

    Raises:
        ValueError: ``model`` not one of these forms, ``x`` not a non-empty float
            array, ``loss_fn`` not a function returning a scalar, ``select`` invalid
            or matching no call (the message lists the calls).

    Examples:
        >>> import jax, jax.numpy as jnp, flax.linen as nn, jgrad
        >>> model = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(2)])
        >>> x = jax.random.normal(jax.random.key(0), (4,))
        >>> variables = model.init(jax.random.key(1), x)
        >>> flow = jgrad.analyze.module_grad_norms(
        ...     model, variables, x, lambda y: jnp.sum(y**2))
        >>> flow.names
        ('input', 'layers_0', 'layers_2', 'output')
    """
    adapter = _probe_of("module_grad_norms", model)
    _checks.float_array("x", x)
    if not callable(loss_fn):
        raise ValueError(
            f"`loss_fn` must be a function loss_fn(y) -> scalar, got "
            f"{type(loss_fn).__name__}."
        )
    pred = select_predicate(select)
    probe = adapter.probe(model, params, x, pred)
    if not probe.names:
        every = adapter.probe(model, params, x, select_predicate(None)).names
        raise ValueError(
            f"`select` must match at least one submodule call, got {select!r}, which "
            f"matches none of the calls {list(every)}. Use one of these paths or a glob "
            "pattern on them."
        )
    eps = zeros_like_shapes(probe.shapes)
    y_shape = jax.eval_shape(lambda p, v: probe.run(p, v, eps)[0], probe.params, x)
    loss_shape = jax.eval_shape(loss_fn, y_shape)
    if getattr(loss_shape, "shape", None) != ():
        raise ValueError(
            f"`loss_fn` must return a scalar, got {loss_shape}. Reduce it, e.g. "
            "jnp.mean(...) over the batch."
        )

    def total(p, v, e, e_out):
        y, outs = probe.run(p, v, e)
        y = perturb(y, e_out)
        return loss_fn(y), (v, outs, y)

    def groups(p, v):
        """The loss and the arrays whose norms are reported: the gradients, the
        values, the parameter gradients (one group per entry / leaf)."""
        (loss, (v, outs, y)), (gp, gx, ge, gy) = jax.value_and_grad(
            total, argnums=(0, 1, 2, 3), has_aux=True
        )(p, v, eps, zeros_like_shapes(y_shape))
        out = [_float_leaves(g) for g in (gx, *ge, gy)]
        out += [_float_leaves(h) for h in (v, *outs, y)]
        return loss, out + [[jnp.ravel(g)] for g in jax.tree.leaves(gp)], gp

    x = jnp.asarray(x)
    loss, arrays, gp = groups(probe.params, x)
    k = len(probe.names) + 2
    sums, ok = plain_sums(arrays)

    def rescaled(p, v):  # extreme magnitudes: recompute, norms max-scaled
        return jnp.stack(
            [
                _log10_norm(jnp.concatenate(g)).astype(sums.dtype)
                if g
                else jnp.asarray(-jnp.inf, sums.dtype)
                for g in groups(p, v)[1]
            ]
        )

    # the branch takes only the inputs, so nothing computed above is held for it
    norms = jax.lax.cond(
        ok, lambda p, v: 0.5 * jnp.log10(sums), rescaled, probe.params, x
    )
    lg, act = norms[:k], norms[k : 2 * k]
    ff = ~jnp.isnan(act)  # NaN exactly where h holds a NaN or inf
    dep = _from_top(~ff)
    bad = jnp.isnan(lg) | (lg == jnp.inf)
    bad = bad.at[-1].set(bad[-1] | ~jnp.isfinite(loss))
    new = bad & ~dep
    nan = dep | _from_top(new)
    return ModuleGradFlow(
        names=("input", *probe.names, "output"),
        log10_norm=jnp.where(nan, jnp.nan, lg),
        log10_act_norm=act,
        forward_finite=ff,
        loss=loss,
        param_log10_norm=jax.tree.unflatten(
            jax.tree.structure(gp), list(norms[2 * k :])
        ),
        nonfinite=nonfinite_record(first_true(~ff), last_true(new)),
    )
