"""Any model in jgrad.analyze: per_example_grad_norms against a Python loop of jax.grad,
and the spectra and gradient norms of a bare function fn(params, x) against jax.jacrev,
NumPy's SVD and jax.grad (float64)."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import nn
from jgrad.analyze import ExampleGradNorms, NonFiniteWarning, per_example_grad_norms
from tests.helpers import default_promotion

B, N_IN, N_OUT = 5, 3, 4


def _f64(tree):
    """Casts every floating leaf to float64 (call inside ``jax.enable_x64(True)``)."""
    return jax.tree.map(lambda a: jnp.asarray(a).astype(jnp.float64), tree)


def _log10_norm(tree):
    """log10 of the norm of all entries of all leaves, in float64 NumPy."""
    v = np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(tree)])
    with np.errstate(divide="ignore"):
        return np.log10(np.linalg.norm(v))


def _leaf_log10(tree):
    """Every leaf's log10 norm, same structure."""
    return jax.tree.map(lambda a: _log10_norm(a), tree)


def _stack(trees):
    """A list of pytrees of scalars as one pytree of (B,) arrays."""
    return jax.tree.map(lambda *a: np.stack(a), *trees)


def _assert_close(got, want):
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(np.asarray(g), w, rtol=1e-9), got, want
    )


def _assert_close_or_roundoff(got, want, total):
    """As :func:`_assert_close`, except for leaves whose gradient is zero in exact
    arithmetic (a bias before batch norm): those are round-off, 10^-10 of ``total`` or
    less, in both."""

    def check(g, w):
        g, low = np.asarray(g), np.asarray(total) - 10
        small = w < low
        assert np.all(g[small] < low[small])
        np.testing.assert_allclose(g[~small], w[~small], rtol=1e-9)

    jax.tree.map(check, got, want)


def _loss_fn(t):
    """One nonlinear loss per example from the batch output (B, n)."""
    return lambda ys: jnp.sum(jnp.sin(ys - t) + 0.5 * jnp.square(ys), axis=-1)


def _run(net, params, xs, loss_fn, **kw):
    """per_example_grad_norms jitted (one compilation instead of eager op-by-op; eager
    == jit is tested below)."""
    return jax.jit(lambda p, xs: per_example_grad_norms(net, p, xs, loss_fn, **kw))(
        params, xs
    )


def _run_both(net, params, xs, loss_fn):
    """(coupled=False, coupled=True) results in one jitted call."""

    def both(p, xs):
        return tuple(
            per_example_grad_norms(net, p, xs, loss_fn, coupled=c)
            for c in (False, True)
        )

    return jax.jit(both)(params, xs)


def _loop(loss, params, x, batch=B):
    """``[value_and_grad(loss, argnums=(0, 1))(params, x, b) for b in range(batch)]``,
    the reference: one example (or one loss entry) at a time, jitted once."""
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return [f(params, x, b) for b in range(batch)]


def _check_against_loop(res, per_example_loss, params, xs, refs=None):
    """``res`` equals, example by example, jax.grad of ``per_example_loss(p, x_b, b)``
    (its params structure as ``res.param_log10_norm``); returns the reference."""
    if refs is None:
        refs = _loop(lambda p, xs, b: per_example_loss(p, xs[b], b), params, xs)
    np.testing.assert_allclose(res.loss, [float(v) for v, _ in refs], rtol=1e-12)
    np.testing.assert_allclose(
        res.log10_norm, [_log10_norm(g[0]) for _, g in refs], rtol=1e-9
    )
    np.testing.assert_allclose(
        res.input_log10_norm, [_log10_norm(g[1]) for _, g in refs], rtol=1e-9
    )
    _assert_close(res.param_log10_norm, _stack([_leaf_log10(g[0]) for _, g in refs]))
    return refs


def _data(getkey, n_in=N_IN, n_out=N_OUT):
    xs = jax.random.normal(getkey(), (B, n_in), jnp.float64)
    t = jax.random.normal(getkey(), (B, n_out), jnp.float64)
    return xs, t


def test_jgrad_mlp_matches_a_loop_of_jax_grad(getkey):
    """Both routes, on a model whose examples do not interact: each equals the loop
    (so they equal each other)."""
    net = nn.mlp(2, 6, activation="tanh", out_dim=N_OUT, bias_var=0.1)
    _, params = net.init(getkey(), (N_IN,))
    with jax.enable_x64(True):
        params = _f64(params)
        xs, t = _data(getkey)

        def loss(p, x, b):
            return _loss_fn(t[b])(net.apply(p, x))

        refs = None
        for res in _run_both(net, params, xs, _loss_fn(t)):
            assert isinstance(res, ExampleGradNorms)
            assert len(res.param_log10_norm) == len(net.layers)
            refs = _check_against_loop(res, loss, params, xs, refs)
            assert int(res.nonfinite.forward) == int(res.nonfinite.backward) == -1


class _MLP(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = jnp.tanh(fnn.Dense(6)(x))
        return fnn.Dense(N_OUT)(x)


def test_flax_sequential_matches_a_loop_of_jax_grad(getkey):
    model = fnn.Sequential([fnn.Dense(6), fnn.tanh, fnn.Dense(N_OUT)])
    with jax.enable_x64(True), default_promotion():
        xs, t = _data(getkey)
        variables = _f64(model.init(getkey(), xs))
        res = _run(model, variables, xs, _loss_fn(t))
        refs = _loop(
            lambda v, xs, b: _loss_fn(t[b])(model.apply(v, xs[b])), variables, xs
        )
        leaves = _stack([_leaf_log10(g[0]["params"]) for _, g in refs])
        # one entry per item, a Dense as {"w": kernel, "b": bias}
        want = (
            {"w": leaves["layers_0"]["kernel"], "b": leaves["layers_0"]["bias"]},
            {},
            {"w": leaves["layers_2"]["kernel"], "b": leaves["layers_2"]["bias"]},
        )
        _assert_close(res.param_log10_norm, want)
        np.testing.assert_allclose(
            res.log10_norm, [_log10_norm(g[0]) for _, g in refs], rtol=1e-9
        )
        np.testing.assert_allclose(
            res.input_log10_norm, [_log10_norm(g[1]) for _, g in refs], rtol=1e-9
        )


@pytest.mark.slow
def test_flax_module_matches_a_loop_of_jax_grad(getkey):
    model = _MLP()
    with jax.enable_x64(True), default_promotion():
        xs, t = _data(getkey)
        variables = _f64(model.init(getkey(), xs))
        res = _run(model, variables, xs, _loss_fn(t))

        def loss(v, x, b):
            return _loss_fn(t[b])(model.apply(v[0], x))

        _check_against_loop(res, loss, (variables,), xs)


def test_function_net_norms_are_shaped_like_its_params(getkey):
    def fn(p, x):
        return jnp.tanh(x @ p["w"] + p["b"]) * p["a"]  # broadcasts: any batch shape

    with jax.enable_x64(True), default_promotion():
        xs, t = _data(getkey)
        params = {
            "w": jax.random.normal(getkey(), (N_IN, N_OUT), jnp.float64),
            "b": jax.random.normal(getkey(), (N_OUT,), jnp.float64),
            "a": jax.random.normal(getkey(), (N_OUT,), jnp.float64),
        }
        res = _run(fn, params, xs, _loss_fn(t))
        assert set(res.param_log10_norm) == {"w", "b", "a"}

        def loss(p, x, b):
            return _loss_fn(t[b])(fn(p, x))

        _check_against_loop(res, loss, params, xs)


def _batch_norm_fn(p, xs):
    """Hand-written batch norm in train mode (over the batch), then dense + tanh."""
    m = jnp.mean(xs, axis=0, keepdims=True)
    v = jnp.mean(jnp.square(xs - m), axis=0, keepdims=True)
    return jnp.tanh(((xs - m) / jnp.sqrt(v + 1e-3)) @ p["w"] + p["b"][None])


class _BN(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = fnn.BatchNorm(use_running_average=False)(x)
        return jnp.tanh(fnn.Dense(N_OUT)(x))


def _coupled_models(getkey):
    """(net, params, apply(params, xs) -> ys in train mode, train) per model."""
    net = nn.serial(
        nn.dense(6), nn.batch_norm(), nn.elementwise("tanh"), nn.dense(N_OUT)
    )
    _, p_net = net.init(getkey(), (N_IN,))
    p_fn = {
        "w": jax.random.normal(getkey(), (N_IN, N_OUT)),
        "b": jax.random.normal(getkey(), (N_OUT,)),
    }
    bn = _BN()
    v_bn = bn.init(getkey(), jax.random.normal(getkey(), (B, N_IN)))

    def flax_fn(v, xs):
        return bn.apply(v, xs, mutable=["batch_stats"])[0]

    return [
        (net, p_net, lambda p, xs: net.apply(p, xs, train=True), True),
        (_batch_norm_fn, p_fn, _batch_norm_fn, False),
        (flax_fn, v_bn, flax_fn, False),
    ]


@pytest.mark.parametrize("which", [0, pytest.param(1, marks=pytest.mark.slow), 2])
def test_coupled_batch_norm_matches_a_loop_of_jax_grad(which, getkey):
    net, params, apply, train = _coupled_models(getkey)[which]
    with jax.enable_x64(True), default_promotion():
        params = _f64(params)
        xs, t = _data(getkey)
        res = _run(net, params, xs, _loss_fn(t), coupled=True, train=train)
        refs = _loop(lambda p, xs, b: _loss_fn(t)(apply(p, xs))[b], params, xs)
        np.testing.assert_allclose(res.loss, [float(v) for v, _ in refs], rtol=1e-12)
        np.testing.assert_allclose(
            res.log10_norm, [_log10_norm(g[0]) for _, g in refs], rtol=1e-9
        )
        np.testing.assert_allclose(
            res.input_log10_norm, [_log10_norm(g[1]) for _, g in refs], rtol=1e-9
        )
        # a function net's norms are shaped like its own params
        leaves = _stack([_leaf_log10(g[0]) for _, g in refs])
        _assert_close_or_roundoff(res.param_log10_norm, leaves, res.log10_norm)
        if which == 0:  # the running statistics get no gradient: exactly zero, -inf
            assert np.all(np.asarray(res.param_log10_norm[1]["mean"]) == -np.inf)


def test_nan_input_is_flagged_at_its_example(getkey):
    def net(p, x):
        return jnp.tanh(x @ p["w"]) @ p["v"]

    params = {
        "w": jax.random.normal(getkey(), (N_IN, 6)),
        "v": jax.random.normal(getkey(), (6, N_OUT)),
    }
    xs = jax.random.normal(getkey(), (B, N_IN)).at[3, 1].set(jnp.nan)
    t = jax.random.normal(getkey(), (B, N_OUT))
    res, res_coupled = _run_both(net, params, xs, _loss_fn(t))
    assert int(res.nonfinite.forward) == 3 and int(res.nonfinite.backward) == -1
    ok = np.arange(B) != 3
    for v in (res.log10_norm, res.input_log10_norm, res.loss):
        assert np.isnan(v[3]) and np.all(np.isfinite(np.asarray(v)[ok]))
    for leaf in jax.tree.leaves(res.param_log10_norm):
        assert np.isnan(leaf[3]) and np.all(np.isfinite(np.asarray(leaf)[ok]))
    # coupled: every gradient is computed from the whole batch, so all are NaN
    res = res_coupled
    assert int(res.nonfinite.forward) == 3 and int(res.nonfinite.backward) == -1
    assert np.all(np.isnan(res.log10_norm)) and np.all(np.isnan(res.input_log10_norm))


def test_nan_gradient_with_finite_forward_is_flagged_backward(getkey):
    """||x_b|| has an infinite derivative at x_b = 0: the forward value 0 is finite, the
    gradient NaN (inf * 0) for that example only."""

    def fn(p, x):
        return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1))[:, None] * p[None]

    p = jax.random.normal(getkey(), (N_OUT,))
    xs = jax.random.normal(getkey(), (B, N_IN)).at[2].set(0.0)
    t = jax.random.normal(getkey(), (B, N_OUT))
    res = _run(fn, p, xs, _loss_fn(t))
    assert int(res.nonfinite.forward) == -1 and int(res.nonfinite.backward) == 2
    assert np.isnan(res.input_log10_norm[2]) and np.isfinite(res.loss[2])
    assert np.all(np.isfinite(np.delete(np.asarray(res.input_log10_norm), 2)))


def test_float32_gradients_below_the_float32_range_are_measured(getkey):
    """A loss scaled by 1e-30 through a layer that shrinks by 1e-12: dL_b/dx_b is about
    1e-42, below float32's normal range (plain float32 autodiff flushes or loses it);
    the rescaled cotangent gives the float64 value."""
    w = jax.random.normal(getkey(), (N_IN, N_OUT)) * 1e-12
    xs = jax.random.normal(getkey(), (B, N_IN))
    t = jax.random.normal(getkey(), (B, N_OUT))

    def fn(p, x):
        return jnp.tanh(x @ p)

    def loss_fn(ys):
        return 1e-30 * jnp.sum(jnp.square(ys - t), axis=-1)

    res = _run(fn, w, xs, loss_fn)
    with jax.enable_x64(True):
        w64, xs64, t64 = _f64((w, xs, t))
        ref = [
            _log10_norm(
                jax.grad(
                    lambda x, b=b: 1e-30 * jnp.sum(jnp.square(fn(w64, x) - t64[b]))
                )(xs64[b])
            )
            for b in range(B)
        ]
    assert max(ref) < -38  # the reference lies below float32's normal range
    np.testing.assert_allclose(res.input_log10_norm, ref, atol=1e-4)


@pytest.mark.slow
def test_dropout_keys_are_split_per_example(getkey):
    net = nn.mlp(2, 6, out_dim=N_OUT, drop_prob=0.5)
    _, params = net.init(getkey(), (N_IN,))
    key = getkey()
    with jax.enable_x64(True):
        params = _f64(params)
        xs, t = _data(getkey)
        res = _run(net, params, xs, _loss_fn(t), train=True, key=key)
        keys = jax.random.split(key, B)

        def loss(p, x, b):
            y = net.apply(p, x[None], train=True, key=keys[b])[0]
            return _loss_fn(t[b])(y)

        _check_against_loop(res, loss, params, xs)


@pytest.mark.slow
def test_jit_matches_eager_and_traces_once(getkey):
    def net(p, x):
        return jnp.tanh(x @ p)

    params = jax.random.normal(getkey(), (N_IN, N_OUT))
    xs = jax.random.normal(getkey(), (B, N_IN))
    t = jax.random.normal(getkey(), (B, N_OUT))
    traces = []

    def run(p, xs, coupled):
        traces.append(1)
        return per_example_grad_norms(net, p, xs, _loss_fn(t), coupled=coupled)

    for coupled in (False, True):
        traces.clear()
        f = jax.jit(lambda p, xs, c=coupled: run(p, xs, c))
        got = f(params, xs)
        f(params, xs + 1.0)
        assert len(traces) == 1
        want = per_example_grad_norms(net, params, xs, _loss_fn(t), coupled=coupled)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got, want
        )
        # eager calls warn, naming the example (under jit the record is the report)
        with pytest.warns(NonFiniteWarning, match="forward pass.*at example 3"):
            per_example_grad_norms(
                net, params, xs.at[3, 1].set(jnp.nan), _loss_fn(t), coupled=coupled
            )


def _bad_cases():
    t = jnp.linspace(-1.0, 1.0, B * N_OUT).reshape(B, N_OUT)
    good = _loss_fn(t)
    return [
        (dict(xs=[[0.1, 0.2, 0.3]]), "`xs` must be a floating-point array"),
        (dict(xs=jnp.arange(6).reshape(2, 3)), "`xs` must be a real floating-point"),
        (dict(xs=jnp.zeros((0, N_IN))), "`xs` must be an array with at least one"),
        (dict(xs=jnp.linspace(0.1, 1.0, N_IN)), r"`xs` must be a batch.*rank 2"),
        (dict(coupled="yes"), "`coupled` must be True or False"),
        (dict(train=1), "`train` must be True or False"),
        (dict(key=0), "`key` must be a JAX PRNG key or None"),
        (dict(loss_fn=3), "`loss_fn` must be a function"),
        (dict(loss_fn=lambda ys: jnp.sum(ys)), r"`loss_fn` must return one loss.*scal"),
        (
            dict(loss_fn=lambda ys: ys[:, :1]),
            r"`loss_fn` must return one loss.*\(5, 1\)",
        ),
        (dict(loss_fn=lambda ys: ys[:, 0] > 0), "`loss_fn` must return real"),
        (dict(loss_fn=good, net_width=7), r"`params\[0\]\[.*must have shape"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_raises_naming_the_argument(case, getkey):
    kw, match = _bad_cases()[case]
    net = nn.mlp(2, 5, out_dim=N_OUT)
    _, params = net.init(getkey(), (N_IN,))
    if kw.pop("net_width", None):
        _, params = nn.mlp(2, 7, out_dim=N_OUT).init(getkey(), (N_IN,))
    args = dict(
        xs=jax.random.normal(getkey(), (B, N_IN)),
        loss_fn=_loss_fn(jax.random.normal(getkey(), (B, N_OUT))),
    )
    args.update(kw)
    xs, loss_fn = args.pop("xs"), args.pop("loss_fn")
    with pytest.raises(ValueError, match=match):
        per_example_grad_norms(net, params, xs, loss_fn, **args)


def test_model_coupling_refuses_the_uncoupled_route(getkey):
    net = nn.mlp(2, 5, out_dim=N_OUT, norm="batch")
    _, params = net.init(getkey(), (N_IN,))
    xs = jax.random.normal(getkey(), (B, N_IN))
    loss = _loss_fn(jax.random.normal(getkey(), (B, N_OUT)))
    with pytest.raises(ValueError, match="`coupled` must be True.*batch norm"):
        per_example_grad_norms(net, params, xs, loss, train=True)

    def pooled(p, x):  # mixes the batch: no batch axis in the output
        return jnp.mean(x @ p, axis=0)

    w = jax.random.normal(getkey(), (N_IN, N_OUT))
    with pytest.raises(ValueError, match="`coupled` must be True.*no batch axis"):
        per_example_grad_norms(pooled, w, xs, lambda y: y)


# --- spectra and gradient norms of a bare function net ---------------------------------


def _fn(p, x):
    return jnp.tanh(p["w2"] @ jnp.tanh(p["w1"] @ x + p["b"]))


def _fn_params(getkey, n=5, m=4):
    return {
        "w1": jax.random.normal(getkey(), (m, n), jnp.float64),
        "b": jax.random.normal(getkey(), (m,), jnp.float64),
        "w2": jax.random.normal(getkey(), (3, m), jnp.float64),
    }


def test_function_net_spectrum_is_the_svd_of_its_jacobian(getkey):
    with jax.enable_x64(True):
        params = _fn_params(getkey)
        x = jax.random.normal(getkey(), (5,), jnp.float64)
        spec = jax.jit(lambda p, x: jgrad.analyze.input_output_spectrum(_fn, p, x))(
            params, x
        )
        jac = jax.jacrev(lambda v: _fn(params, v))(x)
        ref = np.log(np.linalg.svd(np.asarray(jac), compute_uv=False))
        np.testing.assert_allclose(spec.log_sv, ref, rtol=1e-9)


def test_batch_coupled_function_spectrum_is_the_batch_jacobian(getkey):
    """Batch norm in train mode couples the examples: passing the whole batch xs (B, n)
    as x gives the spectrum of d ys / d xs, a (B*m, B*n) matrix. Batch norm removes the
    mean of each feature, so its rank is B*n - n (the scale of each feature it removes
    only up to its eps: small singular values, but not round-off)."""
    n, m = 3, 4
    with jax.enable_x64(True):
        params = {
            "w": jax.random.normal(getkey(), (n, m), jnp.float64),
            "b": jax.random.normal(getkey(), (m,), jnp.float64),
        }
        xs = jax.random.normal(getkey(), (B, n), jnp.float64)
        spec = jax.jit(
            lambda p, x: jgrad.analyze.input_output_spectrum(_batch_norm_fn, p, x)
        )(params, xs)
        jac = jax.jacrev(lambda v: _batch_norm_fn(params, v))(xs)
        ref = np.log(np.linalg.svd(np.asarray(jac).reshape(B * m, B * n), False, False))
        rank = B * n - n
        assert spec.log_sv.shape == (B * n,)
        np.testing.assert_allclose(spec.log_sv[:rank], ref[:rank], rtol=1e-9)
        # the rest are round-off: below the top by 10^10 or more
        assert np.all(np.asarray(spec.log_sv[rank:]) < ref[0] - np.log(1e10))
        assert np.all(ref[rank:] < ref[0] - np.log(1e10))


def test_layer_grad_norms_of_a_function_net(getkey):
    with jax.enable_x64(True):
        params = _fn_params(getkey)
        xs = jax.random.normal(getkey(), (B, 5), jnp.float64)
        t = jax.random.normal(getkey(), (B, 3), jnp.float64)

        def loss(ys):
            return jnp.sum(jnp.sin(ys - t))

        apply = jax.vmap(_fn, in_axes=(None, 0))
        flow = jax.jit(lambda p, x: jgrad.analyze.layer_grad_norms(apply, p, x, loss))(
            params, xs
        )
        g_p, g_x = jax.grad(lambda p, x: loss(apply(p, x)), argnums=(0, 1))(params, xs)
        g_y = jax.grad(loss)(apply(params, xs))
        np.testing.assert_allclose(
            flow.log10_norm, [_log10_norm(g_x), _log10_norm(g_y)], rtol=1e-9
        )
        _assert_close(flow.param_log10_norm, (_leaf_log10(g_p),))
