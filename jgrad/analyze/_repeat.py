"""Analyzer kernels for a ``jgrad.nn.repeat`` layer: one ``lax.scan`` over its blocks.

A repeat layer holds n blocks of the same code with their params stacked along a leading
axis (``jgrad.nn.repeat``, ``jgrad.nn.mlp(..., stacked=True)``). Every kernel here takes
``(block, params, x)`` (the repeat layer's ``info.block``, its stacked params and its
input, ONE example) and scans over the n blocks, so the compiled program is one block's
code whatever n is, and the params are never restacked:

- :func:`forward_trajectory`: every block output h_1..h_n (a :class:`Trajectory`);
- :func:`grad_norms`: log10 ||dL/dh_k|| at every block input and log10 ||dL/dtheta_k||
  for every parameter leaf, from a cotangent at the output, rescaled after every block
  exactly as ``layer_grad_norms`` (a :class:`RepeatGrads`);
- :func:`block_jacobians`: every block's Jacobian d h_k / d h_(k-1), ``(n, N, N)``
  (closed form for dense and elementwise layers, autodiff otherwise), vmapped;
- :func:`pull_rows`: rows of a product ``d y / d h_n`` pulled back to ``d y / d h_0``
  through every block's VJP, rescaled in log space (a :class:`~jgrad.analyze.LogMatrix`),
  so an input-output spectrum needs one SVD at the end.

Index convention: h_0 = x is the repeat layer's input and h_k the output of block k
(k = 1..n). A ``key`` is the repeat layer's own: it is split into n subkeys, block k
drawing with subkey k, as the layer's ``apply`` does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jgrad.analyze._jacobians import _layer_jacobian, _to_full
from jgrad.analyze._logspace import LogMatrix, normalize, safe_div, vec_norm
from jgrad.analyze._nonfinite import all_finite
from jgrad.analyze._precision import full_precision
from jgrad.nn._layer import Layer

__all__ = [
    "RepeatGrads",
    "Trajectory",
    "block_inputs",
    "block_jacobians",
    "forward_trajectory",
    "grad_norms",
    "pull_rows",
]


class Trajectory(NamedTuple):
    """The forward pass through the n blocks of a repeat layer.

    Attributes:
        hs: ``(n, *x.shape)``, the output h_k of every block (``hs[-1]`` the layer's).
        finite: ``(n,)`` bool, every entry of h_k is finite.
    """

    hs: jax.Array
    finite: jax.Array


class RepeatGrads(NamedTuple):
    """Gradient norms through the n blocks of a repeat layer, from one backward scan.

    Attributes:
        log10_norm: ``(n,)``, log10 ||dL/dh_k|| at every block's input, k = 0..n-1
            (entry 0 at the layer's input x); ``-inf`` only for an exactly zero gradient,
            NaN from a non-finite value on.
        raw_norm: ``(n,)``, ||dL/dh_k|| of the plain backward pass (the cotangent never
            rescaled), 0 where it underflowed.
        raw_zero: ``(n,)`` bool, every entry of the plain dL/dh_k is exactly zero.
        param_log10_norm: the block's params tree, each leaf ``(n,)``: log10
            ||dL/dtheta_k|| of that leaf of block k (k = 1..n, block order).
        cotangent: dL/dx divided by its norm (zeros when the gradient is zero).
        raw_cotangent: dL/dx of the plain backward pass.
    """

    log10_norm: jax.Array
    raw_norm: jax.Array
    raw_zero: jax.Array
    param_log10_norm: Any
    cotangent: jax.Array
    raw_cotangent: jax.Array


def _length(params: Any) -> int:
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(
            "`params` must hold the stacked params of a repeat layer (at least one "
            "leaf with a leading axis n), got none. Use jgrad.nn.repeat's params."
        )
    return int(jnp.shape(leaves[0])[0])


def _keys(key, n):
    return None if key is None else jax.random.split(key, n)


def _nan_unless(ok, tree):
    """``tree`` where ``ok``, else NaN everywhere: a value computed from a non-finite
    forward value is NaN, never a zero (a ReLU's VJP at NaN is 0)."""
    return jax.tree.map(lambda v: jnp.where(ok, v, jnp.nan), tree)


def block_inputs(x: jax.Array, hs: jax.Array) -> jax.Array:
    """``(n, *x.shape)``, the input of every block: x, h_1, ..., h_(n-1)."""
    return jnp.concatenate([jnp.asarray(x)[None], hs[:-1]])


@full_precision
def forward_trajectory(
    block: Layer, params: Any, x: jax.Array, *, train: bool = False, key=None
) -> Trajectory:
    """Every block output of a repeat layer, by one ``lax.scan``.

    Args:
        block: the repeat layer's block (``info.block``).
        params: its stacked params (leading axis n).
        x: the layer's input, one example.
        train, key: as the layer's ``apply`` (``key`` split into n subkeys).

    Returns:
        A :class:`Trajectory`.
    """
    n = _length(params)

    def body(h, xs):
        p, k = xs
        h = block.apply(p, h, train=train, key=k)
        return h, (h, jnp.all(jnp.isfinite(h)))

    _, (hs, finite) = jax.lax.scan(
        body, jnp.asarray(x), (params, _keys(key, n)), length=n
    )
    return Trajectory(hs, finite)


def _norm(v):
    return vec_norm(jnp.ravel(v))  # max-scaled: squaring tiny entries cannot underflow


@full_precision
def grad_norms(
    block: Layer,
    params: Any,
    x: jax.Array,
    cotangent: jax.Array,
    *,
    log10_scale: jax.Array | float = 0.0,
    raw_cotangent: jax.Array | None = None,
    hs: jax.Array | None = None,
    train: bool = False,
    key=None,
) -> RepeatGrads:
    """Gradient norms at every block input of a repeat layer, in log space, by one
    backward ``lax.scan``.

    The gradient at the layer's output is ``dL/dh_n = 10**log10_scale * cotangent``.
    After every block the cotangent is divided by its norm and the log10 of that norm
    added to the scale, which is exact because each vector-Jacobian product is linear in
    the cotangent (as ``layer_grad_norms``); a parameter leaf's gradient norm is the
    scale times the norm of the VJP of the unit cotangent.

    Args:
        block, params, x, train, key: as :func:`forward_trajectory`.
        cotangent: dL/dh_n up to the factor ``10**log10_scale``, shaped like x.
        log10_scale: see above (0: ``cotangent`` is the gradient itself).
        raw_cotangent: the plain backward pass's dL/dh_n, carried without rescaling
            (for ``raw_norm``); None: ``cotangent * 10**log10_scale``.
        hs: the block outputs (:class:`Trajectory`'s ``hs``); None computes them.

    Returns:
        A :class:`RepeatGrads`; from a block whose input or output is not finite on,
        ``log10_norm`` and ``param_log10_norm`` are NaN.
    """
    n = _length(params)
    x = jnp.asarray(x)
    if hs is None:
        hs = forward_trajectory(block, params, x, train=train, key=key).hs
    g = jnp.asarray(cotangent)
    scale = jnp.asarray(log10_scale, g.dtype)
    if raw_cotangent is None:
        raw_cotangent = g * jnp.power(jnp.asarray(10.0, g.dtype), scale)
    nrm = _norm(g)
    scale = scale + jnp.log10(nrm)
    g = jnp.where(nrm > 0, safe_div(g, nrm), g)

    def body(carry, xs):
        g, raw, scale = carry
        p, k, h, h_out = xs
        _, f = jax.vjp(lambda v, q: block.apply(q, v, train=train, key=k), h, p)
        g, gp = _nan_unless(all_finite((h, h_out)), f(g))
        raw, _ = f(raw)
        # dL/dtheta_k = ||dL/dh_k|| * vjp_theta(unit cotangent): log10 adds.
        plog = jax.tree.map(lambda v: scale + jnp.log10(_norm(v)), gp)
        nrm = _norm(g)
        scale = scale + jnp.log10(nrm)
        g = jnp.where(nrm > 0, safe_div(g, nrm), g)
        out = (scale, _norm(raw), jnp.all(raw == 0), plog)
        return (g, raw, scale), out

    (g, raw, _), (logs, raws, zeros, plogs) = jax.lax.scan(
        body,
        (g, raw_cotangent, scale),
        (params, _keys(key, n), block_inputs(x, hs), hs),
        reverse=True,
    )
    return RepeatGrads(logs, raws, zeros, plogs, g, raw)


@full_precision
def block_jacobians(
    block: Layer,
    params: Any,
    x: jax.Array,
    *,
    hs: jax.Array | None = None,
    train: bool = False,
    key=None,
) -> jax.Array:
    """Every block's Jacobian ``J_k = d h_k / d h_(k-1)`` of a repeat layer, stacked.

    Vmapped over the blocks (mapped in sequence with a ``key``): closed forms where
    ``layer_jacobians`` has them (a dense layer's ``w^T``, an activation's
    ``diag(phi'(a))``, fused to a row scaling; residual blocks), an exact autodiff Jacobian
    otherwise.

    Args:
        block, params, x, train, key: as :func:`forward_trajectory`.
        hs: the block outputs (:class:`Trajectory`'s ``hs``); None computes them.

    Returns:
        ``(n, N, N)`` with N = x.size (inputs and outputs flattened, row-major).
    """
    n = _length(params)
    x = jnp.asarray(x)
    if hs is None:
        hs = forward_trajectory(block, params, x, train=train, key=key).hs

    def one(p, k, h):
        j, _ = _layer_jacobian(block, p, h, train=train, key=k, chunk_size=None)
        return _to_full(j).reshape(x.size, x.size)

    keys = _keys(key, n)
    if keys is None:
        return jax.vmap(lambda p, h: one(p, None, h))(params, block_inputs(x, hs))
    # with keys, a sequential map: the "rbg" PRNGs draw other bits under vmap than
    # unbatched, and the masks must be those of the layer's scanned apply
    return jax.lax.map(lambda a: one(*a), (params, keys, block_inputs(x, hs)))


@full_precision
def pull_rows(
    block: Layer,
    params: Any,
    x: jax.Array,
    rows: jax.Array,
    *,
    log_scale: jax.Array | float = 0.0,
    hs: jax.Array | None = None,
    train: bool = False,
    key=None,
) -> LogMatrix:
    """A product ``d y / d h_n`` pulled back through every block to ``d y / d h_0``,
    rescaled in log space, by one backward ``lax.scan``.

    Each step applies one block's VJP to every row (vmapped: a dense block is one matrix
    product for all rows) and divides the rows by their Frobenius norm, adding its
    natural log to the scale, so the product neither under- nor overflows at any depth;
    its top singular values are exact, those below ``sigma_max * eps`` are lost (the
    rescaled method of ``log_singular_values``). With ``rows`` the identity this is
    ``d h_n / d h_0``; ``jnp.log(svdvals(m.matrix)) + m.log_scale`` is its spectrum.

    Args:
        block, params, x, train, key: as :func:`forward_trajectory`.
        rows: ``(R, N)``, the product at the output, ``exp(log_scale) * rows``, with
            N = x.size (a block's output flattened).
        log_scale: natural log of the scale of ``rows``.
        hs: the block outputs (:class:`Trajectory`'s ``hs``); None computes them.

    Returns:
        A :class:`~jgrad.analyze.LogMatrix` ``(R, N)``: unit Frobenius norm (or zero for
        an exactly zero product, log scale ``-inf``); NaN from a non-finite value on.
    """
    n = _length(params)
    x = jnp.asarray(x)
    if hs is None:
        hs = forward_trajectory(block, params, x, train=train, key=key).hs
    m, s = normalize(jnp.asarray(rows), jnp.asarray(log_scale, x.dtype))

    def body(carry, xs):
        m, s = carry
        p, k, h, h_out = xs
        _, f = jax.vjp(lambda v: block.apply(p, v, train=train, key=k), h)
        m = jax.vmap(lambda r: f(r.reshape(h.shape))[0].ravel())(m)
        return normalize(*_nan_unless(all_finite((h, h_out)), (m, s))), None

    xs = (params, _keys(key, n), block_inputs(x, hs), hs)
    (m, s), _ = jax.lax.scan(body, (m, s), xs, reverse=True)
    return LogMatrix(m, s)
