"""Layer metadata is a declared ``LayerInfo``: builders fill it, ``walk`` traverses it, and a
misspelt field or kind fails loudly. Also: one key-splitting helper, one weight-initializer
argument meaning for layers (``w_init``) and builders (``init``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import nn
from jgrad.nn._layer import KINDS, LayerInfo, split_keys, sublayers, walk


def _identity_layer(info=LayerInfo()):
    return nn.Layer(lambda key, s: (tuple(s), {}), lambda p, x, **kw: x, info)


def test_builders_declare_their_kind():
    assert nn.dense(3).info.kind == "dense"
    act = nn.activation("tanh")
    assert nn.elementwise(act).info == LayerInfo(kind="elementwise", activation=act)
    bn = nn.batch_norm().info
    assert bn.kind == "batch_norm" and bn.couples_examples
    assert nn.layer_norm().info == LayerInfo()  # nothing to declare: autodiff
    block = nn.serial(nn.dense(4), nn.elementwise("relu"))
    res = nn.residual(block, 0.5).info
    assert res.kind == "residual" and res.block is block and res.scale == 0.5
    for layer in (nn.dense(3), nn.maxout(3), nn.conv2d(2), nn.dropout(0.1)):
        assert layer.info.kind in KINDS + (None,)


def test_serial_info_and_properties():
    a, b = nn.dense(3), nn.elementwise("tanh")
    net = nn.serial(a, b)
    assert net.info.kind == "serial" and net.info.layers == (a, b)
    assert net.layers == (a, b) and net.block_ends == (0, 1)
    assert nn.serial(a, b, block_ends=[1]).block_ends == (1,)
    assert nn.mlp(3, 4).block_ends == (1, 3, 5)


def test_misspelt_metadata_fails_loudly():
    net = nn.mlp(2, 4)
    with pytest.raises(AttributeError):
        net.block_end = (0,)  # no such field
    with pytest.raises(AttributeError):
        net.block_ends = (0,)  # read-only: declared by serial(..., block_ends=...)
    with pytest.raises(TypeError):
        LayerInfo(kidn="dense")
    with pytest.raises(ValueError, match=r"`layers\[0\].info.kind` must be one of"):
        nn.serial(_identity_layer(LayerInfo(kind="desne")))
    with pytest.raises(ValueError, match=r"`block.info.block` must be set"):
        nn.residual(_identity_layer(LayerInfo(kind="residual")))
    with pytest.raises(ValueError, match=r"`layers\[0\].info` must be a jgrad.nn"):
        nn.serial(nn.Layer(lambda k, s: (s, {}), lambda p, x, **kw: x, "dense"))


@pytest.mark.parametrize("ends", [(1, 0), (0, 2), (-1,), (0.5,), 3])
def test_serial_block_ends_checked(ends):
    with pytest.raises(ValueError, match="`block_ends` must be increasing"):
        nn.serial(nn.dense(3), nn.elementwise("tanh"), block_ends=ends)


def test_walk_visits_parents_first():
    branch = nn.serial(nn.layer_norm(), nn.elementwise("relu"), nn.dense(4))
    net = nn.serial(nn.dense(4), nn.residual(branch))
    kinds = [layer.info.kind for layer in walk(net)]
    assert kinds == [
        "serial",
        "dense",
        "residual",
        "serial",
        None,
        "elementwise",
        "dense",
    ]
    assert sublayers(net.layers[1]) == (branch,)
    assert [sub.info.kind for sub in walk(*net.layers)] == kinds[1:]


def test_layers_hash_like_their_functions():
    net = nn.mlp(2, 4, activation="leaky_relu")  # an Activation holds a params dict
    assert hash(net) == hash((net.init, net.apply))
    jitted = jax.jit(
        lambda n, x: n.apply(n.init(jax.random.key(0), (3,))[1], x), static_argnums=0
    )
    assert jitted(net, jnp.arange(1.0, 4.0)).shape == (4,)


def test_split_keys_is_serials_split():
    key = jax.random.key(7)
    keys = split_keys(key, 3)
    expected = jax.random.split(key, 3)
    for k, e in zip(keys, expected, strict=True):
        np.testing.assert_array_equal(jax.random.key_data(k), jax.random.key_data(e))
    assert split_keys(None, 2) == [None, None]
    net = nn.serial(nn.dropout(0.5), nn.dropout(0.5))
    x = jnp.arange(1.0, 9.0)
    y = net.apply(({}, {}), x, train=True, key=key)
    k0, k1 = split_keys(key, 2)
    by_hand = nn.dropout(0.5).apply(
        {}, nn.dropout(0.5).apply({}, x, train=True, key=k0), train=True, key=k1
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(by_hand))


def test_w_init_and_init_take_the_same_values():
    key = jax.random.key(3)
    none = nn.dense(4, weight_var=2.0).init(key, (3,))[1]["w"]
    named = nn.dense(4, weight_var=2.0, w_init="gaussian").init(key, (3,))[1]["w"]
    np.testing.assert_array_equal(np.asarray(none), np.asarray(named))
    for init in (None, "gaussian", "he_normal"):
        kw = {} if init == "he_normal" else {"weight_var": 2.0}
        net_p = nn.mlp(1, 4, init=init, **kw).init(key, (3,))[1][0]["w"]
        dense_p = nn.dense(4, w_init=init, **kw).init(jax.random.split(key, 2)[0], (3,))
        np.testing.assert_array_equal(np.asarray(net_p), np.asarray(dense_p[1]["w"]))
    with pytest.raises(ValueError, match="`w_init` must be one of"):
        nn.dense(4, w_init="he")
    with pytest.raises(ValueError, match="`init` must be one of"):
        nn.mlp(2, 4, init="he")


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: nn.mlp(2, 4, residual=1), "residual"),
        (lambda: nn.resnet(skip="yes"), "skip"),
    ],
)
def test_flags_must_be_bool(build, name):
    with pytest.raises(ValueError, match=f"`{name}` must be True or False"):
        build()
