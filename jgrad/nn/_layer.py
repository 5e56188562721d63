"""The ``Layer(init, apply, info)`` protocol, its ``LayerInfo`` and the ``serial`` combinator.

A layer is a NamedTuple of two pure functions, as in ``jax.example_libraries.stax``, plus
declared metadata:

- ``init(key, in_shape) -> (out_shape, params)`` computes shapes without running the layer;
  ``in_shape`` is the shape of ONE example (no batch axis).
- ``apply(params, x, *, train=False, key=None, return_state=False) -> y`` (or ``(y, params)``
  when ``return_state=True``). Every layer takes exactly these keywords, so a typo is a
  ``TypeError`` rather than silently ignored. ``train`` switches dropout and batch norm to
  training behaviour; ``key`` feeds dropout; ``return_state`` also returns the params with
  any running statistics updated (batch norm) and every other entry unchanged.
- ``info``: a :class:`LayerInfo`, defaulted, so ``Layer(init, apply)`` is a complete layer.
  It tells the analyzers what they may use beyond the two functions; every field is
  declared here and read as an attribute, so a misspelt field is an error:

  ============================  ==========================================================
  field                         meaning
  ============================  ==========================================================
  ``kind``                      one of :data:`KINDS`, or None: any other layer (the
                                analyzers then take its Jacobian by autodiff)
  ``activation``                ``"elementwise"``: the :class:`~jgrad.nn.Activation`
                                (closed-form derivative)
  ``block``, ``scale``          ``"residual"``: the branch Layer and its multiplier
  ``block``, ``repeats``        ``"repeat"``: the block applied ``repeats`` times, its
                                params stacked along a leading axis (:func:`jgrad.nn.repeat`)
  ``couples_examples``          True when ``apply(train=True)`` mixes the examples of a
                                batch (batch norm): there is no per-example Jacobian
  ``layers``, ``block_ends``    ``"serial"``: the composed layers in order, and the indices
                                of those whose outputs are the blocks' outputs h_l
  ``in_rank``                   the rank of ONE example's input (dense 1, conv 3), or
                                None: any rank; the analyzers that take one example use it
                                to refuse a batch
  ============================  ==========================================================

  :func:`walk` visits a layer and every layer inside it (a serial's layers, a residual's
  block); it is the one traversal the analyzers use.

Every jgrad layer checks its arguments before tracing and raises a ``ValueError`` naming
the argument: ``init``'s ``key`` must be a PRNG key and ``in_shape`` a tuple of positive
ints; ``apply``'s ``x`` a non-empty floating-point array, ``train`` and ``return_state``
bools, ``key`` a PRNG key or None, and ``params`` the structure its ``init`` gives. The
checks read Python values, shapes and dtypes only, so they add nothing to a jitted
computation.

Params are dicts with fixed names (``{"w", "b"}`` for dense, ``{}`` for a layer without
parameters); ``serial`` holds a tuple with one entry per layer, in order. ``serial`` splits
a ``key`` with :func:`split_keys`, one subkey per layer; analyzers that replay a network
layer by layer split it the same way.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Any, NamedTuple

import jax

from jgrad import _checks

Params = Any
Shape = tuple[int, ...]

__all__ = [
    "KINDS",
    "Layer",
    "LayerInfo",
    "Params",
    "SerialLayer",
    "Shape",
    "check_apply",
    "check_in_shape",
    "check_info",
    "check_init",
    "check_params",
    "lead",
    "plain_layer",
    "serial",
    "split_keys",
    "sublayers",
    "walk",
]

#: Values of ``LayerInfo.kind`` besides None (a layer the analyzers know nothing about).
KINDS = ("dense", "elementwise", "residual", "batch_norm", "serial", "repeat")


class LayerInfo(NamedTuple):
    """What the analyzers may know about a layer beyond its two functions.

    Attributes:
        kind: one of :data:`KINDS`, or None for any other layer.
        activation: the :class:`~jgrad.nn.Activation` of an ``"elementwise"`` layer.
        block: the branch Layer of a ``"residual"`` layer, or the repeated block of a
            ``"repeat"`` layer.
        scale: the multiplier of a ``"residual"`` layer's branch.
        couples_examples: True when ``apply(..., train=True)`` mixes the examples of a
            batch (batch norm), so no per-example Jacobian exists in train mode.
        layers: the layers a ``"serial"`` layer composes, first to last.
        block_ends: for ``"serial"``: the indices into ``layers`` of the layers whose
            outputs are the blocks' outputs h_l, increasing.
        in_rank: the rank of one example's input (dense 1, conv 3); None: any rank.
        repeats: for ``"repeat"``: how many times ``block`` is applied (>= 1).
    """

    kind: str | None = None
    activation: Any = None
    block: Layer | None = None
    scale: float = 1.0
    couples_examples: bool = False
    layers: tuple[Layer, ...] = ()
    block_ends: tuple[int, ...] = ()
    in_rank: int | None = None
    repeats: int = 0


class Layer(NamedTuple):
    """A network layer as two pure functions and declared metadata (see the module
    docstring).

    Attributes:
        init: ``init(key, in_shape) -> (out_shape, params)``.
        apply: ``apply(params, x, *, train=False, key=None, return_state=False)``.
        info: a :class:`LayerInfo`; the default ``LayerInfo()`` declares nothing.
    """

    init: Callable[[jax.Array, Shape], tuple[Shape, Params]]
    apply: Callable[..., Any]
    info: LayerInfo = LayerInfo()

    def __hash__(self) -> int:
        # By the functions, as a Layer of (init, apply) hashes, so a network can be a static
        # argument of jax.jit; ``info`` may hold an Activation, whose params dict is
        # unhashable, and is fixed by the functions anyway.
        return hash((self.init, self.apply))


class SerialLayer(Layer):
    """A :class:`Layer` of kind ``"serial"``, built by :func:`serial`.

    Its ``.layers`` and ``.block_ends`` read ``info.layers`` and ``info.block_ends``: the
    layers it composes, and the indices of the layers whose outputs are the blocks' outputs
    h_l (e.g. after each activation of an MLP; every layer for a plain ``serial``).
    """

    __slots__ = ()

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers, first to last (``info.layers``)."""
        return self.info.layers

    @property
    def block_ends(self) -> tuple[int, ...]:
        """Indices into ``layers`` of the blocks' last layers (``info.block_ends``)."""
        return self.info.block_ends


def sublayers(layer: Layer) -> tuple[Layer, ...]:
    """The layers directly inside ``layer``: a serial's layers, a residual's or a
    repeat's block."""
    info = layer.info
    return info.layers + (() if info.block is None else (info.block,))


def walk(*layers: Layer) -> Iterator[Layer]:
    """Each of ``layers`` and every layer inside it, depth first, parents first.

    Examples:
        >>> import jgrad
        >>> net = jgrad.nn.mlp(2, 4, residual=True)
        >>> [sub.info.kind for sub in walk(net)][:4]
        ['serial', 'residual', 'serial', 'elementwise']
    """
    for layer in layers:
        yield layer
        yield from walk(*sublayers(layer))


def check_info(layer: Layer, name: str = "layer") -> None:
    """Raises ValueError unless ``layer`` and every layer inside it declare a consistent
    :class:`LayerInfo` (a known ``kind`` with the fields that kind needs)."""
    for sub in walk(layer):
        info = sub.info
        if not isinstance(info, LayerInfo):
            raise ValueError(
                f"`{name}.info` must be a jgrad.nn.LayerInfo, got {type(info).__name__}. "
                "Build the layer as Layer(init, apply) or Layer(init, apply, LayerInfo(...))."
            )
        if info.kind is not None and info.kind not in KINDS:
            raise ValueError(
                f"`{name}.info.kind` must be one of {list(KINDS)} or None, got "
                f"{info.kind!r}. Use None for a layer the analyzers should differentiate "
                "by autodiff."
            )
        field = {
            "elementwise": "activation",
            "residual": "block",
            "serial": "layers",
            "repeat": "block",
        }
        field = field.get(info.kind)
        if field is not None and not info._asdict()[field]:
            raise ValueError(
                f"`{name}.info.{field}` must be set for kind {info.kind!r}, got "
                f"{info._asdict()[field]!r}. Build the layer with "
                f"jgrad.nn.{info.kind}(...)."
            )


def split_keys(key: jax.Array | None, n: int) -> list:
    """``n`` subkeys of ``key``, one per layer, as ``serial`` splits its key; ``n`` Nones
    when ``key`` is None (no layer draws)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


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
        shape = tuple(_checks._as_int(d) for d in in_shape)
        ok = all(d is not None and d >= 1 for d in shape)
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


def check_init(key: Any, in_shape: Any, min_rank: int = 0, layer: str = "this layer"):
    """Validates ``init``'s arguments: ``key`` a PRNG key, ``in_shape`` as
    :func:`check_in_shape`; returns the shape as a tuple of ints."""
    _checks.prng_key("key", key)
    return check_in_shape(in_shape, min_rank, layer)


def check_apply(x: Any, train: Any, key: Any, return_state: Any) -> None:
    """Validates ``apply``'s arguments from their Python values, shapes and dtypes only
    (free under jit): ``x`` a non-empty float array, ``train`` and ``return_state`` bools,
    ``key`` a PRNG key or None."""
    _checks.float_array("x", x)
    _checks.boolean("train", train)
    _checks.boolean("return_state", return_state)
    _checks.prng_key("key", key, optional=True)


def check_params(params: Any, keys: Sequence[str], layer: str) -> None:
    """Raises ValueError unless ``params`` is a dict holding ``keys`` (static: the keys
    only, free under jit)."""
    if not isinstance(params, Mapping) or not set(keys) <= set(params):
        got = sorted(params) if isinstance(params, Mapping) else params
        if not isinstance(params, (Mapping, type(None), int, float, str)):
            got = f"a {type(params).__name__}"
        _checks._fail(
            "params",
            f"a dict with keys {sorted(keys)} (from {layer}'s init)",
            got,
            "Pass the params returned by this layer's init(key, in_shape).",
        )


def plain_layer(
    init: Callable[[jax.Array, Shape], tuple[Shape, Params]],
    fn: Callable[[Params, jax.Array], jax.Array],
    info: LayerInfo = LayerInfo(),
    param_keys: tuple[str, ...] = (),
    name: str = "this layer",
) -> Layer:
    """Builds a Layer from ``fn(params, x) -> y`` that has no train mode, key or state;
    ``apply`` checks that its params hold ``param_keys`` (``name`` names the layer)."""

    def apply(params, x, *, train=False, key=None, return_state=False):
        check_apply(x, train, key, return_state)
        if param_keys:
            check_params(params, param_keys, name)
        y = fn(params, x)
        return (y, params) if return_state else y

    def checked_init(key, in_shape):
        return init(key, check_init(key, in_shape))

    return Layer(checked_init, apply, info)


def _check_block_ends(block_ends: Any, n: int) -> tuple[int, ...]:
    try:
        ends = tuple(operator.index(e) for e in block_ends)
        ok = all(0 <= e < n for e in ends) and all(a < b for a, b in pairwise(ends))
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"`block_ends` must be increasing layer indices in [0, {n}), got "
            f"{block_ends!r}. Pass the index of each block's last layer, e.g. "
            "serial(dense(8), elementwise('tanh'), dense(8), elementwise('tanh'), "
            "block_ends=(1, 3))."
        )
    return ends


def serial(*layers: Layer, block_ends: Sequence[int] | None = None) -> SerialLayer:
    """Composes layers in order; itself a Layer.

    Args:
        *layers: the layers, applied first to last.
        block_ends: the indices of the layers whose outputs are the blocks' outputs h_l
            (what the analyzers report on with ``blocks=True``), increasing; None makes
            every layer a block.

    Returns:
        A :class:`SerialLayer` whose ``apply`` additionally takes
        ``return_intermediates=True`` and then returns ``(y, hs)`` with ``hs`` a tuple of
        every layer's output (``hs[-1] is y``); with ``return_state=True`` it returns
        ``(y, new_params)`` or ``(y, hs, new_params)``. A ``key`` is split once, one subkey
        per layer.

    Raises:
        ValueError: if no layers are given, an argument is not a Layer (or declares an
            inconsistent ``info``), or ``block_ends`` is not increasing indices of layers.

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
        check_info(layer, f"layers[{i}]")
    ends = (
        tuple(range(len(layers)))
        if block_ends is None
        else _check_block_ends(block_ends, len(layers))
    )

    def init(key, in_shape):
        shape = check_init(key, in_shape)
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
        check_apply(x, train, key, return_state)
        _checks.boolean("return_intermediates", return_intermediates)
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
        keys = split_keys(key, len(layers))
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

    info = LayerInfo(kind="serial", layers=tuple(layers), block_ends=ends)
    return SerialLayer(init, apply, info)
