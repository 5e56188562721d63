"""Optax chains for training with the textbook cures as switches, and gradient clipping
that records what it did.

- ``chain(optimizer, learning_rate, *, clip_global_norm, clip_value, agc, l2,
  weight_decay, skip_above, guard_nonfinite)`` -> a plain ``optax.GradientTransformation``
  built from optax's transforms.
- ``record_clip(max_norm)`` -> global-norm clipping whose state (a ``ClipStats``) holds the
  norm before clipping, each leaf's norm, the factor applied and the count of non-finite
  gradients; ``clip_stats(opt_state)`` reads it out of any state that holds one.
- ``record_layers(net, loss)`` -> a ``record_fn`` for ``train``: each layer's log10
  gradient norms (activations and params) from ``jgrad.analyze.layer_grad_norms``.
- ``gate(inner, *, skip_above, skip_nonfinite)`` -> skips whole steps (a ``GateState``
  counts them).
- ``train(loss_fn, params, data, tx, *, steps, key, out, every, checkpoint_every,
  resume)`` -> a jitted loop with metrics as JSONL, orbax checkpoints, bit-identical
  resume, and the first non-finite step reported (a ``TrainResult``).
"""

from jgrad.optim._chain import OPTIMIZERS as OPTIMIZERS
from jgrad.optim._chain import chain as chain
from jgrad.optim._layers import record_layers as record_layers
from jgrad.optim._record import ClipStats as ClipStats
from jgrad.optim._record import GateState as GateState
from jgrad.optim._record import clip_stats as clip_stats
from jgrad.optim._record import gate as gate
from jgrad.optim._record import record_clip as record_clip
from jgrad.optim._train import Divergence as Divergence
from jgrad.optim._train import TrainResult as TrainResult
from jgrad.optim._train import train as train

__all__ = [
    "OPTIMIZERS",
    "ClipStats",
    "Divergence",
    "GateState",
    "TrainResult",
    "chain",
    "clip_stats",
    "gate",
    "record_clip",
    "record_layers",
    "train",
]
