"""layer_jacobians and jacobian against jax.jacrev of the composed network (float64).

The reference for every product J_L ... J_1 is ``jax.jacrev`` of ``net.apply`` itself, so
the closed forms (dense w^T, diag(phi'), fused dense+activation, residual shortcut + branch)
and the autodiff fallback are checked against a computation that shares none of their code.
"""

import warnings

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jgrad import nn
from jgrad.analyze import (
    Jacobians,
    jacobian,
    layer_jacobians,
    log_abs_det,
    log_singular_values,
)
from tests.helpers import default_promotion


def _f64(tree):
    """Casts every floating leaf to float64 (call inside ``jax.enable_x64(True)``)."""
    return jax.tree.map(lambda a: jnp.asarray(a).astype(jnp.float64), tree)


def _product(mats):
    """J_L ... J_1 in float64 NumPy."""
    p = np.asarray(mats[0], np.float64)
    for m in mats[1:]:
        p = np.asarray(m, np.float64) @ p
    return p


def _norm_bound(mats):
    """prod ||J_l||_2: the scale of the rounding error of any product of the J_l."""
    return float(np.prod([np.linalg.norm(np.asarray(m, np.float64), 2) for m in mats]))


def _jacrev(fn, x):
    """jax.jacrev of fn at x as a flattened (out, in) matrix."""
    j = jax.jacrev(fn)(x)
    y = jax.eval_shape(fn, x)
    return jnp.reshape(j, (int(np.prod(y.shape)), x.size))


def _analyze(net, params, x, *, blocks, spectrum=False, apply_kw=None, **kw):
    """layer_jacobians, its spectra and the references, in ONE jitted call (one XLA
    compilation per network instead of one per eager op; eager == jit is tested below)."""
    apply_kw = apply_kw or {}

    def run(params, x):
        jac = layer_jacobians(net, params, x, blocks=blocks, **kw)
        fn = lambda v: net.apply(params, v, **apply_kw)  # noqa: E731
        out = {"jac": jac, "y": fn(x), "ref": _jacrev(fn, x)}
        if spectrum:
            out["ls"] = log_singular_values(jac)
            out["qr"] = log_singular_values(jac, "qr")
            if jac.mats[-1].shape[0] == jac.mats[0].shape[1]:
                out["ld"] = log_abs_det(jac)
        return out

    return jax.jit(run)(params, x)


def _check_spectrum(out):
    """log_singular_values (rescaled) against NumPy's SVD of the jacrev Jacobian, and
    log_abs_det (qr) against slogdet when the product is square, full rank along the way
    and well conditioned."""
    jac, ref = out["jac"], np.asarray(out["ref"], np.float64)
    bound = _norm_bound(jac.mats)
    ls = np.asarray(out["ls"])
    sv = np.linalg.svd(ref, compute_uv=False)
    assert ls.shape == (min(ref.shape),)
    assert np.all(np.diff(ls[np.isfinite(ls)]) <= 0)  # descending
    # Weyl: a product rounded at eps moves every singular value by <= c eps prod ||J_l||;
    # the rescaled product is exact to that level and no better (tiny ones are lost).
    np.testing.assert_allclose(np.exp(ls), sv, rtol=1e-9, atol=1e-12 * bound)
    top = sv > 1e-6 * max(bound, 1e-300)
    np.testing.assert_allclose(ls[top], np.log(sv[top]), rtol=0, atol=1e-6)
    dims = [jac.mats[0].shape[1]] + [m.shape[0] for m in jac.mats]
    if (
        ref.shape[0] == ref.shape[1]
        and min(dims) == ref.shape[0]
        and sv[-1] > 1e-6 * sv[0]
    ):
        sign, ref_ld = np.linalg.slogdet(ref)
        assert sign != 0
        np.testing.assert_allclose(float(out["ld"]), ref_ld, rtol=0, atol=1e-8)
        # The QR accumulation's terms sum to log|det| exactly, whatever their order.
        np.testing.assert_allclose(np.sum(out["qr"]), ref_ld, rtol=0, atol=1e-8)


def _check_network(net, params, x, *, blocks, spectrum=False, apply_kw=None, **kw):
    """Asserts the layer_jacobians product equals jacrev of net.apply (float64 in, out)."""
    out = _analyze(
        net, params, x, blocks=blocks, spectrum=spectrum, apply_kw=apply_kw, **kw
    )
    jac = out["jac"]
    assert isinstance(jac, Jacobians)
    assert len(jac.hs) == len(jac.mats) + 1
    assert int(jac.first_nonfinite) == -1
    for k, m in enumerate(jac.mats):
        assert m.dtype == jnp.float64
        assert m.shape == (jac.hs[k + 1].size, jac.hs[k].size)
    np.testing.assert_allclose(
        np.asarray(jac.hs[-1]), np.asarray(out["y"]), rtol=1e-12, atol=1e-12
    )
    ref = np.asarray(out["ref"], np.float64)
    bound = _norm_bound(jac.mats)
    np.testing.assert_allclose(_product(jac.mats), ref, rtol=1e-9, atol=1e-12 * bound)
    if spectrum:
        _check_spectrum(out)
    return out


# ----------------------------------------------------------------------------------------
# 1. Random MLPs: every activation, residual, layer norm, readout, blocks on and off.


def _random_params(net, in_shape, rng):
    """Params of ``net``'s structure filled from ``rng`` (float64 NumPy): matrices
    N(0, 1/fan_in), vectors N(0, 0.3^2), so layer norm scales and offsets, batch norm
    statistics and prelu slopes are generic too. (Faster than an eager net.init per
    hypothesis example; the distribution does not matter for an exactness test.)"""
    shapes = jax.eval_shape(lambda k: net.init(k, in_shape)[1], jax.random.key(0))

    def fill(path, s):
        if len(s.shape) >= 2:
            return rng.normal(size=s.shape) / np.sqrt(s.shape[-2])
        v = 0.3 * rng.normal(size=s.shape)
        if getattr(path[-1], "key", None) == "var":  # batch norm running variance
            v = 0.5 + np.abs(v)
        return v

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _params32(net, in_shape, rng):
    """_random_params as float32 jax arrays (an eager net.init compiles every random op)."""
    return jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float32), _random_params(net, in_shape, rng)
    )


def _mlp_case(depth, width, in_dim, out_dim, act, residual, norm, blocks, seed):
    # Layer norm over two features maps every input to about (+-1, -+1): its Jacobian is
    # (up to its eps) the cancellation of O(1 / sigma) terms, so float64 jacrev's own
    # rounding exceeds the tolerance derived below from the product of the layers' norms.
    assume(not (norm == "layer" and width == 2 and not residual))
    net = nn.mlp(
        depth, width, activation=act, residual=residual, norm=norm, out_dim=out_dim
    )
    rng = np.random.default_rng(seed)
    params = _random_params(net, (in_dim,), rng)
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, params)
        x = jnp.asarray(rng.normal(size=in_dim))
        jac = _check_network(net, params, x, blocks=blocks, spectrum=True)["jac"]
        expected = len(net.layers) if not blocks else depth + (out_dim is not None)
        assert len(jac.mats) == expected
        # h_l are the outputs of the block ends (of every layer with blocks=False)
        _, hs = jax.jit(lambda p, v: net.apply(p, v, return_intermediates=True))(
            params, x
        )
        ends = net.block_ends if blocks else range(len(net.layers))
        for h, end in zip(jac.hs[1:], ends, strict=False):
            np.testing.assert_allclose(np.asarray(h), np.asarray(hs[end]), rtol=1e-12)


_ARCH = dict(
    depth=st.integers(1, 8),
    act=st.sampled_from(nn.ACTIVATIONS),
    residual=st.booleans(),
    norm=st.sampled_from([None, "layer"]),
    blocks=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
_ARCH["width"] = st.integers(1, 16)
_ARCH["in_dim"] = st.integers(1, 16)  # may differ from the hidden width
_ARCH["out_dim"] = st.one_of(st.none(), st.integers(1, 16))


# Each example costs one XLA compilation (~1 s): 8 here, 60 in the slow test.
@settings(max_examples=8, deadline=None)
@given(**_ARCH)
@pytest.mark.slow
def test_mlp_product_and_spectrum_match_jacrev(
    depth, width, in_dim, out_dim, act, residual, norm, blocks, seed
):
    _mlp_case(depth, width, in_dim, out_dim, act, residual, norm, blocks, seed)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(**_ARCH)
def test_mlp_product_and_spectrum_match_jacrev_more_examples(
    depth, width, in_dim, out_dim, act, residual, norm, blocks, seed
):
    _mlp_case(depth, width, in_dim, out_dim, act, residual, norm, blocks, seed)


def _every_activation_net(fancy):
    """One network with every activation: dense -> act blocks (closed forms, fused), or
    pre-activation residual blocks with layer norm (autodiff fallback inside the branch);
    then prelu and maxout."""
    layers, ends = [], []
    # every name in plain blocks; every third one in residual blocks (layer norm is the
    # autodiff fallback, one compilation each)
    for name in nn.ACTIVATIONS[::3] if fancy else nn.ACTIVATIONS:
        if fancy:
            branch = nn.serial(nn.layer_norm(), nn.elementwise(name), nn.dense(6))
            layers.append(nn.residual(branch, 0.7))
        else:
            layers += [nn.dense(6), nn.elementwise(name)]
        ends.append(len(layers) - 1)
    layers += [nn.dense(6), nn.prelu(), nn.maxout(4, 3)]
    ends += [len(layers) - 2, len(layers) - 1]
    return nn.serial(*layers, block_ends=ends)


@pytest.mark.parametrize(
    "fancy, blocks",
    [(False, True), (True, False)],
    ids=["plain_blocks", "residual_layers"],
)
def test_every_activation_matches_jacrev(fancy, blocks, rng):
    net = _every_activation_net(fancy)
    params = _random_params(net, (5,), rng)
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, params)
        x = jnp.asarray(rng.normal(size=5))
        jac = _check_network(net, params, x, blocks=blocks)["jac"]
        assert len(jac.mats) == (len(net.block_ends) if blocks else len(net.layers))


def test_dense_activation_block_is_closed_form(rng):
    """For a plain mlp J_l = diag(phi'(a_l)) W_l^T, computed here by hand."""
    net = nn.mlp(3, 5, activation="tanh", bias_var=0.1)
    params = _params32(net, (4,), rng)
    with jax.enable_x64(True):
        params = _f64(params)
        h = jnp.asarray(rng.normal(size=4))
        jac = layer_jacobians(net, params, h)
        for k in range(3):
            w, b = np.asarray(params[2 * k]["w"]), np.asarray(params[2 * k]["b"])
            a = np.asarray(h) @ w + b
            expected = (1 - np.tanh(a) ** 2)[:, None] * w.T
            np.testing.assert_allclose(np.asarray(jac.mats[k]), expected, rtol=1e-13)
            h = jnp.tanh(jnp.asarray(a))
            np.testing.assert_allclose(
                np.asarray(jac.hs[k + 1]), np.asarray(h), rtol=1e-13
            )


# ----------------------------------------------------------------------------------------
# 2. Every layer kind: conv, pooling, flatten, global pooling, layer and batch norm (eval),
#    dropout (train), maxout, nested serials, a bare Layer. Chunked fallback == unchunked.
#    (prelu and maxout in an mlp: test_every_activation_matches_jacrev.)


def _conv_serial():
    return nn.serial(
        nn.conv2d(3, 3),
        nn.elementwise("tanh"),
        nn.avg_pool(2),
        nn.flatten(),
        nn.dense(4),
    )


# name: (builder, input shape of one example, train mode, blocks, also check chunk_size=3)
_KINDS = {
    "conv_pool_flatten": (_conv_serial, (4, 4, 2), False, False, True),
    "resnet_skip_layernorm": (
        lambda: nn.resnet(3, channels=2, num_blocks=1, norm="layer", activation="gelu"),
        (3, 3, 2),
        False,
        True,
        False,
    ),
    "mlp_batchnorm_eval": (
        lambda: nn.mlp(2, 5, norm="batch", out_dim=2),
        (4,),
        False,
        True,
        False,
    ),
    "mlp_residual_dropout_train": (
        lambda: nn.mlp(
            2, 6, activation="relu", drop_prob=0.3, residual=True, out_dim=2
        ),
        (4,),
        True,
        False,
        False,
    ),
    "nested_serial_layernorm_maxout": (
        lambda: nn.serial(
            nn.mlp(2, 4, activation="silu"),
            nn.layer_norm(),
            nn.maxout(3, 3),
            nn.dense(2),
        ),
        (4,),
        False,
        False,
        True,
    ),
}


@pytest.mark.parametrize("name", list(_KINDS))
def test_every_layer_kind_matches_jacrev(name, getkey, rng):
    """Closed forms and the autodiff fallback (conv, pooling, flatten, layer and batch norm,
    dropout with its key, maxout, nested serials); chunk_size=3 gives the same matrices."""
    build, in_shape, train, blocks, chunk = _KINDS[name]
    net = build()
    params = _random_params(net, in_shape, rng)
    key = getkey() if train else None
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, params)
        x = jnp.asarray(rng.normal(size=in_shape))
        kw = dict(train=train, key=key)
        jac = _check_network(net, params, x, blocks=blocks, apply_kw=kw, **kw)["jac"]
        if chunk:
            chunked = jax.jit(
                lambda p, v: layer_jacobians(
                    net, p, v, blocks=blocks, chunk_size=3, **kw
                )
            )(params, x)
            assert len(chunked.mats) == len(jac.mats)
            for a, b in zip(chunked.mats, jac.mats, strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_single_layer_as_net(rng):
    """A bare Layer is a one-layer network; its params go in a one-entry list."""
    layer = nn.dense(3)
    params = _random_params(layer, (4,), rng)
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, params)
        x = jnp.asarray(rng.normal(size=4))
        jac = layer_jacobians(layer, [params], x)
        assert len(jac.mats) == 1
        np.testing.assert_array_equal(
            np.asarray(jac.mats[0]), np.asarray(params["w"]).T
        )


def test_single_layer_accepts_its_own_init_params(rng):
    layer = nn.dense(3)
    _, params = layer.init(jax.random.key(0), (4,))
    x = jnp.asarray(rng.normal(size=4), jnp.float32)
    jac = layer_jacobians(layer, params, x)
    np.testing.assert_allclose(np.asarray(jac.mats[0]), np.asarray(params["w"]).T)


def test_dropout_key_changes_the_jacobian(getkey, rng):
    """Train-mode dropout: the mask follows `key` exactly as net.apply's does (checked
    above); two keys give two different masks, so the test above is not vacuous."""
    net = nn.mlp(1, 8, drop_prob=0.5)
    params = _params32(net, (3,), rng)
    x = jnp.asarray(rng.normal(size=3), jnp.float32)
    a = layer_jacobians(net, params, x, train=True, key=getkey()).mats[0]
    b = layer_jacobians(net, params, x, train=True, key=getkey()).mats[0]
    assert not np.allclose(np.asarray(a), np.asarray(b))
    # Eval mode: no dropout, the Jacobian is the mask-free one for any key.
    c = layer_jacobians(net, params, x, key=getkey()).mats[0]
    d = layer_jacobians(net, params, x).mats[0]
    np.testing.assert_array_equal(np.asarray(c), np.asarray(d))


def _nonsquare_fns():
    w = np.random.default_rng(3).normal(size=(6, 5))
    return [
        # R^(2, 3) -> R^5: more inputs than outputs (auto picks reverse)
        (lambda v: jnp.tanh(jnp.ravel(v) @ jnp.asarray(w)) * v[0, 0], (2, 3)),
        # R^4 -> R^(3, 3): more outputs than inputs (auto picks forward)
        (lambda v: jnp.sin(jnp.outer(v[:3], v[1:]) + v[0]), (4,)),
        # R^7 -> scalar
        (lambda v: jnp.sum(jnp.exp(0.3 * v) * v), (7,)),
    ]


@pytest.mark.parametrize("case", range(3))
def test_jacobian_modes_and_chunks_match_jacrev(case, rng):
    fn, shape = _nonsquare_fns()[case]
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=shape))
        ref = _jacrev(fn, x)
        for mode, chunk in [
            ("auto", None),
            ("fwd", 2),
            ("rev", 3),
            ("rev", 1000),
        ]:
            j = jacobian(fn, x, mode=mode, chunk_size=chunk)
            assert j.shape == ref.shape
            np.testing.assert_allclose(np.asarray(j), ref, rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------------------------------
# 3. A list mixing a jgrad layer, a flax module and a plain function.


def test_mixed_list_of_layer_flax_module_and_function(getkey, rng):
    dense = nn.dense(6, bias_var=0.1)
    module = fnn.Dense(4)
    p_dense = _params32(dense, (5,), rng)
    with default_promotion():
        variables = module.init(getkey(), jnp.zeros((6,), jnp.float32))

    def fn(p, v):
        return jnp.tanh(v) * p["a"] + jnp.square(v)

    p_fn = {"a": jnp.asarray(rng.normal(size=4), jnp.float32)}
    net = [dense, module, fn]
    with jax.enable_x64(True), default_promotion():
        params = _f64([p_dense, variables, p_fn])
        x = jnp.asarray(rng.normal(size=5))

        def composed(v):
            return fn(params[2], module.apply(params[1], dense.apply(params[0], v)))

        jac = layer_jacobians(net, params, x)
        assert [m.shape for m in jac.mats] == [(6, 5), (4, 6), (4, 4)]
        ref = _jacrev(composed, x)
        np.testing.assert_allclose(_product(jac.mats), ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            np.asarray(jac.hs[-1]), np.asarray(composed(x)), rtol=1e-13
        )
        # Each matrix is that item's own Jacobian.
        np.testing.assert_allclose(
            np.asarray(jac.mats[1]),
            np.asarray(params[1]["params"]["kernel"]).T,
            rtol=1e-13,
        )
        np.testing.assert_allclose(
            np.asarray(jac.mats[2]),
            np.diag(
                np.asarray(params[2]["a"]) / np.cosh(np.asarray(jac.hs[2])) ** 2
                + 2 * np.asarray(jac.hs[2])
            ),
            rtol=1e-12,
        )


# ----------------------------------------------------------------------------------------
# 4. Batch norm in train mode: the (B n, B n) batch Jacobian.


def _bn_net():
    return nn.mlp(2, 3, activation="tanh", norm="batch", out_dim=2, bias_var=0.1)


def test_batch_norm_train_needs_batch_jacobian(getkey, rng):
    net = _bn_net()
    params = _params32(net, (3,), rng)
    xs = jax.random.normal(getkey(), (4, 3))
    with pytest.raises(ValueError, match="`batch_jacobian` must be True"):
        layer_jacobians(net, params, xs, train=True)
    with pytest.raises(ValueError, match="`batch_jacobian` must be True"):
        layer_jacobians(net, params, xs[0], train=True)
    # Nested: batch norm inside a residual branch inside a list.
    res = nn.residual(nn.serial(nn.batch_norm(), nn.dense(3)))
    rp = _params32(res, (3,), rng)
    with pytest.raises(ValueError, match="`batch_jacobian` must be True"):
        layer_jacobians([res], [rp], xs, train=True)
    with pytest.raises(ValueError, match="`x` must be a batch"):
        layer_jacobians(net, params, xs[0], train=True, batch_jacobian=True)
    # Eval mode needs no batch Jacobian.
    assert len(layer_jacobians(net, params, xs[0]).mats) == 3


@pytest.mark.slow
def test_batch_norm_train_batch_jacobian_matches_jacrev(getkey, rng):
    b, n = 4, 3
    net = _bn_net()
    params = _params32(net, (n,), rng)
    xs = jax.random.normal(getkey(), (b, n))
    with jax.enable_x64(True):
        params, xs = _f64(params), xs.astype(jnp.float64)
        jac = layer_jacobians(net, params, xs, train=True, batch_jacobian=True)
        assert [m.shape for m in jac.mats] == [
            (b * 3, b * n),
            (b * 3, b * 3),
            (b * 2, b * 3),
        ]
        fn = lambda v: net.apply(params, v, train=True)  # noqa: E731
        ref = _jacrev(fn, xs)
        assert ref.shape == (b * 2, b * n)
        np.testing.assert_allclose(_product(jac.mats), ref, rtol=1e-10, atol=1e-12)
        # Batch norm couples the examples: d y_0 / d x_1 is not zero. (A per-example
        # Jacobian would be block diagonal.)
        off = _product(jac.mats)[0:2, n : 2 * n]
        assert np.max(np.abs(off)) > 1e-3
        for m in jac.mats[:2]:  # every hidden block couples the examples too
            assert np.max(np.abs(np.asarray(m)[0:3, 3:6])) > 1e-4
        # The eval-mode Jacobian of the batch is block diagonal: the contrast.
        ev = layer_jacobians(net, params, xs, batch_jacobian=True)
        np.testing.assert_array_equal(_product(ev.mats)[0:2, n : 2 * n], 0.0)


# ----------------------------------------------------------------------------------------
# first_nonfinite, stacked(), errors


def test_first_nonfinite(rng):
    """The first k with a non-finite h_k or J_k; eagerly it also warns naming k, under
    jit it is only returned."""
    dense = nn.dense(3)
    pd = _params32(dense, (3,), rng)
    net = [dense, nn.elementwise("tanh"), lambda p, v: v / p, dense]
    x = jnp.asarray(rng.normal(size=3), jnp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finite trajectory does not warn
        ok = layer_jacobians(net, [pd, {}, jnp.float32(2.0), pd], x)
    assert int(ok.first_nonfinite) == -1
    with pytest.warns(RuntimeWarning, match=r"non-finite \(NaN or inf\) at layer 3"):
        bad = layer_jacobians(net, [pd, {}, jnp.float32(0.0), pd], x)
    assert int(bad.first_nonfinite) == 3  # h_3 = h_2 / 0
    # J_3 = I / 0 at the finite h_2: the backward index too; J_4 at h_3: all NaN
    assert (int(bad.nonfinite.forward), int(bad.nonfinite.backward)) == (3, 3)
    assert np.isnan(np.asarray(bad.mats[3])).all()
    assert np.all(np.isfinite(np.asarray(bad.hs[2])))
    assert not np.all(np.isfinite(np.asarray(bad.hs[3])))
    with pytest.warns(RuntimeWarning, match=r"at layer 0"):
        nan_in = layer_jacobians(
            net, [pd, {}, jnp.float32(2.0), pd], x.at[1].set(jnp.nan)
        )
    assert int(nan_in.first_nonfinite) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jitted = jax.jit(lambda p: layer_jacobians(net, [pd, {}, p, pd], x))
        assert int(jitted(jnp.float32(0.0)).first_nonfinite) == 3
        assert int(jitted(jnp.float32(2.0)).first_nonfinite) == -1


def test_stacked(rng):
    net = nn.mlp(4, 5, activation="erf")
    params = _params32(net, (5,), rng)
    jac = layer_jacobians(net, params, jnp.asarray(rng.normal(size=5), jnp.float32))
    s = jac.stacked()
    assert s.shape == (4, 5, 5)
    for k in range(4):
        np.testing.assert_array_equal(np.asarray(s[k]), np.asarray(jac.mats[k]))
    params = _params32(net, (3,), rng)
    jac = layer_jacobians(net, params, jnp.asarray(rng.normal(size=3), jnp.float32))
    with pytest.raises(ValueError, match=r"`stacked\(\)` needs Jacobians of one shape"):
        jac.stacked()


def test_layer_jacobians_errors(rng):
    net = nn.mlp(2, 3)
    params = _params32(net, (3,), rng)
    x = jnp.linspace(-1.0, 0.7, 3)
    for bad in (3, "mlp", [], None):
        with pytest.raises(ValueError, match="`net` must be one of: a jgrad.nn.Layer"):
            layer_jacobians(bad, params, x)
    with pytest.raises(ValueError, match=r"`net\[1\]` must be"):
        layer_jacobians([nn.dense(3), 3], [params[0], {}], x)
    with pytest.raises(ValueError, match="`params` must have one entry per layer"):
        layer_jacobians(net, params[:-1], x)
    with pytest.raises(ValueError, match="`params` must have one entry per layer"):
        layer_jacobians(net, {"w": 1}, x)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer"):
        layer_jacobians(net, params, x, chunk_size=0)
    typo = nn.Layer(net.layers[0].init, net.layers[0].apply, nn.LayerInfo(kind="desne"))
    with pytest.raises(ValueError, match=r"`net\[0\].info.kind` must be one of"):
        layer_jacobians([typo], [params[0]], x)
    for flag in ("blocks", "train", "batch_jacobian"):
        with pytest.raises(ValueError, match=f"`{flag}` must be True or False"):
            layer_jacobians(net, params, x, **{flag: "yes"})
    with pytest.raises(ValueError, match="`mode` must be one of"):
        jacobian(jnp.sin, x, mode="forward")
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer"):
        jacobian(jnp.sin, x, chunk_size=-2)


# ----------------------------------------------------------------------------------------
# 10. vmap over examples and jit.


@pytest.mark.slow
def test_vmap_and_jit_match_loop(getkey, rng):
    # one residual block with layer norm (autodiff fallback under vmap) and a readout
    net = nn.mlp(1, 4, activation="gelu", residual=True, norm="layer", out_dim=4)
    params = _params32(net, (4,), rng)
    xs = jax.random.normal(getkey(), (3, 4))

    def spectrum(x):
        jac = layer_jacobians(net, params, x)
        return log_singular_values(jac), log_singular_values(jac, "qr"), jac.stacked()

    batched = jax.vmap(spectrum)(xs)  # eager vmap
    jitted = jax.jit(jax.vmap(spectrum))(xs)
    one = jax.jit(spectrum)
    refs = jax.jit(jax.vmap(jax.jacrev(lambda v: net.apply(params, v))))(xs)
    for b, j in zip(batched, jitted, strict=True):  # jit == eager
        np.testing.assert_allclose(np.asarray(j), np.asarray(b), rtol=2e-5, atol=1e-5)
    for i in range(xs.shape[0]):
        loop = one(xs[i])  # the per-example loop
        for b, lp in zip(batched, loop, strict=True):
            np.testing.assert_allclose(
                np.asarray(b[i]), np.asarray(lp), rtol=2e-5, atol=1e-5
            )
        ref = np.linalg.svd(np.asarray(refs[i], np.float64), compute_uv=False)
        np.testing.assert_allclose(
            np.exp(np.asarray(batched[0][i])), ref, rtol=1e-4, atol=1e-5 * ref[0]
        )
    # Each example has its own spectrum (the batch is not broadcast from one example).
    assert np.ptp(np.asarray(batched[0][:, 0])) > 1e-3
