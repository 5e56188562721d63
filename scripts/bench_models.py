"""Benchmark: analysing a flax linen model costs what analysing it as jgrad costs.

Two comparisons, each timed in interleaved rounds (``interleaved_times``: every round
runs both functions, alternating the order) and reported as the median of the rounds'
ratios, everything jitted, in the default environment:

1. ``module_grad_norms`` on a flax linen MLP written with ``@nn.compact`` (``depth``
   tanh(Dense(width)) blocks and a Dense readout; batch ``--batch``): the gradient norms
   at every submodule call and every parameter leaf, against ONE ``jax.grad`` of the
   same loss with respect to the params (what a user would otherwise run). Goal: at most
   1.2x.
2. The chain sweeps on the same network as an ``nn.Sequential`` (converted to jgrad's
   dense and activation layers) against ``jgrad.nn.mlp`` with the same weights:
   ``input_output_spectrum`` and ``output_spectra`` of one example, and
   ``layer_grad_norms`` of the batch. Goal: within 1.2x. The ``module_chain`` of the
   compact model (autodiff segments) is timed against the same baseline, for reference.

    python scripts/bench_models.py                  # depth 20, width 256, batch 64
    python scripts/bench_models.py --quick          # a smoke run (depth 3, width 16)

Prints a table and writes ``--out`` (JSON, one row per comparison) with the command and
the run's provenance.
"""

from __future__ import annotations

import argparse

import flax.linen as fnn
import jax
import jax.numpy as jnp

import jgrad
from jgrad import analyze
from jgrad.experiments._bench import (
    device_label,
    timed_pair,
    write_results,
)


class CompactMLP(fnn.Module):
    depth: int
    width: int

    @fnn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = jnp.tanh(fnn.Dense(self.width)(x))
        return fnn.Dense(self.width)(x)


def _sequential(depth, width):
    layers = []
    for _ in range(depth):
        layers += [fnn.Dense(width), jnp.tanh]
    return fnn.Sequential([*layers, fnn.Dense(width)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="depth 3, width 16")
    parser.add_argument("--out", default="bench_models.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.depth, args.width, args.batch, args.rounds = 3, 16, 4, 3
    d, n, b = args.depth, args.width, args.batch
    key = jax.random.key(0)
    xs = jax.random.normal(jax.random.key(1), (b, n))
    x = xs[0]
    t = jax.random.normal(jax.random.key(2), (b, n))

    def loss(y):
        return 0.5 * jnp.mean(jnp.sum(jnp.square(y - t), axis=-1))

    model = CompactMLP(d, n)
    variables = model.init(key, xs)
    print(f"device: {device_label()}; depth {d}, width {n}, batch {b}")
    rows: list = []

    mgn = jax.jit(lambda v, x: analyze.module_grad_norms(model, v, x, loss))
    grad = jax.jit(jax.grad(lambda v, x: loss(model.apply(v, x))))
    timed_pair(
        "per-module grad norms",
        {
            "module_grad_norms": lambda: jax.block_until_ready(mgn(variables, xs)),
            "jax.grad of the loss": lambda: jax.block_until_ready(grad(variables, xs)),
        },
        args.rounds,
        rows,
    )

    # the same weights as an nn.Sequential and as jgrad.nn.mlp
    seq = _sequential(d, n)
    P = variables["params"]
    seq_vars = {"params": {f"layers_{2 * i}": P[f"Dense_{i}"] for i in range(d + 1)}}
    net = jgrad.nn.mlp(d, n, activation="tanh", out_dim=n)
    params = tuple(
        {"w": P[f"Dense_{i // 2}"]["kernel"], "b": P[f"Dense_{i // 2}"]["bias"]}
        if i % 2 == 0
        else {}
        for i in range(2 * d + 1)
    )
    chain = analyze.module_chain(model, (n,))
    for name, fn, data in (
        ("input_output_spectrum", analyze.input_output_spectrum, x),
        ("output_spectra", analyze.output_spectra, x),
        ("layer_grad_norms", None, xs),
    ):
        if fn is None:

            def fn(net, p, v):
                return analyze.layer_grad_norms(net, p, v, loss)

        ours = jax.jit(lambda p, v, fn=fn: fn(seq, p, v))
        mine = jax.jit(lambda p, v, fn=fn: fn(net, p, v))
        timed_pair(
            name,
            {
                "flax nn.Sequential": lambda o=ours, v=data: jax.block_until_ready(
                    o(seq_vars, v)
                ),
                "jgrad.nn.mlp": lambda m=mine, v=data: jax.block_until_ready(
                    m(params, v)
                ),
            },
            args.rounds,
            rows,
        )
        if name != "layer_grad_norms":
            via = jax.jit(lambda p, v, fn=fn: fn(chain, p, v))
            timed_pair(
                name,
                {
                    "flax module_chain (autodiff)": lambda c=via: jax.block_until_ready(
                        c(variables, x)
                    ),
                    "jgrad.nn.mlp": lambda m=mine: jax.block_until_ready(m(params, x)),
                },
                args.rounds,
                rows,
            )
    write_results(
        "bench_models.py",
        argv,
        args.out,
        rows,
        depth=d,
        width=n,
        batch=b,
        device=device_label(),
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
