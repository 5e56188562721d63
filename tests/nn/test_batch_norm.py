"""Batch norm train/eval semantics against a NumPy float64 reference; dropout statistics.

Batch norm: train mode normalizes with the batch mean and BIASED variance over every axis but
the last, and updates ``mean <- m * mean + (1 - m) * batch_mean`` (likewise ``var``); eval
mode uses the running statistics; no gradient reaches ``params["mean"]``/``params["var"]``.
Dropout: inverted dropout preserves the mean and drops a fraction ``drop_prob`` of units.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad


def _bn_ref(x, p, *, train, momentum, eps):
    """Float64 NumPy batch norm: returns (y, new_mean, new_var)."""
    x = np.asarray(x, np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    if train:
        axes = tuple(range(x.ndim - 1))
        mu = x.mean(axis=axes)
        var = ((x - mu) ** 2).mean(
            axis=axes
        )  # biased: divide by the count, not count - 1
        new_mean = momentum * p["mean"] + (1 - momentum) * mu
        new_var = momentum * p["var"] + (1 - momentum) * var
    else:
        mu, var = p["mean"], p["var"]
        new_mean, new_var = p["mean"], p["var"]
    y = (x - mu) / np.sqrt(var + eps) * p["scale"] + p["offset"]
    return y, new_mean, new_var


def _random_params(rng, c):
    return {
        "scale": jnp.asarray(rng.normal(1.0, 0.5, c), jnp.float32),
        "offset": jnp.asarray(rng.normal(0.0, 0.7, c), jnp.float32),
        "mean": jnp.asarray(rng.normal(0.0, 0.8, c), jnp.float32),
        "var": jnp.asarray(rng.uniform(0.3, 2.5, c), jnp.float32),
    }


def _channel_input(rng, shape):
    """Channels with different means and spreads, so a wrong reduction axis shows."""
    c = shape[-1]
    x = rng.normal(size=shape) * np.arange(1.0, c + 1.0) + np.linspace(-3.0, 2.0, c)
    return jnp.asarray(x, jnp.float32)


SHAPES = [(12, 4), (5, 7, 4), (3, 5, 6, 4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_train_mode_matches_float64_reference(rng, shape):
    momentum, eps = 0.85, 1e-3
    layer = jgrad.nn.batch_norm(momentum, eps)
    params = _random_params(rng, shape[-1])
    x = _channel_input(rng, shape)
    y, new = jax.jit(lambda p, x: layer.apply(p, x, train=True, return_state=True))(
        params, x
    )
    y_ref, mean_ref, var_ref = _bn_ref(
        x, params, train=True, momentum=momentum, eps=eps
    )
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new["mean"], mean_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["var"], var_ref, rtol=1e-5, atol=1e-5)
    # Invariant: per channel, the output has mean = offset and biased std =
    # |scale| * sqrt(v / (v + eps)) with v the batch variance.
    axes = tuple(range(len(shape) - 1))
    y64 = np.asarray(y, np.float64)
    v = np.asarray(x, np.float64).var(axis=axes)
    np.testing.assert_allclose(y64.mean(axis=axes), params["offset"], atol=1e-5)
    np.testing.assert_allclose(
        y64.std(axis=axes), np.abs(params["scale"]) * np.sqrt(v / (v + eps)), rtol=1e-4
    )
    # Without return_state it returns y alone, the same y.
    chex.assert_trees_all_close(
        layer.apply(params, x, train=True), y, rtol=1e-6, atol=1e-6
    )


def test_running_stats_compose_over_steps(rng):
    momentum = 0.6
    layer = jgrad.nn.batch_norm(momentum)
    _, params = layer.init(jax.random.key(0), (3,))
    x1 = _channel_input(rng, (20, 3))
    x2 = _channel_input(rng, (9, 3)) + jnp.asarray([1.0, -2.0, 0.5])[None]
    step = jax.jit(lambda p, x: layer.apply(p, x, train=True, return_state=True)[1])
    p2 = step(step(params, x1), x2)
    b1 = np.asarray(x1, np.float64)
    b2 = np.asarray(x2, np.float64)
    m = momentum
    # init stats are mean 0, var 1
    mean = m * m * 0.0 + m * (1 - m) * b1.mean(0) + (1 - m) * b2.mean(0)
    var = m * m * 1.0 + m * (1 - m) * b1.var(0) + (1 - m) * b2.var(0)
    np.testing.assert_allclose(p2["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p2["var"], var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_mode_uses_running_stats(rng, shape):
    eps = 1e-5
    layer = jgrad.nn.batch_norm(0.9, eps)
    params = _random_params(rng, shape[-1])
    x = _channel_input(rng, shape)
    y, new = jax.jit(lambda p, x: layer.apply(p, x, return_state=True))(params, x)
    y_ref, _, _ = _bn_ref(x, params, train=False, momentum=0.9, eps=eps)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(new, params)
    # eval mode does not couple examples: one example alone gives its row of the batch
    np.testing.assert_allclose(layer.apply(params, x[1]), y[1], rtol=1e-6, atol=1e-6)
    # and it differs from train mode (batch stats != running stats here)
    assert not np.allclose(layer.apply(params, x, train=True), y, atol=1e-2)


@pytest.mark.parametrize("train", [True, False])
def test_no_gradient_into_running_stats(rng, train):
    layer = jgrad.nn.batch_norm(0.9, 1e-5)
    params = _random_params(rng, 4)
    x = _channel_input(rng, (10, 4))
    t = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)

    def loss(p):
        y = layer.apply(p, x, train=train, return_state=True)[0]
        return jnp.sum((y - t) ** 2 * jnp.tanh(y))

    g = jax.jit(jax.grad(loss))(params)
    assert np.all(np.asarray(g["mean"]) == 0.0)
    assert np.all(np.asarray(g["var"]) == 0.0)
    # ...while scale and offset do get (non-zero) gradient
    assert np.all(np.abs(np.asarray(g["scale"])) > 0)
    assert np.all(np.abs(np.asarray(g["offset"])) > 0)


def test_train_gradient_flows_through_batch_stats(rng):
    """In train mode sum_b y[b, c] = B * offset[c] for any x, so d(sum y)/dx = 0; in eval
    mode it is scale / sqrt(var + eps). A stop_gradient on the batch mean would break this."""
    eps = 1e-5
    layer = jgrad.nn.batch_norm(0.9, eps)
    params = _random_params(rng, 4)
    x = _channel_input(rng, (10, 4))
    g_train = jax.grad(lambda x: jnp.sum(layer.apply(params, x, train=True)))(x)
    np.testing.assert_allclose(g_train, 0.0, atol=1e-5)
    g_eval = jax.grad(lambda x: jnp.sum(layer.apply(params, x)))(x)
    expected = np.asarray(params["scale"]) / np.sqrt(np.asarray(params["var"]) + eps)
    np.testing.assert_allclose(g_eval, np.broadcast_to(expected, (10, 4)), rtol=1e-5)


def test_train_mode_needs_a_batch(rng):
    layer = jgrad.nn.batch_norm()
    _, params = layer.init(jax.random.key(0), (5,))
    x = jnp.asarray(rng.normal(size=(5,)), jnp.float32)
    with pytest.raises(ValueError, match="batch"):
        layer.apply(params, x, train=True)
    layer.apply(params, x)  # eval mode on one example is fine


def test_mlp_batch_norm_returns_updated_stats(rng, getkey):
    momentum = 0.9  # builders use batch_norm()'s default
    net = jgrad.nn.mlp(3, 16, norm="batch")
    _, params = net.init(getkey(), (6,))
    # Random biases, scales, offsets and running stats (init gives zeros and ones), so
    # "unchanged" and "updated" are distinguishable for every entry.
    params = jax.tree.map(
        lambda a: (
            a + jnp.asarray(rng.uniform(0.1, 0.6, a.shape), a.dtype)
            if a.ndim == 1
            else a
        ),
        params,
    )
    x = _channel_input(rng, (32, 6))
    apply = jax.jit(
        lambda p, x: net.apply(
            p, x, train=True, return_state=True, return_intermediates=True
        )
    )
    y, hs, new = apply(params, x)
    assert len(new) == len(params) == 9  # (dense, batch_norm, tanh) x 3
    bn_idx = [i for i, layer in enumerate(net.layers) if "mean" in params[i]]
    assert bn_idx == [1, 4, 7]
    for i, (p_old, p_new) in enumerate(zip(params, new, strict=True)):
        if i in bn_idx:
            h = np.asarray(hs[i - 1], np.float64)  # the batch norm's input
            np.testing.assert_allclose(
                p_new["mean"],
                momentum * p_old["mean"] + (1 - momentum) * h.mean(0),
                rtol=1e-5,
                atol=1e-5,
            )
            np.testing.assert_allclose(
                p_new["var"],
                momentum * p_old["var"] + (1 - momentum) * h.var(0),
                rtol=1e-5,
                atol=1e-5,
            )
            chex.assert_trees_all_equal(p_new["scale"], p_old["scale"])
            chex.assert_trees_all_equal(p_new["offset"], p_old["offset"])
            assert not np.allclose(p_new["mean"], p_old["mean"])
        else:
            chex.assert_trees_all_equal(p_new, p_old)
    # eval mode with return_state changes nothing
    _, same = net.apply(params, x, return_state=True)
    chex.assert_trees_all_equal(same, params)
    chex.assert_tree_all_finite(y)


# --------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("drop_prob", [0.2, 0.7])
def test_dropout_preserves_mean_and_drop_fraction(rng, drop_prob):
    n_keys, n_units = 4000, 50
    layer = jgrad.nn.dropout(drop_prob)
    x = jnp.asarray(rng.normal(0.5, 1.5, n_units), jnp.float32)
    keys = jax.random.split(jax.random.key(3), n_keys)
    ys = jax.jit(jax.vmap(lambda k: layer.apply({}, x, train=True, key=k)))(keys)
    ys = np.asarray(ys, np.float64)
    x64 = np.asarray(x, np.float64)
    keep = 1.0 - drop_prob
    dropped = ys == 0.0
    # survivors are exactly x / keep
    np.testing.assert_allclose(
        ys[~dropped], np.broadcast_to(x64 / keep, ys.shape)[~dropped], rtol=1e-6
    )
    # fraction dropped: binomial, std sqrt(p (1-p) / (n_keys n_units)) ~ 0.003; allow 5 std
    frac = dropped.mean()
    tol = 5 * np.sqrt(drop_prob * (1 - drop_prob) / dropped.size)
    assert abs(frac - drop_prob) < tol, (frac, drop_prob)
    # per-unit mean over keys: std |x| sqrt(p / (1-p) / n_keys); allow 5 std per unit
    per_unit_std = np.abs(x64) * np.sqrt(drop_prob / keep / n_keys)
    assert np.all(np.abs(ys.mean(0) - x64) < 5 * per_unit_std + 1e-6)
    # the masks vary across units and keys (not one shared mask)
    assert 0 < dropped[0].sum() < n_units
    assert not np.array_equal(dropped[0], dropped[1])


def test_dropout_train_without_key_raises(rng):
    layer = jgrad.nn.dropout(0.3)
    x = jnp.asarray(rng.normal(size=(8,)), jnp.float32)
    with pytest.raises(ValueError, match="key"):
        layer.apply({}, x, train=True)
    chex.assert_trees_all_equal(layer.apply({}, x), x)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_dropout_rejects_bad_drop_prob(bad):
    with pytest.raises(ValueError, match="drop_prob"):
        jgrad.nn.dropout(bad)
