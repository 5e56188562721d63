"""RNN analyzers (step Jacobians, their products, per-step gradient norms, Lyapunov spectra,
the Pascanu bound) against independent references.

References: ``jax.jacrev`` of ONE ``cell.step`` on the flattened carry at the states of the
forward pass; ``jax.jacrev`` of the unrolled map ``s_t -> s_T``; ``jax.grad`` with respect
to additive perturbations of the carry after every step; NumPy ``eig``/``slogdet``/``svd``
and least squares; a Python loop for ``vmap``. Parameters, inputs and initial carries are
random and nonzero, so a swapped gate, a dropped bias or an off-by-one time index changes the
numbers. The exact checks run in float64 (cast explicitly: conftest makes promotion strict).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.analyze import (
    flatten_carry,
    log_singular_values,
    lyapunov_spectrum,
    pascanu_bound,
    rnn_grad_norms,
    rnn_jacobian_products,
    rnn_step_jacobians,
    unflatten_carry,
)
from jgrad.analyze._nonfinite import NonFiniteWarning
from jgrad.rnn import LSTMState

H, D, T = 4, 3, 10

CELLS = {
    "vanilla_tanh": jgrad.rnn.vanilla(H, "tanh"),
    "vanilla_relu": jgrad.rnn.vanilla(H, "relu"),
    "lstm": jgrad.rnn.lstm(H),
    "gru_after": jgrad.rnn.gru(H, reset_after=True),
    "gru_before": jgrad.rnn.gru(H, reset_after=False),
}


# ------------------------------------------------------------------------------ helpers


def _key(seed):
    """A cheap-to-compile key (rbg rather than threefry) for ``init`` on CPU."""
    return jax.random.key(seed, impl="rbg")


def _flat(carry):
    """Independent of the library: h, or [h, c] for an LSTMState."""
    if isinstance(carry, LSTMState):
        return jnp.concatenate([carry.h, carry.c], axis=-1)
    return carry


def _unflat(cell, s):
    if cell.kind == "lstm":
        return LSTMState(h=s[: cell.hidden], c=s[cell.hidden :])
    return s


def _n(cell):
    return 2 * cell.hidden if cell.kind == "lstm" else cell.hidden


def _setup(cell, rng, T=T, dtype=np.float64, wscale=1.0):
    """Random params (weights ~ wscale / sqrt(fan_in), biases ~ 0.3), inputs and a random
    nonzero initial carry, all of ``dtype``. Call inside ``jax.enable_x64`` for float64."""
    shapes = jax.eval_shape(lambda k: cell.init(k, D), _key(0))

    def fill(s):
        scale = wscale / np.sqrt(s.shape[0]) if len(s.shape) == 2 else 0.3
        return jnp.asarray(rng.normal(0, scale, s.shape), dtype)

    params = jax.tree.map(fill, shapes)
    xs = jnp.asarray(rng.normal(0.1, 1.0, (T, D)), dtype)
    c0 = jax.tree.map(
        lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape), dtype), cell.init_carry()
    )
    return params, xs, c0


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)


def _states(cell, params, xs, c0):
    """(T+1, n): s_0 (initial carry), s_1 .. s_T from unroll(return_carries=True)."""
    _, _, carries = jgrad.rnn.unroll(cell, params, xs, c0, return_carries=True)
    return jnp.concatenate([_flat(c0)[None], _flat(carries)], axis=0)


def _ref_step_jacobians(cell, params, xs, c0):
    """(T, n, n): jax.jacrev of one cell.step at the actual states, one step at a time."""

    def step(s, x_t):
        xp_t = cell.input_proj(params, x_t[None])[0]
        new, _ = cell.step(params, _unflat(cell, s), xp_t)
        return _flat(new)

    jac = jax.jit(jax.jacrev(step))
    s = _states(cell, params, xs, c0)
    return np.stack([np.asarray(jac(s[t], xs[t])) for t in range(xs.shape[0])])


def _ref_products(cell, params, xs, c0, ts, rng):
    """{t: d s_T / d s_t} by jax.jacrev of the unrolled map s_t -> s_T: unroll over xs[t:]
    from the carry s_t. To compile once, xs[t:] is padded to length T with large junk and
    ``seq_length=T - t`` (padded steps leave the carry unchanged)."""
    T, D = xs.shape

    def run(s, xs_pad, length):
        final, _ = jgrad.rnn.unroll(
            cell, params, xs_pad, _unflat(cell, s), seq_length=length
        )
        return _flat(final)

    jac = jax.jit(jax.jacrev(run))
    states = _states(cell, params, xs, c0)
    out = {}
    for t in ts:
        junk = jnp.asarray(rng.normal(0, 50.0, (t, D)), xs.dtype)
        xs_pad = jnp.concatenate([xs[t:], junk], axis=0)
        out[t] = np.asarray(jac(states[t], xs_pad, T - t))
    return out


def _ref_state_grads(cell, params, xs, c0, loss_fn):
    """(T+1, n): dL/ds_t by jax.grad w.r.t. additive perturbations eps_t of the carry after
    every step (eps_0 of the initial carry), outputs y_t = h part of the perturbed carry."""
    H = cell.hidden
    s0 = _flat(c0)
    xp = cell.input_proj(params, xs)

    def loss(eps):
        def body(s, inp):
            xp_t, e = inp
            new, _ = cell.step(params, _unflat(cell, s), xp_t)
            s_new = _flat(new) + e
            return s_new, s_new[:H]

        _, ys = jax.lax.scan(body, s0 + eps[0], (xp, eps[1:]))
        return loss_fn(ys)

    eps = jnp.zeros((xs.shape[0] + 1, s0.shape[0]), s0.dtype)
    return np.asarray(jax.jit(jax.grad(loss))(eps))


_JITTED = {}


def _jit(fn, cell, **kw):
    """``jax.jit`` of ``fn(cell, params, xs, carry0, **kw)``, cached for the module so each
    cell and option set compiles once."""
    key = (fn.__name__, id(cell), tuple(sorted(kw.items())))
    if key not in _JITTED:
        _JITTED[key] = jax.jit(lambda p, x, c: fn(cell, p, x, c, **kw))
    return _JITTED[key]


def _sq_loss(target, weight):
    return lambda ys: 0.5 * jnp.sum(weight * jnp.square(ys - target))


# ------------------------------------------------------------------- carry flattening


@pytest.mark.parametrize("name", ["lstm", "gru_after"])
def test_flatten_unflatten_roundtrip(name, rng):
    cell = CELLS[name]
    _, _, c0 = _setup(cell, rng, dtype=np.float32)
    s = flatten_carry(c0)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(_flat(c0)))
    back = unflatten_carry(cell, s)
    assert jax.tree.structure(back) == jax.tree.structure(c0)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(c0), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------- step Jacobians


@pytest.mark.parametrize("name", list(CELLS))
def test_step_jacobians_match_jacrev_of_one_step(name, rng):
    cell = CELLS[name]
    with jax.enable_x64(True):
        params, xs, c0 = _setup(cell, rng)
        jac = _jit(rnn_step_jacobians, cell)(params, xs, c0)
        ref = _ref_step_jacobians(cell, params, xs, c0)
    n = _n(cell)
    assert jac.shape == (T, n, n) and jac.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(jac), ref, rtol=1e-10, atol=1e-13)
    # Not trivially the same matrix at every step: the states differ along the pass.
    assert np.abs(ref[0] - ref[-1]).max() > 1e-3


# ------------------------------------------------------------------ products d s_T/d s_t


@pytest.mark.parametrize("name", ["vanilla_relu", "lstm"])
def test_products_match_jacrev_of_unrolled_map(name, rng):
    cell = CELLS[name]
    ts = (0, 1, T // 2, T - 1)
    with jax.enable_x64(True):
        params, xs, c0 = _setup(cell, rng)
        prods = _jit(rnn_jacobian_products, cell)(params, xs, c0)
        par = _jit(rnn_jacobian_products, cell, parallel=True)(params, xs, c0)
        refs = _ref_products(cell, params, xs, c0, ts, rng)
        last_step = _ref_step_jacobians(cell, params, xs, c0)[-1]
        val, pval = np.asarray(prods.value()), np.asarray(par.value())
        sv = np.asarray(log_singular_values(prods))
    n = _n(cell)
    assert prods.matrix.shape == (T, n, n) and prods.log_scale.shape == (T,)
    for t, ref in refs.items():
        np.testing.assert_allclose(
            val[t], ref, rtol=1e-10, atol=1e-14 * np.abs(ref).max()
        )
        np.testing.assert_allclose(
            float(prods.log_scale[t]),
            np.log(np.linalg.norm(ref)),
            rtol=1e-10,
            atol=1e-12,
        )
        # Dead ReLU units give exactly zero singular values (log -inf).
        with np.errstate(divide="ignore"):
            ref_sv = np.log(np.linalg.svd(ref, compute_uv=False))
        top = ref_sv > ref_sv[0] - 20  # the rescaled product resolves these
        np.testing.assert_allclose(sv[t][top], ref_sv[top], rtol=1e-8, atol=1e-8)
    # The last entry is the last step Jacobian itself; the first differs from it.
    np.testing.assert_allclose(refs[T - 1], last_step, rtol=1e-12, atol=1e-14)
    assert np.abs(refs[0] - refs[T - 1]).max() > 1e-3
    # parallel=True (associative scan) equals the sequential reverse scan.
    np.testing.assert_allclose(pval, val, rtol=1e-10, atol=1e-14 * np.abs(val).max())
    np.testing.assert_allclose(
        np.asarray(par.log_scale), np.asarray(prods.log_scale), rtol=1e-10, atol=1e-12
    )


def test_single_step_sequence(rng):
    """T = 1: the only product is J_1 (both scans), the exponents sum to log|det J_1|, and
    the gradient norms are ||dL/ds_1|| and ||dL/ds_1 J_1||."""
    cell = CELLS["gru_after"]
    with jax.enable_x64(True):
        params, xs, c0 = _setup(cell, rng, T=1)
        ref = _ref_step_jacobians(cell, params, xs, c0)[0]
        seq = _jit(rnn_jacobian_products, cell)(params, xs, c0)
        par = _jit(rnn_jacobian_products, cell, parallel=True)(params, xs, c0)
        lam = _jit(lyapunov_spectrum, cell)(params, xs, c0).exponents
        flow = jax.jit(lambda p, x, c: rnn_grad_norms(cell, p, x, c, jnp.sum))(
            params, xs, c0
        )
    np.testing.assert_allclose(np.asarray(seq.value())[0], ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(par.value())[0], ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        np.asarray(lam).sum(), np.linalg.slogdet(ref)[1], rtol=1e-10
    )
    g = np.ones(H)
    np.testing.assert_allclose(
        10.0 ** np.asarray(flow.log10_norm),
        [np.linalg.norm(g @ ref), np.linalg.norm(g)],
        rtol=1e-10,
    )


@pytest.mark.slow
def test_parallel_products_long_sequence_float32(rng):
    """A longer float32 run where the products span many orders of magnitude: the
    associative scan and the sequential scan agree in log space."""
    cell = jgrad.rnn.vanilla(6, "tanh", weight_var=0.3)
    params, xs, c0 = _setup(cell, rng, T=160, dtype=np.float32, wscale=0.5)
    seq = _jit(rnn_jacobian_products, cell)(params, xs, c0)
    par = _jit(rnn_jacobian_products, cell, parallel=True)(params, xs, c0)
    assert float(seq.log_scale[0]) < -104  # below float32's range as a plain matrix
    np.testing.assert_allclose(
        np.asarray(par.log_scale), np.asarray(seq.log_scale), rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(
        np.asarray(par.matrix), np.asarray(seq.matrix), rtol=1e-3, atol=1e-4
    )


# -------------------------------------------------------------------- gradient norms


@pytest.mark.parametrize("name", ["vanilla_tanh", "lstm", "gru_before"])
def test_grad_norms_match_perturbation_gradients(name, rng):
    cell = CELLS[name]
    with jax.enable_x64(True):
        params, xs, c0 = _setup(cell, rng)
        target = jnp.asarray(rng.normal(0, 1, (T, H)), jnp.float64)
        weight = jnp.asarray(rng.uniform(0.5, 2.0, (T, H)), jnp.float64)
        loss_fn = _sq_loss(target, weight)
        flow = jax.jit(lambda p, x, c: rnn_grad_norms(cell, p, x, c, loss_fn))(
            params, xs, c0
        )
        ref = _ref_state_grads(cell, params, xs, c0, loss_fn)
        _, ys = jgrad.rnn.unroll(cell, params, xs, c0)
        ref_loss = float(loss_fn(ys))
    ref_norm = np.linalg.norm(ref, axis=1)
    assert flow.log10_norm.shape == (T + 1,)
    np.testing.assert_allclose(10.0 ** np.asarray(flow.log10_norm), ref_norm, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(flow.raw_norm), ref_norm, rtol=1e-6)
    assert not bool(flow.underflow.any())
    np.testing.assert_allclose(float(flow.loss), ref_loss, rtol=1e-12)


def test_grad_norms_last_output_only_equals_product_rows(rng):
    """With a loss on y_T only, dL/ds_t = g_T^T (d s_T / d s_t): the direct term enters
    only at t = T, a check of where the direct term is added."""
    cell = CELLS["vanilla_tanh"]
    with jax.enable_x64(True):
        params, xs, c0 = _setup(cell, rng)
        target = jnp.asarray(rng.normal(0, 1, (H,)), jnp.float64)
        loss_fn = lambda ys: 0.5 * jnp.sum(jnp.square(ys[-1] - target))  # noqa: E731
        flow = jax.jit(lambda p, x, c: rnn_grad_norms(cell, p, x, c, loss_fn))(
            params, xs, c0
        )
        s = _states(cell, params, xs, c0)
        g = np.asarray(s[-1] - target)
        jacs = _ref_step_jacobians(cell, params, xs, c0)
    ref, v = [np.linalg.norm(g)], g
    for t in range(T - 1, -1, -1):
        v = v @ jacs[t]
        ref.append(np.linalg.norm(v))
    np.testing.assert_allclose(
        10.0 ** np.asarray(flow.log10_norm), np.asarray(ref[::-1]), rtol=1e-8
    )


def test_grad_norms_float32_underflow_matches_float64(getkey, rng):
    """Float32 vanilla tanh RNN with contracting weights and a loss on the last output only:
    the plain gradient dL/ds_0 underflows to exactly 0, the log-space norm is finite and
    equals the float64 reference, which stays far from float64's range limit."""
    Tl, Hl = 300, 8
    cell = jgrad.rnn.vanilla(Hl, "tanh", weight_var=0.3, bias_var=0.1)
    params = cell.init(getkey(), D)
    xs = jnp.asarray(rng.normal(0, 1, (Tl, D)), jnp.float32)
    c0 = jnp.asarray(rng.normal(0, 0.5, (Hl,)), jnp.float32)
    target = jnp.asarray(rng.normal(0, 1, (Hl,)), jnp.float32)
    flow = jax.jit(
        lambda p, x, c: rnn_grad_norms(
            cell, p, x, c, lambda ys: 0.5 * jnp.sum(jnp.square(ys[-1] - target))
        )
    )(params, xs, c0)
    with jax.enable_x64(True):
        t64 = _f64(target)
        ref = _ref_state_grads(
            cell,
            _f64(params),
            _f64(xs),
            _f64(c0),
            lambda ys: 0.5 * jnp.sum(jnp.square(ys[-1] - t64)),
        )
    ref_log10 = np.log10(np.linalg.norm(ref, axis=1))
    assert -200 < ref_log10[0] < -60, ref_log10[0]  # below float32, inside float64
    log10 = np.asarray(flow.log10_norm)
    raw = np.asarray(flow.raw_norm)
    under = np.asarray(flow.underflow)
    assert np.all(np.isfinite(log10))
    np.testing.assert_allclose(log10, ref_log10, rtol=1e-3, atol=1e-3)
    assert raw[0] == 0.0 and under[0]
    # Where float32 represents the gradient (normal range) the plain norm is right and not
    # flagged; far below float32's smallest subnormal it is exactly 0 and flagged.
    normal = ref_log10 > -30
    assert normal[-1] and normal.sum() > 5
    np.testing.assert_allclose(raw[normal], 10.0 ** ref_log10[normal], rtol=1e-3)
    assert not under[normal].any()
    tiny = ref_log10 < -50
    assert tiny.sum() > 10
    assert np.all(raw[tiny] == 0.0) and under[tiny].all()
    np.testing.assert_array_equal(under, raw == 0.0)


# ---------------------------------------------------------------------- Lyapunov spectrum


def _normal_matrix(rng):
    """A = Q B Q^T with B block diagonal: two scaled rotations and two real eigenvalues,
    so A is normal with |eigenvalues| 1.02 (x2), 0.8 (x2), 0.6, 0.35."""

    def rot(r, th):
        return r * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])

    B = np.zeros((6, 6))
    B[:2, :2] = rot(1.02, 0.7)
    B[2:4, 2:4] = rot(0.8, 2.1)
    B[4, 4], B[5, 5] = -0.6, 0.35
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    return Q @ B @ Q.T


def test_lyapunov_linear_rnn_is_log_abs_eigenvalues(rng):
    """For s_t = A s_{t-1} + x-term with A normal, the exponents are log|eig(A)|."""
    act = "identity"
    assert act in jgrad.nn.ACTIVATIONS
    assert jgrad.nn.activation("linear").name == act
    A = _normal_matrix(rng)
    np.testing.assert_allclose(A @ A.T, A.T @ A, atol=1e-12)  # normal
    expected = np.sort(np.log(np.abs(np.linalg.eigvals(A))))[::-1]
    np.testing.assert_allclose(
        expected, np.log([1.02, 1.02, 0.8, 0.8, 0.6, 0.35]), atol=1e-12
    )
    cell = jgrad.rnn.vanilla(6, act)
    with jax.enable_x64(True):
        params, xs, c0 = _setup(cell, rng, T=400)
        params = dict(params, w_hh=jnp.asarray(A.T))  # step s @ A^T: Jacobian A
        jac = rnn_step_jacobians(cell, params, xs[:2], c0)
        np.testing.assert_allclose(np.asarray(jac[1]), A, rtol=1e-14, atol=1e-14)
        plain = _jit(lyapunov_spectrum, cell)(params, xs, c0).exponents
        warm = _jit(lyapunov_spectrum, cell, warmup=150)(params, xs, c0).exponents
        top2 = _jit(lyapunov_spectrum, cell, k=2, warmup=150)(params, xs, c0).exponents
    assert plain.shape == (6,) and plain.dtype == jnp.float64
    # Without warmup the initial basis alignment costs O(1/T).
    np.testing.assert_allclose(np.asarray(plain), expected, atol=2e-2)
    # After the basis has aligned (error ~ exp(-0.24 * 150)) the rates are exact.
    np.testing.assert_allclose(np.asarray(warm), expected, atol=1e-8)
    np.testing.assert_allclose(np.asarray(top2), expected[:2], atol=1e-8)


@pytest.mark.parametrize("name", ["vanilla_tanh", "lstm"])
def test_lyapunov_sum_is_mean_log_abs_det(name, rng):
    """Sum of the full spectrum = mean_t log|det J_t| (exact for the QR method), also with
    a warmup (mean over the averaged steps only); the top k come from the k-column run."""
    cell = CELLS[name]
    Tl = 60
    with jax.enable_x64(True):
        # wscale 2: a chaotic-ish tanh net so the exponents spread around 0.
        params, xs, c0 = _setup(cell, rng, T=Tl, wscale=2.0)
        full, warm, top3 = jax.jit(
            lambda p, x, c: (
                lyapunov_spectrum(cell, p, x, c),
                lyapunov_spectrum(cell, p, x, c, warmup=17),
                lyapunov_spectrum(cell, p, x, c, k=3),
            )
        )(params, xs, c0)
        full, warm, top3 = (np.asarray(r.exponents) for r in (full, warm, top3))
        ref_jac = _ref_step_jacobians(cell, params, xs, c0)
    sign, logdet = np.linalg.slogdet(ref_jac)
    assert np.all(sign != 0)
    n = _n(cell)
    assert full.shape == (n,) and top3.shape == (3,)
    assert np.all(np.diff(full) <= 0) and np.all(np.diff(top3) <= 0)  # descending
    np.testing.assert_allclose(full.sum(), logdet.mean(), rtol=1e-6)
    np.testing.assert_allclose(warm.sum(), logdet[17:].mean(), rtol=1e-6)
    # The k-column QR is the leading block of the full QR (same initial basis), so the top 3
    # agree up to rounding here, and only approximately in general.
    np.testing.assert_allclose(top3, full[:3], atol=1e-6)


def test_lyapunov_vmap_over_sequences_and_carries_equals_loop(rng):
    cell = CELLS["lstm"]
    B, Tl = 3, 40
    with jax.enable_x64(True):
        params, _, _ = _setup(cell, rng, T=Tl)
        xs = jnp.asarray(rng.normal(0, 1, (B, Tl, D)), jnp.float64)
        c0 = LSTMState(
            h=jnp.asarray(rng.normal(0, 0.5, (B, H)), jnp.float64),
            c=jnp.asarray(rng.normal(0, 0.5, (B, H)), jnp.float64),
        )
        batched = jax.jit(
            jax.vmap(lambda x, c: lyapunov_spectrum(cell, params, x, c, k=5, warmup=3))
        )(xs, c0).exponents
        loop = [
            lyapunov_spectrum(
                cell, params, xs[b], LSTMState(c0.h[b], c0.c[b]), k=5, warmup=3
            ).exponents
            for b in range(B)
        ]
    assert batched.shape == (B, 5)
    np.testing.assert_allclose(
        np.asarray(batched), np.stack(loop), rtol=1e-10, atol=1e-12
    )
    assert np.abs(np.asarray(batched[0] - batched[1])).max() > 1e-4  # not all the same


# ----------------------------------------------------------------------- Pascanu bound
def test_pascanu_bound_under_strict_promotion(rng):
    cell, params, xs, c0 = _vanilla_setup(rng)
    pb = _jit(pascanu_bound, cell)(params, xs, c0)
    assert np.all(np.isfinite(np.asarray(pb.log_norms)))


@pytest.mark.parametrize(
    "act,weight_var",
    [("tanh", 0.5), ("tanh", 3.0), ("relu", 1.5), ("sigmoid", 20.0)],
)
def test_pascanu_bound_holds_and_matches_numpy(act, weight_var, getkey):
    Tl, Hl = 30, 6
    cell = jgrad.rnn.vanilla(Hl, act, weight_var=weight_var, bias_var=0.2)
    rng = np.random.default_rng(len(act) * 1000 + int(weight_var * 10))
    with jax.enable_x64(True):
        params = _f64(cell.init(getkey(), D))
        xs = jnp.asarray(rng.normal(0, 1, (Tl, D)), jnp.float64)
        c0 = jnp.asarray(rng.normal(0, 0.5, (Hl,)), jnp.float64)
        pb = _jit(pascanu_bound, cell)(params, xs, c0)
        jacs = _ref_step_jacobians(cell, params, xs, c0)
    gamma = {"tanh": 1.0, "relu": 1.0, "sigmoid": 0.25}[act]
    assert pb.gamma == pytest.approx(gamma, rel=1e-12)
    w_norm = np.linalg.norm(np.asarray(params["w_hh"]), 2)
    np.testing.assert_allclose(float(pb.w_hh_norm), w_norm, rtol=1e-12)
    np.testing.assert_allclose(float(pb.bound), gamma * w_norm, rtol=1e-12)
    assert bool(pb.vanishing_guaranteed) == (gamma * w_norm < 1)
    assert bool(pb.exploding_possible) == (w_norm > 1 / gamma)
    # Every step Jacobian is within the bound.
    step_norms = np.linalg.norm(jacs, ord=2, axis=(1, 2))
    assert np.all(step_norms <= float(pb.bound) * (1 + 1e-10))
    # log_norms: log ||d s_T / d s_t||_2 from the NumPy product of the reference Jacobians.
    ref_logs, p = [], np.eye(Hl)
    for t in range(Tl - 1, -1, -1):
        p = p @ jacs[t]
        ref_logs.append(np.log(np.linalg.norm(p, 2)))
    ref_logs = np.array(ref_logs[::-1])
    np.testing.assert_allclose(np.asarray(pb.log_norms), ref_logs, rtol=1e-8, atol=1e-8)
    dist = Tl - np.arange(Tl)
    assert np.all(ref_logs <= dist * np.log(float(pb.bound)) + 1e-9)
    # measured_log_rate is the least-squares slope of log_norms against T - t (natural
    # log per step) and measured_factor its exp; log_bound is log(gamma ||W_hh||_2).
    slope = np.polyfit(dist, ref_logs, 1)[0]
    np.testing.assert_allclose(float(pb.measured_log_rate), slope, rtol=1e-8)
    np.testing.assert_allclose(float(pb.measured_factor), np.exp(slope), rtol=1e-8)
    np.testing.assert_allclose(float(pb.log_bound), np.log(gamma * w_norm), rtol=1e-10)
    assert float(pb.measured_factor) <= float(pb.bound) * (1 + 1e-6)
    assert float(pb.measured_log_rate) <= float(pb.log_bound) + 1e-6


def test_pascanu_vanishing_guaranteed_and_products_decay(getkey, rng):
    Tl = 25
    cell = jgrad.rnn.vanilla(8, "tanh", weight_var=0.1, bias_var=0.2)
    params = cell.init(getkey(), D)
    xs = jnp.asarray(rng.normal(0, 1, (Tl, D)), jnp.float32)
    c0 = jnp.asarray(rng.normal(0, 0.5, (8,)), jnp.float32)
    pb = _jit(pascanu_bound, cell)(params, xs, c0)
    assert bool(pb.vanishing_guaranteed) and not bool(pb.exploding_possible)
    assert float(pb.bound) < 1
    logs = np.asarray(pb.log_norms)
    # ||d s_T / d s_t|| shrinks strictly as T - t grows (each step contracts) ...
    assert np.all(np.diff(logs) > 0)
    # ... at least as fast as bound^(T - t).
    assert np.all(logs <= (Tl - np.arange(Tl)) * np.log(float(pb.bound)) + 1e-4)
    assert float(pb.measured_factor) < float(pb.bound) < 1
    assert float(pb.measured_log_rate) < float(pb.log_bound) < 0


def test_pascanu_sigmoid_gamma_and_gated_cells_rejected(getkey, rng):
    cell = jgrad.rnn.vanilla(4, "sigmoid")
    assert cell.options["gamma"] == 0.25
    params, xs, c0 = _setup(cell, rng, dtype=np.float32)
    pb = _jit(pascanu_bound, cell)(params, xs, c0)
    assert float(pb.gamma) == 0.25
    np.testing.assert_allclose(
        float(pb.bound), 0.25 * np.linalg.norm(np.asarray(params["w_hh"]), 2), rtol=1e-5
    )
    lstm = CELLS["lstm"]
    lp, lxs, lc0 = _setup(lstm, rng, dtype=np.float32)
    with pytest.raises(ValueError, match="`cell` must be a vanilla RNN.*lstm"):
        pascanu_bound(lstm, lp, lxs, lc0)


# ------------------------------------------------------------------------- bad inputs


def _vanilla_setup(rng):
    cell = CELLS["vanilla_tanh"]
    params, xs, c0 = _setup(cell, rng, dtype=np.float32)
    return cell, params, xs, c0


ANALYZERS = {
    "step_jacobians": lambda c, p, x, s: rnn_step_jacobians(c, p, x, s),
    "products": lambda c, p, x, s: rnn_jacobian_products(c, p, x, s),
    "products_parallel": lambda c, p, x, s: rnn_jacobian_products(
        c, p, x, s, parallel=True
    ),
    "grad_norms": lambda c, p, x, s: rnn_grad_norms(c, p, x, s, jnp.sum),
    "lyapunov": lambda c, p, x, s: lyapunov_spectrum(c, p, x, s),
    "pascanu": lambda c, p, x, s: pascanu_bound(c, p, x, s),
}


@pytest.mark.parametrize("fn", list(ANALYZERS))
def test_bad_cell_xs_and_carry_rejected(fn, rng):
    f = ANALYZERS[fn]
    cell, params, xs, c0 = _vanilla_setup(rng)
    with pytest.raises(ValueError, match="`cell`"):
        f(object(), params, xs, c0)
    with pytest.raises(ValueError, match="`cell`"):
        f(tuple(cell), params, xs, c0)  # same fields, not a Cell
    with pytest.raises(ValueError, match="`xs`"):
        f(cell, params, xs[0], c0)  # (D,)
    with pytest.raises(ValueError, match="`xs`.*rank"):
        f(cell, params, xs[None], c0)  # (B, T, D)
    with pytest.raises(ValueError, match="`xs` must have at least one time step"):
        f(cell, params, xs[:0], c0)  # T = 0
    with pytest.raises(ValueError, match="`xs`"):
        f(cell, params, xs[:, :2], c0)  # wrong input size
    with pytest.raises(ValueError, match="`carry0`"):
        f(cell, params, xs, c0[:3])  # wrong shape
    with pytest.raises(ValueError, match="`carry0`"):
        f(cell, params, xs, jnp.stack([c0, c0]))  # a batch of carries


@pytest.mark.parametrize("fn", ["step_jacobians", "grad_norms", "lyapunov"])
def test_lstm_carry_structure_rejected(fn, rng):
    f = ANALYZERS[fn]
    cell = CELLS["lstm"]
    params, xs, c0 = _setup(cell, rng, dtype=np.float32)
    with pytest.raises(ValueError, match="`carry0` must be an LSTMState"):
        f(cell, params, xs, c0.h)  # an array for an LSTM
    with pytest.raises(ValueError, match="`carry0` must be an LSTMState"):
        f(cell, params, xs, (c0.h, c0.c))  # a plain tuple
    with pytest.raises(ValueError, match="`carry0` leaves"):
        f(cell, params, xs, LSTMState(c0.h[:2], c0.c))


def test_lyapunov_k_and_warmup_rejected(rng):
    cell, params, xs, c0 = _vanilla_setup(rng)
    with pytest.raises(ValueError, match="`k` must be at most the state size n = 4"):
        lyapunov_spectrum(cell, params, xs, c0, k=H + 1)
    for k in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="`k`"):
            lyapunov_spectrum(cell, params, xs, c0, k=k)
    for w in (T, T + 5, -1, 1.5):
        with pytest.raises(ValueError, match="`warmup`"):
            lyapunov_spectrum(cell, params, xs, c0, warmup=w)
    lstm = CELLS["lstm"]
    lp, lxs, lc0 = _setup(lstm, rng, dtype=np.float32)
    # n = 2H for the LSTM, so k = 2H is allowed and 2H + 1 is not.
    assert lyapunov_spectrum(lstm, lp, lxs, lc0, k=2 * H).exponents.shape == (2 * H,)
    with pytest.raises(ValueError, match="`k`"):
        lyapunov_spectrum(lstm, lp, lxs, lc0, k=2 * H + 1)


def test_lyapunov_bool_warmup_rejected(rng):
    cell, params, xs, c0 = _vanilla_setup(rng)
    with pytest.raises(ValueError, match="`warmup`"):
        lyapunov_spectrum(cell, params, xs, c0, warmup=True)


def test_pascanu_rejects_gru(rng):
    cell = CELLS["gru_before"]
    params, xs, c0 = _setup(cell, rng, dtype=np.float32)
    with pytest.raises(ValueError, match="`cell` must be a vanilla RNN.*gru"):
        pascanu_bound(cell, params, xs, c0)


# ------------------------------------------------------------------------- non-finite


def _exploding_relu(getkey, rng):
    Hl, Tl = 8, 60
    cell = jgrad.rnn.vanilla(Hl, "relu", weight_var=1e4, bias_var=1.0)
    params = cell.init(getkey(), D)
    xs = jnp.asarray(rng.normal(1.0, 1.0, (Tl, D)), jnp.float32)
    c0 = jnp.asarray(np.abs(rng.normal(0, 0.5, (Hl,))) + 0.1, jnp.float32)
    return cell, params, xs, c0


def test_overflow_warns_naming_first_nonfinite_step(getkey, rng):
    cell, params, xs, c0 = _exploding_relu(getkey, rng)
    # Reference: the same recursion in float64 NumPy; float32 overflows at the first step
    # whose largest |state| exceeds float32's maximum.
    w_ih, w_hh, b = (np.asarray(params[k], np.float64) for k in ("w_ih", "w_hh", "b"))
    h, first = np.asarray(c0, np.float64), None
    for t in range(xs.shape[0]):
        h = np.maximum(np.asarray(xs[t], np.float64) @ w_ih + b + h @ w_hh, 0.0)
        if np.abs(h).max() > np.finfo(np.float32).max:
            first = t + 1
            break
    assert first is not None and first < xs.shape[0]
    with pytest.warns(NonFiniteWarning, match=rf"at step {first}\b") as rec:
        jac = rnn_step_jacobians(cell, params, xs, c0)
    assert any("rnn_step_jacobians" in str(r.message) for r in rec)
    assert np.all(np.isfinite(np.asarray(jac[: first - 1])))
    assert np.all(np.isnan(np.asarray(jac[first:])))
    # rnn_grad_norms reports the same first non-finite step, as a warning and as data.
    with pytest.warns(
        NonFiniteWarning,
        match=rf"rnn_grad_norms: the forward pass went non-finite .* at step {first}\b",
    ):
        flow = rnn_grad_norms(cell, params, xs, c0, lambda ys: jnp.sum(ys[-1]))
    assert int(flow.nonfinite.forward) == first
    assert not np.any(np.asarray(flow.log10_norm) == -np.inf)


def test_no_warning_for_finite_run_and_under_jit(getkey, rng):
    fcell, fp, fxs, fc0 = _vanilla_setup(rng)
    cell, params, xs, c0 = _exploding_relu(getkey, rng)

    def f(p, x, c):
        _, _, carries = jgrad.rnn.unroll(cell, p, x, c, return_carries=True)
        return rnn_step_jacobians(cell, p, x, c), carries

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnn_step_jacobians(fcell, fp, fxs, fc0)
        # Under jit the values are returned, non-finite states and all, without a warning.
        jac, carries = jax.jit(f)(params, xs, c0)
    assert not np.all(np.isfinite(np.asarray(carries)))
    with pytest.warns(NonFiniteWarning, match="step"):
        eager = rnn_step_jacobians(cell, params, xs, c0)
    np.testing.assert_array_equal(np.asarray(jac), np.asarray(eager))


# ----------------------------------------------------------------------------- jit


def test_jit_matches_eager(rng):
    """Eager runs op by op (slow to compile on CPU), so one small cell."""
    cell = CELLS["vanilla_tanh"]
    with jax.enable_x64(True):
        params, xs, c0 = _setup(cell, rng, T=6)
        eager = rnn_jacobian_products(cell, params, xs, c0)
        jitted = _jit(rnn_jacobian_products, cell)(params, xs, c0)
        for a, b in zip(eager, jitted, strict=True):
            np.testing.assert_allclose(
                np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-13
            )
        eager = lyapunov_spectrum(cell, params, xs, c0, k=3, warmup=2)
        jitted = _jit(lyapunov_spectrum, cell, k=3, warmup=2)(params, xs, c0)
        np.testing.assert_allclose(
            np.asarray(jitted.exponents), np.asarray(eager.exponents), rtol=1e-10
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vanilla_tanh", "lstm"])
def test_parallel_products_eager_matches_jit(name, rng):
    """The associative scan eagerly (many small compiles on CPU) equals its jit."""
    cell = CELLS[name]
    with jax.enable_x64(True):
        params, xs, c0 = _setup(cell, rng, T=7)
        eager = rnn_jacobian_products(cell, params, xs, c0, parallel=True)
        jitted = _jit(rnn_jacobian_products, cell, parallel=True)(params, xs, c0)
        seq = _jit(rnn_jacobian_products, cell)(params, xs, c0)
    for a, b, c in zip(eager, jitted, seq, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("parallel", [False, True])
def test_float64_accumulation_of_a_float32_cell(parallel, rng):
    """float32 cell, products accumulated in float64: equal to the float64 NumPy products
    of the same float32 step Jacobians; the Lyapunov sums come out in float64 and their
    total is the mean log|det| of those Jacobians."""
    cell = CELLS["lstm"]
    with jax.enable_x64(True):
        params, xs, c0 = _setup(cell, rng, T=40, dtype=np.float32, wscale=1.5)
        jac32, prods = jax.jit(
            lambda p, x, c: (
                rnn_step_jacobians(cell, p, x, c),
                rnn_jacobian_products(
                    cell, p, x, c, parallel=parallel, accumulate="float64"
                ),
            )
        )(params, xs, c0)
        assert jac32.dtype == jnp.float32
        jac32 = np.asarray(jac32, np.float64)
        lyap = jax.jit(
            lambda p, x, c: lyapunov_spectrum(cell, p, x, c, accumulate="float64")
        )(params, xs, c0).exponents
        vals = np.asarray(prods.value())
    assert jac32.shape[0] == 40 and prods.matrix.dtype == jnp.float64
    assert lyap.dtype == jnp.float64
    ref = np.eye(jac32.shape[1])
    for t in range(39, -1, -1):  # d s_T / d s_t = J_T ... J_{t+1}
        ref = ref @ jac32[t]
        np.testing.assert_allclose(
            vals[t], ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max()
        )
    logdet = np.linalg.slogdet(jac32)[1]
    # the JVPs run in float32 (1e-7 relative per step); the float64 sum adds nothing
    np.testing.assert_allclose(np.sum(np.asarray(lyap)), logdet.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="`accumulate`"):
        rnn_jacobian_products(cell, params, xs, c0, accumulate="half")


def test_float64_params_with_a_float32_carry(rng):
    """The default init_carry() is float32; with float64 params the analyzers cast it to
    float64 (as unroll does) and give the same numbers as a hand-cast carry."""
    cell = CELLS["lstm"]
    with jax.enable_x64(True):
        params, xs, c0 = _setup(cell, rng, T=12)
        c32 = jax.tree.map(lambda a: a.astype(jnp.float32), c0)
        c64 = jax.tree.map(lambda a: a.astype(jnp.float64), c32)
        for fn in (
            rnn_step_jacobians,
            lambda *args: lyapunov_spectrum(*args).exponents,
        ):
            a, b = fn(cell, params, xs, c32), fn(cell, params, xs, c64)
            assert a.dtype == jnp.float64
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
