"""unroll_batch (hand-written backward pass) against vmap(unroll) (plain autodiff)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import rnn

B, T, D, H = 3, 9, 4, 5
CELLS = {
    "lstm": lambda: rnn.lstm(H, forget_bias=1.5),
    "gru": lambda: rnn.gru(H),
    "gru_reset_before": lambda: rnn.gru(H, reset_after=False),
    "vanilla_tanh": lambda: rnn.vanilla(H),
    "vanilla_relu": lambda: rnn.vanilla(H, "relu", w_hh_init="identity"),
    "vanilla_gelu": lambda: rnn.vanilla(H, "gelu"),
}
OPTIONS = {
    "plain": {},
    "masked": {"seq_length": np.array([9, 4, 6])},
    "clip_value": {"grad_clip": 0.05},
    "clip_norm_masked": {
        "grad_clip": 0.1,
        "grad_clip_mode": "norm",
        "seq_length": np.array([2, 9, 5]),
    },
}


def _setup(make, key, dtype=jnp.float32):
    cell = make()
    k = jax.random.split(key, 5)
    params = cell.init(k[0], D)
    # Perturb every entry so biases and the forget bias are all non-trivial.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(k[1], len(leaves))
    leaves = [
        a.astype(dtype) + 0.3 * jax.random.normal(kk, a.shape, dtype)
        for a, kk in zip(leaves, keys, strict=True)
    ]
    params = jax.tree.unflatten(tree, leaves)
    xs = jax.random.normal(k[2], (B, T, D), dtype)
    carry0 = jax.tree.map(
        lambda a: 0.5 * jax.random.normal(k[3], a.shape, dtype),
        cell.init_carry((B,)),
    )
    w = jax.random.normal(k[4], (B, T, H), dtype)
    return cell, params, xs, carry0, w


def _losses(cell, w, opts):
    lengths = opts.get("seq_length")
    clip = {k: v for k, v in opts.items() if k.startswith("grad_clip")}

    def head(final, ys):
        return jnp.sum(ys**2 * w) + sum(
            jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(final)
        )

    def ref(params, xs, carry0):
        n = jnp.full((B,), T) if lengths is None else jnp.asarray(lengths)
        final, ys = jax.vmap(
            lambda x, c, n: rnn.unroll(cell, params, x, c, seq_length=n, **clip)
        )(xs, carry0, n)
        return head(final, ys)

    def fast(params, xs, carry0):
        return head(*rnn.unroll_batch(cell, params, xs, carry0, **opts))

    return ref, fast


@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("name", list(CELLS))
def test_gradients_equal_plain_autodiff(name, opt, getkey):
    cell, params, xs, carry0, w = _setup(CELLS[name], getkey())
    ref, fast = _losses(cell, w, OPTIONS[opt])
    # The loss sums terms of both signs: compare on the scale of its largest term.
    np.testing.assert_allclose(
        float(jax.jit(fast)(params, xs, carry0)),
        float(ref(params, xs, carry0)),
        rtol=1e-6,
        atol=1e-5,
    )
    g_ref = jax.grad(ref, argnums=(0, 1, 2))(params, xs, carry0)
    g_fast = jax.jit(jax.grad(fast, argnums=(0, 1, 2)))(params, xs, carry0)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_fast), strict=True):
        np.testing.assert_allclose(
            b, a, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(a)))
        )


@pytest.mark.parametrize("name", ["lstm", "gru", "vanilla_tanh"])
def test_gradients_equal_in_float64(name, getkey):
    key = getkey()
    with jax.enable_x64(True):
        cell, params, xs, carry0, w = _setup(CELLS[name], key, jnp.float64)
        ref, fast = _losses(cell, w, OPTIONS["masked"])
        g_ref = jax.grad(ref)(params, xs, carry0)
        g_fast = jax.grad(fast)(params, xs, carry0)
        for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_fast), strict=True):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-13)


def test_clipping_changes_gradients_but_not_values(getkey):
    cell, params, xs, carry0, w = _setup(CELLS["lstm"], getkey())
    _, plain = _losses(cell, w, {})
    _, clipped = _losses(cell, w, {"grad_clip": 1e-3})
    assert float(plain(params, xs, carry0)) == float(clipped(params, xs, carry0))
    g1 = jax.grad(plain)(params, xs, carry0)["w_hh"]
    g2 = jax.grad(clipped)(params, xs, carry0)["w_hh"]
    assert float(jnp.linalg.norm(g2)) < 0.5 * float(jnp.linalg.norm(g1))


def test_bad_input(getkey):
    cell = rnn.lstm(H)
    params = cell.init(getkey(), D)
    xs = jax.random.normal(getkey(), (B, T, D))
    with pytest.raises(ValueError, match="`xs`.*rank 3.*jgrad.rnn.unroll"):
        rnn.unroll_batch(cell, params, xs[0], cell.init_carry((B,)))
    with pytest.raises(ValueError, match="`carry0`.*init_carry"):
        rnn.unroll_batch(cell, params, xs, cell.init_carry())
    with pytest.raises(ValueError, match="`xs`.*size 4"):
        rnn.unroll_batch(cell, params, xs[..., :3], cell.init_carry((B,)))
    with pytest.raises(ValueError, match="T = 0"):
        rnn.unroll_batch(cell, params, xs[:, :0], cell.init_carry((B,)))


@pytest.mark.parametrize("name", ["lstm", "gru", "gru_reset_before", "vanilla_tanh"])
def test_an_int_seq_length_is_that_length_for_every_sequence(name, getkey):
    cell, params, xs, carry0, _ = _setup(CELLS[name], getkey())
    final_i, ys_i = rnn.unroll_batch(cell, params, xs, carry0, seq_length=5)
    final_a, ys_a = rnn.unroll_batch(
        cell, params, xs, carry0, seq_length=np.full((B,), 5)
    )
    np.testing.assert_array_equal(np.asarray(ys_i), np.asarray(ys_a))
    assert not np.any(np.asarray(ys_i[:, 5:])) and np.all(np.asarray(ys_i[:, :5]) != 0)
    for a, b in zip(jax.tree.leaves(final_i), jax.tree.leaves(final_a), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for bad, match in [(T + 1, r"in \[0, T\] = \[0, 9\], got 10"), (2.5, "an integer")]:
        with pytest.raises(ValueError, match="`seq_length` must be " + match):
            rnn.unroll_batch(cell, params, xs, carry0, seq_length=bad)


@pytest.mark.parametrize("name", ["lstm", "gru", "gru_reset_before", "vanilla_tanh"])
def test_float64_params_with_the_default_float32_carry(name, getkey):
    """cell.init_carry() is float32; with float64 params the step's carry is float64 and
    lax.scan used to reject the pair. Now the carry is cast to the step's dtype: same
    results as casting it by hand, in float64, for unroll and unroll_batch."""
    key = getkey()
    with jax.enable_x64(True):
        cell, params, xs, carry0, _ = _setup(CELLS[name], key, jnp.float64)
        c32 = jax.tree.map(lambda a: a.astype(jnp.float32), carry0)
        c64 = jax.tree.map(lambda a: a.astype(jnp.float32).astype(jnp.float64), c32)
        f_b, ys_b = rnn.unroll_batch(cell, params, xs, c32)
        r_b, rys_b = rnn.unroll_batch(cell, params, xs, c64)
        f_1, ys_1 = rnn.unroll(cell, params, xs[0], jax.tree.map(lambda a: a[0], c32))
        assert ys_b.dtype == jnp.float64 and ys_1.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(ys_b), np.asarray(rys_b))
        for a, b in zip(jax.tree.leaves(f_b), jax.tree.leaves(r_b), strict=True):
            assert a.dtype == jnp.float64
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(ys_1, rys_b[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(CELLS))
def test_unroll_4_the_accelerator_default_gives_the_same_gradients(name, getkey):
    """unroll=4 (the default on GPUs) against vmap(unroll); T = 9 is not a multiple of 4."""
    cell, params, xs, carry0, w = _setup(CELLS[name], getkey())
    ref, fast4 = _losses(cell, w, {"unroll": 4})  # ref ignores the unroll

    g_ref = jax.grad(ref, argnums=(0, 1, 2))(params, xs, carry0)
    g4 = jax.grad(fast4, argnums=(0, 1, 2))(params, xs, carry0)
    np.testing.assert_allclose(
        fast4(params, xs, carry0), ref(params, xs, carry0), rtol=1e-5
    )
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_default_unroll_follows_the_backend(getkey, monkeypatch):
    """unroll=None takes DEFAULT_UNROLL for JAX's default backend (1 on CPU)."""
    from jgrad.rnn import _fast

    cell = rnn.lstm(H)
    params = cell.init(getkey(), D)
    xs = jax.random.normal(getkey(), (B, T, D))

    backend = "cpu" if jax.default_backend() == "cpu" else "accelerator"
    assert _scan_unrolls(cell, params, xs) == {_fast.DEFAULT_UNROLL[backend]}
    monkeypatch.setitem(_fast.DEFAULT_UNROLL, backend, 3)
    assert _scan_unrolls(cell, params, xs) == {3}


def _all_eqns(jaxpr):
    for eq in jaxpr.eqns:
        yield eq
        for v in eq.params.values():
            for sub in v if isinstance(v, (tuple, list)) else [v]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    yield from _all_eqns(getattr(inner, "jaxpr", inner))


def _scan_unrolls(cell, params, xs):
    jaxpr = jax.make_jaxpr(
        lambda p: rnn.unroll_batch(cell, p, xs, cell.init_carry((B,)))[1]
    )(params)
    return {
        eq.params["unroll"]
        for eq in _all_eqns(jaxpr.jaxpr)
        if eq.primitive.name == "scan"
    }


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_scratch_memory_is_the_stored_gates_plus_three_sequences(kind, getkey):
    # unroll=1 writes the backward's results over the stored gates and dL/dy in place
    # (jgrad/rnn/_fast_lstm.py, _fast_gru.py). A copy of the gate buffer per step, a
    # stacked dz or a stacked [x, h] would each add at least B*T*H floats; plain autodiff
    # needs about twice this.
    if jax.default_backend() != "cpu":
        pytest.skip(
            "the in-place layout is measured against XLA's CPU buffer assignment"
        )
    Bm, Tm, Dm, Hm = 8, 32, 16, 64
    cell = rnn.lstm(Hm) if kind == "lstm" else rnn.gru(Hm)
    params = cell.init(getkey(), Dm)
    xs = jax.random.normal(getkey(), (Bm, Tm, Dm))

    def loss(p, x):
        _, ys = rnn.unroll_batch(cell, p, x, cell.init_carry((Bm,)), unroll=1)
        return jnp.sum(ys**2)

    def temp(f):
        return f.lower(params, xs).compile().memory_analysis().temp_size_in_bytes

    stored = 4 * Bm * Tm * (4 * Hm + 3 * Hm)  # gates (4H) + ys, dL/dy, c or h_prev
    weights = 4 * 2 * (Dm + Hm) * 4 * Hm  # transposed copies of the weights
    fast = temp(jax.jit(jax.grad(loss)))

    def ref_loss(p, x):
        ys = jax.vmap(lambda s: rnn.unroll(cell, p, s, cell.init_carry(), unroll=1)[1])(
            x
        )
        return jnp.sum(ys**2)

    # XLA's buffer assignment, not jgrad's values: a jaxlib upgrade can move these sizes.
    why = (
        f"XLA's scratch size (temp_size_in_bytes, jaxlib {jax.__version__}) for "
        f"unroll_batch's {kind} gradient is {fast} bytes"
    )
    hint = (
        " This figure depends on the compiler version: if jaxlib changed, check whether "
        "its buffer assignment now copies the in-place buffers before changing jgrad."
    )
    assert fast <= stored + weights, (
        f"{why}, above the stored gates + three sequences + weights "
        f"({stored + weights} bytes).{hint}"
    )
    ref = temp(jax.jit(jax.grad(ref_loss)))
    assert fast < 0.75 * ref, (
        f"{why}, not below 0.75x plain autodiff's {ref} bytes.{hint}"
    )


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_an_ensemble_under_vmap_equals_each_model(name, getkey):
    # vmap over params (an ensemble of 3 models) through the custom_vjp and its in-place
    # buffers: values and gradients equal those of each model on its own.
    cell = CELLS[name]()
    keys = jax.random.split(getkey(), 3)
    params = jax.vmap(lambda k: cell.init(k, D))(keys)
    xs = jax.random.normal(getkey(), (B, T, D))
    lengths = np.array([9, 4, 6])

    def loss(p):
        _, ys = rnn.unroll_batch(
            cell, p, xs, cell.init_carry((B,)), seq_length=lengths, unroll=1
        )
        return jnp.sum(jnp.sin(ys))

    vals, grads = jax.jit(jax.vmap(jax.value_and_grad(loss)))(params)
    for i in range(3):
        p_i = jax.tree.map(lambda a, i=i: a[i], params)
        v, g = jax.value_and_grad(loss)(p_i)
        np.testing.assert_allclose(vals[i], v, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(b[i], a, rtol=1e-5, atol=1e-6)
