"""``chain``: an optax optimizer with every textbook cure for unstable training as a switch.

The result is a plain ``optax.GradientTransformation`` built from optax's own transforms
(usable in anyone's optax code), in this order:

1. ``l2``: ``optax.add_decayed_weights(l2)`` on the gradient, the gradient of
   ``(l2 / 2) ||w||^2`` added to the loss (so it is clipped and adapted with the rest);
2. :func:`~jgrad.optim.record_clip`: the global norm before clipping, each leaf's norm,
   and the clip factor, recorded every step (clipping by ``clip_global_norm`` if given);
3. ``clip_value``: ``optax.clip`` (every entry into [-v, v]); ``agc``:
   ``optax.adaptive_grad_clip`` (Brock et al. 2021);
4. the optimizer's scaling (``optax.scale_by_adam``, ``scale_by_rms``, ``trace``);
5. ``weight_decay``: decoupled weight decay (Loshchilov & Hutter 2019),
   ``optax.add_decayed_weights`` AFTER the adaptive scaling, so it is not divided by the
   second-moment estimate: ``optimizer="adamw"`` is exactly ``optax.adamw``;
6. ``optax.scale_by_learning_rate`` (a float or any optax schedule);

all inside :func:`~jgrad.optim.gate` when ``skip_above`` or ``guard_nonfinite`` is set.
"""

from __future__ import annotations

from collections.abc import Callable

import optax

from jgrad import _checks
from jgrad.optim._record import gate, record_clip

__all__ = ["OPTIMIZERS", "chain"]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")


def _scaling(optimizer: str, momentum: float) -> optax.GradientTransformation:
    if optimizer == "sgd":
        return optax.identity()
    if optimizer == "momentum":
        return optax.trace(decay=momentum)
    if optimizer in ("adam", "adamw"):
        return optax.scale_by_adam()
    return optax.scale_by_rms()


def _positive_or_none(name: str, value, fix: str):
    if value is None:
        return None
    return _checks.positive(name, value, fix)


def chain(
    optimizer: str,
    learning_rate: float | Callable,
    *,
    clip_global_norm: float | None = None,
    clip_value: float | None = None,
    agc: float | None = None,
    l2: float = 0.0,
    weight_decay: float = 0.0,
    skip_above: float | None = None,
    guard_nonfinite: bool = False,
    momentum: float = 0.9,
) -> optax.GradientTransformation:
    """An optax optimizer with clipping that records what it did, and every cure a switch.

    Args:
        optimizer: ``"sgd"``, ``"momentum"`` (heavy ball, ``momentum``), ``"adam"``,
            ``"adamw"`` (adam with decoupled ``weight_decay`` > 0: ``optax.adamw``) or
            ``"rmsprop"``.
        learning_rate: > 0, or an optax schedule ``step -> rate``.
        clip_global_norm: clip the gradient to this global norm (> 0), or None.
        clip_value: clip every gradient entry into ``[-clip_value, clip_value]``, or None.
        agc: adaptive gradient clipping's ``clipping`` ratio (> 0), or None.
        l2: L2 penalty: ``l2 * w`` added to the gradient, the same as adding
            ``(l2 / 2) ||w||^2`` to the loss; >= 0.
        weight_decay: decoupled weight decay (``learning_rate * weight_decay * w``
            subtracted after the optimizer's scaling); >= 0.
        skip_above: skip a step (no update, optimizer state unchanged) whose
            gradient's global norm exceeds this; with ``clip_global_norm`` below it,
            "skip above, clip below". None: never.
        guard_nonfinite: skip a step whose gradient holds a NaN or inf, and count it.
        momentum: the decay of ``"momentum"``'s trace, in [0, 1).

    Returns:
        An ``optax.GradientTransformation``; :func:`jgrad.optim.clip_stats` reads the
        recorded :class:`~jgrad.optim.ClipStats` from its state, and a gated chain's
        state is a :class:`~jgrad.optim.GateState` (skipped steps counted).

    Raises:
        ValueError: an unknown ``optimizer`` (the valid ones listed), a learning rate,
            clip norm, clip value, agc ratio or ``skip_above`` that is not > 0, a
            negative ``l2`` or ``weight_decay``, ``"adamw"`` without weight decay,
            ``skip_above`` not above ``clip_global_norm``, ``momentum`` outside [0, 1),
            ``guard_nonfinite`` not a bool.

    Examples:
        >>> import jax, jax.numpy as jnp, jgrad
        >>> tx = jgrad.optim.chain("momentum", 1e-3, clip_global_norm=1.0)
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.array([3.0, 0.0, 4.0])}, state, params)
        >>> stats = jgrad.optim.clip_stats(state)
        >>> float(stats.global_norm), round(float(stats.clip_factor), 6)
        (5.0, 0.2)
    """
    optimizer = _checks.choice("optimizer", optimizer, OPTIMIZERS)
    if not callable(learning_rate):
        _checks.positive(
            "learning_rate", learning_rate, "Pass a rate > 0, e.g. 1e-3, or a schedule."
        )
    clip_global_norm = _positive_or_none(
        "clip_global_norm", clip_global_norm, "Pass a norm > 0 (e.g. 1.0) or None."
    )
    clip_value = _positive_or_none(
        "clip_value", clip_value, "Pass a bound > 0 (e.g. 0.5) or None."
    )
    agc = _positive_or_none(
        "agc", agc, "Pass a clipping ratio > 0 (e.g. 0.01) or None."
    )
    skip_above = _positive_or_none(
        "skip_above", skip_above, "Pass a norm > 0 above the clip norm, or None."
    )
    l2 = _checks.non_negative("l2", l2)
    weight_decay = _checks.non_negative("weight_decay", weight_decay)
    _checks.boolean("guard_nonfinite", guard_nonfinite)
    momentum = _checks.real("momentum", momentum)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(
            f"`momentum` must be in [0, 1), got {momentum}. Pass e.g. 0.9."
        )
    if optimizer == "adamw" and weight_decay == 0.0:
        raise ValueError(
            "`weight_decay` must be > 0 with optimizer='adamw' (adam with decoupled "
            "weight decay), got 0.0. Pass weight_decay=1e-4 (optax's default), or use "
            "optimizer='adam'."
        )
    if skip_above is not None and clip_global_norm is not None:
        if skip_above <= clip_global_norm:
            raise ValueError(
                f"`skip_above` must exceed `clip_global_norm` ({clip_global_norm}) to "
                f"skip above and clip below, got {skip_above}. Pass a larger threshold."
            )
    parts = []
    if l2:
        parts.append(optax.add_decayed_weights(l2))
    parts.append(record_clip(clip_global_norm))
    if clip_value is not None:
        parts.append(optax.clip(clip_value))
    if agc is not None:
        parts.append(optax.adaptive_grad_clip(agc))
    parts.append(_scaling(optimizer, momentum))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    tx = optax.chain(*parts)
    if skip_above is not None or guard_nonfinite:
        tx = gate(tx, skip_above=skip_above, skip_nonfinite=guard_nonfinite)
    return tx
