"""Tests of ``jgrad.nn.activation``: closed-form derivatives against ``jax.grad``, the
bound ``gamma = sup |phi'|`` against a fine grid and against golden values derived by hand,
values against ``jax.nn``, argument errors, and the parametric ``prelu`` and ``maxout``
layers against independent references."""

import math

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
import pytest

import jgrad

# Every name in ACTIVATIONS with the jax reference for its values (approximate=... matters
# for GELU) and the points where it is not differentiable.
_REFERENCE = {
    "identity": (lambda x: x, ()),
    "linear": (lambda x: x, ()),
    "sigmoid": (jax.nn.sigmoid, ()),
    "tanh": (jnp.tanh, ()),
    "hard_tanh": (jax.nn.hard_tanh, (-1.0, 1.0)),
    "relu": (jax.nn.relu, (0.0,)),
    "leaky_relu": (lambda x: jax.nn.leaky_relu(x, negative_slope=0.01), (0.0,)),
    "elu": (lambda x: jax.nn.elu(x, alpha=1.0), (0.0,)),
    "selu": (jax.nn.selu, (0.0,)),
    "gelu": (lambda x: jax.nn.gelu(x, approximate=False), ()),
    "gelu_tanh": (lambda x: jax.nn.gelu(x, approximate=True), ()),
    "softplus": (jax.nn.softplus, ()),
    "silu": (jax.nn.silu, ()),
    "swish": (jax.nn.silu, ()),
    "erf": (jsp.erf, ()),
}

# (name, hyperparams): every activation with its defaults, plus non-default hyperparameters.
_CASES = [(name, {}) for name in jgrad.nn.ACTIVATIONS] + [
    ("leaky_relu", {"negative_slope": 0.2}),
    ("leaky_relu", {"negative_slope": 1.5}),
    ("elu", {"alpha": 0.5}),
    ("elu", {"alpha": 2.0}),
]


def _case_id(case):
    name, hp = case
    return name + "".join(f"-{k}={v}" for k, v in hp.items())


def _kinks(name):
    return _REFERENCE[name][1] + (0.0,)


def test_reference_table_covers_every_activation():
    # A new activation must get a reference here (and so in every parametrized test).
    assert set(_REFERENCE) == set(jgrad.nn.ACTIVATIONS)


@pytest.mark.parametrize("case", _CASES, ids=_case_id)
def test_deriv_matches_autodiff(case):
    name, hp = case
    act = jgrad.nn.activation(name, **hp)
    x = np.linspace(-6.0, 6.0, 2001, dtype=np.float32)
    far = np.all([np.abs(x - k) > 1e-3 for k in _kinks(name)], axis=0)
    x = jnp.asarray(x[far])
    got = jax.jit(act.deriv)(x)
    want = jax.jit(jax.vmap(jax.grad(act.fn)))(x)
    assert got.shape == x.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", _CASES, ids=_case_id)
def test_deriv_keeps_shape_and_dtype(case, rng):
    name, hp = case
    act = jgrad.nn.activation(name, **hp)
    x = jnp.asarray(rng.normal(size=(3, 5, 7)) * 3, jnp.float32)
    for out in (act.fn(x), act.deriv(x)):
        assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("case", _CASES, ids=_case_id)
def test_gamma_is_sup_of_deriv_on_grid(case):
    name, hp = case
    act = jgrad.nn.activation(name, **hp)
    # Step 1e-4 on [-20, 20] (the grid contains 0.0 exactly), plus points just left of
    # every kink, where ELU/SELU approach their supremum alpha * e^0.
    x = np.linspace(-20.0, 20.0, 400001)
    x = np.concatenate([x, [k - 1e-12 for k in _kinks(name)]])
    with jax.enable_x64(True):
        d = np.asarray(act.deriv(jnp.asarray(x, jnp.float64)))
    assert d.dtype == np.float64
    grid_max = float(np.max(np.abs(d)))
    # Upper: no point exceeds the bound. Lower: the bound is tight. The maxima of the smooth
    # ones lie at isolated points where |phi'| is flat to second order, so a 1e-4 step
    # loses ~|phi'''| 1e-8; softplus's sup 1 is approached as sigmoid(20) = 1 - 2e-9.
    assert grid_max <= act.gamma + 1e-6
    assert grid_max >= act.gamma - 1e-4


_SELU_LAMBDA = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717


@pytest.mark.parametrize(
    "case, gamma",
    [
        # phi' = 1 everywhere.
        (("identity", {}), 1.0),
        (("linear", {}), 1.0),
        # sigma' = s (1 - s) is largest at s = 1/2 (x = 0): 1/4.
        (("sigmoid", {}), 0.25),
        # tanh' = 1 - tanh^2 is largest at x = 0: 1.
        (("tanh", {}), 1.0),
        # Slope 1 on (-1, 1), 0 outside.
        (("hard_tanh", {}), 1.0),
        # Slopes {0, 1}; leaky: {a, 1} so gamma = max(1, |a|).
        (("relu", {}), 1.0),
        (("leaky_relu", {}), 1.0),
        (("leaky_relu", {"negative_slope": 0.2}), 1.0),
        (("leaky_relu", {"negative_slope": 1.5}), 1.5),
        # alpha e^x on x < 0 tends to alpha as x -> 0-: gamma = max(1, alpha).
        (("elu", {}), 1.0),
        (("elu", {"alpha": 0.5}), 1.0),
        (("elu", {"alpha": 2.0}), 2.0),
        # lambda alpha e^x on x < 0 -> lambda alpha = 1.7581 > lambda = 1.0507.
        (("selu", {}), 1.7580993408473766),
        # (Phi + x phi)' = phi (2 - x^2) = 0 at x = sqrt 2: Phi(sqrt2) + sqrt2 phi(sqrt2)
        # = (1 + erf(1)) / 2 + sqrt2 e^-1 / sqrt(2 pi).
        (("gelu", {}), 1.128904145185155),
        # Root x* = 1.4185040087908285 of phi'' found by brentq on jax.grad(jax.grad(fn))
        # in float64 (scipy), phi'(x*).
        (("gelu_tanh", {}), 1.1289930686587717),
        # sigma(x) -> 1 as x -> inf, not attained.
        (("softplus", {}), 1.0),
        # silu'' = s (1 - s) (2 + x (1 - 2 s)) = 0 at x* = 2.3993572805154675 (brentq,
        # float64): silu'(x*) = s (1 + x* (1 - s)).
        (("silu", {}), 1.0998393201288668),
        (("swish", {}), 1.0998393201288668),
        # erf' = 2/sqrt(pi) e^{-x^2}, largest at x = 0.
        (("erf", {}), 2.0 / math.sqrt(math.pi)),
    ],
    ids=lambda v: _case_id(v) if isinstance(v, tuple) else "",
)
def test_gamma_golden(case, gamma):
    name, hp = case
    got = jgrad.nn.activation(name, **hp).gamma
    # gelu_tanh and silu are located numerically by the library (to ~1e-9).
    assert got == pytest.approx(gamma, rel=1e-9, abs=0)


def test_selu_gamma_is_lambda_alpha():
    assert _SELU_LAMBDA * _SELU_ALPHA == pytest.approx(1.7580993408473766, rel=1e-15)
    assert jgrad.nn.activation("selu").gamma == pytest.approx(
        _SELU_LAMBDA * _SELU_ALPHA, rel=1e-15
    )


@pytest.mark.parametrize("name", jgrad.nn.ACTIVATIONS)
def test_fn_matches_jax_reference(name, rng):
    act = jgrad.nn.activation(name)
    ref = _REFERENCE[name][0]
    x = jnp.asarray(rng.normal(size=(4, 257)) * 3, jnp.float32)
    np.testing.assert_allclose(jax.jit(act.fn)(x), ref(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "name, hp, ref",
    [
        ("leaky_relu", {"negative_slope": 0.2}, lambda x: jax.nn.leaky_relu(x, 0.2)),
        ("leaky_relu", {"negative_slope": 1.5}, lambda x: jax.nn.leaky_relu(x, 1.5)),
        ("elu", {"alpha": 0.5}, lambda x: jax.nn.elu(x, alpha=0.5)),
        ("elu", {"alpha": 2.0}, lambda x: jax.nn.elu(x, alpha=2.0)),
    ],
)
def test_fn_with_hyperparams_matches_jax(name, hp, ref, rng):
    act = jgrad.nn.activation(name, **hp)
    assert act.params == hp
    x = jnp.asarray(rng.normal(size=(513,)) * 3, jnp.float32)
    np.testing.assert_allclose(act.fn(x), ref(x), rtol=1e-6, atol=1e-6)


def test_default_hyperparams_are_recorded():
    assert jgrad.nn.activation("leaky_relu").params == {"negative_slope": 0.01}
    assert jgrad.nn.activation("elu").params == {"alpha": 1.0}
    assert jgrad.nn.activation("tanh").params == {}


def test_aliases_are_the_canonical_activation(rng):
    x = jnp.asarray(rng.normal(size=(64,)), jnp.float32)
    for alias, canonical in [("linear", "identity"), ("swish", "silu")]:
        a, c = jgrad.nn.activation(alias), jgrad.nn.activation(canonical)
        assert a.name == canonical and a.gamma == c.gamma
        np.testing.assert_array_equal(a.fn(x), c.fn(x))
        np.testing.assert_array_equal(a.deriv(x), c.deriv(x))


def test_activation_instance_passes_through():
    act = jgrad.nn.activation("elu", alpha=0.5)
    assert jgrad.nn.activation(act) is act
    with pytest.raises(ValueError, match="alpha"):
        jgrad.nn.activation(act, alpha=2.0)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        jgrad.nn.activation("tanhh")
    msg = str(err.value)
    assert "'tanhh'" in msg
    for name in ("'tanh'", "'relu'", "'gelu_tanh'", "'erf'"):
        assert name in msg


@pytest.mark.parametrize("name", ["prelu", "maxout"])
def test_parametric_names_point_at_the_layer(name):
    with pytest.raises(ValueError, match=rf"jgrad\.nn\.{name}\("):
        jgrad.nn.activation(name)


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match="`alpha`.*'tanh'"):
        jgrad.nn.activation("tanh", alpha=1.0)
    with pytest.raises(ValueError, match="`alpha`.*negative_slope"):
        jgrad.nn.activation("leaky_relu", alpha=0.1)


def test_negative_elu_alpha_raises():
    with pytest.raises(ValueError, match="alpha"):
        jgrad.nn.activation("elu", alpha=-1.0)


def test_elementwise_layer_applies_fn(rng, getkey):
    layer = jgrad.nn.elementwise("leaky_relu", negative_slope=0.2)
    out_shape, params = layer.init(getkey(), (4, 6))
    assert out_shape == (4, 6) and params == {}
    x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    np.testing.assert_allclose(
        layer.apply(params, x), jax.nn.leaky_relu(x, 0.2), rtol=1e-7
    )
    assert layer.info.activation.params == {"negative_slope": 0.2}


# ---------------------------------------------------------------- prelu


def test_prelu_init_and_output(rng, getkey):
    layer = jgrad.nn.prelu(0.1)
    out_shape, params = layer.init(getkey(), (6,))
    assert out_shape == (6,)
    assert set(params) == {"slope"}
    assert params["slope"].shape == () and float(params["slope"]) == pytest.approx(0.1)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    # The slope is read from params (a trained value), not from init_slope.
    for slope in (0.1, 0.7):
        p = {"slope": jnp.asarray(slope, jnp.float32)}
        y = jax.jit(layer.apply)(p, jnp.asarray(x))
        np.testing.assert_allclose(
            y, np.where(x >= 0, x, np.float32(slope) * x), rtol=1e-7
        )


def test_prelu_default_slope_is_he_et_al():
    _, params = jgrad.nn.prelu().init(jax.random.key(3), (2,))
    assert float(params["slope"]) == 0.25


def test_prelu_gradients(rng):
    layer = jgrad.nn.prelu(0.3)
    x = rng.normal(size=(4, 9)).astype(np.float32)
    ct = rng.normal(size=(4, 9)).astype(np.float32)
    assert (x < 0).any() and (x > 0).any()
    params = {"slope": jnp.asarray(0.3, jnp.float32)}

    def loss(p, xx):
        return jnp.sum(jnp.asarray(ct) * layer.apply(p, xx))

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(x))
    # d/da sum(ct * where(x >= 0, x, a x)) = sum over x < 0 of ct * x.
    want_slope = np.sum(np.where(x < 0, ct.astype(np.float64) * x, 0.0))
    np.testing.assert_allclose(g_p["slope"], want_slope, rtol=1e-5)
    np.testing.assert_allclose(g_x, np.where(x >= 0, ct, 0.3 * ct), rtol=1e-6)


# ---------------------------------------------------------------- maxout


def test_maxout_matches_numpy_reference(rng, getkey):
    k, d_in, d_out = 4, 5, 3
    layer = jgrad.nn.maxout(d_out, num_pieces=k, bias_var=0.5)
    out_shape, params = layer.init(getkey(), (d_in,))
    assert out_shape == (d_out,)
    assert params["w"].shape == (k, d_in, d_out) and params["b"].shape == (k, d_out)
    # Pieces are drawn independently (not one weight repeated).
    assert not np.allclose(params["w"][0], params["w"][1])
    w = np.asarray(params["w"], np.float64)
    b = np.asarray(params["b"], np.float64)
    assert np.abs(b).max() > 0.1  # bias_var=0.5 was used, so the bias term is tested

    x = rng.normal(size=(7, d_in)).astype(np.float32)
    pieces = np.stack(
        [x.astype(np.float64) @ w[j] + b[j] for j in range(k)]
    )  # (k, 7, o)
    want = pieces.max(axis=0)
    # The max is taken over different pieces at different entries.
    assert len(np.unique(pieces.argmax(axis=0))) > 1

    y = jax.jit(layer.apply)(params, jnp.asarray(x))
    assert y.shape == (7, d_out)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    # One unbatched example gives the same row.
    np.testing.assert_allclose(
        layer.apply(params, jnp.asarray(x[2])), want[2], rtol=1e-5
    )


def test_maxout_rejects_wrong_feature_size(getkey):
    layer = jgrad.nn.maxout(3, num_pieces=2)
    _, params = layer.init(getkey(), (5,))
    with pytest.raises(ValueError, match="5"):
        layer.apply(params, jnp.arange(4.0))
