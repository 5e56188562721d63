"""jgrad.nn layers against flax.linen given the same parameters (an independent reference).

Every comparison copies jgrad's params, with random (never ones/zeros) values, into flax's
variable dict and checks outputs, updated batch statistics and gradients. Inputs are random
with a non-zero mean so a dropped mean subtraction shows.
"""

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from tests.helpers import default_promotion

RTOL, ATOL = 1e-5, 1e-5


def _key(seed):
    """A key for ``init``. The "rbg" implementation compiles about 10x faster on CPU than
    the default threefry, which keeps this file fast; dropout uses the default keys."""
    return jax.random.key(seed, impl="rbg")


def _randn(rng, shape, loc=0.0, scale=1.0):
    return jnp.asarray(rng.normal(loc, scale, shape), jnp.float32)


# ----------------------------------------------------------------------------------- dense


@pytest.mark.parametrize("batch", [None, 7])
def test_dense_matches_flax_outputs_and_gradients(rng, batch):
    in_dim, out_dim = 5, 3
    layer = jgrad.nn.dense(out_dim, bias_var=0.5)
    _, params = layer.init(_key(1), (in_dim,))
    # bias_var=0.5 gives a random bias; check it really is non-trivial.
    assert float(jnp.abs(params["b"]).min()) > 0
    shape = (in_dim,) if batch is None else (batch, in_dim)
    x = _randn(rng, shape, loc=0.3)

    fl = fnn.Dense(out_dim)
    fvars = {"params": {"kernel": params["w"], "bias": params["b"]}}

    def flax_apply(p, x):
        with default_promotion():
            return fl.apply({"params": {"kernel": p["w"], "bias": p["b"]}}, x)

    y = jax.jit(layer.apply)(params, x)
    with default_promotion():
        y_ref = fl.apply(fvars, x)
    assert y.shape == ((out_dim,) if batch is None else (batch, out_dim))
    chex.assert_trees_all_close(y, y_ref, rtol=RTOL, atol=ATOL)

    # Gradients w.r.t. params of a non-linear loss (so the cotangent is not constant).
    def loss_j(p):
        return jnp.sum(jnp.sin(layer.apply(p, x)))

    def loss_f(p):
        return jnp.sum(jnp.sin(flax_apply(p, x)))

    g = jax.jit(jax.grad(loss_j))(params)
    g_ref = jax.grad(loss_f)(params)
    chex.assert_trees_all_close(g, g_ref, rtol=RTOL, atol=ATOL)
    # and against the closed form dL/dw = x^T cos(y), dL/db = sum cos(y)
    c = np.cos(np.asarray(y, np.float64))
    xb = np.asarray(x, np.float64).reshape(-1, in_dim)
    np.testing.assert_allclose(
        g["w"], xb.T @ c.reshape(-1, out_dim), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        g["b"], c.reshape(-1, out_dim).sum(0), rtol=1e-4, atol=1e-5
    )


# ------------------------------------------------------------------------------ batch norm


def _random_bn_params(rng, c):
    return {
        "scale": _randn(rng, (c,), loc=1.0, scale=0.5),
        "offset": _randn(rng, (c,), scale=0.7),
        "mean": _randn(rng, (c,), scale=0.8),
        "var": jnp.asarray(rng.uniform(0.3, 2.5, (c,)), jnp.float32),
    }


def _bn_vars(p):
    return {
        "params": {"scale": p["scale"], "bias": p["offset"]},
        "batch_stats": {"mean": p["mean"], "var": p["var"]},
    }


@pytest.mark.parametrize("shape", [(16, 5), (4, 6, 5, 3)])
@pytest.mark.parametrize("momentum,eps", [(0.9, 1e-5), (0.7, 1e-3)])
def test_batch_norm_train_matches_flax(rng, shape, momentum, eps):
    c = shape[-1]
    layer = jgrad.nn.batch_norm(momentum, eps)
    out_shape, p0 = layer.init(_key(2), shape[1:])
    assert out_shape == shape[1:]
    chex.assert_trees_all_equal_shapes(p0, _random_bn_params(rng, c))
    params = _random_bn_params(rng, c)
    # Per-channel mean and scale differ, so a wrong reduction axis would show.
    x = rng.normal(size=shape) * np.arange(1.0, c + 1.0) + np.linspace(-2.0, 3.0, c)
    x = jnp.asarray(x, jnp.float32)

    y, new = jax.jit(lambda p, x: layer.apply(p, x, train=True, return_state=True))(
        params, x
    )

    fl = fnn.BatchNorm(use_running_average=False, momentum=momentum, epsilon=eps)
    with default_promotion():
        y_ref, upd = fl.apply(_bn_vars(params), x, mutable=["batch_stats"])
    chex.assert_trees_all_close(y, y_ref, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(
        new["mean"], upd["batch_stats"]["mean"], rtol=1e-5, atol=1e-5
    )
    chex.assert_trees_all_close(
        new["var"], upd["batch_stats"]["var"], rtol=1e-4, atol=1e-5
    )
    # scale and offset are returned unchanged
    chex.assert_trees_all_equal(new["scale"], params["scale"])
    chex.assert_trees_all_equal(new["offset"], params["offset"])
    # the running stats actually moved (the comparison above is not trivially of no-ops)
    assert float(jnp.abs(new["mean"] - params["mean"]).min()) > 1e-3


@pytest.mark.parametrize("shape", [(16, 5), (4, 6, 5, 3)])
def test_batch_norm_eval_matches_flax(rng, shape):
    c = shape[-1]
    momentum, eps = 0.8, 1e-4
    layer = jgrad.nn.batch_norm(momentum, eps)
    params = _random_bn_params(rng, c)
    x = _randn(rng, shape, loc=0.5)

    y, new = jax.jit(lambda p, x: layer.apply(p, x, return_state=True))(params, x)
    fl = fnn.BatchNorm(use_running_average=True, momentum=momentum, epsilon=eps)
    with default_promotion():
        y_ref = fl.apply(_bn_vars(params), x)
    chex.assert_trees_all_close(y, y_ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(new, params)  # eval mode leaves running stats alone

    # One example in eval mode equals the batch row (eval mode does not couple examples).
    y0 = layer.apply(params, x[0])
    chex.assert_trees_all_close(y0, y[0], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ layer norm


@pytest.mark.parametrize("shape", [(9,), (4, 9), (3, 2, 9)])
@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_layer_norm_matches_flax(rng, shape, eps):
    c = shape[-1]
    layer = jgrad.nn.layer_norm(eps)
    _, p0 = layer.init(_key(3), (c,))
    params = {
        "scale": _randn(rng, (c,), loc=1.0, scale=0.5),
        "offset": _randn(rng, (c,)),
    }
    chex.assert_trees_all_equal_shapes(params, p0)
    x = _randn(rng, shape, loc=2.0, scale=0.3)  # small spread: eps matters at 1e-2

    y = jax.jit(layer.apply)(params, x)
    fl = fnn.LayerNorm(epsilon=eps)
    with default_promotion():
        y_ref = fl.apply(
            {"params": {"scale": params["scale"], "bias": params["offset"]}}, x
        )
    chex.assert_trees_all_close(y, y_ref, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.1, 0.6])
@pytest.mark.parametrize("shape", [(64,), (6, 11)])
def test_dropout_matches_flax(rng, getkey, p, shape):
    layer = jgrad.nn.dropout(p)
    _, params = layer.init(getkey(), shape)
    assert params == {}
    x = _randn(rng, shape, loc=1.0)
    k = getkey()

    y = jax.jit(lambda x, k: layer.apply(params, x, train=True, key=k))(x, k)
    with default_promotion():
        y_ref = fnn.Dropout(p, deterministic=False).apply({}, x, rng=k)
    chex.assert_trees_all_close(y, y_ref, rtol=1e-6, atol=0)
    # not the identity and not all zeros: some units dropped, some kept
    assert 0 < int(jnp.sum(y == 0)) < y.size

    # eval mode is the identity (bitwise), with or without a key
    chex.assert_trees_all_equal(layer.apply(params, x), x)
    chex.assert_trees_all_equal(layer.apply(params, x, train=False, key=k), x)


# ------------------------------------------------------------------------------------ conv


@pytest.mark.parametrize(
    "features,kernel_size,strides,padding",
    [
        (4, (3, 3), (1, 1), "SAME"),
        (5, (3, 2), (2, 1), "SAME"),
        (3, (2, 3), (2, 2), "VALID"),
    ],
)
@pytest.mark.parametrize("batch", [None, 3])
def test_conv2d_matches_flax(rng, features, kernel_size, strides, padding, batch):
    in_shape = (7, 6, 2)
    layer = jgrad.nn.conv2d(
        features, kernel_size, stride=strides, padding=padding, bias_var=0.3
    )
    out_shape, params = layer.init(_key(4), in_shape)
    assert float(jnp.abs(params["b"]).min()) > 0  # a random bias, not zeros
    assert params["w"].shape == kernel_size + (in_shape[2], features)
    x = _randn(rng, in_shape if batch is None else (batch,) + in_shape, loc=0.2)

    y = jax.jit(layer.apply)(params, x)
    fl = fnn.Conv(features, kernel_size, strides=strides, padding=padding)
    with default_promotion():
        y_ref = fl.apply({"params": {"kernel": params["w"], "bias": params["b"]}}, x)
    expected_shape = out_shape if batch is None else (batch,) + out_shape
    assert y.shape == expected_shape
    assert y_ref.shape == expected_shape
    chex.assert_trees_all_close(y, y_ref, rtol=1e-5, atol=1e-5)
