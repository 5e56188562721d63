"""The ``jgrad`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jgrad

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from jgrad.experiments import DemoConfig, format_table, run_demo, write_demo

    config = DemoConfig(
        depth=args.depth, width=args.width, batch=args.batch, seed=args.seed
    )
    result = run_demo(config, progress=not args.quiet)
    print(format_table(result, every=args.every))
    paths = write_demo(result, args.out)
    print(f"\nwrote {paths['json']} and {paths['png']}")
    failed = [n["label"] for n in result["nets"] if n["nonfinite_layers"]]
    if failed:
        print(f"warning: non-finite forward activations in {failed}", file=sys.stderr)
    return 0


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
            "For depth-50 width-256 MLPs (sigmoid+standard init, tanh+Glorot, ReLU+Glorot, "
            "ReLU+He, tanh+orthogonal, tanh with weight_var 4) print log10 ||dL/dh_l|| per "
            "layer, computed in log space so underflow is still measured, and write "
            "demo.json and demo.png to --out."
        ),
    )
    d.add_argument(
        "--out", default="runs/demo", help="output folder (default runs/demo)"
    )
    d.add_argument(
        "--seed", type=int, default=0, help="seed for data and init (default 0)"
    )
    d.add_argument("--depth", type=int, default=50, help="hidden layers (default 50)")
    d.add_argument("--width", type=int, default=256, help="layer width (default 256)")
    d.add_argument(
        "--batch", type=int, default=64, help="examples in the loss (default 64)"
    )
    d.add_argument(
        "--every", type=int, default=1, help="print every n-th layer (default 1)"
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_demo)
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
