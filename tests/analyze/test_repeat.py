"""The repeat-layer kernels (``jgrad.analyze._repeat``) against the public analyzers on
the equivalent default-layout network and against float64 references.

Small networks run in float64 (``jax.enable_x64``) and must agree with
``layer_grad_norms``, ``layer_jacobians`` and ``input_output_spectrum`` of the default
layout (``stack_params`` converts the params) to 1e-9; float32 runs are checked against
plain float64 backward passes where the float32 gradient underflows. The slow test runs
depth 10,000 against NumPy float64 loops.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.analyze import _repeat as R

nn = jgrad.nn
an = jgrad.analyze


def _key(seed):
    return jax.random.key(seed, impl="rbg")


def _nets(depth, width, in_dim, seed, dtype, **kw):
    """(default-layout net, its params, stacked net, its params, repeat layer)."""
    flat = nn.mlp(depth, width, **kw)
    stacked = nn.mlp(depth, width, stacked=True, **kw)
    _, params = flat.init(_key(seed), (in_dim,))
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    sp = nn.stack_params(stacked, params)
    i = next(i for i, lay in enumerate(stacked.layers) if lay.info.kind == "repeat")
    return flat, params, stacked, sp, i


def _before(stacked, sp, i, x):
    """The repeat layer's input: the layers before it applied to x."""
    for lay, p in zip(stacked.layers[:i], sp[:i], strict=True):
        x = lay.apply(p, x)
    return x


@pytest.mark.slow
def test_trajectory_and_grad_norms_match_layer_grad_norms_float64(rng):
    with jax.enable_x64(True):
        flat, params, stacked, sp, i = _nets(6, 8, 5, 0, jnp.float64, bias_var=0.2)
        block = stacked.layers[i].info.block
        x = jnp.asarray(rng.normal(size=5))
        h1 = _before(stacked, sp, i, x)
        traj = jax.jit(lambda p, v: R.forward_trajectory(block, p, v))(sp[i], h1)
        _, hs = flat.apply(params, x, return_intermediates=True)
        np.testing.assert_allclose(traj.hs, jnp.stack(hs[3::2]), rtol=1e-12)
        assert bool(traj.finite.all())

        def loss(y):
            return jnp.sum(jnp.sin(3.0 * y))

        flow = an.layer_grad_norms(flat, params, x, loss)
        g = jax.grad(loss)(traj.hs[-1])
        got = jax.jit(lambda p, v, c: R.grad_norms(block, p, v, c))(sp[i], h1, g)
        # layer_grad_norms: index 0 is x, 2k the output of block k (dense, tanh pairs)
        np.testing.assert_allclose(got.log10_norm, flow.log10_norm[2:-1:2], rtol=1e-9)
        np.testing.assert_allclose(got.raw_norm, flow.raw_norm[2:-1:2], rtol=1e-9)
        for k in range(5):
            for name in ("w", "b"):
                np.testing.assert_allclose(
                    got.param_log10_norm[0][name][k],
                    flow.param_log10_norm[2 + 2 * k][name],
                    rtol=1e-9,
                )
        # the cotangent at x is dL/dh_1 itself, rescaled
        want = jax.grad(lambda h: loss(stacked.layers[i].apply(sp[i], h)))(h1)
        np.testing.assert_allclose(
            got.cotangent * 10 ** got.log10_norm[0], want, rtol=1e-9
        )
        np.testing.assert_allclose(got.raw_cotangent, want, rtol=1e-9)


def test_grad_norms_float32_underflow_against_float64(rng):
    """Sigmoid, standard-uniform weights: the float32 gradient underflows to zero, the
    rescaled log norms still match a plain float64 backward pass."""
    kw = {"activation": "sigmoid", "init": "standard_uniform"}
    flat, params, stacked, sp, i = _nets(80, 16, 16, 1, jnp.float32, **kw)
    block = stacked.layers[i].info.block
    x = jnp.asarray(rng.normal(size=16), jnp.float32)
    h1 = _before(stacked, sp, i, x)
    g = jnp.asarray(rng.normal(size=16), jnp.float32)
    got = jax.jit(lambda p, v, c: R.grad_norms(block, p, v, c))(sp[i], h1, g)
    with jax.enable_x64(True):
        sp64 = jax.tree.map(lambda a: np.asarray(a, np.float64), sp[i])
        hs = [np.asarray(h1, np.float64)]
        for k in range(79):
            a = hs[-1] @ sp64[0]["w"][k] + sp64[0]["b"][k]
            hs.append(1 / (1 + np.exp(-a)))
        want, c = [], np.asarray(g, np.float64)
        for k in reversed(range(79)):
            s = 1 / (1 + np.exp(-(hs[k] @ sp64[0]["w"][k] + sp64[0]["b"][k])))
            c = sp64[0]["w"][k] @ (s * (1 - s) * c)
            want.append(np.log10(np.linalg.norm(c)))
        want = np.array(want[::-1])
    assert want[0] < -50  # below float32's smallest number: plain backprop gives 0
    assert bool(got.raw_zero[0]) and float(got.raw_norm[0]) == 0.0
    np.testing.assert_allclose(got.log10_norm, want, rtol=1e-4)


def test_grad_norms_zero_and_nonfinite():
    """A dead ReLU block (block 2's units all off) gives -inf (an exact zero) below it;
    a NaN input gives NaN, never -inf."""
    block = nn.serial(nn.dense(4, bias_var=0.0), nn.elementwise("relu"))
    net = nn.repeat(block, 3)
    _, params = net.init(_key(2), (4,))
    params = (
        {"w": params[0]["w"], "b": params[0]["b"].at[1].set(-100.0).at[2].set(1.0)},
        params[1],
    )
    x = jnp.linspace(-1.0, 1.0, 4)
    g = jnp.linspace(0.5, 2.0, 4)
    got = R.grad_norms(block, params, x, g)
    assert np.isneginf(got.log10_norm[:2]).all() and np.isfinite(got.log10_norm[2])
    assert not np.isnan(np.asarray(got.log10_norm)).any()
    bad = R.grad_norms(block, params, x.at[0].set(jnp.nan), g)
    assert np.isnan(np.asarray(bad.log10_norm)).all()
    assert np.isnan(np.asarray(bad.param_log10_norm[0]["w"])).all()
    traj = R.forward_trajectory(block, params, x.at[0].set(jnp.nan))
    assert not bool(traj.finite[0])
    rows = R.pull_rows(block, params, x.at[0].set(jnp.nan), jnp.eye(4))
    assert np.isnan(np.asarray(rows.log_scale))


@pytest.mark.parametrize("kw", [{"bias_var": 0.1}, {"residual": True}])
def test_block_jacobians_match_layer_jacobians_float64(kw, rng):
    with jax.enable_x64(True):
        flat, params, stacked, sp, i = _nets(6, 8, 8, 3, jnp.float64, **kw)
        block = stacked.layers[i].info.block
        x = jnp.asarray(rng.normal(size=8))
        h1 = _before(stacked, sp, i, x)
        got = jax.jit(lambda p, v: R.block_jacobians(block, p, v))(sp[i], h1)
        want = jnp.stack(an.layer_jacobians(flat, params, x).mats[1:])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.slow
def test_block_jacobians_autodiff_path_float64(rng):
    """A layer-norm block has no closed form: the autodiff path against jax.jacrev."""
    with jax.enable_x64(True):
        block = nn.serial(nn.dense(6), nn.layer_norm(), nn.elementwise("gelu"))
        net = nn.repeat(block, 4)
        _, params = net.init(_key(4), (6,))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        x = jnp.asarray(rng.normal(size=6))
        got = R.block_jacobians(block, params, x)
        h, want = x, []
        for k in range(4):
            p = jax.tree.map(lambda a, k=k: a[k], params)
            want.append(jax.jacrev(lambda v, p=p: block.apply(p, v))(h))
            h = block.apply(p, h)
        np.testing.assert_allclose(got, jnp.stack(want), rtol=1e-12, atol=1e-14)


def test_pull_rows_spectrum_matches_input_output_spectrum_float64(rng):
    with jax.enable_x64(True):
        flat, params, stacked, sp, i = _nets(6, 8, 5, 5, jnp.float64, weight_var=2.0)
        block = stacked.layers[i].info.block
        x = jnp.asarray(rng.normal(size=5))
        h1 = _before(stacked, sp, i, x)
        prod = jax.jit(lambda p, v: R.pull_rows(block, p, v, jnp.eye(8)))(sp[i], h1)
        j1 = jax.jacrev(lambda v: _before(stacked, sp, i, v))(x)
        got = jnp.log(jnp.linalg.svd(prod.matrix @ j1, compute_uv=False))
        got = got + prod.log_scale
        want = an.input_output_spectrum(flat, params, x, compress=False)
        want = (
            want[0] if isinstance(want, tuple) else want
        )  # values, or (values, record)
        np.testing.assert_allclose(got, want, rtol=1e-9)
        # and the product itself, against jacrev of the whole network in float64
        full = jax.jacrev(lambda v: flat.apply(params, v))(x)
        np.testing.assert_allclose(
            jnp.exp(prod.log_scale) * prod.matrix @ j1, full, rtol=1e-9, atol=1e-14
        )


def test_kernels_with_dropout_key_match_apply(rng):
    block = nn.serial(nn.dense(8), nn.elementwise("tanh"), nn.dropout(0.25))
    net = nn.repeat(block, 5)
    _, params = net.init(_key(6), (8,))
    x = jnp.asarray(rng.normal(size=8), jnp.float32)
    key = _key(7)
    _, hs = net.apply(params, x, train=True, key=key, return_intermediates=True)
    traj = R.forward_trajectory(block, params, x, train=True, key=key)
    np.testing.assert_allclose(traj.hs, hs, rtol=1e-6)
    # the rescaled pull of the identity is the jacobian of the keyed apply
    prod = R.pull_rows(block, params, x, jnp.eye(8), train=True, key=key)
    full = jax.jacrev(lambda v: net.apply(params, v, train=True, key=key))(x)
    np.testing.assert_allclose(
        jnp.exp(prod.log_scale) * prod.matrix, full, rtol=1e-4, atol=1e-6
    )


@pytest.mark.slow
def test_depth_10000_exact_against_float64_loops():
    """Depth 10,000, width 64, tanh at sigma_w^2 = 1, sigma_b^2 = 0 (stacked), float64:
    every kernel against NumPy loops that share no code with it. Here the gradient
    falls by over 30 orders of magnitude but not below float64's range, so the plain
    float64 backward pass (no rescaling) is an exact reference; the input-output
    product is a NumPy product rescaled every 50 layers. Its singular values spread by
    about e^150 (Lyapunov gaps of order 1/width per layer), so only the top one is
    above sigma_max * eps: the test compares it and the normalized product itself."""
    depth, width = 10_000, 64
    n = depth - 1
    with jax.enable_x64(True):
        net = nn.mlp(depth, width, stacked=True, weight_var=1.0, bias_var=0.0)
        _, params = net.init(_key(8), (width,))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        rng = np.random.default_rng(9)
        x = jnp.asarray(rng.normal(size=width))
        g = jnp.asarray(rng.normal(size=width))
        block = net.layers[2].info.block
        h1 = jnp.tanh(x @ params[0]["w"] + params[0]["b"])
        kern = jax.jit(
            lambda p, v, c: (
                R.forward_trajectory(block, p, v),
                R.grad_norms(block, p, v, c),
                R.block_jacobians(block, p, v),
                R.pull_rows(block, p, v, jnp.eye(width)),
            )
        )
        traj, grads, jacs, prod = kern(params[2], h1, g)
        w = np.asarray(params[2][0]["w"])
        b = np.asarray(params[2][0]["b"])
        hs = [np.asarray(h1)]
        for k in range(n):
            hs.append(np.tanh(hs[-1] @ w[k] + b[k]))
        np.testing.assert_allclose(traj.hs, np.stack(hs[1:]), rtol=1e-9, atol=1e-12)
        d = 1 - np.stack(hs[1:]) ** 2  # phi'(a_k)
        # J_k = diag(phi'(a_k)) w_k^T
        for k in (0, 1, n // 2, n - 1):
            np.testing.assert_allclose(jacs[k], d[k][:, None] * w[k].T, rtol=1e-9)
        c, want = np.asarray(g), np.empty(n)
        for k in reversed(range(n)):
            c = w[k] @ (d[k] * c)
            want[k] = np.log10(np.linalg.norm(c))
        assert want.min() > -300  # no float64 underflow: the reference is exact
        assert want[0] < -30  # and it vanished by 30 orders of magnitude
        np.testing.assert_allclose(grads.log10_norm, want, rtol=1e-9, atol=1e-9)
        p, s = np.eye(width), 0.0
        for k in reversed(range(n)):
            p = (p * d[k][None, :]) @ w[k].T
            if k % 50 == 0:
                nrm = np.linalg.norm(p)
                p, s = p / nrm, s + np.log(nrm)
        want_sv = np.log(np.linalg.svd(p, compute_uv=False)) + s
        got_sv = np.log(np.linalg.svd(np.asarray(prod.matrix), compute_uv=False))
        got_sv = got_sv + float(prod.log_scale)
        np.testing.assert_allclose(got_sv[0], want_sv[0], rtol=1e-9)
        nrm = np.linalg.norm(p)
        np.testing.assert_allclose(prod.log_scale, s + np.log(nrm), rtol=1e-9)
        np.testing.assert_allclose(prod.matrix, p / nrm, atol=1e-9)
    # float32 (the same weights rounded) over 10,000 blocks: the rescaled norms stay
    # within float32 rounding of the float64 reference
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params[2])
    grads32 = jax.jit(lambda p, v, c: R.grad_norms(block, p, v, c))(
        p32, h1.astype(jnp.float32), g.astype(jnp.float32)
    )
    np.testing.assert_allclose(grads32.log10_norm, want, atol=0.05)


def test_public_spectrum_of_stacked_net_float64(rng):
    """The public input-output spectrum of the stacked layout is the default layout's
    (every public analyzer: test_repeat_public.py)."""
    with jax.enable_x64(True):
        flat, params, stacked, sp, _ = _nets(5, 6, 4, 10, jnp.float64, out_dim=3)
        x = jnp.asarray(rng.normal(size=4))
        got = an.input_output_spectrum(stacked, sp, x, compress=False)
        want = an.input_output_spectrum(flat, params, x, compress=False)
        got, want = (v[0] if isinstance(v, tuple) else v for v in (got, want))
        np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.slow
def test_bench_depth_quick(tmp_path, monkeypatch, capsys):
    """The benchmark's command runs (timings are not asserted)."""
    import json
    import pathlib
    import runpy
    import sys

    script = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bench_depth.py"
    out = tmp_path / "bench_depth.json"
    monkeypatch.setattr(sys, "argv", ["bench_depth.py", "--quick", "--out", str(out)])
    runpy.run_path(str(script), run_name="__main__")
    data = json.loads(out.read_text())
    assert data["command"].startswith("python scripts/bench_depth.py --quick")
    stages = {(r["layout"], r["stage"]) for r in data["rows"]}
    assert ("stacked", "d: pull_rows + svd") in stages
    assert ("flat", "input_output_spectrum") in stages
    assert all(r["run_seconds"] > 0 for r in data["rows"])
    assert "load average" in capsys.readouterr().out
