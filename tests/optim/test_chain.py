"""jgrad.optim: recorded clipping against float64 and optax, the gate's skips, L2 against
the loss, decoupled decay against optax.adamw, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jgrad import optim


@pytest.fixture(autouse=True)
def _standard_promotion():
    """optax's transforms (adam's bias correction: a float to the power of an int32
    count) are written for JAX's default promotion rules, which users run with."""
    with jax.numpy_dtype_promotion("standard"):
        yield


def _grads(key, scale=1.0):
    k1, k2 = jax.random.split(key)
    return {
        "w": scale * jax.random.normal(k1, (4, 3)),
        "b": scale * jax.random.normal(k2, (3,)),
    }


def _norm64(tree):
    return np.sqrt(
        sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree.leaves(tree))
    )


@settings(max_examples=25, deadline=None)
@given(
    scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-2, 1e2), seed=st.integers(0, 99)
)
def test_clip_gives_min_of_norm_and_max_and_records_the_float64_norm(
    scale, max_norm, seed
):
    g = _grads(jax.random.key(seed), scale)
    tx = optim.record_clip(max_norm)
    u, s = tx.update(g, tx.init(g))
    norm = _norm64(g)
    np.testing.assert_allclose(float(s.global_norm), norm, rtol=1e-6)
    np.testing.assert_allclose(_norm64(u), min(norm, max_norm), rtol=1e-5)
    np.testing.assert_allclose(
        float(s.clip_factor), min(1.0, max_norm / norm), rtol=1e-5
    )
    # leaf order: jax.tree.leaves, here ("b", "w")
    np.testing.assert_allclose(float(s.leaf_norms[1]), _norm64(g["w"]), rtol=1e-6)
    np.testing.assert_allclose(float(s.leaf_norms[0]), _norm64(g["b"]), rtol=1e-6)
    # clipping twice equals clipping once
    u2, _ = tx.update(u, tx.init(g))
    chex.assert_trees_all_close(u2, u, rtol=1e-6)
    # the same updates as optax's own clipping
    ref, _ = optax.clip_by_global_norm(max_norm).update(g, ())
    chex.assert_trees_all_close(u, ref, rtol=1e-6)


def test_zero_gradient_is_no_nan_and_nonfinite_is_counted(getkey):
    g = jax.tree.map(jnp.zeros_like, _grads(getkey()))
    tx = optim.record_clip(1.0)
    u, s = tx.update(g, tx.init(g))
    assert float(s.global_norm) == 0.0 and float(s.clip_factor) == 1.0
    assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(u))
    bad = _grads(getkey())
    bad["b"] = bad["b"].at[1].set(jnp.nan)
    _, s = tx.update(bad, s)
    assert int(s.nonfinite_count) == 1 and np.isnan(float(s.clip_factor))


def test_clip_value_bounds_every_entry(getkey):
    g = _grads(getkey(), 10.0)
    tx = optim.chain("sgd", 1.0, clip_value=0.5)
    u, _ = tx.update(g, tx.init(g), g)
    assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(u)) <= 0.5
    inside = jnp.abs(g["w"]) < 0.5
    np.testing.assert_allclose(
        jnp.where(inside, -u["w"], 0), jnp.where(inside, g["w"], 0)
    )


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "rmsprop"])
def test_chain_equals_optax_with_the_same_clipping(name, getkey):
    params = _grads(getkey())
    ref_opt = {
        "sgd": optax.sgd(0.1),
        "momentum": optax.sgd(0.1, momentum=0.9),
        "adam": optax.adam(0.1),
        "rmsprop": optax.rmsprop(0.1),
    }[name]
    ref = optax.chain(optax.clip_by_global_norm(1.0), ref_opt)
    tx = optim.chain(name, 0.1, clip_global_norm=1.0)
    s, rs = tx.init(params), ref.init(params)
    for i in range(3):
        g = _grads(jax.random.fold_in(getkey(), i), 3.0)
        u, s = tx.update(g, s, params)
        ru, rs = ref.update(g, rs, params)
        chex.assert_trees_all_close(u, ru, rtol=1e-5, atol=1e-7)
        params = optax.apply_updates(params, u)


def test_l2_equals_the_penalty_in_the_loss(getkey):
    w = _grads(getkey())
    x = jax.random.normal(getkey(), (5, 4))
    lam = 0.3

    def loss(p):
        return jnp.mean(jnp.tanh(x @ p["w"] + p["b"][None]) ** 2)

    def penalized(p):
        return loss(p) + 0.5 * lam * sum(jnp.sum(v**2) for v in jax.tree.leaves(p))

    tx = optim.chain("sgd", 0.1, l2=lam)
    u, _ = tx.update(jax.grad(loss)(w), tx.init(w), w)
    plain = optim.chain("sgd", 0.1)
    ref, _ = plain.update(jax.grad(penalized)(w), plain.init(w), w)
    chex.assert_trees_all_close(u, ref, rtol=1e-6)


def test_decoupled_decay_matches_optax_adamw(getkey):
    params = _grads(getkey())
    tx = optim.chain("adamw", 0.01, weight_decay=0.05)
    ref = optax.adamw(0.01, weight_decay=0.05)
    s, rs = tx.init(params), ref.init(params)
    for i in range(3):
        g = _grads(jax.random.fold_in(getkey(), i))
        u, s = tx.update(g, s, params)
        ru, rs = ref.update(g, rs, params)
        chex.assert_trees_all_close(u, ru, rtol=1e-6, atol=1e-8)
        params = optax.apply_updates(params, u)
    # decoupled decay is not L2 for adam: the two differ
    l2_tx = optim.chain("adam", 0.01, l2=0.05)
    g = _grads(getkey())
    u_l2, _ = l2_tx.update(g, l2_tx.init(params), params)
    u_wd, _ = tx.update(g, tx.init(params), params)
    assert float(jnp.max(jnp.abs(u_l2["w"] - u_wd["w"]))) > 1e-4


def test_guard_skips_exactly_the_poisoned_steps(getkey):
    params = _grads(getkey())
    tx = jax.jit(optim.chain("adam", 0.01, guard_nonfinite=True).update)
    plain = optim.chain("adam", 0.01)
    s = optim.chain("adam", 0.01, guard_nonfinite=True).init(params)
    ps = plain.init(params)
    poisoned = {2, 5}
    for i in range(7):
        g = _grads(jax.random.fold_in(getkey(), i))
        if i in poisoned:
            g["w"] = g["w"].at[0, 0].set(jnp.nan)
        u, s = tx(g, s, params)
        if i in poisoned:
            assert bool(s.last_skipped)
            assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(u))
        else:  # the guarded chain equals the plain one fed only the clean steps
            pu, ps = plain.update(g, ps, params)
            chex.assert_trees_all_close(u, pu, rtol=1e-5, atol=1e-9)
    assert int(s.skipped_nonfinite) == 2 and int(s.skipped_large) == 0
    # the skipped steps never reached the recorded clipping
    assert int(optim.clip_stats(s).nonfinite_count) == 0


def test_skip_above_clip_below(getkey):
    params = _grads(getkey())
    tx = optim.chain("sgd", 1.0, clip_global_norm=1.0, skip_above=100.0)
    s = tx.init(params)
    small, mid, huge = (_grads(getkey(), c) for c in (0.01, 10.0, 1e4))
    u, s = tx.update(small, s, params)
    chex.assert_trees_all_close(u, jax.tree.map(lambda v: -v, small), rtol=1e-6)
    u, s = tx.update(mid, s, params)
    np.testing.assert_allclose(_norm64(u), 1.0, rtol=1e-5)
    u, s = tx.update(huge, s, params)
    assert bool(s.last_skipped) and int(s.skipped_large) == 1
    assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(u))
    np.testing.assert_allclose(float(s.global_norm), _norm64(huge), rtol=1e-6)
    # the skipped step leaves the recorded clipping of the last step taken
    np.testing.assert_allclose(
        float(optim.clip_stats(s).global_norm), _norm64(mid), rtol=1e-6
    )


def test_jit_vmap_and_no_recompilation(getkey):
    params = _grads(getkey())
    tx = optim.chain("adam", 1e-3, clip_global_norm=1.0, guard_nonfinite=True)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(g, s):
        return tx.update(g, s, params)

    s = tx.init(params)
    for i in range(3):
        _, s = step(_grads(jax.random.fold_in(getkey(), i)), s)
    gs = jax.vmap(lambda k: _grads(k, 5.0))(jax.random.split(getkey(), 4))
    _, vs = jax.vmap(lambda g: tx.update(g, tx.init(params), params))(gs)
    norms = [_norm64(jax.tree.map(lambda v, i=i: v[i], gs)) for i in range(4)]
    np.testing.assert_allclose(optim.clip_stats(vs).global_norm, norms, rtol=1e-6)


def test_a_schedule_is_a_learning_rate(getkey):
    params = _grads(getkey())
    sched = optax.linear_schedule(1.0, 0.0, 10)
    tx = optim.chain("sgd", sched)
    g = _grads(getkey())
    u, s = tx.update(g, tx.init(params), params)
    chex.assert_trees_all_close(u, jax.tree.map(lambda v: -v, g), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(optimizer="adm", learning_rate=0.1), r"`optimizer`.*adam"),
        (dict(optimizer="sgd", learning_rate=0.0), "`learning_rate`"),
        (dict(optimizer="sgd", learning_rate=-1.0), "`learning_rate`"),
        (
            dict(optimizer="sgd", learning_rate=0.1, clip_global_norm=0.0),
            "clip_global_norm",
        ),
        (
            dict(optimizer="sgd", learning_rate=0.1, clip_global_norm=-1.0),
            "clip_global_norm",
        ),
        (dict(optimizer="sgd", learning_rate=0.1, clip_value=0), "`clip_value`"),
        (dict(optimizer="sgd", learning_rate=0.1, agc=-0.1), "`agc`"),
        (dict(optimizer="sgd", learning_rate=0.1, l2=-1.0), "`l2`"),
        (dict(optimizer="sgd", learning_rate=0.1, weight_decay=-1.0), "`weight_decay`"),
        (dict(optimizer="adamw", learning_rate=0.1), "`weight_decay` must be > 0"),
        (
            dict(
                optimizer="sgd", learning_rate=0.1, clip_global_norm=2.0, skip_above=1.0
            ),
            "`skip_above` must exceed",
        ),
        (dict(optimizer="momentum", learning_rate=0.1, momentum=1.0), "`momentum`"),
        (
            dict(optimizer="sgd", learning_rate=0.1, guard_nonfinite=1),
            "guard_nonfinite",
        ),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.chain(**kwargs)


def test_clip_stats_of_a_state_without_them():
    with pytest.raises(ValueError, match="`opt_state` must be the state of a chain"):
        optim.clip_stats(optax.sgd(0.1).init({"w": jnp.ones(2)}))


def test_record_clip_refuses_a_non_positive_max_norm():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="`max_norm`"):
            optim.record_clip(bad)
