"""Benchmark: forward+backward of one recurrent layer, jgrad against flax, a plain scan and
PyTorch, in one run.

Loss = sum of squared outputs over a batch; gradient w.r.t. all weights. The implementations
of one (shape, cell) are timed in ``--repeats`` interleaved rounds after a warm-up (each round
runs every implementation once, the order reversed every other round, so each baseline is
timed in alternation with jgrad): the table gives the median time and the medians over the
rounds of the per-round ratios to the fastest flax cell (``/flax best``) and to torch; on a
shared machine the drift between two separately timed rows does not cancel, within a round
it does. Compile time (JAX lower+compile) is reported separately.
Achieved GFLOP/s uses the floor 3 x 2 x B x T x (D + H) x G flops (G = 4H LSTM, 3H GRU, H
vanilla: forward matmuls once, backward twice) against the float32 matmul rate measured in
the same run.

    python scripts/bench_rnn.py                      # the full grid, writes runs/bench_rnn.json
    python scripts/bench_rnn.py --quick              # one small shape (a smoke run)

On a GPU the same script times torch on CUDA (cuDNN's fused RNN kernels) and synchronizes
before reading the clock; ``--precision highest`` turns TF32 off in both libraries (the
default leaves each library's own default: TF32 in JAX's matmuls and cuDNN's RNNs).
``--shapes B:T:D:H,...`` replaces the grid.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jgrad import rnn
from jgrad.experiments._bench import (
    add_precision_arg,
    device_label,
    interleaved_times,
    matmul_gflops,
    median_ratio,
    parse_shapes,
    set_precision,
    summary,
    torch_device,
    write_results,
)

GRID = [(32, 128, 128, 256), (32, 512, 64, 128), (8, 1024, 32, 64)]
QUICK = [(4, 16, 8, 16)]


def gate_mult(kind):
    return {"lstm": 4, "gru": 3, "vanilla": 1}[kind]


def floor_flops(kind, B, T, D, H):
    return 3 * 2 * B * T * (D + H) * gate_mult(kind) * H


# --- JAX implementations: each returns a jitted (params, xs) -> (loss, grads) --------------


def jgrad_fn(kind, unroll_k=1, fast=False):
    cell = {"lstm": rnn.lstm, "gru": rnn.gru, "vanilla": rnn.vanilla}[kind]

    def make(H, D, key):
        c = cell(H)
        params = c.init(key, D)

        def loss(p, xs):
            if fast:
                _, ys = rnn.unroll_batch(
                    c, p, xs, c.init_carry((xs.shape[0],)), unroll=unroll_k
                )
            else:
                ys = jax.vmap(
                    lambda x: rnn.unroll(c, p, x, c.init_carry(), unroll=unroll_k)[1]
                )(xs)
            return jnp.sum(ys**2)

        return params, jax.jit(jax.value_and_grad(loss))

    return make


def flax_fn(cell_name):
    import flax.linen as fnn

    def make(H, D, key):
        cell = getattr(fnn, cell_name)(H)
        model = fnn.RNN(cell)
        params = model.init(key, jnp.zeros((1, 4, D)))

        def loss(p, xs):
            return jnp.sum(model.apply(p, xs) ** 2)

        return params, jax.jit(jax.value_and_grad(loss))

    return make


def plain_scan_lstm(H, D, key):
    """The textbook lax.scan LSTM: input matmul inside every step (no hoisting)."""
    k1, k2 = jax.random.split(key)
    params = {
        "w_ih": jax.random.normal(k1, (D, 4 * H)) / np.sqrt(D),
        "w_hh": jax.random.normal(k2, (H, 4 * H)) / np.sqrt(H),
        "b": jnp.zeros((4 * H,)),
    }

    def loss(p, xs):
        B = xs.shape[0]

        def step(carry, x):
            h, c = carry
            z = x @ p["w_ih"] + h @ p["w_hh"] + p["b"]
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        z = jnp.zeros((B, H))
        _, ys = jax.lax.scan(step, (z, z), jnp.swapaxes(xs, 0, 1))
        return jnp.sum(ys**2)

    return params, jax.jit(jax.value_and_grad(loss))


def time_jax(make, shape):
    """(a function running the compiled step and blocking, compile seconds)."""
    B, T, D, H = shape
    kp, kx = jax.random.split(jax.random.key(0))
    params, f = make(H, D, kp)
    xs = jax.random.normal(kx, (B, T, D))
    t0 = time.perf_counter()
    compiled = f.lower(params, xs).compile()
    compile_s = time.perf_counter() - t0
    return (lambda: jax.block_until_ready(compiled(params, xs))), compile_s


def time_torch(kind, shape, threads):
    """torch's fused RNN forward+backward as a function to time (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    dev = torch_device()
    B, T, D, H = shape
    mod = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "vanilla": torch.nn.RNN}[kind]
    m = mod(D, H, batch_first=True).to(dev)
    xs = torch.randn(B, T, D, device=dev)

    def run():
        m.zero_grad(set_to_none=True)
        y, _ = m(xs)
        (y**2).sum().backward()
        if dev == "cuda":
            torch.cuda.synchronize()

    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small shape")
    p.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="interleaved rounds of every implementation",
    )
    p.add_argument("--kinds", default="lstm,gru,vanilla")
    p.add_argument("--out", default="runs/bench_rnn.json")
    add_precision_arg(p)
    p.add_argument(
        "--shapes",
        default=None,
        help="comma-separated B:T:D:H shapes (default the grid)",
    )
    args = p.parse_args(argv)
    set_precision(args.precision)
    grid = QUICK if args.quick else GRID
    if args.shapes:
        grid = parse_shapes(args.shapes)
    threads = os.cpu_count() or 1
    peak = matmul_gflops(args.repeats)
    print(
        f"device {device_label()}; precision {args.precision}; float32 matmul peak "
        f"(XLA): {peak:.1f} GFLOP/s; torch threads {threads}"
    )
    rows = []
    for shape in grid:
        B, T, D, H = shape
        for kind in args.kinds.split(","):
            impls = {
                "jgrad": jgrad_fn(kind),
                "jgrad unroll=4": jgrad_fn(kind, 4),
            }
            if hasattr(rnn, "unroll_batch"):
                impls["jgrad fast"] = jgrad_fn(kind, fast=True)
                impls["jgrad fast unroll=4"] = jgrad_fn(kind, 4, fast=True)
            if kind == "lstm":
                impls["flax LSTMCell"] = flax_fn("LSTMCell")
                impls["flax OptimizedLSTMCell"] = flax_fn("OptimizedLSTMCell")
                impls["plain scan (no hoist)"] = plain_scan_lstm
            elif kind == "gru":
                impls["flax GRUCell"] = flax_fn("GRUCell")
            else:
                impls["flax SimpleCell"] = flax_fn("SimpleCell")
            flops = floor_flops(kind, *shape)
            progs = {name: time_jax(make, shape) for name, make in impls.items()}
            tt = time_torch(kind, shape, threads)
            torch_name = None
            if tt is not None:
                torch_name = "torch nn." + {"lstm": "LSTM", "gru": "GRU"}.get(
                    kind, "RNN"
                )
                progs[torch_name] = (tt, None)
            times = interleaved_times(
                {k: run for k, (run, _) in progs.items()}, args.repeats
            )
            res = {
                k: {**summary(ts), "compile_seconds": progs[k][1]}
                for k, ts in times.items()
            }
            flax_best = min(
                (k for k in res if k.startswith("flax")),
                key=lambda k: res[k]["seconds"],
            )
            for k, v in res.items():
                v["pairs"] = args.repeats
                v["ratio_flax_best"] = median_ratio(times, k, flax_best)
                v["ratio_torch"] = (
                    median_ratio(times, k, torch_name) if torch_name else None
                )
            print(
                f"\n{kind.upper()} B={B} T={T} D={D} H={H}  floor {flops / 1e9:.2f} GFLOP "
                f"= {flops / peak / 1e6:.1f} ms at peak"
            )
            print(
                f"{args.repeats} interleaved rounds; /flax best (to {flax_best}) and "
                "/torch: medians of the per-round ratios"
            )
            print(
                f"{'implementation':<26}{'median ms':>10}{'IQR %':>7}{'compile s':>10}"
                f"{'GFLOP/s':>9}{'/flax best':>11}{'/torch':>8}"
            )
            for name, v in res.items():
                t = v["seconds"]
                comp = (
                    ""
                    if v["compile_seconds"] is None
                    else f"{v['compile_seconds']:.2f}"
                )
                tr = "" if v["ratio_torch"] is None else f"{v['ratio_torch']:.2f}"
                print(
                    f"{name:<26}{t * 1e3:>10.1f}{100 * v['iqr']:>7.0f}{comp:>10}"
                    f"{flops / t / 1e9:>9.1f}{v['ratio_flax_best']:>11.2f}{tr:>8}"
                )
                rows.append(
                    {
                        "kind": kind,
                        "B": B,
                        "T": T,
                        "D": D,
                        "H": H,
                        "impl": name,
                        **v,
                        "gflops": flops / t / 1e9,
                    }
                )
    write_results(
        "bench_rnn.py",
        argv,
        args.out,
        rows,
        matmul_peak_gflops=peak,
        torch_threads=threads,
        precision=args.precision,
        device=device_label(),
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
