"""The ``Cell`` protocol shared by the vanilla RNN, LSTM and GRU.

A cell is a NamedTuple of pure functions, split so that the work that does not depend on the
carry runs once for the whole sequence, outside the time loop:

- ``init(key, in_dim) -> params`` (named dict);
- ``init_carry(batch_shape=()) -> carry`` (zeros);
- ``input_proj(params, xs) -> xp``: the input projection of every time step at once,
  ``xs`` of shape ``(..., T, in_dim)`` -> ``(..., T, G)`` (one matmul);
- ``step(params, carry, xp_t) -> (carry, y_t)``: one time step, ``lax.scan``'s signature.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Cell", "LSTMState", "check_carry", "check_params", "check_xs"]


class LSTMState(NamedTuple):
    """The LSTM carry (PyTorch's and equinox's order; flax's tuple is ``(c, h)``).

    Attributes:
        h: (..., H) hidden state (the output).
        c: (..., H) cell state.
    """

    h: jax.Array
    c: jax.Array


class Cell(NamedTuple):
    """A recurrent cell as pure functions (see the module docstring).

    Attributes:
        init: ``init(key, in_dim) -> params``.
        init_carry: ``init_carry(batch_shape=()) -> carry`` of zeros.
        input_proj: ``input_proj(params, xs) -> xp`` for all time steps at once.
        step: ``step(params, carry, xp_t) -> (carry, y_t)``.
        hidden: hidden size H.
        kind: ``"vanilla"``, ``"lstm"`` or ``"gru"``.
        options: the static options it was built with (e.g. ``{"forget_bias": 1.0}``).
    """

    init: Callable[[jax.Array, int], dict]
    init_carry: Callable[..., Any]
    input_proj: Callable[[dict, jax.Array], jax.Array]
    step: Callable[[dict, Any, jax.Array], tuple[Any, jax.Array]]
    hidden: int
    kind: str
    options: dict


def check_carry(cell: Cell, carry: Any, name: str = "carry0") -> None:
    """Raises ValueError unless ``carry`` has the structure and trailing shape of
    ``cell.init_carry()`` (one sequence: no batch axis)."""
    ref = cell.init_carry()
    ref_def = jax.tree.structure(ref)
    got_def = jax.tree.structure(carry)
    if ref_def != got_def:
        what = "an LSTMState(h, c)" if cell.kind == "lstm" else "an array"
        raise ValueError(
            f"`{name}` must be {what} like cell.init_carry() for a {cell.kind} cell, got "
            f"{got_def}. Use cell.init_carry() (and jgrad.rnn.LSTMState(h=..., c=...) for "
            "an LSTM; flax's (c, h) order must be swapped)."
        )
    for r, c in zip(jax.tree.leaves(ref), jax.tree.leaves(carry), strict=True):
        if jnp.shape(c) != r.shape:
            raise ValueError(
                f"`{name}` leaves must have shape {r.shape} (hidden size {cell.hidden}, one "
                f"sequence), got {jnp.shape(c)}. For a batch, jax.vmap over unroll with the "
                "carry's batch axis mapped."
            )


def carry_like_step(params: Any, carry: Any, x: jax.Array) -> Any:
    """``carry`` cast to the dtype ``cell.step`` gives it, so that ``lax.scan`` accepts it:
    ``cell.init_carry()`` is float32, and with float64 params or inputs the step's carry
    comes out float64. A floating carry is widened to the widest of its own, the recurrent
    weight's and the input's float dtypes (explicitly, so also under strict dtype
    promotion, where the step would reject a float32 carry against float64 weights).

    Args:
        params: the cell's params (only the dtype of ``w_hh`` is used).
        carry: the initial carry (any leading batch axes).
        x: the inputs (only their dtype is used).
    """
    floats = [
        jnp.dtype(d)
        for d in (jnp.result_type(params["w_hh"]), jnp.result_type(x))
        if jnp.issubdtype(d, jnp.floating)
    ]

    def cast(a):
        dt = jnp.result_type(a)
        if not jnp.issubdtype(dt, jnp.floating):
            return a
        wide = max([jnp.dtype(dt)] + floats, key=lambda d: jnp.finfo(d).bits)
        return a if jnp.finfo(wide).bits == jnp.finfo(dt).bits else jnp.asarray(a, wide)

    return jax.tree.map(cast, carry)


@functools.lru_cache(maxsize=256)
def _param_shapes(init: Callable, in_dim: int) -> dict:
    """``{name: shape}`` of ``init(key, in_dim)``, from ``jax.eval_shape`` (no compute).
    Cached per init function (which holds its cell alive, so the key cannot be reused)."""
    abstract = jax.eval_shape(lambda key: init(key, in_dim), jax.random.key(0))
    return {k: tuple(v.shape) for k, v in abstract.items()}


_PARAMS_FIX = (
    "Initialise them with cell.init(key, in_dim) for this cell (or convert with "
    "jgrad.rnn.from_torch / from_flax, which check the source)."
)


def check_params(cell: Cell, params: Any, name: str = "params") -> int:
    """Raises ValueError unless ``params`` has the keys and shapes ``cell.init(key,
    in_dim)`` gives (computed abstractly, before any tracing), with float leaves; returns
    ``in_dim``, read from ``params["w_ih"]``."""
    if not isinstance(params, dict):
        raise ValueError(
            f"`{name}` must be a dict of arrays like cell.init(key, in_dim) gives for a "
            f"{cell.kind} cell, got {type(params).__name__}. {_PARAMS_FIX}"
        )
    w_ih = params.get("w_ih")
    if w_ih is None or len(jnp.shape(w_ih)) != 2:
        got = "no 'w_ih'" if w_ih is None else f"'w_ih' of shape {jnp.shape(w_ih)}"
        raise ValueError(
            f"`{name}['w_ih']` must be a 2-D (in_dim, G) input weight for a {cell.kind} "
            f"cell, got {got} (keys {sorted(params)}). {_PARAMS_FIX}"
        )
    in_dim = int(jnp.shape(w_ih)[0])
    want = _param_shapes(cell.init, in_dim) if in_dim >= 1 else None
    if want is None:
        raise ValueError(
            f"`{name}['w_ih']` must have at least one row (in_dim >= 1), got shape "
            f"{jnp.shape(w_ih)}. {_PARAMS_FIX}"
        )
    if set(params) != set(want):
        missing = sorted(set(want) - set(params))
        extra = sorted(set(params) - set(want))
        raise ValueError(
            f"`{name}` must have the keys {sorted(want)} of a {cell.kind} cell, got "
            f"{sorted(params)} (missing {missing}, unexpected {extra}): params of another "
            f"cell type? {_PARAMS_FIX}"
        )
    for k, shape in want.items():
        got = jnp.shape(params[k])
        if got != shape:
            raise ValueError(
                f"`{name}[{k!r}]` must have shape {shape} for a {cell.kind} cell of "
                f"hidden size {cell.hidden} with in_dim {in_dim} (as cell.init(key, "
                f"{in_dim}) gives), got {got}: params of a cell of another width or "
                f"type? {_PARAMS_FIX}"
            )
        dt = jnp.result_type(params[k])
        if not jnp.issubdtype(dt, jnp.floating):
            raise ValueError(
                f"`{name}[{k!r}]` must be a real floating-point array, got dtype {dt}. "
                "Cast it, e.g. with .astype(jnp.float32)."
            )
    return in_dim


def check_xs(xs: Any, name: str = "xs") -> None:
    """Raises ValueError unless ``xs`` is an array of a real floating dtype (integer,
    bool and complex inputs are refused before tracing)."""
    if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
        raise ValueError(
            f"`{name}` must be a float array, got {type(xs).__name__}. Convert it with "
            f"jnp.asarray({name}, jnp.float32)."
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must be a real floating-point array, got dtype {xs.dtype}. Cast it, "
            f"e.g. {name}.astype(jnp.float32) (a complex input has no real gradient norm)."
        )
