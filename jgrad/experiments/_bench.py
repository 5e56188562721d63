"""Timing helpers shared by the benchmark scripts (``scripts/bench_*.py``)."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from jgrad.experiments._io import provenance, save_json

__all__ = [
    "median_time",
    "interleaved_times",
    "median_ratio",
    "summary",
    "timed_pair",
    "blas_threads",
    "matmul_gflops",
    "write_results",
    "set_precision",
    "torch_device",
    "device_label",
    "add_precision_arg",
    "parse_shapes",
]

PRECISIONS = ("default", "highest")


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


def interleaved_times(
    fns: Mapping[str, Callable[[], object]], rounds: int
) -> dict[str, list[float]]:
    """Wall times of each ``fns[name]()`` in ``rounds`` rounds, after one warm-up run
    of each: every round runs every function once, in the order given on even rounds and
    reversed on odd ones, so every baseline is timed in alternation with the function
    it is compared with. On a shared machine the load drifts between two blocks of
    timings; within a round it mostly cancels: compare with :func:`median_ratio`.

    Each function must block until its result is ready (``jax.block_until_ready``).

    Returns:
        ``{name: [seconds of round 0, round 1, ...]}``.
    """
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return times


def median_ratio(times: Mapping[str, list[float]], num: str, den: str) -> float:
    """Median over the rounds of :func:`interleaved_times` of the per-round ratio
    ``times[num][i] / times[den][i]``."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def summary(ts: list[float]) -> dict[str, float]:
    """``{"seconds": median, "iqr": interquartile range / median}`` of some timings."""
    med = statistics.median(ts)
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [med, med, med]
    return {"seconds": med, "iqr": (q[2] - q[0]) / med}


def timed_pair(name: str, fns: Mapping, rounds: int, rows: list) -> dict:
    """Times ``fns`` (jgrad's function first, the baseline's second) in ``rounds``
    interleaved rounds, appends the row (median times, the median of the rounds'
    ratios) to ``rows``, prints it and returns it."""
    times = interleaved_times(fns, rounds)
    ours, base = list(fns)
    ratio = median_ratio(times, ours, base)
    row = {
        "comparison": name,
        "impl": ours,
        "baseline": base,
        "impl_seconds": summary(times[ours])["seconds"],
        "baseline_seconds": summary(times[base])["seconds"],
        "ratio": ratio,
        "pairs": rounds,
    }
    rows.append(row)
    print(
        f"{name:<28} {ours:<34} {row['impl_seconds'] * 1e3:9.2f} ms  "
        f"{base:<30} {row['baseline_seconds'] * 1e3:9.2f} ms  ratio {ratio:5.3f}"
    )
    return row


def blas_threads() -> dict[str, int]:
    """``{library file name: thread count}`` of every BLAS loaded in this process, as
    threadpoolctl reads them (what a run's LAPACK calls start with)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    return {
        i["filepath"].rsplit("/", 1)[-1]: i["num_threads"]
        for i in threadpool_info()
        if i["user_api"] == "blas"
    }


def matmul_gflops(repeats: int, n: int | None = None) -> float:
    """The float32 matmul rate of XLA on this machine, GFLOP/s (an n^3 product; n = 2048
    on CPU, 8192 on an accelerator, at the matmul precision in force)."""
    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
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


def set_precision(precision: str) -> None:
    """Sets the float32 matmul precision of JAX and (when installed) torch for a benchmark.

    "default" leaves both libraries' defaults: on NVIDIA GPUs since Ampere that means TF32
    for JAX's float32 matmuls and for cuDNN's RNNs and convolutions (torch's
    ``backends.cudnn.allow_tf32`` is True by default), but full float32 for torch's plain
    matmuls. "highest" asks for full float32 everywhere (JAX
    ``jax_default_matmul_precision="highest"``, torch ``allow_tf32=False`` for cuDNN and
    cuBLAS). On CPU both are full float32.

    Raises:
        ValueError: ``precision`` not in ("default", "highest").
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision: expected one of {PRECISIONS}, got {precision!r}; "
            "pass --precision default or --precision highest"
        )
    if precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
    try:
        import torch
    except ImportError:
        return
    if precision == "highest":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def torch_device() -> str:
    """The torch device matching JAX's backend: "cuda" when JAX runs on a GPU and torch
    sees one, else "cpu" (so both libraries are timed on the same hardware)."""
    import torch

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def device_label() -> str:
    """A short description of JAX's first device, e.g. "cpu" or "gpu: NVIDIA H100 ..."."""
    d = jax.devices()[0]
    return f"{d.platform}: {getattr(d, 'device_kind', '')}".rstrip(": ")


def add_precision_arg(parser) -> None:
    """Adds the benchmark scripts' shared ``--precision`` option (see set_precision)."""
    parser.add_argument(
        "--precision",
        default="default",
        choices=PRECISIONS,
        help="float32 matmul precision: 'default' (each library's own; TF32 on recent "
        "NVIDIA GPUs) or 'highest' (full float32 in JAX and torch)",
    )


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    """``"32:128:128:256,8:1024:32:64"`` -> ``[(32, 128, 128, 256), (8, 1024, 32, 64)]``."""
    return [tuple(int(v) for v in s.split(":")) for s in text.split(",")]
