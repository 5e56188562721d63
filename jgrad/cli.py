"""The ``jgrad`` command line.

Every option is checked while the arguments are parsed, before anything is computed: a bad
value exits with status 2 and an argparse message that names the flag, what it must be,
what it got and what to pass instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jgrad
from jgrad.experiments._repro_cmd import add_repro
from jgrad.experiments._sweep_task import add_sweep

__all__ = ["main"]

# jax.random.key takes seeds that fit a signed 64-bit integer.
_MAX_SEED = 2**63 - 1


def _int_type(flag: str, minimum: int, example: int) -> Callable[[str], int]:
    """An argparse ``type=`` for an integer flag that must be >= ``minimum`` (0 or 1)."""
    kind = "a positive integer" if minimum == 1 else "a non-negative integer"

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be {kind}, got {text if value is not None else repr(text)}. "
                f"Pass e.g. {flag} {example}."
            )
        if flag == "--seed" and value > _MAX_SEED:
            raise argparse.ArgumentTypeError(
                f"must be at most {_MAX_SEED} (2**63 - 1), got {text}. "
                f"Pass e.g. {flag} {example}."
            )
        return value

    parse.__name__ = kind  # argparse names the type in some messages
    return parse


_OUT_FIX = (
    "Pass a folder you can write, e.g. --out runs/demo; it is created if missing."
)


def _out_folder(text: str) -> str:
    """An argparse ``type=`` for ``--out``: a folder that exists or can be created under
    a folder this process can write. Touches nothing on disk (see :func:`_make_out`)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"must be a folder path, got {text!r}. {_OUT_FIX}"
        )
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"must be a folder, got {text!r}, which is an existing file. {_OUT_FIX}"
        )
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"cannot create folder {text!r}: {str(parent)!r} is a file. {_OUT_FIX}"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"cannot write to {text!r}: no write permission on {str(parent)!r}. "
            f"{_OUT_FIX}"
        )
    return text


def _make_out(parser: argparse.ArgumentParser, out: str) -> None:
    """Creates ``out`` and writes a temporary file there, once every option is parsed
    and before the run: ``os.access`` cannot foresee every refusal (root on a special
    file system, quotas). Fails like a bad argument."""
    try:
        Path(out).expanduser().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=Path(out).expanduser()):
            pass
    except OSError as err:
        parser.error(
            f"argument --out: cannot write to {out!r}: {err.strerror or err}. {_OUT_FIX}"
        )


def _demo(args: argparse.Namespace) -> int:
    _make_out(args.parser, args.out)
    from jgrad.experiments import DemoConfig, format_table, run_demo, write_demo

    config = DemoConfig(
        depth=args.depth, width=args.width, batch=args.batch, seed=args.seed
    )
    result = run_demo(config, progress=not args.quiet)
    print(format_table(result, every=args.every))
    paths = write_demo(result, Path(args.out).expanduser())
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    failed = [n["label"] for n in result["nets"] if n["nonfinite_layers"]]
    if failed:
        print(f"warning: non-finite forward activations in {failed}", file=sys.stderr)
    return 0


def _float_type(flag: str, example: float, *, allow_zero: bool = False):
    """An argparse ``type=`` for a finite float flag that must be > 0 (or >= 0)."""
    kind = "a number >= 0" if allow_zero else "a number > 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        ok = value is not None and value == value and abs(value) != float("inf")
        if not ok or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(
                f"must be {kind}, got {text!r}. Pass e.g. {flag} {example}."
            )
        return value

    parse.__name__ = kind
    return parse


def _train(args: argparse.Namespace) -> int:
    _make_out(args.parser, args.out)
    from jgrad.experiments._train_task import TrainConfig, run_train

    config = TrainConfig(
        task=args.task,
        seq_len=args.seq_len,
        cell=args.cell,
        hidden=args.hidden,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        clip_global_norm=args.clip_global_norm,
        clip_value=args.clip_value,
        skip_above=args.skip_above,
        guard_nonfinite=args.guard_nonfinite,
        l2=args.l2,
        weight_decay=args.weight_decay,
        batch=args.batch,
        steps=args.steps,
        every=args.every,
        checkpoint_every=args.checkpoint_every,
        time_norms_every=args.time_norms_every,
        seed=args.seed,
    )
    result = run_train(
        config,
        Path(args.out).expanduser(),
        resume=args.resume,
        progress=not args.quiet,
        tensorboard=args.tensorboard,
    )
    last = result.history[-1] if result.history else {}
    print(
        f"step {result.step}: loss {last.get('loss', float('nan')):.5g}, "
        f"gradient norm {last.get('grad_norm', float('nan')):.4g}"
    )
    print(f"wrote {args.out}/metrics.jsonl, config.json, train.png, checkpoints/")
    if result.divergence is not None:
        d = result.divergence
        print(
            f"diverged: the loss or gradient went non-finite at step {d.step} "
            f"(first in {d.leaf or 'the loss'})",
            file=sys.stderr,
        )
        return 1
    return 0


def _add_train(sub) -> None:
    from jgrad.experiments._train_task import CELLS, TASKS
    from jgrad.optim import OPTIMIZERS

    t = sub.add_parser(
        "train",
        help="train an RNN on a long-dependency task, every cure a switch",
        description=(
            "Train a recurrent network (a jgrad.rnn cell and a dense readout) on a "
            "generated long-dependency task with a jgrad.optim chain, recording the loss, "
            "the gradient norm before clipping and the clip factor; writes "
            "metrics.jsonl, config.json, train.png and orbax checkpoints to --out."
        ),
    )
    t.add_argument(
        "--task", choices=TASKS, default="adding", help="(default %(default)s)"
    )
    t.add_argument(
        "--seq-len",
        type=_int_type("--seq-len", 2, 50),
        default=50,
        help="sequence length T, >= 2 (default %(default)s)",
    )
    t.add_argument(
        "--cell", choices=CELLS, default="lstm", help="(default %(default)s)"
    )
    t.add_argument(
        "--hidden",
        type=_int_type("--hidden", 1, 64),
        default=64,
        help="hidden units (default %(default)s)",
    )
    t.add_argument(
        "--optimizer", choices=OPTIMIZERS, default="adam", help="(default %(default)s)"
    )
    t.add_argument(
        "--lr",
        type=_float_type("--lr", 1e-3),
        default=1e-3,
        help="learning rate, > 0 (default %(default)s)",
    )
    t.add_argument(
        "--clip-global-norm",
        type=_float_type("--clip-global-norm", 1.0),
        default=None,
        help="clip the gradient's global norm (default: off)",
    )
    t.add_argument(
        "--clip-value",
        type=_float_type("--clip-value", 0.5),
        default=None,
        help="clip every gradient entry (default: off)",
    )
    t.add_argument(
        "--skip-above",
        type=_float_type("--skip-above", 100.0),
        default=None,
        help="skip steps whose gradient norm exceeds this (default: off)",
    )
    t.add_argument(
        "--guard-nonfinite",
        action="store_true",
        help="skip steps whose gradient holds a NaN or inf",
    )
    t.add_argument(
        "--l2",
        type=_float_type("--l2", 1e-4, allow_zero=True),
        default=0.0,
        help="L2 penalty added to the gradient (default %(default)s)",
    )
    t.add_argument(
        "--weight-decay",
        type=_float_type("--weight-decay", 1e-4, allow_zero=True),
        default=0.0,
        help="decoupled weight decay (default %(default)s)",
    )
    t.add_argument(
        "--batch",
        type=_int_type("--batch", 1, 32),
        default=32,
        help="(default %(default)s)",
    )
    t.add_argument(
        "--steps",
        type=_int_type("--steps", 1, 500),
        default=500,
        help="(default %(default)s)",
    )
    t.add_argument(
        "--every",
        type=_int_type("--every", 1, 10),
        default=10,
        help="record metrics every n steps (default %(default)s)",
    )
    t.add_argument(
        "--checkpoint-every",
        type=_int_type("--checkpoint-every", 1, 100),
        default=100,
        help="(default %(default)s)",
    )
    t.add_argument(
        "--time-norms-every",
        type=_int_type("--time-norms-every", 1, 100),
        default=100,
        help="record log10 ||dL/dh_t|| for every t every n steps (default %(default)s)",
    )
    t.add_argument(
        "--seed",
        type=_int_type("--seed", 0, 0),
        default=0,
        help="seed for data and init, >= 0 (default %(default)s)",
    )
    t.add_argument(
        "--out",
        type=_out_folder,
        default="runs/train",
        help="output folder, created if missing (default %(default)s)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --out",
    )
    t.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log to TensorBoard in --out/tensorboard (needs tensorboardX)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train, parser=t)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jgrad",
        description="Measure, explain and cure vanishing and exploding gradients.",
    )
    p.add_argument("--version", action="version", version=f"jgrad {jgrad.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser(
        "demo",
        help="per-layer gradient norms of deep MLPs: causes and cures side by side",
        description=(
            "For MLPs of --depth hidden layers of --width units, six settings (causes: "
            "sigmoid+standard init, ReLU+Glorot, tanh with weight_var 4; cures: tanh+Glorot, "
            "ReLU+He, tanh+orthogonal), print log10 ||dL/dh_l|| per layer, computed in log "
            "space so underflow is still measured, and write demo.json, demo.png and "
            "demo.pdf to --out."
        ),
    )
    d.add_argument(
        "--out",
        type=_out_folder,
        default="runs/demo",
        help="output folder, created if missing (default %(default)s)",
    )
    d.add_argument(
        "--seed",
        type=_int_type("--seed", 0, 0),
        default=0,
        help="seed for data and init, >= 0 (default %(default)s)",
    )
    d.add_argument(
        "--depth",
        type=_int_type("--depth", 1, 50),
        default=50,
        help="hidden layers, >= 1 (default %(default)s)",
    )
    d.add_argument(
        "--width",
        type=_int_type("--width", 1, 256),
        default=256,
        help="layer width and input size, >= 1 (default %(default)s)",
    )
    d.add_argument(
        "--batch",
        type=_int_type("--batch", 1, 64),
        default=64,
        help="examples in the loss, >= 1 (default %(default)s)",
    )
    d.add_argument(
        "--every",
        type=_int_type("--every", 1, 5),
        default=1,
        help="print every n-th layer (and the last), >= 1 (default %(default)s)",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_demo, parser=d)
    _add_train(sub)
    add_repro(sub, _out_folder, _int_type)
    add_sweep(sub, _out_folder, _int_type)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jgrad`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ValueError as err:  # bad arguments: a clear message, no traceback
        parser.exit(2, f"jgrad {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
