"""Elementwise activations with closed-form derivatives and their bound gamma = sup |phi'|.

``gamma`` is what the Pascanu, Mikolov & Bengio (2013) vanishing/exploding conditions for a
recurrent net ``h_t = phi(W h_{t-1} + ...)`` use: ``gamma * ||W||_2 < 1`` is sufficient for
vanishing gradients. Values are exact (closed form) except GELU-tanh and SiLU, whose maxima
are located numerically at import to within 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np

from jgrad import _checks
from jgrad.nn._layer import Layer, LayerInfo, plain_layer

__all__ = ["Activation", "activation", "elementwise", "prelu", "ACTIVATIONS"]


class Activation(NamedTuple):
    """An elementwise nonlinearity.

    Attributes:
        name: its name, e.g. ``"tanh"`` or ``"leaky_relu"``.
        fn: ``phi``, applied elementwise to an array of any shape.
        deriv: ``phi'``, closed form. At a kink it takes the left derivative (ReLU 0, ELU
            alpha, SELU lambda*alpha at 0; hard_tanh 0 at +-1), except ``leaky_relu`` whose
            slope at 0 is 1 (as ``jax.grad`` of its ``fn``).
        gamma: ``sup_x |phi'(x)|`` (a supremum, possibly not attained: softplus's is 1).
        params: the hyperparameters it was built with, e.g. ``{"negative_slope": 0.01}``.
    """

    name: str
    fn: Callable[[jax.Array], jax.Array]
    deriv: Callable[[jax.Array], jax.Array]
    gamma: float
    params: dict[str, float]


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _numeric_sup(deriv: Callable[[np.ndarray], np.ndarray]) -> float:
    """sup |deriv| on [-20, 20]: a grid then ternary refinement around the best point."""
    x = np.linspace(-20.0, 20.0, 400001)
    i = int(np.argmax(np.abs(deriv(x))))
    lo, hi = x[max(i - 1, 0)], x[min(i + 1, len(x) - 1)]
    for _ in range(100):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if abs(deriv(np.array(m1))) < abs(deriv(np.array(m2))):
            lo = m1
        else:
            hi = m2
    return float(abs(deriv(np.array((lo + hi) / 2))))


def _gelu_tanh_np(x):
    t = np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * _SQRT_2_OVER_PI * (
        1 + 3 * 0.044715 * x**2
    )


def _silu_np(x):
    s = 1.0 / (1.0 + np.exp(-x))
    return s * (1 + x * (1 - s))


_GAMMA_GELU_TANH = _numeric_sup(_gelu_tanh_np)
_GAMMA_SILU = _numeric_sup(_silu_np)


def _identity():
    return Activation("identity", lambda x: x, jnp.ones_like, 1.0, {})


def _sigmoid():
    def deriv(x):
        s = jax.nn.sigmoid(x)
        return s * (1 - s)

    return Activation("sigmoid", jax.nn.sigmoid, deriv, 0.25, {})


def _tanh():
    return Activation("tanh", jnp.tanh, lambda x: 1 - jnp.tanh(x) ** 2, 1.0, {})


def _hard_tanh():
    def deriv(x):
        return jnp.where(jnp.abs(x) < 1, 1.0, 0.0).astype(x.dtype)

    return Activation("hard_tanh", lambda x: jnp.clip(x, -1.0, 1.0), deriv, 1.0, {})


def _relu():
    return Activation("relu", jax.nn.relu, lambda x: (x > 0).astype(x.dtype), 1.0, {})


def _leaky_relu(negative_slope=0.01):
    a = _checks.real("negative_slope", negative_slope)

    def fn(x):
        return jnp.where(x >= 0, x, a * x)

    def deriv(x):
        return jnp.where(x >= 0, 1.0, a).astype(x.dtype)

    return Activation("leaky_relu", fn, deriv, max(1.0, abs(a)), {"negative_slope": a})


def _elu(alpha=1.0):
    a = _checks.non_negative("alpha", alpha)

    def fn(x):
        return jnp.where(x > 0, x, a * jnp.expm1(jnp.minimum(x, 0.0)))

    def deriv(x):
        return jnp.where(x > 0, 1.0, a * jnp.exp(jnp.minimum(x, 0.0))).astype(x.dtype)

    return Activation("elu", fn, deriv, max(1.0, a), {"alpha": a})


def _selu():
    lam, a = _SELU_SCALE, _SELU_ALPHA

    def fn(x):
        return lam * jnp.where(x > 0, x, a * jnp.expm1(jnp.minimum(x, 0.0)))

    def deriv(x):
        return lam * jnp.where(x > 0, 1.0, a * jnp.exp(jnp.minimum(x, 0.0))).astype(
            x.dtype
        )

    # sup of lam * a * e^x as x -> 0-: lam * a = 1.7581 > lam.
    return Activation("selu", fn, deriv, lam * a, {})


def _gelu():
    def fn(x):
        return x * 0.5 * (1 + jsp.erf(x / math.sqrt(2.0)))

    def deriv(x):
        cdf = 0.5 * (1 + jsp.erf(x / math.sqrt(2.0)))
        pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return cdf + x * pdf

    # d/dx (Phi + x phi) = phi (2 - x^2) = 0 at x = sqrt(2):
    # gamma = Phi(sqrt 2) + sqrt 2 phi(sqrt 2) = (1 + erf 1) / 2 + sqrt 2 e^-1 / sqrt(2 pi).
    gamma = 0.5 * (1 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi)
    return Activation("gelu", fn, deriv, gamma, {})


def _gelu_tanh():
    def fn(x):
        return 0.5 * x * (1 + jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))

    def deriv(x):
        t = jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (
            1 + 3 * 0.044715 * x * x
        )

    return Activation("gelu_tanh", fn, deriv, _GAMMA_GELU_TANH, {})


def _softplus():
    return Activation("softplus", jax.nn.softplus, jax.nn.sigmoid, 1.0, {})


def _silu():
    def deriv(x):
        s = jax.nn.sigmoid(x)
        return s * (1 + x * (1 - s))

    return Activation("silu", jax.nn.silu, deriv, _GAMMA_SILU, {})


def _erf():
    def deriv(x):
        return (2.0 / math.sqrt(math.pi)) * jnp.exp(-x * x)

    return Activation("erf", jsp.erf, deriv, 2.0 / math.sqrt(math.pi), {})


_FACTORIES: dict[str, Callable[..., Activation]] = {
    "identity": _identity,
    "linear": _identity,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "hard_tanh": _hard_tanh,
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "selu": _selu,
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "softplus": _softplus,
    "silu": _silu,
    "swish": _silu,
    "erf": _erf,
}

#: Names :func:`activation` accepts. ``"linear"`` is ``"identity"``, ``"swish"`` is
#: ``"silu"``. ``"prelu"`` and ``"maxout"`` have parameters, so they are layers
#: (:func:`prelu`, :func:`jgrad.nn.maxout`), which :func:`jgrad.nn.mlp` also accepts by name.
ACTIVATIONS = tuple(_FACTORIES)

_HYPER = {"leaky_relu": ("negative_slope",), "elu": ("alpha",)}


def activation(name: str | Activation, **hyperparams: Any) -> Activation:
    """Looks up an activation by name.

    Args:
        name: one of :data:`ACTIVATIONS`, or an :class:`Activation` (returned unchanged).
        **hyperparams: ``negative_slope`` for ``"leaky_relu"`` (default 0.01), ``alpha`` for
            ``"elu"`` (default 1.0); no other name takes any.

    Returns:
        The :class:`Activation` with ``fn``, ``deriv`` and ``gamma``.

    Raises:
        ValueError: unknown name (the valid ones are listed) or a hyperparameter the
            activation does not take.

    Examples:
        >>> import jgrad
        >>> jgrad.nn.activation("sigmoid").gamma
        0.25
        >>> jgrad.nn.activation("leaky_relu", negative_slope=0.2).params
        {'negative_slope': 0.2}
    """
    if isinstance(name, Activation):
        if hyperparams:
            _checks._fail(
                "hyperparams",
                "empty when passing an Activation",
                sorted(hyperparams),
                "Build it with activation(name, **hyperparams).",
            )
        return name
    if name in ("prelu", "maxout"):
        _checks._fail(
            "activation",
            f"an elementwise activation, one of {list(ACTIVATIONS)}",
            name,
            f"{name!r} has parameters: use the layer jgrad.nn.{name}(...) or "
            f"jgrad.nn.mlp(activation={name!r}).",
        )
    _checks.choice("activation", name, ACTIVATIONS)
    allowed = _HYPER.get(name, ())
    unknown = sorted(set(hyperparams) - set(allowed))
    if unknown:
        _checks._fail(
            unknown[0],
            f"a hyperparameter of activation {name!r}, which takes "
            f"{list(allowed) or 'none'}",
            hyperparams[unknown[0]],
            "Remove it.",
        )
    return _FACTORIES[name](**hyperparams)


def elementwise(act: str | Activation, **hyperparams: Any) -> Layer:
    """A parameter-free Layer applying an activation elementwise (params ``{}``).

    Args:
        act: a name in :data:`ACTIVATIONS` or an :class:`Activation`.
        **hyperparams: passed to :func:`activation`.

    Returns:
        A Layer of kind ``"elementwise"`` whose ``info.activation`` is the activation, so
        the analyzers can use its closed-form derivative.
    """
    a = activation(act, **hyperparams)
    return plain_layer(
        lambda key, shape: (shape, {}),
        lambda params, x: a.fn(x),
        LayerInfo(kind="elementwise", activation=a),
    )


def prelu(init_slope: float = 0.25) -> Layer:
    """Parametric ReLU ``max(x, 0) + a min(x, 0)`` with one learnable slope ``a``.

    Params ``{"slope": ()}``, initialised to ``init_slope`` (He et al. 2015 use 0.25). Its
    bound is ``gamma = max(1, |a|)`` for the current slope.

    References:
        He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", ICCV 2015, arXiv:1502.01852.
    """
    init_slope = _checks.real("init_slope", init_slope)

    def init(key, in_shape):
        del key
        return in_shape, {"slope": jnp.asarray(init_slope, jnp.float32)}

    def fn(params, x):
        return jnp.where(x >= 0, x, params["slope"].astype(x.dtype) * x)

    return plain_layer(init, fn, LayerInfo(), ("slope",), "prelu")
