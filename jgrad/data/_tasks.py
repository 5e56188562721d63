"""Generated long-dependency tasks with a length parameter: the adding problem, the
copying memory task and the temporal order problem.

Each generator is one jitted, keyed program (no Python loop per example) returning a
:class:`SequenceTask` with the loss of the best predictor that ignores the dependency
(``chance_loss``), the level a model must beat to have learned anything.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jgrad import _checks

__all__ = ["SequenceTask", "adding", "copy_task", "temporal_order"]


class SequenceTask(NamedTuple):
    """A batch of a generated sequence task.

    Attributes:
        x: (n, T, features) float32 inputs, time-major per example.
        y: the targets: (n,) float32 (adding), (n, T) int32 classes per step (copy), or
            (n,) int32 classes (temporal order).
        chance_loss: the loss of the best predictor that ignores the dependency (mean
            squared error for adding, mean cross entropy per step for copy, cross
            entropy for temporal order).
    """

    x: jax.Array
    y: jax.Array
    chance_loss: float


def _check(n, seq_len, key, min_len=2):
    _checks.prng_key("key", key)
    n = _checks.positive_int("n", n)
    seq_len = _checks.integer("seq_len", seq_len, f"Pass an int >= {min_len}.")
    if seq_len < min_len:
        raise ValueError(
            f"`seq_len` must be >= {min_len} (the task needs that many steps), got "
            f"{seq_len}. Pass e.g. seq_len=100."
        )
    return n, seq_len


@functools.partial(jax.jit, static_argnums=(1, 2))
def _adding(key, n, seq_len):
    kv, k1, k2 = jax.random.split(key, 3)
    values = jax.random.uniform(kv, (n, seq_len))
    half = seq_len // 2
    first = jax.random.randint(k1, (n,), 0, half)
    second = jax.random.randint(k2, (n,), half, seq_len)
    steps = jnp.arange(seq_len)[None, :]
    marks = (steps == first[:, None]) | (steps == second[:, None])
    x = jnp.stack([values, marks.astype(values.dtype)], axis=-1)
    y = jnp.sum(jnp.where(marks, values, 0.0), axis=1)
    return x, y


def adding(key: jax.Array, n: int, seq_len: int) -> SequenceTask:
    """The adding problem (Hochreiter & Schmidhuber 1997; as in Le et al. 2015 and
    Arjovsky et al. 2016): each step holds a value drawn from U[0, 1] and a marker;
    exactly two steps are marked, one in the first half and one in the second, and the
    target is the sum of their values.

    Args:
        key: PRNG key.
        n: number of sequences.
        seq_len: T >= 2.

    Returns:
        A :class:`SequenceTask`: ``x`` (n, T, 2) (value, marker), ``y`` (n,);
        ``chance_loss`` 1/6, the mean squared error of always predicting 1 (the
        variance of a sum of two independent U[0, 1]).

    Raises:
        ValueError: ``key`` not a PRNG key, ``n`` < 1, ``seq_len`` < 2.
    """
    n, seq_len = _check(n, seq_len, key)
    x, y = _adding(key, n, seq_len)
    return SequenceTask(x, y, 1.0 / 6.0)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _copy(key, n, seq_len, num_symbols, length):
    symbols = jax.random.randint(key, (n, length), 1, num_symbols + 1)
    total = seq_len + 2 * length
    delim = num_symbols + 1
    tokens = jnp.zeros((n, total), jnp.int32)
    tokens = tokens.at[:, :length].set(symbols)
    tokens = tokens.at[:, seq_len + length - 1].set(delim)
    y = jnp.zeros((n, total), jnp.int32).at[:, seq_len + length :].set(symbols)
    x = jax.nn.one_hot(tokens, num_symbols + 2, dtype=jnp.float32)
    return x, y


def copy_task(
    key: jax.Array, n: int, seq_len: int, *, num_symbols: int = 8, length: int = 10
) -> SequenceTask:
    """The copying memory task (Hochreiter & Schmidhuber 1997; as in Arjovsky et al.
    2016): ``length`` symbols from ``1..num_symbols``, then ``seq_len - 1`` blanks (0),
    a delimiter (``num_symbols + 1``), and ``length`` blanks during which the symbols
    must be reproduced; the target is blank everywhere else.

    Args:
        key: PRNG key.
        n: number of sequences.
        seq_len: T >= 2, the delay between the symbols and their recall.
        num_symbols: the alphabet size (8, as Arjovsky et al.).
        length: how many symbols to remember (10).

    Returns:
        A :class:`SequenceTask`: ``x`` (n, T + 2 length, num_symbols + 2) one-hot,
        ``y`` (n, T + 2 length) int32 classes; ``chance_loss`` ``length *
        log(num_symbols) / (T + 2 length)``, the mean cross entropy per step of the
        memoryless predictor (blank, then uniform over the symbols).

    Raises:
        ValueError: ``key`` not a PRNG key, ``n``, ``num_symbols`` or ``length`` < 1,
            ``seq_len`` < 2.
    """
    n, seq_len = _check(n, seq_len, key)
    num_symbols = _checks.positive_int("num_symbols", num_symbols)
    length = _checks.positive_int("length", length)
    x, y = _copy(key, n, seq_len, num_symbols, length)
    chance = length * math.log(num_symbols) / (seq_len + 2 * length)
    return SequenceTask(x, y, chance)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _temporal(key, n, seq_len):
    kd, k1, k2, kc = jax.random.split(key, 4)
    tokens = jax.random.randint(kd, (n, seq_len), 0, 4)  # distractors a, b, c, d
    lo1, hi1 = seq_len // 10, max(2 * seq_len // 10, seq_len // 10 + 1)
    lo2, hi2 = 4 * seq_len // 10, max(5 * seq_len // 10, 4 * seq_len // 10 + 1)
    t1 = jax.random.randint(k1, (n,), lo1, hi1)
    t2 = jax.random.randint(k2, (n,), max(lo2, 1), max(hi2, 2))
    t2 = jnp.where(t2 == t1, t1 + 1, t2)
    which = jax.random.randint(kc, (n, 2), 0, 2)  # 0: X, 1: Y
    rows = jnp.arange(n)
    tokens = tokens.at[rows, t1].set(4 + which[:, 0])
    tokens = tokens.at[rows, t2].set(4 + which[:, 1])
    x = jax.nn.one_hot(tokens, 6, dtype=jnp.float32)
    y = (2 * which[:, 0] + which[:, 1]).astype(jnp.int32)
    return x, y


def temporal_order(key: jax.Array, n: int, seq_len: int) -> SequenceTask:
    """The temporal order problem (Hochreiter & Schmidhuber 1997, as used by Pascanu
    et al. 2013): random distractors from {a, b, c, d}, and a symbol X or Y at one
    step in [T/10, 2T/10) and at one in [4T/10, 5T/10); the class is the ordered pair
    (XX, XY, YX, YY).

    Args:
        key: PRNG key.
        n: number of sequences.
        seq_len: T >= 10 (the two windows must exist).

    Returns:
        A :class:`SequenceTask`: ``x`` (n, T, 6) one-hot (a, b, c, d, X, Y), ``y`` (n,)
        int32 classes 0..3 (``2 [first is Y] + [second is Y]``); ``chance_loss``
        log 4, the cross entropy of the uniform prediction.

    Raises:
        ValueError: ``key`` not a PRNG key, ``n`` < 1, ``seq_len`` < 10.
    """
    n, seq_len = _check(n, seq_len, key, min_len=10)
    x, y = _temporal(key, n, seq_len)
    return SequenceTask(x, y, float(np.log(4.0)))
