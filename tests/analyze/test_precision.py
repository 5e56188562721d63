"""The analyzers trace their matmuls at full float32 precision unless the user set one
(jgrad.analyze._precision). On a CPU the numbers are the same either way, so these tests
read the precision off the traced programs."""

import jax
import jax.extend
import jax.numpy as jnp
import pytest

from jgrad import analyze, nn, rnn


def _dot_precisions(fn, *args):
    """The precision of every dot_general in fn's jaxpr, sub-jaxprs (scan, jit) included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn.params["precision"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def _mlp_cases(getkey):
    net = nn.mlp(5, 8, activation="tanh")
    _, params = net.init(getkey(), (8,))
    x = jax.random.normal(getkey(), (8,))
    key = getkey()
    return (
        [
            lambda x: analyze.input_output_spectrum(net, params, x),
            lambda x: analyze.output_spectra(net, params, x),
            lambda x: analyze.output_norms(
                net, params, x, method="matrix_free", probe_key=key
            ),
            lambda x: analyze.output_norms(net, params, x, probe_key=key),
            lambda x: analyze.log_singular_values(
                analyze.layer_jacobians(net, params, x)
            ),
            lambda x: analyze.layer_grad_norms(
                net, params, x, lambda y: jnp.sum(jnp.sin(y))
            ),
        ],
        x,
        lambda x: net.apply(params, x),
    )


def _highest(precision):
    return precision is not None and all(
        p == jax.lax.Precision.HIGHEST for p in precision
    )


def test_analyzers_trace_at_highest_precision(getkey):
    cases, x, apply = _mlp_cases(getkey)
    for fn in cases:
        precisions = _dot_precisions(fn, x)
        assert precisions, "no matmul traced"
        assert all(_highest(p) for p in precisions), precisions
    # the same network outside the analyzers keeps JAX's default (None)
    plain = _dot_precisions(apply, x)
    assert plain and all(p is None for p in plain)


@pytest.mark.parametrize("choice", ["default", "bfloat16"])
def test_a_precision_the_user_set_holds(choice, getkey):
    cases, x, _ = _mlp_cases(getkey)
    with jax.default_matmul_precision(choice):
        for fn in cases:
            precisions = _dot_precisions(fn, x)
            assert precisions and not any(_highest(p) for p in precisions), precisions


def test_rnn_analyzers_trace_at_highest_precision(getkey):
    cell = rnn.lstm(6)
    params = cell.init(getkey(), 3)
    xs = jax.random.normal(getkey(), (7, 3))
    carry0 = jax.tree.map(
        lambda c: 0.3 * jax.random.normal(getkey(), c.shape), cell.init_carry(())
    )
    cases = [
        lambda xs: analyze.rnn_step_jacobians(cell, params, xs, carry0),
        lambda xs: analyze.rnn_jacobian_products(cell, params, xs, carry0),
        lambda xs: analyze.lyapunov_spectrum(cell, params, xs, carry0),
        lambda xs: analyze.rnn_grad_norms(
            cell, params, xs, carry0, lambda hs: jnp.sum(jnp.sin(hs))
        ),
    ]
    for fn in cases:
        precisions = _dot_precisions(fn, xs)
        assert precisions and all(_highest(p) for p in precisions), precisions
