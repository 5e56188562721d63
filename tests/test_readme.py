"""The README's Python example runs and prints what it claims (He beats Glorot for ReLU)."""

import contextlib
import io
import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    out = io.StringIO()
    # The README shows everyday usage, so run it under JAX's default promotion rules.
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        with contextlib.redirect_stdout(out):
            exec(compile(blocks[0], str(README), "exec"), {})
    ratios = dict(
        (m.group(1), float(m.group(2)))
        for m in re.finditer(r"(\w+)\s+log10 .* = \s*(-?[\d.]+)", out.getvalue())
    )
    # He et al. 2015: Glorot halves the squared gradient per ReLU layer (29 steps: about
    # -29 * 0.15 = -4.4 in log10 of the norm); He keeps it within a decade.
    assert ratios["glorot_normal"] < -3.0
    assert abs(ratios["he_normal"]) < 1.0


def test_readme_rnn_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README has no recurrent example"
    namespace = {}
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        exec(compile(blocks[1], str(README), "exec"), namespace)
    # Padded steps give zero outputs; the real ones do not.
    ys, n = namespace["ys"], int(namespace["lengths"][4])
    assert float(abs(ys[4, n:]).max()) == 0.0 and float(abs(ys[4, :n]).min()) > 0.0
    assert bool(jax.numpy.isfinite(namespace["grads"]["w_hh"]).all())


@pytest.mark.slow
def test_readme_analyze_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3, "README has no analyzer example"
    namespace = {}
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(blocks[2], str(README), "exec"), namespace)
    import jax.numpy as jnp
    import numpy as np

    # Depth 100, sigmoid (gamma = 1/4): sigma_max far below float32's smallest number, yet
    # reported finite, while plain jax.jacrev underflows to an all-zero matrix.
    ln = namespace["stats"].log_spectral_norm
    assert bool(jnp.all(jnp.isfinite(ln))) and float(jnp.max(ln)) < np.log(1e-45)
    net, params, xs = namespace["net"], namespace["params"], namespace["xs"]
    plain = jax.jacrev(lambda v: net.apply(params, v))(xs[0])
    assert float(jnp.max(jnp.abs(plain))) == 0.0
    # The vanilla RNN's measured growth never exceeds Pascanu's bound.
    b = namespace["bound"]
    assert float(b.measured_factor) <= float(b.bound) + 1e-6
    # The printed numbers share one unit: natural log per step.
    lam = namespace["lam"]
    assert int(lam.nonfinite.forward) == -1 and int(b.nonfinite.forward) == -1
    assert float(b.measured_log_rate) <= float(b.log_bound) + 1e-6
    assert float(lam.exponents[0]) <= float(b.log_bound) + 1e-6
    assert len(namespace["per_layer"]) == 8 and bool(
        jnp.isfinite(namespace["qr_logdet"])
    )


@pytest.mark.slow
def test_readme_own_model_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4, "README has no own-model example"
    namespace = {}
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(blocks[3], str(README), "exec"), namespace)
    import numpy as np

    flow, chain, spec = namespace["flow"], namespace["chain"], namespace["spec"]
    assert flow.names[:2] == ("input", "Dense_0") and len(flow.names) == 23
    # chaotic (weight_var 4): the gradient grows from the output back to the input
    assert float(flow.log10_norm[0]) > float(flow.log10_norm[-1]) + 0.5
    assert len(chain.calls) == 21 and bool(np.all(np.isfinite(spec.log_sv)))
