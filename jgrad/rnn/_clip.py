"""Gradient clipping through time: the per-sequence clipping of the carry cotangent.

:func:`clip_per_sequence` holds the math, written once; :func:`clip_carry_grad` (plain
autodiff, :func:`jgrad.rnn.unroll`) and the hand-written backward passes of
:func:`jgrad.rnn.unroll_batch` both call it, so the two paths clip identically.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["clip_carry_grad", "clip_per_sequence"]


def clip_per_sequence(
    gs: Sequence[jax.Array],
    threshold: float | None,
    mode: str,
    axis: int | None = None,
) -> tuple[jax.Array, ...]:
    """Clips the carry cotangents ``gs`` of a sequence (or of a batch of them).

    Args:
        gs: the cotangents of the carry's leaves (``(dh,)`` or ``(dh, dc)``).
        threshold: the clipping threshold; None returns ``gs`` unchanged.
        mode: ``"value"`` clips every entry to ``[-threshold, threshold]``; ``"norm"``
            rescales ``gs`` together to a joint 2-norm of at most ``threshold``.
        axis: the feature axis of batched cotangents (``-1`` for (B, H), ``0`` for
            (H, B)): one norm per sequence along it. None: ``gs`` belong to one sequence
            and the norm runs over all their entries.

    Returns:
        The clipped cotangents, a tuple in the order of ``gs``.
    """
    if threshold is None:
        return tuple(gs)
    if mode == "value":
        return tuple(jnp.clip(g, -threshold, threshold) for g in gs)
    sq = sum(jnp.sum(jnp.square(g), axis=axis, keepdims=axis is not None) for g in gs)
    norm = jnp.sqrt(sq)
    scale = jnp.where(norm > threshold, threshold / jnp.where(norm > 0, norm, 1.0), 1.0)
    return tuple(g * scale.astype(g.dtype) for g in gs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def clip_carry_grad(carry: Any, threshold: float, mode: str = "value") -> Any:
    """Identity on the forward pass; clips the cotangent of ``carry`` on the backward pass.

    ``mode="value"`` clips every entry to ``[-threshold, threshold]`` (Graves 2013, who
    clipped the derivatives inside the LSTM's backward pass); ``mode="norm"`` rescales the
    whole carry cotangent of one sequence to norm at most ``threshold``.

    This is a ``custom_vjp``: it has no forward-mode derivative, so keep it off analysis
    paths (``unroll(grad_clip=None)``, the default, never uses it).

    References:
        Graves, "Generating Sequences With Recurrent Neural Networks", 2013,
        arXiv:1308.0850; Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent
        neural networks", ICML 2013, arXiv:1211.5063.
    """
    del threshold, mode
    return carry


def _clip_fwd(carry, threshold, mode):
    return carry, None


def _clip_bwd(threshold, mode, _, g):
    leaves, tree = jax.tree.flatten(g)
    return (jax.tree.unflatten(tree, clip_per_sequence(leaves, threshold, mode)),)


clip_carry_grad.defvjp(_clip_fwd, _clip_bwd)
