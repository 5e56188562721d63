"""Dropout and residual connections."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jgrad import _checks
from jgrad import init as _init
from jgrad.nn._layer import (
    Layer,
    LayerInfo,
    check_apply,
    check_info,
    check_init,
    check_params,
)

__all__ = ["dropout", "residual"]


def dropout(drop_prob: float) -> Layer:
    """Inverted dropout: in train mode zero each unit with probability ``drop_prob`` and scale
    the survivors by ``1 / (1 - drop_prob)``, so the mean is preserved; identity in eval mode.

    Args:
        drop_prob: probability of DROPPING a unit, in [0, 1).

    Returns:
        A Layer with params ``{}``. ``apply(params, x, train=True, key=key)`` needs a key;
        it draws the mask as ``jax.random.bernoulli(key, 1 - drop_prob, x.shape)``, exactly
        as ``flax.linen.Dropout`` given the same ``rng``.

    Raises:
        ValueError: ``drop_prob`` outside [0, 1), or train mode without a key.

    References:
        Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
        Overfitting", JMLR 2014.
    """
    drop_prob = _checks.probability(
        "drop_prob",
        drop_prob,
        "drop_prob is the probability of dropping a unit; 0 disables dropout and 1 "
        "would drop everything.",
    )
    keep = 1.0 - drop_prob

    def init(key, in_shape):
        return check_init(key, in_shape), {}

    def apply(params, x, *, train=False, key=None, return_state=False):
        check_apply(x, train, key, return_state)
        if train and drop_prob > 0.0:
            if key is None:
                _checks._fail(
                    "key",
                    "a JAX PRNG key for dropout in train mode",
                    None,
                    "Pass apply(params, x, train=True, key=jax.random.key(seed)), or "
                    "train=False for evaluation.",
                )
            mask = jax.random.bernoulli(key, keep, jnp.shape(x))
            x = lax.select(mask, x / keep, jnp.zeros_like(x))
        return (x, params) if return_state else x

    return Layer(init, apply)


def residual(block: Layer, scale: float = 1.0) -> Layer:
    """Residual connection ``y = shortcut(x) + scale * block(x)``.

    The shortcut is the identity when the block keeps the shape, else a bias-free linear
    projection on the last axis (``{"w": (in, out)}``, LeCun-normal), as in He et al.'s
    projection shortcuts.

    Args:
        block: the residual branch (any Layer, e.g. ``serial(layer_norm(), elementwise("relu"),
            dense(n))`` for a pre-activation block).
        scale: multiplier of the branch (e.g. ``1/sqrt(depth)`` to tame deep stacks).

    Returns:
        A Layer with params ``{"block": block_params}`` plus ``"proj"`` when projecting, of
        kind ``"residual"`` (``info.block``, ``info.scale``): the analyzers take its
        Jacobian as ``shortcut + scale * J_block`` with ``J_block`` in closed form where
        the block has one.

    References:
        He, Zhang, Ren & Sun, "Deep Residual Learning", CVPR 2016, arXiv:1512.03385;
        "Identity Mappings in Deep Residual Networks", ECCV 2016, arXiv:1603.05027.
    """
    if not isinstance(block, Layer):
        raise ValueError(
            f"`block` must be a jgrad.nn.Layer, got {type(block).__name__}. "
            "Wrap layers with jgrad.nn.serial(...)."
        )
    check_info(block, "block")
    scale = _checks.real("scale", scale)
    proj_init = _init.lecun_normal()

    def init(key, in_shape):
        in_shape = check_init(key, in_shape)
        kb, kp = jax.random.split(key)
        out_shape, bp = block.init(kb, in_shape)
        params = {"block": bp}
        if tuple(out_shape) != in_shape:
            if tuple(out_shape[:-1]) != in_shape[:-1]:
                _checks._fail(
                    "block",
                    "a layer that keeps every axis but the last, for a residual shortcut",
                    f"in {in_shape} -> out {tuple(out_shape)}",
                    "Pool or reshape outside the residual block.",
                )
            params["proj"] = {"w": proj_init(kp, (in_shape[-1], out_shape[-1]))}
        return tuple(out_shape), params

    def apply(params, x, *, train=False, key=None, return_state=False):
        check_apply(x, train, key, return_state)
        check_params(params, ("block",), "residual")
        out = block.apply(
            params["block"], x, train=train, key=key, return_state=return_state
        )
        y, bp = out if return_state else (out, None)
        shortcut = x @ params["proj"]["w"] if "proj" in params else x
        y = shortcut + scale * y
        if not return_state:
            return y
        new = dict(params)
        new["block"] = bp
        return y, new

    return Layer(init, apply, LayerInfo(kind="residual", block=block, scale=scale))
