"""Every bad input to ``jgrad.nn``, ``jgrad.init`` and ``jgrad.data`` is a ValueError raised
before tracing, in one format: "`name` must be <expected>, got <value>. <fix>".

One test per class of bad input; each asserts the message names the argument and the
received value.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import nn

NAN, INF = float("nan"), float("inf")

# "`name` must be <expected>, got <value>. <fix>": one sentence with a fix after it.
_FORMAT = re.compile(r"^`(?P<name>[\w.\[\]]+)` must be .+, got .+\. \S.*$", re.DOTALL)


def _raises(fn, name, got):
    """Calls fn, expects a ValueError in the house format naming ``name`` and ``got``."""
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    m = _FORMAT.match(msg)
    assert m, f"not in the house format: {msg!r}"
    assert m["name"] == name, msg
    assert got in msg.split(", got ", 1)[1], f"{got!r} not after 'got' in {msg!r}"
    return msg


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


# --- integers: np.int64 and 0-d integer arrays are integers; floats and bools are not ---


@pytest.mark.parametrize(
    "as_int",
    [np.int64, np.int32, np.asarray, jnp.asarray],
    ids=["np.int64", "np.int32", "np.asarray", "jnp.asarray"],
)
def test_integer_like_sizes_build_the_same_network(as_int):
    key = jax.random.key(1)
    cases = [
        (lambda i: nn.mlp(i(3), i(6), out_dim=i(2)), (4,)),
        (lambda i: nn.mlp(i(3), i(4), stacked=True), (4,)),
        (lambda i: nn.mlp(i(2), i(5), activation="maxout", num_pieces=i(3)), (4,)),
        (lambda i: nn.dense(i(5)), (3,)),
        (lambda i: nn.maxout(i(4), i(2)), (3,)),
        (lambda i: nn.conv2d(i(3), i(2), stride=(i(1), i(2))), (6, 6, 2)),
        (lambda i: nn.avg_pool(i(2), i(1)), (6, 6, 2)),
        (lambda i: nn.resnet(i(4), channels=i(3), num_blocks=i(1)), (8, 8, 1)),
    ]
    for build, in_shape in cases:
        # Reference: the same network built from Python ints.
        want_shape, want = build(int).init(key, in_shape)
        got_shape, got = build(as_int).init(key, tuple(as_int(d) for d in in_shape))
        assert got_shape == want_shape
        assert all(type(d) is int for d in got_shape), got_shape
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_depth_from_np_arange():
    n_blocks = [len(nn.mlp(d, 8).block_ends) for d in np.arange(2, 5)]
    assert n_blocks == [2, 3, 4]


@pytest.mark.parametrize(
    "call, name, got",
    [
        (lambda: nn.mlp(3.0, 8), "depth", "3.0"),
        (lambda: nn.mlp(True, 8), "depth", "True"),
        (lambda: nn.mlp(3, np.float64(8.0)), "width", "8.0"),
        (
            lambda: nn.mlp(3, 8, num_pieces=2.0, activation="maxout"),
            "num_pieces",
            "2.0",
        ),
        (lambda: nn.mlp(3, 8, out_dim=1.5), "out_dim", "1.5"),
        (lambda: nn.dense(4.0), "out_dim", "4.0"),
        (lambda: nn.maxout(4, num_pieces=False), "num_pieces", "False"),
        (lambda: nn.conv2d(8, kernel_size=3.0), "kernel_size", "3.0"),
        (lambda: nn.conv2d(8, stride=(1, 2.0)), "stride", "2.0"),
        (lambda: nn.conv2d(8, kernel_size="3"), "kernel_size", "'3'"),
        (lambda: nn.avg_pool(window=2.5), "window", "2.5"),
        (lambda: nn.resnet(num_blocks=2.0), "num_blocks", "2.0"),
        (lambda: nn.dense(3).init(jax.random.key(0), (4.0,)), "in_shape", "(4.0,)"),
        (lambda: nn.mlp(2, 3).init(jax.random.key(0), (True,)), "in_shape", "(True,)"),
        (
            lambda: jgrad.init.he_normal()(jax.random.key(0), (3.0, 4)),
            "shape",
            "(3.0, 4)",
        ),
    ],
)
def test_float_and_bool_sizes_are_refused(call, name, got):
    _raises(call, name, got)


# --- finite reals: every float hyperparameter refuses NaN, inf and strings ---

_LAYER = nn.dense(3)
_FLOAT_ARGS = [
    ("residual_scale", lambda v: nn.mlp(2, 4, residual=True, residual_scale=v)),
    ("weight_var", lambda v: nn.mlp(2, 4, weight_var=v)),
    ("bias_var", lambda v: nn.mlp(2, 4, bias_var=v)),
    ("drop_prob", lambda v: nn.mlp(2, 4, drop_prob=v)),
    ("weight_var", lambda v: nn.dense(4, weight_var=v)),
    ("bias_var", lambda v: nn.maxout(4, bias_var=v)),
    ("weight_var", lambda v: nn.conv2d(4, weight_var=v)),
    ("negative_slope", lambda v: nn.activation("leaky_relu", negative_slope=v)),
    (
        "negative_slope",
        lambda v: nn.mlp(
            2, 4, activation=nn.activation("leaky_relu", negative_slope=v)
        ),
    ),
    ("alpha", lambda v: nn.elementwise("elu", alpha=v)),
    ("init_slope", lambda v: nn.prelu(v)),
    ("scale", lambda v: nn.residual(_LAYER, v)),
    ("momentum", lambda v: nn.batch_norm(momentum=v)),
    ("eps", lambda v: nn.batch_norm(eps=v)),
    ("eps", lambda v: nn.layer_norm(eps=v)),
    ("drop_prob", lambda v: nn.dropout(v)),
    ("gain", lambda v: jgrad.init.glorot_normal(v)),
    ("gain", lambda v: jgrad.init.glorot_uniform(v)),
    ("gain", lambda v: jgrad.init.orthogonal(v)),
    ("gain", lambda v: jgrad.init.identity(v)),
    ("negative_slope", lambda v: jgrad.init.he_normal(v)),
    ("negative_slope", lambda v: jgrad.init.he_uniform(v)),
    ("weight_var", lambda v: jgrad.init.gaussian(v)),
    ("weight_var", lambda v: jgrad.init.get("orthogonal", weight_var=v)),
    ("bias_var", lambda v: jgrad.init.gaussian_bias(v)),
    ("value", lambda v: jgrad.init.constant(v)),
]


@pytest.mark.parametrize("name, build", _FLOAT_ARGS)
@pytest.mark.parametrize("value, got", [(NAN, "nan"), (INF, "inf"), ("a", "'a'")])
def test_float_hyperparameters_refuse_nan_inf_and_strings(name, build, value, got):
    _raises(lambda: build(value), name, got)
    # The same argument, finite and as a NumPy scalar, is accepted.
    build(np.float64(0.5))


# --- booleans: flags are True or False, not truthy values ---


@pytest.mark.parametrize(
    "call, name, got",
    [
        (lambda: jgrad.data.digits(flat="no"), "flat", "'no'"),
        (lambda: jgrad.data.digits(standardize=1), "standardize", "1"),
        (lambda: nn.mlp(2, 4, residual="yes"), "residual", "'yes'"),
        (lambda: nn.resnet(skip=0), "skip", "0"),
    ],
)
def test_flags_must_be_bools(call, name, got):
    _raises(call, name, got)


_NETS = [
    ("mlp", lambda: nn.mlp(2, 4, drop_prob=0.1), (4,)),
    ("dense", lambda: nn.dense(4), (4,)),
    ("elementwise", lambda: nn.elementwise("tanh"), (4,)),
    ("layer_norm", lambda: nn.layer_norm(), (4,)),
    ("batch_norm", lambda: nn.batch_norm(), (4,)),
    ("dropout", lambda: nn.dropout(0.5), (4,)),
    ("residual", lambda: nn.residual(nn.dense(4)), (4,)),
    ("conv2d", lambda: nn.conv2d(2), (3, 3, 2)),
]


@pytest.mark.parametrize("label, build, in_shape", _NETS, ids=[n[0] for n in _NETS])
@pytest.mark.parametrize(
    "kw, name, got",
    [
        ({"train": "yes"}, "train", "'yes'"),
        ({"train": 1}, "train", "1"),
        ({"return_state": "no"}, "return_state", "'no'"),
    ],
)
def test_apply_flags_must_be_bools(label, build, in_shape, kw, name, got):
    layer = build()
    _, params = layer.init(jax.random.key(0), in_shape)
    x = _x((2,) + in_shape)
    _raises(lambda: layer.apply(params, x, **kw), name, got)
    # Checked before tracing: the same error under jit, with the flag static.
    _raises(
        lambda: jax.jit(layer.apply, static_argnames=tuple(kw))(params, x, **kw),
        name,
        got,
    )


def test_serial_return_intermediates_must_be_bool():
    net = nn.mlp(2, 4)
    _, params = net.init(jax.random.key(0), (4,))
    _raises(
        lambda: net.apply(params, _x((4,)), return_intermediates="all"),
        "return_intermediates",
        "'all'",
    )


# --- names: the closest valid name is suggested and every accepted name listed ---


@pytest.mark.parametrize(
    "call, name, got, suggest, accepted",
    [
        (
            lambda: nn.mlp(2, 4, activation="prelux"),
            "activation",
            "'prelux'",
            "prelu",
            nn.ACTIVATIONS + ("prelu", "maxout"),
        ),
        (
            lambda: nn.mlp(2, 4, activation="maxot"),
            "activation",
            "'maxot'",
            "maxout",
            nn.ACTIVATIONS + ("prelu", "maxout"),
        ),
        (
            lambda: nn.resnet(activation="prelus"),
            "activation",
            "'prelus'",
            "prelu",
            nn.ACTIVATIONS + ("prelu",),
        ),
        (
            lambda: nn.activation("tahn"),
            "activation",
            "'tahn'",
            "tanh",
            nn.ACTIVATIONS,
        ),
        (
            lambda: nn.elementwise("sigmod"),
            "activation",
            "'sigmod'",
            "sigmoid",
            nn.ACTIVATIONS,
        ),
        (
            lambda: nn.mlp(2, 4, init="he_normall"),
            "init",
            "'he_normall'",
            "he_normal",
            jgrad.init.NAMES,
        ),
        (
            lambda: jgrad.init.get("orthogonl"),
            "init",
            "'orthogonl'",
            "orthogonal",
            jgrad.init.NAMES,
        ),
        (
            lambda: nn.dense(3, w_init="glorot_normel"),
            "w_init",
            "'glorot_normel'",
            "glorot_normal",
            jgrad.init.NAMES,
        ),
        (
            lambda: nn.mlp(2, 4, norm="btach"),
            "norm",
            "'btach'",
            "batch",
            nn.NORMS,
        ),
        (
            lambda: nn.conv2d(3, padding="valid"),
            "padding",
            "'valid'",
            "VALID",
            ("SAME", "VALID"),
        ),
        (
            lambda: jgrad.init.he_normal(mode="fanin"),
            "mode",
            "'fanin'",
            "fan_in",
            ("fan_in", "fan_out"),
        ),
    ],
)
def test_unknown_names_suggest_the_closest_and_list_all(
    call, name, got, suggest, accepted
):
    msg = _raises(call, name, got)
    assert f"Did you mean {suggest!r}?" in msg
    for option in accepted:
        assert repr(option) in msg.split(", got ")[0], (option, msg)


def test_parametric_activation_names_are_refused_with_the_layer_to_use():
    msg = _raises(lambda: nn.activation("prelu"), "activation", "'prelu'")
    assert "jgrad.nn.prelu(" in msg


# --- PRNG keys: an int seed is not a key ---


@pytest.mark.parametrize("label, build, in_shape", _NETS, ids=[n[0] for n in _NETS])
@pytest.mark.parametrize(
    "key, got", [(0, "0"), (7, "7"), (np.uint32(3), "dtype uint32 and shape ()")]
)
def test_init_refuses_an_int_seed(label, build, in_shape, key, got):
    msg = _raises(lambda: build().init(key, in_shape), "key", got)
    assert "jax.random.key(0)" in msg


def test_apply_refuses_an_int_seed():
    net = nn.mlp(2, 4, drop_prob=0.5)
    _, params = net.init(jax.random.key(0), (4,))
    x = _x((4,))
    _raises(lambda: net.apply(params, x, train=True, key=0), "key", "0")
    drop = nn.dropout(0.5)
    _raises(lambda: drop.apply({}, x, train=True, key=3), "key", "3")
    # A uint32 array that is not a legacy key of shape (2,) is refused by its dtype/shape.
    _raises(
        lambda: drop.apply({}, x, train=True, key=jnp.arange(3, dtype=jnp.uint32)),
        "key",
        "uint32",
    )
    # Both kinds of real key are accepted, and give the same mask for the same seed.
    a = drop.apply({}, x, train=True, key=jax.random.key(5))
    b = drop.apply({}, x, train=True, key=jax.random.PRNGKey(5))
    np.testing.assert_array_equal(a, b)


def test_initializers_refuse_an_int_seed():
    for make in (
        jgrad.init.he_normal,
        jgrad.init.glorot_uniform,
        jgrad.init.orthogonal,
        jgrad.init.lecun_normal,
    ):
        _raises(lambda make=make: make()(0, (3, 4)), "key", "0")
    _raises(lambda: jgrad.init.gaussian_bias(0.5)(0, (3,)), "key", "0")


# --- x: a non-empty floating-point array ---


@pytest.mark.parametrize("label, build, in_shape", _NETS, ids=[n[0] for n in _NETS])
def test_apply_refuses_lists_ints_complex_and_empty(label, build, in_shape):
    layer = build()
    _, params = layer.init(jax.random.key(0), in_shape)
    x = np.asarray(_x((2,) + in_shape))
    cases = [
        (x.ravel()[:3].tolist(), "["),
        (3, "3"),
        (2.5, "2.5"),
        (x.astype(np.int32), "int32"),
        (x.astype(np.complex64), "complex64"),
        (jnp.zeros((0,) + in_shape), f"shape {(0,) + in_shape}"),
        (x.astype(bool), "bool"),
    ]
    for bad, got in cases:
        _raises(lambda bad=bad: layer.apply(params, bad), "x", got)
    # The same values as a float32 NumPy array are accepted.
    y = layer.apply(params, x)
    assert jnp.all(jnp.isfinite(y))


def test_long_list_is_summarised_not_printed():
    net = nn.dense(3)
    _, params = net.init(jax.random.key(0), (100,))
    msg = _raises(
        lambda: net.apply(params, list(range(100))), "x", "list of length 100"
    )
    assert len(msg) < 300


# --- one format everywhere ---


@pytest.mark.parametrize(
    "call, name",
    [
        (
            lambda: nn.conv2d(4, 5, padding="VALID").init(jax.random.key(0), (3, 3, 1)),
            "in_shape",
        ),
        (lambda: nn.avg_pool(4).init(jax.random.key(0), (3, 3, 1)), "window"),
        (lambda: nn.conv2d(4, kernel_size=(1, 2, 3)), "kernel_size"),
        (lambda: nn.residual(nn.flatten()).init(jax.random.key(0), (2, 2, 1)), "block"),
        (lambda: nn.activation("tanh", alpha=1.0), "alpha"),
        (lambda: nn.activation(nn.activation("tanh"), alpha=1.0), "hyperparams"),
        (lambda: jgrad.init.get("he_normal", weight_var=2.0), "weight_var"),
        (lambda: jgrad.init.identity()(None, (2, 3, 4)), "shape"),
        (lambda: jgrad.init.fans((3,)), "shape"),
        (lambda: nn.dropout(0.5).apply({}, _x((3,)), train=True), "key"),
    ],
)
def test_other_messages_follow_the_format(call, name):
    with pytest.raises(ValueError) as info:
        call()
    m = _FORMAT.match(str(info.value))
    assert m and m["name"] == name, str(info.value)


# --- params: the structure the layer's init gives ---


_WITH_PARAMS = [n for n in _NETS if n[0] not in ("mlp", "elementwise", "dropout")]


@pytest.mark.parametrize(
    "label, build, in_shape", _WITH_PARAMS, ids=[n[0] for n in _WITH_PARAMS]
)
def test_apply_refuses_params_of_another_layer(label, build, in_shape):
    layer = build()
    x = _x(in_shape)
    msg = _raises(lambda: layer.apply(None, x), "params", "None")
    assert label in msg
    _raises(lambda: layer.apply({"kernel": x}, x), "params", "['kernel']")


def test_weight_var_with_an_initializer_function_is_refused():
    fn = jgrad.init.he_normal()
    _raises(lambda: nn.dense(4, w_init=fn, weight_var=2.0), "weight_var", "2.0")
    _raises(lambda: nn.mlp(2, 4, init=fn, weight_var=2.0), "weight_var", "2.0")
    # Without weight_var the function is used as given: the same weights as calling it.
    key = jax.random.key(4)
    _, p = nn.dense(4, w_init=fn).init(key, (3,))
    np.testing.assert_array_equal(p["w"], fn(jax.random.split(key)[0], (3, 4)))
