"""Dense (fully connected) and maxout layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad import init as _init
from jgrad.nn._layer import Layer, LayerInfo, check_in_shape, lead, plain_layer

__all__ = ["dense", "maxout", "weight_init"]


def weight_init(
    arg: str, value: str | _init.Initializer | None, weight_var: float | None
) -> _init.Initializer:
    """The weight initializer ``value`` stands for, wherever one is passed: a layer's
    ``w_init`` or a builder's ``init`` (``arg`` names it in errors).

    ``value`` is a ``jgrad.init`` name, an initializer ``(key, shape, dtype) -> Array``, or
    None for ``"gaussian"``; ``weight_var`` scales ``"gaussian"`` (variance
    ``weight_var / fan_in``, default 1), ``"orthogonal"`` and ``"identity"`` (gain
    ``sqrt(weight_var)``) and must be None for the other names.
    """
    if value is None:
        value = "gaussian"
    if not callable(value):
        _checks.choice(arg, value, _init.NAMES)
    return _init.get(value, weight_var=weight_var)


def dense(
    out_dim: int,
    *,
    weight_var: float | None = None,
    bias_var: float = 0.0,
    w_init: str | _init.Initializer | None = None,
) -> Layer:
    """Affine layer ``y = x @ w + b`` on the last axis.

    Args:
        out_dim: output features.
        weight_var: the mean-field sigma_w^2: weights ``N(0, weight_var / fan_in)`` when
            ``w_init`` is None (default 1.0), or the scale of a named ``w_init`` that takes one
            (``"gaussian"``, ``"orthogonal"``, ``"identity"``: see ``jgrad.init.get``).
        bias_var: the mean-field sigma_b^2: biases ``N(0, bias_var)``, zeros when 0.
        w_init: the weight initializer: a ``jgrad.init`` name or an initializer
            ``(key, shape, dtype) -> Array``; None is ``"gaussian"``. The same kind of value
            as the builders' ``init`` (``jgrad.nn.mlp(init=...)`` passes it here).

    Returns:
        A Layer with params ``{"w": (in_dim, out_dim), "b": (out_dim,)}``. ``apply`` takes
        ``x`` of shape ``(..., in_dim)``.

    Raises:
        ValueError: non-positive ``out_dim``, negative variances, unknown ``w_init``, or (at
            apply) an input whose last axis is not ``in_dim``.

    Examples:
        >>> import jax, jgrad
        >>> _, p = jgrad.nn.dense(4, weight_var=2.0).init(jax.random.key(0), (3,))
        >>> p["w"].shape, p["b"].shape
        ((3, 4), (4,))
    """
    out_dim = _checks.positive_int("out_dim", out_dim)
    w_fn = weight_init("w_init", w_init, weight_var)
    b_fn = _init.gaussian_bias(bias_var)

    def init(key, in_shape):
        check_in_shape(in_shape, 1, "dense")
        kw, kb = jax.random.split(key)
        return in_shape[:-1] + (out_dim,), {
            "w": w_fn(kw, (in_shape[-1], out_dim)),
            "b": b_fn(kb, (out_dim,)),
        }

    def fn(params, x):
        _checks.feature_size("x", jnp.shape(x), params["w"].shape[0], layer="dense")
        y = x @ params["w"]
        return y + lead(params["b"], y.ndim)

    # kind "dense": the analyzers use the closed-form Jacobian w^T
    return plain_layer(
        init, fn, LayerInfo(kind="dense", in_rank=1), ("w", "b"), "dense"
    )


def maxout(
    out_dim: int,
    num_pieces: int = 2,
    *,
    weight_var: float | None = None,
    bias_var: float = 0.0,
    w_init: str | _init.Initializer | None = None,
) -> Layer:
    """Maxout unit: the maximum of ``num_pieces`` affine maps, ``y_j = max_k (x @ w_k + b_k)_j``.

    Each piece is initialised like :func:`dense` (fans of one ``(in_dim, out_dim)`` piece).

    Args:
        out_dim: output features.
        num_pieces: k, the number of linear pieces (>= 1; k = 1 is a dense layer).
        weight_var, bias_var, w_init: as :func:`dense`, per piece.

    Returns:
        A Layer with params ``{"w": (k, in_dim, out_dim), "b": (k, out_dim)}``.

    References:
        Goodfellow, Warde-Farley, Mirza, Courville & Bengio, "Maxout Networks", ICML 2013,
        arXiv:1302.4389.
    """
    out_dim = _checks.positive_int("out_dim", out_dim)
    num_pieces = _checks.positive_int("num_pieces", num_pieces)
    w_fn = weight_init("w_init", w_init, weight_var)
    b_fn = _init.gaussian_bias(bias_var)

    def init(key, in_shape):
        check_in_shape(in_shape, 1, "maxout")
        kw, kb = jax.random.split(key)
        w = jax.vmap(lambda k: w_fn(k, (in_shape[-1], out_dim)))(
            jax.random.split(kw, num_pieces)
        )
        return in_shape[:-1] + (out_dim,), {
            "w": w,
            "b": b_fn(kb, (num_pieces, out_dim)),
        }

    def fn(params, x):
        _checks.feature_size("x", jnp.shape(x), params["w"].shape[1], layer="maxout")
        z = jnp.einsum("...i,kio->...ko", x, params["w"])
        z = z + lead(params["b"], z.ndim)
        return jnp.max(z, axis=-2)

    return plain_layer(init, fn, LayerInfo(in_rank=1), ("w", "b"), "maxout")
