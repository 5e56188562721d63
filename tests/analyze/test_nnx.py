"""flax NNX models in the analyzers and in module_grad_norms, against jax.grad / jax.jacrev
of the hand-split model and NumPy SVD (float64, rtol 1e-9).

The references call the NNX modules themselves one by one, so the conversion of an
``nnx.Linear`` to ``jgrad.nn.dense`` (``{"w": kernel, "b": bias}``), of ``jnp.tanh`` to
``elementwise`` and the autodiff fallback for other modules are checked against code
that shares none of it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jgrad
from jgrad.analyze import _nnx


class Scale(nnx.Module):
    """A custom module (no closed form): y = s * x + x**3 / 10."""

    def __init__(self, n, *, rngs):
        self.s = nnx.Param(1.0 + 0.3 * jax.random.normal(rngs.params(), (n,)))

    def __call__(self, x):
        return self.s[...] * x + x**3 / 10


class Block(nnx.Module):
    """Two submodules, the second called twice: y = b(b(tanh(a(x))))."""

    def __init__(self, *, rngs):
        self.a = nnx.Linear(6, 5, rngs=rngs)
        self.b = nnx.Linear(5, 5, rngs=rngs)

    def __call__(self, x):
        return self.b(self.b(jnp.tanh(self.a(x))))


def _f64(tree):
    """Every floating leaf as float64 (call inside ``jax.enable_x64(True)``)."""
    return jax.tree.map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        tree,
    )


def _mlp():
    rngs = nnx.Rngs(3)
    return nnx.Sequential(
        nnx.Linear(6, 8, rngs=rngs),
        jnp.tanh,
        Scale(8, rngs=rngs),
        nnx.Linear(8, 8, rngs=rngs),
        jax.nn.relu,
        nnx.Linear(8, 3, rngs=rngs),
    )


def _loss(t):
    return lambda y: 0.5 * jnp.sum(jnp.square(y - t))


def _svd_log(m):
    return np.log(np.linalg.svd(np.asarray(m, np.float64), compute_uv=False))


def _grads_at_outputs(fns, x, loss_fn):
    """dL/dh_k, k = 0..K, by jax.grad w.r.t. additive perturbations of each h_k."""

    def loss(eps):
        h = x + eps[0]
        for f, e in zip(fns, eps[1:], strict=True):
            h = f(h) + e
        return loss_fn(h)

    hs = [x]
    for f in fns:
        hs.append(f(hs[-1]))
    return jax.grad(loss)([jnp.zeros_like(h) for h in hs]), hs


def test_sequential_layers_kinds_and_params_convention():
    model = _mlp()
    kinds = [layer.info.kind for layer in jgrad.analyze.net_layers(model)]
    assert kinds == ["dense", "elementwise", None, "dense", "elementwise", "dense"]
    # the same Layer objects on every call (the analyzers' caches hit)
    assert jgrad.analyze.net_layers(model)[0] is jgrad.analyze.net_layers(model)[0]


def _chain_references(model_of, state, x, loss_fn):
    """Jitted references for the chain ``model_of(state).layers``: dL/dh_k (k = 0..K),
    each item's Jacobian, every suffix's Jacobian d y / d h_l, and dL/dstate."""

    @jax.jit
    def refs(state, x):
        fns = [lambda h, f=f: f(h) for f in model_of(state).layers]
        grads, hs = _grads_at_outputs(fns, x, loss_fn)
        jacs = [jax.jacrev(f)(h) for f, h in zip(fns, hs, strict=False)]

        def suffix(h, start):
            for f in fns[start:]:
                h = f(h)
            return h

        suffixes = [
            jax.jacrev(functools.partial(suffix, start=i))(hs[i])
            for i in range(len(fns))
        ]
        gp = jax.grad(lambda s: loss_fn(model_of(s)(x)))(state)
        return grads, jacs, suffixes, gp

    return refs(state, x)


def test_sequential_every_analyzer_equals_hand_split_float64(getkey):
    model = _mlp()
    with jax.enable_x64(True):
        graphdef, state = nnx.split(model)
        state = _f64(state)
        x = jax.random.normal(getkey(), (6,), jnp.float64)
        loss_fn = _loss(jax.random.normal(getkey(), (3,), jnp.float64))

        def analyze(state, x):
            return (
                jgrad.analyze.layer_grad_norms(model, state, x, loss_fn),
                jgrad.analyze.layer_jacobians(model, state, x, blocks=False),
                jgrad.analyze.input_output_spectrum(model, state, x),
                jgrad.analyze.output_spectra(model, state, x, blocks=False),
                jgrad.analyze.output_sweep(model, state, x, blocks=False),
            )

        flow, jac, spec, spectra, sweep = jax.jit(analyze)(state, x)
        grads, jacs, suffixes, gp = _chain_references(
            lambda s: nnx.merge(graphdef, s), state, x, loss_fn
        )
    ref = np.array([np.linalg.norm(np.asarray(g)) for g in grads])
    np.testing.assert_allclose(10.0 ** np.asarray(flow.log10_norm), ref, rtol=1e-9)
    # per-parameter gradients of the first Linear: jax.grad w.r.t. its kernel, bias
    for name, leaf in (("w", "kernel"), ("b", "bias")):
        np.testing.assert_allclose(
            10.0 ** float(flow.param_log10_norm[0][name]),
            np.linalg.norm(np.asarray(gp["layers"][0][leaf][...])),
            rtol=1e-9,
        )
    assert len(jac.mats) == len(jacs)
    for mat, want in zip(jac.mats, jacs, strict=True):
        np.testing.assert_allclose(mat, want, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(spec.log_sv, _svd_log(suffixes[0]), rtol=1e-9)
    for log_sv, prod, j in zip(spectra.log_sv, sweep.products, suffixes, strict=True):
        np.testing.assert_allclose(log_sv, _svd_log(j), rtol=1e-9)
        got = np.asarray(prod.matrix) * np.exp(float(prod.log_scale))
        np.testing.assert_allclose(got, j, rtol=1e-9, atol=1e-14)
    assert not flow.nonfinite.found and not spec.nonfinite.found


def test_params_none_param_only_and_full_state_agree(getkey):
    """None reads the model; nnx.state(model, nnx.Param) takes the rest (batch stats)
    from the model; a State through jit gives the same numbers."""
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(
        nnx.Linear(4, 6, rngs=rngs),
        nnx.BatchNorm(6, use_running_average=True, rngs=rngs),
        nnx.Dropout(0.5, deterministic=True, rngs=rngs),
        jnp.tanh,
        nnx.Linear(6, 2, rngs=rngs),
    )
    model.layers[1].mean[...] = jax.random.normal(getkey(), (6,))
    x = jax.random.normal(getkey(), (4,))

    def three(param_only, full, x):
        return [
            jgrad.analyze.layer_grad_norms(model, p, x, jnp.sum).log10_norm
            for p in (None, param_only, full)
        ]

    a, b, c = jax.jit(three)(nnx.state(model, nnx.Param), nnx.state(model), x)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(a, c, rtol=1e-5)
    ref = jax.grad(lambda v: jnp.sum(model(v)))(x)
    np.testing.assert_allclose(10.0 ** a[0], jnp.linalg.norm(ref), rtol=1e-5)


def test_custom_module_is_one_layer_with_exact_spectrum(getkey):
    model = Block(rngs=nnx.Rngs(1))
    assert [la.info.kind for la in jgrad.analyze.net_layers(model)] == [None]
    with jax.enable_x64(True):
        graphdef, state = nnx.split(model)
        state = _f64(state)
        x = jax.random.normal(getkey(), (6,), jnp.float64)
        spec, whole = jax.jit(
            lambda s, v: (
                jgrad.analyze.input_output_spectrum(model, s, v),
                jax.jacrev(lambda v: nnx.merge(graphdef, s)(v))(v),
            )
        )(state, x)
        np.testing.assert_allclose(spec.log_sv, _svd_log(whole), rtol=1e-9)


def _block_reference(model, x, loss_fn):
    """Gradients at x, a(x), b(.) (first call), b(.) (second call) of the hand-split
    Block, and w.r.t. its params."""
    graphdef, params = nnx.split(model, nnx.Param)
    m = nnx.merge(graphdef, params)
    fns = [m.a, lambda h: m.b(jnp.tanh(h)), m.b]
    grads, _ = _grads_at_outputs(fns, x, loss_fn)
    gp = jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p)(x)))(params)
    return [np.linalg.norm(np.asarray(g)) for g in grads], gp


def test_probe_gradients_wrt_eps_equal_hand_split(getkey):
    model = Block(rngs=nnx.Rngs(2))
    with jax.enable_x64(True):
        graphdef, state = nnx.split(model)
        model = nnx.merge(graphdef, _f64(state))
        x = jax.random.normal(getkey(), (6,), jnp.float64)
        loss_fn = _loss(jax.random.normal(getkey(), (5,), jnp.float64))
        probe = _nnx._probe(model, None, x, lambda path, module: True)
        assert probe.names == ("a", "b", "b#1")
        eps = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), probe.shapes)
        y, outs = probe.run(probe.params, x, eps)
        np.testing.assert_allclose(y, model(x), rtol=1e-12)
        g = jax.grad(lambda e: loss_fn(probe.run(probe.params, x, e)[0]))(eps)
        ref, _ = _block_reference(model, x, loss_fn)
        got = [np.linalg.norm(np.asarray(v)) for v in g]
        np.testing.assert_allclose(got, ref[1:], rtol=1e-9)


def test_module_grad_norms_equal_hand_split(getkey):
    model = Block(rngs=nnx.Rngs(4))
    with jax.enable_x64(True):
        graphdef, state = nnx.split(model)
        state = _f64(state)
        model64 = nnx.merge(graphdef, state)
        x = jax.random.normal(getkey(), (6,), jnp.float64)
        loss_fn = _loss(jax.random.normal(getkey(), (5,), jnp.float64))
        flow = jax.jit(
            lambda s, x: jgrad.analyze.module_grad_norms(model, s, x, loss_fn)
        )(state, x)
        assert flow.names == ("input", "a", "b", "b#1", "output")
        ref, gp = _block_reference(model64, x, loss_fn)
        ref = ref + [ref[-1]]  # the output is b's second call
        # module_grad_norms may report its log10 norms in float32 whatever the model's
        # dtype; the probe itself is checked at 1e-9 above
        rtol = 1e-9 if flow.log10_norm.dtype == jnp.float64 else 2e-6
        np.testing.assert_allclose(10.0 ** np.asarray(flow.log10_norm), ref, rtol=rtol)
        for got, want in zip(
            jax.tree.leaves(flow.param_log10_norm), jax.tree.leaves(gp), strict=True
        ):
            np.testing.assert_allclose(10.0**got, np.linalg.norm(want), rtol=rtol)
        sel = _nnx._probe(model, state, x, lambda path, module: path == "b")
        assert sel.names == ("b", "b#1")


def test_nan_weight_is_reported(getkey):
    model = _mlp()
    state = nnx.state(model)
    state["layers"][3]["kernel"][...] = (
        state["layers"][3]["kernel"][...].at[0, 0].set(jnp.nan)
    )
    x = jax.random.normal(getkey(), (6,))

    def both(state, x):
        return (
            jgrad.analyze.layer_grad_norms(model, state, x, jnp.sum),
            jgrad.analyze.module_grad_norms(model, state, x, jnp.sum),
        )

    flow, mflow = jax.jit(both)(state, x)
    # h_4 (the output of layer 3, the NaN Linear) is the first non-finite one
    assert int(flow.nonfinite.forward) == 4
    assert mflow.names[int(mflow.nonfinite.forward)] == "layers/3"


def test_bad_params_name_params(getkey):
    model = _mlp()
    x = jax.random.normal(getkey(), (6,))
    with pytest.raises(ValueError, match="`params` must be None .* nnx.State"):
        jgrad.analyze.layer_grad_norms(model, {"w": 1.0}, x, jnp.sum)
    with pytest.raises(ValueError, match="nnx.split returns"):
        jgrad.analyze.module_grad_norms(model, nnx.split(model), x, jnp.sum)
    other = nnx.Sequential(nnx.Linear(6, 4, rngs=nnx.Rngs(0)))
    with pytest.raises(
        ValueError, match="`params` at 'layers/0/bias' must have shape \\(8,\\)"
    ):
        jgrad.analyze.input_output_spectrum(model, nnx.state(other), x)
