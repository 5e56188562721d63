"""Tests of ``jgrad.init``: empirical moments of large draws against each initializer's
variance formula, exact bounds of the uniform ones, orthogonality, exact constants, dtypes,
name lookup and argument errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import init

DENSE = (512, 1024)  # fan_in 512 != fan_out 1024, so a swapped fan is caught
CONV = (3, 3, 64, 128)  # HWIO: fan_in 9 * 64 = 576, fan_out 9 * 128 = 1152


def _check_moments(w, var, kurtosis):
    """Asserts mean ~ 0 and sample variance ~ var within 6 standard errors.

    For N iid draws with variance s^2 and kurtosis k (3 Gaussian, 9/5 uniform), the sample
    variance has variance (k - 1) s^4 / N (2 s^4 / N for a Gaussian), so its relative error
    has standard deviation sqrt((k - 1) / N): 0.2% for DENSE, 0.5% for CONV (Gaussian), and
    6 of those is 1.2% / 3.1%. The sample mean has standard error s / sqrt(N).
    """
    w = np.asarray(jnp.asarray(w, jnp.float32), np.float64).ravel()
    n = w.size
    assert abs(w.mean()) <= 6 * math.sqrt(var / n)
    rel_tol = 6 * math.sqrt((kurtosis - 1) / n)
    assert w.var() == pytest.approx(var, rel=rel_tol)


_GAUSS, _UNIF = 3.0, 9.0 / 5.0


def test_fans():
    assert init.fans((512, 1024)) == (512, 1024)
    assert init.fans(CONV) == (576, 1152)
    assert init.fans((5, 7, 2, 3)) == (70, 105)
    for bad in [(5,), ()]:
        with pytest.raises(ValueError, match="at least two axes"):
            init.fans(bad)


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize(
    "name, make, var_fn",
    [
        ("glorot_normal", lambda: init.glorot_normal(), lambda fi, fo: 2.0 / (fi + fo)),
        (
            "glorot_normal_gain",
            lambda: init.glorot_normal(gain=1.5),
            lambda fi, fo: 2.25 * 2.0 / (fi + fo),
        ),
        ("he_normal", lambda: init.he_normal(), lambda fi, fo: 2.0 / fi),
        (
            "he_normal_leaky",
            lambda: init.he_normal(negative_slope=0.2),
            lambda fi, fo: 2.0 / ((1 + 0.2**2) * fi),
        ),
        (
            "he_normal_fan_out",
            lambda: init.he_normal(mode="fan_out"),
            lambda fi, fo: 2.0 / fo,
        ),
        (
            "he_normal_leaky_fan_out",
            lambda: init.he_normal(negative_slope=0.2, mode="fan_out"),
            lambda fi, fo: 2.0 / ((1 + 0.2**2) * fo),
        ),
        ("lecun_normal", lambda: init.lecun_normal(), lambda fi, fo: 1.0 / fi),
        ("gaussian", lambda: init.gaussian(2.5), lambda fi, fo: 2.5 / fi),
        (
            "get_gaussian",
            lambda: init.get("gaussian", weight_var=2.5),
            lambda fi, fo: 2.5 / fi,
        ),
        ("get_he_normal", lambda: init.get("he_normal"), lambda fi, fo: 2.0 / fi),
    ],
)
def test_normal_variance(name, make, var_fn, shape, getkey):
    w = make()(getkey(), shape)
    assert w.shape == shape and w.dtype == jnp.float32
    var = var_fn(*init.fans(shape))
    _check_moments(w, var, _GAUSS)


@pytest.mark.parametrize(
    "make, var_fn",
    [
        (lambda: init.he_normal(), lambda fi, fo: 2.0 / fi),
        (lambda: init.glorot_normal(), lambda fi, fo: 2.0 / (fi + fo)),
        (lambda: init.gaussian(0.7), lambda fi, fo: 0.7 / fi),
    ],
)
def test_normal_is_untruncated(make, var_fn, getkey):
    # jax.nn.initializers' he/glorot normals truncate at 2 sigma; the papers' recursions
    # (and this module's docstring) assume a plain Gaussian: P(|z| > 2) = 0.0455, and the
    # largest of N = 524288 draws is ~4.9 sigma.
    w = np.asarray(make()(getkey(), DENSE), np.float64)
    z = w / math.sqrt(var_fn(*DENSE))
    frac = np.mean(np.abs(z) > 2.0)
    # Binomial standard error sqrt(p (1 - p) / N) = 2.9e-4; 6 of those.
    assert frac == pytest.approx(0.0455, abs=6 * 2.9e-4)
    assert np.abs(z).max() > 4.0
    # Gaussian kurtosis 3 (standard error of the sample kurtosis ~ sqrt(24 / N) = 0.007).
    assert np.mean(z**4) / np.mean(z**2) ** 2 == pytest.approx(3.0, abs=0.05)


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize(
    "name, make, bound_fn",
    [
        # Glorot & Bengio (2010) eq. (1): U[-1/sqrt(n), 1/sqrt(n)], variance 1/(3 n).
        (
            "standard_uniform",
            lambda: init.standard_uniform(),
            lambda fi, fo: 1 / math.sqrt(fi),
        ),
        # eq. (16): a = sqrt(6 / (fi + fo)), variance a^2 / 3 = 2 / (fi + fo).
        (
            "glorot_uniform",
            lambda: init.glorot_uniform(),
            lambda fi, fo: math.sqrt(6 / (fi + fo)),
        ),
        (
            "glorot_uniform_gain",
            lambda: init.glorot_uniform(gain=0.5),
            lambda fi, fo: 0.5 * math.sqrt(6 / (fi + fo)),
        ),
        # a = sqrt(3 var) with var = 2 / ((1 + slope^2) fan).
        ("he_uniform", lambda: init.he_uniform(), lambda fi, fo: math.sqrt(6 / fi)),
        (
            "he_uniform_leaky",
            lambda: init.he_uniform(negative_slope=0.2),
            lambda fi, fo: math.sqrt(6 / (1.04 * fi)),
        ),
        (
            "he_uniform_fan_out",
            lambda: init.he_uniform(mode="fan_out"),
            lambda fi, fo: math.sqrt(6 / fo),
        ),
        (
            "get_glorot_uniform",
            lambda: init.get("glorot_uniform"),
            lambda fi, fo: math.sqrt(6 / (fi + fo)),
        ),
    ],
)
def test_uniform_bound_and_variance(name, make, bound_fn, shape, getkey):
    w = make()(getkey(), shape)
    assert w.shape == shape and w.dtype == jnp.float32
    bound = bound_fn(*init.fans(shape))
    w64 = np.asarray(w, np.float64)
    # Never beyond the bound (float32(bound) is the largest value float32 can represent it as).
    assert np.abs(w64).max() <= float(np.float32(bound))
    # ...and reaching it: P(max |w| < (1 - 1e-3) a) = (1 - 1e-3)^N < e^-70 for N >= 73728.
    assert np.abs(w64).max() >= (1 - 1e-3) * bound
    assert w64.min() < 0 < w64.max()
    _check_moments(w, bound**2 / 3, _UNIF)


def test_standard_uniform_glorot_bengio_factor():
    # n Var[W] = n * (1/sqrt(n))^2 / 3 = 1/3, the shrink factor of Glorot & Bengio (2010).
    fi = DENSE[0]
    w = np.asarray(init.standard_uniform()(jax.random.key(11), DENSE), np.float64)
    assert fi * w.var() == pytest.approx(1 / 3, rel=6 * math.sqrt(0.8 / w.size))


# Few distinct shapes: each new shape compiles a QR (~1 s on CPU).
ORTHO_SHAPES = [(96, 64), (64, 64), (16, 24), (3, 3, 8, 16)]


@pytest.mark.parametrize("shape", ORTHO_SHAPES, ids=["tall", "square", "wide", "conv"])
def test_orthogonal(shape, getkey):
    for gain in (1.0, 1.7):
        w = init.orthogonal(gain)(getkey(), shape)
        assert w.shape == shape and w.dtype == jnp.float32
        m = np.asarray(w, np.float64).reshape(
            -1, shape[-1]
        )  # conv: (fan_in, out) = (72, 16)
        rows, cols = m.shape
        gram = m.T @ m if rows >= cols else m @ m.T
        np.testing.assert_allclose(
            gram, gain**2 * np.eye(min(rows, cols)), atol=1e-5 * gain**2
        )
        # Not an identity or permutation in disguise: the mass is spread over the entries.
        assert np.abs(m).max() < 0.8 * gain


def test_orthogonal_get_uses_sqrt_weight_var():
    w = np.asarray(
        init.get("orthogonal", weight_var=4.0)(jax.random.key(5), (96, 64)), np.float64
    )
    np.testing.assert_allclose(w.T @ w, 4.0 * np.eye(64), atol=1e-4)


def test_orthogonal_float64_is_orthogonal_to_float64_rounding():
    # The QR runs in the requested dtype: a float64 weight is orthogonal to ~1e-15 (a
    # float32 QR cast up is off by ~1e-7), and it is the float32 weight's draw.
    key = jax.random.key(3)
    with jax.enable_x64():
        w64 = np.asarray(init.orthogonal(1.5)(key, (64, 64), jnp.float64))
        assert w64.dtype == np.float64
        np.testing.assert_allclose(w64.T @ w64, 2.25 * np.eye(64), rtol=0, atol=1e-13)
        w32 = np.asarray(init.orthogonal(1.5)(key, (64, 64)), np.float64)
    np.testing.assert_allclose(w64, w32, atol=1e-5)


def test_orthogonal_is_haar():
    # The QR sign fix makes Q Haar-distributed, so Q[0, 0] is symmetric about 0. Without it
    # Householder QR returns q00 = -|a00| / ||a0||, always of one sign. 400 draws: the
    # fraction positive has standard error 0.025; [0.35, 0.65] is 6 of those.
    keys = jax.random.split(jax.random.key(17), 400)
    qs = jax.jit(jax.vmap(lambda k: init.orthogonal()(k, (8, 8))))(keys)
    frac = float(jnp.mean(qs[:, 0, 0] > 0))
    assert 0.35 <= frac <= 0.65
    # Haar columns are uniform on the sphere: E[q_ij^2] = 1/8 (standard error ~0.003).
    assert float(jnp.mean(qs[:, :, 3] ** 2)) == pytest.approx(1 / 8, abs=0.02)


@pytest.mark.parametrize("gain", [1.0, 0.5, -1.3])
@pytest.mark.parametrize("shape", [(5, 5), (4, 6), (6, 4)])
def test_identity(shape, gain):
    w = init.identity(gain)(jax.random.key(0), shape)
    assert w.dtype == jnp.float32
    np.testing.assert_array_equal(
        w, np.float32(gain) * np.eye(*shape, dtype=np.float32)
    )


def test_identity_get_and_rank():
    w = init.get("identity", weight_var=0.25)(jax.random.key(0), (3, 3))
    np.testing.assert_array_equal(w, 0.5 * np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        init.identity()(jax.random.key(0), (3, 3, 3))


def test_gaussian_bias(getkey):
    b0 = init.gaussian_bias(0.0)(getkey(), (1024,))
    assert b0.dtype == jnp.float32
    np.testing.assert_array_equal(b0, np.zeros(1024, np.float32))
    assert init.gaussian_bias()(getkey(), (7,)).tolist() == [0.0] * 7
    b = init.gaussian_bias(0.05)(getkey(), (200_000,))
    assert b.shape == (200_000,)
    # Relative standard error of the sample variance sqrt(2 / 2e5) = 0.3%; tolerance 6x.
    _check_moments(b, 0.05, _GAUSS)


def test_zeros_and_constant():
    z = init.zeros()(jax.random.key(0), (3, 4))
    assert z.dtype == jnp.float32
    np.testing.assert_array_equal(z, np.zeros((3, 4), np.float32))
    c = init.constant(0.37)(jax.random.key(0), (2, 5), jnp.bfloat16)
    assert c.dtype == jnp.bfloat16 and c.shape == (2, 5)
    np.testing.assert_array_equal(
        np.asarray(c, np.float32),
        np.full((2, 5), float(jnp.bfloat16(0.37)), np.float32),
    )


@pytest.mark.parametrize(
    "make",
    [
        init.standard_uniform,
        init.glorot_normal,
        init.glorot_uniform,
        init.he_normal,
        init.he_uniform,
        init.lecun_normal,
        init.orthogonal,
        init.identity,
        init.gaussian,
        lambda: init.gaussian_bias(0.3),
        init.zeros,
        lambda: init.constant(1.5),
    ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_respected(make, dtype):
    # One shape for the whole file where possible: less compiling.
    shape = ORTHO_SHAPES[0]
    w = make()(jax.random.key(2), shape, dtype)
    assert w.dtype == dtype and w.shape == shape


def test_bfloat16_variance():
    w = np.asarray(init.he_normal()(jax.random.key(9), DENSE, jnp.bfloat16), np.float64)
    # Variance to 2%; the unbiasedness test below is the tight one.
    assert w.var() == pytest.approx(2.0 / 512, rel=0.02)
    q = init.orthogonal(1.7)(jax.random.key(4), ORTHO_SHAPES[0], jnp.bfloat16)
    q = np.asarray(q, np.float64)
    # bfloat16 keeps 8 significant bits: relative rounding 2^-9 per entry.
    np.testing.assert_allclose(q.T @ q, 1.7**2 * np.eye(64), atol=3e-2)


# Regression: drawing directly in bfloat16 was biased (mean about -8 standard errors at
# N = 524288, variance 0.8% low; the uniform took only 128 values). Now drawn in float32.
@pytest.mark.parametrize("make", [init.he_normal, init.he_uniform])
def test_bfloat16_draws_are_unbiased(make):
    w = make()(jax.random.key(9), DENSE, jnp.bfloat16)
    fi, _ = init.fans(DENSE)
    var = 2.0 / fi
    w = np.asarray(w, np.float64).ravel()
    # Rounding float32 draws to bfloat16 (round-to-nearest-even) is unbiased, so a draw in
    # float32 then cast passes this (checked: |z| < 1.5 for four keys).
    assert abs(w.mean()) <= 6 * math.sqrt(var / w.size)
    assert w.var() == pytest.approx(var, rel=6 * math.sqrt(2 / w.size))


def test_keys_determine_draws(getkey):
    k1, k2 = getkey(), getkey()
    f = init.he_normal()
    shape = ORTHO_SHAPES[0]
    np.testing.assert_array_equal(f(k1, shape), f(k1, shape))
    assert not np.allclose(f(k1, shape), f(k2, shape))


@pytest.mark.parametrize("name", init.NAMES)
def test_get_matches_factory(name):
    factories = {
        "gaussian": init.gaussian(1.0),
        "orthogonal": init.orthogonal(1.0),
        "identity": init.identity(1.0),
        "standard_uniform": init.standard_uniform(),
        "glorot_normal": init.glorot_normal(),
        "glorot_uniform": init.glorot_uniform(),
        "he_normal": init.he_normal(),
        "he_uniform": init.he_uniform(),
        "lecun_normal": init.lecun_normal(),
    }
    assert set(factories) == set(init.NAMES)
    key = jax.random.key(23)
    shape = ORTHO_SHAPES[0]
    np.testing.assert_array_equal(
        init.get(name)(key, shape), factories[name](key, shape)
    )


def test_get_passes_callables_through():
    fn = init.lecun_normal()
    assert init.get(fn) is fn


def test_get_unknown_name_lists_names():
    with pytest.raises(ValueError) as err:
        init.get("nope")
    msg = str(err.value)
    assert "'nope'" in msg
    for name in init.NAMES:
        assert repr(name) in msg


@pytest.mark.parametrize("name", ["he_normal", "glorot_uniform", "standard_uniform"])
def test_get_rejects_weight_var_for_fixed_variance(name):
    with pytest.raises(ValueError, match="weight_var"):
        init.get(name, weight_var=2.0)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: init.gaussian(-1.0),
        lambda: init.gaussian(float("nan")),
        lambda: init.gaussian_bias(-0.1),
        lambda: init.glorot_normal(gain=-1.0),
        lambda: init.orthogonal(gain=-1.0),
        lambda: init.get("gaussian", weight_var=-2.0),
    ],
)
def test_negative_scales_raise(bad):
    with pytest.raises(ValueError, match="non-negative"):
        bad()


def test_he_mode_must_be_a_fan():
    with pytest.raises(ValueError, match="'fan_in'"):
        init.he_normal(mode="fan_avg")


@pytest.mark.parametrize(
    "make",
    [init.he_normal, init.glorot_uniform, init.orthogonal, init.standard_uniform],
)
def test_weight_initializers_reject_vectors(make):
    with pytest.raises(ValueError, match="at least two axes"):
        make()(jax.random.key(0), (5,))


def test_dense_layer_uses_named_init(getkey):
    # The mlp/dense path: w_init by name reaches the weights with the right fans.
    _, p = jgrad.nn.dense(1024, w_init="he_normal").init(getkey(), (512,))
    _check_moments(p["w"], 2.0 / 512, _GAUSS)
