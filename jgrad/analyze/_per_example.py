"""Per-example gradient norms ||dL_b/dtheta|| and ||dL_b/dx_b|| for any model.

One number per example says which examples drive (or starve) the update: an outlier
whose gradient is 10^6 times the others', a class whose gradients vanish. The model is
any form the analyzers accept (a jgrad network, a flax linen model, ``nn.Sequential``, a
function ``fn(params, x) -> y``); ``loss_fn(ys) -> (B,)`` gives one loss per example.

Two routes, by whether the examples interact:

- ``coupled=False``: the model runs on each example alone (a batch of one, vmapped), one
  VJP of ``loss_fn`` gives every ``dL_b/dy_b``, and one vmapped VJP of the model takes
  each back to the params and the example. About one batch backward pass. Correct only
  when ``L_b`` depends on ``ys[b]`` alone and ``ys[b]`` on ``xs[b]`` alone.
- ``coupled=True`` (batch norm in train mode, attention across the batch, a loss that
  mixes examples): the model runs on the whole batch once and the rows of the Jacobian
  of the loss vector are taken by ``vmap`` of the VJP over the B one-hot cotangents.
  About B backward passes. ``dL_b/dxs`` is then the gradient wrt the whole batch input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze import _foreign
from jgrad.analyze._grad_flow import _log10_norm
from jgrad.analyze._logspace import safe_div, vec_norm
from jgrad.analyze._network import (
    as_layers,
    check_params_shapes,
    example_rank,
    network_apply,
)
from jgrad.analyze._nonfinite import (
    NonFinite,
    first_true,
    nonfinite_record,
    reports_nonfinite,
)
from jgrad.analyze._precision import full_precision
from jgrad.nn._layer import Layer, walk

__all__ = ["ExampleGradNorms", "per_example_grad_norms"]


class ExampleGradNorms(NamedTuple):
    """Gradient norms of every example's loss L_b (logs base 10, as the names say).

    Attributes:
        log10_norm: (B,) log10 ||dL_b/dtheta||, over all parameters together.
        param_log10_norm: the same per parameter leaf, shaped like the params with (B,)
            leaves: a tuple with one entry per layer (as ``GradFlow.param_log10_norm``),
            or, for a function net ``fn(params, x)``, shaped like its own params.
        input_log10_norm: (B,) log10 ||dL_b/dx_b|| (``coupled=True``: log10
            ||dL_b/dxs||, the gradient wrt the whole batch input).
        loss: (B,) the losses L_b.
        nonfinite: a :class:`NonFinite` indexed by example: ``forward`` the first b
            whose input x_b holds a NaN or inf, else (every input finite) the first b
            whose output y_b or loss L_b does; ``backward`` the first b whose gradient
            (params or input) went NaN or inf although its forward values were finite
            (``coupled=True``: although the whole batch's were); -1 for none.

    Norms are scaled by the largest entry before squaring, so tiny gradients do not
    underflow to ``-inf``; ``-inf`` means an exactly zero gradient, NaN one computed
    from a NaN or inf (``coupled=False``: that example's; ``coupled=True``: any
    example's, since every gradient is computed from the whole batch).
    """

    log10_norm: jax.Array
    param_log10_norm: Any
    input_log10_norm: jax.Array
    loss: jax.Array
    nonfinite: NonFinite


def _is_function_net(net: Any) -> bool:
    """``net`` is a bare function ``fn(params, x)`` (the resolver's one-layer form)."""
    return (
        callable(net)
        and not isinstance(net, (Layer, tuple, list))
        and _foreign.find(net) is None
    )


def _check_args(net, params, xs, loss_fn, coupled, train, key):
    """Validates everything that can be checked before tracing; returns the layers."""
    _checks.boolean("coupled", coupled)
    _checks.boolean("train", train)
    _checks.prng_key("key", key, optional=True)
    if not callable(loss_fn):
        raise ValueError(
            f"`loss_fn` must be a function loss_fn(ys) -> (B,) losses, got "
            f"{type(loss_fn).__name__}. Close over the targets, e.g. loss_fn = lambda "
            "ys: jnp.sum((ys - t) ** 2, axis=-1)."
        )
    _checks.float_array("xs", xs)
    layers, _ = as_layers(net)
    rank = example_rank(layers)
    shape = tuple(xs.shape)
    if len(shape) < 1 or (rank is not None and len(shape) != rank + 1):
        want = "rank >= 1" if rank is None else f"rank {rank + 1} (B, ...)"
        raise ValueError(
            f"`xs` must be a batch of examples with a leading batch axis, {want}, got "
            f"shape {shape}. For one example x pass xs = x[None]."
        )
    if not coupled and train and any(s.info.couples_examples for s in walk(*layers)):
        raise ValueError(
            "`coupled` must be True for a network with batch norm in train mode "
            "(train=True), got False: batch norm couples the examples, so running "
            "each alone changes its output. Pass coupled=True, or train=False."
        )
    return layers


def _check_loss(loss_shape, batch: int) -> None:
    """Raises ValueError unless the abstract loss is one real number per example."""
    shape = tuple(getattr(loss_shape, "shape", ()))
    dtype = getattr(loss_shape, "dtype", None)
    if not isinstance(loss_shape, jax.ShapeDtypeStruct) or shape != (batch,):
        got = f"shape {shape}" if hasattr(loss_shape, "shape") else "a pytree"
        scalar = hasattr(loss_shape, "shape") and shape == ()
        hint = " (a scalar: the batch loss)" if scalar else ""
        raise ValueError(
            f"`loss_fn` must return one loss per example, shape ({batch},), got "
            f"{got}{hint}. Return one loss per example, e.g. "
            "jnp.sum((ys - t)**2, axis=-1)."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"`loss_fn` must return real floating-point losses, got dtype {dtype}. "
            "Compute the loss in float32 or float64."
        )


def _rows(tree, batch: int) -> jax.Array:
    """(B, n): every leaf of ``tree`` with leading axis B, flattened and side by side."""
    leaves = [jnp.reshape(v, (batch, -1)) for v in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((batch, 0))
    return jnp.concatenate(leaves, axis=1) if len(leaves) > 1 else leaves[0]


def _row_log10_norms(tree, batch: int) -> jax.Array:
    """(B,) log10 of each row's norm over every leaf (``-inf`` with no leaves)."""
    rows = _rows(tree, batch)
    if rows.shape[1] == 0:
        return jnp.full((batch,), -jnp.inf)
    return jax.vmap(_log10_norm)(rows)


def _row_finite(tree, batch: int) -> jax.Array:
    """(B,) bool: every leaf with leading axis B is finite in row b."""
    flags = [
        jnp.all(jnp.isfinite(jnp.reshape(v, (batch, -1))), axis=1)
        for v in jax.tree.leaves(tree)
        if jnp.ndim(v) >= 1 and jnp.shape(v)[0] == batch
    ]
    return jnp.stack(flags).all(axis=0) if flags else jnp.ones((batch,), bool)


def _one(apply, train):
    """``one(params, x, key) -> y``: the model on one example, run as a batch of one."""

    def one(p, x, k):
        y = apply(p, x[None], train=train, key=k)
        return jax.tree.map(lambda v: v[0], y)

    return one


def _check_one(apply, ps, xs, train, key) -> None:
    """Raises ValueError unless the model's output for a batch of one has a leading
    axis of 1 on every leaf (abstract: nothing runs)."""
    y = jax.eval_shape(
        lambda p, x: apply(p, x[:1], train=train, key=key), ps, jnp.asarray(xs)
    )
    for leaf in jax.tree.leaves(y):
        if tuple(leaf.shape[:1]) != (1,):
            raise ValueError(
                "`coupled` must be True for a model whose output has no batch axis, got "
                f"False: for an input of shape {(1,) + tuple(xs.shape[1:])} its output "
                f"has shape {tuple(leaf.shape)}, not (1, ...). Pass coupled=True."
            )


def _uncoupled(apply, ps, xs, loss_fn, train, key):
    """Each example alone: losses, dL_b/dtheta (leaves (B, ...)), dL_b/dx_b, their
    log10 scale (B,) and the outputs."""
    batch = xs.shape[0]
    keys = jax.random.split(key, batch) if key is not None else None
    in_k = 0 if key is not None else None
    one = _one(apply, train)
    ys = jax.vmap(one, in_axes=(None, 0, in_k))(ps, xs, keys)
    losses, loss_vjp = jax.vjp(loss_fn, ys)
    (gy,) = loss_vjp(jnp.ones_like(losses))
    # unit cotangent per example; its norm added back in log space (no underflow)
    n = vec_norm(_rows(gy, batch), axis=1)
    unit = jax.tree.map(lambda g: safe_div(g, n), gy)

    def back(x, k, u):
        _, f = jax.vjp(lambda p, x: one(p, x, k), ps, x)
        return f(u)

    gp, gx = jax.vmap(back, in_axes=(0, in_k, 0))(xs, keys, unit)
    return losses, gp, gx, jnp.log10(n), ys


def _coupled(apply, ps, xs, loss_fn, train, key):
    """The whole batch at once: the rows of the loss vector's Jacobian."""
    batch = xs.shape[0]

    def losses_of(p, x):
        ys = apply(p, x, train=train, key=key)
        return loss_fn(ys), ys

    losses, f, ys = jax.vjp(losses_of, ps, xs, has_aux=True)
    gp, gx = jax.vmap(f)(jnp.eye(batch, dtype=losses.dtype))
    return losses, gp, gx, None, ys


def _check_losses(apply, ps, xs, loss_fn, coupled, train, key) -> None:
    """Runs the model and ``loss_fn`` abstractly and checks the loss shape."""
    if coupled:
        ys = jax.eval_shape(lambda p, x: apply(p, x, train=train, key=key), ps, xs)
    else:
        _check_one(apply, ps, xs, train, key)
        one = _one(apply, train)
        ys = jax.eval_shape(
            lambda p, x: jax.vmap(one, in_axes=(None, 0, None))(p, x, key), ps, xs
        )
    _check_loss(jax.eval_shape(loss_fn, ys), xs.shape[0])


def _plus(log_n, v):
    """``v + log_n`` in ``v``'s dtype (``log_n`` None: ``v``)."""
    return v if log_n is None else v + log_n.astype(v.dtype)


@functools.partial(jax.jit, static_argnames=("coupled",))
def _summarize(xs, ys, losses, gp, gx, log_n, *, coupled):
    """The log10 norms, masked NaN where computed from a non-finite forward value, and
    the :class:`NonFinite` record. Jitted on its own (arrays in, arrays out), so an
    eager call compiles it once per shape instead of dispatching every op."""
    batch = xs.shape[0]
    in_ok = _row_finite(xs, batch)
    out_ok = _row_finite(ys, batch) & jnp.isfinite(losses)
    fwd_ok = in_ok & out_ok
    if coupled:  # every gradient is computed from the whole batch
        fwd_ok = jnp.broadcast_to(fwd_ok.all(), (batch,))

    def mask(v):
        return jnp.where(fwd_ok, v, jnp.nan)

    total = mask(_plus(log_n, _row_log10_norms(gp, batch)))
    per_leaf = jax.tree.map(lambda g: mask(_plus(log_n, jax.vmap(_log10_norm)(g))), gp)
    in_norm = mask(_plus(log_n, _row_log10_norms(gx, batch)))
    forward = jnp.where(in_ok.all(), first_true(~out_ok), first_true(~in_ok))
    bad = jnp.isnan(total) | jnp.isnan(in_norm)
    return total, per_leaf, in_norm, nonfinite_record(forward, first_true(bad & fwd_ok))


@reports_nonfinite("example")
@full_precision
def per_example_grad_norms(
    net: Any,
    params: Any,
    xs: jax.Array,
    loss_fn: Callable[[Any], jax.Array],
    *,
    coupled: bool = False,
    train: bool = False,
    key: jax.Array | None = None,
) -> ExampleGradNorms:
    """Gradient norms of each example's loss wrt the params and its input, in log10.

    Args:
        net: any network the analyzers accept: a jgrad network or Layer, a flax linen
            model (``nn.Sequential`` one layer per item), a function ``fn(params, x) ->
            y``, or a list of these.
        params: its params (a linen model's variables; a function's own params).
        xs: (B, ...) a batch of examples; the model must accept a batch (with
            ``coupled=False`` it is run on each example as a batch of one, (1, ...)).
        loss_fn: ``loss_fn(ys) -> (B,)``, one loss per example from the batch output
            (close over the targets). With ``coupled=False``, L_b must depend on
            ``ys[b]`` alone (a sum or mean over the batch is the caller's, outside).
        coupled: False (examples do not interact): each example runs alone; cost about
            one batch backward pass; each dL_b/dy_b is divided by its norm before the
            backward pass and the norm added back in log space, so a tiny loss
            gradient does not underflow inside it. True (batch norm in train mode, or any model or
            loss that mixes examples): one forward pass of the whole batch and B
            backward passes (``vmap`` over one-hot cotangents); ``input_log10_norm``
            is then of ``dL_b/dxs``, the whole batch input.
        train: apply the model in train mode (dropout, batch statistics).
        key: dropout key or None. ``coupled=False``: split into one key per example;
            ``coupled=True``: the batch's key (split per layer as ``serial`` does).

    Returns:
        An :class:`ExampleGradNorms`; ``nonfinite`` counts examples b = 0..B-1.

    Raises:
        ValueError: ``xs`` not a non-empty float array with a batch axis (rank
            example rank + 1 for a net that declares it), ``coupled`` or ``train`` not
            a bool, ``key`` not a PRNG key, ``loss_fn`` not callable or not returning
            shape (B,), params of another network, or ``coupled=False`` with batch
            norm in train mode.

    Examples:
        >>> import jax, jax.numpy as jnp, jgrad
        >>> net = jgrad.nn.mlp(2, 4)
        >>> _, params = net.init(jax.random.key(0), (3,))
        >>> xs = jax.random.normal(jax.random.key(1), (5, 3))
        >>> g = jgrad.analyze.per_example_grad_norms(
        ...     net, params, xs, lambda ys: jnp.sum(ys**2, axis=-1))
        >>> g.log10_norm.shape, g.input_log10_norm.shape, len(g.param_log10_norm)
        ((5,), (5,), 4)
    """
    layers = _check_args(net, params, xs, loss_fn, coupled, train, key)
    apply, ps = network_apply(net, params)
    check_params_shapes(layers, ps, tuple(xs.shape[1:]))
    xs = jnp.asarray(xs)
    _check_losses(apply, ps, xs, loss_fn, coupled, train, key)
    route = _coupled if coupled else _uncoupled
    losses, gp, gx, log_n, ys = route(apply, ps, xs, loss_fn, train, key)

    total, per_leaf, in_norm, record = _summarize(
        xs, ys, losses, gp, gx, log_n, coupled=coupled
    )
    if _is_function_net(net) and len(per_leaf) == 1 and ps is not params:
        per_leaf = per_leaf[0]  # shaped like the function's own params
    return ExampleGradNorms(total, per_leaf, in_norm, losses, record)
