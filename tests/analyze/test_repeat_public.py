"""The public analyzers on stacked networks (``mlp(..., stacked=True)``, a repeat layer).

Each analyzer on a stacked mlp must give, per repeated block, what it gives on the
default layout (``mlp(...)``, params converted by ``nn.unstack_params``) at the same
block outputs, in float64 to 1e-9; a NaN planted in block j must be reported at block
j; dropout keys follow ``nn.repeat``'s split (checked against autodiff of the keyed
apply); and the traced program must not grow with depth (the count of jaxpr equations,
sub-jaxprs included, is the same at depth 10 and 1000). The slow test runs depth 10,000
against NumPy float64 loops.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jcore

from jgrad import analyze as an
from jgrad import nn

OPTIONS = {
    "tanh": {"activation": "tanh", "bias_var": 0.1},
    "relu": {"activation": "relu", "weight_var": 2.0, "bias_var": 0.05},
    "residual": {"activation": "tanh", "residual": True, "bias_var": 0.1},
}


def _key(seed):
    return jax.random.key(seed, impl="rbg")


def _pair(depth, width, in_dim, seed, **kw):
    """(default net, its float64 params, stacked net, its params) with equal weights."""
    flat = nn.mlp(depth, width, **kw)
    stacked = nn.mlp(depth, width, stacked=True, **kw)
    _, sp = stacked.init(_key(seed), (in_dim,))
    sp = jax.tree.map(lambda a: a.astype(jnp.float64), sp)
    return flat, nn.unstack_params(stacked, sp), stacked, sp


def _entry_index(stacked):
    """For layer_grad_norms: the default layout's entry index of each stacked entry
    (entry 0 the input; a repeat layer's n entries the outputs of its n blocks)."""
    out, i = [0], 0
    for lay in stacked.layers:
        if lay.info.kind == "repeat":
            block = lay.info.block
            m = len(block.info.layers) if block.info.kind == "serial" else 1
            for _ in range(lay.info.repeats):
                i += m
                out.append(i)
        else:
            i += 1
            out.append(i)
    return np.asarray(out)


def _loss(y):
    return jnp.sum(jnp.sin(3.0 * y) * jnp.linspace(0.5, 1.5, y.size).reshape(y.shape))


@pytest.mark.parametrize("name", list(OPTIONS))
def test_layer_grad_norms_per_block_equal_default_layout_float64(name, rng):
    with jax.enable_x64(True):
        flat, params, stacked, sp = _pair(5, 6, 5, 1, out_dim=3, **OPTIONS[name])
        x = jnp.asarray(rng.normal(size=(4, 5)))
        want = jax.jit(lambda p, v: an.layer_grad_norms(flat, p, v, _loss))(params, x)
        got = jax.jit(lambda p, v: an.layer_grad_norms(stacked, p, v, _loss))(sp, x)
        idx = _entry_index(stacked)
        assert (
            got.log10_norm.shape == (idx.size,) and idx[-1] == want.log10_norm.size - 1
        )
        for field in ("log10_norm", "raw_norm", "log10_act_norm"):
            np.testing.assert_allclose(
                getattr(got, field), getattr(want, field)[idx], rtol=1e-9, err_msg=field
            )
        np.testing.assert_array_equal(got.underflow, want.underflow[idx])
        np.testing.assert_array_equal(got.forward_finite, want.forward_finite[idx])
        np.testing.assert_allclose(got.loss, want.loss, rtol=1e-12)
        # the repeat layer's param logs: stacked leaves, (n,) each, block order
        want_p = nn.stack_params(stacked, want.param_log10_norm)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9),
            got.param_log10_norm,
            want_p,
        )
        assert int(got.nonfinite.forward) == -1 == int(got.nonfinite.backward)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_layer_jacobians_and_products_equal_default_layout_float64(name, rng):
    with jax.enable_x64(True):
        flat, params, stacked, sp = _pair(6, 6, 6, 2, **OPTIONS[name])
        x = jnp.asarray(rng.normal(size=6))
        want = an.layer_jacobians(flat, params, x)
        got = jax.jit(lambda p, v: an.layer_jacobians(stacked, p, v))(sp, x)
        n = stacked.layers[-1].info.repeats
        assert got.mats[-1].shape == (n, 6, 6) and got.hs[-1].shape == (n, 6)
        np.testing.assert_allclose(got.stacked(), want.stacked(), rtol=1e-12)
        np.testing.assert_allclose(
            jnp.concatenate([got.hs[0][None]] + [h.reshape(-1, 6) for h in got.hs[1:]]),
            jnp.stack(want.hs),
            rtol=1e-12,
        )
        for kw in ({}, {"start": 1, "stop": 5}, {"start": 3, "stop": 4}):  # L = 6
            for method in ("rescaled", "qr"):
                np.testing.assert_allclose(
                    an.log_singular_values(got, method, **kw),
                    an.log_singular_values(want, method, **kw),
                    rtol=1e-9,
                    atol=1e-12,
                )
        np.testing.assert_allclose(
            an.log_abs_det(got, start=2), an.log_abs_det(want, start=2), rtol=1e-9
        )
        pg, pw = an.jacobian_product(got, 2, 6), an.jacobian_product(want, 2, 6)
        np.testing.assert_allclose(pg.matrix, pw.matrix, rtol=1e-9, atol=1e-14)
        # every prefix and suffix product: the repeat layer's stacked, block order
        for fn in (an.input_products, an.output_products):
            g, w = fn(got), fn(want)
            assert g[-1].matrix.shape == (n, 6, 6)
            np.testing.assert_allclose(g[0].matrix, w[0].matrix, rtol=1e-9, atol=1e-14)
            np.testing.assert_allclose(
                g[-1].log_scale, jnp.stack([v.log_scale for v in w[1:]]), rtol=1e-9
            )
            np.testing.assert_allclose(
                g[-1].matrix,
                jnp.stack([v.matrix for v in w[1:]]),
                rtol=1e-9,
                atol=1e-14,
            )


SWEEPS = {
    "input_output_spectrum": lambda n, p, x: an.input_output_spectrum(
        n, p, x, compress=False
    ),
    "output_spectra": lambda n, p, x: an.output_spectra(n, p, x, compress=False),
    "output_sweep": lambda n, p, x: an.output_sweep(n, p, x),
    "output_norms": lambda n, p, x: an.output_norms(
        n, p, x, probe_key=_key(5), min_lanczos_steps=2, max_lanczos_steps=4
    ),
    # 4 near products, the 2 nearest single blocks: the repeat layer is split
    "output_norms_matrix_free": lambda n, p, x: an.output_norms(
        n,
        p,
        x,
        probe_key=_key(5),
        method="matrix_free",
        krylov_products=4,
        lanczos_products=2,
    ),
}


def _values(name, result):
    """The float arrays of a sweep's result."""
    if name == "output_sweep":
        return [v for m in result.products for v in (m.matrix, m.log_scale)]
    if name.startswith("output_norms"):
        return [result.log_spectral_norm, result.log_mean_sq, result.mean_sq_rel_err]
    log_sv = result.log_sv
    return list(log_sv) if isinstance(log_sv, tuple) else [log_sv]


def _finite_close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b))
    ok = np.isfinite(b)
    np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "name, act",
    [(n, "tanh") for n in SWEEPS if n != "output_norms"]
    + [
        pytest.param("output_norms", "tanh", marks=pytest.mark.slow),  # ~10 s
        ("input_output_spectrum", "relu"),
    ],
)
def test_sweeps_equal_default_layout_float64(name, act, rng):
    """Depth 12 with a readout: every sweep equals the default layout's, jitted."""
    with jax.enable_x64(True):
        flat, params, stacked, sp = _pair(12, 5, 4, 3, out_dim=3, **OPTIONS[act])
        x = jnp.asarray(rng.normal(size=4))
        fn = SWEEPS[name]
        want = fn(flat, params, x)
        got = jax.jit(lambda p, v: fn(stacked, p, v))(sp, x)
        got_v, want_v = _values(name, got), _values(name, want)
        assert len(got_v) == len(want_v)
        for a, b in zip(got_v, want_v, strict=True):
            _finite_close(a, b)
        assert int(got.nonfinite.forward) == -1 == int(got.nonfinite.backward)


@pytest.mark.slow
def test_rank_compressed_spectrum_equal_default_layout_float64(rng):
    """Depth 60 (enough blocks for the rank-compressed sweep to look at the rank)."""
    with jax.enable_x64(True):
        flat, params, stacked, sp = _pair(60, 6, 6, 4, activation="tanh")
        x = jnp.asarray(rng.normal(size=6))
        got = an.input_output_spectrum(stacked, sp, x).log_sv
        want = an.input_output_spectrum(flat, params, x).log_sv
        # values within e^10 of the top are exact to ~eps * e^10 (below, rounding noise
        # that differs with the order of the operations)
        top = np.asarray(want) > float(want[0]) - 10.0
        assert top.sum() >= 2
        np.testing.assert_allclose(got[top], want[top], rtol=1e-9)


def _nan_in_block(j, rng):
    """(default net, params, stacked net, params, x) with a NaN weight in block j of
    the repeat layer."""
    flat, params, stacked, sp = _pair(7, 5, 5, 6, out_dim=2, activation="tanh")
    w = sp[2][0]["w"]
    sp = (*sp[:2], ({**sp[2][0], "w": w.at[j, 1, 2].set(jnp.nan)}, sp[2][1]), sp[3])
    return flat, nn.unstack_params(stacked, sp), stacked, sp, rng.normal(size=5)


@pytest.mark.parametrize("j", [0, 3])
def test_nan_in_block_j_is_reported_at_block_j(j, rng):
    """A NaN weight in block j (0-based) of the repeat layer: its output, block output
    h_(j+2) (h_1 the first block's, before the repeat layer), is the first non-finite
    one; layer_grad_norms' entry is 3 + j (x, the first dense, its activation, then one
    per block)."""
    with jax.enable_x64(True):
        flat, params, stacked, sp, x = _nan_in_block(j, rng)
        x = jnp.asarray(x)
        flow = jax.jit(lambda p, v: an.layer_grad_norms(stacked, p, v, _loss))(sp, x)
        assert int(flow.nonfinite.forward) == 3 + j
        assert bool(flow.forward_finite[: 3 + j].all())
        assert not bool(flow.forward_finite[3 + j :].any())
        assert np.isnan(np.asarray(flow.log10_norm)).all()  # NaN, never -inf
        assert np.isnan(np.asarray(flow.param_log10_norm[2][0]["w"])).all()
        jac = jax.jit(lambda p, v: an.layer_jacobians(stacked, p, v))(sp, x)
        want = an.layer_jacobians(flat, params, x)
        assert int(jac.nonfinite.forward) == 2 + j == int(want.nonfinite.forward)
        assert int(jac.nonfinite.backward) == int(want.nonfinite.backward)
        assert int(jac.first_nonfinite) == int(want.first_nonfinite)
        # mats[1]: the repeat layer's; J of block j holds the NaN weight, those above
        # are computed at NaN inputs
        assert np.isnan(np.asarray(jac.mats[1][j + 1 :])).all()
        assert np.isnan(np.asarray(jac.mats[1][j])).any()
        assert np.isfinite(np.asarray(jac.mats[1][:j])).all()
        spec = an.input_output_spectrum(stacked, sp, x, compress=False)
        assert int(spec.nonfinite.forward) == 2 + j
        assert np.isnan(np.asarray(spec.log_sv)).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWEEPS))
def test_nan_in_block_j_sweep_records_equal_default_layout(name, rng):
    with jax.enable_x64(True):
        flat, params, stacked, sp, x = _nan_in_block(2, rng)
        fn = SWEEPS[name]
        x = jnp.asarray(x)
        got = jax.jit(lambda p, v: fn(stacked, p, v))(sp, x).nonfinite
        want = fn(flat, params, x).nonfinite
        assert int(got.forward) == 4 == int(want.forward)
        assert int(got.backward) == int(want.backward)


def test_dropout_keys_follow_the_repeat_split(rng):
    """train=True with a key: the analyzers see the masks of the keyed apply (the
    network's key split over its layers, the repeat layer's split over its blocks)."""
    with jax.enable_x64(True):
        net = nn.mlp(5, 6, stacked=True, drop_prob=0.3, activation="tanh")
        _, p = net.init(_key(7), (6,))
        p = jax.tree.map(lambda a: a.astype(jnp.float64), p)
        x = jnp.asarray(rng.normal(size=6))
        key = _key(8)

        def apply(v):
            return net.apply(p, v, train=True, key=key)

        g = jax.grad(lambda v: _loss(apply(v)))(x)
        flow = jax.jit(
            lambda p, v: an.layer_grad_norms(net, p, v, _loss, train=True, key=key)
        )(p, x)
        np.testing.assert_allclose(
            flow.log10_norm[0], np.log10(np.linalg.norm(g)), rtol=1e-9
        )
        full = np.linalg.svd(jax.jacrev(apply)(x), compute_uv=False)
        spec = jax.jit(
            lambda p, v: an.input_output_spectrum(
                net, p, v, train=True, key=key, compress=False
            )
        )(p, x)
        np.testing.assert_allclose(spec.log_sv[0], np.log(full[0]), rtol=1e-9)
        top = jax.jit(
            lambda p, v: an.log_singular_values(
                an.layer_jacobians(net, p, v, train=True, key=key)
            )[0]
        )(p, x)
        np.testing.assert_allclose(top, np.log(full[0]), rtol=1e-9)


def _eqns(jaxpr) -> int:
    """Equations of a jaxpr, those of every sub-jaxpr (scan bodies, branches) included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if isinstance(sub, jcore.ClosedJaxpr):
                    n += _eqns(sub.jaxpr)
                elif isinstance(sub, jcore.Jaxpr):
                    n += _eqns(sub)
    return n


def _program_sizes(depth):
    net = nn.mlp(depth, 8, stacked=True, activation="tanh")
    _, p = net.init(_key(9), (8,))
    x = jnp.linspace(-1.0, 1.0, 8)

    def size(fn):
        return _eqns(jax.make_jaxpr(fn)(p, x).jaxpr)

    return {
        "layer_grad_norms": size(
            lambda p, v: an.layer_grad_norms(net, p, v, _loss).log10_norm
        ),
        "layer_jacobians+log_singular_values": size(
            lambda p, v: an.log_singular_values(an.layer_jacobians(net, p, v))
        ),
        "input_output_spectrum(compress=False)": size(
            lambda p, v: an.input_output_spectrum(net, p, v, compress=False).log_sv
        ),
        "input_output_spectrum": size(
            lambda p, v: an.input_output_spectrum(net, p, v).log_sv
        ),
    }


def test_traced_program_size_flat_in_depth():
    """The same number of jaxpr equations at depth 10 and 1000 (100 and 1000 for the
    rank-compressed input_output_spectrum, which needs 48 blocks to look at the rank;
    below that it runs the plain sweep)."""
    small, mid, big = (_program_sizes(d) for d in (10, 100, 1000))
    for k in small:
        ref = mid if k == "input_output_spectrum" else small
        assert ref[k] == big[k], (k, ref[k], big[k])
    assert small["input_output_spectrum"] != mid["input_output_spectrum"]


def test_stacked_refusals_and_example_rank(rng):
    net = nn.mlp(5, 4, stacked=True)
    _, p = net.init(_key(10), (4,))
    x = jnp.asarray(rng.normal(size=4), jnp.float32)
    for fn in (an.layer_jacobians, an.output_spectra, an.output_sweep):
        with pytest.raises(ValueError, match="`blocks` must be True for a network"):
            fn(net, p, x, blocks=False)
    # a batch to a one-example analyzer: the rank is read through the repeat layer
    first = nn.serial(nn.repeat(nn.serial(nn.dense(4), nn.elementwise("tanh")), 3))
    _, q = first.init(_key(11), (4,))
    for n, params in ((net, p), (first, q)):
        with pytest.raises(ValueError, match="must be ONE example of rank 1"):
            an.layer_jacobians(n, params, jnp.stack([x, -x]))
    # params of another width are refused for the stacked layout too
    _, other = nn.mlp(5, 6, stacked=True).init(_key(12), (4,))
    with pytest.raises(
        ValueError, match=r"`params\[0\]\['b'\]` must have shape \(4,\)"
    ):
        an.layer_grad_norms(net, other, x, _loss)
    # and params of another depth: the repeat layer's leading axis
    _, shallow = nn.mlp(4, 4, stacked=True).init(_key(12), (4,))
    with pytest.raises(
        ValueError, match=r"`params\[2\]\[0\]\['b'\]` must have shape \(4, 4\)"
    ):
        an.input_output_spectrum(net, shallow, x)
    # a repeat layer as the whole network: one entry per block
    rep = first.layers[0]
    flow = jax.eval_shape(lambda: an.layer_grad_norms(rep, q[0], x, _loss))
    assert flow.log10_norm.shape == (4,)


@pytest.mark.slow
def test_depth_10000_public_analyzers_against_float64_loops():
    """Depth 10,000, width 64, tanh at sigma_w^2 = 1, sigma_b^2 = 0 (stacked), float64,
    through the public analyzers, against NumPy loops that share no code with them.
    The gradient falls by over 20 orders of magnitude but stays inside float64's range,
    so the plain NumPy backward pass is exact; the input-output product is a NumPy
    product rescaled every 50 layers. Its singular values spread by about e^150, so only
    the top one is above sigma_max * eps: the test compares that one."""
    depth, width = 10_000, 64
    n = depth - 1
    with jax.enable_x64(True):
        net = nn.mlp(depth, width, stacked=True, weight_var=1.0, bias_var=0.0)
        _, params = net.init(_key(13), (width,))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        rng = np.random.default_rng(14)
        x = jnp.asarray(rng.normal(size=width))
        g = rng.normal(size=width)
        flow = jax.jit(
            lambda p, v: an.layer_grad_norms(net, p, v, lambda y: jnp.dot(y, g))
        )(params, x)
        jac = jax.jit(lambda p, v: an.layer_jacobians(net, p, v))(params, x)
        top_jac = float(an.log_singular_values(jac)[0])
        det = float(an.log_abs_det(jac))
        spec = jax.jit(lambda p, v: an.input_output_spectrum(net, p, v).log_sv)(
            params, x
        )
        w0, b0 = np.asarray(params[0]["w"]), np.asarray(params[0]["b"])
        w = np.asarray(params[2][0]["w"])
        b = np.asarray(params[2][0]["b"])
        hs = [np.tanh(np.asarray(x) @ w0 + b0)]
        for k in range(n):
            hs.append(np.tanh(hs[-1] @ w[k] + b[k]))
        hs = np.stack(hs)
        np.testing.assert_allclose(jac.hs[-1], hs[1:], rtol=1e-9, atol=1e-12)
        d = 1 - hs**2  # phi'(a) of every block, the first included
        c, want = g.copy(), np.empty(n + 1)
        want[n] = np.log10(np.linalg.norm(c))
        for k in reversed(range(n)):
            c = w[k] @ (d[k + 1] * c)
            want[k] = np.log10(np.linalg.norm(c))
        assert want.min() > -300 and want[0] < -20  # exact reference, and it vanished
        # entries 2.. are the first block's output h_1, then the repeat layer's blocks
        np.testing.assert_allclose(flow.log10_norm[2:], want, rtol=1e-9, atol=1e-9)
        # d y / d x: J_1 = diag(d_0) w0^T, then the blocks
        p, s, ld = np.eye(width), 0.0, 0.0
        for k in reversed(range(n)):
            jk = d[k + 1][:, None] * w[k].T
            p = p @ jk
            ld += np.linalg.slogdet(jk)[1]
            if k % 50 == 0:
                nrm = np.linalg.norm(p)
                p, s = p / nrm, s + np.log(nrm)
        j1 = d[0][:, None] * w0.T
        p = p @ j1
        ld += np.linalg.slogdet(j1)[1]
        top = np.log(np.linalg.svd(p, compute_uv=False)[0]) + s
        np.testing.assert_allclose(top_jac, top, rtol=1e-9)
        np.testing.assert_allclose(float(spec[0]), top, rtol=1e-9)
        np.testing.assert_allclose(det, ld, rtol=1e-9)
