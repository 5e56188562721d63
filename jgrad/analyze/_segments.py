"""A network as linearizable segments: single blocks, and runs of identical blocks.

The backward sweeps (:mod:`jgrad.analyze._sweep` and the modules built on it) push vectors
through every block of a network.
Unrolled in Python, a sweep through L blocks is L copies of the block's code in the
compiled program, so compile time grows with depth (about 25 s per sweep at L = 128).
Most deep networks repeat one block (an MLP's dense + activation, a residual block): here
consecutive blocks whose traced code (jaxpr), parameter shapes and constants are equal and
whose input and output shapes agree form a :class:`Run`, swept by ONE ``lax.scan`` over
their stacked parameters and stored inputs. Compile time then no longer depends on the
depth, and the loop is no slower than the unrolled code on CPU. A ``jgrad.nn.repeat``
layer's blocks become runs straight from slices of its stacked params (nothing is
stacked in the program), so for a stacked network (``mlp(..., stacked=True)``) nothing in
the program grows with depth.

:func:`fold` runs a per-block step over the segments in either direction, so each sweep
is written once for both kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jgrad.analyze._jacobians import _serial_jacobian, _to_full
from jgrad.analyze._network import refuse_split_repeats, resolve_net
from jgrad.nn._layer import split_keys, sublayers, walk

MIN_RUN = 3  # shorter runs of identical blocks stay unrolled

_CLOSED_KINDS = ("dense", "elementwise")


def _closed_form(*layers) -> bool:
    """Whether ``_serial_jacobian`` has a closed form (no autodiff) for these layers: every
    layer in them that contains no others (a serial's and a residual's do) is closed."""
    return all(
        sub.info.kind in _CLOSED_KINDS for sub in walk(*layers) if not sublayers(sub)
    )


class Block(NamedTuple):
    """One block linearized at its input: ``jvp`` (tangent at the input -> at the output)
    and ``vjp`` (cotangent at the output -> at the input) of one vector each (vmap them
    over rows), the shapes, ``jac()``: the block's Jacobian in closed form, or None, and
    ``h_in``: the block's input on the forward trajectory (None inside a run's scan)."""

    jvp: Callable
    vjp: Callable
    in_shape: tuple
    out_shape: tuple
    jac: Callable | None
    h_in: Any = None


class Run(NamedTuple):
    """R >= MIN_RUN consecutive blocks with the same code (``fn(p, k, h)``), parameter
    shapes and constants, each mapping ``shape`` to ``shape``.

    Attributes:
        fn: one block, ``fn(params, keys, h) -> h``.
        ps: the blocks' params, stacked along a leading axis of size R.
        ks: their dropout keys stacked (a tuple of None without keys).
        hs: ``(R, *shape)``, the input of each block on the forward trajectory.
        shape: the blocks' input (= output) shape.
        lin: the blocks' linearizations stored by the forward scan, or None (then each
            sweep re-linearizes every block from ``hs``): ``(treedef, where, res)``, the
            tree structure of ``jax.linearize``'s JVP function, for each of its leaves
            ``("p", i)`` (leaf i of the block's own ``(params, keys)``, not stored twice)
            or ``("r", j)``, and ``res`` the other leaves (residuals) stacked over R.
    """

    fn: Callable
    ps: Any
    ks: Any
    hs: jax.Array
    shape: tuple
    lin: Any = None


def seg_len(seg) -> int:
    return seg.hs.shape[0] if isinstance(seg, Run) else 1


def _linearize(fn, h):
    out, jvp = jax.linearize(fn, h)
    vjp = jax.linear_transpose(jvp, h)
    return out, jvp, lambda c: vjp(c)[0]


# Sweeps read each block's linearization from the forward scan instead of re-linearizing
# it (recomputing the block) in every sweep step: 9.7 against 10.6 ms for a pull of 8 rows
# through 128 tanh blocks of width 128 (16 examples, 2-core CPU). The residuals cost
# memory of the order of the block inputs (parameters are not stored twice).
STORE_LINEARIZATION = True


def _split_lin(jvp, p, k):
    """(treedef, where, residuals) of a linearize JVP function; see ``Run.lin``."""
    leaves, treedef = jax.tree.flatten(jvp)
    own = jax.tree.leaves((p, k))
    where, res = [], []
    for leaf in leaves:
        i = next((i for i, o in enumerate(own) if leaf is o), None)
        if i is None:
            where.append(("r", len(res)))
            res.append(leaf)
        else:
            where.append(("p", i))
    return treedef, tuple(where), res


def _run_block(run, p, k, h, res=None):
    """The Block of one member of ``run`` (inside a scan body): from the stored
    linearization when there is one (``res``: this block's residuals), else by
    linearizing the block at its input ``h``."""
    if res is None:
        _, jvp, vjp = _linearize(lambda v: run.fn(p, k, v), h)
        return Block(jvp, vjp, run.shape, run.shape, None)
    treedef, where, _ = run.lin
    own = jax.tree.leaves((p, k))
    jvp = jax.tree.unflatten(
        treedef, [own[i] if kind == "p" else res[i] for kind, i in where]
    )
    vjp = jax.linear_transpose(jvp, jax.ShapeDtypeStruct(h.shape, h.dtype))
    return Block(jvp, lambda c: vjp(c)[0], run.shape, run.shape, None)


def _same_consts(a, b) -> bool:
    if len(a) != len(b):
        return False
    for u, v in zip(a, b, strict=True):
        if u is v:
            continue
        if isinstance(u, jax.core.Tracer) or isinstance(v, jax.core.Tracer):
            return False
        try:
            if np.shape(u) != np.shape(v) or not np.array_equal(u, v):
                return False
        except TypeError:  # not array-like: unequal unless identical
            return False
    return True


def segments(
    net, params, x, *, blocks, train, key, cut=None, single_after_cut=False, bounds=()
):
    """Forward pass of one example; returns (segments, block input shapes, output).

    ``segments`` is a list of :class:`Block` (linearized) and :class:`Run`. The last block
    is always a single Block (the sweeps start from its closed-form Jacobian), and no run
    crosses block index ``cut`` or any index in ``bounds`` (so that a sweep can cover the
    blocks from there on alone: :func:`split_at`); with ``single_after_cut`` the blocks
    from ``cut`` on are all single Blocks. :func:`forward_bad` reads which block outputs
    are non-finite."""
    layers, params, ends = resolve_net(net, params, blocks)
    refuse_split_repeats(layers, blocks)
    if train and any(sub.info.couples_examples for sub in walk(*layers)):
        raise ValueError(
            "`train` must be False for a network with batch norm in these sweeps, got "
            "True: batch norm couples the examples. Use layer_jacobians(..., "
            "batch_jacobian=True) for its batch Jacobian."
        )
    keys = split_keys(key, len(layers))
    parts, start = [], 0
    for end in ends:
        seg = slice(start, end + 1)
        parts.append((tuple(layers[seg]), tuple(params[seg]), tuple(keys[seg])))
        start = end + 1

    def make_fn(lays):
        def fn(p, k, v):
            for layer, pi, ki in zip(lays, p, k, strict=True):
                v = layer.apply(pi, v, train=train, key=ki)
            return v

        return fn

    # The blocks' signatures, from shapes alone (one trace each, nothing computed); a
    # repeat layer's n blocks: one trace of its block.
    h = jnp.asarray(x)
    sigs, shapes, first = [], [], []  # per part; first: the part's first block index
    cur = jax.ShapeDtypeStruct(h.shape, h.dtype)
    for q, (lays, p, k) in enumerate(parts):
        first.append(first[-1] + _part_len(parts[q - 1]) if q else 0)
        if _part_len((lays, p, k)) > 1 or lays[0].info.kind == "repeat":
            sigs.append(None)
            shapes.append(cur.shape)
            continue
        cj = jax.make_jaxpr(make_fn(lays))(p, k, cur)
        (out,) = cj.out_avals
        same_shape = out.shape == cur.shape and out.dtype == cur.dtype
        sigs.append(
            (str(cj.jaxpr), jax.tree.structure((p, k)), cj.in_avals, cj.consts)
            if same_shape
            else None
        )
        shapes.append(cur.shape)
        cur = jax.ShapeDtypeStruct(out.shape, out.dtype)

    def same(i, j):
        a, b = sigs[i], sigs[j]
        return (
            a is not None
            and b is not None
            and a[:3] == b[:3]
            and shapes[i] == shapes[j]
            and _same_consts(a[3], b[3])
        )

    total = first[-1] + _part_len(parts[-1])  # L, the blocks
    cut = total if cut is None or not 0 <= cut < total else cut

    def stop_at(g):
        """The block index a run starting at block g must stop before."""
        stop = min(
            cut if g < cut else (g + 1 if single_after_cut else total), total - 1
        )
        return min([stop] + [b for b in bounds if b > g])

    segs, block_shapes, i = [], [], 0
    while i < len(parts):
        if parts[i][0][0].info.kind == "repeat":
            h = _repeat_segments(segs, parts[i], h, first[i], stop_at, train)
            block_shapes += [shapes[i]] * _part_len(parts[i])
            i += 1
            continue
        stop = stop_at(first[i])
        j = i + 1
        while j < len(parts) and first[j] < stop and same(i, j):
            j += 1
        if j - i >= MIN_RUN:
            stack = lambda *a: jnp.stack(a)  # noqa: E731
            ps = jax.tree.map(stack, *[parts[m][1] for m in range(i, j)])
            ks = parts[i][2]
            if any(kk is not None for kk in ks):
                ks = jax.tree.map(stack, *[parts[m][2] for m in range(i, j)])
            h = _scan_run(segs, make_fn(parts[i][0]), ps, ks, h)
            block_shapes += shapes[i:j]
            i = j
            continue
        lays, p, k = parts[i]
        h = _single(segs, lays, p, k, h, make_fn(lays), train)
        block_shapes.append(shapes[i])
        i += 1
    return segs, block_shapes, h


def _part_len(part) -> int:
    """The blocks a part of :func:`segments` stands for (a repeat layer's n)."""
    lays = part[0]
    return lays[0].info.repeats if lays[0].info.kind == "repeat" else 1


def _scan_run(segs, fn, ps, ks, h):
    """Appends the :class:`Run` of the blocks ``fn`` with params ``ps`` (keys ``ks``)
    from input ``h``, by one forward ``lax.scan``; returns the output."""
    lin = None
    if STORE_LINEARIZATION:
        meta = []

        def body(v, xs):
            p, k = xs
            out, jvp = jax.linearize(lambda u: fn(p, k, u), v)
            treedef, where, res = _split_lin(jvp, p, k)
            meta[:] = [treedef, where]
            return out, (v, res)

        h_out, (hs, res) = jax.lax.scan(body, h, (ps, ks))
        lin = (meta[0], meta[1], res)
    else:

        def body(v, xs):
            p, k = xs
            return fn(p, k, v), v

        h_out, hs = jax.lax.scan(body, h, (ps, ks))
    segs.append(Run(fn, ps, ks, hs, tuple(h_out.shape), lin))
    return h_out


def _single(segs, lays, p, k, h_in, fn, train):
    """Appends the linearized :class:`Block` of one block at input ``h_in`` (``fn(p, k,
    v)`` its function, ``lays`` its layers); returns its output."""
    h, jvp, vjp = _linearize(lambda v: fn(p, k, v), h_in)
    jac = None
    if h_in.ndim == 1 and _closed_form(*lays):

        def jac(lays=lays, p=p, h_in=h_in):
            j, _ = _serial_jacobian(
                lays, p, h_in, train=train, key=None, chunk_size=None
            )
            return _to_full(j)

    segs.append(Block(jvp, vjp, h_in.shape, h.shape, jac, h_in))
    return h


def _repeat_segments(segs, part, h, g0, stop_at, train):
    """Appends a repeat layer's n blocks (global indices g0..g0+n-1) as Runs over
    slices of its stacked params (never restacked) and single Blocks where a run must
    stop (:func:`segments`' ``cut``, ``bounds``, the last block); returns the output."""
    (layer,), (params,), (key,) = part
    block = layer.info.block
    n = layer.info.repeats
    keys = None if key is None else jax.random.split(key, n)

    def fn(p, k, v):
        return block.apply(p, v, train=train, key=k)

    def take(a, b):
        ps = jax.tree.map(lambda v: v[a:b], params)
        return ps, None if keys is None else keys[a:b]

    a = 0
    while a < n:
        stop = min(stop_at(g0 + a) - g0, n)
        if stop - a >= MIN_RUN:
            ps, ks = take(a, stop)
            h = _scan_run(segs, fn, ps, ks, h)
            a = stop
            continue
        p = jax.tree.map(lambda v, a=a: v[a], params)
        k = None if keys is None else keys[a]
        h = _single(segs, (block,), (p,), (k,), h, _one_block(block, train), train)
        a += 1
    return h


def _one_block(block, train):
    """A repeat layer's block as a single Block's ``fn(p, k, v)`` (one-entry tuples)."""

    def fn(p, k, v):
        return block.apply(p[0], v, train=train, key=k[0])

    return fn


def forward_bad(segs, y) -> jax.Array:
    """``(L+1,)`` bool: block output ``h_k`` holds a NaN or inf (k = 0 is the input x,
    k = L the output ``y``), read off the trajectory :func:`segments` stored."""
    parts = []
    for seg in segs:
        hs = seg.hs if isinstance(seg, Run) else seg.h_in[None]
        parts.append(~jnp.all(jnp.isfinite(hs.reshape(hs.shape[0], -1)), axis=1))
    return jnp.concatenate(parts + [~jnp.all(jnp.isfinite(y))[None]])


def split_at(segs, index):
    """(segments before block ``index``, segments from it on); ``index`` must be a
    segment boundary (the ``cut`` of :func:`segments`)."""
    i = 0
    for s, seg in enumerate(segs):
        if i == index:
            return segs[:s], segs[s:]
        i += seg_len(seg)
    if i == index:
        return segs, []
    raise ValueError(f"block {index} is not a segment boundary")


def fold(segs, step, carry, xs=None, *, reverse=False):
    """Runs ``step(carry, block, x) -> (carry, y)`` over every block, first to last (or
    last to first with ``reverse``), a ``lax.scan`` over each :class:`Run`.

    Args:
        segs: from :func:`segments`.
        step: the per-block step; ``block`` is a :class:`Block`.
        carry: the initial carry (its shape may change between segments, not within a
            run).
        xs: per-block inputs as a list with one entry per segment, each stacked along a
            leading axis of the segment's length (as fold's own ys), or None.
        reverse: sweep from the last block to the first.

    Returns:
        (final carry, ys): ys a list with one entry per segment, each stacked along a
        leading axis of the segment's length, in block order (also when reversed).
    """
    ys = [None] * len(segs)
    order = range(len(segs) - 1, -1, -1) if reverse else range(len(segs))
    for s in order:
        seg = segs[s]
        x = None if xs is None else xs[s]
        if isinstance(seg, Run):

            def body(c, inp, seg=seg):
                p, k, h, res, xi = inp
                return step(c, _run_block(seg, p, k, h, res), xi)

            res = None if seg.lin is None else seg.lin[2]
            carry, ys[s] = jax.lax.scan(
                body, carry, (seg.ps, seg.ks, seg.hs, res, x), reverse=reverse
            )
        else:
            carry, y = step(carry, seg, None if x is None else jax.tree.map(_first, x))
            ys[s] = jax.tree.map(_lead, y)
    return carry, ys


def _first(a):
    return a[0]


def _lead(a):
    return a[None]


def unchunk(ys):
    """fold's ys as one array (pytree) stacked over all blocks, leading axis L; the
    per-block entries must have equal shapes."""
    return jax.tree.map(lambda *a: jnp.concatenate(a), *ys)


def per_block(ys):
    """fold's ys as a list with one entry per block."""
    out = []
    for y in ys:
        leaves = jax.tree.leaves(y)
        r = leaves[0].shape[0] if leaves else 0
        out.extend(jax.tree.map(lambda a, i=i: a[i], y) for i in range(r))
    return out
