"""jgrad.rnn cells and drivers against independent references.

References: a Python loop over ``cell.step`` (with the input projection applied per step, not
hoisted), the docstring formulas written out in NumPy (float64 for the 1e-12 check),
``unroll`` on the unpadded prefix of a padded sequence, per-item runs for jit/vmap,
``jax.jacrev`` for forward mode, and backpropagation through time written by hand (with
``jax.vjp`` of one step) for gradients with and without clip-through-time. Inputs, initial
carries and parameters are random (never ones or zeros) so that a swapped gate, a dropped
bias or a mixed-up time index changes the numbers.

Compilation dominates the run time on CPU, so the jitted drivers are cached per cell and
option set for the whole module, and the references run op by op (NumPy, or JAX ops that
compile once per shape).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad.rnn import LSTMState

RTOL, ATOL = 1e-5, 1e-5
T, IN, H = 9, 3, 5

# One instance per cell for the whole module, so jitted drivers are compiled once per cell
# and option set (see _run) rather than once per test.
CELLS = {
    "vanilla_tanh": jgrad.rnn.vanilla(H, "tanh", bias_var=0.3),
    "vanilla_relu": jgrad.rnn.vanilla(H, "relu", bias_var=0.3, weight_var=0.8),
    "lstm": jgrad.rnn.lstm(H),
    "gru_after": jgrad.rnn.gru(H, reset_after=True),
    "gru_before": jgrad.rnn.gru(H, reset_after=False),
}


def _key(seed):
    """A cheap-to-compile key for ``init`` (rbg is much faster than threefry on CPU)."""
    return jax.random.key(seed, impl="rbg")


def _randn(rng, shape, scale=1.0, loc=0.0):
    return jnp.asarray(rng.normal(loc, scale, shape), jnp.float32)


def _np(tree):
    """Device arrays to NumPy (slicing NumPy arrays compiles nothing)."""
    return jax.tree.map(np.asarray, tree)


def _perturb(params, rng, scale=0.3):
    """Adds random values so zero-initialised biases (and b_hh of the GRU) matter."""
    return jax.tree.map(
        lambda a: jnp.asarray(
            np.asarray(a) + rng.normal(0, scale, a.shape), jnp.float32
        ),
        params,
    )


def _random_params(cell, rng, in_dim=IN):
    """Params of the right structure filled with random values (weights ~ 1/sqrt(fan_in),
    biases ~ 0.3): the equivalence tests need no particular init, and this compiles
    nothing."""
    shapes = jax.eval_shape(lambda k: cell.init(k, in_dim), _key(0))

    def fill(s):
        scale = 1.0 / np.sqrt(s.shape[0]) if len(s.shape) == 2 else 0.3
        return _randn(rng, s.shape, scale)

    return jax.tree.map(fill, shapes)


def _random_carry(cell, rng, batch_shape=()):
    shapes = jax.eval_shape(lambda: cell.init_carry(batch_shape))
    return jax.tree.map(lambda s: _randn(rng, s.shape, 0.5), shapes)


def _setup(name, rng, in_dim=IN):
    cell = CELLS[name]
    return cell, _random_params(cell, rng, in_dim), _random_carry(cell, rng)


def _loop_impl(cell, params, xs, carry0, reverse=False):
    """Reference: a Python loop over ``step`` with the input projection of each step done
    inside the loop. Returns ``(final, ys, carries)`` with time in input order."""
    n = xs.shape[0]
    ys, carries = [None] * n, [None] * n
    carry = carry0
    for t in reversed(range(n)) if reverse else range(n):
        carry, y = cell.step(params, carry, cell.input_proj(params, xs[t]))
        ys[t], carries[t] = y, carry
    return carry, jnp.stack(ys), jax.tree.map(lambda *a: jnp.stack(a), *carries)


def _loop(cell, params, xs, carry0, reverse=False):
    """The reference loop, run op by op (every op compiles once per shape for the whole
    module, which is much cheaper than compiling a new program per test); NumPy out."""
    return _np(_loop_impl(cell, params, xs, carry0, reverse))


def _close(a, b, rtol=RTOL, atol=ATOL):
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


# ------------------------------------------------------- the step against its docstring


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _formula_step(name, p, carry, x):
    """The docstrings' formulas in NumPy float64, independent of jgrad's code."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    if name.startswith("vanilla"):
        h = np.asarray(carry, np.float64)
        z = x @ p["w_ih"] + p["b"] + h @ p["w_hh"]
        h = np.tanh(z) if name == "vanilla_tanh" else np.maximum(z, 0.0)
        return h, h
    if name == "lstm":
        h, c = (np.asarray(a, np.float64) for a in carry)
        z = x @ p["w_ih"] + h @ p["w_hh"] + p["b"]
        i, f, g, o = z[:H], z[H : 2 * H], z[2 * H : 3 * H], z[3 * H :]
        c = _sig(f) * c + _sig(i) * np.tanh(g)
        h = _sig(o) * np.tanh(c)
        return (h, c), h
    h = np.asarray(carry, np.float64)
    wi = [p["w_ih"][:, k * H : (k + 1) * H] for k in range(3)]
    wh = [p["w_hh"][:, k * H : (k + 1) * H] for k in range(3)]
    bi = [p["b_ih"][k * H : (k + 1) * H] for k in range(3)]
    bh = [p["b_hh"][k * H : (k + 1) * H] for k in range(3)]
    r = _sig(x @ wi[0] + bi[0] + h @ wh[0] + bh[0])
    z = _sig(x @ wi[1] + bi[1] + h @ wh[1] + bh[1])
    if name == "gru_after":
        n = np.tanh(x @ wi[2] + bi[2] + r * (h @ wh[2] + bh[2]))
    else:
        n = np.tanh(x @ wi[2] + bi[2] + (r * h) @ wh[2] + bh[2])
    h = (1 - z) * n + z * h
    return h, h


_CACHE = {}


def _cached(kind, cell, kw, make):
    """One compiled function per (kind, cell, options) for the whole module. The entry
    keeps ``cell`` alive, so its ``id`` cannot be reused by another cell."""
    key = (kind, id(cell), tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = (cell, make())
    return _CACHE[key][1]


def _run(cell, *, reverse=False, unroll=1, seq_length=None, return_carries=False):
    """``unroll`` jitted, compiled once per cell and option set: it always returns the
    carries, and a ``seq_length`` is a traced argument, so all lengths share a program."""
    masked = seq_length is not None

    def make():
        def f(p, x, c, n):
            return jgrad.rnn.unroll(
                cell,
                p,
                x,
                c,
                return_carries=True,
                reverse=reverse,
                unroll=unroll,
                seq_length=n if masked else None,
            )

        return jax.jit(f)

    fn = _cached("run", cell, dict(reverse=reverse, unroll=unroll, masked=masked), make)
    n = jnp.asarray(seq_length if masked else 0, jnp.int32)
    return lambda p, x, c: fn(p, x, c, n)[: 3 if return_carries else 2]


def _loss_grad(cell, **kw):
    """Jitted ``(final, ys), grads``: ``unroll``'s outputs and the gradient w.r.t.
    ``(params, xs, carry0)`` of ``L = sum(w * ys**2)``, in one program."""

    def f(p, x, c, w):
        out, pull = jax.vjp(lambda *a: jgrad.rnn.unroll(cell, *a, **kw), p, x, c)
        final, ys = out
        return out, pull((jax.tree.map(jnp.zeros_like, final), 2.0 * w * ys))

    return _cached("grad", cell, kw, lambda: jax.jit(f))


def _at(tree, i):
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def _maxdiff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.parametrize("name", list(CELLS))
def test_step_matches_docstring_formula(rng, name):
    cell, params, carry0 = _setup(name, rng)
    xs = _randn(rng, (T, IN))
    final, ys = _np(_run(cell)(params, xs, carry0))
    carry = (carry0.h, carry0.c) if name == "lstm" else carry0
    ref_ys = []
    for t in range(T):
        carry, y = _formula_step(name, params, carry, np.asarray(xs)[t])
        ref_ys.append(y)
    np.testing.assert_allclose(ys, np.stack(ref_ys), rtol=1e-5, atol=1e-5)
    if name == "lstm":
        np.testing.assert_allclose(final.h, carry[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(final.c, carry[1], rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(final, carry, rtol=1e-5, atol=1e-5)


def test_gru_reset_placement_matters(rng):
    """The two GRU variants share params but differ (so the test above can tell them
    apart)."""
    _, params, h0 = _setup("gru_after", rng)
    xs = _randn(rng, (T, IN))
    _, ya = _run(CELLS["gru_after"])(params, xs, h0)
    _, yb = _run(CELLS["gru_before"])(params, xs, h0)
    assert _maxdiff(ya, yb) > 1e-3


# ---------------------------------------------------------- unroll == Python loop


def _check_against_loop(rng, name, reverse, unroll):
    """Outputs, every carry and the final carry of ``unroll`` equal the Python loop's."""
    cell, params, carry0 = _setup(name, rng)
    xs = _randn(rng, (T, IN), loc=0.2)
    run = _run(cell, return_carries=True, reverse=reverse, unroll=unroll)
    final, ys, carries = _np(run(params, xs, carry0))
    r_final, r_ys, r_carries = _loop(cell, params, xs, carry0, reverse=reverse)
    chex.assert_shape(ys, (T, H))
    _close(ys, r_ys)
    _close(carries, r_carries)
    _close(final, r_final)
    # The final carry is the one after the last step processed.
    last = 0 if reverse else T - 1
    _close(final, _at(carries, last))
    if name == "lstm":
        assert isinstance(final, LSTMState)
        _close(carries.h, ys)


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_unroll_matches_python_loop_every_step(rng, name, reverse):
    _check_against_loop(rng, name, reverse, unroll=1)


@pytest.mark.parametrize("name", ["lstm", "gru_before"])
def test_unroll4_reverse_matches_python_loop_every_step(rng, name):
    # unroll=4 does not divide T=9: the scan's remainder steps are exercised too.
    _check_against_loop(rng, name, reverse=True, unroll=4)
    # The factor reaches lax.scan (values alone cannot show it).
    cell, params, c0 = _setup(name, rng)
    jaxpr = jax.make_jaxpr(lambda x: jgrad.rnn.unroll(cell, params, x, c0, unroll=4))(
        _randn(rng, (T, IN))
    )
    assert "unroll=4" in str(jaxpr)


def test_unroll_eager_and_unroll_true(rng):
    cell, params, c0 = _setup("lstm", rng)
    xs = _randn(rng, (T, IN))
    ref = _loop(cell, params, xs, c0)
    _close(jgrad.rnn.unroll(cell, params, xs, c0), ref[:2])
    _close(_run(cell, unroll=True)(params, xs, c0), ref[:2])


@pytest.mark.parametrize("name", list(CELLS))
def test_unroll_float64_matches_float64_loop(name):
    """In float64 the scan and a Python loop of the docstring formulas (NumPy float64,
    one step at a time) agree to 1e-12: any difference beyond rounding is a bug."""
    rng = np.random.default_rng(7)
    cell = CELLS[name]
    shapes = jax.eval_shape(lambda k: cell.init(k, IN), _key(0))
    params = jax.tree.map(lambda s: rng.normal(0, 0.6, s.shape), shapes)
    carry0 = jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape), cell.init_carry())
    xs = rng.normal(0.1, 1.0, (T, IN))
    with jax.enable_x64(True):
        final, ys, carries = _np(
            _run(cell, return_carries=True)(
                jax.tree.map(jnp.asarray, params),
                jnp.asarray(xs),
                jax.tree.map(jnp.asarray, carry0),
            )
        )
    assert ys.dtype == np.float64

    def flat(c):  # LSTMState(h, c) or the formula's (h, c) or an array -> one vector
        return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tuple(c))])

    carry = (carry0.h, carry0.c) if name == "lstm" else carry0
    for t in range(T):
        carry, y = _formula_step(name, params, carry, xs[t])
        np.testing.assert_allclose(ys[t], y, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            flat(_at(carries, t)), flat(carry), rtol=1e-12, atol=1e-12
        )
    np.testing.assert_allclose(flat(final), flat(carry), rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------- padded sequences


def _padded(rng, xs_real, total):
    """Pads with large random values: padding must not leak into anything."""
    pad = rng.normal(0, 50.0, (total - xs_real.shape[0], xs_real.shape[1]))
    return jnp.asarray(np.concatenate([np.asarray(xs_real), pad]), jnp.float32)


@pytest.mark.parametrize("name", list(CELLS))
def test_seq_length_matches_unpadded_run(rng, name):
    cell, params, c0 = _setup(name, rng)
    L = 5
    xs_real = _randn(rng, (L, IN))
    xs = _padded(rng, xs_real, T)
    run = _run(cell, seq_length=L, return_carries=True)
    final, ys, carries = _np(run(params, xs, c0))
    r_final, r_ys, r_carries = _loop(cell, params, xs_real, c0)
    _close(ys[:L], r_ys)
    np.testing.assert_array_equal(ys[L:], 0.0)
    _close(final, r_final)
    _close(_at(carries, slice(0, L)), r_carries)
    # Padded steps carry the last real carry along unchanged.
    for t in range(L, T):
        chex.assert_trees_all_equal(_at(carries, t), final)
    # Other padding gives identical results.
    final2, ys2, _ = run(params, _padded(rng, xs_real, T), c0)
    chex.assert_trees_all_equal((final, ys), _np((final2, ys2)))


@pytest.mark.parametrize("name", ["lstm", "gru_after", "vanilla_tanh"])
def test_seq_length_reverse_matches_unpadded_reverse(rng, name):
    cell, params, c0 = _setup(name, rng)
    L = 4
    xs_real = _randn(rng, (L, IN))
    xs = _padded(rng, xs_real, T)
    final, ys = _np(_run(cell, seq_length=L, reverse=True)(params, xs, c0))
    r_final, r_ys, _ = _loop(cell, params, xs_real, c0, reverse=True)
    _close(ys[:L], r_ys)
    np.testing.assert_array_equal(ys[L:], 0.0)
    _close(final, r_final)
    # A reverse pass that started at T-1 would differ: the padding does reach it.
    _, ys_full = _run(cell, reverse=True)(params, xs, c0)
    assert _maxdiff(np.asarray(ys_full)[:L], r_ys) > 1e-3


def test_seq_length_full_and_zero(rng):
    cell, params, c0 = _setup("gru_after", rng)
    xs = _randn(rng, (T, IN))
    _close(_run(cell, seq_length=T)(params, xs, c0), _loop(cell, params, xs, c0)[:2])
    final, ys = _run(cell, seq_length=0)(params, xs, c0)
    chex.assert_trees_all_equal(final, c0)
    np.testing.assert_array_equal(ys, 0.0)


@pytest.mark.parametrize("name", ["lstm", "gru_after", "vanilla_relu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_seq_length_under_vmap_per_sequence(rng, name, reverse):
    cell, params, _ = _setup(name, rng)
    lengths = [3, 7, 5]
    reals = [_randn(rng, (n, IN)) for n in lengths]
    xs = jnp.stack([_padded(rng, x, T) for x in reals])
    c0 = _random_carry(cell, rng, (3,))
    run = jax.jit(
        jax.vmap(
            lambda x, c, n: jgrad.rnn.unroll(
                cell, params, x, c, seq_length=n, reverse=reverse
            )
        )
    )
    finals, ys = _np(run(xs, c0, jnp.asarray(lengths)))
    assert sorted(lengths) == [3, 5, 7]
    for b, (n, x) in enumerate(zip(lengths, reals, strict=True)):
        r_final, r_ys, _ = _loop(cell, params, x, _at(c0, b), reverse=reverse)
        _close(ys[b, :n], r_ys)
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        _close(_at(finals, b), r_final)


@pytest.mark.parametrize("name", ["lstm"])
def test_seq_length_gradients_match_unpadded(rng, name):
    cell, params, c0 = _setup(name, rng)
    L = 6
    xs_real = _randn(rng, (L, IN))
    xs = _padded(rng, xs_real, T)
    w = _randn(rng, (T, H))

    def loss(p, x, n):
        final, ys = jgrad.rnn.unroll(cell, p, x, c0, seq_length=n)
        h = final.h if name == "lstm" else final
        return jnp.sum(w[: x.shape[0]] * ys**2) + jnp.sum(h)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    gp, gx = _np(grad(params, xs, L))
    rp, rx = grad(params, xs_real, None)
    _close(gp, rp)
    _close(gx[:L], rx)
    np.testing.assert_array_equal(gx[L:], 0.0)


# ------------------------------------------------------------------ jit and vmap


def test_jit_compiles_once(rng):
    cell, params, c0 = _setup("lstm", rng)
    run = jax.jit(
        chex.assert_max_traces(n=1)(lambda p, x: jgrad.rnn.unroll(cell, p, x, c0))
    )
    for _ in range(3):
        xs = _randn(rng, (T, IN))
        _close(run(params, xs), _loop(cell, params, xs, c0)[:2])


@pytest.mark.parametrize("name", ["vanilla_tanh", "lstm", "gru_after"])
def test_vmap_over_batch_equals_per_item(rng, name):
    cell, params, _ = _setup(name, rng)
    B = 4
    xs = _randn(rng, (B, T, IN))
    c0 = _random_carry(cell, rng, (B,))
    batched = jax.jit(jax.vmap(lambda x, c: jgrad.rnn.unroll(cell, params, x, c)))
    finals, ys = _np(batched(xs, c0))
    chex.assert_shape(ys, (B, T, H))
    for b in range(B):
        r_final, r_ys, _ = _loop(cell, params, np.asarray(xs)[b], _at(c0, b))
        _close(ys[b], r_ys)
        _close(_at(finals, b), r_final)


@pytest.mark.parametrize("name", ["vanilla_relu", "lstm"])
def test_vmap_over_ensemble_of_params(rng, name):
    cell = CELLS[name]
    E = 3
    if name == "lstm":
        # Random members (the LSTM's orthogonal init is slow to compile under vmap).
        members = [_random_params(cell, rng) for _ in range(E)]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    else:
        keys = jax.random.split(_key(11), E)
        stacked = _perturb(jax.jit(jax.vmap(lambda k: cell.init(k, IN)))(keys), rng)
    xs = _randn(rng, (T, IN))
    c0 = _random_carry(cell, rng)
    ens = jax.jit(jax.vmap(lambda p: jgrad.rnn.unroll(cell, p, xs, c0)))
    finals, ys = _np(ens(stacked))
    outs = []
    for e in range(E):
        r_final, r_ys, _ = _loop(cell, _at(stacked, e), xs, c0)
        _close(ys[e], r_ys)
        _close(_at(finals, e), r_final)
        outs.append(r_ys)
    # The ensemble members really differ (keys were not reused).
    assert _maxdiff(outs[0], outs[1]) > 1e-3


# ------------------------------------------------------------------- derivatives


def _manual_bptt(cell, params, xs, c0, w, threshold=None, mode="value"):
    """Backpropagation through time by hand for L = sum_t sum_j w[t, j] y_t[j]^2.

    Forward: a Python loop over the step (input projection inside). Backward, from t = T-1
    down to 0: the total dL/ds_t is the cotangent from step t+1 plus y_t's 2 w_t y_t (into
    h); with a ``threshold`` it is clipped (elementwise, or the whole carry's norm), then
    pulled back through step t with ``jax.vjp``. Returns grads w.r.t. (params, xs, c0).
    """
    n = xs.shape[0]

    def step_fn(p, c, x):
        return cell.step(p, c, cell.input_proj(p, x))

    carries, ys = [c0], []
    for t in range(n):
        c, y = step_fn(params, carries[-1], xs[t])
        carries.append(c)
        ys.append(y)

    def clip(g):
        if threshold is None:
            return g
        if mode == "value":
            return jax.tree.map(lambda a: jnp.clip(a, -threshold, threshold), g)
        norm = jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree.leaves(g)))
        scale = jnp.minimum(1.0, threshold / norm)
        return jax.tree.map(lambda a: a * scale, g)

    g_params = jax.tree.map(jnp.zeros_like, params)
    g_xs = [None] * n
    g_carry = jax.tree.map(jnp.zeros_like, c0)
    for t in reversed(range(n)):
        dy = 2.0 * w[t] * ys[t]
        if isinstance(g_carry, LSTMState):
            total = LSTMState(h=g_carry.h + dy, c=g_carry.c)
        else:
            total = g_carry + dy
        _, pull = jax.vjp(
            lambda p, c, x: step_fn(p, c, x)[0], params, carries[t], xs[t]
        )
        gp, g_carry, g_xs[t] = pull(clip(total))
        g_params = jax.tree.map(jnp.add, g_params, gp)
    return _np((g_params, jnp.stack(g_xs), g_carry))


@pytest.mark.parametrize("name", list(CELLS))
def test_grad_matches_manual_bptt(rng, name):
    cell, params, c0 = _setup(name, rng)
    xs = _randn(rng, (T, IN))
    w = _randn(rng, (T, H))
    g = _np(_loss_grad(cell)(params, xs, c0, w)[1])
    _close(g, _manual_bptt(cell, params, xs, c0, w), rtol=1e-4, atol=1e-6)
    chex.assert_tree_all_finite(g)
    assert min(float(np.max(np.abs(a))) for a in jax.tree.leaves(g)) > 1e-3


@pytest.mark.parametrize("name", list(CELLS))
def test_jacfwd_equals_jacrev(rng, name):
    cell, params, c0 = _setup(name, rng)
    n = 6
    xs = _randn(rng, (n, IN))

    def f(x):
        return jgrad.rnn.unroll(cell, params, x, c0)[1]

    jf, jr = _np(jax.jit(lambda x: (jax.jacfwd(f)(x), jax.jacrev(f)(x)))(xs))
    chex.assert_shape(jf, (n, H, n, IN))
    np.testing.assert_allclose(jf, jr, rtol=1e-5, atol=1e-6)
    # Causality: y_t does not depend on x_s for s > t, and does on x_0.
    for t in range(n):
        np.testing.assert_array_equal(jf[t, :, t + 1 :], 0.0)
    assert float(np.max(np.abs(jf[n - 1, :, 0]))) > 1e-6


# ------------------------------------------------------------------ initialisation


def test_irnn_identity_init():
    p = jgrad.rnn.vanilla(8, "relu", w_hh_init="identity").init(_key(1), 3)
    np.testing.assert_array_equal(p["w_hh"], np.eye(8, dtype=np.float32))
    p = jgrad.rnn.vanilla(8, w_hh_init="identity", weight_var=0.25).init(_key(1), 3)
    np.testing.assert_array_equal(p["w_hh"], 0.5 * np.eye(8, dtype=np.float32))
    assert p["w_ih"].shape == (3, 8)


@pytest.mark.parametrize("fb", [1.0, 2.5])
def test_lstm_forget_bias_is_a_parameter_value(fb):
    p = jgrad.rnn.lstm(5, forget_bias=fb).init(_key(2), 3)
    b = np.asarray(p["b"])
    assert b.shape == (20,)
    np.testing.assert_array_equal(b[5:10], fb)
    np.testing.assert_array_equal(np.delete(b, np.s_[5:10]), 0.0)
    assert p["w_ih"].shape == (3, 20) and p["w_hh"].shape == (5, 20)


def test_lstm_forget_bias_acts_through_params_only(rng):
    """Two cells differing only in forget_bias give equal outputs on the same params, and
    their initial params differ exactly in the forget block."""
    a, b = CELLS["lstm"], jgrad.rnn.lstm(H, forget_bias=3.0)
    assert a.options["forget_bias"] == 1.0
    pa, pb = a.init(_key(4), IN), b.init(_key(4), IN)
    np.testing.assert_array_equal(pb["b"] - pa["b"], np.repeat([0, 2.0, 0, 0], H))
    np.testing.assert_array_equal(pb["w_hh"], pa["w_hh"])
    xs, c0 = _randn(rng, (T, IN)), _random_carry(a, rng)
    chex.assert_trees_all_equal(_run(a)(pa, xs, c0), _run(b)(pa, xs, c0))
    assert _maxdiff(_run(a)(pa, xs, c0)[1], _run(a)(pb, xs, c0)[1]) > 1e-3


# ------------------------------------------------------- stacks and bidirectional


def test_unroll_stack_equals_layer_by_layer(rng):
    cells = [jgrad.rnn.gru(6), jgrad.rnn.lstm(4)]
    params = [_random_params(cells[0], rng, IN), _random_params(cells[1], rng, 6)]
    c0s = [_random_carry(c, rng) for c in cells]
    xs = _randn(rng, (T, IN))
    finals, ys, carries = jax.jit(
        lambda p, x, c: jgrad.rnn.unroll_stack(cells, p, x, c, return_carries=True)
    )(params, xs, c0s)
    f1, y1, cs1 = _loop(cells[0], params[0], xs, c0s[0])
    f2, y2, cs2 = _loop(cells[1], params[1], y1, c0s[1])
    chex.assert_shape(ys, (T, 4))
    _close(ys, y2)
    _close(finals, (f1, f2))
    _close(carries, (cs1, cs2))

    # With seq_length and reverse, every layer equals its own unpadded reverse run.
    L = 5
    xs_real = np.asarray(xs)[:L]
    xs_p = _padded(rng, xs_real, T)
    finals, ys = _np(
        jax.jit(
            lambda p, x, c: jgrad.rnn.unroll_stack(
                cells, p, x, c, seq_length=L, reverse=True
            )
        )(params, xs_p, c0s)
    )
    f1, y1, _ = _loop(cells[0], params[0], xs_real, c0s[0], reverse=True)
    f2, y2, _ = _loop(cells[1], params[1], y1, c0s[1], reverse=True)
    _close(ys[:L], y2)
    np.testing.assert_array_equal(ys[L:], 0.0)
    _close(finals, (f1, f2))


def test_unroll_stack_rejects_mismatched_lengths(rng):
    cells = [jgrad.rnn.gru(6), jgrad.rnn.lstm(4)]
    with pytest.raises(ValueError, match="`carries0`"):
        jgrad.rnn.unroll_stack(
            cells, [_random_params(cells[0], rng)], _randn(rng, (T, IN)), []
        )


@pytest.mark.parametrize("seq_length", [None, 6])
def test_bidirectional_equals_forward_and_reverse(rng, seq_length):
    fw, bw = jgrad.rnn.lstm(4), jgrad.rnn.gru(3)
    pf, pb = _random_params(fw, rng), _random_params(bw, rng)
    cf, cb = _random_carry(fw, rng), _random_carry(bw, rng)
    xs = _randn(rng, (T, IN))
    (ff, fb), ys = _np(
        jax.jit(
            lambda x: jgrad.rnn.bidirectional(
                fw, bw, (pf, pb), x, (cf, cb), seq_length=seq_length
            )
        )(xs)
    )
    chex.assert_shape(ys, (T, 7))
    n = T if seq_length is None else seq_length
    xs_real = np.asarray(xs)[:n]
    r_ff, r_yf, _ = _loop(fw, pf, xs_real, cf)
    r_fb, r_yb, _ = _loop(bw, pb, xs_real, cb, reverse=True)
    _close(ys[:n], np.concatenate([r_yf, r_yb], axis=-1))
    np.testing.assert_array_equal(ys[n:], 0.0)
    _close((ff, fb), (r_ff, r_fb))


# ------------------------------------------------------------ clip through time


@pytest.mark.parametrize("name", ["vanilla_tanh", "lstm", "gru_after"])
@pytest.mark.parametrize("mode,threshold", [("value", 1e-3), ("norm", 1e-2)])
def test_clip_through_time_matches_manual_bptt(rng, name, mode, threshold):
    cell, params, c0 = _setup(name, rng)
    xs = _randn(rng, (T, IN))
    w = _randn(rng, (T, H))

    out_clip, g_clip = _np(
        _loss_grad(cell, grad_clip=threshold, grad_clip_mode=mode)(params, xs, c0, w)
    )
    g_ref = _manual_bptt(cell, params, xs, c0, w, threshold, mode)
    _close(g_clip, g_ref, rtol=1e-4, atol=1e-7)
    # The threshold is small enough that clipping changes the gradient a lot.
    out_none, g_none = _np(_loss_grad(cell)(params, xs, c0, w))
    diff = max(
        _maxdiff(a, b)
        for a, b in zip(jax.tree.leaves(g_none), jax.tree.leaves(g_clip), strict=True)
    )
    assert diff > 1e-2
    # Forward values are unchanged.
    chex.assert_trees_all_equal(out_clip, out_none)


@pytest.mark.parametrize(
    "name,mode", [("lstm", "value"), ("lstm", "norm"), ("gru_before", "value")]
)
def test_huge_clip_threshold_changes_nothing(rng, name, mode):
    cell, params, c0 = _setup(name, rng)
    xs = _randn(rng, (T, IN))
    w = _randn(rng, (T, H))
    huge = _loss_grad(cell, grad_clip=1e9, grad_clip_mode=mode)(params, xs, c0, w)
    chex.assert_trees_all_equal(huge, _loss_grad(cell)(params, xs, c0, w))


def test_norm_clip_is_per_sequence_under_vmap(rng):
    """Under vmap over a batch, "norm" clipping rescales each sequence's carry cotangent
    by its own norm: the gradient is the sum of per-sequence clipped BPTT gradients."""
    cell, params, _ = _setup("lstm", rng)
    n = 3
    xs = _randn(rng, (n, T, IN))
    # Different scales per sequence, so a batch-wide norm would give other gradients.
    w = _randn(rng, (n, T, H)) * jnp.asarray([0.2, 1.0, 5.0])[:, None, None]
    c0 = _random_carry(cell, rng, (n,))

    def loss(p):
        run = jax.vmap(
            lambda x, c: jgrad.rnn.unroll(
                cell, p, x, c, grad_clip=1e-2, grad_clip_mode="norm"
            )[1]
        )
        return jnp.sum(w * run(xs, c0) ** 2)

    g = _np(jax.jit(jax.grad(loss))(params))
    per_seq = [
        _manual_bptt(
            cell, params, xs[b], _at(c0, b), w[b], threshold=1e-2, mode="norm"
        )[0]
        for b in range(n)
    ]
    _close(g, jax.tree.map(lambda *a: sum(a), *per_seq), rtol=1e-4, atol=1e-7)


def test_clip_carry_grad_function():
    g = LSTMState(h=jnp.array([3.0, -4.0]), c=jnp.array([0.5, 0.0]))
    carry = LSTMState(h=jnp.array([0.1, 0.2]), c=jnp.array([0.3, 0.4]))

    def pull(thr, mode):
        _, vjp = jax.vjp(lambda c: jgrad.rnn.clip_carry_grad(c, thr, mode), carry)
        return vjp(g)[0]

    chex.assert_trees_all_equal(
        pull(1.0, "value"), LSTMState(h=jnp.array([1.0, -1.0]), c=jnp.array([0.5, 0.0]))
    )
    # ||g|| = sqrt(9 + 16 + 0.25) = sqrt(25.25): the norm is over h and c together.
    scale = 2.0 / np.sqrt(25.25)
    chex.assert_trees_all_close(
        pull(2.0, "norm"),
        LSTMState(h=np.array([3.0, -4.0]) * scale, c=np.array([0.5, 0.0]) * scale),
        rtol=1e-6,
    )
    chex.assert_trees_all_equal(pull(10.0, "norm"), g)


# ------------------------------------------------------------------- bad input


def _bad_setup(rng):
    cell = jgrad.rnn.lstm(4)
    return cell, _random_params(cell, rng, 3), cell.init_carry()


@pytest.mark.parametrize("shape", [(3,), (2, 5, 3)])
def test_bad_rank_names_xs_and_vmap(rng, shape):
    cell, p, c0 = _bad_setup(rng)
    with pytest.raises(ValueError, match="`xs`") as err:
        jgrad.rnn.unroll(cell, p, _randn(rng, shape), c0)
    assert "jax.vmap" in str(err.value)


def _u(*args, **kw):
    return jgrad.rnn.unroll(*args, **kw)


BAD = {
    "T0": (lambda c, p, c0, x: _u(c, p, x[:0], c0), "`xs`.*T = 0"),
    "features": (lambda c, p, c0, x: _u(c, p, x[:, :2], c0), "`xs`.*size 3"),
    "array_for_lstm": (lambda c, p, c0, x: _u(c, p, x, c0.h), "`carry0`.*LSTMState"),
    "flax_order_tuple": (
        lambda c, p, c0, x: _u(c, p, x, (c0.c, c0.h)),
        "`carry0`.*LSTMState",
    ),
    "batched_carry": (
        lambda c, p, c0, x: _u(c, p, x, c.init_carry((2,))),
        r"`carry0`.*\(4,\).*\(2, 4\)",
    ),
    "seq_length_T+1": (
        lambda c, p, c0, x: _u(c, p, x, c0, seq_length=7),
        "`seq_length`",
    ),
    "seq_length_-1": (
        lambda c, p, c0, x: _u(c, p, x, c0, seq_length=-1),
        "`seq_length`",
    ),
    "unroll_0": (lambda c, p, c0, x: _u(c, p, x, c0, unroll=0), "`unroll`"),
    "grad_clip_-1": (lambda c, p, c0, x: _u(c, p, x, c0, grad_clip=-1), "`grad_clip`"),
    "grad_clip_mode": (
        lambda c, p, c0, x: _u(c, p, x, c0, grad_clip=1.0, grad_clip_mode="foo"),
        "`grad_clip_mode`.*value",
    ),
    "plain_tuple_cell": (lambda c, p, c0, x: _u(tuple(c), p, x, c0), "`cell`"),
    "string_cell": (lambda c, p, c0, x: _u("lstm", p, x, c0), "`cell`"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_naming_argument(rng, case):
    call, match = BAD[case]
    cell, p, c0 = _bad_setup(rng)
    xs = _randn(rng, (6, 3))
    with pytest.raises(ValueError, match=match):
        call(cell, p, c0, xs)


def test_bad_carry_for_array_cell(rng):
    cell = jgrad.rnn.gru(4)
    p = _random_params(cell, rng, 3)
    xs = _randn(rng, (6, 3))
    z = jnp.zeros((4,), jnp.float32)
    with pytest.raises(ValueError, match="`carry0`.*an array"):
        jgrad.rnn.unroll(cell, p, xs, LSTMState(h=z, c=z))
    with pytest.raises(ValueError, match=r"`carry0`.*\(4,\).*\(5,\)"):
        jgrad.rnn.unroll(cell, p, xs, jnp.zeros((5,), jnp.float32))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: jgrad.rnn.vanilla(0), "`hidden`"),
        (lambda: jgrad.rnn.lstm(0), "`hidden`"),
        (lambda: jgrad.rnn.gru(-2), "`hidden`"),
        (lambda: jgrad.rnn.vanilla(4, "foo"), "`activation`.*tanh"),
        (lambda: jgrad.rnn.lstm(4).init(_key(0), 0), "`in_dim`"),
    ],
    ids=["vanilla_hidden", "lstm_hidden", "gru_hidden", "activation", "in_dim"],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_seq_length_must_be_an_integer_and_clip_mode_is_always_checked():
    cell = jgrad.rnn.gru(4)
    params = cell.init(jax.random.key(3), 3)
    xs = jax.random.normal(jax.random.key(4), (6, 3))
    for bad in (2.5, 6.5, True, jnp.asarray(2.0)):
        with pytest.raises(ValueError, match="`seq_length` must be an integer"):
            jgrad.rnn.unroll(cell, params, xs, cell.init_carry(), seq_length=bad)
    with pytest.raises(ValueError, match="`grad_clip_mode`"):
        jgrad.rnn.unroll(cell, params, xs, cell.init_carry(), grad_clip_mode="foo")
    sd = jgrad.rnn.to_torch(cell, params)
    assert all(v.flags.writeable for v in sd.values())
