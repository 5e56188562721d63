"""Vanilla RNN, LSTM and GRU cells with hoistable input projections.

Parameter layouts follow PyTorch and cuDNN (gate blocks concatenated on the last axis, weights
stored ``(in, out)`` for ``x @ w``), so converting weights is a transpose (``_convert.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jgrad import _checks
from jgrad import init as _init
from jgrad.nn._activations import Activation
from jgrad.nn._activations import activation as get_activation
from jgrad.nn._layer import lead
from jgrad.rnn._cell import Cell, LSTMState

__all__ = ["vanilla", "lstm", "gru"]


def _zeros_carry(hidden):
    def init_carry(batch_shape=()):
        return jnp.zeros(tuple(batch_shape) + (hidden,), jnp.float32)

    return init_carry


def _check_init_args(key, in_dim):
    _checks.prng_key("key", key)
    return _checks.positive_int(
        "in_dim", in_dim, "Pass the number of input features per time step, e.g. 32."
    )


def _proj(xs, w, b):
    y = xs @ w
    return y + lead(b, y.ndim)


def vanilla(
    hidden: int,
    activation: str | Activation = "tanh",
    *,
    weight_var: float = 1.0,
    bias_var: float = 0.0,
    input_var: float = 1.0,
    w_hh_init: str | _init.Initializer = "gaussian",
) -> Cell:
    """Elman RNN ``h_t = phi(x_t @ w_ih + b + h_{t-1} @ w_hh)``; output ``y_t = h_t``.

    Args:
        hidden: hidden size H.
        activation: a name in ``jgrad.nn.ACTIVATIONS`` or an Activation (``"relu"`` with
            ``w_hh_init="identity"`` is Le et al.'s IRNN).
        weight_var: sigma_w^2 of the recurrent weights: ``N(0, weight_var / H)`` for
            ``w_hh_init="gaussian"``, gain ``sqrt(weight_var)`` for ``"orthogonal"`` and
            ``"identity"``.
        bias_var: sigma_b^2; ``b ~ N(0, bias_var)``.
        input_var: input weights ``w_ih ~ N(0, input_var / in_dim)``.
        w_hh_init: a ``jgrad.init`` name or initializer for ``w_hh``.

    Returns:
        A :class:`Cell` with params ``{"w_ih": (in, H), "w_hh": (H, H), "b": (H,)}`` and an
        array carry ``(H,)``.

    References:
        Elman, "Finding Structure in Time", 1990; Le, Jaitly & Hinton, "A Simple Way to
        Initialize Recurrent Networks of Rectified Linear Units", 2015, arXiv:1504.00941.
    """
    _checks.positive_int("hidden", hidden)
    _checks.non_negative("weight_var", weight_var)
    _checks.non_negative("bias_var", bias_var)
    _checks.non_negative("input_var", input_var)
    act = get_activation(activation)
    w_hh_fn = _init.get(
        w_hh_init,
        weight_var=weight_var
        if w_hh_init in ("gaussian", "orthogonal", "identity")
        else None,
    )
    w_ih_fn = _init.gaussian(input_var)
    b_fn = _init.gaussian_bias(bias_var)

    def init(key, in_dim):
        _check_init_args(key, in_dim)
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "w_ih": w_ih_fn(k1, (in_dim, hidden)),
            "w_hh": w_hh_fn(k2, (hidden, hidden)),
            "b": b_fn(k3, (hidden,)),
        }

    def input_proj(params, xs):
        return _proj(xs, params["w_ih"], params["b"])

    def step(params, h, xp):
        h = act.fn(xp + h @ params["w_hh"])
        return h, h

    opts = {"activation": act.name, "gamma": act.gamma}
    return Cell(init, _zeros_carry(hidden), input_proj, step, hidden, "vanilla", opts)


def lstm(
    hidden: int,
    *,
    forget_bias: float = 1.0,
    w_ih_init: str | _init.Initializer = "lecun_normal",
    w_hh_init: str | _init.Initializer = "orthogonal",
) -> Cell:
    """Long short-term memory cell, gate order (i, f, g, o) as PyTorch and cuDNN.

    ``z = x_t @ w_ih + h_{t-1} @ w_hh + b``; ``i, f, g, o = split(z)``;
    ``c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)``; ``h_t = sigmoid(o) tanh(c_t)``.

    Args:
        hidden: hidden size H.
        forget_bias: initial value of the forget-gate block of ``b`` (visible in params, not
            a hidden constant in the step; Gers et al. 2000, Jozefowicz et al. 2015).
        w_ih_init, w_hh_init: initializers of the input and recurrent weights (flax's
            defaults: LeCun normal and orthogonal). Other biases start at 0.

    Returns:
        A :class:`Cell` with params ``{"w_ih": (in, 4H), "w_hh": (H, 4H), "b": (4H,)}`` and
        carry :class:`LSTMState` ``(h, c)``.

    References:
        Hochreiter & Schmidhuber, "Long Short-Term Memory", 1997; Gers, Schmidhuber &
        Cummins, "Learning to Forget", 2000; Jozefowicz, Zaremba & Sutskever, "An Empirical
        Exploration of Recurrent Network Architectures", ICML 2015.
    """
    _checks.positive_int("hidden", hidden)
    forget_bias = _checks.real(
        "forget_bias", forget_bias, "Pass e.g. forget_bias=1.0 (the usual value)."
    )
    w_ih_fn, w_hh_fn = _init.get(w_ih_init), _init.get(w_hh_init)
    H = hidden

    def init(key, in_dim):
        _check_init_args(key, in_dim)
        k1, k2 = jax.random.split(key)
        b = jnp.zeros((4 * H,), jnp.float32).at[H : 2 * H].set(forget_bias)
        # Recurrent weights per gate block, so orthogonal init is orthogonal per gate.
        w_hh = jnp.concatenate(
            [w_hh_fn(k, (H, H)) for k in jax.random.split(k2, 4)], axis=-1
        )
        return {"w_ih": w_ih_fn(k1, (in_dim, 4 * H)), "w_hh": w_hh, "b": b}

    def init_carry(batch_shape=()):
        z = jnp.zeros(tuple(batch_shape) + (H,), jnp.float32)
        return LSTMState(h=z, c=z)

    def input_proj(params, xs):
        return _proj(xs, params["w_ih"], params["b"])

    def step(params, carry, xp):
        z = xp + carry.h @ params["w_hh"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return LSTMState(h=h, c=c), h

    return Cell(
        init, init_carry, input_proj, step, H, "lstm", {"forget_bias": forget_bias}
    )


def gru(
    hidden: int,
    *,
    reset_after: bool = True,
    w_ih_init: str | _init.Initializer = "lecun_normal",
    w_hh_init: str | _init.Initializer = "orthogonal",
) -> Cell:
    """Gated recurrent unit, gate order (r, z, n).

    ``r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)``, ``z`` likewise, and
    ``h_t = (1 - z) n + z h_{t-1}`` with, for ``reset_after=True`` (PyTorch, cuDNN, flax),
    ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``, and for ``reset_after=False``
    (Cho et al. 2014), ``n = tanh(x W_in + b_in + (r * h) W_hn + b_hn)``.

    Args:
        hidden: hidden size H.
        reset_after: where the reset gate applies (see above).
        w_ih_init, w_hh_init: initializers (flax's defaults); biases start at 0.

    Returns:
        A :class:`Cell` with params ``{"w_ih": (in, 3H), "w_hh": (H, 3H), "b_ih": (3H,),
        "b_hh": (3H,)}`` (PyTorch's layout) and an array carry ``(H,)``.

    References:
        Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder", 2014,
        arXiv:1406.1078; Chung et al., 2014, arXiv:1412.3555.
    """
    _checks.positive_int("hidden", hidden)
    _checks.boolean("reset_after", reset_after)
    w_ih_fn, w_hh_fn = _init.get(w_ih_init), _init.get(w_hh_init)
    H = hidden

    def init(key, in_dim):
        _check_init_args(key, in_dim)
        k1, k2 = jax.random.split(key)
        w_hh = jnp.concatenate(
            [w_hh_fn(k, (H, H)) for k in jax.random.split(k2, 3)], axis=-1
        )
        zeros = jnp.zeros((3 * H,), jnp.float32)
        return {
            "w_ih": w_ih_fn(k1, (in_dim, 3 * H)),
            "w_hh": w_hh,
            "b_ih": zeros,
            "b_hh": zeros,
        }

    def input_proj(params, xs):
        return _proj(xs, params["w_ih"], params["b_ih"])

    def step(params, h, xp):
        w_hh, b_hh = params["w_hh"], params["b_hh"]
        xr, xz, xn = jnp.split(xp, 3, axis=-1)
        if reset_after:
            hr, hz, hn = jnp.split(h @ w_hh + lead(b_hh, h.ndim), 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
        else:
            hrz = h @ w_hh[:, : 2 * H] + lead(b_hh[: 2 * H], h.ndim)
            hr, hz = jnp.split(hrz, 2, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + (r * h) @ w_hh[:, 2 * H :] + lead(b_hh[2 * H :], h.ndim))
        h = (1 - z) * n + z * h
        return h, h

    return Cell(
        init, _zeros_carry(H), input_proj, step, H, "gru", {"reset_after": reset_after}
    )
