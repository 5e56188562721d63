"""Benchmark: what recording the clipping costs, and LSTM training steps per second.

Each comparison is timed in interleaved rounds (``interleaved_times``: every round runs
both jitted train steps, alternating the order) and reported as the median of the
rounds' ratios, in the default environment:

1. ``jgrad.optim.chain("adam", 1e-3, clip_global_norm=1.0)`` (which records the global
   norm before clipping, every leaf's norm and the clip factor) against the bare optax
   chain ``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))``, one whole
   jitted train step (forward, backward, update) each, for a depth-20 width-256 MLP
   (batch 64) and a jgrad LSTM (B, T, H) = (32, 128, 256) on the adding problem. Goal: at
   most 1.05x.
2. LSTM training on the adding problem, (B, T, H) = (32, 128, 256): the jgrad LSTM
   (``jgrad.rnn.unroll_batch``) with the jgrad chain against flax's
   ``nn.RNN(nn.OptimizedLSTMCell(256))`` with the bare optax chain, the same readout and
   loss. Goal: at least 1.3x the steps per second (a ratio of times at most 0.77).
3. When torch is installed: the same LSTM training step in torch (``nn.LSTM`` +
   ``nn.Linear``, ``clip_grad_norm_(1.0)``, ``torch.optim.Adam(1e-3)``; CUDA when JAX runs
   on a GPU), against the jgrad step.

    python scripts/bench_train.py
    python scripts/bench_train.py --quick       # a smoke run (small sizes)

Prints a table and writes ``--out`` (JSON) with the command and the run's provenance.
"""

from __future__ import annotations

import argparse

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrad
from jgrad import data, optim, rnn
from jgrad.experiments._bench import (
    device_label,
    timed_pair,
    torch_device,
    write_results,
)


def _step(loss_fn, tx):
    @jax.jit
    def step(params, state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


def _runner(step, params, tx, batch):
    state = [params, tx.init(params)]

    def run():
        p, s, loss = step(state[0], state[1], batch)
        jax.block_until_ready(loss)
        state[0], state[1] = p, s

    return run


def _torch_lstm_step(task, H):
    """One torch LSTM training step on the adding batch (forward, backward, global-norm
    clipping, Adam), as a function to time; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    dev = torch_device()
    lstm = torch.nn.LSTM(2, H, batch_first=True).to(dev)
    head = torch.nn.Linear(H, 1, bias=False).to(dev)
    params = [*lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    xs = torch.tensor(np.array(task.x)).to(dev)
    y = torch.tensor(np.array(task.y)).to(dev)

    def run():
        opt.zero_grad(set_to_none=True)
        hs, _ = lstm(xs)
        loss = ((head(hs[:, -1])[:, 0] - y) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()
        else:
            loss.item()

    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 rounds")
    parser.add_argument("--out", default="bench_train.json")
    args = parser.parse_args(argv)
    depth, width, batch = 20, 256, 64
    B, T, H = 32, 128, 256
    if args.quick:
        depth, width, batch, B, T, H, args.rounds = 3, 16, 8, 4, 8, 16, 3
    print(f"device: {device_label()}")
    ours_tx = optim.chain("adam", 1e-3, clip_global_norm=1.0)
    bare_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    rows: list = []

    # 1a. MLP
    net = jgrad.nn.mlp(depth, width, activation="tanh", out_dim=width)
    _, mp = net.init(jax.random.key(0), (width,))
    xb = jax.random.normal(jax.random.key(1), (batch, width))

    def mlp_loss(p, b):
        return jnp.mean((net.apply(p, b) - 0.5 * b) ** 2)

    timed_pair(
        f"MLP {depth}x{width}, B {batch}",
        {
            "jgrad.optim.chain (recorded)": _runner(
                _step(mlp_loss, ours_tx), mp, ours_tx, xb
            ),
            "optax clip + adam": _runner(_step(mlp_loss, bare_tx), mp, bare_tx, xb),
        },
        args.rounds,
        rows,
    )

    # 1b. jgrad LSTM on the adding problem, and 2. against flax
    task = data.adding(jax.random.key(2), B, T)
    lb = (task.x, task.y)
    cell = rnn.lstm(H)
    lp = {
        "cell": cell.init(jax.random.key(3), 2),
        "w": jax.random.normal(jax.random.key(4), (H,)) / jnp.sqrt(H),
    }

    def lstm_loss(p, b):
        xs, y = b
        _, hs = rnn.unroll_batch(cell, p["cell"], xs, cell.init_carry((xs.shape[0],)))
        return jnp.mean((hs[:, -1] @ p["w"] - y) ** 2)

    ours_lstm = _runner(_step(lstm_loss, ours_tx), lp, ours_tx, lb)
    timed_pair(
        f"LSTM ({B}, {T}, {H})",
        {
            "jgrad.optim.chain (recorded)": ours_lstm,
            "optax clip + adam": _runner(_step(lstm_loss, bare_tx), lp, bare_tx, lb),
        },
        args.rounds,
        rows,
    )

    class FlaxModel(fnn.Module):
        @fnn.compact
        def __call__(self, xs):
            hs = fnn.RNN(fnn.OptimizedLSTMCell(H))(xs)
            return fnn.Dense(1, use_bias=False)(hs[:, -1])[:, 0]

    model = FlaxModel()
    fv = model.init(jax.random.key(5), task.x)

    def flax_loss(v, b):
        xs, y = b
        return jnp.mean((model.apply(v, xs) - y) ** 2)

    timed_pair(
        f"LSTM adding ({B}, {T}, {H})",
        {
            "jgrad LSTM + jgrad chain": ours_lstm,
            "flax OptimizedLSTMCell + optax": _runner(
                _step(flax_loss, bare_tx), fv, bare_tx, lb
            ),
        },
        args.rounds,
        rows,
    )
    torch_run = _torch_lstm_step(task, H)
    if torch_run is None:
        print("torch not installed: no torch comparison (pip install torch)")
    else:
        timed_pair(
            f"LSTM adding ({B}, {T}, {H})",
            {"jgrad LSTM + jgrad chain": ours_lstm, "torch nn.LSTM + Adam": torch_run},
            args.rounds,
            rows,
        )
    write_results(
        "bench_train.py", argv, args.out, rows, device=device_label(), sizes=[B, T, H]
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
