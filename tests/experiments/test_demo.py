"""The demo (jgrad's main job), its files, and the command line."""

import json

import jax
import numpy as np
import pytest

import jgrad
from jgrad import cli
from jgrad.experiments import DemoConfig, format_table, run_demo


@pytest.fixture(scope="module")
def full_demo():
    return run_demo(DemoConfig())


def _check_underflow_flags(demo, net):
    """A layer is flagged when every entry of its plain float32 gradient is exactly 0. That
    needs the norm over the batch below tiny * sqrt(entries) (else some entry is a normal
    float32); on CPU, where XLA flushes subnormals to zero, every layer whose norm is below
    tiny (so every entry is) must be flagged. XLA on GPU keeps subnormals (xla_gpu_ftz is
    off), so there the gradient reaches exactly 0 only near 1e-45."""
    g = np.asarray(net["log10_norm"])
    flagged = np.zeros(len(g), bool)
    flagged[np.asarray(net["underflow_layers"], int) - 1] = True
    cfg = demo["config"]
    tiny = np.log10(np.finfo(np.float32).tiny)
    assert np.all(g[flagged] < tiny + 0.5 * np.log10(cfg["batch"] * cfg["width"]))
    if jax.default_backend() == "cpu":
        assert g[0] < tiny  # the setting shows it: sigmoid + standard init at depth 50
        assert np.all(flagged[g < tiny])


def test_default_demo_meets_the_textbook_predictions(full_demo):
    """The issue's acceptance figures at depth 50, width 256."""
    by = {n["label"]: n for n in full_demo["nets"]}
    assert len(by) == 6
    # Vanishing: sigmoid with the standard init far below float32's range, still finite.
    sig = by["sigmoid+standard"]
    assert np.isfinite(sig["log10_ratio"]) and sig["log10_ratio"] < -20
    _check_underflow_flags(full_demo, sig)
    assert by["relu+glorot"]["log10_ratio"] < -5
    # Exploding: tanh in the chaotic phase.
    assert by["tanh+gauss(wv=4)"]["log10_ratio"] > 2
    # Cured.
    for name in ("relu+he", "tanh+orthogonal"):
        assert np.log10(0.05) <= by[name]["log10_ratio"] <= np.log10(20), name
    for n in full_demo["nets"]:
        assert n["verdict"] == n["expect"] or n["label"] == "tanh+glorot"
        assert not n["nonfinite_layers"]
        assert len(n["log10_norm"]) == 50


def test_relu_glorot_slope_is_half_per_layer(full_demo):
    """He et al. 2015: with Glorot's variance (1/n, square layers) the squared gradient
    halves per ReLU layer, so log10 ||dL/dh_l|| rises by 0.5 log10 2 = 0.1505 per layer."""
    g = np.asarray(
        next(n for n in full_demo["nets"] if n["label"] == "relu+glorot")["log10_norm"]
    )
    slope = np.polyfit(np.arange(1, 51), g, 1)[0]
    assert abs(slope - 0.5 * np.log10(2)) < 0.02


def test_table_lists_every_layer_and_network(full_demo):
    table = format_table(full_demo)
    for n in full_demo["nets"]:
        assert n["label"] in table
    lines = table.splitlines()
    assert sum(1 for line in lines if line.strip().split(" ")[0].isdigit()) == 50
    assert "exploding" in table
    if any(n["underflow_layers"] for n in full_demo["nets"]):
        assert "underflows to 0" in table
    if jax.default_backend() == "cpu":  # subnormals flushed: see _check_underflow_flags
        assert "underflows to 0" in table


def test_cli_writes_json_png_and_pdf(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        [
            "demo",
            "--out",
            str(out),
            "--depth",
            "6",
            "--width",
            "16",
            "--batch",
            "4",
            "--seed",
            "3",
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "relu+he" in printed
    assert (
        f"wrote {out / 'demo.json'}, {out / 'demo.png'}, {out / 'demo.pdf'}" in printed
    )
    data = json.loads((out / "demo.json").read_text())
    assert data["config"] == {"depth": 6, "width": 16, "batch": 4, "seed": 3}
    assert data["provenance"]["jgrad"] == jgrad.__version__
    assert len(data["nets"]) == 6 and len(data["nets"][0]["log10_norm"]) == 6
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "demo.pdf").read_bytes()[:5] == b"%PDF-"
    assert not [
        p for p in out.iterdir() if p.name.startswith(".")
    ]  # no temp files left


def test_cli_version_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and jgrad.__version__ in capsys.readouterr().out
    assert cli.main([]) == 0 and "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--depth", "0"])
    assert e.value.code == 2
    assert (
        "argument --depth: must be a positive integer, got 0. Pass e.g. --depth 50."
        in capsys.readouterr().err
    )


def test_same_seed_same_numbers():
    c = DemoConfig(depth=4, width=8, batch=3, seed=11)
    a, b = run_demo(c), run_demo(c)
    for na, nb in zip(a["nets"], b["nets"], strict=True):
        np.testing.assert_array_equal(na["log10_norm"], nb["log10_norm"])
    d = run_demo(DemoConfig(depth=4, width=8, batch=3, seed=12))
    assert not np.array_equal(a["nets"][0]["log10_norm"], d["nets"][0]["log10_norm"])
