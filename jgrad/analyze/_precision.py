"""Full float32 matmul precision for the analyzers, unless the user chose one.

JAX's default precision for float32 matrix products is the backend's fastest: TF32 on
NVIDIA GPUs since Ampere (a 10-bit mantissa, relative error about 5e-4 a product), one
bfloat16 pass on TPUs. A product of L Jacobians computed that way carries about L such
errors, so its smaller singular values are wrong long before float32's own limit: on an
H100 under TF32, the top log singular values of a depth-128 tanh MLP's input-output
Jacobian were off float64 by about 0.2, at full precision by about 1e-4, at the same
speed (docs/benchmarks.md records the measurement).

:func:`full_precision` runs an analyzer with ``jax.default_matmul_precision("highest")``
unless the user has set a precision (the ``jax_default_matmul_precision`` config, or an
enclosing ``jax.default_matmul_precision`` context): then theirs holds. The setting acts
at trace time, so it also holds when the analyzer is called inside the user's ``jit``.
On CPUs float32 products are full precision either way (no cost: the compiled programs
are the same speed and give the same bits).
"""

from __future__ import annotations

import functools

import jax

__all__ = ["full_precision"]


def full_precision(fn):
    """Decorator: ``fn`` traced under ``jax.default_matmul_precision("highest")`` when
    the user has set no matmul precision (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if jax.config.jax_default_matmul_precision is not None:
            return fn(*args, **kwargs)
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return wrapper
