"""The experiment runner: a finding is a config, a run and expected numbers; its verdict
is computed from the measurement, never written by hand.

A finding lives in a folder ``papers_repro/<id>_<firstauthor><year>_<slug>/`` with

- ``config.py``: a module docstring (the paper, what is reproduced, the command, the
  expected numbers with tolerances and status tags, the CPU time) and
  ``get_config(quick=False, full=False) -> dict`` (plain data), ``run(config, key) ->
  Result`` (numbers and arrays, built from the library's own pieces) and
  ``plot(result, path)`` (one figure in the paper's style). ``CORE = True`` marks the
  core findings; ``FULL_ONLY = True`` those that run only with ``--full``.
- ``expected.json``: ``{"title": ..., "checks": {name: spec}}`` where a spec is
  ``{"value": v, "abs": a}`` (|measured - v| <= a), ``{"value": v, "rel": r}``
  (|measured - v| <= r |v|), ``{"max": m}`` (measured <= m), ``{"min": m}`` (measured >=
  m) or ``{"min": lo, "max": hi}``, each with a ``"status"`` tag ([src], [num], [mem]).

:func:`verdict` compares a result's numbers with those specs: PASS when every check
passes, FAIL when none does, PARTLY in between. :func:`run_findings` runs findings one
after another, reports a finding that raises as ERROR (with the error) and goes on, and
writes ``<out>/<id>/results.json`` and the figure for each, and ``<out>/results.json``
for all, atomically.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jgrad import _checks
from jgrad.experiments._io import provenance, save_json

__all__ = [
    "Check",
    "Finding",
    "Result",
    "Verdict",
    "find_findings",
    "run_finding",
    "run_findings",
    "verdict",
]


class Result(NamedTuple):
    """What a finding's ``run`` measured.

    Attributes:
        numbers: every measured scalar by name (the checks read these).
        arrays: arrays for the figure and ``results.json`` (lists there).
    """

    numbers: dict
    arrays: dict = {}


class Check(NamedTuple):
    """One measured number against its expected value and tolerance."""

    name: str
    measured: float
    spec: dict
    passed: bool

    def describe(self) -> str:
        """The expectation in words, e.g. ``"0.333 +- 0.03"`` or ``"<= 2.25"``."""
        s = self.spec
        if "value" in s:
            tol = f"+- {s['abs']:g}" if "abs" in s else f"+- {100 * s['rel']:g}%"
            return f"{s['value']:.6g} {tol}"
        parts = []
        if "min" in s:
            parts.append(f">= {s['min']:.6g}")
        if "max" in s:
            parts.append(f"<= {s['max']:.6g}")
        return " and ".join(parts)


class Verdict(NamedTuple):
    """PASS (every check), FAIL (none), PARTLY (some), or ERROR (the run raised)."""

    status: str
    checks: tuple = ()
    error: str | None = None


class Finding(NamedTuple):
    """A folder of ``papers_repro/``, loaded."""

    id: str
    folder: Path
    title: str
    core: bool
    full_only: bool
    get_config: Callable
    run: Callable
    plot: Callable | None
    expected: dict


def _passes(measured: float, spec: dict) -> bool:
    if not math.isfinite(measured):
        return False
    if "value" in spec:
        v = spec["value"]
        tol = spec["abs"] if "abs" in spec else spec["rel"] * abs(v)
        return abs(measured - v) <= tol
    ok = True
    if "min" in spec:
        ok &= measured >= spec["min"]
    if "max" in spec:
        ok &= measured <= spec["max"]
    return bool(ok)


def verdict(result: Result, expected: dict) -> Verdict:
    """Compares ``result.numbers`` with ``expected["checks"]`` (see the module
    docstring). A check whose number is missing from the result fails."""
    checks = []
    for name, spec in expected["checks"].items():
        m = result.numbers.get(name, math.nan)
        m = float(np.asarray(m))
        checks.append(Check(name, m, spec, _passes(m, spec)))
    n = sum(c.passed for c in checks)
    status = "PASS" if n == len(checks) else "FAIL" if n == 0 else "PARTLY"
    return Verdict(status, tuple(checks))


def _root() -> Path:
    return Path(__file__).resolve().parents[2] / "papers_repro"


def _load(folder: Path) -> Finding:
    spec = importlib.util.spec_from_file_location(
        f"papers_repro_{folder.name}", folder / "config.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    expected = json.loads((folder / "expected.json").read_text())
    fid = folder.name.split("_", 1)[0]
    return Finding(
        fid,
        folder,
        expected.get("title", folder.name),
        bool(getattr(mod, "CORE", False)),
        bool(getattr(mod, "FULL_ONLY", False)),
        mod.get_config,
        mod.run,
        getattr(mod, "plot", None),
        expected,
    )


def find_findings(root: str | Path | None = None) -> dict[str, Finding]:
    """Every finding under ``root`` (default: the repository's ``papers_repro/``), by
    id (``"c1"``, ``"e3"``, ...), in id order (core first)."""
    root = _root() if root is None else Path(root)
    if not root.is_dir():
        raise ValueError(
            f"`root` must be the papers_repro/ folder, got {str(root)!r}, which does not "
            "exist. Run jgrad repro from a clone of the repository (pip install -e .)."
        )
    found = {}
    for folder in sorted(root.iterdir()):
        if (folder / "config.py").is_file() and (folder / "expected.json").is_file():
            f = _load(folder)
            found[f.id] = f
    return dict(sorted(found.items(), key=lambda kv: (kv[0][0] != "c", _num(kv[0]))))


def _num(fid: str) -> int:
    digits = "".join(ch for ch in fid if ch.isdigit())
    return int(digits) if digits else 0


def _jsonable_arrays(arrays: dict) -> dict:
    return {k: np.asarray(v).tolist() for k, v in arrays.items()}


def run_finding(
    finding: Finding, *, quick: bool, full: bool, seed: int, out: Path | None
) -> dict:
    """Runs one finding and returns its row (id, title, status, checks, seconds, error);
    with ``out``, writes ``out/<id>/results.json`` and ``out/<id>/<id>.png``."""
    t0 = time.perf_counter()
    config = finding.get_config(quick=quick, full=full)
    row: dict[str, Any] = {"id": finding.id, "title": finding.title, "config": config}
    try:
        result = finding.run(config, jax.random.key(seed))
        v = verdict(result, finding.expected)
    except Exception as err:  # reported, and the other findings still run
        result = None
        v = Verdict(
            "ERROR", (), f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        )
    row["seconds"] = time.perf_counter() - t0
    row["status"] = v.status
    row["error"] = v.error
    row["checks"] = [
        {
            "name": c.name,
            "measured": c.measured,
            "expected": c.describe(),
            "spec": c.spec,
            "passed": c.passed,
        }
        for c in v.checks
    ]
    if result is not None:
        row["numbers"] = {k: float(np.asarray(x)) for k, x in result.numbers.items()}
    if out is not None:
        d = out / finding.id
        d.mkdir(parents=True, exist_ok=True)
        if result is not None and finding.plot is not None:
            try:
                finding.plot(result, d / f"{finding.id}.png")
                row["figure"] = str(d / f"{finding.id}.png")
            except Exception as err:  # a broken figure does not lose the numbers
                row["figure_error"] = f"{type(err).__name__}: {err}"
        full_row = dict(row, provenance=provenance(seed))
        if result is not None:
            full_row["arrays"] = _jsonable_arrays(result.arrays)
        save_json(full_row, d / "results.json")
    return row


def run_findings(
    ids: list[str] | None = None,
    *,
    quick: bool = False,
    full: bool = False,
    seed: int = 0,
    out: str | Path | None = None,
    root: str | Path | None = None,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Runs the findings ``ids`` (None or ``["all"]``: every one; those marked
    ``FULL_ONLY`` only with ``full``) and returns their rows; ``on_row`` is called with
    each as it completes.

    Raises:
        ValueError: an unknown id (the valid ones listed), ``quick`` with ``full``, or
            ``out`` a file.
    """
    _checks.boolean("quick", quick)
    _checks.boolean("full", full)
    if quick and full:
        raise ValueError(
            "`quick` and `full` exclude each other, got both. Pass one of them (or "
            "neither, for the default scale)."
        )
    seed = _checks.non_negative_int("seed", seed)
    found = find_findings(root)
    if not ids or list(ids) == ["all"]:
        chosen = [f for f in found.values() if full or not f.full_only]
    else:
        unknown = [i for i in ids if i.lower() not in found]
        if unknown:
            raise ValueError(
                f"`ids` must be finding ids, one of {list(found)} (or 'all'), got "
                f"{unknown}. Pass e.g. `jgrad repro c1 c3`."
            )
        chosen = [found[i.lower()] for i in ids]
    out_path = None
    if out is not None:
        out_path = Path(out)
        if out_path.exists() and not out_path.is_dir():
            raise ValueError(
                f"`out` must be a directory (created if missing), got {str(out_path)!r}, "
                "which is a file. Pass another path."
            )
        out_path.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chosen), desc="repro", unit="finding")
    rows = []
    for f in chosen:
        if bar is not None:
            bar.set_postfix_str(f.id)
        row = run_finding(f, quick=quick, full=full, seed=seed, out=out_path)
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if out_path is not None:  # the summary so far: a crash loses nothing finished
            save_json(
                {"findings": rows, "provenance": provenance(seed), "quick": quick},
                out_path / "results.json",
            )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def format_row(row: dict) -> str:
    """One line per finding: id, status, seconds, then each check's measured value
    against its expectation."""
    checks = "; ".join(
        f"{c['name']} {c['measured']:.4g} vs {c['expected']}"
        + ("" if c["passed"] else " (FAIL)")
        for c in row["checks"]
    )
    err = f" {row['error'].splitlines()[0]}" if row.get("error") else ""
    return f"{row['id']:<4} {row['status']:<6} {row['seconds']:6.1f} s  {checks}{err}"
