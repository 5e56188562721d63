"""Smoke runs of the benchmark scripts, so their commands cannot go stale (timings are not
asserted: speed is measured by the scripts, not by tests)."""

import json
import os
import pathlib
import runpy
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_script(name, args, monkeypatch, out):
    """Runs scripts/<name> as __main__ with ``args`` and torch hidden; returns its JSON."""
    monkeypatch.setattr(sys, "argv", [name, *args, "--out", str(out)])
    # Baselines (flax, the textbook scan) are written with JAX's default promotion rules.
    promotion = jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard")
    with pytest.MonkeyPatch.context() as m, promotion[0], promotion[1]:
        m.setitem(sys.modules, "torch", None)  # the comparison must be optional
        runpy.run_path(str(ROOT / "scripts" / name), run_name="__main__")
    return json.loads(out.read_text())


@pytest.mark.slow
def test_bench_rnn_quick(tmp_path, monkeypatch, capsys):
    args = ["--quick", "--repeats", "1", "--kinds", "lstm,vanilla"]
    data = _run_script("bench_rnn.py", args, monkeypatch, tmp_path / "bench.json")
    impls = {r["impl"] for r in data["rows"]}
    assert {"jgrad", "jgrad fast", "flax OptimizedLSTMCell", "flax SimpleCell"} <= impls
    assert all(r["seconds"] > 0 and r["gflops"] > 0 for r in data["rows"])
    # timed in interleaved rounds, ratios per round (the best flax cell's own is 1)
    assert all(r["pairs"] == 1 and r["ratio_flax_best"] > 0 for r in data["rows"])
    flax = [r for r in data["rows"] if r["impl"].startswith("flax")]
    for kind in ("lstm", "vanilla"):
        assert 1.0 in {r["ratio_flax_best"] for r in flax if r["kind"] == kind}
    assert data["command"].startswith("python scripts/bench_rnn.py " + " ".join(args))
    assert "torch_threads" in data and "git_revision" in data["provenance"]
    assert "matmul peak" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_jacobian_quick(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench_jacobian.json"
    data = _run_script(
        "bench_jacobian.py", ["--quick", "--repeats", "1"], monkeypatch, out
    )
    assert data["command"].startswith("python scripts/bench_jacobian.py --quick")
    # the user's environment, unless --openblas-one-thread
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    assert data["openblas_num_threads"] == blas
    assert "blas_threads_at_start" in data
    timed = [r for r in data["rows"] if r["impl"] != "accuracy"]
    assert all(r["ratio_naive"] > 0 and r["pairs"] in (1, 3) for r in timed)
    impls = {r["impl"] for r in data["rows"]}
    assert {
        "a: naive JAX jacrev+svd",
        "a: jgrad input_output_spectrum",
        "b: jgrad output_spectra",
        "c: jgrad output_norms matrix_free 8:2:24:8:6:32:4",
        "c: jgrad output_norms matrix_free 8:2:24:12:6:128:4",
    } <= impls
    acc = next(r for r in data["rows"] if r["impl"] == "accuracy")
    # (a) is the same spectrum as the naive computation.
    assert acc["a_top10_max_abs_diff"] < 1e-3
    assert acc["a_paired_ratio_naive"] > 0
    assert acc["c_paired_ratio_naive"] > 0
    # on the CPU both (a) spectra are full float32: close to float64
    assert set(acc["a_err_vs_float64"]) == {"jgrad", "naive"}
    assert max(acc["a_err_vs_float64"].values()) < 1e-3
    # 16-wide outputs and a shared space of 8 x 3 directions: the whole space, exact.
    c = acc["c_accuracy"]
    names = (
        "block_size:krylov_steps:probes:lanczos_products:lanczos_steps:"
        "krylov_products:deep_probes"
    )
    for setting in ("8:2:24:8:6:32:4", "8:2:24:12:6:128:4"):
        assert c[f"matrix_free {setting} ({names})"]["sn_rel_err_max"] < 1e-3
    # output_norms' mean squared singular value is exact.
    for label in ("Lanczos 8-16 steps", "min_lanczos_steps=2"):
        assert c[f"output_norms ({label}, exact mean sq.)"]["ms_rel_err_max"] < 1e-5
    assert "matmul peak" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_svd_quick(tmp_path, monkeypatch, capsys):
    data = _run_script(
        "bench_svd.py",
        ["--quick", "--repeats", "1"],
        monkeypatch,
        tmp_path / "svd.json",
    )
    by = {r["route"]: r for r in data["rows"]}
    assert {"jnp.linalg.svd", 'jgrad svd="host"', "sqrt eigvalsh(M M^T)"} <= set(by)
    # exact routes agree with float64 NumPy on the values float32 resolves
    assert by["jnp.linalg.svd"]["max_log_err"] < 1e-3
    assert by['jgrad svd="host"']["max_log_err"] < 1e-3
    assert data["command"].startswith("python scripts/bench_svd.py --quick")
    assert "max |dlog s|" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_models_quick(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench_models.json"
    data = _run_script("bench_models.py", ["--quick"], monkeypatch, out)
    assert data["command"].startswith("python scripts/bench_models.py --quick")
    comparisons = {r["comparison"] for r in data["rows"]}
    assert {"per-module grad norms", "input_output_spectrum", "layer_grad_norms"} <= (
        comparisons
    )
    assert all(r["ratio"] > 0 and r["pairs"] == 3 for r in data["rows"])
    assert "ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_train_quick(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench_train.json"
    data = _run_script("bench_train.py", ["--quick"], monkeypatch, out)
    assert data["command"].startswith("python scripts/bench_train.py --quick")
    impls = {r["impl"] for r in data["rows"]}
    assert {"jgrad.optim.chain (recorded)", "jgrad LSTM + jgrad chain"} <= impls
    assert all(r["ratio"] > 0 and r["pairs"] == 3 for r in data["rows"])
    assert "ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_sweep_quick(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench_sweep.json"
    data = _run_script("bench_sweep.py", ["--quick"], monkeypatch, out)
    assert data["command"].startswith("python scripts/bench_sweep.py --quick")
    impls = {r["impl"] for r in data["rows"]}
    assert impls == {"vmapped sweep", "python loop"}
    assert all(r["points_per_second"] > 0 and r["pairs"] == 1 for r in data["rows"])
    # the two ways measure the same networks: the same numbers
    assert all(r["max_abs_diff_log10_grad_norm"] < 1e-4 for r in data["rows"])
    assert "speedup" in capsys.readouterr().out
