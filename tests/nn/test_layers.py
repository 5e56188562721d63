"""The Layer protocol, serial, residual, the builders and jit/vmap behaviour.

Checks serial's intermediates against a hand-written composition, ``init``'s shapes against
``jax.eval_shape`` of ``apply``, jit/vmap against the plain single example, no retracing,
the residual formulas, mlp structure and initial variances, and a resnet on real data
(scikit-learn's digits).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad

nn = jgrad.nn


def _randn(rng, shape, loc=0.0, scale=1.0):
    return jnp.asarray(rng.normal(loc, scale, shape), jnp.float32)


def _key(seed):
    """A PRNG key for the tests that run a real ``init`` or dropout. The "rbg"
    implementation (XLA's RngBitGenerator) compiles about 10x faster on CPU than the default
    threefry, which keeps this file fast; nothing tested here depends on the generator
    (test_flax_equivalence and test_batch_norm exercise dropout with default keys)."""
    return jax.random.key(seed, impl="rbg")


def _shapes(layer, in_shape):
    """``init``'s out_shape and params as ShapeDtypeStructs, traced without compiling."""
    box = []

    def f(key):
        out_shape, params = layer.init(key, in_shape)
        box.append(out_shape)
        return params

    params = jax.eval_shape(f, jax.random.key(0))
    return box[0], params


def _host_params(layer, in_shape, rng):
    """Random params of the right structure drawn on the host (no compilation of init):
    weights N(0, 1/fan_in), variances and scales in [0.5, 1.5], everything else N(0, 0.3^2).
    Non-trivial biases, offsets and running statistics everywhere."""
    out_shape, structs = _shapes(layer, in_shape)

    def draw(path, s):
        name = jax.tree_util.keystr(path[-1:])
        if "'w'" in name:
            fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) == 4 else s.shape[-2]
            v = rng.normal(0.0, 1.0 / np.sqrt(fan_in), s.shape)
        elif "'var'" in name or "'scale'" in name:
            v = rng.uniform(0.5, 1.5, s.shape)
        else:
            v = rng.normal(0.0, 0.3, s.shape)
        return jnp.asarray(v, s.dtype)

    return out_shape, jax.tree_util.tree_map_with_path(draw, structs)


# ---------------------------------------------------------------------------------- serial


def test_serial_intermediates_equal_hand_composition(rng):
    layers = (
        nn.dense(7, bias_var=0.2),
        nn.elementwise("tanh"),
        nn.layer_norm(),
        nn.dense(3),
    )
    net = nn.serial(*layers)
    out_shape, params = _host_params(net, (5,), rng)
    assert out_shape == (3,)
    assert len(params) == 4
    x = _randn(rng, (5,), loc=0.3)

    y, hs = jax.jit(lambda p, x: net.apply(p, x, return_intermediates=True))(params, x)
    h = x
    expected = []
    for layer, p in zip(layers, params, strict=True):
        h = layer.apply(p, h)
        expected.append(h)
    assert len(hs) == 4
    for i, (got, want) in enumerate(zip(hs, expected, strict=True)):
        np.testing.assert_allclose(
            got, want, rtol=1e-5, atol=1e-6, err_msg=f"layer {i}"
        )
    chex.assert_trees_all_equal(y, hs[-1])
    # and independently of jgrad's layers, in float64
    p0, _, p2, p3 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x64 = np.asarray(x, np.float64)
    a = np.tanh(x64 @ p0["w"] + p0["b"])
    z = (a - a.mean()) / np.sqrt(a.var() + 1e-5) * p2["scale"] + p2["offset"]
    np.testing.assert_allclose(y, z @ p3["w"] + p3["b"], rtol=1e-4, atol=1e-5)


def test_serial_without_intermediates_returns_y(rng):
    net = nn.serial(nn.dense(4), nn.elementwise("relu"))
    _, params = _host_params(net, (3,), rng)
    x = _randn(rng, (3,))
    y, hs = net.apply(params, x, return_intermediates=True)
    chex.assert_trees_all_equal(net.apply(params, x), y, hs[-1])
    with pytest.raises(ValueError, match="params"):
        net.apply(params[:1], x)


def test_serial_splits_key_once_per_layer(rng):
    """serial's docstring: a key is split once, one subkey per layer (so two dropout
    layers draw independent masks)."""
    d1, d2 = nn.dropout(0.5), nn.dropout(0.5)
    net = nn.serial(d1, nn.elementwise("tanh"), d2)
    x = _randn(rng, (64,), loc=1.0)

    @jax.jit
    def both(x, k):
        y = net.apply(({}, {}, {}), x, train=True, key=k)
        k1, _, k3 = jax.random.split(k, 3)
        h = jnp.tanh(d1.apply({}, x, train=True, key=k1))
        return y, d2.apply({}, h, train=True, key=k3)

    y, ref = both(x, _key(10))
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert 0 < int(jnp.sum(y == 0)) < y.size


# ----------------------------------------------------------------------- init vs eval_shape


LAYER_CASES = [
    ("dense", lambda: nn.dense(7), (5,)),
    ("dense_on_image", lambda: nn.dense(4), (3, 2, 5)),
    ("conv_s2_same", lambda: nn.conv2d(4, 3, stride=2, padding="SAME"), (9, 7, 2)),
    ("conv_s2_valid", lambda: nn.conv2d(4, 3, stride=2, padding="VALID"), (9, 8, 2)),
    (
        "conv_rect_valid",
        lambda: nn.conv2d(3, (2, 3), stride=(1, 2), padding="VALID"),
        (6, 9, 1),
    ),
    ("avg_pool", lambda: nn.avg_pool(2), (7, 6, 3)),
    ("avg_pool_overlap", lambda: nn.avg_pool(3, stride=1), (7, 6, 3)),
    ("global_avg_pool", lambda: nn.global_avg_pool(), (5, 4, 3)),
    ("flatten", lambda: nn.flatten(), (5, 4, 3)),
    ("maxout", lambda: nn.maxout(6, 3), (4,)),
    ("layer_norm", lambda: nn.layer_norm(), (6,)),
    ("batch_norm", lambda: nn.batch_norm(), (6,)),
    ("dropout", lambda: nn.dropout(0.3), (6,)),
    ("prelu", lambda: nn.prelu(), (6,)),
    (
        "residual_identity",
        lambda: nn.residual(nn.serial(nn.elementwise("relu"), nn.dense(5))),
        (5,),
    ),
    ("residual_projection", lambda: nn.residual(nn.dense(8)), (5,)),
    ("mlp", lambda: nn.mlp(2, 8), (5,)),
    ("mlp_out", lambda: nn.mlp(2, 8, out_dim=3), (5,)),
    ("mlp_layer_res", lambda: nn.mlp(3, 8, norm="layer", residual=True), (5,)),
    ("mlp_batch_drop", lambda: nn.mlp(2, 8, norm="batch", drop_prob=0.2), (5,)),
    (
        "mlp_maxout",
        lambda: nn.mlp(2, 8, activation="maxout", num_pieces=3, out_dim=2),
        (5,),
    ),
    ("mlp_prelu", lambda: nn.mlp(2, 8, activation="prelu"), (5,)),
    ("resnet", lambda: nn.resnet(7, channels=4, num_blocks=2), (8, 8, 1)),
    (
        "resnet_noskip",
        lambda: nn.resnet(5, channels=3, num_blocks=1, skip=False),
        (6, 5, 2),
    ),
    (
        "conv_stack",
        lambda: nn.serial(
            nn.conv2d(3, 3, stride=2), nn.avg_pool(2), nn.flatten(), nn.dense(2)
        ),
        (9, 9, 2),
    ),
]


@pytest.mark.parametrize(
    "make,in_shape", [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES]
)
def test_init_out_shape_matches_apply(make, in_shape):
    layer = make()
    out_shape, params = _shapes(layer, in_shape)
    assert isinstance(out_shape, tuple)
    x = jax.ShapeDtypeStruct(in_shape, jnp.float32)
    y = jax.eval_shape(lambda p, x: layer.apply(p, x), params, x)
    assert y.shape == out_shape
    assert y.dtype == jnp.float32
    # train mode (with a key) has the same shape; batch norm needs a batch there
    xb = jax.ShapeDtypeStruct((3,) + in_shape, jnp.float32)
    if _has_batch_norm(params):
        yb = jax.eval_shape(
            lambda p, x: layer.apply(p, x, train=True, key=jax.random.key(0)),
            params,
            xb,
        )
        assert yb.shape == (3,) + out_shape
    else:
        yt = jax.eval_shape(
            lambda p, x: layer.apply(p, x, train=True, key=jax.random.key(0)), params, x
        )
        assert yt.shape == out_shape


def _has_batch_norm(params):
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return any("mean" in jax.tree_util.keystr(path) for path, _ in leaves)


def test_conv_out_shapes_by_hand():
    # SAME, stride 2: ceil(9/2)=5, ceil(7/2)=4
    same = nn.conv2d(4, 3, stride=2, padding="SAME")
    assert _shapes(same, (9, 7, 2))[0] == (5, 4, 4)
    # VALID 3x3, stride 2: (9-3)//2+1=4, (8-3)//2+1=3
    valid = nn.conv2d(4, 3, stride=2, padding="VALID")
    assert _shapes(valid, (9, 8, 2))[0] == (4, 3, 4)
    assert _shapes(nn.avg_pool(2), (7, 6, 3))[0] == (3, 3, 3)
    assert _shapes(nn.flatten(), (5, 4, 3))[0] == (60,)


def test_pool_and_flatten_values(rng):
    x = jnp.arange(1.0, 4 * 6 * 2 + 1).reshape(4, 6, 2)
    y = nn.avg_pool(2).apply({}, x)
    ref = np.asarray(x).reshape(2, 2, 3, 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    np.testing.assert_allclose(
        nn.global_avg_pool().apply({}, x), np.asarray(x).mean((0, 1))
    )
    np.testing.assert_array_equal(nn.flatten().apply({}, x), np.asarray(x).reshape(-1))
    xb = jnp.stack([x, -2.0 * x])
    np.testing.assert_allclose(nn.avg_pool(2).apply({}, xb)[1], -2.0 * ref, rtol=1e-6)
    assert nn.flatten().apply({}, xb).shape == (2, 48)


# ------------------------------------------------------------------------------- jit / vmap


def test_mlp_jit_and_vmap_match_single_example(rng):
    net = nn.mlp(3, 12, norm="layer", residual=True, out_dim=4)
    _, params = _host_params(net, (5,), rng)
    xs = _randn(rng, (6, 5), loc=0.2)
    singles = jnp.stack([net.apply(params, x) for x in xs])
    chex.assert_tree_all_finite(singles)
    batched = jax.jit(jax.vmap(net.apply, in_axes=(None, 0)))(params, xs)
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)
    # the examples give different outputs (no accidental broadcasting of one row)
    assert not np.allclose(singles[0], singles[1])


@pytest.mark.parametrize("norm", [None, "layer", "batch"])
def test_resnet_jit_and_vmap_match_single_image(rng, norm):
    """Batch norm runs in eval mode here (running stats), where examples do not couple."""
    net = nn.resnet(10, channels=4, num_blocks=1, norm=norm)
    _, params = _host_params(net, (8, 8, 1), rng)  # non-trivial running stats too
    xs = _randn(rng, (3, 8, 8, 1))
    singles = jnp.stack([net.apply(params, x) for x in xs])  # unjitted, one image each
    assert singles.shape == (3, 10)
    chex.assert_tree_all_finite(singles)
    f = jax.jit(net.apply)
    batched = jax.jit(jax.vmap(net.apply, in_axes=(None, 0)))(params, xs)
    np.testing.assert_allclose(batched, singles, rtol=1e-4, atol=1e-5)
    # the conv layers also take a batch axis directly
    np.testing.assert_allclose(f(params, xs), singles, rtol=1e-4, atol=1e-5)
    assert not np.allclose(singles[0], singles[1])
    if norm == "batch":
        # train mode couples examples (batch statistics), so it differs from eval mode
        train = jax.jit(lambda p, x: net.apply(p, x, train=True))(params, xs)
        assert not np.allclose(train, singles, atol=1e-3)


def test_no_recompilation_on_second_call(rng):
    net = nn.mlp(2, 8, norm="layer", out_dim=3)
    _, params = _host_params(net, (4,), rng)
    _, params2 = _host_params(net, (4,), rng)
    x = _randn(rng, (4,))
    traces = []

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(p, x):
        traces.append(1)
        return net.apply(p, x)

    y1 = f(params, x)
    y2 = f(params2, x + 1.0)  # new values, same shapes and dtypes
    assert len(traces) == 1
    assert not np.allclose(y1, y2)
    # the checks are live: a new input shape does retrace, and chex says so
    with pytest.raises(AssertionError, match="traced > 1"):
        f(params2, jnp.stack([x, x + 1.0]))
    assert len(traces) == 1  # chex raised before the body ran


def test_no_recompilation_train_step_with_state(rng):
    net = nn.mlp(2, 8, norm="batch", drop_prob=0.1)
    _, params = _host_params(net, (4,), rng)
    n_traces = [0]

    @jax.jit
    def step(p, x, key):
        n_traces[0] += 1
        return net.apply(p, x, train=True, key=key, return_state=True)

    x = _randn(rng, (16, 4))
    for i, xi in enumerate((x, x * 2.0, x - 1.0)):
        _, params = step(params, xi, _key(20 + i))
    assert n_traces[0] == 1


# -------------------------------------------------------------------------------- residual


@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_residual_identity_shortcut(rng, scale):
    block = nn.serial(
        nn.layer_norm(), nn.elementwise("tanh"), nn.dense(6, bias_var=0.3)
    )
    res = nn.residual(block, scale)
    out_shape, params = _host_params(res, (6,), rng)
    assert out_shape == (6,)
    assert set(params) == {"block"}
    x = _randn(rng, (6,), loc=0.4)
    y = jax.jit(res.apply)(params, x)
    np.testing.assert_allclose(
        y, x + scale * block.apply(params["block"], x), rtol=1e-5, atol=1e-6
    )
    # batched input too
    xb = _randn(rng, (4, 6))
    np.testing.assert_allclose(
        res.apply(params, xb),
        xb + scale * block.apply(params["block"], xb),
        rtol=1e-5,
        atol=1e-6,
    )


def test_residual_projection_shortcut(rng):
    block = nn.serial(nn.elementwise("relu"), nn.dense(9, bias_var=0.3))
    res = nn.residual(block)
    out_shape, params = _host_params(res, (5,), rng)
    assert out_shape == (9,)
    assert set(params) == {"block", "proj"}
    assert set(params["proj"]) == {"w"}
    assert params["proj"]["w"].shape == (5, 9)
    x = _randn(rng, (5,), loc=0.2)
    y = res.apply(params, x)
    x64 = np.asarray(x, np.float64)
    w64 = np.asarray(params["proj"]["w"], np.float64)
    np.testing.assert_allclose(
        y, x64 @ w64 + np.asarray(block.apply(params["block"], x)), rtol=1e-5, atol=1e-5
    )
    # LeCun normal: Var[w] = 1 / fan_in, within 5 standard errors (sqrt(2 / n) relative)
    _, big = nn.residual(nn.dense(300)).init(_key(5), (200,))
    np.testing.assert_allclose(
        np.var(big["proj"]["w"]) * 200, 1.0, rtol=5 * np.sqrt(2 / 60000)
    )


def test_residual_rejects_spatial_change():
    with pytest.raises(ValueError, match="residual"):
        _shapes(nn.residual(nn.conv2d(4, 3, stride=2)), (8, 8, 4))


def test_residual_return_state_threads_block_state(rng):
    res = nn.residual(nn.serial(nn.batch_norm(0.5), nn.dense(3)))
    _, params = _host_params(res, (3,), rng)
    x = _randn(rng, (10, 3), loc=1.0)
    y, new = res.apply(params, x, train=True, return_state=True)
    old_mean = np.asarray(params["block"][0]["mean"], np.float64)
    np.testing.assert_allclose(
        new["block"][0]["mean"],
        0.5 * old_mean + 0.5 * np.asarray(x, np.float64).mean(0),
        rtol=1e-5,
        atol=1e-6,
    )
    chex.assert_trees_all_equal(new["block"][1], params["block"][1])
    np.testing.assert_allclose(y, res.apply(params, x, train=True), rtol=1e-6)


# ------------------------------------------------------------------------------------- mlp


@pytest.mark.parametrize(
    "kwargs,n_layers,block_ends",
    [
        ({}, 6, (1, 3, 5)),
        ({"norm": "layer"}, 9, (2, 5, 8)),
        ({"norm": "batch"}, 9, (2, 5, 8)),
        ({"drop_prob": 0.1}, 9, (2, 5, 8)),
        ({"norm": "batch", "drop_prob": 0.1}, 12, (3, 7, 11)),
        ({"out_dim": 4}, 7, (1, 3, 5)),
        ({"residual": True}, 3, (0, 1, 2)),
        ({"residual": True, "norm": "layer", "out_dim": 2}, 4, (0, 1, 2)),
        ({"activation": "maxout"}, 3, (0, 1, 2)),
        ({"activation": "maxout", "out_dim": 4}, 4, (0, 1, 2)),
    ],
)
def test_mlp_structure(kwargs, n_layers, block_ends):
    net = nn.mlp(3, 8, **kwargs)
    out_shape, params = _shapes(net, (5,))
    assert len(net.layers) == n_layers
    assert len(params) == n_layers
    assert net.block_ends == block_ends
    assert out_shape == ((kwargs["out_dim"],) if "out_dim" in kwargs else (8,))
    if kwargs.get("residual"):
        assert "proj" in params[0] and "proj" not in params[1]
    # the block ends carry width-8 representations
    x = jax.ShapeDtypeStruct((5,), jnp.float32)
    _, hs = jax.eval_shape(
        lambda p, x: net.apply(p, x, return_intermediates=True), params, x
    )
    for i in block_ends:
        assert hs[i].shape == (8,)


def test_mlp_dense_params_and_maxout_shapes():
    _, params = _shapes(nn.mlp(2, 8, out_dim=3, bias_var=0.1), (5,))
    dense_params = [p for p in params if p]
    assert [set(p) for p in dense_params] == [{"w", "b"}] * 3
    assert [p["w"].shape for p in dense_params] == [(5, 8), (8, 8), (8, 3)]
    assert [p["b"].shape for p in dense_params] == [(8,), (8,), (3,)]
    assert all(p == {} for p in params if not p)  # activations have empty params
    _, mparams = _shapes(nn.mlp(2, 8, activation="maxout", num_pieces=3), (5,))
    assert [p["w"].shape for p in mparams] == [(3, 5, 8), (3, 8, 8)]
    assert [p["b"].shape for p in mparams] == [(3, 8), (3, 8)]


def test_maxout_value(rng):
    layer = nn.maxout(4, 3, bias_var=0.5)
    _, p = layer.init(_key(6), (5,))
    x = _randn(rng, (5,))
    w, b = np.asarray(p["w"], np.float64), np.asarray(p["b"], np.float64)
    ref = np.max(np.einsum("i,kio->ko", np.asarray(x, np.float64), w) + b, axis=0)
    np.testing.assert_allclose(layer.apply(p, x), ref, rtol=1e-5, atol=1e-6)
    # the pieces are different draws
    assert not np.allclose(w[0], w[1])


@pytest.mark.parametrize("weight_var", [2.0, 0.5])
def test_mlp_gaussian_weight_var(weight_var):
    fan_in, width = 200, 300
    net = nn.mlp(2, width, init="gaussian", weight_var=weight_var)
    _, params = net.init(_key(7), (fan_in,))
    for p, fi in ((params[0], fan_in), (params[2], width)):
        w = np.asarray(p["w"], np.float64)
        # sample variance of n iid normals has relative std sqrt(2/n) <= 0.006; allow 4%
        np.testing.assert_allclose(w.var() * fi, weight_var, rtol=0.04)
        assert abs(w.mean()) < 5 * np.sqrt(weight_var / fi / w.size)
        # bias_var=0 gives exactly zero biases
        np.testing.assert_array_equal(p["b"], 0.0)
    # layers are independent draws
    assert not np.allclose(params[0]["w"][:5, :5], params[2]["w"][:5, :5])


def test_dense_and_conv_default_init_variances():
    """Without ``w_init``: weights N(0, weight_var / fan_in), biases N(0, bias_var); the
    conv fan-in is kh * kw * C_in. Tolerances: 5 standard errors of a sample variance,
    sqrt(2 / n) relative."""
    _, p = nn.dense(300, weight_var=2.0, bias_var=0.5).init(_key(8), (200,))
    np.testing.assert_allclose(np.var(p["w"]) * 200, 2.0, rtol=5 * np.sqrt(2 / 60000))
    _, p = nn.dense(2000, bias_var=0.25).init(_key(12), (200,))
    np.testing.assert_allclose(np.var(p["b"]), 0.25, rtol=5 * np.sqrt(2 / 2000))
    np.testing.assert_allclose(np.var(p["w"]) * 200, 1.0, rtol=5 * np.sqrt(2 / 4e5))
    _, p = nn.conv2d(64, 3, weight_var=2.0).init(_key(9), (6, 6, 32))
    np.testing.assert_allclose(
        np.var(p["w"]) * 3 * 3 * 32, 2.0, rtol=5 * np.sqrt(2 / p["w"].size)
    )
    np.testing.assert_array_equal(p["b"], 0.0)


# -------------------------------------------------------------------------- resnet / digits


@pytest.fixture(scope="module")
def digits():
    return jgrad.data.digits()


@pytest.fixture(scope="module")
def resnets():
    """resnet(skip=True) and resnet(skip=False) initialised with the SAME key, each with a
    jitted train-mode forward returning (logits, intermediates)."""
    key = _key(11)
    out = {}
    for skip in (True, False):
        net = nn.resnet(10, channels=8, num_blocks=2, skip=skip)
        _, params = net.init(key, (8, 8, 1))
        fwd = jax.jit(
            lambda p, x, net=net: net.apply(p, x, train=True, return_intermediates=True)
        )
        out[skip] = (net, params, fwd)
    return out


def test_digits_flat_standardized(digits):
    d = jgrad.data.digits(flat=True)
    assert d.x.shape == (1797, 64)
    assert d.y.shape == (1797,)
    assert d.num_classes == 10
    assert d.x.dtype == np.float32
    assert set(np.unique(d.y).tolist()) == set(range(10))
    raw = jgrad.data.digits(flat=True, standardize=False).x
    assert raw.min() == 0 and raw.max() == 16
    varying = raw.std(axis=0) > 0
    # some pixels are constant (always 0) in this data set
    assert 0 < (~varying).sum() < 64
    x = d.x.astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x[:, varying].std(axis=0), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(x[:, ~varying], 0.0)
    # the images are the same data, reshaped
    np.testing.assert_array_equal(digits.x.reshape(1797, 64), d.x)


@pytest.mark.parametrize("skip", [True, False])
def test_resnet_forward_on_digits(digits, resnets, skip):
    assert digits.x.shape == (1797, 8, 8, 1)
    assert digits.num_classes == 10
    net, params, fwd = resnets[skip]
    logits, hs = fwd(params, jnp.asarray(digits.x[:64]))
    assert logits.shape == (64, 10)
    chex.assert_tree_all_finite(logits)
    assert float(jnp.std(logits, axis=0).min()) > 0  # depends on the example
    assert len(hs) == len(net.layers)


def test_resnet_skip_changes_output(digits, resnets):
    xb = jnp.asarray(digits.x[:64])
    net_s, ps, fwd_s = resnets[True]
    net_p, pp, fwd_p = resnets[False]
    ys, _ = fwd_s(ps, xb)
    yp, _ = fwd_p(pp, xb)
    assert not np.allclose(ys, yp, atol=1e-3)
    # Same weights too: move the residual blocks' params into the plain net; the outputs
    # still differ, by the shortcut alone.
    pp_same = tuple(
        p["block"] if i in net_s.block_ends else p for i, p in enumerate(ps)
    )
    chex.assert_trees_all_equal_structs(pp_same, pp)
    yp_same, _ = fwd_p(pp_same, xb)
    assert not np.allclose(ys, yp_same, atol=1e-3)


def test_resnet_zero_branch_is_identity(digits, resnets):
    xb = jnp.asarray(digits.x[:64])
    net, params, fwd = resnets[True]
    net_p, _, fwd_p = resnets[False]
    assert net.block_ends == (1, 2)

    def zero_branch_convs(p):
        branch = tuple(dict(q, w=0.0 * q["w"]) if "w" in q else q for q in p["block"])
        return dict(p, block=branch)

    zeroed = tuple(
        zero_branch_convs(p) if i in net.block_ends else p for i, p in enumerate(params)
    )
    # branch conv biases start at zero, so a zero-weight branch outputs exactly zero
    for i in net.block_ends:
        for q in zeroed[i]["block"]:
            if "w" in q:
                np.testing.assert_array_equal(q["b"], 0.0)
    _, hs = fwd(zeroed, xb)
    for i in net.block_ends:
        np.testing.assert_allclose(hs[i], hs[i - 1], rtol=1e-6, atol=1e-6)
        assert float(jnp.std(hs[i])) > 0.1  # the identity of a non-trivial input
    # the untouched network does change the representation in its blocks
    _, hs_full = fwd(params, xb)
    assert not np.allclose(hs_full[1], hs_full[0], atol=1e-3)
    # without skips, a zero branch kills the signal instead
    zeroed_p = tuple(
        p["block"] if i in net.block_ends else p for i, p in enumerate(zeroed)
    )
    _, hs_p = fwd_p(zeroed_p, xb)
    np.testing.assert_allclose(hs_p[1], 0.0, atol=1e-6)
