"""flax linen models in every analyzer: nn.Sequential chains, module_chain and
module_grad_norms, against jax.grad / jax.jacrev of the hand-split model (float64) and
against jgrad's own mlp with converted weights."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrad
from jgrad import analyze

RTOL = 1e-9


class CompactMLP(fnn.Module):
    """The issue's example: tanh(Dense) repeated, then a Dense readout."""

    depth: int = 3
    width: int = 6
    out: int = 3
    act: str = "tanh"

    @fnn.compact
    def __call__(self, x):
        phi = jnp.tanh if self.act == "tanh" else jax.nn.sigmoid
        for _ in range(self.depth):
            x = phi(fnn.Dense(self.width)(x))
        return fnn.Dense(self.out)(x)


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _loss(t):
    return lambda y: 0.5 * jnp.sum(jnp.square(y - t))


def _dense(p, h):
    return h @ p["kernel"] + p["bias"].reshape((1,) * (h.ndim - 1) + (-1,))


def _hand_split(P, depth):
    """The compact MLP as functions: dense outputs a_i and the readout."""

    def pre(i, h):  # a_i from the previous dense output (or x for i = 0)
        return _dense(P[f"Dense_{i}"], h if i == 0 else jnp.tanh(h))

    return pre


def test_module_grad_norms_equal_jax_grad_at_every_call(getkey):
    with jax.enable_x64(True):
        model = CompactMLP()
        x = jax.random.normal(getkey(), (4, 5), jnp.float64)
        t = jax.random.normal(getkey(), (4, 3), jnp.float64)
        v = _f64(model.init(getkey(), x.astype(jnp.float32)))
        P = v["params"]
        loss = _loss(t)
        jitted = jax.jit(lambda v, x: analyze.module_grad_norms(model, v, x, loss))
        flow = jitted(v, x)
        assert flow.names == (
            "input",
            "Dense_0",
            "Dense_1",
            "Dense_2",
            "Dense_3",
            "output",
        )
        pre = _hand_split(P, 3)

        def from_call(k, a):  # the loss from call k's output a_k
            for i in range(k + 1, 4):
                a = pre(i, a)
            return loss(a)

        @jax.jit
        def reference(x):
            a, out = (
                x,
                [jnp.linalg.norm(jax.grad(lambda z: from_call(0, pre(0, z)))(x))],
            )
            for k in range(4):
                a = pre(k, a)
                out.append(jnp.linalg.norm(jax.grad(lambda z, k=k: from_call(k, z))(a)))
            return jnp.stack(out)

        want = list(reference(x))
        want.append(want[-1])  # the model output is Dense_3's
        np.testing.assert_allclose(flow.log10_norm, np.log10(want), rtol=RTOL)
        gp = jax.grad(lambda p: loss(model.apply({"params": p}, x)))(P)
        np.testing.assert_allclose(
            flow.param_log10_norm["Dense_1"]["kernel"],
            np.log10(np.linalg.norm(gp["Dense_1"]["kernel"])),
            rtol=RTOL,
        )
        np.testing.assert_allclose(flow.loss, loss(model.apply(v, x)), rtol=RTOL)
        assert int(flow.nonfinite.forward) == -1 and int(flow.nonfinite.backward) == -1
        # select by pattern (eager)
        some = analyze.module_grad_norms(model, v, x, loss, select="Dense_[13]")
        assert some.names == ("input", "Dense_1", "Dense_3", "output")
        np.testing.assert_allclose(
            some.log10_norm, flow.log10_norm[np.array([0, 2, 4, 5])]
        )


def _sequential(depth, width, out, act):
    layers = []
    for _ in range(depth):
        layers += [fnn.Dense(width), act]
    return fnn.Sequential([*layers, fnn.Dense(out)])


def _to_flax(params, n_dense):
    """jgrad mlp params (dense entries {"w", "b"} at even indices) as Sequential
    variables."""
    dense = [p for p in params if "w" in p]
    assert len(dense) == n_dense
    return {
        "params": {
            f"layers_{2 * i}": {"kernel": p["w"], "bias": p["b"]}
            for i, p in enumerate(dense)
        }
    }


def test_sequential_jacobians_and_spectra_equal_jacrev_and_numpy(getkey):
    with jax.enable_x64(True):
        model = _sequential(2, 6, 3, jax.nn.sigmoid)
        x = jax.random.normal(getkey(), (5,), jnp.float64)
        v = _f64(model.init(getkey(), x.astype(jnp.float32)))
        kinds = [layer.info.kind for layer in analyze.net_layers(model)]
        assert kinds == ["dense", "elementwise", "dense", "elementwise", "dense"]
        assert analyze.net_layers(model)[1].info.activation.name == "sigmoid"
        jac = analyze.layer_jacobians(model, v, x, blocks=False)
        h = x
        for i, (item, m) in enumerate(zip(model.layers, jac.mats, strict=True)):

            def f(z, item=item, i=i):
                if isinstance(item, fnn.Module):
                    return item.apply({"params": v["params"][f"layers_{i}"]}, z)
                return item(z)

            np.testing.assert_allclose(m, jax.jacrev(f)(h), rtol=RTOL, atol=1e-12)
            h = f(h)
        full = jax.jacrev(lambda z: model.apply(v, z))(x)
        want = np.log(np.linalg.svd(np.asarray(full), compute_uv=False))
        spec = analyze.input_output_spectrum(model, v, x)
        np.testing.assert_allclose(spec.log_sv, want, rtol=RTOL)


def test_module_chain_layers_equal_hand_split(getkey):
    with jax.enable_x64(True):
        model = CompactMLP()
        x = jax.random.normal(getkey(), (5,), jnp.float64)
        t = jax.random.normal(getkey(), (3,), jnp.float64)
        v = _f64(model.init(getkey(), x.astype(jnp.float32)))
        pre = _hand_split(v["params"], 3)
        chain = analyze.module_chain(model, (5,))
        assert chain.calls == ("Dense_0", "Dense_1", "Dense_2", "Dense_3")
        jac = analyze.layer_jacobians(chain, v, x)
        a = x
        for k, m in enumerate(jac.mats):
            np.testing.assert_allclose(
                m, jax.jacrev(lambda z, k=k: pre(k, z))(a), rtol=RTOL, atol=1e-12
            )
            a = pre(k, a)
        flow = analyze.layer_grad_norms(chain, v, x, _loss(t))
        g = jax.grad(lambda z: _loss(t)(pre(3, pre(2, z))))(pre(1, pre(0, x)))
        np.testing.assert_allclose(
            flow.log10_norm[2], np.log10(np.linalg.norm(g)), rtol=RTOL
        )
        full = jax.jacrev(lambda z: model.apply(v, z))(x)
        want = np.log(np.linalg.svd(np.asarray(full), compute_uv=False))
        sweep = analyze.output_spectra(chain, v, x)
        np.testing.assert_allclose(sweep.log_sv[0], want, rtol=RTOL)


def test_module_chain_refuses_a_skip_connection_and_bad_select():
    class Res(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dense(5)(jnp.tanh(fnn.Dense(5)(x))) + x

    with pytest.raises(ValueError, match="depends on the model input other than"):
        analyze.module_chain(Res(), (5,))
    with pytest.raises(ValueError, match=r"`select` must match.*Dense_0"):
        analyze.module_chain(CompactMLP(), (5,), select="Conv_*")
    with pytest.raises(ValueError, match="`in_shape` must be"):
        analyze.module_chain(CompactMLP(), 5)
    with pytest.raises(ValueError, match="`model` must be a flax.linen.Module"):
        analyze.module_chain(jgrad.nn.mlp(2, 4), (4,))


@pytest.mark.parametrize(
    ("act", "flax_act", "weight_var", "depth"),
    [("tanh", jnp.tanh, 4.0, 24), ("sigmoid", jax.nn.sigmoid, 1.0, 60)],
)
def test_deep_flax_equals_jgrad_mlp_with_converted_weights(
    act, flax_act, weight_var, depth, getkey
):
    """Exploding tanh (weight_var 4) and vanishing sigmoid (60 layers: the plain float32
    gradient underflows at the first layers; the rescaled pass does not)."""
    width = 16
    net = jgrad.nn.mlp(depth, width, activation=act, weight_var=weight_var, out_dim=4)
    _, params = net.init(getkey(), (width,))
    model = _sequential(depth, width, 4, flax_act)
    v = _to_flax(params, depth + 1)
    x = jax.random.normal(getkey(), (width,))
    loss = _loss(jax.random.normal(getkey(), (4,)))
    ours = analyze.layer_grad_norms(net, params, x, loss)
    theirs = analyze.layer_grad_norms(model, v, x, loss)
    np.testing.assert_allclose(theirs.log10_norm, ours.log10_norm, rtol=1e-5)
    assert np.all(np.isfinite(theirs.log10_norm))
    spread = theirs.log10_norm[-1] - theirs.log10_norm[0]
    assert (spread < -0.2) if act == "tanh" else (spread > 5), (
        spread
    )  # explode / vanish


def test_nonfinite_is_flagged_at_the_call(getkey):
    model = CompactMLP()
    x = jax.random.normal(getkey(), (2, 5))
    v = model.init(getkey(), x)
    v = jax.tree.map(lambda a: a, v)
    v["params"]["Dense_2"]["bias"] = v["params"]["Dense_2"]["bias"].at[0].set(jnp.nan)
    with pytest.warns(analyze.NonFiniteWarning, match="entry 3"):
        flow = analyze.module_grad_norms(model, v, x, lambda y: jnp.sum(y**2))
    assert int(flow.nonfinite.forward) == 3  # input, Dense_0, Dense_1, Dense_2
    assert bool(flow.forward_finite[2]) and not bool(flow.forward_finite[3])
    assert np.all(np.isnan(flow.log10_norm))  # every gradient comes from the NaN


def test_bad_input_names_the_argument(getkey):
    model = CompactMLP()
    x = jax.random.normal(getkey(), (5,))
    v = model.init(getkey(), x)
    with pytest.raises(ValueError, match="`model` must be a flax.linen.Module, a"):
        analyze.module_grad_norms(jgrad.nn.mlp(2, 5), v, x, jnp.sum)
    with pytest.raises(ValueError, match="`loss_fn` must return a scalar"):
        analyze.module_grad_norms(model, v, x, lambda y: y)
    with pytest.raises(ValueError, match="`select` must match at least one"):
        analyze.module_grad_norms(model, v, x, jnp.sum, select="nothing")
    with pytest.raises(ValueError, match="`select` must be None"):
        analyze.module_grad_norms(model, v, x, jnp.sum, select=3)
    with pytest.raises(ValueError, match="`params` must be the flax variables"):
        analyze.layer_grad_norms(_sequential(1, 5, 2, jnp.tanh), [1.0], x, jnp.sum)
    with pytest.raises(ValueError, match="`x` must"):
        analyze.module_grad_norms(model, v, [1.0, 2.0], jnp.sum)


def test_known_activations_equal_jgrad_ones(getkey):
    """The table mapping functions to jgrad activations (closed-form derivatives)."""
    from jgrad.analyze._foreign import _activation_table

    x = jax.random.normal(getkey(), (64,)) * 3
    for fn, name in _activation_table().items():
        act = jgrad.nn.activation(name)
        np.testing.assert_allclose(act.fn(x), fn(x), rtol=1e-6, atol=1e-7, err_msg=name)


def test_module_grad_norms_exact_when_squares_underflow(getkey):
    """Scaling the loss by 1e-30 scales every gradient by 1e-30 (float32: squares of
    the entries underflow, so the scaled route is taken): log10 norms shift by -30."""
    model = CompactMLP()
    x = jax.random.normal(getkey(), (3, 5))
    v = model.init(getkey(), x)

    def loss(y):
        return jnp.sum(y**2)

    base = analyze.module_grad_norms(model, v, x, loss)
    tiny = analyze.module_grad_norms(model, v, x, lambda y: 1e-30 * loss(y))
    np.testing.assert_allclose(tiny.log10_norm, base.log10_norm - 30, atol=1e-5)
    np.testing.assert_allclose(tiny.log10_act_norm, base.log10_act_norm, atol=1e-5)
    leaf = tiny.param_log10_norm["Dense_0"]["kernel"]
    np.testing.assert_allclose(
        leaf, base.param_log10_norm["Dense_0"]["kernel"] - 30, atol=1e-5
    )
