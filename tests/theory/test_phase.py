"""Phase diagrams: the vmapped sweep equals a loop of single networks, compiles once
per grid shape, measures ReLU's chi_1 = weight_var / 2, refuses bad input before
tracing, and gives the same diagram on 8 sharded devices and on two processes. The cases
that compile a 128-wide sweep, or start interpreters with simulated devices, are slow."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import jgrad
from jgrad.theory._phase import _sweep_fn, phase_diagram, phase_probe

# One config for the shared fixture, the loop reference and the sharded runs: six grid
# points in chunks of 4 (so the last chunk is padded), eight seeds.
CONFIG = dict(depth=8, width=128, seeds=8, n_inputs=4)
WEIGHT_VARS, BIAS_VARS = [1.0, 2.0, 3.0], [0.0, 0.1]
KEY_SEED = 5
# The sharded runs (fresh interpreters with 8 simulated devices): a smaller tanh network.
SHARD_CONFIG = dict(depth=6, width=16, seeds=2, n_inputs=3)

# Runs phase_diagram in a fresh interpreter (XLA_FLAGS must be set before jax is
# imported) and saves the arrays; argv: out, chunk_size, then for several processes
# coordinator port, process count, process id.
WORKER = f"""
import sys
import jax
if len(sys.argv) > 3:
    jax.distributed.initialize(coordinator_address="localhost:" + sys.argv[3],
                               num_processes=int(sys.argv[4]), process_id=int(sys.argv[5]))
import numpy as np
from jgrad.theory._phase import phase_diagram
assert jax.device_count() == 8, jax.devices()
d = phase_diagram("tanh", {WEIGHT_VARS}, {BIAS_VARS}, key=jax.random.key({KEY_SEED}),
                  theory=False, chunk_size=int(sys.argv[2]), **{SHARD_CONFIG})
np.savez(sys.argv[1], chi1=d.chi1, lg=d.log10_grad_norm, q=d.q,
         jac=d.log10_jac_mean_sq, finite=d.finite)
"""


@pytest.fixture(scope="module")
def diagram():
    return phase_diagram(
        "relu",
        WEIGHT_VARS,
        BIAS_VARS,
        key=jax.random.key(KEY_SEED),
        chunk_size=4,
        **CONFIG,
    )


@pytest.fixture(scope="module")
def small_diagram():
    return phase_diagram(
        "tanh",
        WEIGHT_VARS,
        BIAS_VARS,
        key=jax.random.key(KEY_SEED),
        theory=False,
        **SHARD_CONFIG,
    )


@pytest.mark.slow
def test_sweep_equals_a_loop_of_single_networks(diagram):
    probe = jax.jit(
        phase_probe("relu", depth=8, width=128, n_inputs=CONFIG["n_inputs"])
    )
    keys = jax.random.split(jax.random.key(KEY_SEED), CONFIG["seeds"])
    for i, w in enumerate(WEIGHT_VARS):
        for j, b in enumerate(BIAS_VARS):
            for s in range(CONFIG["seeds"]):
                p = probe(w, b, keys[s])
                np.testing.assert_allclose(
                    diagram.log10_grad_norm[i, j, s], p.log10_grad_norm, atol=2e-5
                )
                np.testing.assert_allclose(diagram.q[i, j, s], p.q, rtol=5e-5)
                np.testing.assert_allclose(
                    diagram.log10_jac_mean_sq[i, j, s], p.log10_jac_mean_sq, atol=2e-5
                )
                assert diagram.finite[i, j, s] == bool(p.finite)
    # chi1 from the per-layer norms: 7 ratios per network, log-averaged over seeds
    lg = diagram.log10_grad_norm.astype(np.float64)
    expect = 10 ** np.mean(2 * (lg[..., 1] - lg[..., 8]) / 7, axis=-1)
    np.testing.assert_allclose(diagram.chi1, expect, rtol=1e-12)


@pytest.mark.slow
def test_relu_chi1_is_half_the_weight_variance(diagram):
    # ReLU: E[phi'(z)^2] = 1/2 at any q, so chi_1 = weight_var / 2 (any bias_var). At
    # width 128, 4 inputs and 7 layers one network's estimate is unbiased with a 4.5%
    # spread (64 seeds: mean 0.997, sd 0.045); the mean of 8 seeds has sd 1.8%.
    assert diagram.chi1_finite.all() and diagram.finite.all()
    theory = jgrad.theory.mean_field("relu", 2.0, 0.1)
    assert diagram.theory.chi1[1, 1] == pytest.approx(float(theory.chi1))
    np.testing.assert_allclose(diagram.chi1, diagram.theory.chi1, rtol=0.06)
    np.testing.assert_allclose(
        diagram.chi1, np.asarray(WEIGHT_VARS)[:, None] / 2 * np.ones((1, 2)), rtol=0.06
    )
    # q^1 = weight_var * mean(x^2) + bias_var, then q^(l+1) = weight_var q^l / 2 + b
    q = diagram.q.mean(axis=2)
    np.testing.assert_allclose(q[:, 0, 1] / q[:, 0, 0], [0.5, 1.0, 1.5], rtol=0.05)
    # the input-output Jacobian's mean squared singular value grows by chi_1 per layer:
    # weight_var * chi_1^7 at the first input (ReLU, any q)
    jac = diagram.log10_jac_mean_sq.mean(axis=2)[:, 0]
    np.testing.assert_allclose(
        jac,
        np.log10(np.asarray(WEIGHT_VARS) * (np.asarray(WEIGHT_VARS) / 2) ** 7),
        atol=0.15,
    )


@pytest.mark.slow
def test_another_grid_of_the_same_shape_does_not_recompile(diagram):
    fn = _sweep_fn("relu", 8, 128, CONFIG["n_inputs"], _default_mesh())
    assert fn._cache_size() == 1
    other = phase_diagram(
        "relu",
        [1.5, 2.5, 3.5],
        [0.2, 0.4],
        key=jax.random.key(KEY_SEED),
        chunk_size=4,
        theory=False,
        **CONFIG,
    )
    assert fn._cache_size() == 1
    np.testing.assert_allclose(other.chi1[:, 1], [0.75, 1.25, 1.75], rtol=0.05)
    assert not np.allclose(other.q, diagram.q)


def _default_mesh():
    from jgrad.theory._shard import check_mesh

    return check_mesh("mesh", None)


@pytest.mark.slow
def test_progress_reports_every_chunk(diagram):
    calls = []
    d = phase_diagram(
        "relu",
        WEIGHT_VARS,
        BIAS_VARS,
        key=jax.random.key(KEY_SEED),
        chunk_size=4,
        theory=False,
        progress=lambda done, total: calls.append((done, total)),
        **CONFIG,
    )
    assert calls == [(1, 2), (2, 2)]
    np.testing.assert_array_equal(d.log10_grad_norm, diagram.log10_grad_norm)


def test_overflow_is_data_and_another_grid_does_not_recompile():
    # linear network, weight_var 1e8: z_l grows 1e4 per layer and overflows float32
    def run(weight_vars):
        return phase_diagram(
            "linear",
            weight_vars,
            [0.0],
            depth=12,
            width=4,
            seeds=1,
            n_inputs=2,
            key=jax.random.key(0),
            theory=False,
        )

    d = run([0.5, 1e8])
    fn = _sweep_fn("linear", 12, 4, 2, _default_mesh())
    assert d.finite[0, 0, 0] and not d.finite[1, 0, 0]
    assert d.chi1_finite[0, 0] and not d.chi1_finite[1, 0]
    assert np.isnan(d.chi1[1, 0])
    # linear: dL/dz_l = dL/dz_(l+1) W^T, chi_1 = weight_var up to width-4 noise
    assert 0.1 < d.chi1[0, 0] < 2.5
    other = run([0.7, 2.0])
    assert fn._cache_size() == 1
    assert other.finite.all() and other.chi1[1, 0] / other.chi1[0, 0] == pytest.approx(
        2.0 / 0.7, rel=1e-4
    )


GOOD = dict(depth=4, width=8, seeds=1, key=jax.random.key(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            dict(activation="rleu"),
            r"`activation` must be one of .*'relu'.*Did you mean",
        ),
        (
            dict(weight_vars=[1.0, -0.5]),
            r"`weight_vars` .* > 0 .*weight_vars\[1\] = -0.5",
        ),
        (dict(weight_vars=[0.0]), r"`weight_vars` must hold finite numbers > 0"),
        (dict(bias_vars=[-0.1]), r"`bias_vars` must hold finite numbers >= 0"),
        (dict(bias_vars=[float("nan")]), r"`bias_vars` must hold finite"),
        (dict(weight_vars=[]), r"`weight_vars` must hold at least one value"),
        (dict(bias_vars=np.zeros((0,))), r"`bias_vars` must hold at least one value"),
        (dict(weight_vars=[[1.0]]), r"`weight_vars` must be 1-D"),
        (dict(weight_vars="abc"), r"`weight_vars` must be a 1-D sequence"),
        (dict(depth=0), r"`depth` must be a positive integer"),
        (dict(depth=1), r"`depth` must be at least 2"),
        (dict(width=2.5), r"`width` must be a positive integer"),
        (dict(seeds=0), r"`seeds` must be a positive integer"),
        (dict(n_inputs=-1), r"`n_inputs` must be a positive integer"),
        (dict(key=0), r"`key` must be a JAX PRNG key"),
        (dict(chunk_size=0), r"`chunk_size` must be a positive integer"),
        (dict(mesh="cpu"), r"`mesh` must be a jax.sharding.Mesh"),
        (dict(progress="yes"), r"`progress` must be True, False or a function"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(kwargs, match):
    args = dict(activation="tanh", weight_vars=[1.0], bias_vars=[0.0], **GOOD)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        phase_diagram(
            args.pop("activation"),
            args.pop("weight_vars"),
            args.pop("bias_vars"),
            **args,
        )


def _run_worker(args, env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _assert_same(path, diagram):
    got = np.load(path)
    np.testing.assert_allclose(got["lg"], diagram.log10_grad_norm, atol=2e-5)
    np.testing.assert_allclose(got["q"], diagram.q, rtol=5e-5)
    np.testing.assert_allclose(got["jac"], diagram.log10_jac_mean_sq, atol=2e-5)
    np.testing.assert_allclose(got["chi1"], diagram.chi1, rtol=1e-4)
    np.testing.assert_array_equal(got["finite"], diagram.finite)


EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


@pytest.mark.slow
def test_sharded_over_8_devices_equals_unsharded(small_diagram, tmp_path):
    # chunk 8 over 8 devices: one point per device, two padded points
    proc = _run_worker([tmp_path / "eight.npz", 8], EIGHT)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    _assert_same(tmp_path / "eight.npz", small_diagram)


def test_chunk_size_not_a_multiple_of_8_devices_is_refused(tmp_path):
    code = (
        "import jax, pytest\n"
        "from jgrad.theory._phase import phase_diagram\n"
        "with pytest.raises(ValueError, match=r'`chunk_size` must be a multiple of the"
        " mesh.s device count 8.*chunk_size=8 or 16'):\n"
        "    phase_diagram('tanh', [1.0], [0.0], depth=4, width=8, seeds=1,\n"
        "                  key=jax.random.key(0), chunk_size=12)\n"
    )
    env = dict(os.environ, **EIGHT)
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_diagram_of_one(small_diagram, tmp_path):
    port = _free_port()
    four = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    procs = [
        _run_worker([tmp_path / f"p{i}.npz", 8, port, 2, i], four) for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    for i in range(2):  # every process holds the whole diagram
        _assert_same(tmp_path / f"p{i}.npz", small_diagram)
