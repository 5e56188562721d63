"""Benchmark: grid points per second of a phase diagram as one vmapped program against a
Python loop of jitted single networks.

For a tanh network of depth L and width N, a G-point (weight_var, bias_var) grid with S
seeds each, two ways to measure the same G x S networks (the same numbers):

- ``jgrad.theory.phase_diagram(..., theory=False)``: one jitted, vmapped (grid x seeds)
  program, sharded over the devices (one CPU here), copied back to the host;
- the loop: ``jax.jit(phase_probe(...))`` called once per grid point and seed, every
  call dispatched before the results are waited for (the loop's best case).

Timed in interleaved rounds (``interleaved_times``: every round runs both, alternating
the order) and reported as the median of the rounds' ratios, in the default
environment. Goal: at least 5x the grid points per second on a 2-core CPU.

    python scripts/bench_sweep.py
    python scripts/bench_sweep.py --quick       # a smoke run (small sizes)

Prints a table and writes ``--out`` (JSON) with the command and the run's provenance.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from jgrad.experiments._bench import (
    device_label,
    interleaved_times,
    median_ratio,
    summary,
    write_results,
)
from jgrad.theory import phase_diagram, phase_probe


def _case(depth, width, n_w, n_b, seeds, n_inputs, rounds):
    wv = np.linspace(0.5, 4.0, n_w)
    bv = np.linspace(0.0, 0.3, n_b)
    key = jax.random.key(0)
    kw = dict(depth=depth, width=width, n_inputs=n_inputs)
    probe = jax.jit(phase_probe("tanh", **kw))
    keys = jax.random.split(key, seeds)

    def sweep():
        return phase_diagram(
            "tanh", wv, bv, seeds=seeds, key=key, theory=False, **kw
        ).chi1

    def loop():
        out = [probe(w, b, k) for w in wv for b in bv for k in keys]
        return jax.block_until_ready(out)

    # the same networks, the same numbers
    d = phase_diagram("tanh", wv, bv, seeds=seeds, key=key, theory=False, **kw)
    ref = np.stack([np.asarray(p.log10_grad_norm) for p in loop()])
    err = float(np.max(np.abs(ref - d.log10_grad_norm.reshape(ref.shape))))
    times = interleaved_times({"vmapped sweep": sweep, "python loop": loop}, rounds)
    points = n_w * n_b
    rows = []
    for impl, ts in times.items():
        s = summary(ts)
        rows.append(
            {
                "impl": impl,
                "depth": depth,
                "width": width,
                "grid_points": points,
                "seeds": seeds,
                "n_inputs": n_inputs,
                **s,
                "points_per_second": points / s["seconds"],
                "speedup_vs_loop": median_ratio(times, "python loop", impl),
                "pairs": rounds,
                "max_abs_diff_log10_grad_norm": err,
            }
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--out", default="bench_sweep.json", help="JSON results")
    args = parser.parse_args(argv)
    if args.quick:
        cases, rounds = [(4, 8, 3, 2, 1, 2)], 1
    else:
        # (depth, width, weight_vars, bias_vars, seeds, inputs)
        cases = [(20, 16, 16, 16, 2, 8), (20, 32, 16, 16, 2, 8), (20, 64, 16, 16, 2, 8)]
        rounds = args.rounds
    print(f"device: {device_label()}")
    rows = []
    for case in cases:
        rows += _case(*case, rounds)
    head = (
        f"{'impl':<15} {'L':>3} {'N':>4} {'points':>6} {'S':>2} {'seconds':>8} "
        f"{'points/s':>9} {'speedup':>8}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['impl']:<15} {r['depth']:>3} {r['width']:>4} {r['grid_points']:>6} "
            f"{r['seeds']:>2} {r['seconds']:>8.3f} {r['points_per_second']:>9.1f} "
            f"{r['speedup_vs_loop']:>7.2f}x"
        )
    diff = max(r["max_abs_diff_log10_grad_norm"] for r in rows)
    print(
        "speedup: median over interleaved rounds of (loop time / this time); the same "
        f"numbers (max |diff| of the log10 gradient norms {diff:.1e})"
    )
    write_results(
        "bench_sweep.py",
        argv,
        args.out,
        rows,
        device=device_label(),
        goal="vmapped sweep >= 5x the loop's grid points per second on a 2-core CPU",
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
