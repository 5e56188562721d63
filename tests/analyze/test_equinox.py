"""equinox models in the analyzers and in module_grad_norms, against jax.grad / jax.jacrev
of the hand-split model and NumPy SVD (float64, rtol 1e-9).

The references call the equinox modules themselves one by one, so the conversion of an
``eqx.nn.Linear`` to ``jgrad.nn.dense`` (``{"w": weight.T, "b": bias}``), of
``eqx.nn.Lambda(jnp.tanh)`` to ``elementwise`` and the autodiff fallback for other
modules are checked against code that shares none of it.
"""

import functools
import subprocess
import sys

import pytest

eqx = pytest.importorskip("equinox")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jgrad  # noqa: E402
from jgrad.analyze import _equinox  # noqa: E402


class Cubic(eqx.Module):
    """A custom module (no closed form): y = s * x + x**3 / 10."""

    s: jax.Array

    def __call__(self, x, *, key=None):
        return self.s * x + x**3 / 10


class Block(eqx.Module):
    """Two submodules, the second called twice: y = b(b(tanh(a(x))))."""

    a: eqx.nn.Linear
    b: eqx.nn.Linear

    def __call__(self, x):
        return self.b(self.b(jnp.tanh(self.a(x))))


def _f64(tree):
    """Every floating array as float64 (call inside ``jax.enable_x64(True)``)."""
    return jax.tree.map(
        lambda a: (
            a.astype(jnp.float64)
            if eqx.is_array(a) and jnp.issubdtype(a.dtype, jnp.floating)
            else a
        ),
        tree,
    )


def _mlp(key):
    k = jax.random.split(key, 4)
    return eqx.nn.Sequential(
        [
            eqx.nn.Linear(6, 8, key=k[0]),
            eqx.nn.Lambda(jnp.tanh),
            Cubic(1.0 + 0.3 * jax.random.normal(k[1], (8,))),
            eqx.nn.Linear(8, 8, key=k[2]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(8, 3, key=k[3]),
        ]
    )


def _block(key):
    k = jax.random.split(key)
    return Block(eqx.nn.Linear(6, 5, key=k[0]), eqx.nn.Linear(5, 5, key=k[1]))


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


@eqx.filter_jit
def _chain_references(model, x, t):
    """For the chain ``model.layers``: dL/dh_k (k = 0..K), each item's Jacobian, every
    suffix's Jacobian d y / d h_l, and dL/d(the model's arrays)."""
    loss_fn = _loss(t)
    fns = list(model.layers)
    grads, hs = _grads_at_outputs(fns, x, loss_fn)
    jacs = [jax.jacrev(f)(h) for f, h in zip(fns, hs, strict=False)]

    def suffix(h, start):
        for f in fns[start:]:
            h = f(h)
        return h

    suffixes = [
        jax.jacrev(functools.partial(suffix, start=i))(hs[i]) for i in range(len(fns))
    ]
    gp = eqx.filter_grad(lambda m: loss_fn(m(x)))(model)
    return grads, jacs, suffixes, gp


def test_sequential_layers_kinds():
    model = _mlp(jax.random.key(0))
    kinds = [layer.info.kind for layer in jgrad.analyze.net_layers(model)]
    assert kinds == ["dense", "elementwise", None, "dense", "elementwise", "dense"]
    assert jgrad.analyze.net_layers(model)[0] is jgrad.analyze.net_layers(model)[0]


def test_sequential_every_analyzer_equals_hand_split_float64(getkey):
    model = _mlp(getkey())
    with jax.enable_x64(True):
        model = _f64(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        x = jax.random.normal(getkey(), (6,), jnp.float64)
        t = jax.random.normal(getkey(), (3,), jnp.float64)

        def analyze(params, x):
            loss_fn = _loss(t)
            return (
                jgrad.analyze.layer_grad_norms(model, params, x, loss_fn),
                jgrad.analyze.layer_jacobians(model, params, x, blocks=False),
                jgrad.analyze.input_output_spectrum(model, params, x),
                jgrad.analyze.output_spectra(model, params, x, blocks=False),
                jgrad.analyze.output_sweep(model, params, x, blocks=False),
            )

        flow, jac, spec, spectra, sweep = jax.jit(analyze)(params, x)
        grads, jacs, suffixes, gp = _chain_references(model, x, t)
    ref = np.array([np.linalg.norm(np.asarray(g)) for g in grads])
    np.testing.assert_allclose(10.0 ** np.asarray(flow.log10_norm), ref, rtol=1e-9)
    # per-parameter gradients of the first Linear: w is weight.T, b the bias
    for name, leaf in (("w", gp.layers[0].weight), ("b", gp.layers[0].bias)):
        np.testing.assert_allclose(
            10.0 ** float(flow.param_log10_norm[0][name]),
            np.linalg.norm(np.asarray(leaf)),
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


def test_params_none_model_and_arrays_agree(getkey):
    """None, the model itself and eqx.filter(model, eqx.is_inexact_array) (through
    jit) are the same params."""
    model = _mlp(getkey())
    x = jax.random.normal(getkey(), (6,))

    def three(as_model, arrays, x):
        return [
            jgrad.analyze.layer_grad_norms(model, p, x, jnp.sum).log10_norm
            for p in (None, as_model, arrays)
        ]

    a, b, c = eqx.filter_jit(three)(model, eqx.filter(model, eqx.is_inexact_array), x)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(a, c, rtol=1e-5)
    ref = jax.grad(lambda v: jnp.sum(model(v)))(x)
    np.testing.assert_allclose(10.0 ** a[0], jnp.linalg.norm(ref), rtol=1e-5)


def test_custom_module_is_one_layer_with_exact_spectrum(getkey):
    model = _block(getkey())
    assert [la.info.kind for la in jgrad.analyze.net_layers(model)] == [None]
    with jax.enable_x64(True):
        model = _f64(model)
        x = jax.random.normal(getkey(), (6,), jnp.float64)
        spec, whole = eqx.filter_jit(
            lambda m, v: (
                jgrad.analyze.input_output_spectrum(model, m, v),
                jax.jacrev(m)(v),
            )
        )(model, x)
    np.testing.assert_allclose(spec.log_sv, _svd_log(whole), rtol=1e-9)


def _block_reference(model, x, loss_fn):
    """Gradient norms at x, a(x), b(.) (first call), b(.) (second call) of the
    hand-split Block, and dL/d(its arrays)."""
    fns = [model.a, lambda h: model.b(jnp.tanh(h)), model.b]
    grads, _ = _grads_at_outputs(fns, x, loss_fn)
    gp = eqx.filter_grad(lambda m: loss_fn(m(x)))(model)
    return [np.linalg.norm(np.asarray(g)) for g in grads], gp


def test_probe_gradients_wrt_eps_equal_hand_split(getkey):
    with jax.enable_x64(True):
        model = _f64(_block(getkey()))
        x = jax.random.normal(getkey(), (6,), jnp.float64)
        loss_fn = _loss(jax.random.normal(getkey(), (5,), jnp.float64))
        probe = _equinox._probe(model, None, x, lambda path, module: True)
        assert probe.names == ("a", "b", "b#1")
        eps = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), probe.shapes)
        y, _ = jax.jit(probe.run)(probe.params, x, eps)
        np.testing.assert_allclose(y, model(x), rtol=1e-12)
        g = jax.jit(jax.grad(lambda e: loss_fn(probe.run(probe.params, x, e)[0])))(eps)
        ref, _ = _block_reference(model, x, loss_fn)
        got = [np.linalg.norm(np.asarray(v)) for v in g]
        np.testing.assert_allclose(got, ref[1:], rtol=1e-9)
        # nested paths: an eqx.nn.MLP's layers are "mlp/layers/i", the parent after
        mlp = eqx.nn.MLP(6, 2, 4, 2, key=getkey())
        names = _equinox._probe(mlp, None, x, lambda p, m: True).names
        assert names == ("layers/0", "layers/1", "layers/2")


def test_module_grad_norms_equal_hand_split(getkey):
    with jax.enable_x64(True):
        model = _f64(_block(getkey()))
        params = eqx.filter(model, eqx.is_inexact_array)
        x = jax.random.normal(getkey(), (6,), jnp.float64)
        loss_fn = _loss(jax.random.normal(getkey(), (5,), jnp.float64))
        flow = jax.jit(
            lambda p, x: jgrad.analyze.module_grad_norms(model, p, x, loss_fn)
        )(params, x)
        assert flow.names == ("input", "a", "b", "b#1", "output")
        ref, gp = _block_reference(model, x, loss_fn)
        ref = ref + [ref[-1]]  # the output is b's second call
        # module_grad_norms may report its log10 norms in float32 whatever the model's
        # dtype; the probe itself is checked at 1e-9 above
        rtol = 1e-9 if flow.log10_norm.dtype == jnp.float64 else 2e-6
        np.testing.assert_allclose(10.0 ** np.asarray(flow.log10_norm), ref, rtol=rtol)
        got = jax.tree.leaves(flow.param_log10_norm)
        want = jax.tree.leaves(eqx.filter(gp, eqx.is_inexact_array))
        assert len(got) == len(want) == 4
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(10.0**g, np.linalg.norm(w), rtol=rtol)


@pytest.mark.slow
def test_nan_weight_is_reported(getkey):
    model = _mlp(getkey())
    model = eqx.tree_at(
        lambda m: m.layers[3].weight,
        model,
        model.layers[3].weight.at[0, 0].set(jnp.nan),
    )
    x = jax.random.normal(getkey(), (6,))

    def both(p, x):
        return (
            jgrad.analyze.layer_grad_norms(model, p, x, jnp.sum),
            jgrad.analyze.module_grad_norms(model, p, x, jnp.sum),
        )

    flow, mflow = jax.jit(both)(eqx.filter(model, eqx.is_inexact_array), x)
    # h_4 (the output of layer 3, the NaN Linear) is the first non-finite one
    assert int(flow.nonfinite.forward) == 4
    assert mflow.names[int(mflow.nonfinite.forward)] == "layers/3"


def test_bad_params_name_params(getkey):
    model = _mlp(getkey())
    x = jax.random.normal(getkey(), (6,))
    with pytest.raises(ValueError, match="`params` must be None .*eqx.filter"):
        jgrad.analyze.layer_grad_norms(model, {"w": 1.0}, x, jnp.sum)
    with pytest.raises(ValueError, match="`params` must be None .*eqx.filter"):
        jgrad.analyze.module_grad_norms(
            model, eqx.partition(model, eqx.is_array), x, jnp.sum
        )
    other = eqx.tree_at(lambda m: m.layers[0].bias, model, jnp.zeros(4))
    with pytest.raises(ValueError, match=r"`params`.*must have shape \(8,\)"):
        jgrad.analyze.input_output_spectrum(model, other, x)


def test_without_equinox_nothing_is_registered():
    """equinox is optional: with it missing, jgrad imports and registers nothing for it."""
    code = (
        "import sys; sys.modules['equinox'] = None\n"
        "import jgrad\n"
        "from jgrad.analyze import _foreign\n"
        "assert _foreign.find(object()) is None\n"
        "assert not [a for a in _foreign._ADAPTERS if 'equinox' in a.name]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
