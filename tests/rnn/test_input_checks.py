"""Bad input to jgrad.rnn and the recurrent analyzers is a ValueError before tracing that
names the argument, the expected and the received value: cell hyperparameters, PRNG keys,
params of another cell type or width, state dicts that a cell cannot represent, sequence
lengths, and non-float inputs. PyTorch is optional: state dicts are built by hand as NumPy
arrays in PyTorch's layout, and the tests that build real torch modules skip without it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import analyze, rnn

H, D, T, B = 8, 3, 6, 4


def _torch_sd(rng, gates, hidden, in_dim, *, extra=()):
    """A PyTorch-layout state dict for layer 0: weight_ih (G, in), weight_hh (G, H),
    bias_ih/bias_hh (G,), G = gates * hidden, random values."""
    G = gates * hidden
    sd = {
        "weight_ih_l0": rng.normal(0, 0.3, (G, in_dim)).astype(np.float32),
        "weight_hh_l0": rng.normal(0, 0.3, (G, hidden)).astype(np.float32),
        "bias_ih_l0": rng.normal(0, 0.3, (G,)).astype(np.float32),
        "bias_hh_l0": rng.normal(0, 0.3, (G,)).astype(np.float32),
    }
    for name in extra:
        sd[name] = rng.normal(0, 0.3, (2, hidden)).astype(np.float32)
    return sd


def test_from_torch_refuses_another_cell_type(rng):
    # The matching dict converts (a transpose; the two LSTM biases added).
    sd = _torch_sd(rng, 4, H, D)
    p = rnn.from_torch(rnn.lstm(H), sd)
    np.testing.assert_array_equal(np.asarray(p["w_hh"]), sd["weight_hh_l0"].T)
    np.testing.assert_allclose(
        np.asarray(p["b"]), sd["bias_ih_l0"] + sd["bias_hh_l0"], rtol=1e-7
    )
    with pytest.raises(
        ValueError, match=r"weight_ih_l0.*\(24, in_dim\).*4 gate blocks"
    ):
        rnn.from_torch(rnn.gru(H), _torch_sd(rng, 4, H, D))  # an LSTM dict for a GRU
    with pytest.raises(
        ValueError, match=r"weight_ih_l0.*\(32, in_dim\).*3 gate blocks"
    ):
        rnn.from_torch(rnn.lstm(H), _torch_sd(rng, 3, H, D))  # a GRU dict for an LSTM


def test_from_torch_refuses_another_hidden_size(rng):
    with pytest.raises(
        ValueError, match=r"`state_dict\['weight_ih_l0'\]`.*\(32, in_dim\)"
    ):
        rnn.from_torch(rnn.lstm(H), _torch_sd(rng, 4, 16, D))
    with pytest.raises(ValueError, match=r"`state_dict\['weight_hh_l0'\]`.*\(8, 8\)"):
        sd = _torch_sd(rng, 1, H, D)
        sd["weight_hh_l0"] = sd["weight_hh_l0"][:, :4]
        rnn.from_torch(rnn.vanilla(H), sd)


def test_from_torch_refuses_proj_size_and_reverse_direction(rng):
    sd = _torch_sd(rng, 4, H, D, extra=("weight_hr_l0",))
    with pytest.raises(ValueError, match="proj_size.*'weight_hr_l0'"):
        rnn.from_torch(rnn.lstm(H), sd)
    sd = _torch_sd(rng, 3, H, D)
    sd.update({k + "_reverse": v for k, v in _torch_sd(rng, 3, H, D).items()})
    with pytest.raises(ValueError, match="reverse direction.*weight_hh_l0_reverse"):
        rnn.from_torch(rnn.gru(H), sd)
    # The fix the message gives works: the reverse entries, suffix removed, convert.
    rev = {k.removesuffix("_reverse"): v for k, v in sd.items() if "_reverse" in k}
    assert rnn.from_torch(rnn.gru(H), rev)["w_hh"].shape == (H, 3 * H)


def test_from_torch_refuses_real_torch_modules():
    torch = pytest.importorskip("torch")
    proj = torch.nn.LSTM(D, H, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        rnn.from_torch(rnn.lstm(H), proj.state_dict())
    bi = torch.nn.GRU(D, H, bidirectional=True)
    with pytest.raises(ValueError, match="reverse direction"):
        rnn.from_torch(rnn.gru(H), bi.state_dict())
    with pytest.raises(ValueError, match="gate blocks"):
        rnn.from_torch(rnn.gru(H), torch.nn.LSTM(D, H).state_dict())


def test_from_flax_refuses_another_width_or_type(getkey):
    wide = rnn.to_flax(rnn.lstm(16), rnn.lstm(16).init(getkey(), D))
    with pytest.raises(
        ValueError, match=r"`flax_params\['ii'\]\['kernel'\]`.*8 features"
    ):
        rnn.from_flax(rnn.lstm(H), wide)
    gru = rnn.to_flax(rnn.gru(H), rnn.gru(H).init(getkey(), D))
    with pytest.raises(
        ValueError, match=r"`flax_params` must contain \['ii'\]\['kernel'\].*LSTMCell"
    ):
        rnn.from_flax(rnn.lstm(H), gru)


CELLS = {"vanilla": rnn.vanilla(H), "lstm": rnn.lstm(H), "gru": rnn.gru(H)}


def _entry_points(cell, params, xs):
    c0, cb = cell.init_carry(), cell.init_carry((B,))
    xb = jnp.stack([xs] * B)
    return {
        "unroll": lambda: rnn.unroll(cell, params, xs, c0),
        "unroll_batch": lambda: rnn.unroll_batch(cell, params, xb, cb),
        "to_torch": lambda: rnn.to_torch(cell, params),
        "to_flax": lambda: rnn.to_flax(cell, params),
        "rnn_step_jacobians": lambda: analyze.rnn_step_jacobians(cell, params, xs, c0),
        "rnn_grad_norms": lambda: analyze.rnn_grad_norms(cell, params, xs, c0, jnp.sum),
        "lyapunov_spectrum": lambda: analyze.lyapunov_spectrum(cell, params, xs, c0),
    }


@pytest.mark.parametrize(
    ("cell_name", "other", "key"),
    [
        ("lstm", rnn.gru(H), "'b'"),  # GRU params for an LSTM: was KeyError: 'b'
        ("gru", rnn.lstm(H), "'b_hh'"),
        ("lstm", rnn.lstm(16), r"\['b'\]"),  # a 16-wide LSTM for an 8-wide one
        ("vanilla", rnn.vanilla(4), r"\['b'\]"),
    ],
)
def test_params_of_another_cell_are_refused_naming_the_key(cell_name, other, key, rng):
    cell = CELLS[cell_name]
    params = other.init(jax.random.key(1), D)
    xs = jnp.asarray(rng.normal(0, 1, (T, D)), jnp.float32)
    for name, call in _entry_points(cell, params, xs).items():
        with pytest.raises(ValueError, match=rf"`params.*{key}") as err:
            call()
        assert "cell.init(key, in_dim)" in str(err.value), name


def test_params_with_an_int_leaf_refused(rng):
    cell = CELLS["vanilla"]
    params = cell.init(jax.random.key(1), D)
    params = dict(params, b=jnp.arange(H))
    xs = jnp.asarray(rng.normal(0, 1, (T, D)), jnp.float32)
    with pytest.raises(ValueError, match=r"`params\['b'\]` must be a real floating"):
        rnn.unroll(cell, params, xs, cell.init_carry())


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64, jnp.bool_])
def test_non_float_xs_refused(dtype, rng):
    cell = CELLS["gru"]
    params = cell.init(jax.random.key(1), D)
    xs = jnp.asarray(rng.normal(0, 3, (T, D))).astype(dtype)
    for name, call in _entry_points(cell, params, xs).items():
        if name.startswith("to_"):
            continue
        with pytest.raises(ValueError, match="`xs` must be a real floating-point") as e:
            call()
        assert str(jnp.dtype(dtype)) in str(e.value), name


def test_cell_hyperparameters_checked():
    for kw in (
        {"weight_var": float("nan")},
        {"weight_var": -1.0},
        {"bias_var": float("inf")},
        {"input_var": float("nan")},
    ):
        (name,) = kw
        with pytest.raises(ValueError, match=f"`{name}`"):
            rnn.vanilla(H, "tanh", w_hh_init="he_normal", **kw)
    for bad in (float("nan"), float("inf"), "1.0", None):
        with pytest.raises(ValueError, match="`forget_bias` must be a finite real"):
            rnn.lstm(H, forget_bias=bad)


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_int_seed_as_key_refused(cell_name):
    with pytest.raises(
        ValueError, match="`key` must be a JAX PRNG key.*jax.random.key"
    ):
        CELLS[cell_name].init(0, D)


def _lengths_setup(rng):
    cell = CELLS["lstm"]
    params = cell.init(jax.random.key(2), D)
    xs = jnp.asarray(rng.normal(0, 1, (B, T, D)), jnp.float32)
    return cell, params, xs


@pytest.mark.parametrize("length", [5.5, T + 1, -1, np.float32(3.0)])
def test_bad_seq_length_refused(length, rng):
    """One length (both drivers) and the same value in a concrete (B,) array."""
    cell, params, xs = _lengths_setup(rng)
    with pytest.raises(ValueError, match="`seq_length` must"):
        rnn.unroll(cell, params, xs[0], cell.init_carry(), seq_length=length)
    c0 = cell.init_carry((B,))
    with pytest.raises(ValueError, match="`seq_length` must"):
        rnn.unroll_batch(cell, params, xs, c0, seq_length=length)
    lengths = np.array([2, length, 1, T], dtype=np.asarray(length).dtype)
    with pytest.raises(ValueError, match="`seq_length` must"):
        rnn.unroll_batch(cell, params, xs, c0, seq_length=lengths)


@pytest.mark.parametrize(
    ("lengths", "match"),
    [
        (np.array([3, 2, 6]), r"\(B,\) = \(4,\).*got shape \(3,\)"),  # wrong length
        (np.array([[3, 2, 6, 1]]), r"got shape \(1, 4\)"),
        (np.array([3, 2, 7, 1]), r"\[0, T\] = \[0, 6\].*seq_length\[2\] = 7"),
        (np.array([3, -1, 6, 1]), r"seq_length\[1\] = -1"),
        (np.array([3.0, 2.5, 6.0, 1.0]), "integer array.*float"),
        (jnp.array([True, False, True, True]), "integer array.*bool"),
    ],
)
def test_bad_lengths_array_refused_by_unroll_batch(lengths, match, rng):
    cell, params, xs = _lengths_setup(rng)
    with pytest.raises(ValueError, match=match):
        rnn.unroll_batch(cell, params, xs, cell.init_carry((B,)), seq_length=lengths)


def test_lengths_array_given_to_unroll_refused(rng):
    cell, params, xs = _lengths_setup(rng)
    with pytest.raises(ValueError, match="`seq_length` must be one integer.*jax.vmap"):
        rnn.unroll(cell, params, xs[0], cell.init_carry(), seq_length=np.array([3, 4]))
    # A valid concrete (B,) int array in [0, T] runs, equal to the unpadded runs.
    lengths = np.array([0, 2, T, 5], np.int32)
    final, ys = rnn.unroll_batch(
        cell, params, xs, cell.init_carry((B,)), seq_length=lengths
    )
    for b, n in enumerate(lengths):
        if n == 0:
            np.testing.assert_array_equal(np.asarray(final.h[b]), 0.0)
            continue
        ref, ref_ys = rnn.unroll(cell, params, xs[b, :n], cell.init_carry())
        np.testing.assert_allclose(np.asarray(final.h[b]), np.asarray(ref.h), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(ys[b, :n]), np.asarray(ref_ys), rtol=1e-5)
        assert np.all(np.asarray(ys[b, n:]) == 0)


def test_bidirectional_refuses_params_or_carries_that_are_not_pairs():
    cell = rnn.lstm(4)
    p = cell.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (5, 3))
    carries = (cell.init_carry(), cell.init_carry())
    with pytest.raises(ValueError, match=r"`params` must be a pair.*got a dict"):
        rnn.bidirectional(cell, cell, p, xs, carries)
    with pytest.raises(ValueError, match=r"`carries0` must be a pair.*length 1"):
        rnn.bidirectional(cell, cell, (p, p), xs, carries[:1])
    # a pair runs both directions: the reverse half equals unroll(reverse=True)
    _, ys = rnn.bidirectional(cell, cell, (p, p), xs, carries)
    _, ref = rnn.unroll(cell, p, xs, cell.init_carry(), reverse=True)
    assert ys.shape == (5, 8)
    assert jnp.allclose(ys[:, 4:], ref, rtol=1e-6, atol=1e-6)
