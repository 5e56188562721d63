"""The one network resolver: function nets whose params are tuples, integer params
leaves, lists with known activations, and the message for an unknown form."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import analyze


def _fn(p, x):
    (w,) = p  # the function's own params are a 1-tuple
    return jnp.tanh(x @ w)


def test_function_net_keeps_its_tuple_params(getkey):
    w = jax.random.normal(getkey(), (5, 5))
    x = jax.random.normal(getkey(), (5,))
    full = jax.jacrev(lambda v: _fn((w,), v))(x)
    want = np.sort(np.log(np.linalg.svd(np.asarray(full), compute_uv=False)))[::-1]
    spec = analyze.input_output_spectrum(_fn, (w,), x)
    np.testing.assert_allclose(spec.log_sv, want, rtol=1e-5, atol=1e-5)
    flow = analyze.layer_grad_norms(_fn, (w,), x, jnp.sum)
    g = jax.grad(lambda p: jnp.sum(_fn(p, x)))((w,))
    np.testing.assert_allclose(
        flow.param_log10_norm[0][0], np.log10(np.linalg.norm(g[0])), rtol=1e-5
    )


def test_integer_params_leaf_has_no_gradient(getkey):
    def fn(p, x):
        return jnp.tanh(x @ p["w"]) * p["n"]

    p = {"w": jax.random.normal(getkey(), (4, 4)), "n": jnp.array(3)}
    x = jax.random.normal(getkey(), (4,))
    flow = analyze.layer_grad_norms(fn, p, x, jnp.sum)
    assert float(flow.param_log10_norm[0]["n"]) == -np.inf
    g = jax.grad(lambda w: jnp.sum(fn({"w": w, "n": p["n"]}, x)))(p["w"])
    np.testing.assert_allclose(
        flow.param_log10_norm[0]["w"], np.log10(np.linalg.norm(g)), rtol=1e-5
    )


def test_list_items_known_activations_and_flax_dense(getkey):
    x = jax.random.normal(getkey(), (3,))
    dense = fnn.Dense(4)
    v = dense.init(getkey(), x)
    net = [dense, jnp.tanh, jgrad.nn.dense(2)]
    _, p2 = jgrad.nn.dense(2).init(getkey(), (4,))
    kinds = [layer.info.kind for layer in analyze.net_layers(net)]
    assert kinds == ["dense", "elementwise", "dense"]
    jac = analyze.layer_jacobians(net, [v, {}, p2], x, blocks=False)
    np.testing.assert_allclose(jac.mats[0], v["params"]["kernel"].T, rtol=1e-6)
    h = dense.apply(v, x)
    np.testing.assert_allclose(jac.mats[1], np.diag(1 - np.tanh(h) ** 2), rtol=1e-5)


def test_unknown_form_lists_the_accepted_ones(getkey):
    x = jax.random.normal(getkey(), (3,))
    with pytest.raises(
        ValueError, match=r"`net` must be one of: .*nnx.*equinox.*got int"
    ):
        analyze.input_output_spectrum(3, {}, x)
    with pytest.raises(ValueError, match="`params` must be the flax variables dict"):
        analyze.input_output_spectrum(fnn.Sequential([fnn.Dense(3)]), [1], x)
