"""Theory against simulation: how the initialization scales the forward signal of deep nets.

He et al. (2015), eq. (10): for a ReLU layer ``z = W h`` with ``Var[W] = v / n``,
``E[relu(z)^2] = Var[z] / 2 = (v / 2) q_l`` where ``q_l`` is the mean square of ``h_l``. So
``q_{l+1} = (n Var[W] / 2) q_l``: He's ``Var[W] = 2 / fan_in`` keeps ``q_l = q_0`` at every
depth, and Glorot's ``2 / (fan_in + fan_out)`` (``1 / n`` for square layers) halves it at
every layer. Glorot & Bengio (2010), eq. (1): their "standard" ``U[-1/sqrt(n), 1/sqrt(n)]``
has ``n Var[W] = 1/3``, so a tanh net in its linear regime shrinks the variance by 1/3 per
layer.

References:
    He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", ICCV 2015, arXiv:1502.01852.
    Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
    networks", AISTATS 2010.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad

DEPTH, WIDTH, BATCH = 50, 512, 256


@functools.cache
def _mean_squares(init, activation="relu", depth=DEPTH, in_dim=WIDTH):
    """``(key, scale) -> (q_0, q_1..q_depth, min post-activation)`` for a fresh net and a
    fresh batch of BATCH inputs ``scale * N(0, 1)`` per key; q_l is the mean square of
    block l's output. ``apply`` runs jitted; ``init`` runs eagerly (jitting 50 unrolled
    initializers costs ~6 s of compilation, eager ops are compiled once per shape)."""
    net = jgrad.nn.mlp(depth, WIDTH, activation=activation, init=init)
    assert len(net.block_ends) == depth

    @jax.jit
    def stats(params, x):
        _, hs = net.apply(params, x, return_intermediates=True)
        post = [hs[i] for i in net.block_ends]
        q = jnp.stack([jnp.mean(h**2) for h in post])
        min_post = jnp.min(jnp.stack([jnp.min(h) for h in post]))
        return jnp.mean(x**2), q, min_post

    def run(key, scale):
        k_net, k_x = jax.random.split(key)
        _, params = net.init(k_net, (in_dim,))
        x = scale * jax.random.normal(k_x, (BATCH, in_dim), jnp.float32)
        return stats(params, x)

    return run


def test_he_relu_preserves_mean_square_at_every_layer():
    # For one example, q_{l+1} / q_l = (2 / n) sum_j relu(z_j)^2 with z_j ~ N(0, 1), whose
    # mean is 1 (so E[q_l] = q_0 exactly at every depth) and whose variance is
    # (4 / n) (E[relu^4] - E[relu^2]^2) = (4 / n) (3/2 - 1/4) = 5 / n. Over 50 layers
    # log q_50 therefore has standard deviation sqrt(50 * 5 / 512) = 0.70: a single net
    # leaves the factor-2 band at some layer about 58% of the time (a batch helps little:
    # depth correlates its examples, and the weights are shared). Averaging q_l over 16
    # independent nets brings the standard deviation of log q_50 to ~0.19 and the chance
    # of any layer leaving the band to < 0.1% (simulated: 200k groups of 16 chains).
    run = _mean_squares("he_normal")
    keys = jax.random.split(jax.random.key(2015), 16)
    ratios = []
    for key in keys:
        q0, q, min_post = run(key, 1.0)
        assert float(min_post) >= 0.0  # block_ends are the ReLU outputs
        ratios.append(np.asarray(q, np.float64) / float(q0))
    ratios = np.mean(ratios, axis=0)
    assert ratios.shape == (DEPTH,)
    assert np.all(ratios > 0.5) and np.all(ratios < 2.0), ratios
    # A Glorot-scaled (or fan-confused) net would be at 0.5^50 by now.


@pytest.mark.parametrize(
    "init, factor",
    [
        # n Var[W] = 2: q_{l+1} / q_l = 1 (its E[log] is -5/(2n) = -0.005 per layer).
        ("he_normal", 1.0),
        # n Var[W] = n * 2 / (n + n) = 1: q_{l+1} / q_l = 1/2.
        ("glorot_normal", 0.5),
    ],
)
def test_per_layer_factor(init, factor):
    # The geometric mean over 50 layers, exp(mean log(q_{l+1} / q_l)) = (q_50 / q_0)^(1/50):
    # log q_50 has standard deviation 0.70 (see above), so the mean log ratio has 0.014,
    # and the 10% band (log 0.1) is 7 of those.
    q0, q, _ = _mean_squares(init)(jax.random.key(7), 1.0)
    logs = np.log(np.concatenate([[float(q0)], np.asarray(q, np.float64)]))
    geo = math.exp(np.mean(np.diff(logs)))
    assert geo == pytest.approx(factor, rel=0.1)
    if init == "glorot_normal":
        # The brief's band, 0.5 +- 0.05, is the same 10%; pin the halving at the last layer
        # too: q_50 / q_0 = 2^-50 up to the lognormal spread (factor e^{+-4 * 0.70}).
        assert abs(logs[-1] - logs[0] - 50 * math.log(0.5)) < 4 * 0.70


def test_glorot_bengio_standard_init_shrinks_tanh_by_one_third():
    # In the linear regime (inputs of scale 0.01, so |z| ~ 0.006 and tanh z = z (1 - 1e-5))
    # q_{l+1} / q_l = fan_in Var[W] = 1/3. The first layer maps 128 -> 512, so a bound using
    # fan_out (1/12) or fan-average (2/5) would fail. Sampling error: ||W||_F^2 has relative
    # std sqrt(0.8 / (128 * 512)) = 0.35%, and the batch of 256 adds less; 5% is ~10 sigma.
    q0, q, _ = _mean_squares("standard_uniform", "tanh", depth=3, in_dim=128)(
        jax.random.key(2010), 0.01
    )
    q = np.concatenate([[float(q0)], np.asarray(q, np.float64)])
    assert q[0] == pytest.approx(1e-4, rel=0.05)  # the inputs are what they claim
    factors = q[1:] / q[:-1]
    np.testing.assert_allclose(factors, 1 / 3, rtol=0.05)
