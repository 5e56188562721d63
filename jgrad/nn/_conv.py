"""2-D convolution (NHWC), average pooling, global average pooling and flatten.

One example is ``(H, W, C)``; these layers also accept a leading batch axis ``(B, H, W, C)``
so that networks with batch norm in train mode can be applied to a whole batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jgrad import _checks
from jgrad import init as _init
from jgrad.nn._dense import weight_init
from jgrad.nn._layer import Layer, LayerInfo, lead, plain_layer

__all__ = ["conv2d", "avg_pool", "global_avg_pool", "flatten"]

_IMAGE_FIX = "Pass one example as (H, W, C), or a batch as (B, H, W, C)."


def _pair(name, v):
    fix = f"Pass e.g. {name}=3 or {name}=(3, 3)."
    if _checks._as_int(v) is not None:
        return (_checks.positive_int(name, v, fix),) * 2
    try:
        pair = tuple(v)
    except TypeError:
        pair = ()
    if len(pair) != 2 or isinstance(v, str):
        _checks._fail(name, "a positive int or a pair of positive ints", v, fix)
    return tuple(_checks.positive_int(name, d, fix) for d in pair)


def _as_batch(x, name):
    _checks.rank(name, jnp.shape(x), (3, 4), _IMAGE_FIX)
    return (x[None], True) if x.ndim == 3 else (x, False)


def _check_image_shape(in_shape, layer):
    if len(in_shape) != 3:
        _checks._fail(
            "in_shape",
            f"(H, W, C) for {layer}",
            tuple(in_shape),
            "Give the shape of one image, without the batch axis.",
        )


def conv2d(
    out_channels: int,
    kernel_size: int | tuple[int, int] = 3,
    *,
    stride: int | tuple[int, int] = 1,
    padding: str = "SAME",
    weight_var: float | None = None,
    bias_var: float = 0.0,
    w_init: str | _init.Initializer | None = None,
) -> Layer:
    """2-D convolution on NHWC images with an HWIO kernel.

    Args:
        out_channels: output channels.
        kernel_size: window (kh, kw) or one int.
        stride: (sh, sw) or one int.
        padding: ``"SAME"`` or ``"VALID"``.
        weight_var, bias_var, w_init: as :func:`jgrad.nn.dense`; fan-in is
            ``kh * kw * in_channels``.

    Returns:
        A Layer with params ``{"w": (kh, kw, C_in, C_out), "b": (C_out,)}``.
    """
    out_channels = _checks.positive_int("out_channels", out_channels)
    ks, st = _pair("kernel_size", kernel_size), _pair("stride", stride)
    _checks.choice("padding", padding, ("SAME", "VALID"))
    w_fn = weight_init("w_init", w_init, weight_var)
    b_fn = _init.gaussian_bias(bias_var)

    def out_hw(h, w):
        if padding == "SAME":
            return math.ceil(h / st[0]), math.ceil(w / st[1])
        return (h - ks[0]) // st[0] + 1, (w - ks[1]) // st[1] + 1

    def init(key, in_shape):
        _check_image_shape(in_shape, "conv2d")
        h, w = out_hw(in_shape[0], in_shape[1])
        if h < 1 or w < 1:
            _checks._fail(
                "in_shape",
                f"an image of at least kernel_size {ks} in (H, W) with padding 'VALID'",
                tuple(in_shape),
                "Use padding='SAME' or a smaller kernel.",
            )
        kw, kb = jax.random.split(key)
        params = {
            "w": w_fn(kw, ks + (in_shape[2], out_channels)),
            "b": b_fn(kb, (out_channels,)),
        }
        return (h, w, out_channels), params

    def fn(params, x):
        xb, single = _as_batch(x, "x")
        _checks.feature_size("x", xb.shape, params["w"].shape[2], layer="conv2d")
        y = lax.conv_general_dilated(
            xb, params["w"], st, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        y = y + lead(params["b"], y.ndim)
        return y[0] if single else y

    return plain_layer(init, fn, LayerInfo(in_rank=3), ("w", "b"), "conv2d")


def avg_pool(
    window: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None
):
    """Average pooling over (H, W) with ``VALID`` padding (params ``{}``).

    Args:
        window: pooling window (ph, pw) or one int.
        stride: defaults to ``window`` (non-overlapping).
    """
    win = _pair("window", window)
    st = win if stride is None else _pair("stride", stride)

    def init(key, in_shape):
        _check_image_shape(in_shape, "avg_pool")
        h, w = (in_shape[0] - win[0]) // st[0] + 1, (in_shape[1] - win[1]) // st[1] + 1
        if h < 1 or w < 1:
            _checks._fail(
                "window",
                f"at most the image size {tuple(in_shape[:2])} in (H, W)",
                win,
                "Use a smaller window, or pool a larger image.",
            )
        return (h, w, in_shape[2]), {}

    def fn(params, x):
        xb, single = _as_batch(x, "x")
        y = lax.reduce_window(
            xb, 0.0, lax.add, (1,) + win + (1,), (1,) + st + (1,), "VALID"
        )
        y = y / (win[0] * win[1])
        return y[0] if single else y

    return plain_layer(init, fn, LayerInfo(in_rank=3))


def global_avg_pool() -> Layer:
    """Mean over the spatial axes: ``(H, W, C) -> (C,)`` (params ``{}``)."""

    def init(key, in_shape):
        _check_image_shape(in_shape, "global_avg_pool")
        return (in_shape[2],), {}

    def fn(params, x):
        _checks.rank("x", jnp.shape(x), (3, 4), _IMAGE_FIX)
        return jnp.mean(x, axis=(-3, -2))

    return plain_layer(init, fn, LayerInfo(in_rank=3))


def flatten() -> Layer:
    """Flattens one image to a vector: ``(H, W, C) -> (H*W*C,)`` (params ``{}``); ``init``
    requires an image shape, so that apply can tell one image from a batch.

    A rank-4 input is read as a batch ``(B, H, W, C) -> (B, H*W*C)``, like the conv layers.
    """

    def init(key, in_shape):
        _check_image_shape(in_shape, "flatten")
        return (math.prod(in_shape),), {}

    def fn(params, x):
        return jnp.reshape(x, (x.shape[0], -1) if x.ndim == 4 else (-1,))

    return plain_layer(init, fn)
