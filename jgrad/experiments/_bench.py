"""Timing helpers shared by the benchmark scripts (``scripts/bench_*.py``)."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jgrad.experiments._io import provenance, save_json

__all__ = ["median_time", "matmul_gflops", "write_results"]


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up, and the
    interquartile range relative to the median (the spread a shared machine adds).

    ``fn`` must block until its result is ready (``jax.block_until_ready``)."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    med = statistics.median(ts)
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [med, med, med]
    return med, (q[2] - q[0]) / med


def matmul_gflops(repeats: int, n: int = 2048) -> float:
    """The float32 matmul rate of XLA on this machine, GFLOP/s (an n^3 product)."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    f = jax.jit(jnp.dot)
    t, _ = median_time(lambda: f(a, b).block_until_ready(), repeats)
    return 2 * n**3 / t / 1e9


def write_results(script: str, argv, out: str, rows: list, **fields) -> None:
    """Writes a benchmark's rows atomically as JSON, with the command that produced them
    (``python scripts/<script> <args>``), the run's provenance and any extra ``fields``."""
    from jgrad import __version__  # the package, imported once it is loaded

    args = argv if argv is not None else sys.argv[1:]
    save_json(
        {
            "command": f"python scripts/{script} " + " ".join(args),
            **fields,
            "provenance": provenance(),
            "jgrad": __version__,
            "rows": rows,
        },
        out,
    )
