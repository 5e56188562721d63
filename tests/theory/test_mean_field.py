"""jgrad.theory: golden values with their derivations, closed forms against quadrature,
fixed points as invariants, and theory against simulation of wide networks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import theory

GRID = [(0.5, 0.01), (1.5, 0.1), (2.5, 0.5), (3.0, 0.05)]


def test_relu_chi1_is_half_the_weight_var_and_its_fixed_points():
    # E[relu'(u)^2] = P(u > 0) = 1/2 at every q, so chi1 = weight_var / 2 with or
    # without a fixed point; V(q) = weight_var q / 2 + bias_var gives
    # q* = bias_var / (1 - weight_var / 2) below weight_var = 2.
    w = np.array([0.5, 1.0, 1.9, 2.0, 2.5, 4.0])
    b = np.array([0.3, 0.1, 0.05, 0.0, 0.2, 0.0])
    mf = theory.mean_field("relu", w, b)
    np.testing.assert_allclose(mf.chi1, w / 2, rtol=1e-7)
    below = w < 2
    np.testing.assert_allclose(
        mf.q_star[below], b[below] / (1 - w[below] / 2), rtol=1e-6
    )
    assert list(mf.has_fixed_point) == [True, True, True, True, False, False]
    assert list(mf.marginal) == [False, False, False, True, False, False]
    assert list(mf.phase()) == ["ordered"] * 3 + ["critical", "unbounded", "unbounded"]
    assert np.isinf(mf.q_star[4:]).all()
    # weight_var = 2, bias_var = 0: every length is a fixed point
    q = np.array([0.01, 0.7, 3.0, 250.0])
    np.testing.assert_allclose(theory.length_map("relu", 2.0, 0.0, q), q, rtol=1e-7)
    assert bool(mf.marginal[3]) and float(mf.xi_c[3]) == math.inf
    np.testing.assert_allclose(theory.critical_weight_var("relu", [0.0, 0.4]), 2.0)


def test_tanh_without_bias_is_critical_at_weight_var_one():
    # tanh'(0) = 1 and q* = 0 for weight_var <= 1 (V(q) < q for q > 0), so
    # chi1 = weight_var tanh'(0)^2 = weight_var there: critical at exactly 1. Just above,
    # q* ~ (weight_var - 1) / (2 weight_var) and chi1 = 1 - O((weight_var - 1)^2): the
    # root is flat on that side, so the root finder resolves it to about sqrt(eps).
    with jax.enable_x64():
        assert float(theory.critical_weight_var("tanh", 0.0)) == pytest.approx(
            1.0, abs=1e-7
        )
        mf = theory.mean_field("tanh", jnp.array([0.7, 1.0, 1.3]), 0.0)
    np.testing.assert_allclose(mf.q_star[:2], 0.0, atol=1e-12)
    np.testing.assert_allclose(mf.chi1[:2], [0.7, 1.0], rtol=1e-12)
    assert list(mf.phase()) == ["ordered", "critical", "chaotic"]
    assert float(mf.q_star[2]) > 0 and float(mf.c_star[2]) < 1


@pytest.mark.parametrize("name", ["relu", "erf", "leaky_relu", "linear"])
def test_closed_forms_equal_quadrature(name):
    act = jgrad.nn.activation(
        name, **({"negative_slope": 0.2} if name == "leaky_relu" else {})
    )
    # erf is analytic: quadrature agrees to 1e-10; the others have a kink at 0, where
    # an even rule converges slowly (about 1e-6 at 256 nodes)
    tol = 1e-10 if name == "erf" else 2e-5
    w = np.array([v for v, _ in GRID]) * (0.3 if name == "linear" else 1.0)
    w = w * (0.5 if name in ("relu", "leaky_relu") else 1.0)
    b = np.array([v for _, v in GRID])
    with jax.enable_x64():
        closed = theory.mean_field(act, w, b)
        quad = theory.mean_field(act, w, b, quadrature=True)
    for f in ("q_star", "c_star", "chi1", "chi_c", "xi_q", "xi_c"):
        np.testing.assert_allclose(
            getattr(quad, f), getattr(closed, f), rtol=tol, atol=tol, err_msg=f
        )


@pytest.mark.parametrize("name", ["tanh", "erf", "sigmoid", "gelu"])
def test_doubling_the_quadrature_changes_smooth_results_below_1e_10(name):
    w = np.array([v for v, _ in GRID])
    b = np.array([v for _, v in GRID])
    with jax.enable_x64():
        a = theory.mean_field(name, w, b, quadrature=True)
        c = theory.mean_field(name, w, b, degree=512, quadrature=True)
    for f in ("q_star", "c_star", "chi1", "chi_c", "xi_q", "xi_c"):
        x, y = np.asarray(getattr(a, f)), np.asarray(getattr(c, f))
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-10, err_msg=f)


def test_fixed_points_are_fixed_and_the_scales_are_the_maps_slopes():
    with jax.enable_x64():
        for name in ("tanh", "erf", "sigmoid"):
            for w, b in GRID:
                mf = theory.mean_field(name, w, b)
                q, c = float(mf.q_star), float(mf.c_star)
                assert float(theory.length_map(name, w, b, q)) == pytest.approx(
                    q, rel=1e-12
                )
                assert float(theory.correlation_map(name, w, b, q, c)) == pytest.approx(
                    c, abs=1e-10
                )
                # xi_q = -1/log V'(q*), by a finite difference of the length map
                h = 1e-6 * q
                dv = (
                    theory.length_map(name, w, b, q + h)
                    - theory.length_map(name, w, b, q - h)
                ) / (2 * h)
                assert float(mf.xi_q) == pytest.approx(
                    -1 / math.log(float(dv)), rel=1e-6
                )
                if c < 1:  # chi_c is the slope of the correlation map at c*
                    e = 1e-6
                    dc = (
                        theory.correlation_map(name, w, b, q, c + e)
                        - theory.correlation_map(name, w, b, q, c - e)
                    ) / (2 * e)
                    assert float(mf.chi_c) == pytest.approx(float(dc), rel=1e-5)


def test_vmap_jit_and_broadcasting_agree():
    w = jnp.linspace(0.5, 3.0, 6)
    b = jnp.linspace(0.0, 0.5, 6)
    direct = theory.mean_field("tanh", w, b)
    mapped = jax.jit(jax.vmap(lambda w, b: theory.mean_field("tanh", w, b)))(w, b)
    for x, y in zip(direct, mapped, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    crit = theory.critical_weight_var("tanh", b)
    np.testing.assert_allclose(theory.chi1("tanh", crit, b), 1.0, rtol=2e-5)
    grid = theory.chi1("tanh", w[:, None], b[None, :])
    assert grid.shape == (6, 6)
    np.testing.assert_allclose(grid[2, 4], theory.chi1("tanh", w[2], b[4]), rtol=1e-6)


def test_predictions_of_measurable_quantities():
    mf = theory.mean_field("tanh", 2.0, 0.05)
    assert float(mf.jacobian_msv(10)) == pytest.approx(float(mf.chi1) ** 10, rel=1e-5)
    assert float(mf.trainable_depth) == pytest.approx(6 * float(mf.xi_c), rel=1e-6)
    # erf's chi1 in closed form: weight_var (4/pi) / sqrt(1 + 4 q*)
    mf = theory.mean_field("erf", 2.0, 0.05)
    q = float(mf.q_star)
    assert float(mf.chi1) == pytest.approx(
        2.0 * 4 / math.pi / math.sqrt(1 + 4 * q), rel=1e-6
    )


def test_batch_norm_rates():
    assert theory.batch_norm_grad_growth("linear", 8) == pytest.approx(6 / 5)
    assert theory.batch_norm_grad_growth("linear", 16) == pytest.approx(14 / 13)
    assert theory.batch_norm_grad_growth("relu") == pytest.approx(
        math.pi / (math.pi - 1)
    )
    assert theory.batch_norm_grad_growth("linear") == pytest.approx(1.0)
    # quadrature route: tanh's E[tanh'^2] / Var[tanh] by a float64 Riemann sum
    z = np.linspace(-12, 12, 200001)
    pdf = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    d2 = np.trapezoid((1 - np.tanh(z) ** 2) ** 2 * pdf, z)
    var = np.trapezoid(np.tanh(z) ** 2 * pdf, z)
    assert theory.batch_norm_grad_growth("tanh") == pytest.approx(d2 / var, rel=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="`activation`.*tanh"):
        theory.mean_field("tanhh", 1.0, 0.0)
    with pytest.raises(ValueError, match="`weight_var` must be finite and >= 0"):
        theory.chi1("tanh", -1.0, 0.0)
    with pytest.raises(ValueError, match="`bias_var` must be finite and >= 0"):
        theory.mean_field("tanh", [1.0, 2.0], [0.1, -0.1])
    with pytest.raises(ValueError, match="`bias_var`"):
        theory.critical_weight_var("tanh", np.nan)
    with pytest.raises(ValueError, match="`weight_var` must be a non-negative float"):
        theory.q_fixed_point("tanh", [], 0.0)
    with pytest.raises(ValueError, match="`degree` must be an even number"):
        theory.mean_field("tanh", 1.0, 0.0, degree=21)
    with pytest.raises(ValueError, match="`degree` must be at most 1024"):
        theory.hermite_rule(2048)
    with pytest.raises(ValueError, match="`batch_size` must be at least 4"):
        theory.batch_norm_grad_growth("linear", 3)
    with pytest.raises(ValueError, match="`batch_size` must be None"):
        theory.batch_norm_grad_growth("relu", 32)


# --- theory against simulation --------------------------------------------------------


def _simulate(name, wv, bv, *, width, depth, seeds, n=4):
    """Per-layer mean squared pre-activation q^l and the growth of ||dL/dh^l||^2 per
    layer (backward from a Gaussian cotangent at h^depth) in independent Gaussian
    networks, float32; weights regenerated from their keys on the way back."""
    act = jgrad.nn.activation(name)

    def weights(key, layer):
        kw, kb = jax.random.split(jax.random.fold_in(key, layer))
        w = jax.random.normal(kw, (width, width)) * jnp.sqrt(wv / width)
        return w, jax.random.normal(kb, (width,)) * jnp.sqrt(bv)

    def one(key):
        x = jax.random.normal(jax.random.fold_in(key, 10_001), (n, width))

        def fwd(h, layer):
            w, b = weights(key, layer)
            pre = act.fn(h) @ w + b[None, :]
            return pre, pre

        w0, b0 = weights(key, 0)
        h1 = x @ w0 + b0[None, :]
        _, hs = jax.lax.scan(fwd, h1, jnp.arange(1, depth))
        hs = jnp.concatenate([h1[None], hs])  # (depth, n, width): h^1..h^depth
        g = jax.random.normal(jax.random.fold_in(key, 10_002), (n, width))

        def bwd(g, k):  # dL/dh^k from dL/dh^{k+1}: phi'(h^k) * (g W_k^T)
            w, _ = weights(key, k)
            g = act.deriv(hs[k - 1]) * (g @ w.T)
            return g, jnp.sum(g * g)

        _, norms = jax.lax.scan(bwd, g, jnp.arange(depth - 1, 0, -1))
        norms = jnp.concatenate([jnp.sum(g * g)[None], norms])[::-1]  # layers 1..depth
        return jnp.mean(hs**2, axis=(1, 2)), norms

    keys = jax.random.split(jax.random.key(0), seeds)
    q, norms = jax.jit(jax.vmap(one))(keys)
    growth = np.exp(
        np.mean(np.diff(np.log(np.asarray(norms, np.float64))[:, ::-1], axis=1))
    )
    return np.asarray(q).mean(0), growth


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,wv,bv", [("tanh", 0.8, 0.05), ("tanh", 2.0, 0.05), ("relu", 1.5, 0.1)]
)
def test_wide_networks_follow_the_theory(name, wv, bv):
    q, growth = _simulate(name, wv, bv, width=1000, depth=30, seeds=12)
    mf = theory.mean_field(name, wv, bv)
    # lengths at layers 21..30 (past the transient) within 2% of q*
    assert np.mean(q[20:]) == pytest.approx(float(mf.q_star), rel=0.02)
    assert growth == pytest.approx(float(mf.chi1), rel=0.05)
    assert (float(mf.chi1) < 1) == (name == "relu" or wv < 1.5)
