"""The four Gaussian kernels of an activation that the mean-field maps need.

For pre-activations with variance q (and a second one correlated c):
``v(q) = E[phi(u)^2]``, ``dv(q) = E[phi'(u)^2]``, ``k(q, c) = E[phi(u1) phi(u2)]`` and
``kd(q, c) = E[phi'(u1) phi'(u2)]``. Closed forms for ReLU, leaky ReLU and the identity
(positively homogeneous: ``v = p q`` and ``dv = p'``) and for erf (Williams 1997);
Gauss-Hermite quadrature for every other activation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

from jgrad.nn import Activation, activation
from jgrad.theory._gauss import expectation, pair_expectation

__all__ = ["Kernels", "kernels", "resolve"]


class Kernels(NamedTuple):
    """An activation's Gaussian kernels (see the module docstring).

    Attributes:
        name: the activation's name.
        v, dv, k, kd: the kernels, scalar functions of (q) and (q, c).
        slope: ``E[phi^2] / q`` for a positively homogeneous activation (ReLU 1/2, leaky
            ReLU (1 + a^2)/2, identity 1; then also ``E[phi'^2]``), else None.
        closed: the kernels are closed forms (no quadrature).
    """

    name: str
    v: Callable
    dv: Callable
    k: Callable
    kd: Callable
    slope: float | None
    closed: bool


def _relu_k(q, c):
    c = jnp.clip(c, -1.0, 1.0)
    return q / (2 * math.pi) * (jnp.sqrt(1 - c * c) + (math.pi - jnp.arccos(c)) * c)


def _relu_kd(q, c):
    c = jnp.clip(c, -1.0, 1.0)
    return (math.pi - jnp.arccos(c)) / (2 * math.pi) + 0 * q


def _homogeneous(name: str, a: float) -> Kernels:
    """phi = a x + (1 - a) relu(x): identity (a = 1), ReLU (a = 0), leaky ReLU."""
    p = (1 + a * a) / 2

    def k(q, c):
        return a * q * c + (1 - a) ** 2 * _relu_k(q, c)

    def kd(q, c):
        return a + (1 - a) ** 2 * _relu_kd(q, c)

    return Kernels(name, lambda q: p * q, lambda q: p + 0 * q, k, kd, p, True)


def _erf() -> Kernels:
    def v(q):
        return (2 / math.pi) * jnp.arcsin(2 * q / (1 + 2 * q))

    def dv(q):
        return (4 / math.pi) / jnp.sqrt(1 + 4 * q)

    def k(q, c):
        return (2 / math.pi) * jnp.arcsin(2 * q * c / (1 + 2 * q))

    def kd(q, c):
        return (4 / math.pi) / jnp.sqrt((1 + 2 * q) ** 2 - (2 * q * c) ** 2)

    return Kernels("erf", v, dv, k, kd, None, True)


def _quadrature(act: Activation, degree: int | None) -> Kernels:
    f, d = act.fn, act.deriv

    def v(q):
        return expectation(lambda u: f(u) ** 2, q, degree=degree)

    def dv(q):
        return expectation(lambda u: d(u) ** 2, q, degree=degree)

    def k(q, c):
        return pair_expectation(f, f, q, c, degree=degree)

    def kd(q, c):
        return pair_expectation(d, d, q, c, degree=degree)

    return Kernels(act.name, v, dv, k, kd, None, False)


def resolve(act) -> Activation:
    """An activation name or ``jgrad.nn.Activation`` as an Activation (ValueError,
    listing the valid names, for an unknown one)."""
    return activation(act)


@functools.lru_cache(maxsize=64)
def _cached(name: str, params: tuple, fn_id: int, degree: int | None, quadrature: bool):
    act = activation(name, **dict(params)) if fn_id == 0 else _CUSTOM[fn_id]
    if not quadrature:
        if name in ("identity", "linear"):
            return _homogeneous(name, 1.0)
        if name == "relu":
            return _homogeneous(name, 0.0)
        if name == "leaky_relu":
            return _homogeneous(name, float(act.params["negative_slope"]))
        if name == "erf":
            return _erf()
    return _quadrature(act, degree)


_CUSTOM: dict[int, Activation] = {}


def kernels(act, *, degree: int | None = None, quadrature: bool = False) -> Kernels:
    """The :class:`Kernels` of an activation (a name or ``jgrad.nn.Activation``); closed
    forms where they exist unless ``quadrature=True``; ``degree`` nodes per dimension
    (None: by the dtype, ``jgrad.theory.default_degree``)."""
    act = resolve(act)
    builtin = _same_builtin(act)
    fn_id = 0 if builtin else id(act.fn)
    if not builtin:
        _CUSTOM[fn_id] = act
    return _cached(
        act.name, tuple(sorted(act.params.items())), fn_id, degree, quadrature
    )


def _same_builtin(act: Activation) -> bool:
    """``act`` is one of jgrad's own activations (rebuilt ones are new objects)."""
    try:
        ref = activation(act.name, **act.params)
    except ValueError:
        return False
    return act.fn.__qualname__ == ref.fn.__qualname__ and (
        act.fn.__module__ == ref.fn.__module__
    )
