"""The steps of output_norms' matrix-free method (jgrad.analyze._estimates, _ritz,
_row_sweeps) and the shared Lanczos pieces (jgrad.analyze._lanczos), each against an
independent float64 reference: explicit products from jax.jacrev of the sub-networks,
NumPy's SVD and eigendecompositions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import nn
from jgrad.analyze import _estimates, _lanczos, _ritz, _segments
from jgrad.analyze._network import resolve_net


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _net64(depth, width, getkey, out_dim=None):
    net = nn.mlp(
        depth, width, activation="tanh", weight_var=1.5, bias_var=0.05, out_dim=out_dim
    )
    _, params = net.init(getkey(), (width,))
    x = jax.random.normal(getkey(), (width,), jnp.float64)
    return net, _f64(params), x


def _block_starts(net, params):
    _, _, ends = resolve_net(net, params, True)
    return (0,) + tuple(e + 1 for e in ends[:-1])


def _sub(net, params, lo, hi=None):
    def f(v):
        for layer, p in zip(net.layers[lo:hi], params[lo:hi], strict=True):
            v = layer.apply(p, v)
        return v

    return f


def _inputs(net, params, x):
    """h_l at every block start (the input first)."""
    _, hs = net.apply(params, x, return_intermediates=True)
    return [x if lo == 0 else hs[lo - 1] for lo in _block_starts(net, params)]


def _products(net, params, x):
    """Every P_l = d y / d h_l as an explicit float64 matrix (size(y), size(h_l))."""
    out = []
    for lo, h in zip(_block_starts(net, params), _inputs(net, params, x), strict=True):
        jac = np.asarray(jax.jacrev(_sub(net, params, lo))(h))
        out.append(jac.reshape(-1, h.size))
    return out


def _orthonormal_rows(rng, k, n):
    return np.linalg.qr(rng.standard_normal((n, k)))[0].T


def _unit_rows(m):
    """(unit rows, log norms) of the rows of ``m``, as the sweeps carry them."""
    n = np.linalg.norm(m, axis=1)
    return jnp.asarray(m / n[:, None]), jnp.asarray(np.log(n))


def _scaled(rows, logs):
    return np.asarray(rows) * np.exp(np.asarray(logs))[..., None]


def _projector(rows):
    q = np.linalg.qr(np.asarray(rows).T)[0]
    return q @ q.T


def test_tridiagonal_and_recurrence_step_give_numpy_eigenvalues(rng):
    """recurrence_step run n times on two 7 x 7 SPD matrices at once (a batch) from a
    random unit vector: the Lanczos vectors are orthonormal and tridiagonal(alphas,
    betas) has NumPy's eigenvalues of A (the Krylov space is the whole space)."""
    with jax.enable_x64(True):
        n = 7
        mats = [rng.standard_normal((n, n)) for _ in range(2)]
        a = jnp.asarray(np.stack([m @ m.T + 0.1 * np.eye(n) for m in mats]))
        q0 = rng.standard_normal((2, n))
        q = jnp.asarray(q0 / np.linalg.norm(q0, axis=1, keepdims=True))
        q_prev, beta = jnp.zeros_like(q), jnp.zeros(2)
        basis = jnp.zeros((2, n, n)).at[:, 0].set(q)
        alphas, betas = [], []
        for i in range(n):
            aq = jnp.einsum("lij,lj->li", a, q)
            alpha = jnp.sum(aq * q, axis=-1)
            beta, nxt = _lanczos.recurrence_step(aq, alpha, q, q_prev, beta, basis, 2)
            alphas.append(alpha)
            betas.append(beta)
            q_prev, q = q, nxt
            if i + 1 < n:
                basis = basis.at[:, i + 1].set(q)
        for b in range(2):
            v = np.asarray(basis[b])
            np.testing.assert_allclose(v @ v.T, np.eye(n), atol=1e-10)
            t = _lanczos.tridiagonal(jnp.stack(alphas)[:, b], jnp.stack(betas)[:-1, b])
            np.testing.assert_allclose(np.asarray(t), v @ np.asarray(a[b]) @ v.T,
                                       atol=1e-9)  # fmt: skip
            np.testing.assert_allclose(
                np.linalg.eigvalsh(np.asarray(t)),
                np.linalg.eigvalsh(np.asarray(a[b])),
                rtol=1e-10,
            )


def test_lanczos_top_is_exact_with_full_steps_and_a_lower_bound_before(getkey):
    """lanczos_top over the last 3 blocks of a width-5 MLP: 5 steps give NumPy's top
    eigenvalue of P_l^T P_l / c_l for every l; 2 steps never exceed it."""
    with jax.enable_x64(True):
        L, n = 5, 5
        net, params, x = _net64(L, n, getkey)
        ps = _products(net, params, x)
        segs, _, _ = _segments.segments(
            net, params, x, blocks=True, train=False, key=None, cut=L - 3,
            single_after_cut=True,
        )  # fmt: skip
        maps = _segments.split_at(segs, L - 3)[1]
        starts = [jax.random.normal(getkey(), (n,), jnp.float64) for _ in range(3)]
        starts = [s / jnp.linalg.norm(s) for s in starts]
        log_c = jnp.asarray([0.3, -0.2, 0.1])
        ref = [np.linalg.svd(p, compute_uv=False)[0] ** 2 for p in ps[-3:]]
        ref = np.asarray(ref) / np.exp(np.asarray(log_c))
        full = _lanczos.lanczos_top(maps, starts, log_c, n, jnp.float64)
        np.testing.assert_allclose(np.asarray(full), ref, rtol=1e-10)
        low = _lanczos.lanczos_top(maps, starts, log_c, 2, jnp.float64)
        assert np.all(np.asarray(low) <= ref * (1 + 1e-12))


@pytest.mark.slow
def test_krylov_space_spans_the_block_krylov_space_of_the_weighted_sum(getkey, rng):
    """Q from krylov_space against NumPy: the span of ``U, A U, A^2 U`` for
    ``A = sum_l P_l P_l^T / c_l``, ``c_l = (size(y) / k) ||U P_l||_F^2`` over the
    products not left out; the pulled rows are ``Q_i P_l``."""
    with jax.enable_x64(True):
        L, n, k = 6, 10, 2
        net, params, x = _net64(L, n, getkey)
        ps = _products(net, params, x)
        segs, _, _ = _segments.segments(
            net, params, x, blocks=True, train=False, key=None, cut=L - 2,
            single_after_cut=True,
        )  # fmt: skip
        start = _orthonormal_rows(rng, k, n)
        for leave_out in (0, 2):
            qs, pulled = _estimates.krylov_space(segs, jnp.asarray(start), 2, leave_out)
            assert len(qs) == 3 and len(pulled) == 2
            for i in range(2):
                rows, logs = _segments.unchunk(pulled[i])
                for lo in range(L):
                    np.testing.assert_allclose(
                        _scaled(rows[lo], logs[lo]), np.asarray(qs[i]) @ ps[lo],
                        rtol=1e-9, atol=1e-12,
                    )  # fmt: skip
            a = sum(
                p @ p.T / ((n / k) * np.sum((start @ p) ** 2))
                for p in ps[: L - leave_out]
            )
            ref = np.concatenate([start.T, a @ start.T, a @ a @ start.T], axis=1)
            q = np.concatenate([np.asarray(b) for b in qs])
            np.testing.assert_allclose(q @ q.T, np.eye(3 * k), atol=1e-10)
            np.testing.assert_allclose(q.T @ q, _projector(ref.T), atol=1e-8)


def test_hutchpp_probes_are_gaussian_rows_projected_off_q(getkey, rng):
    with jax.enable_x64(True):
        n = 9
        qs = [jnp.asarray(b) for b in np.split(_orthonormal_rows(rng, 4, n), 2)]
        key = getkey()
        gauss, g = _estimates.hutchpp_probes(key, 5, qs, jnp.float64)
        ref_gauss = np.asarray(jax.random.normal(key, (5, n), jnp.float64))
        np.testing.assert_array_equal(np.asarray(gauss), ref_gauss)
        q = np.concatenate([np.asarray(b) for b in qs])
        ref = ref_gauss @ (np.eye(n) - q.T @ q)
        np.testing.assert_allclose(np.asarray(g), ref, atol=1e-12)


def _near_setup(getkey, rng, L=6, n=10, t=2):
    net, params, x = _net64(L, n, getkey)
    segs, shapes, _ = _segments.segments(
        net, params, x, blocks=True, train=False, key=None, cut=L - t,
        single_after_cut=True,
    )  # fmt: skip
    near_rest, tail = _segments.split_at(segs, L - t)
    start = jnp.asarray(_orthonormal_rows(rng, 2, n))
    qs, pulled = _estimates.krylov_space(segs, start, 1, len(tail))
    gauss, g = _estimates.hutchpp_probes(getkey(), 3, qs, jnp.float64)
    rows = jnp.concatenate([qs[-1], g])
    carry, last, group = _estimates.near_pull(near_rest, tail, rows, 2, pulled)
    return net, params, x, segs, shapes, qs, pulled, g, carry, last, group


@pytest.mark.slow
def test_near_pull_gives_q_p_and_the_probe_norms_of_every_product(getkey, rng):
    """The near group's Gram matrices and row logs give ``(Q P_l)(Q P_l)^T`` (Q both
    blocks), its probe logs ``log ||g_j P_l||^2``; the carry is the rows times P_0."""
    with jax.enable_x64(True):
        net, params, x, _, _, qs, pulled, g, carry, last, group = _near_setup(
            getkey, rng
        )
        ps = _products(net, params, x)
        q = np.concatenate([np.asarray(b) for b in qs])
        grams = np.asarray(_segments.unchunk(group.grams))
        logs = np.asarray(_segments.unchunk(group.row_logs))
        probe_logs = np.asarray(_segments.unchunk(group.probe_logs))
        for lo, p in enumerate(ps):
            e = np.exp(logs[lo])
            qp = q @ p
            np.testing.assert_allclose(grams[lo] * np.outer(e, e), qp @ qp.T,
                                       rtol=1e-9, atol=1e-12)  # fmt: skip
            ref = np.log(np.sum((np.asarray(g) @ p) ** 2, axis=1))
            np.testing.assert_allclose(probe_logs[lo], ref, rtol=1e-10)
        rows0 = np.concatenate([np.asarray(qs[-1]), np.asarray(g)])
        np.testing.assert_allclose(_scaled(*carry), rows0 @ ps[0], rtol=1e-9,
                                   atol=1e-12)  # fmt: skip
        # the tail stores Q's last block's unit rows there
        stored = np.asarray(last[-1][2][0])
        np.testing.assert_allclose(stored, _unit_rows(np.asarray(qs[-1]) @ ps[-1])[0],
                                   atol=1e-12)  # fmt: skip


def test_deep_start_directions_and_probes_at_the_boundary(rng):
    """deep_start against NumPy, at an explicit invertible P_b: its first rows are
    ``W P_b`` for orthonormal W in the span of Q holding the pushed row and the top
    Ritz directions of P_b in Q; the probe rows are ``((I - W^T W) G^T)^T P_b``."""
    with jax.enable_x64(True):
        ny, n, size, d = 8, 8, 3, 2
        p = rng.standard_normal((ny, n))
        q = _orthonormal_rows(rng, 6, ny)
        us = [jnp.asarray(q[:3]), jnp.asarray(q[3:])]
        z = rng.standard_normal(6) @ q
        z_in = jnp.asarray((z / np.linalg.norm(z))[None])
        gauss = rng.standard_normal((d + 1, ny))
        near_probes = gauss @ (np.eye(ny) - q.T @ q)
        q_rows = tuple(zip(_unit_rows(q[:3] @ p), _unit_rows(q[3:] @ p), strict=True))
        carry = _unit_rows(np.concatenate([q @ p, near_probes @ p]))
        rows, logs = _estimates.deep_start(
            q_rows, carry, us, z_in, jnp.asarray(gauss), size, 6, d
        )
        r = _scaled(rows, logs)
        w = r[:size] @ np.linalg.inv(p)  # W, from R = W P_b
        np.testing.assert_allclose(w @ w.T, np.eye(size), atol=1e-9)
        np.testing.assert_allclose(w @ (np.eye(ny) - q.T @ q), 0.0, atol=1e-9)
        in_w = np.eye(ny) - w.T @ w
        np.testing.assert_allclose(np.asarray(z_in) @ in_w, 0.0, atol=1e-9)
        ritz = np.linalg.eigh((q @ p) @ (q @ p).T)[1][:, ::-1][:, : size - 1]
        np.testing.assert_allclose(ritz.T @ q @ in_w, 0.0, atol=1e-9)
        ref = (gauss[:d] @ in_w) @ p
        np.testing.assert_allclose(r[size:], ref, rtol=1e-9, atol=1e-10)


def test_deep_pull_gives_the_rows_times_every_deep_product(getkey, rng):
    """deep_pull of rows at h_b through the blocks below it: Gram matrices and logs of
    ``R d h_b / d h_l`` (the first ``size`` rows) and the probe rows' squared norms."""
    with jax.enable_x64(True):
        L, n, b, size = 5, 6, 3, 2
        net, params, x = _net64(L, n, getkey)
        segs, _, _ = _segments.segments(
            net, params, x, blocks=True, train=False, key=None, bounds=(b,)
        )
        head = _segments.split_at(segs, b)[0]
        r0 = rng.standard_normal((size + 2, n))
        group = _estimates.deep_pull(head, _unit_rows(r0), size)
        grams = np.asarray(_segments.unchunk(group.grams))
        logs = np.asarray(_segments.unchunk(group.row_logs))
        probe_logs = np.asarray(_segments.unchunk(group.probe_logs))
        starts = _block_starts(net, params)
        for lo, h in enumerate(_inputs(net, params, x)[:b]):
            jac = np.asarray(jax.jacrev(_sub(net, params, starts[lo], starts[b]))(h))
            m = r0 @ jac
            e = np.exp(logs[lo])
            np.testing.assert_allclose(grams[lo] * np.outer(e, e),
                                       m[:size] @ m[:size].T, rtol=1e-9)  # fmt: skip
            ref = np.log(np.sum(m[size:] ** 2, axis=1))
            np.testing.assert_allclose(probe_logs[lo], ref, rtol=1e-10)


def test_full_space_group_gives_every_p_p_transpose(getkey):
    with jax.enable_x64(True):
        net, params, x = _net64(4, 5, getkey, out_dim=2)
        segs, _, y = _segments.segments(
            net, params, x, blocks=True, train=False, key=None
        )
        group = _estimates.full_space_group(segs, y.size, jnp.float64)
        assert group.probe_logs is None
        grams = np.asarray(_segments.unchunk(group.grams))
        logs = np.asarray(_segments.unchunk(group.row_logs))
        for lo, p in enumerate(_products(net, params, x)):
            e = np.exp(logs[lo])
            np.testing.assert_allclose(grams[lo] * np.outer(e, e), p @ p.T, rtol=1e-9)


def _summary_inputs(rng, ny=6, n=9, r=3, k=4):
    p = rng.standard_normal((ny, n)) * np.linspace(0.5, 2.0, n)
    q = _orthonormal_rows(rng, r, ny)
    g = rng.standard_normal((k, ny)) @ (np.eye(ny) - q.T @ q)
    rows, logs = _unit_rows(q @ p)
    gram = rows @ rows.T
    probe_logs = jnp.asarray(np.log(np.sum((g @ p) ** 2, axis=1)))
    return p, q, g, rows, logs, gram, probe_logs


def test_product_summary_is_ritz_and_hutchpp(rng):
    """product_summary against NumPy: the top singular value of Q P and its right
    singular vector, ``||Q P||_F^2 + mean_j ||g_j P||^2`` and the probes' standard
    error of that mean over the total."""
    with jax.enable_x64(True):
        p, q, g, rows, logs, gram, probe_logs = _summary_inputs(rng)
        sn, w, fro2, err = _ritz.product_summary(gram, logs, probe_logs)
        _, sv, vt = np.linalg.svd(q @ p)
        np.testing.assert_allclose(float(sn), np.log(sv[0]), rtol=1e-8)
        v = np.asarray(rows).T @ np.asarray(w)
        np.testing.assert_allclose(abs(v @ vt[0]) / np.linalg.norm(v), 1.0, rtol=1e-8)
        resid = np.sum((g @ p) ** 2, axis=1)
        tot = np.sum((q @ p) ** 2) + np.mean(resid)
        np.testing.assert_allclose(float(fro2), np.log(tot), rtol=1e-12)
        ref_err = np.std(resid / tot, ddof=1) / np.sqrt(len(resid))
        np.testing.assert_allclose(float(err), ref_err, rtol=1e-10)
        sn0, _, fro0, err0 = _ritz.product_summary(gram, logs, None)
        assert float(sn0) == float(sn) and float(err0) == 0.0
        np.testing.assert_allclose(float(fro0), np.log(np.sum((q @ p) ** 2)),
                                   rtol=1e-12)  # fmt: skip


def test_summarise_concatenates_the_groups_deepest_first(rng):
    """summarise over two groups (2 and 3 products, one segment each): NumPy's top
    singular value and Hutch++ total of every product, in order; the start weights are
    the last group's."""
    with jax.enable_x64(True):
        groups, ref_sn, ref_fro = [], [], []
        for count in (2, 3):
            items = [_summary_inputs(rng) for _ in range(count)]
            for p, q, g, *_ in items:
                ref_sn.append(np.log(np.linalg.svd(q @ p, compute_uv=False)[0]))
                resid = np.mean(np.sum((g @ p) ** 2, axis=1))
                ref_fro.append(np.log(np.sum((q @ p) ** 2) + resid))
            groups.append(
                _estimates.ProductGroup(
                    grams=[jnp.stack([it[5] for it in items])],
                    row_logs=[jnp.stack([it[4] for it in items])],
                    probe_logs=[jnp.stack([it[6] for it in items])],
                )
            )
        s = _ritz.summarise(groups)
        np.testing.assert_allclose(np.asarray(s.log_spectral_norm), ref_sn, rtol=1e-8)
        np.testing.assert_allclose(np.asarray(s.log_fro2), ref_fro, rtol=1e-12)
        assert s.start_weights.shape == (3, 3)
        assert s.mean_sq_rel_err.shape == (5,)


@pytest.mark.slow
def test_tail_starts_are_the_top_right_singular_vectors_of_q_p(getkey, rng):
    """Through the real steps (Krylov space, near pull, summaries) on a width-10 MLP:
    each tail product's start vector is NumPy's top right singular vector of
    ``Q P_l``, Q all of Q's rows."""
    with jax.enable_x64(True):
        t = 2
        net, params, x, _, _, qs, pulled, _, _, last, group = _near_setup(
            getkey, rng, t=t
        )
        s = _ritz.summarise([group])
        starts = _estimates.tail_starts(pulled, last, s.start_weights[-t:])
        q = np.concatenate([np.asarray(b) for b in qs])
        for v, p in zip(starts, _products(net, params, x)[-t:], strict=True):
            top = np.linalg.svd(q @ p)[2][0]
            np.testing.assert_allclose(abs(float(np.asarray(v) @ top)), 1.0, rtol=1e-8)
            np.testing.assert_allclose(float(jnp.linalg.norm(v)), 1.0, rtol=1e-12)


def test_refine_tail_keeps_the_larger_lower_bound(getkey):
    """refine_tail with as many steps as size(h_l): NumPy's log sigma_max(P_l) where
    the given bound is lower, the given bound where it is higher."""
    with jax.enable_x64(True):
        L, n, t = 5, 5, 3
        net, params, x = _net64(L, n, getkey)
        ps = _products(net, params, x)[-t:]
        segs, _, _ = _segments.segments(
            net, params, x, blocks=True, train=False, key=None, cut=L - t,
            single_after_cut=True,
        )  # fmt: skip
        maps = _segments.split_at(segs, L - t)[1]
        starts = [jnp.ones(n) / np.sqrt(n)] * t
        fro2 = jnp.asarray([np.log(np.sum(p**2)) for p in ps])
        ref = np.asarray([np.log(np.linalg.svd(p, compute_uv=False)[0]) for p in ps])
        given = jnp.asarray([-np.inf, ref[1] + 1.0, ref[2] - 1.0])
        out = np.asarray(_estimates.refine_tail(maps, starts, fro2, given, n))
        np.testing.assert_allclose(out[[0, 2]], ref[[0, 2]], rtol=1e-10)
        assert out[1] == float(given[1])


def test_assemble_divides_by_the_smaller_side(getkey):
    """assemble: log(||P_l||_F^2 / min(size(y), size(h_l))) is NumPy's log mean
    squared singular value, for a 2-wide output below 5-wide layers."""
    with jax.enable_x64(True):
        net, params, x = _net64(4, 5, getkey, out_dim=2)
        ps = _products(net, params, x)
        shapes = [(p.shape[1],) for p in ps]
        fro2 = jnp.asarray([np.log(np.sum(p**2)) for p in ps])
        sn = jnp.arange(len(ps), dtype=jnp.float64)
        err = jnp.full(len(ps), 0.25)
        out_sn, log_ms, out_err = _estimates.assemble(sn, fro2, err, shapes, 2)
        ref = [np.log(np.mean(np.linalg.svd(p, compute_uv=False) ** 2)) for p in ps]
        np.testing.assert_allclose(np.asarray(log_ms), ref, rtol=1e-12)
        assert out_sn is sn and out_err is err
