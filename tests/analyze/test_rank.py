"""Rank-compressed sweeps (jgrad.analyze._rank, compress=True): the bound on what a
compression drops, the spectra against float64 references and the uncompressed sweep,
the batch-wide bucket under vmap, derivatives, and non-finite products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import analyze, nn
from jgrad.analyze import _rank


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _reference(net, params, x):
    """log singular values of d y / d x by jacrev and NumPy's SVD, in float64."""
    with jax.enable_x64(True):
        jac = jax.jacrev(lambda v: net.apply(_f64(params), v))(
            jnp.asarray(x, jnp.float64)
        )
        return np.log(np.linalg.svd(np.asarray(jac), compute_uv=False))


@pytest.fixture(scope="module")
def chaotic():
    """A deep tanh network far in the chaotic phase: its spectrum spreads fast."""
    net = nn.mlp(64, 24, activation="tanh", weight_var=2.5, bias_var=0.05)
    _, params = net.init(jax.random.key(3), (24,))
    xs = jax.random.normal(jax.random.key(4), (3, 24))
    return net, params, xs


def test_batch_max_is_the_identity_alone_and_the_maximum_under_vmap():
    v = jnp.asarray([3, 9, 4], jnp.int32)
    assert int(_rank.batch_max(v[1])) == 9
    out = jax.vmap(_rank.batch_max)(v)
    np.testing.assert_array_equal(out, [9, 9, 9])
    nested = jax.vmap(jax.vmap(_rank.batch_max))(
        jnp.asarray([[1, 7], [5, 2]], jnp.int32)
    )
    np.testing.assert_array_equal(nested, [[7, 7], [7, 7]])

    # unbatched inside a vmapped function: a switch on it stays a switch
    def f(x):
        k = _rank.batch_max((x > 0).astype(jnp.int32))
        return jax.lax.switch(k, [lambda: x * 2.0, lambda: x * 3.0])

    jaxpr = str(jax.make_jaxpr(jax.vmap(f))(jnp.asarray([-1.0, 2.0])))
    assert "cond[" in jaxpr and "select_n" not in jaxpr
    np.testing.assert_allclose(jax.vmap(f)(jnp.asarray([-1.0, 2.0])), [-3.0, 6.0])


def test_prefilter_reads_the_first_example_of_a_batch(rng):
    eps = float(np.finfo(np.float32).eps)
    # example 0 of rank 3, example 1 of full rank
    low = rng.normal(size=(8, 3)) @ rng.normal(size=(3, 10))
    u = jnp.asarray(np.stack([low, rng.normal(size=(8, 10))]), jnp.float32)
    need, lr = jax.vmap(lambda v: _rank.prefilter(v, eps, 8))(u)
    assert int(need[0]) == int(need[1]) == 3  # unbatched: example 0's, for both
    ref_need, ref_lr = _rank.needed_and_profile(u[0], eps, 8)
    assert int(ref_need) == 3
    np.testing.assert_allclose(lr[1], ref_lr)
    alone, alone_lr = _rank.prefilter(u[1], eps, 8)  # one example: no prefilter
    assert int(alone) == 0 and not np.any(alone_lr)
    np.testing.assert_array_equal(
        jax.vmap(_rank.first)(jnp.arange(3.0)), [0.0, 0.0, 0.0]
    )


def test_buckets_halve_down_to_eight_rows():
    assert _rank.buckets(128) == (128, 64, 32, 16, 8)
    assert _rank.buckets(100) == (100, 50, 25, 12)
    assert _rank.buckets(10) == (10,)


@pytest.mark.parametrize("shape", [(40, 40), (24, 40)])
def test_compression_drops_at_most_its_bound_and_no_fewer_rows_would_do(rng, shape):
    b, n = shape
    # a graded float32 matrix: singular values from 1 down to 1e-12
    u0, _ = np.linalg.qr(rng.normal(size=(b, b)))
    v0, _ = np.linalg.qr(rng.normal(size=(n, n)))
    sv = np.logspace(0, -12, b)
    u = ((u0 * sv) @ v0[:b]).astype(np.float32)
    eps = float(np.finfo(np.float32).eps)
    t, piv = _rank.pivoted_qr(jnp.asarray(u))
    tail2 = np.asarray(_rank.tails(t), np.float64)
    r = int(_rank.rows_needed(jnp.asarray(tail2, jnp.float32), eps, n))
    total2 = float(np.sum(np.square(u, dtype=np.float64)))
    assert 0 < r < b
    assert tail2[r] <= n * eps**2 * total2 * 1.01  # within the stated bound
    assert tail2[r - 1] > n * eps**2 * total2 * 0.99  # and minimal
    # the dropped part is Q[:, r:] T[r:]: its norm is the tail, and the kept rows W
    # carry the singular values of u (Weyl: each within the dropped norm)
    w = np.asarray(_rank.unpermute(t, piv, r), np.float64)
    s_u = np.linalg.svd(u.astype(np.float64), compute_uv=False)
    s_w = np.linalg.svd(w, compute_uv=False)
    assert np.all(np.abs(s_w - s_u[:r]) <= np.sqrt(tail2[r]) + 4 * eps * s_u[0])
    # Eckart-Young: no rank-r matrix is closer to u than the best one
    assert np.sum(s_u[r:] ** 2) <= tail2[r] * 1.01 + 1e-30


def test_a_non_finite_matrix_keeps_every_row():
    eps = float(np.finfo(np.float32).eps)
    tail2 = jnp.asarray([jnp.nan, 1.0, 0.0], jnp.float32)
    assert int(_rank.rows_needed(tail2, eps, 3)) == 3
    assert int(_rank.rows_needed(jnp.zeros(3, jnp.float32), eps, 3)) == 0


def test_compressed_spectrum_equals_float64_and_the_uncompressed_sweep(chaotic):
    net, params, xs = chaotic
    got = jax.jit(jax.vmap(lambda x: analyze.input_output_spectrum(net, params, x)))(xs)
    full = jax.jit(
        jax.vmap(
            lambda x: analyze.input_output_spectrum(net, params, x, compress=False)
        )
    )(xs)
    got, full = got.log_sv, full.log_sv
    got, full = np.asarray(got), np.asarray(full)
    assert got.shape == full.shape == (3, 24)
    dropped = ~np.isfinite(got)
    assert dropped.any(axis=1).all()  # the sweep compressed every example's product
    assert np.all(np.isneginf(got[dropped]))  # dropped values read log 0
    assert np.isfinite(full).all()
    for g, f, x in zip(got, full, xs, strict=True):
        ref = _reference(net, params, x)
        keep = ref >= ref[0] + np.log(1e-3)
        assert keep.sum() >= 2
        np.testing.assert_allclose(g[keep], ref[keep], atol=2e-4)
        np.testing.assert_allclose(g[keep], f[keep], atol=2e-4)
        # further down, float32 resolves less: within 2% of each value down to 1e-5
        more = ref >= ref[0] + np.log(1e-5)
        assert more.sum() >= 4
        np.testing.assert_allclose(g[more], ref[more], atol=2e-2)
        # whatever was dropped was far below the float32 resolution of the top value
        assert np.all(f[~np.isfinite(g)] < f[0] + np.log(1e-4))


@pytest.mark.slow
def test_every_layer_spectrum_compressed_equals_the_uncompressed_ones(chaotic):
    net, params, xs = chaotic
    got = jax.jit(lambda x: analyze.output_spectra(net, params, x))(xs[0]).log_sv
    full = jax.jit(lambda x: analyze.output_spectra(net, params, x, compress=False))(
        xs[0]
    ).log_sv
    assert len(got) == len(full) == 64
    assert not np.isfinite(np.asarray(got[0])).all()  # compressed near the input
    assert np.isfinite(np.asarray(got[-1])).all()  # and not at the output
    for g, f in zip(got, full, strict=True):
        g, f = np.asarray(g), np.asarray(f)
        assert g.shape == f.shape
        keep = f >= f[0] + np.log(1e-3)
        np.testing.assert_allclose(g[keep], f[keep], atol=2e-4)
        assert np.all(np.isneginf(g[~np.isfinite(g)]))


def test_vmap_shares_one_bucket_and_keeps_each_example_exact(chaotic):
    net, params, xs = chaotic
    batched = np.asarray(
        jax.jit(jax.vmap(lambda x: analyze.input_output_spectrum(net, params, x)))(
            xs
        ).log_sv
    )
    counts = np.isfinite(batched).sum(axis=1)
    assert len(set(counts.tolist())) == 1  # one bucket for the batch
    alone_fn = jax.jit(lambda v: analyze.input_output_spectrum(net, params, v).log_sv)
    for b, x in zip(batched, xs, strict=True):
        alone = np.asarray(alone_fn(x))
        assert np.isfinite(alone).sum() <= counts[0]  # each keeps at least its own rows
        keep = alone >= alone[0] + np.log(1e-3)
        np.testing.assert_allclose(b[keep], alone[keep], atol=2e-4)
    # the bucket index is unbatched: the sweep's switches stay switches under vmap
    jaxpr = str(
        jax.make_jaxpr(
            jax.vmap(lambda x: analyze.input_output_spectrum(net, params, x))
        )(xs)
    )
    assert "while[" in jaxpr and "cond[" in jaxpr


def test_a_spectrum_that_does_not_spread_is_never_compressed(getkey):
    # an orthogonal linear network: every singular value of every product is 1
    net = nn.mlp(64, 16, activation="linear", init="orthogonal", bias_var=0.0)
    _, params = net.init(getkey(), (16,))
    x = jax.random.normal(getkey(), (16,))
    got = np.asarray(
        jax.jit(lambda v: analyze.input_output_spectrum(net, params, v))(x).log_sv
    )
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, 0.0, atol=1e-4)


def test_derivatives_are_those_of_the_uncompressed_sweep(chaotic):
    net, params, xs = chaotic

    def loss(x, compress):
        return jnp.sum(
            analyze.input_output_spectrum(net, params, x, compress=compress).log_sv[:2]
        )

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g, g_full = grad(xs[0], True), grad(xs[0], False)
    np.testing.assert_allclose(g, g_full, rtol=1e-5, atol=1e-6)
    dx = jax.random.normal(jax.random.key(5), xs[0].shape)
    jvp = jax.jit(
        lambda x, c: jax.jvp(lambda v: loss(v, c), (x,), (dx,))[1], static_argnums=1
    )
    t, t_full = jvp(xs[0], True), jvp(xs[0], False)
    np.testing.assert_allclose(t, t_full, rtol=1e-5)
    np.testing.assert_allclose(t, jnp.dot(g_full, dx), rtol=1e-3)


def test_a_non_finite_product_is_reported_not_compressed_away(chaotic):
    net, params, xs = chaotic
    params = list(params)
    params[20] = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), params[20])
    with pytest.warns(analyze.NonFiniteWarning, match="non-finite"):
        spec = analyze.input_output_spectrum(net, params, xs[0])
    assert np.isnan(np.asarray(spec.log_sv)).all()
    assert int(spec.nonfinite.forward) == 11  # params[20]: the dense of block 11


def test_bad_compress_argument(chaotic):
    net, params, xs = chaotic
    with pytest.raises(ValueError, match="`compress` must be True or False"):
        analyze.input_output_spectrum(net, params, xs[0], compress="yes")
    with pytest.raises(ValueError, match="`compress`"):
        analyze.output_spectra(net, params, xs[0], compress=1)


def test_many_blocks_outside_runs_turn_compression_off(chaotic, monkeypatch):
    # each block outside a run would be compiled once per bucket (blocks=False makes
    # every layer one): past MAX_SINGLE of them the sweep keeps one bucket
    net, params, xs = chaotic
    monkeypatch.setattr(_rank, "MAX_SINGLE", 0)
    got = np.asarray(
        jax.jit(lambda v: analyze.input_output_spectrum(net, params, v))(xs[0]).log_sv
    )
    full = np.asarray(
        jax.jit(
            lambda v: analyze.input_output_spectrum(net, params, v, compress=False)
        )(xs[0]).log_sv
    )
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, full, atol=1e-5)
