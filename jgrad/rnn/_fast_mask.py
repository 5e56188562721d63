"""Padded steps and clipping in the hand-written passes of :func:`jgrad.rnn.unroll_batch`.

A padded step (mask 0) is the identity on the carry: the forward pass keeps the old carry
(:func:`mix`), and the backward pass lets the carry cotangent through unchanged, while a
real step (mask 1) back-propagates it, clipped, through the cell (:func:`split_step`).
The mask is 1.0 or 0.0 per sequence, shaped to broadcast against the carry: (1, B) for
feature-major (H, B) carries, (B, 1) for batch-major (B, H) ones.
"""

from __future__ import annotations

from jgrad.rnn._clip import clip_per_sequence

__all__ = ["mix", "split_step"]


def mix(m, new, old):
    """The carry after a step: ``new`` where the mask ``m`` is 1, ``old`` where it is 0
    (``new`` when there is no mask)."""
    return new if m is None else m * new + (1 - m) * old


def split_step(gs, m, clip, mode, axis=-1):
    """Splits the carry cotangents ``gs`` after step t by the step's mask ``m``.

    Args:
        gs: tuple of dL/dh_t (and dL/dc_t), the output's share included.
        m: the mask of step t, or None (every step real).
        clip, mode: ``grad_clip`` and ``grad_clip_mode``, applied per sequence to the real
            steps' share (:func:`jgrad.rnn._clip.clip_per_sequence`).
        axis: the feature axis of ``gs`` (-1: batch-major (B, H); 0: feature-major (H, B)).

    Returns:
        ``(real, keep)``: the clipped dL/ds_t that a real step back-propagates through the
        cell, and what a padded step passes to step t-1 unchanged (None without a mask).
    """
    keep = None
    if m is not None:
        keep = tuple((1 - m) * g for g in gs)
        gs = tuple(m * g for g in gs)
    return clip_per_sequence(gs, clip, mode, axis), keep
