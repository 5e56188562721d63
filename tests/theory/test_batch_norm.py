"""Batch norm's gradient explosion (Yang et al. 2019): the theory's rate against the
measurement with the analyzers (layer_grad_norms through batch norm in train mode, whose
backward pass is the exact batch Jacobian's)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import theory


def _measured_rate(activation, batch, *, depth=30, width=512, seeds=3):
    net = jgrad.nn.mlp(depth, width, activation=activation, norm="batch")
    rates = []
    for s in range(seeds):
        _, p = net.init(jax.random.key(s), (width,))
        x = jax.random.normal(jax.random.key(50 + s), (batch, width))
        g = jax.random.normal(jax.random.key(90 + s), (batch, width))
        flow = jgrad.analyze.layer_grad_norms(
            net, p, x, lambda y, g=g: jnp.sum(y * g), train=True
        )
        lg = np.asarray(flow.log10_norm, np.float64)[list(net.block_ends)]
        rates.append(np.mean(-np.diff(lg)[3:-3]))  # the middle layers
    return 10 ** (2 * np.mean(rates))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [8, 16])
def test_linear_rate_is_b_minus_2_over_b_minus_3(batch):
    want = theory.batch_norm_grad_growth("linear", batch)
    assert _measured_rate("linear", batch) == pytest.approx(want, rel=0.05)
    assert want > 1.05  # it explodes: no weight_var removes it


@pytest.mark.slow
def test_relu_large_batch_rate_is_pi_over_pi_minus_1():
    rate = _measured_rate("relu", 128, width=512, seeds=2)
    assert rate == pytest.approx(theory.batch_norm_grad_growth("relu"), rel=0.03)
