"""papers_repro/: every finding's expected.json agrees with its docstring, the README's
table lists every finding, one small finding runs end to end here, and every core
finding passes in quick mode (slow tier)."""

import pathlib
import re

import jax
import pytest

from jgrad import experiments
from jgrad.experiments import Check

ROOT = pathlib.Path(__file__).resolve().parents[1] / "papers_repro"


@pytest.fixture(autouse=True)
def _default_promotion():
    """The findings run as a user runs them: JAX's default promotion rules, not the
    strict ones the rest of the suite checks the library under."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


FINDINGS = experiments.find_findings(ROOT)
CORE = [f for f in FINDINGS if FINDINGS[f].core]


@pytest.mark.parametrize("fid", list(FINDINGS))
def test_expected_json_agrees_with_the_docstring(fid):
    f = FINDINGS[fid]
    doc = (f.folder / "config.py").read_text().split('"""')[1]
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^- (\w+): (.+)$", doc, re.M)}
    assert set(lines) == set(f.expected["checks"]), "one docstring line per check"
    for name, spec in f.expected["checks"].items():
        want = f"{Check(name, 0.0, spec, False).describe()} {spec['status']}"
        assert lines[name] == want, name
        assert spec["status"] in ("[src]", "[num]", "[mem]")
    assert f"jgrad repro {fid}" in doc
    assert (f.folder / "README.md").is_file()


def test_the_readme_table_lists_every_finding():
    text = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| \[?(\w\d+)\]?", text, re.M))
    assert listed == set(FINDINGS)
    assert {f"c{i}" for i in range(1, 9)} <= set(FINDINGS), "the eight core findings"


def test_c3_runs_end_to_end(tmp_path):
    rows = experiments.run_findings(["c3"], quick=True, out=tmp_path, progress=False)
    assert rows[0]["status"] == "PASS", experiments.format_row(rows[0])
    assert (tmp_path / "c3" / "c3.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("fid", CORE)
def test_core_finding_passes_quick(fid, tmp_path):
    rows = experiments.run_findings([fid], quick=True, out=tmp_path, progress=False)
    assert rows[0]["status"] == "PASS", experiments.format_row(rows[0])
