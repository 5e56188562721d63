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
from jgrad.rnn._cell import Cell, check_params

__all__ = ["to_torch", "from_torch", "to_flax", "from_flax"]

_GATES = {"vanilla": ("",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
_FLAX_CELL = {"vanilla": "SimpleCell", "lstm": "LSTMCell", "gru": "GRUCell"}


def _np(a):
    return np.array(a, dtype=np.float32)  # a writable copy (torch.from_numpy needs one)


def to_torch(cell: Cell, params: dict, layer: int = 0) -> dict[str, np.ndarray]:
    """PyTorch state-dict entries (NumPy float32) for layer ``layer`` of ``nn.RNN``/
    ``nn.LSTM``/``nn.GRU``: load a one-layer module with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.

    Raises:
        ValueError: ``params`` whose keys or shapes differ from ``cell.init``'s, a GRU
            with ``reset_after=False`` (PyTorch has only reset-after) or a vanilla cell
            whose activation is neither tanh nor relu.
    """
    _checks.cell("cell", cell)
    check_params(cell, params)
    layer = _checks.non_negative_int("layer", layer)
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


def _torch_array(v):
    v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
    return jnp.asarray(v, jnp.float32)


def from_torch(cell: Cell, state_dict: dict[str, Any], layer: int = 0) -> dict:
    """jgrad params from a PyTorch RNN/LSTM/GRU state dict (tensors or arrays), layer
    ``layer`` (forward direction).

    The keys and shapes are checked against the cell before anything is converted: the
    weights must have the cell's number of gate blocks (an LSTM's 4H rows are refused
    for a GRU's 3H) and its hidden size, and what a jgrad cell cannot hold is refused
    rather than dropped: an LSTM with ``proj_size`` (``weight_hr``) and a bidirectional
    module's reverse direction (``*_reverse`` keys; convert it as a second cell by
    passing those entries with the ``_reverse`` suffix removed).

    Raises:
        ValueError: a missing key, a weight or bias of the wrong shape, ``weight_hr``
            or ``_reverse`` keys for ``layer``.
    """
    _checks.cell("cell", cell)
    layer = _checks.non_negative_int("layer", layer)
    suffix = f"_l{layer}"
    if f"weight_hr{suffix}" in state_dict:
        raise ValueError(
            f"`state_dict` must come from a module without proj_size, got "
            f"'weight_hr{suffix}' (an LSTM with projected hidden states, h = W_hr h, "
            "which jgrad's cells do not represent). Build the torch.nn.LSTM with "
            "proj_size=0."
        )
    reverse = sorted(k for k in state_dict if k.endswith(f"{suffix}_reverse"))
    if reverse:
        raise ValueError(
            f"`state_dict` must hold one direction of layer {layer}, got the reverse "
            f"direction's keys {reverse} too (a bidirectional module), which one cell "
            "cannot hold. Convert each direction as its own cell: the forward entries "
            "as they are, and {k.removesuffix('_reverse'): v for k, v in "
            "state_dict.items() if k.endswith('_reverse')} for the reverse cell of "
            "jgrad.rnn.bidirectional."
        )

    def get(name):
        key = f"{name}{suffix}"
        if key not in state_dict:
            raise ValueError(
                f"`state_dict` must contain {key!r} for layer {layer} of a "
                f"{cell.kind} module, got keys {sorted(state_dict)}."
            )
        return key, _torch_array(state_dict[key])

    n_gates = len(_GATES[cell.kind])
    G, H = n_gates * cell.hidden, cell.hidden
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    arrays = dict(get(name) for name in names)
    (k_ih, w_ih), (k_hh, w_hh), (k_bi, b_ih), (k_bh, b_hh) = arrays.items()
    if w_ih.ndim != 2 or w_ih.shape[0] != G:
        rows = w_ih.shape[0] if w_ih.ndim == 2 else None
        hint = ""
        if rows and rows % H == 0 and rows // H != n_gates:
            other = {1: "vanilla RNN", 3: "GRU", 4: "LSTM"}.get(rows // H)
            hint = f" ({rows // H} gate blocks: a {other or 'different'} module?)"
        raise ValueError(
            f"`state_dict[{k_ih!r}]` must have shape ({G}, in_dim) for a {cell.kind} "
            f"cell of hidden size {H} ({n_gates} gate blocks of {H}), got "
            f"{tuple(w_ih.shape)}{hint}. Build the cell with the module's type and "
            "hidden_size."
        )
    for key, arr, shape in (
        (k_hh, w_hh, (G, H)),
        (k_bi, b_ih, (G,)),
        (k_bh, b_hh, (G,)),
    ):
        if tuple(arr.shape) != shape:
            raise ValueError(
                f"`state_dict[{key!r}]` must have shape {shape} for a {cell.kind} cell "
                f"of hidden size {H}, got {tuple(arr.shape)}. Build the cell with the "
                "module's type and hidden_size."
            )
    params = {"w_ih": w_ih.T, "w_hh": w_hh.T}
    if cell.kind == "gru":
        params["b_ih"], params["b_hh"] = b_ih, b_hh
    else:
        params["b"] = b_ih + b_hh
    check_params(cell, params)
    return params


def _split(a, n):
    return np.split(_np(a), n, axis=-1)


def to_flax(cell: Cell, params: dict) -> dict:
    """flax.linen params (the ``{"params": ...}`` collection's content) of the matching cell:
    ``SimpleCell``, ``LSTMCell``/``OptimizedLSTMCell`` or ``GRUCell``.

    Raises:
        ValueError: ``params`` whose keys or shapes differ from ``cell.init``'s, or a GRU
            with ``reset_after=False`` (flax's GRUCell is reset-after).
    """
    _checks.cell("cell", cell)
    check_params(cell, params)
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
    """jgrad params from a flax.linen cell's params (inverse of :func:`to_flax`).

    Raises:
        ValueError: a missing entry, or a kernel or bias whose feature size is not the
            cell's hidden size (params of a flax cell of another type or width).
    """
    _checks.cell("cell", cell)
    if not isinstance(flax_params, dict):
        raise ValueError(
            f"`flax_params` must be the dict of a flax.linen cell's params, got "
            f"{type(flax_params).__name__}."
        )
    p = flax_params.get("params", flax_params)

    def entry(nm, field):
        if not isinstance(p.get(nm), dict) or field not in p[nm]:
            raise ValueError(
                f"`flax_params` must contain [{nm!r}][{field!r}] for a {cell.kind} cell "
                f"(flax's {_FLAX_CELL[cell.kind]}), got {sorted(p)}. Pass the params of "
                "the matching flax cell."
            )
        return jnp.asarray(p[nm][field], jnp.float32)

    def cat(names, field):
        parts = [entry(nm, field) for nm in names]
        for nm, a in zip(names, parts, strict=True):
            if a.shape[-1:] != (cell.hidden,):
                raise ValueError(
                    f"`flax_params[{nm!r}][{field!r}]` must have {cell.hidden} features "
                    f"(the cell's hidden size) on its last axis, got shape {a.shape}. "
                    "Build the cell with the flax cell's features."
                )
        return jnp.concatenate(parts, -1)

    if cell.kind == "vanilla":
        out = {
            "w_ih": cat(["i"], "kernel"),
            "w_hh": cat(["h"], "kernel"),
            "b": cat(["i"], "bias"),
        }
        check_params(cell, out, "from_flax(...)")
        return out
    gates = _GATES[cell.kind]
    wi = cat([f"i{g}" for g in gates], "kernel")
    wh = cat([f"h{g}" for g in gates], "kernel")
    if cell.kind == "lstm":
        out = {"w_ih": wi, "w_hh": wh, "b": cat([f"h{g}" for g in gates], "bias")}
        check_params(cell, out, "from_flax(...)")
        return out
    H = cell.hidden
    b_hh = jnp.zeros((3 * H,), jnp.float32).at[2 * H :].set(cat(["hn"], "bias"))
    out = {
        "w_ih": wi,
        "w_hh": wh,
        "b_ih": cat([f"i{g}" for g in gates], "bias"),
        "b_hh": b_hh,
    }
    check_params(cell, out, "from_flax(...)")
    return out
