"""Bad input gets a ValueError naming the argument, the expectation, the value and a fix."""

import re

import jax
import jax.numpy as jnp
import pytest

import jgrad
from jgrad import nn


def _raises(fn, *patterns):
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    return msg


@pytest.mark.parametrize(
    "kwargs, patterns",
    [
        (dict(depth=0, width=8), ["`depth`", "positive integer", "got 0"]),
        (dict(depth=3, width=-4), ["`width`", "positive integer", "got -4"]),
        (dict(depth=2.5, width=8), ["`depth`", "got 2.5"]),
        (
            dict(depth=3, width=8, activation="tanhh"),
            ["`activation`", "'tanh'", "'tanhh'"],
        ),
        (
            dict(depth=3, width=8, init="kaiming"),
            ["`init`", "'he_normal'", "'kaiming'"],
        ),
        (
            dict(depth=3, width=8, drop_prob=1.0),
            ["`drop_prob`", r"\[0, 1\)", "got 1.0"],
        ),
        (dict(depth=3, width=8, drop_prob=-0.1), ["`drop_prob`", "got -0.1"]),
        (
            dict(depth=3, width=8, weight_var=-1.0),
            ["`weight_var`", "non-negative", "-1.0"],
        ),
        (dict(depth=3, width=8, bias_var=-0.5), ["`bias_var`", "-0.5"]),
        (dict(depth=3, width=8, norm="group"), ["`norm`", "'batch'", "'group'"]),
        (
            dict(depth=3, width=8, init="he_normal", weight_var=2.0),
            ["`weight_var`", "he_normal", "init='gaussian'"],
        ),
    ],
)
def test_mlp_rejects_bad_arguments(kwargs, patterns):
    _raises(lambda: nn.mlp(**kwargs), *patterns)


def test_layer_constructors_reject_bad_arguments():
    _raises(lambda: nn.dense(0), "`out_dim`", "got 0")
    _raises(lambda: nn.conv2d(8, kernel_size=(3, 0)), "`kernel_size`")
    _raises(lambda: nn.conv2d(8, padding="same"), "`padding`", "'SAME'", "'same'")
    _raises(lambda: nn.maxout(4, num_pieces=0), "`num_pieces`")
    _raises(lambda: nn.dropout(1.5), "`drop_prob`")
    _raises(lambda: nn.batch_norm(momentum=1.0), "`momentum`")
    _raises(lambda: nn.layer_norm(eps=0.0), "`eps`", "positive")
    _raises(lambda: nn.residual(lambda x: x), "`block`", "Layer")
    _raises(lambda: nn.serial(), "`layers`")
    _raises(lambda: nn.serial(nn.dense(3), "tanh"), r"`layers\[1\]`", "str")
    _raises(lambda: nn.resnet(channels=0), "`channels`")
    _raises(lambda: nn.resnet(activation="maxout"), "`activation`")


def test_input_that_does_not_fit_the_params(getkey):
    net = nn.mlp(2, 8)
    _, params = net.init(getkey(), (5,))
    x = jax.random.normal(getkey(), (7,))
    msg = _raises(
        lambda: net.apply(params, x), "`x`", "size 5", r"shape \(7,\)", "init"
    )
    assert "dense" in msg
    # The check happens before tracing: it also fires under jit, with the same message.
    _raises(lambda: jax.jit(net.apply)(params, x), "`x`", "size 5")
    _raises(
        lambda: net.apply(params[:3], x[:5]), "`params`", "4 per-layer entries", "got 3"
    )


def test_wrong_rank_and_shapes(getkey):
    conv = nn.conv2d(4)
    _, p = conv.init(getkey(), (8, 8, 3))
    _raises(
        lambda: conv.apply(p, jnp.arange(24.0).reshape(8, 3)),
        "`x`",
        "rank 3 or 4",
        "(B, H, W, C)",
    )
    _raises(lambda: conv.init(getkey(), (8, 3)), "`in_shape`", r"\(H, W, C\)")
    _raises(
        lambda: nn.dense(3).init(getkey(), 5), "`in_shape`", "tuple of positive ints"
    )
    _raises(lambda: nn.dense(3).init(getkey(), (0,)), "`in_shape`")
    bn = nn.batch_norm()
    _, p = bn.init(getkey(), (4,))
    _raises(
        lambda: bn.apply(p, jnp.arange(1.0, 5.0), train=True), "`x`", "batch", "vmap"
    )
    _raises(lambda: bn.apply(p, jnp.arange(1.0, 7.0).reshape(2, 3)), "`x`", "size 4")


def test_dropout_needs_a_key_in_train_mode(getkey):
    net = nn.mlp(2, 8, drop_prob=0.2)
    _, params = net.init(getkey(), (8,))
    x = jax.random.normal(getkey(), (8,))
    _raises(lambda: net.apply(params, x, train=True), "`key`", "train=True, key=")
    # Eval mode needs no key and dropout is the identity there.
    assert net.apply(params, x).shape == (8,)


def test_unknown_keyword_is_a_type_error_not_ignored(getkey):
    net = nn.mlp(2, 4)
    _, params = net.init(getkey(), (4,))
    with pytest.raises(TypeError):
        net.apply(params, jnp.arange(1.0, 5.0), training=True)


def test_analyzer_rejects_non_networks():
    _raises(
        lambda: jgrad.analyze.layer_grad_norms("mlp", (), jnp.arange(3.0), jnp.sum),
        "`net`",
        "Layer",
        "str",
    )


def test_error_messages_are_single_strings():
    # equinox's trailing-comma bug turns a message into a tuple; ours stay sentences.
    with pytest.raises(ValueError) as info:
        nn.mlp(0, 3)
    assert isinstance(info.value.args[0], str) and len(info.value.args) == 1


def test_init_shapes_without_a_feature_axis(getkey):
    for layer, name in [
        (nn.maxout(3), "maxout"),
        (nn.layer_norm(), "layer_norm"),
        (nn.batch_norm(), "batch_norm"),
        (nn.dense(2), "dense"),
    ]:
        _raises(
            lambda layer=layer: layer.init(getkey(), ()),
            "`in_shape`",
            "feature axis",
            name,
        )
    # flatten reads a rank-4 input as a batch, so it only accepts an image shape at init.
    _raises(
        lambda: nn.flatten().init(getkey(), (2, 3, 4, 5)), "`in_shape`", r"\(H, W, C\)"
    )


def test_every_rnn_entry_point_names_a_bad_cell_the_same_way(getkey):
    cell = jgrad.rnn.lstm(4)
    params = cell.init(getkey(), 3)
    xs = jax.random.normal(getkey(), (6, 3))
    calls = [
        lambda c: jgrad.rnn.unroll(c, params, xs, cell.init_carry()),
        lambda c: jgrad.rnn.unroll_batch(c, params, xs[None], cell.init_carry((1,))),
        lambda c: jgrad.rnn.to_torch(c, params),
        lambda c: jgrad.rnn.from_flax(c, {}),
        lambda c: jgrad.analyze.rnn_step_jacobians(c, params, xs, cell.init_carry()),
        lambda c: jgrad.analyze.pascanu_bound(c, params, xs, cell.init_carry()),
    ]
    msgs = {
        _raises(
            lambda call=call: call(tuple(cell)),
            r"^`cell` must be a jgrad\.rnn\.Cell",
            r"jgrad\.rnn\.lstm\(64\)",
            "got type tuple",
        )
        for call in calls
    }
    assert len(msgs) == 1, msgs


def test_rnn_drivers_name_an_empty_sequence_the_same_way(getkey):
    cell = jgrad.rnn.gru(4)
    params = cell.init(getkey(), 3)
    xs = jax.random.normal(getkey(), (2, 0, 3))
    _raises(
        lambda: jgrad.rnn.unroll(cell, params, xs[0], cell.init_carry()),
        r"^`xs` must have at least one time step \(T >= 1\), got T = 0 \(shape \(0, 3\)\)",
    )
    _raises(
        lambda: jgrad.rnn.unroll_batch(cell, params, xs, cell.init_carry((2,))),
        r"^`xs` must have at least one time step \(T >= 1\), got T = 0 \(shape "
        r"\(2, 0, 3\)\)",
    )
