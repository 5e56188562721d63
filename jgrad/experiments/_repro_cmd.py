"""``jgrad repro``: runs findings of ``papers_repro/`` and prints one line each."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_repro"]


def _repro(args: argparse.Namespace) -> int:
    from jgrad.experiments._runner import format_row, run_findings

    out = Path(args.out)
    print(
        f"jgrad repro: {' '.join(args.ids) or 'all'}"
        f"{' --quick' if args.quick else ''}{' --full' if args.full else ''} -> {out}"
    )
    rows = run_findings(
        args.ids or None,
        quick=args.quick,
        full=args.full,
        seed=args.seed,
        out=out,
        progress=not args.quiet,
        on_row=lambda row: print(format_row(row), flush=True),
    )
    counts = {
        s: sum(r["status"] == s for r in rows) for s in ("PASS", "PARTLY", "FAIL")
    }
    errors = sum(r["status"] == "ERROR" for r in rows)
    print(
        f"{counts['PASS']} PASS, {counts['PARTLY']} PARTLY, {counts['FAIL']} FAIL, "
        f"{errors} ERROR; {out / 'results.json'}"
    )
    core_bad = [r["id"] for r in rows if r["status"] != "PASS" and r["id"][0] == "c"]
    return 1 if core_bad else 0


def add_repro(
    sub, out_type: Callable[[str], str], int_type: Callable[..., Callable[[str], int]]
) -> None:
    """Adds the ``repro`` subcommand to the ``jgrad`` parser's subparsers."""
    r = sub.add_parser(
        "repro",
        help="reproduce published findings on gradient flow (papers_repro/)",
        description=(
            "Run the findings of papers_repro/ (ids such as c1 c3 e2, or all), print "
            "each one's measured numbers against the expected ones with PASS / PARTLY / "
            "FAIL, and write results.json and one figure per finding to --out. Exits 1 "
            "when a core finding (c1-c8) does not pass."
        ),
    )
    r.add_argument("ids", nargs="*", help="finding ids, or all (default all)")
    scale = r.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="reduced budgets")
    scale.add_argument(
        "--full", action="store_true", help="larger budgets, and the fragile findings"
    )
    r.add_argument(
        "--out",
        type=out_type,
        default="runs/repro",
        help="output folder, created if missing (default %(default)s)",
    )
    r.add_argument(
        "--seed",
        type=int_type("--seed", 0, 0),
        default=0,
        help="seed of every finding, >= 0 (default %(default)s)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_repro, parser=r)
