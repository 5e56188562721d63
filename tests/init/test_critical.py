"""Critical initializers: the scale is the theory's critical weight_var, and a deep
network drawn with it keeps its gradient norm per layer, where others do not."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import theory


def test_scales_are_the_critical_weight_var():
    key = jax.random.key(0)
    fan_in = 4000
    for act, bv, want in [("relu", 0.0, 2.0), ("tanh", 0.0, 1.0), ("linear", 0.3, 1.0)]:
        w = jgrad.init.critical_gaussian(act, bv)(key, (fan_in, 64))
        # the sample variance of 256,000 draws: relative error about sqrt(2/256000)
        assert float(jnp.var(w)) * fan_in == pytest.approx(want, rel=0.01)
    with jax.enable_x64():
        wv = float(theory.critical_weight_var("tanh", 0.05))
        assert float(theory.chi1("tanh", wv, 0.05)) == pytest.approx(1.0, abs=1e-9)
    w = jgrad.init.critical_orthogonal("tanh", 0.05)(key, (128, 128))
    np.testing.assert_allclose(w.T @ w, wv * np.eye(128), atol=2e-5)
    w = jgrad.init.critical_gaussian("tanh", 0.05)(key, (fan_in, 64))
    assert float(jnp.var(w)) * fan_in == pytest.approx(wv, rel=0.01)


def _growth(init, bias_var, depth=24, width=400, seeds=3):
    """Per-layer growth of ||dL/dh_l||^2 in a tanh mlp (layers 4..depth-2)."""
    net = jgrad.nn.mlp(depth, width, activation="tanh", init=init, bias_var=bias_var)
    rates = []
    for s in range(seeds):
        _, p = net.init(jax.random.key(s), (width,))
        x = jax.random.normal(jax.random.key(100 + s), (4, width))
        g = jax.random.normal(jax.random.key(200 + s), (4, width))
        flow = jgrad.analyze.layer_grad_norms(net, p, x, lambda y, g=g: jnp.sum(y * g))
        lg = np.asarray(flow.log10_norm)[list(net.block_ends)]
        rates.append(np.mean(-np.diff(lg)[3:-2]))
    return 10 ** (2 * np.mean(rates))


@pytest.mark.slow
def test_a_critical_network_keeps_its_gradient_norm():
    crit = _growth(jgrad.init.critical_gaussian("tanh", 0.05), 0.05)
    ortho = _growth(jgrad.init.critical_orthogonal("tanh", 0.05), 0.05)
    ordered = _growth(jgrad.init.gaussian(1.0), 0.05)
    assert crit == pytest.approx(1.0, abs=0.05)
    assert ortho == pytest.approx(1.0, abs=0.05)
    chi = float(theory.chi1("tanh", 1.0, 0.05))
    assert ordered == pytest.approx(chi, rel=0.05) and chi < 0.9


def test_bad_input():
    with pytest.raises(
        ValueError, match="`activation` must be an activation with a critical"
    ):
        jgrad.init.critical_gaussian("sigmoid", 0.0)
    with pytest.raises(ValueError, match="`bias_var`"):
        jgrad.init.critical_orthogonal("tanh", -0.1)
    with pytest.raises(ValueError, match="`activation`.*relu"):
        jgrad.init.critical_gaussian("rleu")
    assert math.isnan(float(theory.critical_weight_var("sigmoid", 0.0)))
