"""Gradient explosion in deep batch-normalized networks at initialization (Yang et al.
2019, "A Mean Field Theory of Batch Normalization", ICLR 2019, arXiv:1902.08129).

In a wide network ``x^l = phi(BN(W^l x^{l-1}))`` (batch norm over a batch of B inputs,
no affine part) the squared gradient norm grows by a fixed factor per layer, whatever
weight_var: batch norm divides the backward signal by the batch standard deviation of
``W x``, which is ``sqrt(weight_var Var[phi(z)])``, while ``W^T`` multiplies its squared
norm by ``weight_var`` and ``phi'`` by ``E[phi'(z)^2]`` (z ~ N(0, 1): batch norm's
output). For B -> infinity the factor is ``E[phi'(z)^2] / Var[phi(z)]``: 1 for the
identity, ``pi / (pi - 1) = 1.4669`` for ReLU. For the identity at finite B it is
``(B - 2) / (B - 3)``: the backward pass projects out the batch mean and the normalized
output (a factor (B - 2) / (B - 1)), and the inverse batch variance has mean
(B - 1) / (B - 3) (a chi-square with B - 1 degrees of freedom). Compare with the
measurement: ``jgrad.analyze.layer_grad_norms`` of ``jgrad.nn.mlp(..., norm="batch")``
in train mode on a batch (its backward pass is the exact batch Jacobian's).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad.theory._gauss import expectation
from jgrad.theory._kernels import kernels, resolve

__all__ = ["batch_norm_grad_growth"]


def batch_norm_grad_growth(
    activation, batch_size: int | None = None, *, degree: int | None = None
) -> float:
    """The per-layer growth factor of the squared gradient norm in a deep, wide
    batch-normalized network at initialization (see the module docstring).

    Args:
        activation: a name or ``jgrad.nn.Activation``.
        batch_size: B, or None for the large-batch limit. A finite B is supported for
            the identity (``(B - 2) / (B - 3)``, B >= 4); for other activations the
            theory has no closed form at finite B: measure it.
        degree: Gauss-Hermite nodes (even) for activations without closed forms
            (None: 256, computed in float64).

    Returns:
        The factor, a float (> 1: gradients explode toward the input).

    Raises:
        ValueError: an unknown activation, a batch size below 4, or a finite batch
            size for an activation other than the identity.

    Examples:
        >>> import jgrad
        >>> jgrad.theory.batch_norm_grad_growth("linear", 8)
        1.2
        >>> round(jgrad.theory.batch_norm_grad_growth("relu"), 6)  # pi / (pi - 1)
        1.466942
    """
    kern = kernels(activation, degree=degree)
    linear = kern.name in ("identity", "linear")
    if batch_size is not None:
        b = _checks.positive_int("batch_size", batch_size)
        if b < 4:
            _checks._fail(
                "batch_size",
                "at least 4 (the inverse batch variance has no mean below)",
                batch_size,
                "Pass batch_size >= 4, or None for the large-batch limit.",
            )
        if not linear:
            _checks._fail(
                "batch_size",
                f"None (the large-batch limit) for activation {kern.name!r}; the "
                "finite-batch closed form is the identity's",
                batch_size,
                "Pass batch_size=None, or measure the rate with "
                "jgrad.analyze.layer_grad_norms on a batch-normalized mlp.",
            )
        return (b - 2) / (b - 3)
    if kern.slope is not None:  # phi = a x + (1 - a) relu(x)
        act = resolve(activation)
        a = {"relu": 0.0}.get(kern.name, act.params.get("negative_slope", 1.0))
        mean = (1 - a) / math.sqrt(2 * math.pi)
        second = deriv2 = kern.slope
    else:
        act = resolve(activation)
        with jax.enable_x64():
            one = jnp.asarray(1.0, jnp.float64)
            mean = float(expectation(act.fn, one, degree=degree))
            second = float(kern.v(one))
            deriv2 = float(kern.dv(one))
    return deriv2 / (second - mean * mean)
