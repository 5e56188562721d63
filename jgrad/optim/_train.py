"""``train``: a jitted training loop that records its gradient flow, checkpoints with
orbax and resumes bit-identically.

Each step draws its batch with ``data(jax.random.fold_in(key, step), step)``, so a run is
determined by its key and the step it is at (the data position): resuming from a
checkpoint at step k (params, optimizer state, the run's PRNG key, step) replays the same
batches and gives the metrics of an uninterrupted run. Checkpoints are orbax's
(``ocp.CheckpointManager``), which writes each one to a temporary directory and renames it
when complete, so a crash while writing leaves the previous checkpoint loadable. Metrics
go to ``metrics.jsonl`` (one line per recorded step, flushed as written; on resume the
lines after the checkpoint are dropped).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jgrad import _checks
from jgrad.optim._record import ClipStats, GateState

__all__ = ["Divergence", "TrainResult", "train"]


class Divergence(NamedTuple):
    """Where a run went non-finite.

    Attributes:
        step: the first step whose loss or gradient held a NaN or inf.
        leaf: the path of the first parameter leaf (in tree order) whose gradient was
            non-finite, or None when only the loss was.
        grad_norms: the global gradient norms of the recorded steps before it.
        leaves: the paths of every parameter leaf whose gradient was non-finite.
        record: ``record_fn(params, batch)`` at that step's params and batch (before
            the update), when ``train`` was given a ``record_fn``, else None: with
            :func:`jgrad.optim.record_layers`, ``nonfinite_forward_layer`` and
            ``nonfinite_backward_layer`` say which layer went non-finite first, going
            forward and going back.
    """

    step: int
    leaf: str | None
    grad_norms: list
    leaves: list
    record: dict | None


class TrainResult(NamedTuple):
    """The end of a run.

    Attributes:
        params: the final params.
        opt_state: the final optimizer state.
        step: the number of steps taken (counting those before a resume).
        history: the recorded metrics, one dict per recorded step (as in
            ``metrics.jsonl``).
        divergence: a :class:`Divergence`, or None.
    """

    params: Any
    opt_state: Any
    step: int
    history: list
    divergence: Divergence | None


def _paths(tree) -> list[str]:
    return [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _groups(names: list[str]) -> list[str]:
    """Each leaf path's first key: the layer (top-level entry of params) it belongs to."""
    return [n[: n.index("]") + 1] if "]" in n else "params" for n in names]


def _clip_info(opt_state):
    """(clip factor, skipped count) from a jgrad chain's state, or (None, None)."""
    factor = skipped = None
    for s in jax.tree.leaves(
        opt_state, is_leaf=lambda s: isinstance(s, (ClipStats, GateState))
    ):
        if isinstance(s, GateState):
            skipped = s.skipped_nonfinite + s.skipped_large
            factor = _clip_info(s.inner)[0]
        elif isinstance(s, ClipStats) and factor is None:
            factor = s.clip_factor
    return factor, skipped


def _make_step(loss_fn, tx):
    def loss_aux(params, batch):
        out = loss_fn(params, batch)
        return out if isinstance(out, tuple) else (out, {})

    @jax.jit
    def step(params, opt_state, batch):
        (loss, aux), grads = jax.value_and_grad(loss_aux, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        leaf_finite = jnp.stack(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "leaf_grad_norms": jnp.stack(
                [optax.tree.norm(g) for g in jax.tree.leaves(grads)]
            ),
            "leaf_finite": leaf_finite,
            **aux,
        }
        factor, skipped = _clip_info(opt_state)
        if factor is not None:
            metrics["clip_factor"] = factor
        if skipped is not None:
            metrics["skipped"] = skipped
        return params, opt_state, metrics

    return step


def _check_out(out) -> pathlib.Path | None:
    if out is None:
        return None
    path = pathlib.Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"`out` must be a directory (created if missing), got {str(path)!r}, which "
            "is a file. Pass another path."
        )
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise ValueError(
            f"`out` must be writable, got {str(path)!r}. Pass a directory you can write."
        )
    return path


def train(
    loss_fn: Callable,
    params: Any,
    data: Callable[[jax.Array, int], Any],
    tx: optax.GradientTransformation,
    *,
    steps: int,
    key: jax.Array,
    out: str | os.PathLike | None = None,
    every: int = 10,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    record_fn: Callable[[Any, Any], dict] | None = None,
    record_every: int | None = None,
    tensorboard: bool = False,
) -> TrainResult:
    """Trains ``params`` with ``tx``: one jitted step per batch, metrics every ``every``
    steps, orbax checkpoints every ``checkpoint_every``, a tqdm progress bar; stops at
    the first step whose loss or gradient is non-finite (unless ``tx`` skips such steps,
    ``jgrad.optim.chain(..., guard_nonfinite=True)``) and reports where.

    Args:
        loss_fn: ``loss_fn(params, batch) -> loss`` or ``-> (loss, metrics)`` (a dict of
            scalars recorded with the rest).
        params: the initial params.
        data: ``data(key, step) -> batch``, deterministic in its arguments (the
            generators of ``jgrad.data`` are).
        tx: an optax transformation (``jgrad.optim.chain`` records clipping, which the
            metrics then include).
        steps: the total number of steps (resumed runs count the steps before).
        key: PRNG key of the run.
        out: a directory for ``metrics.jsonl`` and ``checkpoints/`` (None: nothing
            written).
        every: record metrics every this many steps (and at the last step).
        checkpoint_every: save a checkpoint every this many steps (needs ``out``), or
            None (only at the end, when ``out`` is given).
        resume: continue from the latest checkpoint in ``out`` (params and optimizer
            state restored with the structure of the given ones).
        progress: show a tqdm progress bar.
        record_fn: ``record_fn(params, batch) -> dict`` of extra metrics (e.g.
            ``jgrad.analyze.rnn_grad_norms`` through time), called eagerly after every
            ``record_every``-th step, its values (arrays as lists) added to that step's
            row, which is then recorded.
        record_every: how often ``record_fn`` runs (a positive int; needed with it).
        tensorboard: also write every recorded row to TensorBoard under
            ``out/tensorboard`` (scalars, and a histogram of the log10 leaf gradient
            norms), with tensorboardX (``pip install 'jgrad[tensorboard]'``).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: ``steps``/``every``/``checkpoint_every`` not positive ints, ``key``
            not a PRNG key, ``out`` a file or not writable, ``resume`` without ``out``
            or without a checkpoint there, or a checkpoint of another model (the field
            that does not match named).
    """
    steps = _checks.positive_int("steps", steps)
    every = _checks.positive_int("every", every)
    if checkpoint_every is not None:
        checkpoint_every = _checks.positive_int("checkpoint_every", checkpoint_every)
    _checks.prng_key("key", key)
    _checks.boolean("resume", resume)
    _checks.boolean("progress", progress)
    if record_fn is not None:
        if not callable(record_fn):
            raise ValueError(
                f"`record_fn` must be a function (params, batch) -> dict, got "
                f"{type(record_fn).__name__}."
            )
        record_every = _checks.positive_int(
            "record_every", record_every, "Pass how often record_fn runs, e.g. 100."
        )
    for name, fn in (("loss_fn", loss_fn), ("data", data)):
        if not callable(fn):
            raise ValueError(f"`{name}` must be a function, got {type(fn).__name__}.")
    path = _check_out(out)
    _checks.boolean("tensorboard", tensorboard)
    writer = _tensorboard(path) if tensorboard else None
    if resume and path is None:
        raise ValueError("`resume` needs `out`, the directory of the run to resume.")
    opt_state = tx.init(params)
    manager = None
    start = 0
    if path is not None:
        import orbax.checkpoint as ocp

        manager = ocp.CheckpointManager(
            path.absolute() / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=2),
        )
        if resume:
            params, opt_state, start = _restore(manager, params, opt_state, key)
    history = _read_history(path, start) if resume else []
    if path is not None:
        _write_history(path, history)
    step_fn = _make_step(loss_fn, tx)
    names = _paths(params)
    groups = _groups(names)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="train", unit="step")
    divergence = None
    guarded = _clip_info(opt_state)[1] is not None
    nonfinite_steps = history[-1].get("nonfinite_steps", 0) if history else 0
    for i in range(start, steps):
        batch = data(jax.random.fold_in(key, i), i)
        before = params
        params, opt_state, m = step_fn(params, opt_state, batch)
        last = i + 1 == steps
        bad = not (bool(jnp.isfinite(m["loss"])) and bool(jnp.isfinite(m["grad_norm"])))
        nonfinite_steps += int(bad)
        m["nonfinite_steps"] = nonfinite_steps
        extra = record_fn is not None and (i + 1) % record_every == 0
        if (i + 1) % every == 0 or last or extra or (bad and not guarded):
            row = _row(i + 1, m, names, groups)
            if extra:
                row.update(_row(i + 1, record_fn(params, batch)))
            history.append(row)
            if path is not None:
                _append(path, row)
            if writer is not None:
                _log_row(writer, row)
            if bar is not None:
                bar.set_postfix(
                    loss=f"{row['loss']:.4g}", grad_norm=f"{row['grad_norm']:.3g}"
                )
        if bar is not None:
            bar.update(1)
        if bad and not guarded:
            finite = np.asarray(m["leaf_finite"])
            leaves = [n for n, f in zip(names, finite, strict=True) if not f]
            divergence = Divergence(
                i + 1,
                leaves[0] if leaves else None,
                [r["grad_norm"] for r in history[:-1]],
                leaves,
                None if record_fn is None else _row(i + 1, record_fn(before, batch)),
            )
            break
        if manager is not None and checkpoint_every and (i + 1) % checkpoint_every == 0:
            _save(manager, i + 1, params, opt_state, key)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    taken = divergence.step if divergence else steps
    if manager is not None:
        if divergence is None and manager.latest_step() != taken:
            _save(manager, taken, params, opt_state, key)
        manager.wait_until_finished()
        manager.close()
    return TrainResult(params, opt_state, taken, history, divergence)


def _tensorboard(path):
    if path is None:
        raise ValueError("`tensorboard` needs `out`, the directory to write to.")
    try:
        from tensorboardX import SummaryWriter
    except ImportError as err:
        raise ValueError(
            "`tensorboard` needs tensorboardX, an optional dependency: pip install "
            "'jgrad[tensorboard]' (or tensorboardX)."
        ) from err
    return SummaryWriter(str(path / "tensorboard"))


def _log_row(writer, row: dict) -> None:
    step = row["step"]
    for k, v in row.items():
        if k == "step":
            continue
        if k == "param_grad_norms":
            for name, v1 in v.items():
                writer.add_scalar(f"param_grad_norms/{name}", v1, step)
        elif isinstance(v, (list, dict)):
            a = np.asarray(list(v.values()) if isinstance(v, dict) else v, np.float64)
            if k == "leaf_grad_norms":
                a = np.log10(a[a > 0])
                k = "log10_leaf_grad_norms"
            if a.size and np.all(np.isfinite(a)):
                writer.add_histogram(k, a, step)
        else:
            writer.add_scalar(k, v, step)
    writer.flush()


def _row(step: int, m: dict, names=None, groups=None) -> dict:
    """One metrics row of plain Python numbers; with ``names``, the leaf norms keyed by
    leaf path and ``param_grad_norms`` per layer (summed in float64)."""
    row = {"step": step}
    for k, v in m.items():
        if k in ("leaf_finite",):
            continue
        v = np.asarray(v)
        row[k] = v.tolist() if v.ndim else float(v) if v.dtype.kind == "f" else int(v)
    if names is not None and "leaf_grad_norms" in row:
        norms = np.asarray(row["leaf_grad_norms"], np.float64)
        row["leaf_grad_norms"] = dict(zip(names, norms.tolist(), strict=True))
        sq: dict[str, float] = {}
        for g, n in zip(groups, norms, strict=True):
            sq[g] = sq.get(g, 0.0) + float(n) ** 2
        row["param_grad_norms"] = {g: float(np.sqrt(v)) for g, v in sq.items()}
    return row


def _key_data(key) -> np.ndarray:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(key))
    return np.asarray(key)


def _save(manager, step, params, opt_state, key) -> None:
    import orbax.checkpoint as ocp

    manager.save(
        step,
        args=ocp.args.StandardSave(
            {"params": params, "opt_state": opt_state, "key": _key_data(key)}
        ),
    )


def _restore(manager, params, opt_state, key):
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        raise ValueError(
            f"`resume` found no checkpoint in {manager.directory}. Start the run without "
            "resume=True, or pass the `out` of the run to resume."
        )
    target = {"params": params, "opt_state": opt_state, "key": _key_data(key)}
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    except (OSError, RuntimeError) as err:  # missing or corrupt files
        raise ValueError(
            f"`resume`: the checkpoint at step {step} in {manager.directory} cannot be "
            f"read ({type(err).__name__}: {err}). Delete that step's folder to resume "
            "from the one before, or start a new `out`."
        ) from err
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"`resume`: the checkpoint at step {step} in {manager.directory} does not "
            f"match this model and optimizer ({err}). Resume with the same model and "
            "optimizer, or start a new `out`."
        ) from err
    for name in ("params", "opt_state"):
        got = jax.tree.map(np.shape, restored[name])
        want = jax.tree.map(np.shape, target[name])
        if got != want:
            raise ValueError(
                f"`resume`: the checkpoint's {name} do not match this run's (shapes "
                f"{got} vs {want}). Resume with the same model, or start a new `out`."
            )
    if not np.array_equal(restored["key"], target["key"]):
        raise ValueError(
            f"`key`: the checkpoint at step {step} in {manager.directory} was written "
            f"by a run with another PRNG key (key data {restored['key'].tolist()}, got "
            f"{target['key'].tolist()}); resuming with it would draw other batches. "
            "Pass the run's key, or start a new `out`."
        )
    return restored["params"], restored["opt_state"], int(step)


def _read_history(path, upto: int) -> list:
    file = path / "metrics.jsonl"
    if not file.exists():
        return []
    rows = []
    for line in file.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash while it was written
            continue
    return [r for r in rows if r.get("step", upto + 1) <= upto]


def _write_history(path, rows) -> None:
    tmp = path / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path / "metrics.jsonl")


def _append(path, row) -> None:
    with open(path / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
