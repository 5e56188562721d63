"""Gradient clipping that records what it did, and a gate that skips whole steps.

PyTorch's ``clip_grad_norm_`` returns the norm it clipped; optax's
``clip_by_global_norm`` does not (optax#326). :func:`record_clip` clips by the global
norm as optax does and keeps, in its state, the norm before clipping, every leaf's norm
and the factor it applied, so a training loop reads what clipping did at every step
(:func:`clip_stats`). :func:`gate` wraps a whole chain and skips a step (no update, the
inner state unchanged) when the gradient is non-finite or its norm exceeds a threshold,
counting what it skipped: "skip above, clip below".
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgrad import _checks

__all__ = ["ClipStats", "GateState", "clip_stats", "gate", "record_clip"]


class ClipStats(NamedTuple):
    """What clipping saw and did at the last step (the state of :func:`record_clip`).

    Attributes:
        global_norm: () float32, the global norm of the gradient before clipping (0/0
            safe: a zero gradient gives 0).
        leaf_norms: (K,) float32, each leaf's norm before clipping, in the order of
            ``jax.tree.leaves(grads)`` (one array, not a pytree of scalars, so a jitted
            step passes one buffer for it).
        clip_factor: () float32, the factor the gradient was multiplied by:
            ``min(1, max_norm / global_norm)`` (1 without a ``max_norm``, and for a zero
            gradient); NaN when the gradient held a NaN or inf.
        nonfinite_count: () int32, the steps so far whose gradient held a NaN or inf
            and reached this transform (steps that a :func:`gate` skipped do not: its
            ``GateState.skipped_nonfinite`` counts those).
    """

    global_norm: jax.Array
    leaf_norms: Any
    clip_factor: jax.Array
    nonfinite_count: jax.Array


def _norm(tree) -> jax.Array:
    """The global norm in float32 (float64 leaves stay float64), as optax computes it."""
    return optax.tree.norm(tree)


def record_clip(max_norm: float | None = None) -> optax.GradientTransformation:
    """Clips updates by their global norm (optax's ``clip_by_global_norm``) and records
    the norm before clipping, each leaf's norm and the factor applied
    (:class:`ClipStats`), jit- and vmap-safe, with no recompilation between steps.

    Args:
        max_norm: the largest global norm let through, > 0; None records without
            clipping.

    Raises:
        ValueError: ``max_norm`` not a number > 0.

    Returns:
        An ``optax.GradientTransformation`` whose state is a :class:`ClipStats`.

    Examples:
        >>> import jax.numpy as jnp, jgrad
        >>> tx = jgrad.optim.record_clip(1.0)
        >>> g = {"w": jnp.array([3.0, 4.0])}
        >>> u, s = tx.update(g, tx.init(g))
        >>> float(s.global_norm), round(float(s.clip_factor), 6)
        (5.0, 0.2)
        >>> [round(float(v), 6) for v in u["w"]]
        [0.6, 0.8]
    """

    if max_norm is not None:
        max_norm = _checks.positive(
            "max_norm", max_norm, "Pass a norm > 0 (e.g. 1.0), or None to only record."
        )

    def init(params):
        return ClipStats(
            global_norm=jnp.zeros((), jnp.float32),
            leaf_norms=jnp.zeros((len(jax.tree.leaves(params)),), jnp.float32),
            clip_factor=jnp.ones((), jnp.float32),
            nonfinite_count=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params=None):
        del params
        # each leaf's sum of squares once: the leaf norms and the global norm from them
        squares = jax.tree.map(lambda u: jnp.sum(jnp.square(u)), updates)
        norm = jnp.sqrt(sum(jax.tree.leaves(squares)))
        leaves = jnp.sqrt(jnp.stack(jax.tree.leaves(squares))).astype(jnp.float32)
        finite = jnp.isfinite(norm)
        if max_norm is None:
            factor = jnp.ones((), norm.dtype)
        else:  # as optax: t / norm * max_norm above max_norm; never 0/0
            big = norm > max_norm
            factor = jnp.where(big, max_norm / jnp.where(big, norm, 1.0), 1.0)
            updates = jax.tree.map(
                lambda t: jnp.where(big, (t / norm.astype(t.dtype)) * max_norm, t),
                updates,
            )
        factor = jnp.where(finite, factor, jnp.nan)
        stats = ClipStats(
            global_norm=norm.astype(jnp.float32),
            leaf_norms=leaves,
            clip_factor=factor.astype(jnp.float32),
            nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
        )
        return updates, stats

    return optax.GradientTransformation(init, update)


class GateState(NamedTuple):
    """The state of :func:`gate`.

    Attributes:
        inner: the wrapped transformation's state (unchanged by a skipped step: its
            ``ClipStats`` then still describe the last step taken).
        global_norm: () float32, the global norm of the last step's gradient, skipped
            or not.
        skipped_nonfinite: () int32, steps skipped because the gradient held a NaN
            or inf.
        skipped_large: () int32, steps skipped because the gradient's global norm
            exceeded ``skip_above``.
        last_skipped: () bool, whether the last step was skipped.
    """

    inner: Any
    global_norm: jax.Array
    skipped_nonfinite: jax.Array
    skipped_large: jax.Array
    last_skipped: jax.Array


def gate(
    inner: optax.GradientTransformation,
    *,
    skip_above: float | None = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformation:
    """Skips whole steps of ``inner``: a zero update and ``inner``'s state unchanged,
    when the incoming gradient holds a NaN or inf (``skip_nonfinite``) or its global
    norm exceeds ``skip_above``; every other step is ``inner``'s. Like optax's
    ``apply_if_finite``, with a norm threshold too, and without a limit on consecutive
    skips. Both branches run and one is selected (``jnp.where``), so it is jit- and
    vmap-safe.

    Args:
        inner: the transformation gated (a whole chain: its clipping and optimizer).
        skip_above: skip a step whose gradient's global norm exceeds this (> 0), or
            None.
        skip_nonfinite: skip a step whose gradient holds a NaN or inf.

    Returns:
        An ``optax.GradientTransformation`` whose state is a :class:`GateState`.
    """

    def init(params):
        zero = jnp.zeros((), jnp.int32)
        return GateState(
            inner.init(params),
            jnp.zeros((), jnp.float32),
            zero,
            zero,
            jnp.zeros((), bool),
        )

    def update(updates, state, params=None):
        norm = _norm(updates)
        nonfinite = ~jnp.isfinite(norm)
        bad = nonfinite if skip_nonfinite else jnp.zeros((), bool)
        large = (norm > skip_above) & ~nonfinite if skip_above is not None else False
        skip = bad | large
        new_updates, new_inner = inner.update(updates, state.inner, params)
        out = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), new_updates)
        kept = jax.tree.map(
            lambda old, new: jnp.where(skip, old, new), state.inner, new_inner
        )
        return out, GateState(
            kept,
            norm.astype(jnp.float32),
            state.skipped_nonfinite + bad.astype(jnp.int32),
            state.skipped_large + jnp.asarray(large).astype(jnp.int32),
            skip,
        )

    return optax.GradientTransformation(init, update)


def clip_stats(opt_state: Any) -> ClipStats:
    """The :class:`ClipStats` inside an optimizer state (of :func:`jgrad.optim.chain`,
    or any chain that holds a :func:`record_clip`).

    Raises:
        ValueError: ``opt_state`` holds no ClipStats.
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, ClipStats))
        if isinstance(s, ClipStats)
    ]
    if not found:
        raise ValueError(
            "`opt_state` must be the state of a chain that records its clipping "
            "(jgrad.optim.chain or one holding jgrad.optim.record_clip), got one with "
            "no ClipStats."
        )
    return found[0]
