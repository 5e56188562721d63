"""Weight conversion between jgrad cells and PyTorch / flax.linen.

PyTorch (``nn.RNN``/``nn.LSTM``/``nn.GRU``, layer 0): ``weight_ih_l0`` (G, in),
``weight_hh_l0`` (G, H), ``bias_ih_l0`` (G,), ``bias_hh_l0`` (G,), same gate order as jgrad
(LSTM i, f, g, o; GRU r, z, n), so conversion is a transpose. jgrad's LSTM and vanilla cells
have one bias: ``to_torch`` puts it in ``bias_ih`` and zeros in ``bias_hh``; ``from_torch``
adds the two.

flax.linen: ``SimpleCell`` (``i``: kernel+bias, ``h``: kernel), ``LSTMCell`` and
``OptimizedLSTMCell`` (``i{g}``: kernel, ``h{g}``: kernel+bias for g in i, f, g, o),
``GRUCell`` (``i{g}``: kernel+bias, ``hr``/``hz``: kernel, ``hn``: kernel+bias). flax's GRU
is the reset-after variant; its LSTM carry is ``(c, h)`` where jgrad's is ``LSTMState(h, c)``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jgrad import _checks
from jgrad.rnn._cell import Cell

__all__ = ["to_torch", "from_torch", "to_flax", "from_flax"]

_GATES = {"vanilla": ("",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


def _np(a):
    return np.array(a, dtype=np.float32)  # a writable copy (torch.from_numpy needs one)


def to_torch(cell: Cell, params: dict, layer: int = 0) -> dict[str, np.ndarray]:
    """PyTorch state-dict entries (NumPy float32) for layer ``layer`` of ``nn.RNN``/
    ``nn.LSTM``/``nn.GRU``: load a one-layer module with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.

    Raises:
        ValueError: for a GRU with ``reset_after=False`` (PyTorch has only reset-after) or a
            vanilla cell whose activation is neither tanh nor relu.
    """
    _checks.cell("cell", cell)
    if cell.kind == "gru" and not cell.options["reset_after"]:
        raise ValueError(
            "`cell` must be a gru with reset_after=True for PyTorch, got reset_after=False "
            "(Cho et al.'s variant, which torch.nn.GRU does not implement)."
        )
    if cell.kind == "vanilla" and cell.options["activation"] not in ("tanh", "relu"):
        raise ValueError(
            f"`cell` activation must be 'tanh' or 'relu' for torch.nn.RNN, got "
            f"{cell.options['activation']!r}."
        )
    sd = {
        f"weight_ih_l{layer}": _np(params["w_ih"]).T.copy(),
        f"weight_hh_l{layer}": _np(params["w_hh"]).T.copy(),
    }
    if cell.kind == "gru":
        sd[f"bias_ih_l{layer}"] = _np(params["b_ih"])
        sd[f"bias_hh_l{layer}"] = _np(params["b_hh"])
    else:
        sd[f"bias_ih_l{layer}"] = _np(params["b"])
        sd[f"bias_hh_l{layer}"] = np.zeros_like(_np(params["b"]))
    return sd


def from_torch(cell: Cell, state_dict: dict[str, Any], layer: int = 0) -> dict:
    """jgrad params from a PyTorch RNN/LSTM/GRU state dict (tensors or arrays), layer
    ``layer``."""
    _checks.cell("cell", cell)

    def get(name):
        key = f"{name}_l{layer}"
        if key not in state_dict:
            raise ValueError(
                f"`state_dict` must contain {key!r} for layer {layer}, got keys "
                f"{sorted(state_dict)}."
            )
        v = state_dict[key]
        v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        return jnp.asarray(v, jnp.float32)

    params = {"w_ih": get("weight_ih").T, "w_hh": get("weight_hh").T}
    if cell.kind == "gru":
        params["b_ih"], params["b_hh"] = get("bias_ih"), get("bias_hh")
    else:
        params["b"] = get("bias_ih") + get("bias_hh")
    return params


def _split(a, n):
    return np.split(_np(a), n, axis=-1)


def to_flax(cell: Cell, params: dict) -> dict:
    """flax.linen params (the ``{"params": ...}`` collection's content) of the matching cell:
    ``SimpleCell``, ``LSTMCell``/``OptimizedLSTMCell`` or ``GRUCell``."""
    _checks.cell("cell", cell)
    if cell.kind == "vanilla":
        return {
            "i": {"kernel": _np(params["w_ih"]), "bias": _np(params["b"])},
            "h": {"kernel": _np(params["w_hh"])},
        }
    gates = _GATES[cell.kind]
    n = len(gates)
    wi, wh = _split(params["w_ih"], n), _split(params["w_hh"], n)
    out = {}
    if cell.kind == "lstm":
        b = _split(params["b"], n)
        for k, g in enumerate(gates):
            out[f"i{g}"] = {"kernel": wi[k]}
            out[f"h{g}"] = {"kernel": wh[k], "bias": b[k]}
        return out
    if not cell.options["reset_after"]:
        raise ValueError(
            "`cell` must be a gru with reset_after=True for flax's GRUCell."
        )
    bi, bh = _split(params["b_ih"], n), _split(params["b_hh"], n)
    for k, g in enumerate(gates):
        out[f"i{g}"] = {"kernel": wi[k], "bias": bi[k]}
        out[f"h{g}"] = {"kernel": wh[k]}
    # flax has no recurrent bias for r and z: fold jgrad's into the input bias.
    out["ir"]["bias"] = out["ir"]["bias"] + bh[0]
    out["iz"]["bias"] = out["iz"]["bias"] + bh[1]
    out["hn"]["bias"] = bh[2]
    return out


def from_flax(cell: Cell, flax_params: dict) -> dict:
    """jgrad params from a flax.linen cell's params (inverse of :func:`to_flax`)."""
    _checks.cell("cell", cell)
    p = flax_params.get("params", flax_params)

    def cat(names, field):
        return jnp.concatenate(
            [jnp.asarray(p[nm][field], jnp.float32) for nm in names], -1
        )

    if cell.kind == "vanilla":
        return {
            "w_ih": cat(["i"], "kernel"),
            "w_hh": cat(["h"], "kernel"),
            "b": cat(["i"], "bias"),
        }
    gates = _GATES[cell.kind]
    wi = cat([f"i{g}" for g in gates], "kernel")
    wh = cat([f"h{g}" for g in gates], "kernel")
    if cell.kind == "lstm":
        return {"w_ih": wi, "w_hh": wh, "b": cat([f"h{g}" for g in gates], "bias")}
    H = cell.hidden
    b_hh = (
        jnp.zeros((3 * H,), jnp.float32).at[2 * H :].set(jnp.asarray(p["hn"]["bias"]))
    )
    return {
        "w_ih": wi,
        "w_hh": wh,
        "b_ih": cat([f"i{g}" for g in gates], "bias"),
        "b_hh": b_hh,
    }
