"""Per-submodule gradient norms of a whole model (flax linen, NNX, equinox) from one
backward pass: ``module_grad_norms``.

Each framework's adapter (``_foreign.Adapter.probe``) returns a :class:`Probe`: the model
run with a perturbation ``eps_i`` added to the output of every selected submodule call.
The gradient with respect to ``eps_i`` at ``eps = 0`` is ``dL/dh_i``, the gradient at that
call's output, so one ``jax.value_and_grad`` gives every call's gradient, every
parameter leaf's and the input's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Probe"]


class Probe(NamedTuple):
    """A model with its selected submodule calls exposed.

    Attributes:
        names: one path string per selected call, in call order ("/"-joined attribute
            names and list indices: ``"Dense_0"``, ``"block/linear"``, ``"layers/2"``;
            a second call of the same submodule gets ``"#1"`` appended, a third ``"#2"``).
        params: the differentiable params pytree (what per-leaf norms are reported for).
        run: ``run(params, x, eps) -> (y, outs)``: the model output with ``eps[i]``
            (a pytree shaped like call i's output) added to the output of call i, and
            ``outs`` the tuple of the calls' outputs (with ``eps`` added).
        shapes: per call, a pytree of ``jax.ShapeDtypeStruct``, the call's output.
    """

    names: tuple[str, ...]
    params: Any
    run: Callable
    shapes: tuple
