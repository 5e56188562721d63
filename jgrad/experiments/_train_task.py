"""The job behind ``jgrad train``: a recurrent network on a long-dependency task, trained
with ``jgrad.optim.chain`` and ``jgrad.optim.train``, its gradient flow recorded.

A :class:`TrainConfig` (plain data, saved as ``config.json``) names the task, the cell and
every cure; :func:`run_train` builds the data, the model (a ``jgrad.rnn`` cell read by a
dense readout: of the last step for adding and temporal order, of every step for copy)
and the loss, trains, and writes ``metrics.jsonl``, ``checkpoints/``, ``config.json`` and
``train.png`` (loss with its chance level and global gradient norm per recorded step, and
log10 ||dL/dh_t|| against t at every ``time_norms_every``-th step) to ``out``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp

from jgrad import _checks, data, optim, rnn
from jgrad.experiments._io import save_figure, save_json

__all__ = [
    "CELLS",
    "TASKS",
    "TrainConfig",
    "chance_loss",
    "check_config",
    "plot_train",
    "run_train",
]

TASKS = ("adding", "copy", "temporal_order")
CELLS = ("vanilla", "lstm", "gru")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a ``jgrad train`` run (defaults as the command's)."""

    task: str = "adding"
    seq_len: int = 50
    cell: str = "lstm"
    hidden: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    clip_global_norm: float | None = None
    clip_value: float | None = None
    skip_above: float | None = None
    guard_nonfinite: bool = False
    l2: float = 0.0
    weight_decay: float = 0.0
    batch: int = 32
    steps: int = 500
    every: int = 10
    checkpoint_every: int | None = 100
    time_norms_every: int | None = 100
    seed: int = 0


def _task(config: TrainConfig):
    """(data fn, in_dim, out_dim, loss on (logits per step, y), per_step)."""
    n, T = config.batch, config.seq_len
    if config.task == "adding":

        def draw(key, step):
            t = data.adding(key, n, T)
            return t.x, t.y

        def loss(out, y):
            return jnp.mean((out[:, -1, 0] - y) ** 2)

        return draw, 2, 1, loss
    if config.task == "copy":

        def draw(key, step):
            t = data.copy_task(key, n, T)
            return t.x, t.y

        def loss(out, y):
            logp = jax.nn.log_softmax(out)
            ce = -jnp.mean(jnp.take_along_axis(logp, y[..., None], -1))
            recall = jnp.argmax(out[:, -10:], -1) == y[:, -10:]
            return ce, {"accuracy": jnp.mean(recall)}  # of the recalled symbols

        return draw, 10, 10, loss

    def draw(key, step):
        t = data.temporal_order(key, n, T)
        return t.x, t.y

    def loss(out, y):
        logp = jax.nn.log_softmax(out[:, -1])
        ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], -1))
        return ce, {"accuracy": jnp.mean(jnp.argmax(out[:, -1], -1) == y)}

    return draw, 6, 4, loss


def _scalar(out):
    """The loss of a task loss that may also return metrics."""
    return out[0] if isinstance(out, tuple) else out


def _cell(config: TrainConfig):
    if config.cell == "vanilla":
        return rnn.vanilla(config.hidden, "tanh")
    if config.cell == "gru":
        return rnn.gru(config.hidden)
    return rnn.lstm(config.hidden)


def check_config(config: TrainConfig) -> TrainConfig:
    """Raises ValueError for an unknown task or cell, or a bad size."""
    _checks.choice("task", config.task, TASKS)
    _checks.choice("cell", config.cell, CELLS)
    _checks.positive_int("hidden", config.hidden)
    _checks.positive_int("batch", config.batch)
    if config.seq_len < (10 if config.task == "temporal_order" else 2):
        raise ValueError(
            f"`seq_len` must be >= {10 if config.task == 'temporal_order' else 2} for "
            f"task {config.task!r}, got {config.seq_len}. Pass e.g. --seq-len 50."
        )
    return config


def run_train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = False,
) -> optim.TrainResult:
    """Trains ``config``'s model and writes its files to ``out`` (see the module
    docstring).

    Raises:
        ValueError: a bad config (from :func:`check_config` and ``jgrad.optim.chain``),
            or ``resume`` with a ``config.json`` in ``out`` that differs (the fields
            named).
    """
    check_config(config)
    out = Path(out)
    tx = optim.chain(
        config.optimizer,
        config.learning_rate,
        clip_global_norm=config.clip_global_norm,
        clip_value=config.clip_value,
        skip_above=config.skip_above,
        guard_nonfinite=config.guard_nonfinite,
        l2=config.l2,
        weight_decay=config.weight_decay,
    )
    saved = out / "config.json"
    if resume and saved.exists():
        old = json.loads(saved.read_text())
        diff = [
            k
            for k, v in dataclasses.asdict(config).items()
            if k not in ("steps", "checkpoint_every") and old.get(k) != v
        ]
        if diff:
            raise ValueError(
                f"`resume`: this run's settings differ from the saved config.json in "
                f"{diff}. Resume with the same settings, or pass a new --out."
            )
    draw, in_dim, out_dim, task_loss = _task(config)
    cell = _cell(config)
    key = jax.random.key(config.seed)
    k_cell, k_out, k_run = jax.random.split(key, 3)
    params = {
        "cell": cell.init(k_cell, in_dim),
        "out": {
            "w": jax.random.normal(k_out, (config.hidden, out_dim))
            / jnp.sqrt(config.hidden),
            "b": jnp.zeros((out_dim,)),
        },
    }

    def loss_fn(p, batch):
        xs, y = batch
        carry0 = cell.init_carry((xs.shape[0],))
        _, hs = rnn.unroll_batch(cell, p["cell"], xs, carry0)
        logits = hs @ p["out"]["w"] + p["out"]["b"]
        return task_loss(logits, y)  # the loss, or (loss, {"accuracy": ...})

    def time_norms(p, batch):
        """log10 ||dL/dh_t|| through time for the batch's first sequence (one backward
        pass in log space: jgrad.analyze.rnn_grad_norms)."""
        from jgrad.analyze import rnn_grad_norms

        xs, y = batch

        def one(hs):  # the task loss of example 0 from its (T, H) outputs
            logits = hs @ p["out"]["w"] + p["out"]["b"]
            return _scalar(task_loss(logits[None], y[:1]))

        flow = rnn_grad_norms(cell, p["cell"], xs[0], cell.init_carry(), one)
        return {"log10_time_grad_norms": flow.log10_norm}

    out.mkdir(parents=True, exist_ok=True)
    save_json(dataclasses.asdict(config), saved)
    result = optim.train(
        loss_fn,
        params,
        draw,
        tx,
        steps=config.steps,
        key=k_run,
        out=out,
        every=config.every,
        checkpoint_every=config.checkpoint_every,
        resume=resume,
        progress=progress,
        record_fn=time_norms if config.time_norms_every else None,
        record_every=config.time_norms_every,
        tensorboard=tensorboard,
    )
    plot_train(
        result.history,
        out / "train.png",
        title=_title(config),
        chance=chance_loss(config),
    )
    return result


def chance_loss(config: TrainConfig) -> float:
    """The loss of the best predictor that ignores the dependency (the task's
    ``chance_loss``)."""
    if config.task == "adding":
        return 1.0 / 6.0
    if config.task == "copy":
        return 10 * math.log(8) / (config.seq_len + 20)
    return math.log(4.0)


def _title(config: TrainConfig) -> str:
    clip = (
        f"clip {config.clip_global_norm:g}"
        if config.clip_global_norm
        else "no clipping"
    )
    return (
        f"{config.cell} {config.hidden} on {config.task} (T = {config.seq_len}), {clip}"
    )


def plot_train(
    history: list, path: str | Path, *, title: str = "", chance: float | None = None
) -> Path:
    """Loss (with the chance level, dashed) and gradient norms (global, and each layer's)
    per recorded step, log scales, and log10 ||dL/dh_t|| against t where recorded,
    written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    timed = [r for r in history if "log10_time_grad_norms" in r]
    ncols = 3 if timed else 2
    fig, axes = plt.subplots(
        1, ncols, figsize=(5 * ncols, 3.6), constrained_layout=True
    )
    a, b = axes[0], axes[1]
    a.plot(steps, [r["loss"] for r in history], color="#0072B2", label="training loss")
    if chance is not None:
        a.axhline(chance, color="0.4", ls="--", lw=1, label="chance level")
        a.legend(frameon=False)
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.set_yscale("log")
    b.plot(
        steps,
        [r["grad_norm"] for r in history],
        color="#D55E00",
        label="global, before clipping",
    )
    layers = history[0].get("param_grad_norms", {}) if history else {}
    for j, name in enumerate(layers):
        b.plot(
            steps,
            [r["param_grad_norms"][name] for r in history],
            lw=0.8,
            ls=(0, (4, 1 + j)),
            label=f"layer {name}",
        )
    b.set_xlabel("step")
    b.set_ylabel("global gradient norm ||dL/dθ||")
    b.set_yscale("log")
    b.legend(frameon=False)
    if timed:
        c = axes[2]
        cmap = plt.get_cmap("viridis")
        for j, r in enumerate(timed):
            norms = r["log10_time_grad_norms"]
            c.plot(
                range(len(norms)),
                norms,
                color=cmap(j / max(len(timed) - 1, 1)),
                label=f"step {r['step']}" if j in (0, len(timed) - 1) else None,
            )
        c.set_xlabel("time step t (0: the initial state)")
        c.set_ylabel("log10 ||dL/dh_t||")
        c.legend(frameon=False)
    fig.suptitle(title)
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
