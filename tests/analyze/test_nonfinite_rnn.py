"""The non-finite contract for the recurrent analyzers: a NaN or inf is located by a
``NonFinite`` record (as data, under ``jit`` and ``vmap``), values computed from it are NaN
(never ``-inf``, which is kept for exact zeros), eager calls warn and jitted calls do not.

The cell is a ReLU RNN on purpose: ReLU's derivative at NaN reads 0 in JAX, so without the
contract a NaN state gives an all-zero step Jacobian, a ``-inf`` log-norm and a ``-inf``
Lyapunov exponent, indistinguishable from an exactly vanished gradient. References: the
step index at which NaN enters is planted by hand; the finite values are compared with the
same analyzer on the clean input (the steps before the NaN) and with ``jax.jacrev``.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jgrad
from jgrad.analyze import (
    lyapunov_spectrum,
    pascanu_bound,
    rnn_grad_norms,
    rnn_jacobian_products,
    rnn_step_jacobians,
)
from jgrad.analyze._nonfinite import NonFiniteWarning

H, D, T = 4, 3, 8
CELL = jgrad.rnn.vanilla(H, "relu", weight_var=1.2, bias_var=0.3)
T0 = 5  # NaN planted in xs[T0 - 1]: the state s_T0 is the first non-finite one


def _loss(ys):
    return jnp.sum(jnp.sin(ys))


ANALYZERS = {
    "grad_norms": lambda p, x, c: rnn_grad_norms(CELL, p, x, c, _loss),
    "lyapunov": lambda p, x, c: lyapunov_spectrum(CELL, p, x, c),
    "pascanu": lambda p, x, c: pascanu_bound(CELL, p, x, c),
    "step_jacobians": lambda p, x, c: rnn_step_jacobians(CELL, p, x, c),
    "products": lambda p, x, c: rnn_jacobian_products(CELL, p, x, c),
}
RECORDED = ("grad_norms", "lyapunov", "pascanu")
JITTED = {name: jax.jit(f) for name, f in ANALYZERS.items()}


@pytest.fixture
def setup(rng):
    params = CELL.init(jax.random.key(3), D)
    # Every unit stays active on the clean input (non-negative recurrent weights, biases
    # above the input drive), so the clean values are finite: no exactly zero Jacobian.
    params = {
        "w_ih": 0.3 * params["w_ih"],
        "w_hh": jnp.abs(params["w_hh"]),
        "b": 2.0 + jnp.abs(params["b"]),
    }
    xs = jnp.asarray(rng.normal(0.5, 1.0, (T, D)), jnp.float32)
    c0 = jnp.asarray(np.abs(rng.normal(0, 0.5, (H,))) + 0.1, jnp.float32)
    return params, xs, c0


def _values(name, out):
    """The analyzer's numbers, as one float array."""
    if name == "grad_norms":
        return np.asarray(out.log10_norm)
    if name == "lyapunov":
        return np.asarray(out.exponents)
    if name == "pascanu":
        return np.append(np.asarray(out.log_norms), float(out.measured_log_rate))
    if name == "products":
        return np.asarray(out.log_scale)
    return np.asarray(out)


def test_clean_run_is_finite_with_an_empty_record(setup):
    params, xs, c0 = setup
    for name in ANALYZERS:
        out = JITTED[name](params, xs, c0)
        assert np.all(np.isfinite(_values(name, out))), name
        if name in RECORDED:
            assert (int(out.nonfinite.forward), int(out.nonfinite.backward)) == (-1, -1)


def test_nan_in_xs_located_and_propagated_as_nan(setup):
    params, xs, c0 = setup
    bad = xs.at[T0 - 1, 1].set(jnp.nan)
    clean_jac = np.asarray(JITTED["step_jacobians"](params, xs, c0))
    for name in ANALYZERS:
        vals = _values(name, JITTED[name](params, bad, c0))
        assert not np.any(vals == -np.inf), name  # NaN is never read as an exact zero
    flow = JITTED["grad_norms"](params, bad, c0)
    # The loss of NaN outputs has a NaN gradient from t = T down to 0.
    assert np.all(np.isnan(np.asarray(flow.log10_norm)))
    assert not np.any(np.asarray(flow.underflow))
    assert (int(flow.nonfinite.forward), int(flow.nonfinite.backward)) == (T0, T)
    # A loss linear in ys has a finite dL/ds_T (the direct term only); every earlier
    # gradient passes a step taken at a NaN state, which reads NaN (ReLU's derivative at
    # NaN would give an exact 0).
    flow = jax.jit(lambda p, x, c: rnn_grad_norms(CELL, p, x, c, jnp.sum))(
        params, bad, c0
    )
    log10 = np.asarray(flow.log10_norm)
    assert np.all(np.isnan(log10[:T])) and np.isfinite(log10[T])
    assert (int(flow.nonfinite.forward), int(flow.nonfinite.backward)) == (T0, T - 1)
    lam = JITTED["lyapunov"](params, bad, c0)
    assert np.all(np.isnan(np.asarray(lam.exponents)))
    assert (int(lam.nonfinite.forward), int(lam.nonfinite.backward)) == (T0, T0)
    pb = JITTED["pascanu"](params, bad, c0)
    assert np.all(np.isnan(np.asarray(pb.log_norms)))
    assert np.isnan(float(pb.measured_log_rate)) and np.isnan(float(pb.measured_factor))
    assert (int(pb.nonfinite.forward), int(pb.nonfinite.backward)) == (T0, T - 1)
    # J_t at finite states is the clean run's; from step T0 on it is NaN, not zero.
    jac = np.asarray(JITTED["step_jacobians"](params, bad, c0))
    np.testing.assert_array_equal(jac[: T0 - 1], clean_jac[: T0 - 1])
    assert np.all(np.isnan(jac[T0 - 1 :]))
    prods = JITTED["products"](params, bad, c0)
    assert np.all(np.isnan(np.asarray(prods.log_scale)))
    assert np.all(np.isnan(np.asarray(prods.matrix)))


def test_nan_in_params_located_at_step_one(setup):
    params, xs, c0 = setup
    bad = dict(params, w_hh=params["w_hh"].at[2, 1].set(jnp.nan))
    for name in RECORDED:
        out = JITTED[name](bad, xs, c0)
        assert int(out.nonfinite.forward) == 1, name
        assert bool(out.nonfinite.found)
        assert not np.any(_values(name, out) == -np.inf), name
    assert np.all(np.isnan(np.asarray(JITTED["step_jacobians"](bad, xs, c0))))


def test_vmapped_records_one_per_sequence(setup):
    params, xs, c0 = setup
    starts = [None, 2, T0]
    batch = jnp.stack(
        [xs if t is None else xs.at[t - 1, 0].set(jnp.nan) for t in starts]
    )
    want = np.array([-1 if t is None else t for t in starts])
    for name in RECORDED:
        f = jax.jit(jax.vmap(ANALYZERS[name], in_axes=(None, 0, None)))
        out = f(params, batch, c0)
        np.testing.assert_array_equal(np.asarray(out.nonfinite.forward), want)
        vals = _values(name, jax.tree.map(lambda a: a[0], out))
        assert np.all(np.isfinite(vals)), name  # the clean sequence is untouched
    jac = jax.jit(jax.vmap(ANALYZERS["step_jacobians"], in_axes=(None, 0, None)))(
        params, batch, c0
    )
    bad_steps = np.isnan(np.asarray(jac)).all(axis=(2, 3))
    np.testing.assert_array_equal(bad_steps.argmax(axis=1)[1:], want[1:] - 1)
    assert not bad_steps[0].any()


@pytest.mark.parametrize("name", list(ANALYZERS))
def test_eager_call_warns_and_jitted_call_does_not(name, setup):
    params, xs, c0 = setup
    bad = xs.at[T0 - 1, 2].set(jnp.inf)
    with pytest.warns(
        NonFiniteWarning, match=rf"{name.split('_')[0]}.* at step {T0}\b"
    ):
        ANALYZERS[name](params, bad, c0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        JITTED[name](params, bad, c0)
        if name == "grad_norms":
            ANALYZERS[name](params, xs, c0)  # eager and finite: silent too


def test_exact_zero_gradient_stays_minus_inf_without_a_record(rng):
    """A loss of ys[k] only: dL/ds_t is exactly 0 for t > k + 1 (-inf, no record), and a
    ReLU cell whose every unit is dead has exactly zero step Jacobians (exponents -inf)."""
    cell = jgrad.rnn.vanilla(H, "tanh")
    params = cell.init(jax.random.key(5), D)
    xs = jnp.asarray(rng.normal(0, 1, (T, D)), jnp.float32)
    c0 = jnp.asarray(rng.normal(0, 0.5, (H,)), jnp.float32)
    k = 3
    flow = jax.jit(
        lambda p, x, c: rnn_grad_norms(cell, p, x, c, lambda ys: jnp.sum(ys[k]))
    )(params, xs, c0)
    log10 = np.asarray(flow.log10_norm)
    assert np.all(log10[k + 2 :] == -np.inf) and np.all(np.isfinite(log10[: k + 2]))
    assert (int(flow.nonfinite.forward), int(flow.nonfinite.backward)) == (-1, -1)
    # Reference for the finite part: ||dL/ds_t|| from jax.grad of the unrolled loss.
    ref = jax.grad(
        lambda s: jnp.sum(jgrad.rnn.unroll(cell, params, xs[1:], s)[1][k - 1])
    )(jgrad.rnn.unroll(cell, params, xs[:1], c0)[0])
    np.testing.assert_allclose(log10[1], np.log10(np.linalg.norm(ref)), rtol=1e-5)

    dead = jgrad.rnn.vanilla(H, "relu")
    dp = dead.init(jax.random.key(6), D)
    dp = dict(dp, b=jnp.full((H,), -1e3, jnp.float32))  # every unit off at every step
    lam = jax.jit(lambda p, x, c: lyapunov_spectrum(dead, p, x, c))(dp, xs, c0)
    assert np.all(np.asarray(lam.exponents) == -np.inf)
    assert (int(lam.nonfinite.forward), int(lam.nonfinite.backward)) == (-1, -1)
    pb = jax.jit(lambda p, x, c: pascanu_bound(dead, p, x, c))(dp, xs, c0)
    assert np.all(np.asarray(pb.log_norms) == -np.inf)
    assert float(pb.measured_log_rate) == -np.inf and float(pb.measured_factor) == 0
    assert not bool(pb.nonfinite.found)


# ------------------------------------------------------ traced seq_length out of range


def test_traced_seq_length_out_of_range_gives_nan_not_a_clamp(rng):
    cell = jgrad.rnn.gru(H)
    params = cell.init(jax.random.key(7), D)
    B = 4
    xs = jnp.asarray(rng.normal(0, 1, (B, T, D)), jnp.float32)
    c0 = cell.init_carry((B,))
    lengths = jnp.array([3, T + 1, -1, T], jnp.int32)
    bad = np.array([False, True, True, False])

    def one(x, c, n):
        return jgrad.rnn.unroll(cell, params, x, c, seq_length=n)

    for final, ys in (
        jax.jit(jax.vmap(one))(xs, c0, lengths),
        jax.jit(lambda n: jgrad.rnn.unroll_batch(cell, params, xs, c0, seq_length=n))(
            lengths
        ),
    ):
        final, ys = np.asarray(final), np.asarray(ys)
        assert np.all(np.isnan(final[bad])) and np.all(np.isnan(ys[bad]))
        assert np.all(np.isfinite(final[~bad])) and np.all(np.isfinite(ys[~bad]))
        # the in-range sequences equal their unpadded runs
        ref_final, _ = jgrad.rnn.unroll(cell, params, xs[0, :3], c0[0])
        np.testing.assert_allclose(final[0], np.asarray(ref_final), rtol=1e-5)
    # Under checkify the same call is an error that names the length.
    err, _ = checkify.checkify(jax.jit(jax.vmap(one)))(xs, c0, lengths)
    with pytest.raises(
        checkify.JaxRuntimeError, match=r"seq_length must be in \[0, T\]"
    ):
        err.throw()
    err, _ = checkify.checkify(jax.jit(jax.vmap(one)))(
        xs, c0, jnp.array([3, 1, 0, T], jnp.int32)
    )
    assert err.get() is None
