"""Benchmark: deep tanh MLPs in the stacked layout, compile and run time against depth.

For each depth L in ``--depths`` (width N, tanh, ``jgrad.nn.mlp(L, N, stacked=True)``:
blocks 2..L one ``jgrad.nn.repeat`` layer, one ``lax.scan``), one example:

- ``init``: ``net.init`` (one ``vmap`` of the block's init over L - 1 keys), first call
  (tracing included) and the median of repeated calls;
- ``apply``: ``jax.jit(net.apply)``;
- the public analyzers on the stacked net, each jitted: ``layer_grad_norms`` (one
  example), ``layer_jacobians`` + ``log_singular_values`` and ``input_output_spectrum``
  (defaults: rank compression on);
- the repeat-layer kernels of ``jgrad.analyze._repeat``, each one jitted program:
  (a) ``forward_trajectory`` (every block output), (b) ``grad_norms`` (log10 ||dL/dh_k||
  and per-parameter norms, one rescaled backward scan), (c) ``block_jacobians`` (the
  ``(L-1, N, N)`` Jacobians) and (c+svd) the same followed by
  ``jgrad.analyze.log_singular_values`` of them, (d) ``pull_rows`` of the identity (the
  input-output product d h_L / d h_1, rescaled) followed by one SVD.

Compile time (``jax.jit(f).lower(...).compile()``) and run time (median of
``--repeats`` runs after one warm-up) are reported apart: in the stacked layout the
compile time should not grow with depth. For the stacked layout the end-to-end time is
reported too: the first call of a fresh ``jax.jit(f)`` (trace, compile and run; for
``init`` its first call), what a user waits for. For comparison, the default layout (one params
entry per layer, ``mlp(L, N)``) at ``--flat-depths``: ``init``, ``jit(apply)`` and the
public analyzers ``layer_grad_norms``, ``layer_jacobians`` and ``input_output_spectrum``
(whose per-layer Python loops and segment stacking grow with depth); an analyzer whose
compile time, scaled linearly from a smaller depth, would exceed ``--flat-budget``
seconds is skipped and its estimate recorded.

    python scripts/bench_depth.py                       # depths 100, 1000, 10000
    python scripts/bench_depth.py --quick               # depths 10, 30 (a smoke run)

Writes ``--out`` (JSON, one row per (layout, depth, stage)) with the run's provenance;
the machine's load average at start and end is printed and saved, since a shared
machine's load inflates every time.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jgrad
from jgrad import analyze
from jgrad.analyze import _repeat
from jgrad.experiments._bench import device_label, median_time, write_results


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (what other processes took of the CPU)."""
    return [round(v, 2) for v in os.getloadavg()]


def run_time(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    return median_time(fn, repeats)[0]


def compile_and_run(fn, args, repeats: int, end_to_end: bool = False) -> dict:
    """``{"compile_seconds", "run_seconds"}`` of ``jax.jit(fn)`` on ``args``, and with
    ``end_to_end`` the first call of a fresh ``jax.jit`` (trace, compile, run) first."""
    out = {}
    if end_to_end:
        t = time.perf_counter()
        jax.block_until_ready(jax.jit(lambda *a: fn(*a))(*args))
        out["end_to_end_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    comp = time.perf_counter() - t
    run = run_time(lambda: jax.block_until_ready(compiled(*args)), repeats)
    return {**out, "compile_seconds": comp, "run_seconds": run}


def time_init(net, width: int, repeats: int) -> dict:
    key = jax.random.key(0)
    t = time.perf_counter()
    _, params = net.init(key, (width,))
    jax.block_until_ready(params)
    first = time.perf_counter() - t
    run = run_time(
        lambda: jax.block_until_ready(net.init(key, (width,))[1]), max(repeats // 2, 1)
    )
    out = {"first_call_seconds": first, "end_to_end_seconds": first, "run_seconds": run}
    return out, params


def loss(y):
    return jnp.sum(jnp.sin(y))


def public_analyzers(net, compress: bool = True):
    """(stage, fn(params, x)) of the public analyzers timed on both layouts."""
    return (
        (
            "layer_grad_norms",
            lambda p, v: analyze.layer_grad_norms(net, p, v, loss).log10_norm,
        ),
        (
            "layer_jacobians + log_singular_values",
            lambda p, v: analyze.log_singular_values(
                analyze.layer_jacobians(net, p, v)
            ),
        ),
        (
            "input_output_spectrum",
            lambda p, v: (
                analyze.input_output_spectrum(net, p, v, compress=compress).log_sv
            ),
        ),
    )


def stacked_rows(depth: int, width: int, repeats: int) -> list[dict]:
    net = jgrad.nn.mlp(depth, width, stacked=True)
    timing, params = time_init(net, width, repeats)
    rows = [{"stage": "init", **timing}]
    x = jnp.asarray(np.random.default_rng(0).normal(size=width), jnp.float32)
    rows.append(
        {"stage": "apply", **compile_and_run(net.apply, (params, x), repeats, True)}
    )
    for stage, fn in public_analyzers(net):
        rows.append({"stage": stage, **compile_and_run(fn, (params, x), repeats, True)})
    block, p = net.layers[2].info.block, params[2]
    h1 = net.layers[1].apply(params[1], net.layers[0].apply(params[0], x))
    g = jax.grad(loss)(net.apply(params, x))

    def a(p, h):
        return _repeat.forward_trajectory(block, p, h)

    def b(p, h, g):
        return _repeat.grad_norms(block, p, h, g)

    def c(p, h):
        return _repeat.block_jacobians(block, p, h)

    def c_svd(p, h):
        return analyze.log_singular_values(c(p, h))

    def d(p, h):
        m = _repeat.pull_rows(block, p, h, jnp.eye(width, dtype=h.dtype))
        return jnp.log(jnp.linalg.svd(m.matrix, compute_uv=False)) + m.log_scale

    for stage, fn, args in (
        ("a: forward_trajectory", a, (p, h1)),
        ("b: grad_norms", b, (p, h1, g)),
        ("c: block_jacobians", c, (p, h1)),
        ("c+svd: block_jacobians + log_singular_values", c_svd, (p, h1)),
        ("d: pull_rows + svd", d, (p, h1)),
    ):
        rows.append({"stage": stage, **compile_and_run(fn, args, repeats)})
    return rows


def flat_rows(
    depth: int, width: int, repeats: int, budget: float, seen: dict
) -> list[dict]:
    """The default layout at ``depth``; an analyzer whose compile time at a smaller
    depth in ``seen`` ({stage: (depth, seconds)}), scaled linearly, would exceed
    ``budget`` seconds is skipped (a row with ``skipped_estimate_seconds``)."""
    net = jgrad.nn.mlp(depth, width)
    timing, params = time_init(net, width, repeats)
    rows = [{"stage": "init", **timing}]
    x = jnp.asarray(np.random.default_rng(0).normal(size=width), jnp.float32)
    rows.append({"stage": "apply", **compile_and_run(net.apply, (params, x), repeats)})
    for stage, fn in public_analyzers(net, compress=False):
        if stage in seen:
            d0, c0 = seen[stage]
            estimate = c0 * depth / d0
            if estimate > budget:
                rows.append({"stage": stage, "skipped_estimate_seconds": estimate})
                continue
        rows.append({"stage": stage, **compile_and_run(fn, (params, x), repeats)})
        seen[stage] = (depth, rows[-1]["compile_seconds"])
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="100,1000,10000", help="stacked layout depths")
    ap.add_argument(
        "--flat-depths",
        default="100,1000",
        help="default-layout depths for comparison (empty: none)",
    )
    ap.add_argument(
        "--flat-budget",
        type=float,
        default=60.0,
        help="skip a default-layout analyzer whose compile time, scaled linearly "
        "from a smaller depth, would exceed this many seconds",
    )
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="depths 10 and 30, width 8")
    ap.add_argument("--out", default="runs/bench_depth.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.depths, args.flat_depths, args.width = "10,30", "10", 8
    depths = [int(d) for d in args.depths.split(",") if d]
    flat = [int(d) for d in args.flat_depths.split(",") if d]
    start_load = load()
    print(f"{device_label()}; width {args.width}; load average {start_load}")
    rows, seen = [], {}
    runs = [("stacked", d) for d in depths] + [("flat", d) for d in sorted(flat)]
    for layout, depth in runs:
        if layout == "stacked":
            new = stacked_rows(depth, args.width, args.repeats)
        else:
            new = flat_rows(depth, args.width, args.repeats, args.flat_budget, seen)
        for row in new:
            row = {"layout": layout, "depth": depth, "width": args.width, **row}
            rows.append(row)
            head = f"{layout:8s} L={depth:<6d} {row['stage']:46s}"
            if "skipped_estimate_seconds" in row:
                est = row["skipped_estimate_seconds"]
                print(f"{head} skipped: compile estimated {est:.0f} s", flush=True)
                continue
            comp = row.get("compile_seconds", row.get("first_call_seconds"))
            kind = "compile" if "compile_seconds" in row else "first call"
            run_ms = 1e3 * row["run_seconds"]
            e2e = row.get("end_to_end_seconds")
            tail = "" if e2e is None else f"   end to end {e2e:8.3f} s"
            print(
                f"{head} {kind:>10s} {comp:8.3f} s   run {run_ms:10.3f} ms{tail}",
                flush=True,
            )
    end_load = load()
    print(f"load average at the end {end_load}")
    write_results(
        "bench_depth.py",
        argv,
        args.out,
        rows,
        device=device_label(),
        load_average_start=start_load,
        load_average_end=end_load,
    )


if __name__ == "__main__":
    main()
