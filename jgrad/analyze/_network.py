"""A network as every analyzer sees it: its layers, one params entry per layer, its blocks.

Analyzers accept the same ``net``: a ``jgrad.nn.serial`` network (``mlp``, ``resnet``, ...;
its ``info.layers`` and ``info.block_ends``), a single Layer, a model from another library
(flax linen, flax NNX, equinox, ``module_chain``: converted by the adapters of
``_foreign``), a function ``fn(params, x)`` (one layer), or a non-empty list whose items are
Layers, flax ``linen.Module``s (params entry: the module's variables) or functions
``fn(params, x)``. :func:`resolve_net` is the one place that reads it.

A ``jgrad.nn.repeat`` layer (``mlp(..., stacked=True)``) stands for n blocks: it is
always a block of its own (a block boundary before and after it), and the analyzers
report one entry per repeated block, numbered in order with the other blocks
(:func:`block_counts`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.analyze import _foreign, _linen
from jgrad.nn._layer import Layer, check_info

__all__ = [
    "Network",
    "as_layers",
    "block_counts",
    "check_input",
    "check_params_shapes",
    "example_rank",
    "network_apply",
    "num_blocks",
    "refuse_split_repeats",
    "resolve_net",
]


class _Resolved(tuple):
    """Params already one entry per layer (what :func:`resolve_net` returns), so that
    resolving them again is the identity."""

    __slots__ = ()


jax.tree_util.register_pytree_node(
    _Resolved, lambda t: (tuple(t), None), lambda _, children: _Resolved(children)
)


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
    adapter = _foreign.find(net)
    if adapter is not None:
        layers = adapter.layers(net)
        return layers, _foreign.block_ends(layers)
    if isinstance(net, (tuple, list)) and net:
        out = []
        for i, item in enumerate(net):
            if isinstance(item, Layer):
                check_info(item, f"net[{i}]")
                out.append(item)
                continue
            layer = _linen.item_layer(item)
            if layer is None:
                raise ValueError(
                    f"`net[{i}]` must be a jgrad.nn.Layer, a flax.linen.Module or a "
                    f"function fn(params, x), got {type(item).__name__}."
                )
            out.append(layer)
        return tuple(out), tuple(range(len(out)))
    if callable(net) and not isinstance(net, (tuple, list)):
        return (_foreign.function_layer(net),), (0,)
    raise ValueError(
        f"`net` must be one of: {_foreign.FORMS}; got {type(net).__name__}. Build a "
        "jgrad network with jgrad.nn.serial(...) or jgrad.nn.mlp(...)."
    )


def _layer_params(net: Any, layers: tuple[Layer, ...], params: Any) -> Any:
    """The params as one entry per layer: a foreign model's converted by its adapter,
    a list's linen items' variables converted (a Dense's to ``{"w", "b"}``), a function
    net's or a single Layer's wrapped in a one-entry tuple."""
    if isinstance(params, _Resolved):
        return params
    adapter = _foreign.find(net)
    if adapter is not None:
        return adapter.params(net, params)
    if _is_function(net):
        return (params,)  # the function's own params, whatever their structure
    if isinstance(net, (tuple, list)) and not isinstance(net, Layer):
        if isinstance(params, (tuple, list)) and len(params) == len(net):
            return tuple(
                p
                if isinstance(item, Layer)
                else _linen.item_params(item, p, f"params[{i}]")
                for i, (item, p) in enumerate(zip(net, params, strict=True))
            )
        return params
    if not isinstance(net, Layer) or net.info.kind != "serial":
        if not (isinstance(params, (tuple, list)) and len(params) == 1):
            return (params,)
    return params


def _is_function(net: Any) -> bool:
    return callable(net) and not isinstance(net, (Layer, tuple, list))


def network_apply(net: Any, params: Any):
    """``(apply, params)``: ``apply(params, x, *, train=False, key=None) -> y`` runs the
    whole network (any form :func:`as_layers` accepts), ``params`` one entry per layer
    (converted as :func:`resolve_net` does). ``key`` is split once per layer as
    ``serial`` does."""
    layers, _ = as_layers(net)
    params = tuple(_layer_params(net, layers, params))
    _check_len(layers, params)

    def apply(params, x, *, train=False, key=None):
        keys = (
            [None] * len(layers) if key is None else jax.random.split(key, len(layers))
        )
        for layer, p, k in zip(layers, params, keys, strict=True):
            x = layer.apply(p, x, train=train, key=k)
        return x

    return apply, params


def _check_len(layers, params) -> None:
    if not isinstance(params, (tuple, list)) or len(params) != len(layers):
        got = (
            len(params) if isinstance(params, (tuple, list)) else type(params).__name__
        )
        raise ValueError(
            f"`params` must have one entry per layer ({len(layers)}), got {got}. Pass the "
            "params returned by net.init."
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
    params = _Resolved(_layer_params(net, layers, params))
    _check_len(layers, params)
    ends = set(range(len(layers))) if not blocks else set(ends)
    for i, layer in enumerate(layers):  # a repeat layer is a block of its own
        if layer.info.kind == "repeat":
            ends.update((i - 1, i) if i else (i,))
    ends = tuple(sorted(ends))
    if not ends or ends[-1] != len(layers) - 1:
        ends = ends + (len(layers) - 1,)
    return Network(layers, params, ends)


def block_counts(layers: tuple[Layer, ...], ends: tuple[int, ...]) -> tuple[int, ...]:
    """How many blocks each segment of :func:`resolve_net`'s ``ends`` stands for: a
    repeat layer's ``info.repeats`` (it is a segment of its own), else 1."""
    out, start = [], 0
    for end in ends:
        first = layers[start]
        out.append(first.info.repeats if first.info.kind == "repeat" else 1)
        start = end + 1
    return tuple(out)


def num_blocks(net: Any, params: Any, blocks: bool) -> int:
    """L, the number of block outputs the analyzers report on (a repeat layer counts
    its n blocks)."""
    layers, _, ends = resolve_net(net, params, blocks)
    return sum(block_counts(layers, ends))


def refuse_split_repeats(layers: tuple[Layer, ...], blocks: bool) -> None:
    """Raises ValueError for ``blocks=False`` on a network with a repeat layer whose
    block has several layers: the repeated blocks are scanned as units, so their
    layers cannot be steps of their own."""
    if blocks:
        return
    for i, layer in enumerate(layers):
        info = layer.info
        if info.kind == "repeat" and len(info.block.info.layers) > 1:
            raise ValueError(
                f"`blocks` must be True for a network with a repeat layer whose block "
                f"has several layers (layer {i}: {info.repeats} blocks of "
                f"{len(info.block.info.layers)} layers), got False: the repeated blocks "
                "are scanned as units, one entry per block. Use blocks=True, or the "
                "default layout (jgrad.nn.mlp(..., stacked=False) with params from "
                "jgrad.nn.unstack_params) for one entry per layer."
            )


_SHAPE_PRESERVING = ("elementwise", "batch_norm")


def example_rank(layers: tuple[Layer, ...]) -> int | None:
    """The rank of one example's input, read from the first layer that declares it
    (``LayerInfo.in_rank``) behind shape-preserving layers; None when unknown."""
    for layer in layers:
        info = layer.info
        if info.in_rank is not None:
            return info.in_rank
        if info.kind == "serial":
            return example_rank(info.layers)
        if info.kind == "residual":
            return example_rank((info.block,))
        if info.kind == "repeat":  # shape-preserving: its block's rank, else look on
            rank = example_rank((info.block,))
            if rank is not None:
                return rank
            continue
        if info.kind not in _SHAPE_PRESERVING:
            return None
    return None


@functools.lru_cache(maxsize=32)
def _init_params(layers: tuple[Layer, ...], in_shape: tuple[int, ...]):
    """Abstract params (ShapeDtypeStructs) that the layers' ``init`` gives, in order."""

    def init_all(key):
        shape, out = in_shape, []
        for layer, k in zip(layers, jax.random.split(key, len(layers)), strict=True):
            shape, p = layer.init(k, shape)
            out.append(p)
        return out

    return jax.eval_shape(init_all, jax.random.key(0))


def _path_str(path) -> str:
    return "".join(
        f"[{p.idx}]"
        if hasattr(p, "idx")
        else f"[{p.key!r}]"
        if hasattr(p, "key")
        else str(p)
        for p in path
    )


def check_params_shapes(
    layers: tuple[Layer, ...], params: Any, in_shape: tuple[int, ...]
) -> None:
    """Raises ValueError if ``params`` (one entry per layer) do not have the structure and
    shapes that the layers' ``init`` gives for an example of shape ``in_shape`` (params of
    another network, e.g. another width). Computed abstractly (``jax.eval_shape``, no
    arrays made) and cached per network and shape; a network whose ``init`` cannot run
    abstractly (a flax module, a plain function) is not checked."""
    shape = tuple(int(d) for d in in_shape)
    try:
        want = _init_params(tuple(layers), shape)
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 - no abstract init: nothing to compare with
        return
    for i, (p, w) in enumerate(zip(params, want, strict=True)):
        got_tree, want_tree = jax.tree.structure(p), jax.tree.structure(w)
        if got_tree != want_tree:
            raise ValueError(
                f"`params[{i}]` must have the structure net.init gives for layer {i} "
                f"({want_tree}), got {got_tree}. These params belong to a different "
                "network; pass the params returned by net.init for this net."
            )
        got_leaves = jax.tree_util.tree_flatten_with_path(p)[0]
        for (path, g), w_leaf in zip(got_leaves, jax.tree.leaves(w), strict=True):
            if tuple(jnp.shape(g)) != tuple(w_leaf.shape):
                raise ValueError(
                    f"`params[{i}]{_path_str(path)}` must have shape "
                    f"{tuple(w_leaf.shape)} (what net.init gives for an input of shape "
                    f"{shape}), got {tuple(jnp.shape(g))}. These params belong to a "
                    "different network (another width or input size?); pass the params "
                    "returned by net.init(key, in_shape) for this net."
                )


def check_input(fn: str, net: Any, params: Any, x: Any, *, one_example: bool) -> None:
    """Validates an analyzer's ``x`` and ``params`` before tracing.

    ``x`` must be a non-empty floating-point array (not a list, not integer or complex).
    A function that takes ONE example (``one_example=True``) refuses a batch, with the
    ``vmap`` to use; a batch-or-example function accepts leading batch axes. The params
    are compared with the shapes ``net.init`` gives for the example's shape.

    Raises:
        ValueError: naming the argument, what was expected, what was given and the fix.
    """
    if (
        isinstance(x, (list, tuple))
        or not hasattr(x, "shape")
        or not hasattr(x, "dtype")
    ):
        raise ValueError(
            f"`x` must be an array (jax or NumPy), got {type(x).__name__}. Convert it "
            "with jnp.asarray(x, jnp.float32)."
        )
    dtype = jnp.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"`x` must be a real floating-point array (float32 or float64), got dtype "
            f"{dtype}. Jacobians and gradients are taken with respect to x; convert it "
            "with x.astype(jnp.float32)."
        )
    shape = tuple(x.shape)
    if 0 in shape:
        raise ValueError(
            f"`x` must hold at least one value, got shape {shape}. Pass one example (or "
            "a non-empty batch)."
        )
    layers, _ = as_layers(net)
    rank = example_rank(layers)
    if one_example and rank is not None and len(shape) != rank:
        example = shape[-rank:] if len(shape) > rank else f"(rank {rank})"
        raise ValueError(
            f"`x` must be ONE example of rank {rank} for {fn} (shape {example}), got "
            f"shape {shape}. For a batch, vmap over it: jax.vmap(lambda x: "
            f"jgrad.analyze.{fn}(net, params, x))(xs), which returns one result per "
            "example."
        )
    in_shape = shape[-rank:] if rank is not None and len(shape) >= rank else shape
    params = _layer_params(net, layers, params)
    if isinstance(params, (tuple, list)) and len(params) == len(layers):
        check_params_shapes(layers, params, in_shape)
