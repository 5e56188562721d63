"""layer_grad_norms against jax.grad and float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import nn


def _reference_grads(net, params, x, loss_fn):
    """dL/dh_k for every layer output by jax.grad w.r.t. additive perturbations."""
    layers = net.layers

    def loss(eps):
        h = x + eps[0]
        for layer, p, e in zip(layers, params, eps[1:], strict=True):
            h = layer.apply(p, h) + e
        return loss_fn(h)

    _, hs = net.apply(params, x, return_intermediates=True)
    zeros = [jnp.zeros_like(x)] + [jnp.zeros_like(h) for h in hs]
    return jax.grad(loss)(zeros)


def _loss(t):
    return lambda y: 0.5 * jnp.sum(jnp.square(y - t))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(activation="tanh", init="gaussian", weight_var=1.5, bias_var=0.05),
        dict(activation="relu", init="he_normal", norm="layer"),
        dict(activation="gelu", init="glorot_normal", residual=True),
        dict(activation="maxout", init="lecun_normal"),
    ],
)
def test_matches_plain_autodiff_at_every_layer(kwargs, getkey):
    net = nn.mlp(6, 12, out_dim=3, **kwargs)
    _, params = net.init(getkey(), (5,))
    x = jax.random.normal(getkey(), (4, 5))
    loss_fn = _loss(jax.random.normal(getkey(), (4, 3)))
    flow = jax.jit(lambda p, x: jgrad.analyze.layer_grad_norms(net, p, x, loss_fn))(
        params, x
    )
    ref = _reference_grads(net, params, x, loss_fn)
    ref_norms = np.array([np.linalg.norm(np.asarray(g)) for g in ref])
    np.testing.assert_allclose(
        10.0 ** np.asarray(flow.log10_norm), ref_norms, rtol=2e-5
    )
    np.testing.assert_allclose(np.asarray(flow.raw_norm), ref_norms, rtol=2e-5)
    assert not bool(flow.underflow.any())
    assert bool(flow.forward_finite.all())
    np.testing.assert_allclose(
        float(flow.loss), float(loss_fn(net.apply(params, x))), rtol=1e-6
    )


@pytest.mark.slow
def test_deep_sigmoid_float32_matches_float64_beyond_underflow(getkey):
    """A depth-70 sigmoid net: the float32 gradient underflows to 0 in the lower layers, the
    log-space norms still match a float64 plain backward pass (no underflow above 1e-308)."""
    depth, width = 70, 32
    net = nn.mlp(depth, width, activation="sigmoid", init="standard_uniform")
    _, params = net.init(getkey(), (width,))
    x = jax.random.normal(getkey(), (8, width))
    t = jax.random.normal(getkey(), (8, width))
    flow = jax.jit(lambda p, x: jgrad.analyze.layer_grad_norms(net, p, x, _loss(t)))(
        params, x
    )
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), params)
        ref = _reference_grads(
            net,
            p64,
            jnp.asarray(np.asarray(x, np.float64)),
            _loss(jnp.asarray(np.asarray(t, np.float64))),
        )
        ref_log10 = np.array([np.log10(np.linalg.norm(np.asarray(g))) for g in ref])
    log10 = np.asarray(flow.log10_norm)
    assert ref_log10[0] < -45, "the reference must reach below float32's range"
    np.testing.assert_allclose(log10, ref_log10, atol=1e-3)
    under = np.asarray(flow.underflow)
    assert under[0] and not under[-1]
    # The plain float32 gradient really is zero where flagged, and only there.
    np.testing.assert_array_equal(under, np.asarray(flow.raw_norm) == 0)
    assert np.all(np.isfinite(log10))


def test_exactly_zero_gradient_is_minus_inf_not_underflow(getkey):
    """All-negative pre-activations kill every ReLU: the gradient below is exactly 0."""
    net = nn.serial(nn.dense(6, bias_var=0.0), nn.elementwise("relu"), nn.dense(2))
    _, params = net.init(getkey(), (3,))
    params = ({"w": -jnp.abs(params[0]["w"]), "b": params[0]["b"]},) + params[1:]
    x = (
        jnp.abs(jax.random.normal(getkey(), (4, 3))) + 0.1
    )  # positive inputs, negative weights
    flow = jgrad.analyze.layer_grad_norms(net, params, x, jnp.sum)
    assert np.isneginf(np.asarray(flow.log10_norm)[:2]).all()
    assert not bool(flow.underflow.any())
    assert np.isfinite(np.asarray(flow.log10_norm)[2:]).all()


def test_reports_where_the_forward_pass_went_non_finite(getkey):
    net = nn.mlp(8, 16, activation="identity", init="gaussian", weight_var=1e12)
    _, params = net.init(getkey(), (16,))
    x = jax.random.normal(getkey(), (2, 16))
    flow = jgrad.analyze.layer_grad_norms(net, params, x, jnp.sum)
    finite = np.asarray(flow.forward_finite)
    assert finite[0] and not finite[-1]
    # Reference: the same forward pass in float64 NumPy; the first layer output whose
    # largest entry exceeds float32's maximum is where float32 went non-finite.
    h, big = np.asarray(x, np.float64), [False]
    for p in params:
        if "w" in p:
            h = h @ np.asarray(p["w"], np.float64) + np.asarray(p["b"], np.float64)
        big.append(bool(np.abs(h).max() > np.finfo(np.float32).max))
    assert int(np.argmin(finite)) == int(np.argmax(big))


def test_params_length_checked(getkey):
    net = nn.mlp(2, 4)
    _, params = net.init(getkey(), (4,))
    with pytest.raises(ValueError, match="one entry per layer"):
        jgrad.analyze.layer_grad_norms(net, params[:-1], jnp.arange(1.0, 5.0), jnp.sum)
    with pytest.raises(ValueError, match="`train` must be True or False"):
        jgrad.analyze.layer_grad_norms(
            net, params, jnp.arange(1.0, 5.0), jnp.sum, train="no"
        )


def test_net_forms_agree(getkey):
    """A serial network, its layers as a sequence, and a single layer with its own params
    resolve alike (one resolution for every analyzer)."""
    net = nn.mlp(2, 4)
    _, params = net.init(getkey(), (4,))
    x = jnp.arange(1.0, 5.0)
    whole = jgrad.analyze.layer_grad_norms(net, params, x, jnp.sum)
    listed = jgrad.analyze.layer_grad_norms(list(net.layers), params, x, jnp.sum)
    np.testing.assert_array_equal(whole.log10_norm, listed.log10_norm)
    assert jgrad.analyze.net_layers(net) == net.layers
    one = jgrad.analyze.layer_grad_norms(net.layers[0], params[0], x, jnp.sum)
    assert one.log10_norm.shape == (2,)
