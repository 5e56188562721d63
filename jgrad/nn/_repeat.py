"""``repeat``: one block applied n times, its params stacked, run by one ``lax.scan``.

A deep network that repeats one block (an MLP's dense + activation, a residual block)
written as ``serial`` of n copies holds n params entries and traces n copies of the
block: ``init`` runs n times and a jitted ``apply`` compiles n copies, so both grow with
depth. :func:`repeat` holds the n copies' params as ONE pytree with a leading axis n:
``init`` is one ``vmap`` of the block's init over n keys and ``apply`` one ``lax.scan``,
so their compiled size does not depend on n.

:func:`stack_params` and :func:`unstack_params` convert between the two layouts: a
network with repeat layers, and the same network with every repeat layer written out
as n copies of its block (a serial block's layers inlined), e.g. ``mlp(...,
stacked=True)`` and ``mlp(...)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.nn._layer import Layer, LayerInfo, check_apply, check_info, check_init

__all__ = ["repeat", "stack_params", "unstack_params"]


def _in_rank(layer: Layer) -> int | None:
    """The example rank ``layer`` declares, looking through serials and residuals."""
    info = layer.info
    if info.in_rank is not None:
        return info.in_rank
    if info.kind == "serial" and info.layers:
        return _in_rank(info.layers[0])
    if info.kind in ("residual", "repeat"):
        return _in_rank(info.block)
    return None


def _check_stacked(params: Any, n: int) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        shape = jnp.shape(leaf)
        if not shape or shape[0] != n:
            where = jax.tree_util.keystr(path)
            raise ValueError(
                f"`params{where}` must have a leading axis of size {n} (one entry per "
                f"repeated block), got shape {tuple(shape)}. Pass the params returned by "
                "this layer's init (or jgrad.nn.stack_params of per-block params)."
            )


def repeat(block: Layer, n: int) -> Layer:
    """The block ``block`` applied ``n`` times in a row, with ``n`` independent params.

    The same function as ``serial(block, block, ..., block)`` (n copies), with the
    params stored stacked: every leaf of the block's params gains a leading axis of size
    ``n``. ``init`` draws them with ONE ``jax.vmap`` of ``block.init`` over
    ``jax.random.split(key, n)``, and ``apply`` is ONE ``lax.scan`` over them, so neither
    the time to build nor the compiled program grows with ``n`` beyond the arrays
    themselves. This is an explicit layout choice: the params differ in structure from
    the serial layout (convert with :func:`stack_params` / :func:`unstack_params`).

    Args:
        block: the repeated Layer; it must map its input shape to the same shape.
        n: how many times it is applied, >= 1.

    Returns:
        A Layer of kind ``"repeat"`` (``info.block``, ``info.repeats``). ``apply(params,
        x, *, train=False, key=None, return_state=False, return_intermediates=False)``:
        a ``key`` is split into ``n`` subkeys, block k drawing with subkey k, exactly as
        ``serial`` splits its key over n layers. ``return_intermediates=True`` also
        returns the output of every block stacked, ``(n, *x.shape)`` (the last entry is
        the output); ``return_state=True`` also returns the params with each block's
        updated state stacked, as ``(y, new_params)`` or ``(y, hs, new_params)``. A
        ``serial`` holding a repeat layer lists only the repeat layer's output among its
        own intermediates; call the repeat layer's apply for the block outputs.

    Raises:
        ValueError: ``block`` is not a Layer, ``n`` is not a positive int, ``block``
            changes the shape of its input (at init), or ``params`` lack the leading
            axis ``n`` (at apply).

    Examples:
        >>> import jax, jgrad
        >>> block = jgrad.nn.serial(jgrad.nn.dense(4), jgrad.nn.elementwise("tanh"))
        >>> net = jgrad.nn.repeat(block, 100)
        >>> out_shape, params = net.init(jax.random.key(0), (4,))
        >>> out_shape, params[0]["w"].shape
        ((4,), (100, 4, 4))
        >>> y, hs = net.apply(params, jax.numpy.arange(1.0, 5.0), return_intermediates=True)
        >>> hs.shape, bool((hs[-1] == y).all())
        ((100, 4), True)
    """
    if not isinstance(block, Layer):
        raise ValueError(
            f"`block` must be a jgrad.nn.Layer, got {type(block).__name__}. Build it "
            "with jgrad.nn.serial(jgrad.nn.dense(width), jgrad.nn.elementwise('tanh'))."
        )
    check_info(block, "block")
    n = _checks.positive_int("n", n)

    def init(key, in_shape):
        shape = check_init(key, in_shape)
        found = []

        def one(k):
            out_shape, p = block.init(k, shape)
            found.append(tuple(out_shape))
            return p

        jax.eval_shape(one, key)  # the output shape, from a trace only
        out_shape = found[0]
        if out_shape != shape:
            raise ValueError(
                f"`block` must map its input shape to the same shape to be repeated, "
                f"got in {shape} -> out {out_shape}. Repeat only the blocks after the "
                "first (e.g. repeat(serial(dense(width), act), depth - 1) after a first "
                "dense(width) layer)."
            )
        return shape, jax.vmap(one)(jax.random.split(key, n))

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
        _check_stacked(params, n)
        keys = None if key is None else jax.random.split(key, n)

        def body(h, xs):
            p, k = xs
            out = block.apply(p, h, train=train, key=k, return_state=return_state)
            h, p_new = out if return_state else (out, None)
            return h, (h if return_intermediates else None, p_new)

        y, (hs, new_params) = jax.lax.scan(
            body, jnp.asarray(x), (params, keys), length=n
        )
        result = (y, hs) if return_intermediates else (y,)
        if return_state:
            result = result + (new_params,)
        return result if len(result) > 1 else result[0]

    info = LayerInfo(kind="repeat", block=block, repeats=n, in_rank=_in_rank(block))
    return Layer(init, apply, info)


def _block_width(layer: Layer) -> int:
    """How many serial-layout params entries one copy of ``layer``'s block spans."""
    block = layer.info.block
    return len(block.info.layers) if block.info.kind == "serial" else 1


def _layers_of(net: Layer) -> tuple[Layer, ...]:
    if not isinstance(net, Layer):
        raise ValueError(
            f"`net` must be a jgrad.nn.Layer (a serial network or a repeat layer), got "
            f"{type(net).__name__}. Pass e.g. jgrad.nn.mlp(depth, width, stacked=True)."
        )
    return net.info.layers if net.info.kind == "serial" else (net,)


def _unstacked_len(layers: tuple[Layer, ...]) -> int:
    return sum(
        lay.info.repeats * _block_width(lay) if lay.info.kind == "repeat" else 1
        for lay in layers
    )


def stack_params(net: Layer, params: Any) -> Any:
    """Params of the serial layout converted to ``net``'s stacked layout.

    The serial layout is ``net`` with every repeat layer written out as n copies of its
    block, a serial block's layers inlined: for ``mlp(..., stacked=True)`` it is
    ``mlp(...)`` with the same arguments. Each repeat layer takes the next ``n`` copies'
    entries, stacked leaf by leaf along a new leading axis; every other layer takes one
    entry unchanged.

    Args:
        net: a serial network holding repeat layers, or a repeat layer.
        params: the serial layout's params: one entry per layer (a sequence).

    Returns:
        ``net``'s params: a tuple with one entry per layer of ``net`` (a repeat layer's
        own params when ``net`` is one).

    Raises:
        ValueError: ``net`` is not a Layer, or ``params`` has the wrong number of entries.

    Examples:
        >>> import jax, jgrad
        >>> flat, stacked = jgrad.nn.mlp(5, 4), jgrad.nn.mlp(5, 4, stacked=True)
        >>> _, params = flat.init(jax.random.key(0), (3,))
        >>> sp = jgrad.nn.stack_params(stacked, params)
        >>> len(params), len(sp), sp[2][0]["w"].shape
        (10, 3, (4, 4, 4))
        >>> x = jax.numpy.arange(1.0, 4.0)
        >>> bool(jax.numpy.allclose(stacked.apply(sp, x), flat.apply(params, x)))
        True
    """
    layers = _layers_of(net)
    want = _unstacked_len(layers)
    if not isinstance(params, (tuple, list)) or len(params) != want:
        got = (
            len(params) if isinstance(params, (tuple, list)) else type(params).__name__
        )
        raise ValueError(
            f"`params` must be the serial layout's params, {want} per-layer entries, got "
            f"{got}. Pass the params of the network with every repeat layer written out "
            "(e.g. jgrad.nn.mlp(...) for jgrad.nn.mlp(..., stacked=True))."
        )
    out, i = [], 0
    for lay in layers:
        if lay.info.kind != "repeat":
            out.append(params[i])
            i += 1
            continue
        m, n = _block_width(lay), lay.info.repeats
        copies = [
            tuple(params[i + k * m : i + (k + 1) * m])
            if lay.info.block.info.kind == "serial"
            else params[i + k * m]
            for k in range(n)
        ]
        out.append(jax.tree.map(lambda *a: jnp.stack(a), *copies))
        i += n * m
    return out[0] if net.info.kind != "serial" else tuple(out)


def unstack_params(net: Layer, params: Any) -> tuple:
    """``net``'s stacked params converted to the serial layout (the inverse of
    :func:`stack_params`): one entry per layer of the network with every repeat layer
    written out.

    Args:
        net: a serial network holding repeat layers, or a repeat layer.
        params: ``net``'s params (from ``net.init``).

    Returns:
        A tuple with one entry per layer of the serial layout.

    Raises:
        ValueError: ``net`` is not a Layer, or ``params`` does not have one entry per
            layer of ``net``.
    """
    layers = _layers_of(net)
    if net.info.kind != "serial":
        params = (params,)
    if not isinstance(params, (tuple, list)) or len(params) != len(layers):
        got = (
            len(params) if isinstance(params, (tuple, list)) else type(params).__name__
        )
        raise ValueError(
            f"`params` must have one entry per layer of `net` ({len(layers)}), got "
            f"{got}. Pass the params returned by net.init."
        )
    out = []
    for lay, p in zip(layers, params, strict=True):
        if lay.info.kind != "repeat":
            out.append(p)
            continue
        _check_stacked(p, lay.info.repeats)
        leaves, treedef = jax.tree.flatten(p)
        split = [jnp.unstack(leaf) for leaf in leaves]  # one op per leaf
        for k in range(lay.info.repeats):
            copy = jax.tree.unflatten(treedef, [parts[k] for parts in split])
            out.extend(copy if lay.info.block.info.kind == "serial" else (copy,))
    return tuple(out)
