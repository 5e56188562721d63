"""The papers_repro runner: verdicts from measurements (PASS, PARTLY, FAIL), a finding
that raises is an ERROR row while the others still run, result files, bad input."""

import json
import math
import textwrap

import pytest

from jgrad import experiments
from jgrad.cli import main
from jgrad.experiments import Check, Result, verdict

EXPECTED = {
    "checks": {
        "slope": {"value": -0.693147, "abs": 0.03, "status": "[num]"},
        "ratio": {"value": 2.0, "rel": 0.05, "status": "[src]"},
        "loss": {"min": 2.25, "status": "[num]"},
        "acc": {"max": 0.15, "status": "[num]"},
        "band": {"min": 0.4, "max": 0.6, "status": "[mem]"},
    }
}


def test_verdict_compares_each_number_with_its_tolerance():
    good = {"slope": -0.70, "ratio": 2.09, "loss": 2.30, "acc": 0.1, "band": 0.5}
    v = verdict(Result(good), EXPECTED)
    assert v.status == "PASS" and all(c.passed for c in v.checks)
    bad = {"slope": -0.60, "ratio": 2.11, "loss": 2.0, "acc": 0.2, "band": 0.61}
    assert verdict(Result(bad), EXPECTED).status == "FAIL"
    some = dict(good, ratio=2.2, band=math.nan)  # NaN never passes
    v = verdict(Result(some), EXPECTED)
    assert v.status == "PARTLY"
    assert [c.name for c in v.checks if not c.passed] == ["ratio", "band"]
    missing = {k: v for k, v in good.items() if k != "acc"}
    assert verdict(Result(missing), EXPECTED).status == "PARTLY"
    words = {c.name: c.describe() for c in verdict(Result(good), EXPECTED).checks}
    assert words == {
        "slope": "-0.693147 +- 0.03",
        "ratio": "2 +- 5%",
        "loss": ">= 2.25",
        "acc": "<= 0.15",
        "band": ">= 0.4 and <= 0.6",
    }
    assert Check("x", 1.0, {"max": 2.0}, True).describe() == "<= 2"


def _finding(root, name, body, checks):
    d = root / name
    d.mkdir()
    (d / "config.py").write_text(textwrap.dedent(body))
    (d / "expected.json").write_text(json.dumps({"title": name, "checks": checks}))


GOOD = '''
    """A finding that measures 0.5."""
    import numpy as np
    from jgrad.experiments import Result
    CORE = True

    def get_config(quick=False, full=False):
        return {"n": 3 if quick else 30}

    def run(config, key):
        return Result({"x": 0.5}, {"curve": np.arange(config["n"]) / 7.0})

    def plot(result, path):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from jgrad.experiments import save_figure
        fig, ax = plt.subplots()
        ax.plot(result.arrays["curve"])
        save_figure(fig, path)
        plt.close(fig)
'''

BROKEN = '''
    """A finding whose experiment raises."""
    def get_config(quick=False, full=False):
        return {}

    def run(config, key):
        raise RuntimeError("the experiment broke")
'''


def test_a_raising_finding_is_reported_and_the_others_still_run(tmp_path):
    root = tmp_path / "papers_repro"
    root.mkdir()
    _finding(root, "c1_broken2020_x", BROKEN, {"x": {"max": 1.0, "status": "[num]"}})
    _finding(
        root,
        "c2_good2020_x",
        GOOD,
        {"x": {"value": 0.5, "abs": 0.01, "status": "[num]"}},
    )
    _finding(root, "e1_fail2020_x", GOOD, {"x": {"min": 0.9, "status": "[num]"}})
    out = tmp_path / "out"
    rows = experiments.run_findings(
        ["all"], quick=True, out=out, root=root, progress=False
    )
    assert [(r["id"], r["status"]) for r in rows] == [
        ("c1", "ERROR"),
        ("c2", "PASS"),
        ("e1", "FAIL"),
    ]
    assert "RuntimeError: the experiment broke" in rows[0]["error"]
    summary = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in summary["findings"]] == ["ERROR", "PASS", "FAIL"]
    one = json.loads((out / "c2" / "results.json").read_text())
    assert one["numbers"] == {"x": 0.5} and len(one["arrays"]["curve"]) == 3
    assert one["config"] == {"n": 3} and "provenance" in one
    assert (out / "c2" / "c2.png").stat().st_size > 0
    assert (out / "c1" / "results.json").exists()  # the error is on disk too
    line = experiments.format_row(rows[1])
    assert line.startswith("c2   PASS") and "x 0.5 vs 0.5 +- 0.01" in line


def test_bad_input(tmp_path):
    root = tmp_path / "papers_repro"
    root.mkdir()
    _finding(root, "c2_good2020_x", GOOD, {"x": {"max": 1.0, "status": "[num]"}})
    with pytest.raises(ValueError, match=r"`ids` must be finding ids, one of \['c2'\]"):
        experiments.run_findings(["c9"], root=root, progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="`out` must be a directory"):
        experiments.run_findings(
            ["c2"], root=root, out=tmp_path / "file", progress=False
        )
    with pytest.raises(ValueError, match="`quick` and `full`"):
        experiments.run_findings(
            ["c2"], root=root, quick=True, full=True, progress=False
        )
    with pytest.raises(ValueError, match="`root` must be the papers_repro/ folder"):
        experiments.find_findings(tmp_path / "nowhere")


def test_cli_rejects_unknown_ids_and_both_scales(capsys):
    with pytest.raises(SystemExit) as e:
        main(["repro", "zz9", "--quiet"])
    assert e.value.code == 2
    assert "`ids` must be finding ids" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["repro", "--quick", "--full"])
    assert e.value.code == 2
