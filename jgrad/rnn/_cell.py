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

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Cell", "LSTMState", "check_carry"]


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
