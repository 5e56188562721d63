"""svd="host" and "auto": singular values from LAPACK on the host, through a callback."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import analyze, nn
from jgrad.analyze._host_svd import host_svdvals
from jgrad.analyze._logspace import LogMatrix


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7), (3, 6, 4), (2, 3, 5, 5), (0, 4, 4)])
def test_host_svdvals_equal_numpy_float64(rng, dtype, shape):
    m = rng.standard_normal(shape).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        got = jax.jit(host_svdvals)(jnp.asarray(m))
        assert got.dtype == dtype and got.shape == shape[:-2] + (min(shape[-2:]),)
    ref = np.linalg.svd(m.astype(np.float64), compute_uv=False)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        np.asarray(got), ref, rtol=tol, atol=tol * ref.max(initial=0)
    )


def test_host_svdvals_under_vmap_and_many_threads(rng, monkeypatch):
    """40 matrices (enough entries to be split over the thread pool) under a vmap equal
    one by one."""
    from jgrad.analyze import _host_svd

    used = []
    pool = _host_svd._pool
    monkeypatch.setattr(_host_svd, "_pool", lambda: used.append(1) or pool())
    m = rng.standard_normal((8, 5, 48, 40)).astype(np.float32)
    got = jax.jit(jax.vmap(host_svdvals))(jnp.asarray(m))
    assert used == ([1] if (os.cpu_count() or 1) > 1 else [])
    for i in range(8):
        for j in range(5):
            ref = np.linalg.svd(m[i, j].astype(np.float64), compute_uv=False)
            np.testing.assert_allclose(got[i, j], ref, rtol=1e-5, atol=1e-5 * ref[0])


def test_a_non_finite_matrix_gives_nan_and_leaves_the_others(rng):
    m = rng.standard_normal((3, 4, 4)).astype(np.float32)
    m[1, 2, 0] = np.nan
    got = np.asarray(jax.jit(host_svdvals)(jnp.asarray(m)))
    assert np.all(np.isnan(got[1]))
    for i in (0, 2):
        np.testing.assert_allclose(
            got[i], np.linalg.svd(m[i], compute_uv=False), rtol=1e-5
        )


@pytest.mark.slow
def test_spectrum_functions_with_host_svd_equal_the_device_path(getkey):
    with jax.enable_x64(True):
        net = nn.mlp(5, 7, activation="tanh", weight_var=1.5, bias_var=0.05)
        _, params = net.init(getkey(), (7,))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        xs = jax.random.normal(getkey(), (3, 7), jnp.float64)
        for fn in (analyze.output_spectra, analyze.input_output_spectrum):
            host = jax.jit(jax.vmap(lambda x, fn=fn: fn(net, params, x, svd="host")))(
                xs
            )
            dev = jax.vmap(lambda x, fn=fn: fn(net, params, x))(xs)
            for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(dev), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
        js = analyze.layer_jacobians(net, params, xs[0])
        np.testing.assert_allclose(
            analyze.log_singular_values(js, svd="host"),
            analyze.log_singular_values(js),
            rtol=1e-10,
        )
        prod = LogMatrix(jnp.eye(3, dtype=jnp.float64) / np.sqrt(3), jnp.float64(5.0))
        np.testing.assert_allclose(
            analyze.log_singular_values(prod, svd="host"), 5.0 - 0.5 * np.log(3)
        )


def test_bad_svd_argument(getkey):
    net = nn.mlp(2, 4)
    _, params = net.init(getkey(), (4,))
    x = jax.random.normal(getkey(), (4,))
    for fn in (analyze.output_spectra, analyze.input_output_spectrum):
        with pytest.raises(ValueError, match="`svd`.*'device', 'host'"):
            fn(net, params, x, svd="gpu")
    with pytest.raises(ValueError, match="`svd`"):
        analyze.log_singular_values(jnp.eye(4)[None], svd="cpu")


def test_lapack_is_called_directly_and_an_inf_matrix_gives_nan(rng):
    # The GIL-free ctypes route (SciPy's Cython LAPACK) must be found here, or the pool's
    # threads would run one at a time through NumPy's promoted float64 SVD.
    from jgrad.analyze import _host_svd

    assert all(
        _host_svd._GESDD[np.dtype(t)] is not None for t in (np.float32, np.float64)
    )
    m = rng.standard_normal((4, 6, 3)).astype(np.float32)
    m[2, 0, 1] = np.inf
    got = np.asarray(jax.jit(host_svdvals)(jnp.asarray(m)))
    assert np.all(np.isnan(got[2])) and np.all(np.isfinite(got[[0, 1, 3]]))
    ref = np.linalg.svd(m[[0, 1, 3]].astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(got[[0, 1, 3]], ref, rtol=1e-5)


def test_host_svdvals_derivatives_are_the_device_svds(rng):
    # The callback has no derivative of its own: grad and jvp go through XLA's SVD.
    with jax.enable_x64(True):
        m = jnp.asarray(rng.standard_normal((3, 5, 4)))
        dm = jnp.asarray(rng.standard_normal((3, 5, 4)))

        def dev(a):
            return jnp.linalg.svd(a, compute_uv=False)

        w = jnp.asarray(rng.standard_normal((3, 4)))
        g_host = jax.jit(jax.grad(lambda a: jnp.sum(w * jnp.log(host_svdvals(a)))))(m)
        g_dev = jax.grad(lambda a: jnp.sum(w * jnp.log(dev(a))))(m)
        np.testing.assert_allclose(g_host, g_dev, rtol=1e-10, atol=1e-12)
        _, t_host = jax.jvp(host_svdvals, (m,), (dm,))
        s, t_dev = jax.jvp(dev, (m,), (dm,))
        np.testing.assert_allclose(t_host, t_dev, rtol=1e-10, atol=1e-12)
        # d s_i = u_i^T dm v_i, by finite differences of the host values themselves
        eps = 1e-6
        fd = (host_svdvals(m + eps * dm) - host_svdvals(m - eps * dm)) / (2 * eps)
        np.testing.assert_allclose(t_host, fd, rtol=1e-6, atol=1e-8)
        assert np.all(np.asarray(s) > 0)


@pytest.mark.slow
def test_auto_takes_the_host_for_large_matrices_with_the_same_values(getkey):
    from jgrad.analyze._logspace import HOST_SVD_MIN, svd_where

    host = "device" if jax.default_backend() == "tpu" else "host"
    assert svd_where("auto", (3, HOST_SVD_MIN, HOST_SVD_MIN + 5)) == host
    assert svd_where("auto", (HOST_SVD_MIN - 1, 4 * HOST_SVD_MIN)) == "device"
    assert svd_where("device", (512, 512)) == "device"
    n = HOST_SVD_MIN
    net = nn.mlp(3, n, activation="tanh", weight_var=1.5, bias_var=0.05)
    _, params = net.init(getkey(), (n,))
    xs = jax.random.normal(getkey(), (2, n))
    auto = jax.jit(jax.vmap(lambda x: analyze.output_spectra(net, params, x)))(xs)
    dev = jax.vmap(lambda x: analyze.output_spectra(net, params, x, svd="device"))(xs)
    auto, dev = auto.log_sv, dev.log_sv
    for a, b in zip(auto, dev, strict=True):
        np.testing.assert_allclose(a[:, :64], b[:, :64], atol=2e-4)

    def loss(x, svd):
        spec = analyze.input_output_spectrum(net, params, x, svd=svd)
        return jnp.sum(spec.log_sv[:8])

    g_auto = jax.grad(loss)(xs[0], "auto")
    g_dev = jax.grad(loss)(xs[0], "device")
    np.testing.assert_allclose(g_auto, g_dev, rtol=1e-4, atol=1e-5)


def _blas_threads():
    """{library path: thread count} of every loaded BLAS, as threadpoolctl reads them."""
    from threadpoolctl import threadpool_info

    return {i["filepath"]: i["num_threads"] for i in threadpool_info()}


def test_host_lapack_runs_on_one_blas_thread_and_restores_the_count(rng, monkeypatch):
    # Every ?gesdd call of the pool sees its BLAS on one thread (the pool gives each core
    # a matrix; a threaded BLAS inside would oversubscribe the cores), NumPy's own BLAS
    # untouched, and afterwards the count the user had (here 3, set before the call).
    from jgrad.analyze import _host_svd

    route = _host_svd._route_blas()
    if not route:
        pytest.skip("no BLAS library with a thread-count API found")
    paths = {lib.path for lib in route}
    prev = [lib.get() for lib in route]
    for lib in route:
        lib.set(3)
    try:
        before = _blas_threads()
        assert all(before[p] == 3 for p in paths)
        seen = []
        each = _host_svd._svdvals_each

        def spy(*args):
            seen.append(_blas_threads())
            return each(*args)

        monkeypatch.setattr(_host_svd, "_svdvals_each", spy)
        m = rng.standard_normal((8, 96, 96)).astype(np.float32)  # 2^16+ entries
        got = jax.jit(host_svdvals)(jnp.asarray(m))
        ref = np.linalg.svd(m.astype(np.float64), compute_uv=False)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.max())
        assert len(seen) == min(8, os.cpu_count() or 1)  # every chunk checked
        for during in seen:
            assert all(during[p] == 1 for p in paths), during
            others = {k: v for k, v in during.items() if k not in paths}
            assert others == {k: v for k, v in before.items() if k not in paths}
        assert _blas_threads() == before
    finally:
        for lib, n in zip(route, prev, strict=True):
            lib.set(n)


def test_one_blas_thread_restores_when_the_last_of_overlapping_blocks_leaves():
    # Two callbacks can run at once: the first to enter saves the count, the last to
    # leave restores it (a block that restored on its own exit would leave the other
    # running threaded, or restore 1 for good).
    import threading

    from jgrad.analyze._host_svd import _route_blas, one_blas_thread

    route = _route_blas()
    if not route:
        pytest.skip("no BLAS library with a thread-count API found")
    prev = [lib.get() for lib in route]
    for lib in route:
        lib.set(2)
    entered, release = threading.Event(), threading.Event()

    def other():
        with one_blas_thread():
            entered.set()
            release.wait(10)

    try:
        t = threading.Thread(target=other)
        with one_blas_thread():
            t.start()
            assert entered.wait(10)
        # this block has left, the other has not: still one thread
        assert [lib.get() for lib in route] == [1] * len(route)
        release.set()
        t.join(10)
        assert [lib.get() for lib in route] == [2] * len(route)
    finally:
        release.set()
        for lib, n in zip(route, prev, strict=True):
            lib.set(n)
