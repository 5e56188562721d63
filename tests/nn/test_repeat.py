"""``nn.repeat``, ``mlp(stacked=True)`` and the layout converters.

References: a Python loop of the block's own ``apply`` over per-block params (with the
keys ``serial`` would give each block), and the default-layout ``mlp`` with converted
params, in float64. Also: the compiled program does not grow with the depth, the weights
have the default layout's distribution, and bad input fails before tracing.
"""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.nn._layer import split_keys, walk

nn = jgrad.nn


def _key(seed):
    """rbg keys compile faster on CPU; nothing here depends on the generator."""
    return jax.random.key(seed, impl="rbg")


def _per_block(params, n):
    return [jax.tree.map(lambda a, k=k: a[k], params) for k in range(n)]


def _loop(block, params, x, n, *, train=False, key=None):
    """The reference: block.apply n times in Python, keys split as serial splits them."""
    hs = []
    for p, k in zip(_per_block(params, n), split_keys(key, n), strict=True):
        x = block.apply(p, x, train=train, key=k)
        hs.append(x)
    return x, jnp.stack(hs)


def test_repeat_equals_python_loop_float64(rng):
    with jax.enable_x64(True):
        block = nn.serial(nn.dense(5, bias_var=0.3), nn.elementwise("tanh"))
        net = nn.repeat(block, 7)
        shape, params = net.init(_key(0), (5,))
        assert shape == (5,)
        assert params[0]["w"].shape == (7, 5, 5) and params[1] == {}
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        x = jnp.asarray(rng.normal(size=5))
        want_y, want_hs = _loop(block, params, x, 7)
        y, hs = jax.jit(lambda p, v: net.apply(p, v, return_intermediates=True))(
            params, x
        )
        np.testing.assert_allclose(y, want_y, rtol=1e-13)
        np.testing.assert_allclose(hs, want_hs, rtol=1e-13)
        # blocks differ: the trajectory is not one block applied with shared params
        assert not np.allclose(hs[1], hs[2])


def test_repeat_dropout_keys_as_serial(rng):
    block = nn.serial(
        nn.dense(16, bias_var=0.1), nn.elementwise("tanh"), nn.dropout(0.3)
    )
    net = nn.repeat(block, 4)
    _, params = net.init(_key(1), (16,))
    x = jnp.asarray(rng.normal(size=16), jnp.float32)
    key = _key(3)
    want, _ = _loop(block, params, x, 4, train=True, key=key)
    run = jax.jit(lambda p, v, k: net.apply(p, v, train=True, key=k))
    got = run(params, x, key)
    assert np.count_nonzero(got) > 4  # some units survive 4 dropout layers
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # the same as serial of the 4 copies with the same key
    flat = nn.serial(*([block] * 4))
    ref = flat.apply(tuple(_per_block(params, 4)), x, train=True, key=key)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # a different key draws different masks
    other = run(params, x, _key(4))
    assert not np.allclose(got, other)


def test_repeat_return_state_batch_norm(rng):
    block = nn.serial(nn.dense(4), nn.batch_norm(), nn.elementwise("tanh"))
    net = nn.repeat(block, 3)
    _, params = net.init(_key(2), (4,))
    xs = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    y, hs, new = net.apply(
        params, xs, train=True, return_state=True, return_intermediates=True
    )
    h, want_new = xs, []
    for p in _per_block(params, 3):
        h, pn = block.apply(p, h, train=True, return_state=True)
        want_new.append(pn)
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)
    assert hs.shape == (3, 16, 4)
    want = jax.tree.map(lambda *a: jnp.stack(a), *want_new)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), new, want)
    # the running statistics moved
    assert not np.allclose(new[1]["mean"], params[1]["mean"])


MLP_OPTIONS = [
    {},
    {"activation": "relu", "init": "he_normal", "bias_var": 0.1},
    {"residual": True, "residual_scale": 0.5},
    {"norm": "layer", "out_dim": 3},
    {"activation": "maxout", "num_pieces": 3},
    {"activation": "prelu"},
]


@pytest.mark.parametrize("kw", MLP_OPTIONS, ids=lambda kw: ",".join(kw) or "plain")
def test_mlp_stacked_matches_default_layout_float64(kw, rng):
    with jax.enable_x64(True):
        flat = nn.mlp(6, 8, **kw)
        stacked = nn.mlp(6, 8, stacked=True, **kw)
        _, params = flat.init(_key(5), (5,))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        sp = nn.stack_params(stacked, params)
        x = jnp.asarray(rng.normal(size=5))
        want = flat.apply(params, x)
        got = jax.jit(stacked.apply)(sp, x)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        # the round trip is exact, leaf by leaf
        back = nn.unstack_params(stacked, sp)
        assert jax.tree.structure(back) == jax.tree.structure(tuple(params))
        jax.tree.map(np.testing.assert_array_equal, back, tuple(params))
    # and init's own stacked params convert the other way
    _, own = stacked.init(_key(6), (5,))
    x = jnp.asarray(rng.normal(size=5), jnp.float32)
    np.testing.assert_allclose(
        jax.jit(stacked.apply)(own, x),
        jax.jit(flat.apply)(nn.unstack_params(stacked, own), x),
        rtol=1e-5,
        atol=1e-6,
    )


def test_mlp_stacked_structure():
    net = nn.mlp(5, 4, stacked=True, out_dim=2)
    assert len(net.layers) == 4 and net.block_ends == (1, 2)
    rep = net.layers[2]
    assert rep.info.kind == "repeat" and rep.info.repeats == 4
    assert [sub.info.kind for sub in walk(rep)] == [
        "repeat",
        "serial",
        "dense",
        "elementwise",
    ]
    assert rep.info.in_rank == 1
    # depth 1: nothing to stack, the default layout
    assert len(nn.mlp(1, 4, stacked=True).layers) == 2


def test_mlp_stacked_weight_distribution():
    """Blocks 2..depth: weights N(0, weight_var / width), independent across blocks."""
    net = nn.mlp(201, 32, stacked=True, weight_var=2.0, bias_var=0.5)
    _, params = net.init(_key(7), (16,))
    w, b = params[2][0]["w"], params[2][0]["b"]
    assert w.shape == (200, 32, 32) and b.shape == (200, 32)
    # 204800 samples: the sample variance's relative std is sqrt(2 / N) = 0.3%
    np.testing.assert_allclose(np.var(w), 2.0 / 32, rtol=0.02)
    np.testing.assert_allclose(np.var(b), 0.5, rtol=0.05)  # 6400 samples: 1.8%
    np.testing.assert_allclose(np.var(params[0]["w"]), 2.0 / 16, rtol=0.2)
    corr = np.corrcoef(np.asarray(w[0]).ravel(), np.asarray(w[1]).ravel())[0, 1]
    assert abs(corr) < 0.15  # 1024 pairs: std 0.03


def _num_eqns(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _num_eqns(sub)
    return n


def test_compiled_size_flat_in_depth():
    """init and apply trace the same program at depth 10 and 1000."""
    x = jnp.linspace(-1.0, 1.0, 8)
    sizes = []
    for depth in (10, 1000):
        net = nn.mlp(depth, 8, stacked=True)
        shapes = jax.eval_shape(lambda k, net=net: net.init(k, (8,))[1], _key(0))
        init_jaxpr = jax.make_jaxpr(lambda k, net=net: net.init(k, (8,))[1])(_key(0))
        apply_jaxpr = jax.make_jaxpr(net.apply)(shapes, x)
        sizes.append((_num_eqns(init_jaxpr.jaxpr), _num_eqns(apply_jaxpr.jaxpr)))
    assert sizes[0] == sizes[1]


def test_errors():
    dense4 = nn.dense(4)
    with pytest.raises(ValueError, match=r"`block` must map its input shape.*\(3,\)"):
        nn.repeat(dense4, 3).init(_key(0), (3,))
    with pytest.raises(ValueError, match="`n` must be"):
        nn.repeat(dense4, 0)
    with pytest.raises(ValueError, match="`block` must be a jgrad.nn.Layer"):
        nn.repeat(lambda p, x: x, 3)
    net = nn.repeat(dense4, 3)
    _, params = net.init(_key(0), (4,))
    bad = jax.tree.map(lambda a: a[:2], params)
    with pytest.raises(
        ValueError, match=r"params\[.b.\]` must have a leading axis of size 3.*\(2, 4\)"
    ):
        net.apply(bad, jnp.linspace(-1.0, 1.0, 4))
    stacked = nn.mlp(4, 4, stacked=True)
    with pytest.raises(ValueError, match="8 per-layer entries, got 3"):
        nn.stack_params(stacked, stacked.init(_key(0), (4,))[1])
    with pytest.raises(ValueError, match="one entry per layer of `net` \\(3\\), got 8"):
        nn.unstack_params(stacked, nn.mlp(4, 4).init(_key(0), (4,))[1])
