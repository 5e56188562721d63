"""Argument validation shared by every constructor and entry point.

Each check raises a ``ValueError`` whose message names the argument, what was expected, what
was given and how to fix it, before anything is traced. Messages are one string (never a
tuple) so that ``str(err)`` reads as a sentence.
"""

from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Iterable, Sequence
from typing import Any


def _fail(name: str, expected: str, got: Any, fix: str | None = None) -> None:
    msg = f"`{name}` must be {expected}, got {got!r}."
    if fix:
        msg += f" {fix}"
    raise ValueError(msg)


def _as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (int, ``np.int64``, a 0-d integer
    array; not a bool, float or string), else None."""
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) == "bool":
        return None
    if getattr(value, "ndim", 0) != 0:
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def integer(name: str, value: Any, fix: str | None = None) -> int:
    """Returns ``value`` as an int if it is an integer of any sign (``np.int64`` too),
    else raises ValueError."""
    v = _as_int(value)
    if v is None:
        _fail(name, "an integer", value, fix or f"Pass e.g. {name}=3.")
    return v


def positive_int(name: str, value: Any, fix: str | None = None) -> int:
    """Returns ``value`` as an int if it is an integer >= 1 (``np.int64`` too), else
    raises ValueError."""
    v = _as_int(value)
    if v is None or v < 1:
        _fail(name, "a positive integer", value, fix or f"Pass e.g. {name}=8.")
    return v


def non_negative_int(name: str, value: Any, fix: str | None = None) -> int:
    """Returns ``value`` as an int if it is an integer >= 0 (``np.int64`` too), else
    raises ValueError."""
    v = _as_int(value)
    if v is None or v < 0:
        _fail(name, "a non-negative integer", value, fix or f"Pass e.g. {name}=2.")
    return v


def real(name: str, value: Any, fix: str | None = None) -> float:
    """Returns ``float(value)`` if it is a finite real number of any sign (not NaN, not
    inf, not a bool or string), else raises ValueError."""
    if isinstance(value, (bool, str)) or getattr(value, "ndim", 0) != 0:
        _fail(name, "a finite real number", value, fix or f"Pass e.g. {name}=1.0.")
    try:
        v = float(value)
    except (TypeError, ValueError):
        _fail(name, "a finite real number", value, fix or f"Pass e.g. {name}=1.0.")
    if not math.isfinite(v):
        _fail(name, "a finite real number", value, fix or f"Pass e.g. {name}=1.0.")
    return v


def non_negative(name: str, value: Any, fix: str | None = None) -> float:
    """Returns ``float(value)`` if it is a finite real >= 0, else raises ValueError."""
    fix = fix or f"Pass a finite number >= 0, e.g. {name}=1.0."
    if isinstance(value, (bool, str)) or getattr(value, "ndim", 0) != 0:
        _fail(name, "a non-negative number", value, fix)
    try:
        v = float(value)
    except (TypeError, ValueError):
        _fail(name, "a non-negative number", value, fix)
    if not v >= 0.0 or v == float("inf"):
        _fail(name, "a finite non-negative number", value, fix)
    return v


def positive(name: str, value: Any, fix: str | None = None) -> float:
    """Returns ``float(value)`` if it is a finite real > 0, else raises ValueError."""
    fix = fix or f"Pass a finite number > 0, e.g. {name}=0.1."
    v = non_negative(name, value, fix)
    if v == 0.0:
        _fail(name, "a positive number", value, fix)
    return v


def probability(name: str, value: Any, fix: str | None = None) -> float:
    """Returns ``float(value)`` if it lies in [0, 1), else raises ValueError."""
    fix = fix or f"Pass a number with 0 <= {name} < 1, e.g. {name}=0.1."
    if isinstance(value, (bool, str)) or getattr(value, "ndim", 0) != 0:
        _fail(name, "a number in [0, 1)", value, fix)
    try:
        v = float(value)
    except (TypeError, ValueError):
        _fail(name, "a number in [0, 1)", value, fix)
    if not 0.0 <= v < 1.0:
        _fail(name, "a probability in [0, 1)", value, fix)
    return v


def boolean(name: str, value: Any) -> bool:
    """Returns ``value`` if it is a bool, else raises ValueError."""
    if not isinstance(value, bool):
        _fail(name, "True or False", value, f"Pass {name}=True or {name}=False.")
    return value


def choice(name: str, value: Any, options: Iterable[str | None]) -> str | None:
    """Returns ``value`` if it is one of ``options`` (names, and None where None is an
    option), else raises ValueError listing them all and suggesting the closest
    (``"rleu"`` -> "Did you mean 'relu'?")."""
    options = list(options)
    if not (isinstance(value, str) or value is None) or value not in options:
        by_lower = {o.lower(): o for o in options if isinstance(o, str)}
        close = (
            difflib.get_close_matches(value.lower(), list(by_lower), n=1, cutoff=0.6)
            if isinstance(value, str)
            else []
        )
        close = [by_lower[c] for c in close]
        fix = f"Did you mean {close[0]!r}? " if close else ""
        _fail(name, f"one of {options}", value, fix + "Pick one of the listed names.")
    return value


def float_array(name: str, value: Any) -> Any:
    """Returns ``value`` if it is a non-empty real floating-point array (jax or NumPy,
    traced or not), else raises ValueError (a list, a Python number, an integer, bool or
    complex array, or an array with a zero-length axis). Reads the shape and dtype only,
    so it costs nothing under jit."""
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    fix = f"Convert it with {name} = jnp.asarray({name}, jnp.float32)."
    if dtype is None or shape is None:
        got = value
        if isinstance(value, (list, tuple)) and len(value) > 6:
            got = f"a {type(value).__name__} of length {len(value)}"
        elif not (
            value is None or isinstance(value, (list, tuple, int, float, complex, str))
        ):
            got = f"a {type(value).__name__}"
        _fail(name, "a floating-point array (jax or NumPy)", got, fix)
    import jax.numpy as jnp

    if not jnp.issubdtype(dtype, jnp.floating):
        got = f"an array of dtype {dtype} and shape {tuple(shape)}"
        _fail(name, "a real floating-point array (float32 or float64)", got, fix)
    if 0 in tuple(shape):
        _fail(
            name,
            "an array with at least one value",
            f"shape {tuple(shape)}",
            "Pass one example, or a batch of at least one.",
        )
    return value


def prng_key(name: str, value: Any, *, optional: bool = False) -> Any:
    """Returns ``value`` if it is a JAX PRNG key (``jax.random.key(0)`` or a legacy
    ``jax.random.PRNGKey(0)`` uint32 array of shape (2,)), or None when ``optional``;
    else raises ValueError (an int seed such as 0 included)."""
    import jax
    import jax.numpy as jnp

    if value is None and optional:
        return value
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return value
        if dtype == jnp.uint32 and tuple(getattr(value, "shape", ()))[-1:] == (2,):
            return value
    none = " or None" if optional else ""
    _fail(
        name,
        f"a JAX PRNG key{none}",
        value
        if dtype is None
        else f"an array of dtype {dtype} and shape {tuple(getattr(value, 'shape', ()))}",
        f"Make one from a seed with {name}=jax.random.key(0), and split it for each use "
        "(jax.random.split).",
    )


def feature_size(
    name: str, shape: Sequence[int], expected: int, *, layer: str, axis: int = -1
) -> None:
    """Raises if ``shape[axis] != expected`` (an input that does not fit the params)."""
    if len(shape) == 0 or shape[axis] != expected:
        _fail(
            name,
            f"an array whose last axis has size {expected} (the input size {layer} was "
            "initialised for)",
            f"shape {tuple(shape)}",
            "Re-initialise the params with init(key, in_shape) for this input shape, or "
            "reshape the input.",
        )


def rank(name: str, shape: Sequence[int], allowed: Iterable[int], fix: str) -> None:
    """Raises if ``len(shape)`` is not among ``allowed``."""
    allowed = tuple(allowed)
    if len(shape) not in allowed:
        ranks = " or ".join(str(r) for r in allowed)
        _fail(name, f"an array of rank {ranks}", f"shape {tuple(shape)}", fix)


def cell(name: str, value: Any) -> Any:
    """Returns ``value`` if it is a ``jgrad.rnn.Cell``, else raises ValueError."""
    from jgrad.rnn._cell import Cell  # here: jgrad.rnn imports this module

    if not isinstance(value, Cell):
        raise ValueError(
            f"`{name}` must be a jgrad.rnn.Cell, e.g. from jgrad.rnn.lstm(64), got type "
            f"{type(value).__name__}. Build one with jgrad.rnn.vanilla, jgrad.rnn.lstm "
            "or jgrad.rnn.gru."
        )
    return value


def time_steps(name: str, shape: Sequence[int], axis: int) -> int:
    """Returns ``shape[axis]``, the number of time steps T, if it is >= 1, else raises
    ValueError."""
    T = shape[axis]
    if T < 1:
        raise ValueError(
            f"`{name}` must have at least one time step (T >= 1), got T = {T} (shape "
            f"{tuple(shape)}). Pass a sequence with at least one step."
        )
    return T


def seq_length(name: str, value: Any, T: int) -> None:
    """Raises if ``value`` is not an integer number of real steps in [0, T]; a traced
    value (under vmap or jit) is checked for its dtype only."""
    import jax
    import jax.numpy as jnp

    dtype = getattr(value, "dtype", None)
    is_int = (
        jnp.issubdtype(dtype, jnp.integer)
        if dtype is not None
        else isinstance(value, int) and not isinstance(value, bool)
    )
    if not is_int:
        raise ValueError(
            f"`{name}` must be an integer (the number of real steps), got {value!r}. "
            f"Pass e.g. {name}=5, or an int array under vmap."
        )
    try:
        n = int(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return  # traced (e.g. under vmap): cannot be checked before running
    if not 0 <= n <= T:
        raise ValueError(
            f"`{name}` must be in [0, T] = [0, {T}], got {n}. It is the number of real "
            "(unpadded) steps at the start of xs."
        )
