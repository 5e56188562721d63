"""Bad inputs to the feedforward analyzers are ValueErrors raised before tracing, naming
the argument and the fix: a batch given to a one-example function (with the vmap to use),
params of another network, non-float or empty x, an int seed as a key, a non-bool flag."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import analyze, nn


def _loss(y):
    return jnp.sum(jnp.square(y))


ONE_EXAMPLE = {
    "input_output_spectrum": lambda net, p, x, **kw: analyze.input_output_spectrum(
        net, p, x, **kw
    ),
    "output_spectra": lambda net, p, x, **kw: analyze.output_spectra(net, p, x, **kw),
    "output_sweep": lambda net, p, x, **kw: analyze.output_sweep(net, p, x, **kw),
    "output_norms": lambda net, p, x, **kw: analyze.output_norms(
        net,
        p,
        x,
        probe_key=jax.random.key(0),
        min_lanczos_steps=2,
        max_lanczos_steps=4,
        **kw,
    ),
    "layer_jacobians": lambda net, p, x, **kw: analyze.layer_jacobians(net, p, x, **kw),
}
ALL = dict(
    ONE_EXAMPLE,
    layer_grad_norms=lambda net, p, x, **kw: analyze.layer_grad_norms(
        net, p, x, _loss, **kw
    ),
)


@pytest.fixture(scope="module")
def net16():
    net = nn.mlp(4, 16, activation="tanh")
    _, params = net.init(jax.random.key(0), (16,))
    x = jax.random.normal(jax.random.key(1), (16,))
    return net, params, x


@pytest.mark.parametrize("name", sorted(ONE_EXAMPLE))
def test_a_batch_to_a_one_example_function_shows_the_vmap(name, net16):
    net, params, x = net16
    xs = jax.random.normal(jax.random.key(2), (8, 16))
    with pytest.raises(ValueError, match=r"(?s)`x`.*\(8, 16\).*jax\.vmap"):
        ONE_EXAMPLE[name](net, params, xs)
    # what the message suggests works, and gives one result per example
    out = jax.vmap(lambda v: ONE_EXAMPLE[name](net, params, v))(xs)
    assert jax.tree.leaves(out)[0].shape[0] == 8


def test_layer_grad_norms_takes_a_batch_checked_against_the_params(net16):
    net, params, _ = net16
    xs = jax.random.normal(jax.random.key(2), (8, 16))
    flow = analyze.layer_grad_norms(net, params, xs, _loss)
    ref = jax.grad(lambda v: _loss(net.apply(params, v)))(xs)
    np.testing.assert_allclose(
        10 ** float(flow.log10_norm[0]), float(jnp.linalg.norm(ref)), rtol=1e-4
    )
    # the example shape is the batch's trailing axis: 32-wide params do not fit it
    _, wide = nn.mlp(4, 32, activation="tanh").init(jax.random.key(0), (32,))
    with pytest.raises(ValueError, match=r"(?s)`params\[0\]\['b'\]`.*\(16,\).*\(32,\)"):
        analyze.layer_grad_norms(net, wide, jnp.ones((8, 32)) * xs[:, :1], _loss)


@pytest.mark.parametrize("name", sorted(ALL))
def test_params_of_another_width_are_refused(name):
    net = nn.mlp(4, 16, activation="tanh")
    _, wide = nn.mlp(4, 32, activation="tanh").init(jax.random.key(0), (32,))
    x = jax.random.normal(jax.random.key(1), (32,))
    with pytest.raises(ValueError, match=r"(?s)`params\[0\]\['b'\]`.*\(16,\).*\(32,\)"):
        ALL[name](net, wide, x)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.arange(16), "floating-point.*int"),
        (jnp.ones(16, jnp.complex64), "floating-point.*complex64"),
        (list(np.linspace(-1.0, 1.0, 16)), "array.*list"),
        (jnp.zeros((0,), jnp.float32), "at least one value"),
    ],
    ids=["int", "complex", "list", "empty"],
)
def test_x_must_be_a_non_empty_float_array(name, bad, match, net16):
    net, params, _ = net16
    with pytest.raises(ValueError, match=f"(?s)`x`.*{match}"):
        ALL[name](net, params, bad)


@pytest.mark.parametrize("name", sorted(ALL))
def test_int_key_and_non_bool_train_are_refused(name, net16):
    net, params, x = net16
    with pytest.raises(ValueError, match=r"(?s)`key`.*PRNG key.*jax\.random\.key"):
        ALL[name](net, params, x, key=0)
    with pytest.raises(ValueError, match="`train`"):
        ALL[name](net, params, x, train="yes")


def test_output_norms_probe_key_must_be_a_key(net16):
    net, params, x = net16
    for bad in (0, None):
        with pytest.raises(ValueError, match=r"(?s)`probe_key`.*PRNG key"):
            analyze.output_norms(net, params, x, probe_key=bad)


def test_jacobian_refuses_int_complex_and_list_points():
    def f(v):
        return jnp.sin(v) * 2.0

    for bad, match in [
        (jnp.arange(3), "floating-point.*int32"),
        (jnp.ones(3, jnp.complex64), "floating-point.*complex64"),
        ([0.5, 1.0, 2.0], "array.*list"),
        (jnp.zeros((0,), jnp.float32), "at least one value"),
    ]:
        with pytest.raises(ValueError, match=f"(?s)`x`.*{match}"):
            analyze.jacobian(f, bad)
    x = jnp.asarray([0.5, 1.0, 2.0])
    np.testing.assert_allclose(
        analyze.jacobian(f, x), np.diag(2 * np.cos(np.asarray(x))), rtol=1e-6
    )
