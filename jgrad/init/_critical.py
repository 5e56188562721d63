"""Critical initializers: weights at the edge of chaos, chi_1 = 1 (``jgrad.theory``).

For an activation and a bias variance, ``jgrad.theory.critical_weight_var`` gives the
weight variance at which the mean squared gradient neither grows nor shrinks from layer
to layer; these return ordinary initializers with that scale, Gaussian or orthogonal.
"""

from __future__ import annotations

import math

import jax

from jgrad import _checks
from jgrad.init._initializers import Initializer, gaussian, orthogonal

__all__ = ["critical_gaussian", "critical_orthogonal"]


def _critical_var(activation, bias_var: float = 0.0) -> float:
    """The critical weight_var of ``activation`` at ``bias_var`` as a float (computed in
    float64), or a ValueError when the activation has none in [1e-3, 100]."""
    from jgrad.theory import critical_weight_var

    bias_var = _checks.non_negative("bias_var", bias_var)
    with jax.enable_x64():
        wv = float(critical_weight_var(activation, bias_var))
    if not math.isfinite(wv):
        name = getattr(activation, "name", activation)
        _checks._fail(
            "activation",
            "an activation with a critical line (chi_1 = 1 for some weight_var in "
            f"[1e-3, 100] at bias_var={bias_var})",
            name,
            "Pick another bias_var or activation, or set weight_var yourself with "
            "jgrad.init.gaussian(weight_var).",
        )
    return wv


def critical_gaussian(activation, bias_var: float = 0.0) -> Initializer:
    """``N(0, weight_var / fan_in)`` with weight_var on the critical line of
    ``activation`` at ``bias_var`` (pair it with biases ``N(0, bias_var)``, e.g.
    ``jgrad.nn.mlp(..., init=critical_gaussian("tanh", 0.05), bias_var=0.05)``).

    Examples:
        >>> import jax, jgrad
        >>> w = jgrad.init.critical_gaussian("relu")(jax.random.key(0), (4000, 50))
        >>> round(float(w.var() * 4000), 1)  # He: weight_var 2
        2.0
    """
    return gaussian(_critical_var(activation, bias_var))


def critical_orthogonal(activation, bias_var: float = 0.0) -> Initializer:
    """A scaled orthogonal matrix, ``W^T W = weight_var I``, with weight_var on the
    critical line: the same mean-field scale as :func:`critical_gaussian`, with every
    singular value of a square layer equal (Pennington et al. 2017)."""
    return orthogonal(math.sqrt(_critical_var(activation, bias_var)))
