"""jgrad.rnn cells against flax.linen and PyTorch given converted weights.

The other libraries are independent implementations: equal outputs at every step and equal
gradients (mapped back through the converters) pin jgrad's gate order, bias placement,
forget-gate bias, reset-gate placement and carry order. Every parameter, input, initial
carry and loss weight is random (biases included), so a swapped gate or a dropped bias
changes the numbers. PyTorch is optional: its tests skip when it is not installed.
"""

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.rnn import LSTMState
from tests.helpers import default_promotion

B, T, IN, H = 3, 7, 4, 5
RTOL, ATOL = 1e-5, 1e-5
# Gradients sum over steps and batch, so allow a little more float32 rounding.
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5

# One instance per cell, so each jitted jgrad function compiles once for the module.
CELLS = {
    "lstm": jgrad.rnn.lstm(H),
    "gru": jgrad.rnn.gru(H),
    "tanh": jgrad.rnn.vanilla(H, "tanh"),
    "relu": jgrad.rnn.vanilla(H, "relu"),
}


def _key(seed):
    return jax.random.key(seed, impl="rbg")


def _randn(rng, shape, scale=1.0, loc=0.0):
    return np.asarray(rng.normal(loc, scale, shape), np.float32)


def _params(name, rng):
    """Random params of the cell's structure (no init compiled): weights ~ 1/sqrt(fan_in),
    every bias random; the LSTM's forget block is centred on 1 like its forget bias."""
    cell = CELLS[name]
    shapes = jax.eval_shape(lambda k: cell.init(k, IN), _key(0))
    p = {
        k: _randn(rng, s.shape, 1.0 / np.sqrt(s.shape[0]) if len(s.shape) == 2 else 0.4)
        for k, s in shapes.items()
    }
    if name == "lstm":
        p["b"][H : 2 * H] += 1.0
    return jax.tree.map(jnp.asarray, p)


def _carry(name, rng):
    """A random batched initial carry (B, H) (jgrad's structure)."""
    h = jnp.asarray(_randn(rng, (B, H), 0.5))
    if name == "lstm":
        return LSTMState(h=h, c=jnp.asarray(_randn(rng, (B, H), 0.5)))
    return h


_CACHE = {}


def _jgrad_fn(name):
    """Jitted ``(ys, (d params, d xs))`` for ``L = sum(w * ys**2)`` over a batch (vmap)."""
    if name not in _CACHE:
        cell = CELLS[name]

        def loss(p, xs, c0, w):
            run = jax.vmap(lambda x, c: jgrad.rnn.unroll(cell, p, x, c)[1])
            ys = run(xs, c0)
            return jnp.sum(w * ys**2), ys

        _CACHE[name] = jax.jit(
            lambda p, xs, c0, w: jax.grad(loss, argnums=(0, 1), has_aux=True)(
                p, xs, c0, w
            )[::-1]
        )
    return _CACHE[name]


def _np(tree):
    return jax.tree.map(np.asarray, tree)


# ------------------------------------------------------------------------ flax.linen

FLAX = [
    ("lstm", fnn.LSTMCell),
    ("lstm", fnn.OptimizedLSTMCell),
    ("gru", fnn.GRUCell),
    ("tanh", fnn.SimpleCell),
]


@pytest.mark.parametrize("name,flax_cls", FLAX, ids=[c.__name__ for _, c in FLAX])
def test_matches_flax_outputs_and_gradients(rng, name, flax_cls):
    cell = CELLS[name]
    params = _params(name, rng)
    xs = jnp.asarray(_randn(rng, (B, T, IN), loc=0.2))
    c0 = _carry(name, rng)
    w = jnp.asarray(_randn(rng, (B, T, H)))

    ys, (gp, gx) = _np(_jgrad_fn(name)(params, xs, c0, w))

    model = fnn.RNN(flax_cls(H))
    fc0 = (c0.c, c0.h) if name == "lstm" else c0  # flax's LSTM carry is (c, h)

    def flax_loss(fp, x):
        with default_promotion():
            out = model.apply({"params": {"cell": fp}}, x, initial_carry=fc0)
        return jnp.sum(w * out**2), out

    fparams = jgrad.rnn.to_flax(cell, params)
    with default_promotion():
        shapes = jax.eval_shape(model.init, _key(1), xs)["params"]["cell"]
    # Every flax parameter is set, with flax's names and shapes.
    chex.assert_trees_all_equal_shapes_and_dtypes(
        fparams, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
    )

    (f_gp, f_gx), f_ys = jax.grad(flax_loss, argnums=(0, 1), has_aux=True)(fparams, xs)
    np.testing.assert_allclose(ys, f_ys, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gx, f_gx, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    mapped = _np(jgrad.rnn.from_flax(cell, f_gp))
    if name == "gru":
        # flax has no recurrent bias for r and z: to_flax folds b_hh[r], b_hh[z] into the
        # input bias, so the flax gradient of those maps to b_ih only; jgrad's b_hh[:2H]
        # gradient equals its b_ih[:2H] gradient (they enter the same sum; summed in another
        # order, 1.1e-6 apart relative on an H100).
        np.testing.assert_allclose(gp["b_hh"][: 2 * H], gp["b_ih"][: 2 * H], rtol=1e-5)
        np.testing.assert_allclose(
            gp["b_hh"][2 * H :], mapped["b_hh"][2 * H :], rtol=GRAD_RTOL, atol=GRAD_ATOL
        )
        gp = {k: v for k, v in gp.items() if k != "b_hh"}
        mapped = {k: v for k, v in mapped.items() if k != "b_hh"}
    chex.assert_trees_all_close(gp, mapped, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    # The test is not vacuous: every gradient is far from zero.
    assert min(float(np.max(np.abs(a))) for a in jax.tree.leaves(gp)) > 1e-3


def test_flax_mismatch_detected_with_wrong_carry_order(rng):
    """Handing flax jgrad's (h, c) order instead of (c, h) changes the outputs, so the
    carry order is really checked above."""
    cell = CELLS["lstm"]
    params = _params("lstm", rng)
    xs = jnp.asarray(_randn(rng, (B, T, IN)))
    c0 = _carry("lstm", rng)
    ys = _jgrad_fn("lstm")(params, xs, c0, jnp.ones((B, T, H)))[0]
    with default_promotion():
        wrong = fnn.RNN(fnn.LSTMCell(H)).apply(
            {"params": {"cell": jgrad.rnn.to_flax(cell, params)}},
            xs,
            initial_carry=(c0.h, c0.c),
        )
    assert float(jnp.max(jnp.abs(ys - wrong))) > 1e-3


@pytest.mark.parametrize("name", ["lstm", "tanh", "relu"])
def test_flax_round_trip_recovers_params(rng, name):
    cell = CELLS[name]
    params = _params(name, rng)
    back = jgrad.rnn.from_flax(cell, jgrad.rnn.to_flax(cell, params))
    chex.assert_trees_all_equal(_np(back), _np(params))
    # The {"params": ...} wrapper is accepted too.
    back = jgrad.rnn.from_flax(cell, {"params": jgrad.rnn.to_flax(cell, params)})
    chex.assert_trees_all_equal(_np(back), _np(params))


def test_flax_round_trip_gru_preserves_outputs(rng):
    cell = CELLS["gru"]
    params = _params("gru", rng)
    back = jgrad.rnn.from_flax(cell, jgrad.rnn.to_flax(cell, params))
    # The r, z recurrent biases moved into the input bias; the function is the same.
    np.testing.assert_allclose(
        back["b_ih"][: 2 * H],
        params["b_ih"][: 2 * H] + params["b_hh"][: 2 * H],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(back["b_hh"][: 2 * H], 0.0)
    xs = jnp.asarray(_randn(rng, (B, T, IN)))
    c0, w = _carry("gru", rng), jnp.asarray(_randn(rng, (B, T, H)))
    ys = _jgrad_fn("gru")(params, xs, c0, w)[0]
    ys_back = _jgrad_fn("gru")(back, xs, c0, w)[0]
    np.testing.assert_allclose(ys_back, ys, rtol=RTOL, atol=ATOL)


def test_to_flax_rejects_reset_before_gru(rng):
    cell = jgrad.rnn.gru(H, reset_after=False)
    with pytest.raises(ValueError, match="`cell`.*reset_after"):
        jgrad.rnn.to_flax(cell, _params("gru", rng))


# --------------------------------------------------------------------------- PyTorch

TORCH = [("lstm", "LSTM", None), ("gru", "GRU", None), ("tanh", "RNN", "tanh")]
TORCH += [("relu", "RNN", "relu")]


def _torch_module(torch, kind, nonlinearity):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cls = getattr(torch.nn, kind)
    kw = {} if nonlinearity is None else {"nonlinearity": nonlinearity}
    return cls(IN, H, batch_first=True, **kw).float()


def _torch_carry(torch, name, c0):
    t = lambda a: torch.from_numpy(np.asarray(a)[None].copy())  # noqa: E731 (1, B, H)
    return (t(c0.h), t(c0.c)) if name == "lstm" else t(c0)


@pytest.mark.parametrize("name,kind,nonlin", TORCH, ids=[n for n, _, _ in TORCH])
def test_matches_torch_outputs_and_gradients(rng, name, kind, nonlin):
    torch = pytest.importorskip("torch")
    cell = CELLS[name]
    params = _params(name, rng)
    xs = _randn(rng, (B, T, IN), loc=0.2)
    c0 = _carry(name, rng)
    w = _randn(rng, (B, T, H))

    ys, (gp, gx) = _np(_jgrad_fn(name)(params, jnp.asarray(xs), c0, jnp.asarray(w)))

    module = _torch_module(torch, kind, nonlin)
    sd = jgrad.rnn.to_torch(cell, params)
    module.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    x_t = torch.from_numpy(xs).requires_grad_(True)
    out, _ = module(x_t, _torch_carry(torch, name, c0))
    (torch.from_numpy(w) * out**2).sum().backward()

    np.testing.assert_allclose(ys, out.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gx, x_t.grad.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL)
    g = {k: v.grad.numpy() for k, v in module.named_parameters()}
    close = dict(rtol=GRAD_RTOL, atol=GRAD_ATOL)
    np.testing.assert_allclose(gp["w_ih"], g["weight_ih_l0"].T, **close)
    np.testing.assert_allclose(gp["w_hh"], g["weight_hh_l0"].T, **close)
    if name == "gru":
        np.testing.assert_allclose(gp["b_ih"], g["bias_ih_l0"], **close)
        np.testing.assert_allclose(gp["b_hh"], g["bias_hh_l0"], **close)
    else:
        # One jgrad bias; torch's two biases enter the same sum, so both have its grad.
        np.testing.assert_allclose(gp["b"], g["bias_ih_l0"], **close)
        np.testing.assert_allclose(gp["b"], g["bias_hh_l0"], **close)
    assert min(float(np.max(np.abs(a))) for a in jax.tree.leaves(gp)) > 1e-3


@pytest.mark.parametrize("name,kind,nonlin", TORCH, ids=[n for n, _, _ in TORCH])
def test_from_torch_round_trip_and_torch_init(rng, name, kind, nonlin):
    torch = pytest.importorskip("torch")
    cell = CELLS[name]
    params = _params(name, rng)
    sd = jgrad.rnn.to_torch(cell, params)
    assert all(v.dtype == np.float32 for v in sd.values())
    chex.assert_trees_all_equal(_np(jgrad.rnn.from_torch(cell, sd)), _np(params))

    # A module with torch's own init (both biases non-zero): from_torch adds the two
    # biases where jgrad has one, and the outputs agree.
    module = _torch_module(torch, kind, nonlin)
    assert float(module.bias_hh_l0.detach().abs().min()) > 0
    back = jgrad.rnn.from_torch(cell, module.state_dict())
    xs = _randn(rng, (B, T, IN))
    c0 = _carry(name, rng)
    ys = _jgrad_fn(name)(back, jnp.asarray(xs), c0, jnp.ones((B, T, H)))[0]
    with torch.no_grad():
        out, _ = module(torch.from_numpy(xs), _torch_carry(torch, name, c0))
    np.testing.assert_allclose(ys, out.numpy(), rtol=RTOL, atol=ATOL)


def test_to_torch_rejects_what_torch_lacks(rng):
    with pytest.raises(ValueError, match="`cell`.*reset_after"):
        jgrad.rnn.to_torch(jgrad.rnn.gru(H, reset_after=False), _params("gru", rng))
    with pytest.raises(ValueError, match="`cell`.*'gelu'"):
        jgrad.rnn.to_torch(jgrad.rnn.vanilla(H, "gelu"), _params("tanh", rng))


def test_from_torch_names_missing_key(rng):
    sd = jgrad.rnn.to_torch(CELLS["lstm"], _params("lstm", rng))
    with pytest.raises(ValueError, match="`state_dict`.*weight_ih_l1"):
        jgrad.rnn.from_torch(CELLS["lstm"], sd, layer=1)


def test_converters_reject_non_cell(rng):
    params = _params("lstm", rng)
    for fn in (jgrad.rnn.to_torch, jgrad.rnn.to_flax):
        with pytest.raises(ValueError, match="`cell`"):
            fn(tuple(CELLS["lstm"]), params)
