"""The non-finite contract of the feedforward analyzers (docs/api.md, "Non-finite values").

Every public analyzer returns, as data that survives jit and vmap, where its values first
went NaN or inf (``result.nonfinite``); values computed from a non-finite one are NaN,
``-inf`` only for an exact zero; eager calls warn. References here are independent: a
NumPy loop over the layers (float32 for where the overflow happens, float64 for the norms
before it) and the position where a NaN was planted.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import analyze, nn
from jgrad.analyze import NonFiniteWarning


def _loss(y):
    return jnp.sum(jnp.square(y))


# name -> (fn(net, params, x), values(result): the float arrays, per-layer flag)
# ``per_layer``: the record counts every layer (layer_grad_norms) rather than blocks.
ANALYZERS = {
    "layer_grad_norms": (
        lambda net, p, x: analyze.layer_grad_norms(net, p, x, _loss),
        lambda r: [r.log10_norm] + jax.tree.leaves(r.param_log10_norm),
        True,
    ),
    "output_norms": (
        lambda net, p, x: analyze.output_norms(
            net,
            p,
            x,
            probe_key=jax.random.key(0),
            min_lanczos_steps=2,
            max_lanczos_steps=4,
        ),
        lambda r: [r.log_spectral_norm, r.log_mean_sq],
        False,
    ),
    "output_norms_matrix_free": (
        lambda net, p, x: analyze.output_norms(
            net,
            p,
            x,
            probe_key=jax.random.key(0),
            method="matrix_free",
            block_size=1,
            krylov_steps=1,
            probes=2,
            lanczos_products=1,
            lanczos_steps=2,
        ),
        lambda r: [r.log_spectral_norm, r.log_mean_sq],
        False,
    ),
    "output_spectra": (
        lambda net, p, x: analyze.output_spectra(net, p, x),
        lambda r: list(r.log_sv),
        False,
    ),
    "input_output_spectrum": (
        lambda net, p, x: analyze.input_output_spectrum(net, p, x),
        lambda r: [r.log_sv],
        False,
    ),
    "output_sweep": (
        lambda net, p, x: analyze.output_sweep(net, p, x),
        lambda r: [v for m in r.products for v in (m.matrix, m.log_scale)],
        False,
    ),
    "layer_jacobians": (
        lambda net, p, x: analyze.layer_jacobians(net, p, x),
        lambda r: list(r.mats),
        False,
    ),
}
NAMES = sorted(ANALYZERS)


@pytest.fixture(scope="module")
def small():
    """A 4-block tanh MLP (blocks: dense + tanh), width 6, and a random example."""
    net = nn.mlp(4, 6, activation="tanh", init="gaussian", weight_var=1.5)
    _, params = net.init(jax.random.key(10), (6,))
    x = jax.random.normal(jax.random.key(11), (6,))
    return net, params, x


def _all(values, pred):
    return all(bool(pred(np.asarray(v)).all()) for v in values)


@pytest.mark.parametrize("name", NAMES)
def test_nan_input_gives_nan_and_forward_index_0_jitted_and_vmapped(name, small):
    net, params, x = small
    fn, values, _ = ANALYZERS[name]
    xn = x.at[3].set(jnp.nan)
    got = jax.jit(lambda v: fn(net, params, v))(xn)
    assert int(got.nonfinite.forward) == 0
    assert int(got.nonfinite.backward) == -1
    assert _all(values(got), np.isnan)  # NaN, never -inf or a finite number
    both = jax.jit(jax.vmap(lambda v: fn(net, params, v)))(jnp.stack([x, xn]))
    np.testing.assert_array_equal(np.asarray(both.nonfinite.forward), [-1, 0])
    np.testing.assert_array_equal(np.asarray(both.nonfinite.backward), [-1, -1])
    assert _all([v[0] for v in values(both)], np.isfinite)
    assert _all([v[1] for v in values(both)], np.isnan)


@pytest.mark.parametrize("name", NAMES)
def test_nan_in_one_layers_params_is_reported_at_that_layer(name, small):
    net, params, x = small
    fn, values, per_layer = ANALYZERS[name]
    params = list(params)
    # params[4] is the dense layer of block 3 (layers: dense, tanh, dense, tanh, ...):
    # the first non-finite output is layer 5 (1-based) = block 3
    params[4] = {"w": params[4]["w"].at[1, 2].set(jnp.nan), "b": params[4]["b"]}
    got = jax.jit(lambda p: fn(net, p, x))(params)
    assert int(got.nonfinite.forward) == (5 if per_layer else 3)
    vals = values(got)
    if name == "layer_jacobians":
        # J_3 = diag(tanh'(a_3)) W^T holds the NaN weight although h_2 is finite: the
        # backward index; J_4 is computed at the NaN h_3: all NaN
        assert int(got.nonfinite.backward) == 3
        assert _all(vals[:2], np.isfinite) and bool(np.isnan(vals[2]).any())
        assert _all(vals[3:], np.isnan)
        return
    assert int(got.nonfinite.backward) == -1
    if name == "layer_grad_norms":  # every dL/dh_k depends on the NaN output
        assert _all(vals[:1], np.isnan)
    else:  # every d y / d h_l is linearized at the NaN h_3 and above
        assert _all(vals, np.isnan)


@pytest.mark.parametrize("name", NAMES)
def test_all_finite_gives_no_record_and_no_warning(name, small):
    net, params, x = small
    fn, values, _ = ANALYZERS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        got = fn(net, params, x)
    assert (int(got.nonfinite.forward), int(got.nonfinite.backward)) == (-1, -1)
    assert not bool(got.nonfinite.found)
    assert _all(values(got), np.isfinite)


@pytest.mark.parametrize("name", NAMES)
def test_eager_call_warns_jitted_call_does_not(name, small):
    net, params, x = small
    fn, _, per_layer = ANALYZERS[name]
    xn = x.at[0].set(jnp.inf)
    with pytest.warns(NonFiniteWarning, match=f"{name.split('_matrix')[0]}.*layer 0"):
        fn(net, params, xn)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        got = jax.jit(lambda v: fn(net, params, v))(xn)
    assert int(got.nonfinite.forward) == 0


# ------------------------------------------------------------------------------------
# An exploding network: its forward pass overflows float32 part-way.


@pytest.fixture(scope="module")
def exploding():
    """mlp(60, 64), ReLU, init="gaussian", weight_var=40: each layer multiplies the
    activations' norm by about sqrt(40 / 2) = 4.5, so they overflow float32 (3.4e38)
    part-way for an input of norm about 1e9; the first inf layer and the float64 norms
    before it come from a NumPy loop over the layers."""
    net = nn.mlp(60, 64, activation="relu", init="gaussian", weight_var=40.0)
    _, params = net.init(jax.random.key(0), (64,))
    x = 1e8 * jax.random.normal(jax.random.key(1), (64,))
    h32, h64 = np.asarray(x, np.float32), np.asarray(x, np.float64)
    first, norms = None, [np.log10(np.linalg.norm(h64))]
    with np.errstate(over="ignore", invalid="ignore"):
        for k, p in enumerate(params, start=1):
            if p:  # dense: h @ w + b
                w, b = np.asarray(p["w"]), np.asarray(p["b"])
                h32 = h32 @ w + b
                h64 = h64 @ w.astype(np.float64) + b.astype(np.float64)
            else:  # relu
                h32, h64 = np.maximum(h32, 0), np.maximum(h64, 0)
            norms.append(np.log10(np.linalg.norm(h64)))
            if first is None and not np.isfinite(h32).all():
                first = k
    assert first is not None and 20 < first < 110, first  # overflow part-way
    return net, params, x, first, np.asarray(norms)


def test_exploding_network_layer_grad_norms(exploding):
    """Eager (120 layers compile in ~15 s, run op by op in ~2 s); jitted: the slow test
    below."""
    net, params, x, first, ref_norms = exploding
    with pytest.warns(NonFiniteWarning, match=f"layer {first}"):
        flow = analyze.layer_grad_norms(net, params, x, _loss)
    assert int(flow.nonfinite.forward) == first
    assert int(flow.nonfinite.backward) == -1
    act = np.asarray(flow.log10_act_norm)
    assert np.isfinite(act[:first]).all()
    # the finite norms before the overflow, against float64 (up to 8e37 ~ 10^37.9)
    np.testing.assert_allclose(act[:first], ref_norms[:first], rtol=1e-5, atol=1e-4)
    assert act[first - 1] > 37  # the last finite one is near float32's limit
    assert np.isnan(act[first:]).all()
    assert np.isnan(np.asarray(flow.log10_norm)).all()  # computed from the inf output
    assert not bool(np.asarray(flow.underflow).any())


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_exploding_network_jitted_reports_the_overflow(name, exploding):
    net, params, x, first, ref_norms = exploding
    fn, values, per_layer = ANALYZERS[name]
    got = jax.jit(lambda v: fn(net, params, v))(x)
    if per_layer:
        assert int(got.nonfinite.forward) == first
        act = np.asarray(got.log10_act_norm)
        np.testing.assert_allclose(act[:first], ref_norms[:first], rtol=1e-5)
        assert np.isnan(act[first:]).all()
        assert np.isnan(np.asarray(got.log10_norm)).all()
        return
    block = (first + 1) // 2  # layers 2b - 1, 2b are block b (dense, relu)
    assert int(got.nonfinite.forward) == block
    assert int(got.nonfinite.backward) == -1
    vals = values(got)
    if name == "layer_jacobians":  # J_b is computed at h_(b-1): finite up to b = block
        assert _all(vals[:block], np.isfinite) and _all(vals[block:], np.isnan)
    else:
        assert _all(vals, np.isnan)


# ------------------------------------------------------------------------------------
# Backward-only non-finite values, and exact zeros


def _sqrt_net(getkey):
    """dense -> sqrt(relu) -> dense: the forward pass is finite; the derivative of
    sqrt at an exact 0 (a negative pre-activation) is inf, and relu's 0 times it NaN."""
    net = [nn.dense(5), lambda p, h: jnp.sqrt(jnp.maximum(h, 0.0)), nn.dense(3)]
    _, p0 = net[0].init(getkey(), (4,))
    _, p2 = net[2].init(getkey(), (5,))
    x = jnp.asarray([1.0, -2.0, 0.5, 3.0], jnp.float32)
    h1 = x @ p0["w"] + p0["b"]
    assert bool((h1 < 0).any()) and bool((h1 > 0).any())
    return net, [p0, {}, p2], x


def test_backward_only_nan_gives_the_backward_index(getkey):
    net, params, x = _sqrt_net(getkey)
    flow = jax.jit(lambda v: analyze.layer_grad_norms(net, params, v, _loss))(x)
    # dL/dh_2 is finite; the VJP of the sqrt layer gives NaN at dL/dh_1
    assert (int(flow.nonfinite.forward), int(flow.nonfinite.backward)) == (-1, 1)
    lg = np.asarray(flow.log10_norm)
    assert np.isfinite(lg[2:]).all() and np.isnan(lg[:2]).all()
    spectra = jax.jit(lambda v: analyze.output_spectra(net, params, v))(x)
    # products: P_2 = d y / d h_2 finite; P_1 through the sqrt layer NaN, P_0 below it
    assert (int(spectra.nonfinite.forward), int(spectra.nonfinite.backward)) == (-1, 1)
    assert np.isfinite(np.asarray(spectra.log_sv[2])).all()
    assert np.isnan(np.asarray(spectra.log_sv[0])).all()
    assert np.isnan(np.asarray(spectra.log_sv[1])).all()
    io = jax.jit(lambda v: analyze.input_output_spectrum(net, params, v))(x)
    assert (int(io.nonfinite.forward), int(io.nonfinite.backward)) == (-1, 0)
    assert np.isnan(np.asarray(io.log_sv)).all()


def test_dead_relu_gives_minus_inf_and_no_record(getkey):
    # random biases keep block 3 alive on the zero output of block 2
    net = nn.mlp(3, 5, activation="relu", init="he_normal", bias_var=1.0)
    _, params = net.init(getkey(), (5,))
    params = list(params)
    params[2] = {"w": params[2]["w"], "b": jnp.full(5, -1e4)}  # block 2 dead
    x = jax.random.normal(getkey(), (5,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        flow = analyze.layer_grad_norms(net, params, x, _loss)
        sweep = analyze.output_sweep(net, params, x)
        jac = analyze.layer_jacobians(net, params, x)
    assert not bool(flow.nonfinite.found)
    lg = np.asarray(flow.log10_norm)
    # dL/dh_k is exactly zero below the dead ReLU (layer 4), finite from its output on
    assert np.all(lg[:4] == -np.inf) and np.isfinite(lg[4:]).all()
    assert not bool(np.asarray(flow.underflow).any())  # exact zeros, not underflow
    assert not bool(sweep.nonfinite.found) and not bool(jac.nonfinite.found)
    assert [float(p.log_scale) for p in sweep.products[:2]] == [-np.inf, -np.inf]
    assert np.isfinite(float(sweep.products[2].log_scale))


# ------------------------------------------------------------------------------------
# Functions over matrices the user holds


def test_products_of_a_nan_or_inf_jacobian_are_nan(rng):
    js = jnp.asarray(rng.normal(size=(4, 3, 3)), jnp.float32)
    for bad in (jnp.nan, jnp.inf):
        b = js.at[2, 0, 1].set(bad)
        p = analyze.jacobian_product(b)
        assert np.isnan(np.asarray(p.matrix)).all() and np.isnan(float(p.log_scale))
        ins = analyze.input_products(b)
        # d h_l / d h_0 for l = 1, 2 do not take in J_3; l = 3, 4 do
        assert np.isfinite(np.asarray(ins.log_scale[:2])).all()
        assert np.isnan(np.asarray(ins.log_scale[2:])).all()
        outs = analyze.output_products(list(b))
        assert np.isnan([float(o.log_scale) for o in outs[:3]]).all()
        assert np.isfinite(float(outs[3].log_scale))
        for method in ("rescaled", "qr"):
            assert np.isnan(np.asarray(analyze.log_singular_values(b, method))).all()
        assert np.isnan(np.asarray(analyze.log_singular_values(p))).all()
        assert np.isnan(float(analyze.log_abs_det(b)))
        # a narrower layer's -inf exponents do not hide a NaN
        rect = [b[0][:2], b[2][:, :2]]  # (2, 3) then (3, 2), b[2] holding the bad value
        assert np.isnan(np.asarray(analyze.log_singular_values(rect, "qr"))).all()


def test_spectrum_stats_nan_in_nan_out_and_records(small):
    net, params, x = small
    raw = jnp.asarray([[1.0, 0.5, -jnp.inf], [2.0, jnp.nan, 0.1]], jnp.float32)
    st = analyze.spectrum_stats(raw)
    for f in st[:5]:
        assert np.isnan(float(f[1]))
    assert float(st.log_min[0]) == -np.inf and float(st.log_spectral_norm[0]) == 1.0
    np.testing.assert_array_equal(np.asarray(st.nonfinite.backward), [-1, 0])
    np.testing.assert_array_equal(np.asarray(st.nonfinite.forward), [-1, -1])
    xs = jnp.stack([x, x.at[1].set(jnp.nan)])
    spec = jax.vmap(lambda v: analyze.input_output_spectrum(net, params, v))(xs)
    st = analyze.spectrum_stats(spec)
    np.testing.assert_array_equal(np.asarray(st.nonfinite.forward), [-1, 0])
    assert np.isfinite(float(st.log_det[0])) and np.isnan(float(st.log_det[1]))
    ref = np.asarray(spec.log_sv[0], np.float64)
    np.testing.assert_allclose(float(st.log_det[0]), ref.sum(), rtol=1e-5)
    per_layer = analyze.spectrum_stats(analyze.output_spectra(net, params, x))
    assert per_layer.log_spectral_norm.shape == (4,)
    # NaN values are left out of the density; a histogram of the finite ones remains
    dens, edges = analyze.spectrum_density(jnp.asarray([0.0, jnp.nan, 1.0, 2.0]), 2)
    np.testing.assert_allclose(
        np.asarray(dens) * np.diff(np.asarray(edges)), [1 / 3, 2 / 3]
    )
